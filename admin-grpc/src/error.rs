/// Errors of the admin API's gRPC side.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("registry address {address}: {reason}")]
    Address { address: String, reason: String },
    /// A value that does not fit its message (or the other way): a
    /// mismatch between the `.proto` and the JSON shapes.
    #[error("{what} does not convert: {reason}")]
    Shape { what: &'static str, reason: String },
}

impl From<GrpcError> for tonic::Status {
    fn from(err: GrpcError) -> Self {
        tonic::Status::internal(err.to_string())
    }
}
