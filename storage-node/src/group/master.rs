//! The master of one volume group for one epoch: serves I/O on its local
//! copy, ships every write to every in-sync replica (and to copies being
//! brought back by Delta Sync), and acknowledges only when all ISR members
//! have it (rule 2). A replica that fails or stops answering leaves the ISR
//! by compare-and-swap in the store *before* the write is acknowledged. The
//! master answers nothing once its lease deadline has passed or a newer
//! epoch has been seen (rule 3).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tether_proto::keys::Kind;

use coord_store::{Compare, Txn, TxnOp};
use futures::future::join_all;
use tether_proto::admin::SyncProgress;
use tether_proto::block::Frame;
use tether_proto::group::GroupRecord;
use tokio::sync::RwLock;

use super::order::{OrderGuard, WriteOrder};
use super::transport::BlockConn;
use super::{BlockOp, GroupContext};
use crate::dr::Origin;
use crate::engine::Volume;
use crate::error::{NodeError, Result};

/// Who receives this master's writes.
pub struct Members {
    /// The group record as last committed, and its mod revision.
    pub record: GroupRecord,
    pub revision: i64,
    /// Connections to the ISR members other than this node.
    pub links: HashMap<String, Arc<BlockConn>>,
    /// Copies being reconciled by Delta Sync: they get every live write, but
    /// their failures only end their sync.
    pub syncing: HashMap<String, Arc<BlockConn>>,
}

impl Members {
    /// The ISR members other than the master `me`.
    pub fn replicas<'a>(&'a self, me: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.record.isr.iter().filter(move |member| *member != me)
    }
}

pub struct MasterState {
    pub ctx: Arc<GroupContext>,
    pub volume: Arc<Volume>,
    pub epoch: u64,
    /// The local copy's fence: a local write is issued only while no newer
    /// epoch has been seen, and a newer one waits for it.
    fence: Arc<super::EpochFence>,
    /// The node lease the lock is bound to: a new lease means the lock is gone.
    lease: i64,
    deposed: AtomicBool,
    pub members: RwLock<Members>,
    /// Overlapping writes (and Delta Sync's chunk copies) one after another,
    /// so every copy applies them in the same order.
    order: WriteOrder,
    /// Progress of each Delta Sync, by copy, for the status record.
    pub syncs: std::sync::Mutex<BTreeMap<String, SyncProgress>>,
    /// The last verification of the copies (`verify.rs`), for the status record.
    pub verify: std::sync::Mutex<Option<tether_proto::admin::VerifyReport>>,
    /// Changed chunks and the cut barrier for a DR link, and the DR role's gate.
    pub dr: crate::dr::DrTracker,
}

/// What became of one write or flush on the other copies.
#[derive(Default)]
struct Fanout {
    failed_isr: Vec<String>,
    failed_syncing: Vec<String>,
    newer_epoch: Option<u64>,
}

impl MasterState {
    pub fn new(
        ctx: Arc<GroupContext>,
        volume: Arc<Volume>,
        record: GroupRecord,
        revision: i64,
        lease: i64,
    ) -> Arc<Self> {
        Arc::new(Self {
            fence: ctx.fence(volume.name(), volume.dir()),
            ctx,
            volume,
            epoch: record.epoch,
            lease,
            deposed: AtomicBool::new(false),
            members: RwLock::new(Members {
                record,
                revision,
                links: HashMap::new(),
                syncing: HashMap::new(),
            }),
            order: WriteOrder::default(),
            syncs: Default::default(),
            verify: Default::default(),
            dr: Default::default(),
        })
    }

    pub fn name(&self) -> &str {
        self.volume.name()
    }

    /// Stops answering for good: a newer epoch exists or the lock is gone.
    pub fn depose(&self) {
        if !self.deposed.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                volume = self.name(),
                epoch = self.epoch,
                "no longer master; answering nothing more"
            );
        }
    }

    pub fn is_deposed(&self) -> bool {
        self.deposed.load(Ordering::Acquire)
    }

    /// Rule 3: answer only while the lease is surely alive and no newer epoch was seen.
    fn check(&self) -> Result<()> {
        if self.is_deposed()
            || !self.ctx.lease_clock.valid()
            || self.ctx.lease.load(Ordering::Acquire) != self.lease
        {
            return Err(NodeError::NotMaster {
                volume: self.name().to_string(),
                epoch: self.epoch,
            });
        }
        Ok(())
    }

    /// Opens a replication stream to `node`'s copy at this epoch.
    pub async fn connect(&self, node: &str) -> Result<Arc<BlockConn>> {
        let addr = self
            .ctx
            .mirror
            .node(node)
            .and_then(|record| record.block_addr)
            .ok_or_else(|| NodeError::Peer {
                volume: self.name().to_string(),
                peer: node.to_string(),
                reason: "node is down".into(),
            })?;
        let hello = Frame::Hello {
            volume: self.name().to_string(),
            node: self.ctx.node.clone(),
            epoch: self.epoch,
        };
        let conn = BlockConn::connect(
            &addr,
            node,
            hello,
            self.ctx.replica_timeout,
            self.ctx.tls.as_ref(),
        )
        .await
        .map_err(NodeError::from);
        if let Err(NodeError::NotMaster { epoch, .. }) = &conn {
            self.confirm_newer_epoch(*epoch).await;
        }
        conn
    }

    /// Connects to every ISR member; those that do not answer leave the ISR
    /// before the first write is served.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        let members: Vec<String> = {
            let members = self.members.read().await;
            members.replicas(&self.ctx.node).cloned().collect()
        };
        let attempts = join_all(members.iter().map(|node| self.connect(node))).await;
        let mut failed = Vec::new();
        {
            let mut guard = self.members.write().await;
            for (node, attempt) in members.into_iter().zip(attempts) {
                match attempt {
                    Ok(conn) => {
                        guard.links.insert(node, conn);
                    }
                    Err(err) => {
                        tracing::warn!(volume = self.name(), replica = %node, error = %err, "in-sync replica unreachable at takeover");
                        failed.push(node);
                    }
                }
            }
        }
        self.leave_isr(&failed).await?;
        self.publish_isr_metric().await;
        Ok(())
    }

    async fn publish_isr_metric(&self) {
        let size = self.members.read().await.record.isr.len();
        metrics::gauge!("tether_group_isr_members", "volume" => self.name().to_string())
            .set(size as f64);
    }

    /// Runs one client request. `Ok(Some(data))` for reads.
    pub async fn execute(&self, op: BlockOp) -> Result<Option<Vec<u8>>> {
        self.execute_from(op, Origin::Client).await
    }

    /// Runs one request from `origin`, if the volume's DR role admits it.
    /// Writes are marked for DR after they ran (even when they failed: a
    /// copy may hold them), under the barrier a DR cut takes.
    pub async fn execute_from(&self, op: BlockOp, origin: Origin) -> Result<Option<Vec<u8>>> {
        self.check()?;
        self.dr.admit(self.name(), origin)?;
        let range = match &op {
            BlockOp::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            BlockOp::WriteZeroes { offset, length, .. } => Some((*offset, *length)),
            _ => None,
        };
        let Some((offset, length)) = range else {
            return self.run(op).await;
        };
        let _held = self.dr.hold().await;
        // A cut (a planned promote's last) may have changed the role meanwhile.
        self.dr.admit(self.name(), origin)?;
        let result = self.run(op).await;
        // Only what is inside the volume (an out-of-range request changed
        // nothing, and its numbers may be anything a client sent).
        let end = offset.saturating_add(length).min(self.volume.size_bytes());
        if end > offset {
            self.dr.mark(offset, end - offset);
        }
        result
    }

    async fn run(&self, op: BlockOp) -> Result<Option<Vec<u8>>> {
        match op {
            BlockOp::Read { offset, length } => {
                let data = self.volume.read(offset, length).await?;
                self.check()?;
                Ok(Some(data))
            }
            BlockOp::Hashes { first, count } => {
                let n_chunks = self.volume.n_chunks();
                let end = first.saturating_add(count as u64);
                if end > n_chunks {
                    return Err(NodeError::OutOfRange {
                        volume: self.name().to_string(),
                        op: "hashes",
                        offset: first,
                        length: count as u64,
                        size: n_chunks,
                    });
                }
                self.volume.settle().await?;
                let tree = self.volume.hash_tree();
                let hashes = tree.leaves()[first as usize..end as usize].concat();
                self.check()?;
                Ok(Some(hashes))
            }
            BlockOp::Write { offset, data, fua } => {
                self.volume
                    .check_range("write", offset, data.len() as u64)?;
                let frame = Frame::Write {
                    seq: 0,
                    epoch: self.epoch,
                    offset,
                    fua,
                    data: data.clone(),
                };
                let (length, local) = (data.len() as u64, self.volume.write(offset, data, fua));
                self.replicated(offset, length, frame, local).await?;
                Ok(None)
            }
            BlockOp::WriteZeroes {
                offset,
                length,
                punch,
                fua,
            } => {
                self.volume.check_range("write zeroes", offset, length)?;
                let frame = Frame::WriteZeroes {
                    seq: 0,
                    epoch: self.epoch,
                    offset,
                    length,
                    punch,
                    fua,
                };
                let local = self.volume.write_zeroes(offset, length, punch, fua);
                self.replicated(offset, length, frame, local).await?;
                Ok(None)
            }
            BlockOp::Flush => {
                let frame = Frame::Flush {
                    seq: 0,
                    epoch: self.epoch,
                };
                self.replicated(0, 0, frame, self.volume.flush()).await?;
                Ok(None)
            }
        }
    }

    /// Runs `local` and sends `frame` to every other receiving copy at once;
    /// returns when all ISR members have it (or left the ISR).
    async fn replicated(
        &self,
        offset: u64,
        length: u64,
        frame: Frame,
        local: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        let local = self.fenced(local);
        let members = self.members.read().await;
        self.check()?;
        let alone = members
            .record
            .isr
            .iter()
            .all(|member| *member == self.ctx.node);
        if alone && members.syncing.is_empty() {
            // No other copy receives writes: nothing to order, wait for or
            // drop. The members guard is held to the end, so a Delta Sync
            // that begins (it takes the guard exclusively) sees this write
            // either finished or sent to it.
            local.await?;
            drop(members);
            return self.check();
        }
        // Overlapping writes in flight, and a Delta Sync copy of their
        // chunks, go to every copy one after another, in the same order.
        let ordered: Option<OrderGuard<'_>> = if length > 0 {
            Some(self.order.enter(offset, length).await)
        } else {
            None
        };
        let targets: Vec<(&String, &Arc<BlockConn>, bool)> = members
            .links
            .iter()
            .map(|(node, conn)| (node, conn, true))
            .chain(
                members
                    .syncing
                    .iter()
                    .map(|(node, conn)| (node, conn, false)),
            )
            .collect();
        let timeout = self.ctx.replica_timeout;
        let remote = join_all(
            targets
                .iter()
                .map(|(_, conn, _)| conn.request(frame.clone(), timeout)),
        );
        let (local, answers) = tokio::join!(local, remote);
        // Every copy that will apply it has: the next overlapping write may go.
        drop(ordered);
        let mut fanout = Fanout::default();
        // An ISR member with no stream did not get the write either.
        fanout.failed_isr.extend(
            members
                .record
                .isr
                .iter()
                .filter(|member| **member != self.ctx.node && !members.links.contains_key(*member))
                .cloned(),
        );
        for ((node, _, in_sync), answer) in targets.iter().zip(answers) {
            let failed = match answer {
                Ok(Frame::Ack { error: 0, .. }) => false,
                Ok(Frame::StaleEpoch { newest_epoch, .. }) => {
                    fanout.newer_epoch = Some(newest_epoch);
                    true
                }
                Ok(other) => {
                    tracing::warn!(volume = self.name(), replica = %node, answer = ?other, "replica refused a write");
                    true
                }
                Err(err) => {
                    tracing::warn!(volume = self.name(), replica = %node, error = %err, "replica did not take a write");
                    true
                }
            };
            if failed {
                if *in_sync {
                    fanout.failed_isr.push(node.to_string());
                } else {
                    fanout.failed_syncing.push(node.to_string());
                }
            }
        }
        let took_it: Vec<String> = members
            .replicas(&self.ctx.node)
            .filter(|member| !fanout.failed_isr.contains(member))
            .cloned()
            .collect();
        drop(members);
        if let Some(epoch) = fanout.newer_epoch {
            self.confirm_newer_epoch(epoch).await;
        }
        self.check()?;
        if !fanout.failed_syncing.is_empty() {
            let mut members = self.members.write().await;
            for node in &fanout.failed_syncing {
                if let Some(conn) = members.syncing.remove(node) {
                    conn.close();
                }
            }
        }
        self.leave_isr(&fanout.failed_isr).await?;
        if let Err(err) = local {
            if !took_it.is_empty() {
                // The replicas have the write and this copy does not: this
                // copy must not stay in sync. Hand the volume to them; the
                // presenter sends the request again to the next master.
                tracing::error!(volume = self.name(), epoch = self.epoch, error = %err, successors = ?took_it, "local write failed where the replicas succeeded; stepping down");
                self.abdicate(&took_it).await;
                return Err(NodeError::NotMaster {
                    volume: self.name().to_string(),
                    epoch: self.epoch,
                });
            }
            return Err(err);
        }
        self.check()
    }

    /// Issues a local write only while this epoch is the newest the copy has
    /// seen and the lease holds, and keeps a newer epoch from being recorded
    /// until the write is done (`fence.rs`). The write may have waited since
    /// it was admitted: for an overlapping one, or in a paused process.
    async fn fenced(&self, local: impl std::future::Future<Output = Result<()>>) -> Result<()> {
        let refused = |master: &Self| {
            master.depose();
            NodeError::NotMaster {
                volume: master.name().to_string(),
                epoch: master.epoch,
            }
        };
        let Ok(_admitted) = self.fence.admit(self.epoch).await else {
            return Err(refused(self));
        };
        self.check()?;
        local.await
    }

    /// Holds the range of `chunk_idx` (Delta Sync's copy of it): live writes
    /// to it land on the copy before the copy's read or after its answer.
    pub async fn lock_chunk(&self, chunk_idx: u64) -> OrderGuard<'_> {
        let chunk = self.volume.chunk_size();
        self.order.enter(chunk_idx * chunk, chunk).await
    }

    /// Rule 2: commits the ISR without `nodes` (compare-and-swap on the
    /// group record, only while this node still holds the lock) before any
    /// acknowledgement without them.
    pub async fn leave_isr(&self, nodes: &[String]) -> Result<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        let mut members = self.members.write().await;
        loop {
            let leaving: Vec<&String> = nodes
                .iter()
                .filter(|node| members.record.in_sync(node))
                .collect();
            if leaving.is_empty() {
                return Ok(());
            }
            let next = leaving
                .iter()
                .fold(members.record.clone(), |record, node| record.without(node));
            if let Some(revision) = self.commit(&members, &next, false).await? {
                tracing::warn!(volume = self.name(), epoch = self.epoch, left = ?leaving, isr = ?next.isr, "replicas left the in-sync set");
                metrics::counter!("tether_group_isr_shrinks_total", "volume" => self.name().to_string()).increment(1);
                for node in leaving {
                    if let Some(conn) = members.links.remove(node) {
                        conn.close();
                    }
                }
                members.record = next;
                members.revision = revision;
                let size = members.record.isr.len();
                metrics::gauge!("tether_group_isr_members", "volume" => self.name().to_string())
                    .set(size as f64);
                return Ok(());
            }
            self.refresh(&mut members).await?;
        }
    }

    /// Adds a copy Delta Sync has reconciled to the ISR; from now on writes
    /// wait for it.
    pub async fn join_isr(&self, node: &str) -> Result<()> {
        let mut members = self.members.write().await;
        let Some(conn) = members.syncing.remove(node) else {
            return Err(NodeError::Peer {
                volume: self.name().to_string(),
                peer: node.to_string(),
                reason: "left during Delta Sync".into(),
            });
        };
        loop {
            let next = members.record.with(node);
            if let Some(revision) = self.commit(&members, &next, false).await? {
                tracing::info!(volume = self.name(), epoch = self.epoch, joined = node, isr = ?next.isr, "copy back in sync");
                members.record = next;
                members.revision = revision;
                members.links.insert(node.to_string(), conn);
                let size = members.record.isr.len();
                metrics::gauge!("tether_group_isr_members", "volume" => self.name().to_string())
                    .set(size as f64);
                return Ok(());
            }
            self.refresh(&mut members).await?;
        }
    }

    /// Starts sending live writes to a copy under Delta Sync. Taking the
    /// members lock exclusively waits out every write in flight, so each
    /// write after this reaches the copy.
    pub async fn begin_sync(&self, node: &str, conn: Arc<BlockConn>) {
        let mut members = self.members.write().await;
        members.syncing.insert(node.to_string(), conn);
    }

    /// Ends a sync (done or failed).
    pub async fn end_sync(&self, node: &str) {
        let mut members = self.members.write().await;
        if let Some(conn) = members.syncing.remove(node) {
            conn.close();
        }
    }

    /// Writes `next` if the group record is still the one this master last
    /// committed and the lock is still this node's; returns the record's new
    /// mod revision, or `None` if someone else changed it. With
    /// `release_lock`, the lock is deleted in the same transaction.
    async fn commit(
        &self,
        members: &Members,
        next: &GroupRecord,
        release_lock: bool,
    ) -> Result<Option<i64>> {
        self.check()?;
        let (group_key, lock_key) = (
            self.ctx.key(Kind::Groups, self.name()),
            self.ctx.key(Kind::Locks, self.name()),
        );
        let mut success = vec![TxnOp::Put {
            key: group_key.clone(),
            value: serde_json::to_vec(next).expect("group record serializes"),
            lease: None,
        }];
        if release_lock {
            success.push(TxnOp::Delete {
                key: lock_key.clone(),
            });
        }
        let answer = self
            .ctx
            .store
            .txn(Txn {
                compares: vec![
                    Compare::ModRevision {
                        key: group_key,
                        revision: members.revision,
                    },
                    Compare::Value {
                        key: lock_key,
                        value: self.ctx.node.as_bytes().to_vec(),
                    },
                ],
                success,
                failure: vec![],
            })
            .await?;
        Ok(answer.succeeded.then_some(answer.revision))
    }

    /// Hands the volume to `successors` (ISR members that took a write this
    /// copy missed): this copy leaves the ISR and the lock is released in one
    /// transaction, then this master answers nothing more. Its node's
    /// controller will not take the lock back (it is out of the ISR); the
    /// next master brings this copy back with Delta Sync.
    async fn abdicate(&self, successors: &[String]) {
        let mut members = self.members.write().await;
        loop {
            let next = members.record.abdicate(successors);
            if next.isr.is_empty() {
                tracing::error!(
                    volume = self.name(),
                    "no in-sync replica left to hand the volume to"
                );
                return;
            }
            match self.commit(&members, &next, true).await {
                Ok(Some(_)) => {
                    tracing::warn!(volume = self.name(), epoch = self.epoch, next_master = %next.master, isr = ?next.isr, "left the in-sync set and released the lock");
                    self.depose();
                    return;
                }
                Ok(None) => {
                    if self.refresh(&mut members).await.is_err() {
                        return;
                    }
                }
                Err(err) => {
                    tracing::error!(volume = self.name(), error = %err, "handing the volume over failed; stepping down");
                    self.depose();
                    return;
                }
            }
        }
    }

    /// A peer claims a newer epoch than this master's. Peers are not taken at
    /// their word (a replica admits only epochs the store confirmed, but a
    /// stale or lying peer must not take a volume down): the store decides.
    pub async fn confirm_newer_epoch(&self, claimed: u64) {
        if claimed <= self.epoch {
            return;
        }
        let mut members = self.members.write().await;
        if self.refresh(&mut members).await.is_ok() {
            tracing::warn!(
                volume = self.name(),
                epoch = self.epoch,
                claimed,
                "a peer claims a newer epoch the store does not have; staying master"
            );
        }
    }

    /// After a failed commit: re-reads the group; a newer epoch (or a lost
    /// lock) deposes this master.
    async fn refresh(&self, members: &mut Members) -> Result<()> {
        let key = self.ctx.key(Kind::Groups, self.name());
        let current = self.ctx.store.get(&key).await?;
        let lock = self
            .ctx
            .store
            .get(&self.ctx.key(Kind::Locks, self.name()))
            .await?;
        let still_mine = lock.is_some_and(|kv| kv.value == self.ctx.node.as_bytes());
        match current.and_then(|kv| {
            serde_json::from_slice::<GroupRecord>(&kv.value)
                .ok()
                .map(|record| (record, kv.mod_revision))
        }) {
            Some((record, revision)) if record.epoch == self.epoch && still_mine => {
                members.record = record;
                members.revision = revision;
                Ok(())
            }
            _ => {
                self.depose();
                self.check()
            }
        }
    }

    /// ISR members whose node is gone (its lease expired) or whose stream
    /// broke leave the ISR even while no write is failing on them, so an
    /// idle volume shows its lost copy and the registry can replace it.
    pub async fn drop_lost_members(&self) -> Result<()> {
        let lost: Vec<String> = {
            let members = self.members.read().await;
            members
                .replicas(&self.ctx.node)
                .filter(|node| {
                    self.ctx.mirror.node(node).is_none()
                        || members.links.get(*node).is_none_or(|conn| conn.is_dead())
                })
                .cloned()
                .collect()
        };
        self.leave_isr(&lost).await
    }

    /// Copies this master has to bring back: in the spec, not in the ISR,
    /// not already syncing.
    pub async fn out_of_sync(&self) -> Vec<String> {
        let Some(spec) = self.ctx.mirror.spec(self.name()) else {
            return vec![];
        };
        let members = self.members.read().await;
        spec.copy_nodes()
            .into_iter()
            .filter(|node| !members.record.in_sync(node) && !members.syncing.contains_key(node))
            .collect()
    }

    pub async fn isr(&self) -> Vec<String> {
        self.members.read().await.record.isr.clone()
    }

    pub fn replica_timeout(&self) -> Duration {
        self.ctx.replica_timeout
    }
}
