//! Volume groups: a master and its replicas on different nodes, kept
//! consistent by a lock and an epoch in the coordination store.
//!
//! - [`mirror`]: the node's live copy of the cluster's keys (specs, groups,
//!   locks, nodes), fed by one watch per node;
//! - [`controller`]: per local copy, takes the lock when this copy may and
//!   steps down when it must;
//! - [`fence`]: each copy's newest epoch, and the gate its writes pass;
//! - [`master`]: the master's write path (all-ISR acknowledgement, ISR
//!   shrinking, fencing by lease deadline);
//! - [`sync`]: Delta Sync, bringing a copy back by hash-tree comparison;
//! - [`server`] / [`transport`]: the node-to-node block-frame streams;
//! - [`presenter`]: what the NBD front end talks to; follows the master;
//! - [`verify`]: online comparison (and repair) of the in-sync copies.
//!
//! The decisions themselves (who may be promoted, how the ISR changes, which
//! epochs a replica admits) are pure functions in `tether_proto::group`,
//! shared with the model checker.

pub mod controller;
pub mod fence;
pub mod master;
pub mod order;
pub mod presenter;
pub mod server;
pub mod sync;
pub mod verify;

// The mirror and the block-stream client are shared with the federation
// gateway (crate `master-follower`); they keep their paths here.
pub use master_follower::{mirror, transport, BlockOp, BlockTls};

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use coord_store::CoordStore;

pub use fence::EpochFence;
pub use master::MasterState;
pub use mirror::Mirror;
pub use presenter::Presenter;

/// When this node's lease is known to be alive, on the monotonic clock:
/// the moment the last successful keep-alive was *sent*, plus
/// `tether_proto::group::lease_validity(ttl)` of the TTL the store granted
/// (not the one asked for: etcd counts whole seconds and may raise a TTL to
/// its minimum). A master answers no I/O after it.
pub struct LeaseClock {
    base: Instant,
    /// Nanoseconds after `base` until which the lease is surely alive (0: not yet).
    valid_until_nanos: AtomicU64,
}

impl LeaseClock {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            valid_until_nanos: AtomicU64::new(0),
        }
    }

    /// Records a grant or keep-alive that succeeded, was sent at `sent`, and
    /// left the lease with `granted_ttl` to live.
    pub fn renewed(&self, sent: Instant, granted_ttl: Duration) {
        let validity = tether_proto::group::lease_validity(granted_ttl);
        let until = (sent + validity).duration_since(self.base).as_nanos() as u64;
        self.valid_until_nanos.fetch_max(until, Ordering::AcqRel);
    }

    /// Forgets the lease (it expired; a new one starts from `renewed`).
    pub fn lost(&self) {
        self.valid_until_nanos.store(0, Ordering::Release);
    }

    pub fn valid(&self) -> bool {
        let now = self.base.elapsed().as_nanos() as u64;
        now < self.valid_until_nanos.load(Ordering::Acquire)
    }
}

impl Default for LeaseClock {
    fn default() -> Self {
        Self::new()
    }
}

/// What every volume group on this node shares.
pub struct GroupContext {
    pub cluster: String,
    pub node: String,
    pub store: Arc<dyn CoordStore>,
    pub mirror: Arc<Mirror>,
    pub lease_clock: Arc<LeaseClock>,
    /// The node's lease; locks are bound to it.
    pub lease: Arc<AtomicI64>,
    /// A replica that has not answered a frame this long leaves the ISR.
    pub replica_timeout: Duration,
    /// Delta Sync's copy rate limit in bytes per second (0: none).
    pub sync_rate_limit: u64,
    /// The masters this node runs, by volume.
    pub masters: RwLock<HashMap<String, Arc<MasterState>>>,
    /// Each local copy's epoch fence (rule 3: its writes of older epochs are refused).
    pub epochs: RwLock<HashMap<String, Arc<EpochFence>>>,
    /// Replication streams are admitted one at a time (each checks the
    /// store, then records the epoch), so two admissions never interleave.
    pub admissions: tokio::sync::Mutex<()>,
    /// The node's certificate for block streams (mutual TLS); `None` only
    /// with `--insecure-plaintext-block`.
    pub tls: Option<BlockTls>,
    /// Data keys of encrypted volumes this node presents (memory only).
    pub keys: Arc<crate::keys::KeyRing>,
    /// The node's `dr-peer` certificate, for shipping DR batches to a peer
    /// cluster's gateways (`None`: this node ships none).
    pub dr_tls: Option<Arc<tether_tls::TlsContext>>,
}

impl GroupContext {
    pub fn key(&self, kind: tether_proto::keys::Kind, name: &str) -> String {
        tether_proto::keys::ClusterKeys::new(&self.cluster).key(kind, name)
    }

    pub fn master(&self, volume: &str) -> Option<Arc<MasterState>> {
        self.masters.read().unwrap().get(volume).cloned()
    }

    /// The epoch fence of the local copy of `volume` (in `dir`): the newest
    /// epoch it has seen, kept in the copy's directory so a restarted replica
    /// still refuses a deposed master, and the gate its writes pass.
    pub fn fence(&self, volume: &str, dir: &Path) -> Arc<EpochFence> {
        if let Some(fence) = self.epochs.read().unwrap().get(volume) {
            return fence.clone();
        }
        let loaded = Arc::new(EpochFence::load(dir));
        self.epochs
            .write()
            .unwrap()
            .entry(volume.to_string())
            .or_insert(loaded)
            .clone()
    }

    pub fn forget(&self, volume: &str) {
        self.epochs.write().unwrap().remove(volume);
        if let Some(master) = self.masters.write().unwrap().remove(volume) {
            master.depose();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_counts_from_the_granted_ttl_and_the_send_time() {
        let clock = LeaseClock::new();
        assert!(!clock.valid(), "no lease yet");
        let sent = Instant::now();
        clock.renewed(sent, Duration::from_secs(3));
        assert!(clock.valid());
        clock.lost();
        // Granted 1 s, sent 0.9 s ago: the deadline (TTL minus its margin) has passed.
        let long_ago = Instant::now() - Duration::from_millis(900);
        clock.renewed(long_ago, Duration::from_secs(1));
        assert!(!clock.valid());
    }
}
