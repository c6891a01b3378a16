//! The node's control RPCs (JSON over HTTPS, mutual TLS): what the
//! registry tells a node directly because it must not sit in the store —
//! the unwrapped data key of an encrypted volume this node presents.
//!
//! | method | path | caller |
//! | --- | --- | --- |
//! | GET | /v1/health | the registry or a node of this cluster |
//! | PUT, DELETE | /v1/volumes/{name}/key | the registry (`VolumeKey`) |

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use tether_proto::admin::{ErrorBody, VolumeKey};
use tether_tls::http::Peer;
use tether_tls::{ClientAuth, Role, TlsContext};
use volume_crypto::{DataKey, SectorCipher};

use crate::error::Result;

#[derive(Clone)]
pub struct ControlState {
    pub cluster: String,
    pub group: Arc<crate::group::GroupContext>,
}

/// Binds `addr` and serves the control RPCs until the runtime stops.
pub async fn listen(
    addr: &str,
    tls: Arc<TlsContext>,
    state: ControlState,
) -> Result<std::net::SocketAddr> {
    let (listener, local) = crate::bind(addr, "control RPCs").await?;
    let router = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/volumes/{name}/key", put(load_key).delete(unload_key))
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

type Refusal = (StatusCode, Json<ErrorBody>);

fn refusal(status: StatusCode, code: &str, error: String) -> Refusal {
    (
        status,
        Json(ErrorBody {
            error,
            code: code.into(),
        }),
    )
}

fn registry_only(peer: &Peer) -> Result<(), Refusal> {
    if peer
        .identity
        .as_ref()
        .is_some_and(|identity| identity.role == Role::Registry)
    {
        return Ok(());
    }
    tracing::warn!(peer = %peer.addr, "refused a key RPC: only the registry hands out keys");
    Err(refusal(
        StatusCode::FORBIDDEN,
        "forbidden",
        "only the registry hands out volume keys".into(),
    ))
}

/// Takes an encrypted volume's data key, after checking it against the
/// volume's stored check value. The key is never logged or written.
async fn load_key(
    State(state): State<ControlState>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    Json(request): Json<VolumeKey>,
) -> Result<Json<serde_json::Value>, Refusal> {
    registry_only(&peer)?;
    let spec = state.group.mirror.spec(&name).ok_or_else(|| {
        refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("volume {name} not found"),
        )
    })?;
    let encryption = spec.encryption.ok_or_else(|| {
        refusal(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("volume {name} is not encrypted"),
        )
    })?;
    let key = DataKey::from_hex(&name, &request.data_key)
        .and_then(|key| key.verify(&name, &encryption.key_check).map(|()| key))
        .map_err(|err| refusal(StatusCode::BAD_REQUEST, "wrong_key", err.to_string()))?;
    state
        .group
        .keys
        .insert(&name, SectorCipher::new(&key))
        .await;
    tracing::info!(volume = %name, "loaded the volume's data key (memory only)");
    Ok(Json(serde_json::json!({"ok": true})))
}

async fn unload_key(
    State(state): State<ControlState>,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, Refusal> {
    registry_only(&peer)?;
    let removed = state.group.keys.remove(&name);
    if removed {
        tracing::info!(volume = %name, "dropped the volume's data key");
    }
    Ok(Json(serde_json::json!({"ok": true, "removed": removed})))
}
