//! Records every admin action in the audit log (`crate::audit`): one layer
//! around both front ends, so a JSON call and a gRPC call are recorded the
//! same way, refusals included. Reads (`GET`, gRPC `List*`/`Get*`/`Watch*`)
//! are not actions and are not recorded.
//!
//! What an action names: the path (`POST /v1/volumes/db/resize`), or the
//! gRPC method, plus the naming fields of its body (never tokens, keys or
//! CSRs: only the fields in [`TARGET_FIELDS`]).

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tether_proto::audit::AuditDraft;
use tether_tls::http::Peer;

use super::AppState;

const GRPC_PREFIX: &str = "/tether.admin.v1.Admin/";
/// Largest JSON request body the API takes (axum's default for `Json`).
const MAX_REQUEST_BODY: usize = 2 << 20;
/// Largest error body read back for the outcome.
const MAX_ERROR_BODY: usize = 64 << 10;
/// The request-body fields that say what an action was about.
const TARGET_FIELDS: &[&str] = &[
    "name",
    "volume",
    "satellite",
    "node",
    "to",
    "peer",
    "kind",
    "prefix",
    "size_bytes",
    "capacity_bytes",
    "count",
    "replicas",
    "read_only",
    "force",
];

/// Where a gRPC method, which decodes its own message, leaves its target
/// for this layer.
#[derive(Clone, Default)]
pub(crate) struct AuditNote(Arc<Mutex<String>>);

impl AuditNote {
    /// Notes the naming fields of `message` (a gRPC request).
    pub(crate) fn note<T: serde::Serialize>(&self, message: &T) {
        if let Ok(value) = serde_json::to_value(message) {
            *self.0.lock().unwrap() = target_of(&value);
        }
    }
}

fn target_of(body: &serde_json::Value) -> String {
    let Some(fields) = body.as_object() else {
        return String::new();
    };
    let mut named = Vec::new();
    for field in TARGET_FIELDS {
        match fields.get(*field) {
            Some(serde_json::Value::String(text)) if !text.is_empty() => {
                named.push(format!("{field}={text}"))
            }
            Some(serde_json::Value::Number(number)) => named.push(format!("{field}={number}")),
            Some(serde_json::Value::Bool(true)) => named.push(format!("{field}=true")),
            _ => {}
        }
    }
    named.join(" ")
}

fn is_action(method: &Method, path: &str) -> bool {
    match path.strip_prefix(GRPC_PREFIX) {
        Some(rpc) => !["List", "Get", "Watch"]
            .iter()
            .any(|read| rpc.starts_with(read)),
        None => method != Method::GET && method != Method::HEAD,
    }
}

/// The layer: runs the call, then appends what it was and how it ended.
pub(crate) async fn record_action(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    if !is_action(request.method(), &path) {
        return next.run(request).await;
    }
    let grpc = path.strip_prefix(GRPC_PREFIX).map(str::to_string);
    let action = match &grpc {
        Some(rpc) => format!("gRPC {rpc}"),
        None => format!("{} {path}", request.method()),
    };
    let peer = request.extensions().get::<Peer>().cloned();
    let note = AuditNote::default();
    request.extensions_mut().insert(note.clone());
    let mut target = String::new();
    if grpc.is_none() {
        let (parts, body) = request.into_parts();
        let bytes = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
            Ok(bytes) => bytes,
            Err(_) => {
                let refused = crate::RegistryError::Invalid {
                    field: "body",
                    reason: format!("is larger than {MAX_REQUEST_BODY} bytes or unreadable"),
                };
                return refused.into_response();
            }
        };
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
            target = target_of(&value);
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    let response = next.run(request).await;
    let (response, outcome) = outcome_of(response, grpc.is_some()).await;
    if grpc.is_some() {
        target = note.0.lock().unwrap().clone();
    }
    let draft = AuditDraft {
        at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
        identity: peer
            .as_ref()
            .and_then(|peer| peer.identity.as_ref())
            .map_or_else(|| "anonymous".to_string(), |identity| identity.uri()),
        peer: peer.map_or_else(String::new, |peer| peer.addr.to_string()),
        action,
        target,
        outcome,
        status: response.status().as_u16(),
    };
    match crate::audit::append(state.store.as_ref(), &state.cluster, draft.clone()).await {
        Ok(entry) => {
            let record = &entry.record;
            tracing::info!(audit_seq = entry.seq, audit_hash = %entry.hash, identity = %record.identity, peer = %record.peer, action = %record.action, target = %record.target, outcome = %record.outcome, status = record.status, "admin action");
        }
        Err(err) => {
            metrics::counter!("tether_audit_append_failures_total").increment(1);
            tracing::error!(error = %err, identity = %draft.identity, action = %draft.action, target = %draft.target, outcome = %draft.outcome, "cannot append to the audit log");
        }
    }
    response
}

/// `ok`, or the error the caller was given: the JSON error body's message,
/// or a gRPC status sent in the headers (the form an error takes when it
/// is the whole answer).
async fn outcome_of(response: Response, grpc: bool) -> (Response, String) {
    if grpc {
        let outcome = match tonic::Status::from_header_map(response.headers()) {
            Some(status) if status.code() != tonic::Code::Ok => {
                format!("{:?}: {}", status.code(), status.message())
            }
            _ => "ok".into(),
        };
        return (response, outcome);
    }
    if response.status().is_success() {
        return (response, "ok".into());
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        let status = parts.status;
        return (
            (status, "error body unreadable").into_response(),
            status.to_string(),
        );
    };
    let outcome = serde_json::from_slice::<tether_proto::admin::ErrorBody>(&bytes)
        .map(|body| body.error)
        .unwrap_or_else(|_| parts.status.to_string());
    (Response::from_parts(parts, Body::from(bytes)), outcome)
}

/// `GET /v1/audit` and gRPC `ListAudit`.
pub(crate) async fn list(
    state: AppState,
    since_unix_ms: u64,
) -> super::ApiResult<tether_proto::audit::AuditList> {
    crate::audit::list(state.store.as_ref(), &state.cluster, since_unix_ms).await
}
