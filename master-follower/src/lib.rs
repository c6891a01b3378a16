//! Reaching a volume's current master, wherever it is, and following it
//! through failover — what a storage node's presenter and the federation
//! gateway both do, so it lives here, apart from the storage engine.
//!
//! Read first: [`VolumeFollower::execute`] (one request on the current
//! master: resolve it from the [`Mirror`], send over a [`BlockConn`], and
//! on no answer send the same request again to whoever is master next —
//! rule 6: same bytes to the same offset, never an invented ack).

mod error;
pub mod follower;
pub mod mirror;
mod tls;
pub mod transport;

pub use error::FollowError;
pub use follower::{Retryable, VolumeFollower};
pub use mirror::Mirror;
pub use tether_proto::block::BlockOp;
pub use tls::BlockTls;
pub use transport::BlockConn;
