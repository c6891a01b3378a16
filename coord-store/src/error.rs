use thiserror::Error;

/// Errors of the coordination store, each naming what it was working on.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        source: tonic::transport::Error,
    },
    #[error("no etcd member at {endpoints} answered: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd {op} on {key:?} failed: {source}")]
    Rpc {
        op: &'static str,
        key: String,
        source: tonic::Status,
    },
    #[error("a lease TTL of {ttl_ms} ms cannot be granted: leases last a whole number of seconds (at least 1 s)")]
    LeaseTtl { ttl_ms: u64 },
    #[error("lease {lease:#x} has expired or was revoked")]
    LeaseExpired { lease: i64 },
    #[error("watch on {prefix:?} broke: {reason}")]
    WatchBroken { prefix: String, reason: String },
    #[error("watch on {prefix:?} asked for revision {revision}, already compacted")]
    Compacted { prefix: String, revision: i64 },
    #[error("embedded store file {path}: {source}")]
    Persist {
        path: String,
        source: std::io::Error,
    },
    #[error("embedded store file {path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("etcd process: {reason}")]
    EtcdProcess { reason: String },
}
