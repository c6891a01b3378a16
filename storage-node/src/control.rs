//! The node's control RPCs (JSON over HTTPS, mutual TLS): what the
//! registry tells a node directly because it must not sit in the store —
//! the unwrapped data key of an encrypted volume this node presents.
//!
//! | method | path | caller |
//! | --- | --- | --- |
//! | GET | /v1/health | the registry or a node of this cluster |

use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Json, Router};
use tether_tls::http::Peer;
use tether_tls::{ClientAuth, Role, TlsContext};

use crate::error::{NodeError, Result};

#[derive(Clone)]
pub struct ControlState {
    pub cluster: String,
}

/// Binds `addr` and serves the control RPCs until the runtime stops.
pub async fn listen(
    addr: &str,
    tls: Arc<TlsContext>,
    state: ControlState,
) -> Result<std::net::SocketAddr> {
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|err| NodeError::BadEndpoint {
                endpoint: addr.to_string(),
                reason: format!("cannot listen for control RPCs: {err}"),
            })?;
    let local = listener
        .local_addr()
        .map_err(|err| NodeError::BadEndpoint {
            endpoint: addr.to_string(),
            reason: err.to_string(),
        })?;
    let router = Router::new()
        .route("/v1/health", get(health))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state);
    tokio::spawn(tether_tls::http::serve(
        listener,
        tls,
        ClientAuth::Required,
        router,
        "node control",
        std::future::pending(),
    ));
    Ok(local)
}

/// Only the registry and nodes of this cluster may call a node.
async fn authorize(
    axum::extract::State(state): axum::extract::State<ControlState>,
    Extension(peer): Extension<Peer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match &peer.identity {
        Some(identity)
            if identity.cluster == state.cluster
                && matches!(identity.role, Role::Registry | Role::Node) =>
        {
            next.run(request).await
        }
        other => {
            let who = other.as_ref().map(|identity| identity.uri());
            tracing::warn!(peer = %peer.addr, identity = ?who, path = %request.uri().path(), "refused a control RPC: only the registry and nodes of this cluster may call it");
            (
                axum::http::StatusCode::FORBIDDEN,
                Json(tether_proto::admin::ErrorBody {
                    error: "only the registry and nodes of this cluster may call a node".into(),
                    code: "forbidden".into(),
                }),
            )
                .into_response()
        }
    }
}

async fn health(Extension(peer): Extension<Peer>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true, "caller": peer.identity.map(|identity| identity.uri())}))
}
