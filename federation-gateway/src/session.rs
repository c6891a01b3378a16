//! One satellite's QUIC connection: who it is (its certificate), whether it
//! may be here (joined, not removed — re-checked whenever the store's
//! records change), and the volume streams it opens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use tether_tls::Role;
use tracing::Instrument;

use crate::{access, stream, Gateway};

use tether_proto::link::close;

/// QUIC close codes a satellite sees (`tether_proto::link::close`).
pub const CLOSE_SHUTDOWN: VarInt = VarInt::from_u32(close::SHUTDOWN);
pub const CLOSE_REFUSED: VarInt = VarInt::from_u32(close::REFUSED);
pub const CLOSE_REVOKED: VarInt = VarInt::from_u32(close::REVOKED);
pub const CLOSE_PROTOCOL: VarInt = VarInt::from_u32(close::PROTOCOL);

/// A satellite has this long to finish the QUIC handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Takes a new connection if the gateway has room for another session.
pub fn admit(incoming: quinn::Incoming, gateway: Arc<Gateway>) {
    let remote = incoming.remote_address();
    let Some(slot) = gateway.sessions.try_admit() else {
        metrics::counter!("tether_gateway_refused_total", "reason" => "busy").increment(1);
        tracing::warn!(peer = %remote, limit = gateway.sessions.limit(), "refused a session: the gateway has as many as it takes");
        incoming.refuse();
        return;
    };
    let span = tracing::info_span!("session", peer = %remote);
    tokio::spawn(
        async move {
            let _slot = slot;
            serve(incoming, gateway, remote).await;
        }
        .instrument(span),
    );
}

fn refused(remote: SocketAddr, identity: Option<String>, reason: &str, label: &'static str) {
    metrics::counter!("tether_gateway_refused_total", "reason" => label).increment(1);
    tracing::warn!(peer = %remote, identity = ?identity, %reason, "refused a satellite session");
}

async fn serve(incoming: quinn::Incoming, gateway: Arc<Gateway>, remote: SocketAddr) {
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => {
            let reason = tether_tls::http::explain(err.to_string());
            return refused(
                remote,
                None,
                &format!("handshake failed: {reason}"),
                "handshake",
            );
        }
        Err(_) => return refused(remote, None, "no handshake within 10 s", "handshake"),
    };
    let certificates = connection.peer_identity().and_then(|any| {
        any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    let identity =
        match tether_tls::peer_identity(certificates.as_deref().map(|certs| certs.as_slice())) {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                connection.close(CLOSE_REFUSED, b"no client certificate");
                return refused(remote, None, "no client certificate", "certificate");
            }
            Err(err) => {
                connection.close(CLOSE_REFUSED, b"unreadable certificate");
                return refused(remote, None, &err.to_string(), "certificate");
            }
        };
    if identity.role == Role::DrPeer && identity.cluster != gateway.cluster {
        // Its CA is a linked peer's (the handshake checked): DR streams are
        // the only thing such a session may carry.
        let linked = gateway.mirror.peers().into_iter().any(|peer| {
            peer.name == identity.cluster && peer.state == tether_proto::dr::PeerState::Linked
        });
        if !linked {
            let reason = format!("{} is not of a linked DR peer", identity.uri());
            connection.close(CLOSE_REFUSED, reason.as_bytes());
            return refused(remote, Some(identity.uri()), &reason, "role");
        }
        return crate::dr::serve_session(gateway, connection, identity.cluster).await;
    }
    if identity.role != Role::Satellite || identity.cluster != gateway.cluster {
        let reason = format!(
            "{} is not a satellite of cluster {}",
            identity.uri(),
            gateway.cluster
        );
        connection.close(CLOSE_REFUSED, reason.as_bytes());
        return refused(remote, Some(identity.uri()), &reason, "role");
    }
    let satellite = identity.name.clone();
    if let Err(denied) = access::standing(&satellite, gateway.mirror.satellite(&satellite).as_ref())
    {
        connection.close(CLOSE_REVOKED, denied.reason.as_bytes());
        return refused(remote, Some(identity.uri()), &denied.reason, "revoked");
    }
    tracing::info!(%satellite, "satellite session opened");
    let gauge = metrics::gauge!("tether_gateway_sessions");
    gauge.increment(1.0);
    tokio::select! {
        _ = watch_standing(&gateway, &satellite, &connection) => {}
        _ = accept_streams(&gateway, &satellite, &connection) => {}
    }
    gauge.decrement(1.0);
    tracing::info!(%satellite, reason = ?connection.close_reason(), "satellite session closed");
}

/// Ends the session as soon as the satellite stops standing (removed).
async fn watch_standing(gateway: &Gateway, satellite: &str, connection: &quinn::Connection) {
    let mut changes = gateway.mirror.subscribe();
    loop {
        if let Err(denied) =
            access::standing(satellite, gateway.mirror.satellite(satellite).as_ref())
        {
            tracing::warn!(%satellite, reason = %denied.reason, "closing the session: the satellite no longer stands");
            metrics::counter!("tether_gateway_sessions_revoked_total").increment(1);
            connection.close(CLOSE_REVOKED, denied.reason.as_bytes());
            return;
        }
        if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn accept_streams(gateway: &Arc<Gateway>, satellite: &str, connection: &quinn::Connection) {
    loop {
        let Ok((send, recv)) = connection.accept_bi().await else {
            return;
        };
        let (gateway, satellite, connection) =
            (gateway.clone(), satellite.to_string(), connection.clone());
        tokio::spawn(
            async move { stream::serve(send, recv, gateway, satellite, connection).await }
                .in_current_span(),
        );
    }
}
