/// Why a request did not reach a master, or what the master answered.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
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
}

impl FollowError {
    /// The errno to answer a block client with.
    pub fn errno(&self) -> u32 {
        const EIO: u32 = 5;
        match self {
            FollowError::Remote { errno, .. } => *errno,
            _ => EIO,
        }
    }
}
