//! Tether's wire formats, with no I/O: nothing here opens a socket, reads a
//! clock or knows about tokio, etcd or rustls. The daemons own the sockets and
//! feed bytes in; this crate hands back frames.
//!
//! Read first:
//! - [`nbd::ServerHandshake`]: the NBD newstyle-fixed option haggling, as a
//!   state machine over bytes.
//! - [`nbd::decode_request`] / [`nbd::encode_simple_reply`]: the NBD
//!   transmission phase.
//! - [`block::Frame`]: node-to-node block frames (replicated writes with
//!   their epoch, acknowledgements, Delta Sync's hash-tree and chunk
//!   exchange), with [`block::decode_frame`] / [`block::encode_frame`].
//! - [`group`]: the volume-group protocol's decisions (promotion, epochs,
//!   the in-sync replica set, fencing), shared with the model checker.
//! - [`link`]: satellite ⇄ gateway frames (one QUIC stream per volume).
//! - [`disk`]: the on-disk formats of a volume's files.
//! - [`audit`]: the hash-chained audit log of admin actions.
//! - [`admin`]: the JSON shapes of the admin API; [`federation`]: clusters
//!   and grants.

pub mod admin;
pub mod audit;
pub mod block;
pub mod disk;
pub mod dr;
mod error;
pub mod federation;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_harness;
pub mod group;
pub mod keys;
pub mod link;
pub mod nbd;

pub use error::ProtoError;

#[cfg(test)]
mod fuzz_tests;
