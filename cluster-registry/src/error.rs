use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tether_common::size::format_size as human;
use tether_proto::admin::ErrorBody;
use thiserror::Error;

/// Errors of the registry; each maps to an HTTP status and a stable code.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("volume {name} not found")]
    VolumeNotFound { name: String },
    #[error("volume {name} already exists")]
    VolumeExists { name: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("volume {name} is attached at {uris}; detach it first")]
    Attached { name: String, uris: String },
    #[error("no storage node has room for {} (largest free: {})", human(*requested), human(*largest_free))]
    PoolFull { requested: u64, largest_free: u64 },
    #[error("{reason}")]
    Unavailable { reason: String },
    #[error("cannot place the volume: {reason}")]
    NoPlacement { reason: String },
    #[error("node {node} failed on volume {name}: {reason}")]
    NodeFailed {
        name: String,
        node: String,
        reason: String,
    },
    #[error("coordination store: {0}")]
    Store(#[from] coord_store::StoreError),
    #[error("stored record {key} is unreadable: {reason}")]
    BadRecord { key: String, reason: String },
    #[error(
        "{what} needs a client certificate; present an admin credential (tether --credentials DIR)"
    )]
    Unauthenticated { what: String },
    #[error("{identity} may not call {what}")]
    Forbidden { identity: String, what: String },
    #[error("{node} cannot join: {reason}")]
    BadJoinToken { node: String, reason: String },
    #[error("node {node} is up: a live node's name cannot join again")]
    NodeNameInUse { node: String },
    #[error("cluster {name} not found")]
    ClusterNotFound { name: String },
    #[error("cluster {name} already exists ({state})")]
    ClusterExists { name: String, state: String },
    #[error("satellite {name} was removed: its certificate is no longer accepted")]
    SatelliteRevoked { name: String },
    #[error("satellite {satellite} has no grant for volume {volume}")]
    OutOfGrant { satellite: String, volume: String },
    #[error("satellite {satellite}'s {grant} allows {what} (read-only)")]
    ReadOnlyGrant {
        satellite: String,
        grant: String,
        what: String,
    },
    #[error("satellite {satellite}'s {grant} is at its limit: {reason}")]
    OverQuota {
        satellite: String,
        grant: String,
        reason: String,
    },
    #[error("satellite {satellite} has no {grant}")]
    GrantNotFound { satellite: String, grant: String },
    #[error("satellite {satellite} already holds {limit} attachment watches; close one first")]
    TooManyWatches { satellite: String, limit: usize },
    #[error("DR peer {name} not found (add it with `tether cluster add-peer {name}`)")]
    PeerNotFound { name: String },
    #[error("DR peer {name} is {state} already")]
    PeerExists { name: String, state: String },
    #[error("DR peer at {endpoint}: {reason}")]
    PeerFailed { endpoint: String, reason: String },
    #[error("volume {volume} has no DR link")]
    DrLinkNotFound { volume: String },
    /// The link is not in a state that allows the operation.
    #[error("DR link of {volume}: {reason}")]
    DrLinkState { volume: String, reason: String },
    /// The operation was asked for and has not finished in time.
    #[error("DR link of {volume}: {what} did not finish within {waited_secs} s: {reason}")]
    DrTimeout {
        volume: String,
        what: &'static str,
        waited_secs: u64,
        reason: String,
    },
    #[error("certificates: {0}")]
    Tls(#[from] tether_tls::TlsError),
    #[error("control-plane state {path}: {source}")]
    State {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

impl RegistryError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            RegistryError::VolumeNotFound { .. }
            | RegistryError::ClusterNotFound { .. }
            | RegistryError::GrantNotFound { .. }
            | RegistryError::PeerNotFound { .. }
            | RegistryError::DrLinkNotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            RegistryError::DrLinkState { .. } => (StatusCode::CONFLICT, "dr_state"),
            RegistryError::DrTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "dr_timeout"),
            RegistryError::VolumeExists { .. }
            | RegistryError::NodeNameInUse { .. }
            | RegistryError::ClusterExists { .. }
            | RegistryError::PeerExists { .. } => (StatusCode::CONFLICT, "already_exists"),
            RegistryError::SatelliteRevoked { .. } => (StatusCode::FORBIDDEN, "revoked"),
            RegistryError::OutOfGrant { .. } | RegistryError::ReadOnlyGrant { .. } => {
                (StatusCode::FORBIDDEN, "not_granted")
            }
            RegistryError::OverQuota { .. } => (StatusCode::FORBIDDEN, "over_quota"),
            RegistryError::TooManyWatches { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many"),
            RegistryError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid"),
            RegistryError::Attached { .. } => (StatusCode::CONFLICT, "attached"),
            RegistryError::PoolFull { .. } => (StatusCode::INSUFFICIENT_STORAGE, "pool_full"),
            RegistryError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            RegistryError::NoPlacement { .. } => (StatusCode::CONFLICT, "no_placement"),
            RegistryError::NodeFailed { .. } => (StatusCode::BAD_GATEWAY, "node_failed"),
            RegistryError::PeerFailed { .. } => (StatusCode::BAD_GATEWAY, "peer_failed"),
            RegistryError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            RegistryError::Unauthenticated { .. } | RegistryError::BadJoinToken { .. } => {
                (StatusCode::UNAUTHORIZED, "unauthenticated")
            }
            RegistryError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            RegistryError::BadRecord { .. }
            | RegistryError::Listen { .. }
            | RegistryError::Tls(_)
            | RegistryError::State { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self, code, "admin request failed");
        }
        let body = ErrorBody {
            error: self.to_string(),
            code: code.to_string(),
        };
        (status, axum::Json(body)).into_response()
    }
}

impl From<RegistryError> for tonic::Status {
    /// The gRPC code nearest the HTTP status; the stable code rides in
    /// the `tether-code` metadata.
    fn from(err: RegistryError) -> Self {
        use tonic::Code;
        let (status, code) = err.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %err, code, "admin request failed");
        }
        let grpc = match status {
            StatusCode::BAD_REQUEST => Code::InvalidArgument,
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::CONFLICT if code == "already_exists" => Code::AlreadyExists,
            StatusCode::CONFLICT => Code::FailedPrecondition,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::INSUFFICIENT_STORAGE => {
                Code::ResourceExhausted
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => Code::Unavailable,
            _ => Code::Internal,
        };
        let mut answer = tonic::Status::new(grpc, err.to_string());
        answer.metadata_mut().insert(
            "tether-code",
            tonic::metadata::MetadataValue::from_static(code),
        );
        answer
    }
}

/// `axum::Json`, except that a body that does not parse is answered like
/// every other error: `{"error", "code": "invalid"}` with 400, not plain text.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    axum::Json<T>:
        axum::extract::FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = RegistryError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(RegistryError::Invalid {
                field: "body",
                reason: rejection.body_text(),
            }),
        }
    }
}
