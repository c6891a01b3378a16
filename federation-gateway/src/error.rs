use std::path::PathBuf;

/// What stops a gateway from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("gateway credentials in {dir}: {source}")]
    Credentials {
        dir: PathBuf,
        source: tether_tls::TlsError,
    },
    #[error("the certificate in {dir} is {identity}, not a gateway's of cluster {cluster}")]
    WrongIdentity {
        dir: PathBuf,
        identity: String,
        cluster: String,
    },
    #[error("QUIC TLS configuration: {reason}")]
    Quic { reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("coordination store: {0}")]
    Store(#[from] coord_store::StoreError),
    #[error(transparent)]
    Tls(#[from] tether_tls::TlsError),
}
