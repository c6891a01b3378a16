//! A volume's lock in the coordination store: a master that steps down
//! while its node lives must not keep the lock (nobody else could take it,
//! and the volume would stay down), and a takeover whose transaction
//! committed while the answer was lost must be resolved by reading the lock
//! back. One node, the embedded store, a real pool on real files.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use coord_store::{
    CoordStore, EmbeddedStore, KeyValue, Lease, LeaseId, StoreError, Txn, TxnResponse, WatchStream,
};
use storage_node::engine::{IoEngine, Pool, VolumeOptions};
use storage_node::group::{controller, GroupContext, LeaseClock, Mirror};
use tether_proto::group::GroupRecord;

const CLUSTER: &str = "test";
const NODE: &str = "node-1";

/// The embedded store, except that it can lose the answer to one
/// transaction it did commit (as a client sees a timeout from etcd).
struct LosesAnAnswer {
    inner: EmbeddedStore,
    lose_next_txn_answer: AtomicBool,
}

#[async_trait]
impl CoordStore for LosesAnAnswer {
    async fn get(&self, key: &str) -> coord_store::Result<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn get_prefix(&self, prefix: &str) -> coord_store::Result<(Vec<KeyValue>, i64)> {
        self.inner.get_prefix(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> coord_store::Result<i64> {
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> coord_store::Result<bool> {
        self.inner.delete(key).await
    }
    async fn txn(&self, txn: Txn) -> coord_store::Result<TxnResponse> {
        let answer = self.inner.txn(txn).await?;
        if self.lose_next_txn_answer.swap(false, Ordering::AcqRel) {
            return Err(StoreError::WatchBroken {
                prefix: String::new(),
                reason: "answer lost (committed)".into(),
            });
        }
        Ok(answer)
    }
    async fn grant_lease(&self, ttl: Duration) -> coord_store::Result<Lease> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> coord_store::Result<Duration> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> coord_store::Result<()> {
        self.inner.revoke_lease(lease).await
    }
    async fn watch_prefix(&self, prefix: &str, start: i64) -> coord_store::Result<WatchStream> {
        self.inner.watch_prefix(prefix, start).await
    }
}

fn key(kind: &str, name: &str) -> String {
    format!("/tether/v1/{CLUSTER}/{kind}/{name}")
}

/// One node's group machinery with one single-copy volume `v`, its
/// controller running, and the node's lease kept alive.
async fn one_node(store: Arc<LosesAnAnswer>, dir: &std::path::Path) -> Arc<GroupContext> {
    let pool = Pool::open(
        dir,
        1 << 30,
        IoEngine::start(true),
        VolumeOptions::default(),
    )
    .unwrap();
    let volume = pool.create("v", 64 << 20).await.unwrap();
    std::mem::forget(pool); // the volume lives as long as the test
    let lease = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    let clock = Arc::new(LeaseClock::new());
    clock.renewed(Instant::now(), lease.ttl);
    let mirror = Mirror::new(CLUSTER);
    let ctx = Arc::new(GroupContext {
        cluster: CLUSTER.into(),
        node: NODE.into(),
        store: store.clone(),
        mirror: mirror.clone(),
        lease_clock: clock.clone(),
        lease: Arc::new(AtomicI64::new(lease.id)),
        replica_timeout: Duration::from_secs(1),
        sync_rate_limit: 0,
        masters: Default::default(),
        epochs: Default::default(),
        admissions: Default::default(),
        tls: None,
        keys: Default::default(),
        dr_tls: None,
    });
    let keep_alive_store = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let sent = Instant::now();
            if let Ok(ttl) = keep_alive_store.keep_alive(lease.id).await {
                clock.renewed(sent, ttl);
            }
        }
    });
    let record = GroupRecord::new(&[NODE.to_string()]);
    store
        .put(
            &key("groups", "v"),
            serde_json::to_vec(&record).unwrap(),
            None,
        )
        .await
        .unwrap();
    tokio::spawn(mirror.run(store.clone()));
    controller::spawn(ctx.clone(), volume);
    ctx
}

/// Waits until this node serves `v` as master at an epoch of at least `epoch`.
async fn wait_master(ctx: &GroupContext, epoch: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(master) = ctx.master("v") {
            if master.epoch >= epoch && !master.is_deposed() {
                return master.epoch;
            }
        }
        let lock = ctx.store.get(&key("locks", "v")).await.unwrap();
        assert!(
            Instant::now() < deadline,
            "no master at epoch {epoch} or later within 10 s; lock: {lock:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_steps_down_while_alive_does_not_keep_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LosesAnAnswer {
        inner: EmbeddedStore::in_memory(),
        lose_next_txn_answer: AtomicBool::new(false),
    });
    let ctx = one_node(store, dir.path()).await;
    let first = wait_master(&ctx, 1).await;
    // Whatever made it step down (a peer's newer epoch, a failed start, a
    // local write error), the node lives on and its lease stays bound to the lock.
    ctx.master("v").unwrap().depose();
    // The lock must be released (or taken again with a new epoch), so the
    // volume gets a master again instead of staying down.
    let again = wait_master(&ctx, first + 1).await;
    assert!(again > first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_committed_while_its_answer_was_lost_is_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LosesAnAnswer {
        inner: EmbeddedStore::in_memory(),
        lose_next_txn_answer: AtomicBool::new(true),
    });
    let ctx = one_node(store.clone(), dir.path()).await;
    // The first takeover transaction commits, and its answer is lost.
    let epoch = wait_master(&ctx, 1).await;
    assert!(!store.lose_next_txn_answer.load(Ordering::Acquire));
    let lock = store.get(&key("locks", "v")).await.unwrap().unwrap();
    assert_eq!(lock.value, NODE.as_bytes());
    let group: GroupRecord =
        serde_json::from_slice(&store.get(&key("groups", "v")).await.unwrap().unwrap().value)
            .unwrap();
    assert_eq!(
        group.epoch, epoch,
        "the master serves the epoch the store holds"
    );
}
