//! Dialing an HTTP/2 service (gRPC: etcd, the registry's admin API) over
//! mutual TLS with this process's certificate, for tonic's
//! `Endpoint::connect_with_connector`.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::TlsContext;

/// Dials the host in the URI over TCP and opens mutual TLS (ALPN h2),
/// checking the server's certificate names that host. `default_port` is
/// used when the URI has none.
pub fn connector(
    tls: Arc<TlsContext>,
    default_port: u16,
) -> impl tower::Service<
    axum::http::Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send {
    tower::service_fn(move |uri: axum::http::Uri| {
        let tls = tls.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or("127.0.0.1")
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(default_port);
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            let tls = tls
                .connect_host(stream, &host, vec![b"h2".to_vec()])
                .await?;
            Ok(TokioIo::new(tls))
        }
    })
}
