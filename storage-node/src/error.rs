use thiserror::Error;

/// Errors of the storage node, each naming the volume, file or key involved.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error(
        "volume {volume}: {op} at offset {offset} length {length} is past the end ({size} bytes)"
    )]
    OutOfRange {
        volume: String,
        op: &'static str,
        offset: u64,
        length: u64,
        size: u64,
    },
    #[error("volume {volume}: I/O error in {op} on {path}: {source}")]
    Io {
        volume: String,
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("volume {volume} not found on this node")]
    VolumeNotFound { volume: String },
    #[error("volume {volume} already exists on this node")]
    VolumeExists { volume: String },
    #[error("volume {volume}: size {size_bytes} is not a positive multiple of 512 bytes")]
    BadSize { volume: String, size_bytes: u64 },
    #[error("volume {volume}: cannot shrink from {current} to {requested} bytes (shrinking a block device loses data)")]
    ShrinkRefused {
        volume: String,
        current: u64,
        requested: u64,
    },
    #[error("pool {pool} is full: {requested} bytes asked, {free} of {capacity} free")]
    PoolFull {
        pool: String,
        requested: u64,
        free: u64,
        capacity: u64,
    },
    #[error("volume {volume}: metadata {path} is unreadable: {reason}")]
    BadMetadata {
        volume: String,
        path: String,
        reason: String,
    },
    #[error("endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("coordination store: {0}")]
    Store(#[from] coord_store::StoreError),
    #[error("config: {reason}")]
    Config { reason: String },
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;
