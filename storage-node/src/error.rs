use tether_common::size::format_size as human;
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
    #[error("volume {volume}: the copy at {path} is quarantined ({reason}); it is kept as it is for an operator, not served, re-created or deleted")]
    Quarantined {
        volume: String,
        path: String,
        reason: String,
    },
    #[error("volume {volume}: size {} is not a positive multiple of 512 bytes of at most 1 PiB", human(*size_bytes))]
    BadSize { volume: String, size_bytes: u64 },
    #[error("volume {volume}: cannot shrink from {} to {} (shrinking a block device loses data)", human(*current), human(*requested))]
    ShrinkRefused {
        volume: String,
        current: u64,
        requested: u64,
    },
    #[error("pool {pool} is full: {} asked, {} of {} free", human(*requested), human(*free), human(*capacity))]
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
    #[error("volume {volume} is encrypted and its key is not loaded on this node")]
    KeyNotLoaded { volume: String },
    #[error("volume {volume}: {reason}")]
    Misaligned { volume: String, reason: String },
    #[error("certificates: {0}")]
    Tls(#[from] tether_tls::TlsError),
    /// This node does not master the volume now (or its lease ran out):
    /// the presenting node retries on the current master.
    #[error("volume {volume}: this node is not its master at epoch {epoch}")]
    NotMaster { volume: String, epoch: u64 },
    #[error("volume {volume}: peer {peer}: {reason}")]
    Peer {
        volume: String,
        peer: String,
        reason: String,
    },
    /// The master answered with this errno.
    #[error("volume {volume}: the master answered errno {errno}")]
    Remote { volume: String, errno: u32 },
    #[error("volume {volume}: no master answered within {waited_secs} s")]
    NoMaster { volume: String, waited_secs: u64 },
    /// The volume's DR role does not admit the request.
    #[error("volume {volume}: refused: {reason}")]
    DrRefused { volume: String, reason: String },
    #[error("volume {volume}: DR link to {peer}: {reason}")]
    DrLink {
        volume: String,
        peer: String,
        reason: String,
    },
}

impl From<master_follower::FollowError> for NodeError {
    fn from(err: master_follower::FollowError) -> Self {
        use master_follower::FollowError;
        match err {
            FollowError::NotMaster { volume, epoch } => NodeError::NotMaster { volume, epoch },
            FollowError::Peer {
                volume,
                peer,
                reason,
            } => NodeError::Peer {
                volume,
                peer,
                reason,
            },
            FollowError::Remote { volume, errno } => NodeError::Remote { volume, errno },
            FollowError::NoMaster {
                volume,
                waited_secs,
            } => NodeError::NoMaster {
                volume,
                waited_secs,
            },
        }
    }
}

impl master_follower::Retryable for NodeError {
    fn is_retryable(&self) -> bool {
        NodeError::is_retryable(self)
    }
}

impl NodeError {
    /// Whether a presenting node should retry the request on the (maybe new)
    /// master: the request is idempotent and no answer was received.
    pub fn is_retryable(&self) -> bool {
        matches!(self, NodeError::NotMaster { .. } | NodeError::Peer { .. })
    }

    /// The errno to answer a block client with.
    pub fn errno(&self, writes: bool) -> u32 {
        const EIO: u32 = 5;
        const ENOSPC: u32 = 28;
        const EINVAL: u32 = 22;
        match self {
            NodeError::OutOfRange { .. } if writes => ENOSPC,
            NodeError::OutOfRange { .. } | NodeError::Misaligned { .. } => EINVAL,
            NodeError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => ENOSPC,
            NodeError::Remote { errno, .. } => *errno,
            // EPERM: the client is not allowed this volume here now.
            NodeError::DrRefused { .. } => 1,
            _ => EIO,
        }
    }
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;
