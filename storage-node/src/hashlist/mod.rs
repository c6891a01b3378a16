//! The hash list: a BLAKE3 hash per chunk, arranged as a binary hash tree so
//! two copies find their differing chunks by exchanging O(changed × log n)
//! hashes ([`HashTree::diff_with`]), and the activity log that makes the list
//! trustworthy after a crash ([`ActivityLog`]).

mod activity_log;
mod tree;

pub use activity_log::ActivityLog;
pub use tree::{chunk_hash, ChunkHash, DiffWalk, HashTree};
