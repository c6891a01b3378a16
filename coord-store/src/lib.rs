//! The coordination store: where volume specs, node registrations and (next)
//! volume-group locks live.
//!
//! [`CoordStore`] is the trait, and it knows nothing of etcd. Two stores
//! implement it with the same semantics (revisions, leases that expire,
//! compare-and-swap transactions, prefix watches) and pass one conformance
//! suite (`tests/conformance.rs`):
//! - [`EtcdStore`]: etcd v3 over gRPC, for every real deployment;
//! - [`EmbeddedStore`]: in-process, optionally persisted to one file, for the
//!   single-process dev federation and unit tests.
//!
//! [`etcd_process`] starts a local etcd for tests and `tether dev up`.

mod embedded;

/// etcd's v3 API (trimmed to KV, Watch and Lease), generated at build time by
/// protox + tonic-prost-build.
#[allow(clippy::all, missing_docs, dead_code)]
mod etcd_api {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}
mod error;
mod etcd;
pub mod etcd_process;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use etcd::EtcdStore;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A lease id. Keys put with a lease vanish when it expires or is revoked.
pub type LeaseId = i64;

/// A lease as the store granted it: keys put with it vanish `ttl` after the
/// last keep-alive the store received. The TTL is the store's, not the
/// request's (etcd may raise it to its minimum); fencing must count from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl: Duration,
}

/// Puts `value` at `key` only if the key's mod revision is still
/// `revision` (0: the key is absent): a compare-and-swap. The store's new
/// revision if it was written, `None` if the key had moved on.
pub async fn put_if_revision(
    store: &dyn CoordStore,
    key: &str,
    value: Vec<u8>,
    revision: i64,
) -> Result<Option<i64>> {
    let done = store
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: key.to_string(),
                revision,
            }],
            success: vec![TxnOp::Put {
                key: key.to_string(),
                value,
                lease: None,
            }],
            failure: vec![],
        })
        .await?;
    Ok(done.succeeded.then_some(done.revision))
}

/// etcd counts lease TTLs in whole seconds: a TTL it cannot express is
/// refused rather than silently rounded (a master fenced on 3.9 s while etcd
/// expires at 3 s could answer after another node took its lock).
pub fn check_lease_ttl(ttl: Duration) -> Result<i64> {
    if ttl.subsec_nanos() != 0 || ttl.is_zero() {
        return Err(StoreError::LeaseTtl {
            ttl_ms: ttl.as_millis() as u64,
        });
    }
    Ok(ttl.as_secs() as i64)
}

/// A key with its value and etcd-style revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Store revision of the key's creation.
    pub create_revision: i64,
    /// Store revision of the key's last change: the CAS token.
    pub mod_revision: i64,
    /// Number of changes since creation (1 on create).
    pub version: i64,
    /// The lease the key is bound to, if any.
    pub lease: Option<LeaseId>,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod revision equals this (0: the key does not exist).
    ModRevision { key: String, revision: i64 },
    /// The key's value equals this (false if the key does not exist).
    Value { key: String, value: Vec<u8> },
    /// The key is bound to this lease (0: the key has no lease or does not exist).
    Lease { key: String, lease: LeaseId },
}

impl Compare {
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision { key, .. }
            | Compare::Value { key, .. }
            | Compare::Lease { key, .. } => key,
        }
    }
}

/// An operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
}

/// `if all compares hold { success } else { failure }`, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// Outcome of a transaction. `gets` holds one entry per `Get` of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub revision: i64,
    pub gets: Vec<Option<KeyValue>>,
}

/// A change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: i64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
    pub fn mod_revision(&self) -> i64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Events in revision order. The stream ends (or yields an error) when the
/// watch breaks; the watcher re-lists and re-watches from the revision it saw.
pub type WatchStream = mpsc::Receiver<Result<WatchEvent>>;

/// The coordination store. Both implementations give the same answers to the
/// same calls; `tests/conformance.rs` holds them to it.
#[async_trait]
pub trait CoordStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key under `prefix`, in key order, and the store revision read at.
    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)>;
    /// Puts and returns the new store revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64>;
    /// Deletes; true if the key existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;
    /// Grants a lease that expires `ttl` (whole seconds, see
    /// [`check_lease_ttl`]) after the last keep-alive; returns the TTL granted.
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease>;
    /// Renews; returns the TTL granted, or `LeaseExpired` once it has gone.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration>;
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
    /// Changes under `prefix` with mod revision ≥ `start_revision` (0: from now).
    async fn watch_prefix(&self, prefix: &str, start_revision: i64) -> Result<WatchStream>;
}
