//! Tether's storage node: the data plane and the node's control loop.
//!
//! Read first:
//! - [`engine::Pool`] and [`engine::Volume`]: thin volumes in a pool
//!   directory, I/O through io_uring (or the fallback), and the write
//!   ordering that keeps hash lists true across crashes;
//! - [`hashlist::HashTree`]: per-chunk BLAKE3 hashes as a tree, for Delta Sync;
//! - the NBD server is crate `nbd-export`, serving [`group::Presenter`];
//! - [`group`]: volume groups (lock and epoch, synchronous replication,
//!   failover, Delta Sync) and the presenter the NBD server runs requests on;
//! - [`agent`]: registers the node in the coordination store, acts on the
//!   volume specs assigned to it and reports their status;
//! - [`run`]: the daemon, as `tether-node` and `tether daemon node` start it.

pub mod agent;
pub mod config;
pub mod control;
pub mod dr;
pub mod engine;
mod error;
pub mod group;
pub mod hashlist;
pub mod keys;
/// Bounds on what a peer can make the node hold (shared with the gateway).
pub use tether_common::limits;
pub mod security;

pub use agent::run;
pub use config::NodeConfig;
pub use error::{NodeError, Result};

/// Binds a TCP listener for `what`; the error names the address.
pub(crate) async fn bind(
    addr: &str,
    what: &str,
) -> error::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let failed = |err: std::io::Error| error::NodeError::BadEndpoint {
        endpoint: addr.to_string(),
        reason: format!("cannot listen for {what}: {err}"),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let local = listener.local_addr().map_err(failed)?;
    Ok((listener, local))
}
