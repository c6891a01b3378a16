/// What can go wrong between a satellite and the gateways.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("gateway {gateway}: {reason}")]
    Gateway { gateway: String, reason: String },
    /// The gateway refused to open the volume; not retried (another gateway
    /// reads the same grants).
    #[error("volume {volume}: refused by gateway {gateway} (code {code}): {reason}")]
    Refused {
        volume: String,
        gateway: String,
        code: u32,
        reason: String,
    },
    /// The volume answered the request with this errno.
    #[error("volume {volume}: the request failed with errno {errno}")]
    Io { volume: String, errno: u32 },
    #[error("volume {volume}: no gateway answered within {waited_secs} s")]
    NoGateway { volume: String, waited_secs: u64 },
    #[error("volume {volume}: {reason}")]
    Protocol { volume: String, reason: String },
    #[error("QUIC TLS configuration: {reason}")]
    Config { reason: String },
}
