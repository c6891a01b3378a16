//! Serving an axum router over TLS, with the peer's identity handed to
//! every request as an [`axum::Extension<Peer>`], and every refused
//! handshake logged with the peer's address and rustls's reason.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::{ClientAuth, Identity, TlsContext};

/// How long a client may take over its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling: their address and, if they sent a certificate, its identity.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub identity: Option<Identity>,
}

/// Serves `router` on `listener` until `shutdown` resolves. `what` names the
/// endpoint in log lines ("admin API", "node control").
pub async fn serve(
    listener: TcpListener,
    tls: Arc<TlsContext>,
    auth: ClientAuth,
    router: axum::Router,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) {
    let config = tls.server_config(auth);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(endpoint = what, error = %err, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (config, router) = (config.clone(), router.clone());
        connections.spawn(async move {
            let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsContext::accept(config, stream)).await;
            let (tls, identity) = match accepted {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(reason)) => {
                    metrics::counter!("tether_tls_refused_total", "endpoint" => what).increment(1);
                    let reason = explain(reason);
                    tracing::warn!(endpoint = what, peer = %addr, reason = %reason, "refused a TLS client");
                    return;
                }
                Err(_) => {
                    tracing::warn!(endpoint = what, peer = %addr, "refused a TLS client: no handshake within 10 s");
                    return;
                }
            };
            let router = router.layer(axum::Extension(Peer { addr, identity }));
            let service = TowerToHyperService::new(router);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
}

/// rustls's reason, with what it usually means for an operator reading the log.
pub fn explain(reason: String) -> String {
    let lower = reason.to_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|needle| lower.contains(needle));
    let hint = if has(&["received fatal alert"]) {
        "the client rejected this server's certificate (does it trust another CA?)"
    } else if has(&["invalidcontenttype", "corrupt message"]) {
        "not TLS: a plaintext client"
    } else if has(&["certificaterequired", "no certificates"]) {
        "the client sent no certificate"
    } else if has(&["expired"]) {
        "the client's certificate has expired"
    } else if has(&[
        "unknownissuer",
        "unknown issuer",
        "badsignature",
        "bad signature",
    ]) {
        "the client's certificate is not from this cluster's CA"
    } else {
        return reason;
    };
    format!("{hint} ({reason})")
}
