//! Tether's NBD server, for any block backend: a storage node serves its
//! presenter through it, a satellite its volumes opened through a gateway.
//!
//! - [`endpoint`]: the endpoint syntax (`unix:PATH`, `tcp:[HOST:]PORT`,
//!   `tls:[HOST:]PORT`), the TLS policy each implies, and the checks that
//!   keep a client-chosen socket path from replacing what is not ours;
//! - `negotiate`: the handshake (`tether_proto::nbd`'s state machine) on the
//!   socket, upgraded in place by STARTTLS;
//! - [`server`]: listeners, connection caps, and the transmission phase,
//!   with every request charged its bytes before it is buffered.

pub mod endpoint;
mod negotiate;
pub mod server;

use std::future::Future;

pub use server::{serve, NbdContext, NbdServer};
pub use tether_proto::block::BlockOp;

/// A volume an NBD export serves.
pub trait Export: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// Offered at the handshake (clients see a resize when they reconnect).
    fn size_bytes(&self) -> u64;
    /// The smallest I/O unit clients must use (a cipher sector when encrypted).
    fn min_block_bytes(&self) -> u32;
    /// Runs one request: the data of a read, nothing for the rest, or the
    /// errno the client is answered with.
    fn execute(&self, op: BlockOp)
        -> impl Future<Output = Result<Option<Vec<u8>>, Failure>> + Send;
}

/// A failed request: the errno NBD carries, and what to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub errno: u32,
    /// Past the end of the volume: answered ENOSPC for writes and EINVAL
    /// otherwise (the server knows which the client asked for).
    pub out_of_range: bool,
    pub message: String,
}

/// Why an export cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("endpoint {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;
