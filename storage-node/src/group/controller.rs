//! One controller per local copy: takes the volume's lock when this copy
//! may become master, and steps down when it must.
//!
//! A copy may take the lock when the lock is free, its node's lease is alive,
//! and it is in the ISR (only ISR members hold every acknowledged write).
//! The last master goes first; the others wait until its node is gone or the
//! lock has stayed free for a while. Taking the lock is one transaction: the
//! lock key (bound to this node's lease) is created only if absent, and the
//! group record is rewritten with the next epoch only if unchanged since it
//! was read.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_store::{Compare, Txn, TxnOp};
use tether_proto::group::GroupRecord;
use tracing::Instrument;

use super::master::MasterState;
use super::GroupContext;
use crate::engine::Volume;

/// How often a controller looks again even without a change in the store.
const TICK: Duration = Duration::from_secs(1);

pub fn spawn(ctx: Arc<GroupContext>, volume: Arc<Volume>) -> tokio::task::JoinHandle<()> {
    let span = tracing::info_span!("group", volume = %volume.name());
    tokio::spawn(control(ctx, volume).instrument(span))
}

async fn control(ctx: Arc<GroupContext>, volume: Arc<Volume>) {
    let name = volume.name().to_string();
    let mut changes = ctx.mirror.subscribe();
    let mut lock_free_since: Option<Instant> = None;
    // The store revision of this node's last takeover: the mirror must have
    // caught up with it before its view can depose the new master.
    let mut acquired_at = 0i64;
    // Others wait this long for a last master that is alive but not retaking the lock.
    let patience = ctx.replica_timeout * 2;
    loop {
        let seen = *changes.borrow_and_update();
        let group = ctx.mirror.group(&name);
        let lock = ctx.mirror.lock(&name);
        if let Some(master) = ctx.master(&name) {
            let lease = ctx.lease.load(Ordering::Acquire);
            let holds = lock
                .as_ref()
                .is_some_and(|lock| lock.node == ctx.node && lock.lease == lease);
            let same_epoch = group
                .as_ref()
                .is_some_and(|(group, _)| group.epoch == master.epoch);
            if master.is_deposed() || (seen >= acquired_at && !(holds && same_epoch)) {
                master.depose();
                ctx.masters.write().unwrap().remove(&name);
                tracing::warn!(epoch = master.epoch, "stepped down as master");
            }
        } else if lock.is_none() {
            let since = *lock_free_since.get_or_insert_with(Instant::now);
            if let Some((group, revision)) = group {
                let last_master_gone = ctx.mirror.node(&group.master).is_none();
                let eligible = group.in_sync(&ctx.node)
                    && ctx.lease_clock.valid()
                    && (group.master == ctx.node || last_master_gone || since.elapsed() > patience);
                if eligible {
                    if let Some(revision) = take_over(&ctx, &volume, group, revision).await {
                        acquired_at = revision;
                    }
                }
            }
        } else {
            lock_free_since = None;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// Takes the lock with the next epoch; on success starts serving as master
/// and returns the store revision of the takeover.
async fn take_over(
    ctx: &Arc<GroupContext>,
    volume: &Arc<Volume>,
    group: GroupRecord,
    revision: i64,
) -> Option<i64> {
    let name = volume.name();
    let next = group.promote(&ctx.node).ok()?;
    let lease = ctx.lease.load(Ordering::Acquire);
    let (group_key, lock_key) = (ctx.key("groups", name), ctx.key("locks", name));
    let answer = ctx
        .store
        .txn(Txn {
            compares: vec![
                Compare::ModRevision {
                    key: lock_key.clone(),
                    revision: 0,
                },
                Compare::ModRevision {
                    key: group_key.clone(),
                    revision,
                },
            ],
            success: vec![
                TxnOp::Put {
                    key: lock_key,
                    value: ctx.node.as_bytes().to_vec(),
                    lease: Some(lease),
                },
                TxnOp::Put {
                    key: group_key,
                    value: serde_json::to_vec(&next).expect("group record serializes"),
                    lease: None,
                },
            ],
            failure: vec![],
        })
        .await;
    let answer = match answer {
        Ok(answer) if answer.succeeded => answer,
        Ok(_) => return None,
        Err(err) => {
            tracing::warn!(error = %err, "taking the volume lock failed");
            return None;
        }
    };
    if let Err(err) = ctx.see_epoch(name, volume.dir(), next.epoch).await {
        tracing::error!(error = %err, "recording the epoch failed");
    }
    tracing::info!(
        epoch = next.epoch,
        isr = ?next.isr,
        previous_master = %group.master,
        "took the volume lock; serving as master"
    );
    metrics::counter!("tether_group_takeovers_total", "volume" => name.to_string()).increment(1);
    let master = MasterState::new(ctx.clone(), volume.clone(), next, answer.revision, lease);
    if let Err(err) = master.start().await {
        tracing::warn!(error = %err, "could not start as master");
        master.depose();
        return Some(answer.revision);
    }
    ctx.masters
        .write()
        .unwrap()
        .insert(name.to_string(), master.clone());
    super::sync::spawn_resync_loop(master);
    Some(answer.revision)
}
