//! One controller per local copy: takes the volume's lock when this copy
//! may become master, and steps down when it must.
//!
//! A copy may take the lock when the lock is free, its node's lease is alive,
//! it is in the ISR (only ISR members hold every acknowledged write), and it
//! has itself taken part in the group's current epoch (a copy re-created
//! empty on a node that lost it is listed in the ISR, but has not).
//! The last master goes first; the others wait until its node is gone or the
//! lock has stayed free for a while. Taking the lock is one transaction: the
//! lock key (bound to this node's lease) is created only if absent, and the
//! group record is rewritten with the next epoch only if unchanged since it
//! was read. A lock this node holds while it serves no master (it stepped
//! down alive, or a takeover's answer was lost) is released, compared on
//! value and lease, so the volume never stays locked by a node that does
//! not serve it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_proto::keys::Kind;

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
        let lease = ctx.lease.load(Ordering::Acquire);
        let ours = lock
            .as_ref()
            .is_some_and(|lock| lock.node == ctx.node && lock.lease == lease);
        if let Some(master) = ctx.master(&name) {
            let same_epoch = group
                .as_ref()
                .is_some_and(|(group, _)| group.epoch == master.epoch);
            if master.is_deposed() || (seen >= acquired_at && !(ours && same_epoch)) {
                master.depose();
                ctx.masters.write().unwrap().remove(&name);
                tracing::warn!(epoch = master.epoch, "stepped down as master");
                continue; // at once: release the lock if it is still ours
            }
        } else if ours {
            // Held, not served: nobody else can take it while this node lives.
            release_lock(&ctx, &name, lease).await;
        } else if lock.is_none() {
            let since = *lock_free_since.get_or_insert_with(Instant::now);
            if let Some((group, revision)) = group {
                let last_master_gone = ctx.mirror.node(&group.master).is_none();
                let took_part = ctx.fence(&name, volume.dir()).newest() >= group.epoch;
                let eligible = group.in_sync(&ctx.node)
                    && took_part
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
    // The copy takes part in the new epoch before it exists: a crash after
    // the transaction must not leave the only ISR member ineligible.
    // Raising the fence also waits out any write still running under the
    // epoch this copy replicated.
    if let Err(err) = ctx.fence(name, volume.dir()).raise(next.epoch).await {
        tracing::error!(error = %err, "recording the epoch failed; not taking the lock");
        return None;
    }
    let (group_key, lock_key) = (ctx.key(Kind::Groups, name), ctx.key(Kind::Locks, name));
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
    let revision = match answer {
        Ok(answer) if answer.succeeded => answer.revision,
        Ok(_) => return None,
        Err(err) => {
            // The transaction may have committed: the store says.
            tracing::warn!(error = %err, "taking the volume lock: no answer; reading it back");
            committed_takeover(ctx, name, &next, lease).await?
        }
    };
    tracing::info!(
        epoch = next.epoch,
        isr = ?next.isr,
        previous_master = %group.master,
        "took the volume lock; serving as master"
    );
    metrics::counter!("tether_group_takeovers_total", "volume" => name.to_string()).increment(1);
    let master = MasterState::new(ctx.clone(), volume.clone(), next, revision, lease);
    if let Err(err) = master.start().await {
        // The lock is released on the next pass (held, not served).
        tracing::warn!(error = %err, "could not start as master");
        master.depose();
        return Some(revision);
    }
    // The DR role's gate is set before the master answers anything.
    crate::dr::shipper::initial_gate(&master);
    ctx.masters
        .write()
        .unwrap()
        .insert(name.to_string(), master.clone());
    crate::dr::shipper::spawn(master.clone());
    super::sync::spawn_resync_loop(master);
    Some(revision)
}

/// After a takeover transaction whose answer was lost: its group record's
/// revision if it committed (the lock is this node's, under this lease, and
/// the group record is the one it wrote), `None` otherwise.
async fn committed_takeover(
    ctx: &GroupContext,
    name: &str,
    next: &GroupRecord,
    lease: i64,
) -> Option<i64> {
    let lock = ctx.store.get(&ctx.key(Kind::Locks, name)).await.ok()??;
    if lock.value != ctx.node.as_bytes() || lock.lease != Some(lease) {
        return None;
    }
    let group = ctx.store.get(&ctx.key(Kind::Groups, name)).await.ok()??;
    match serde_json::from_slice::<GroupRecord>(&group.value) {
        Ok(record) if record == *next => Some(group.mod_revision),
        // Ours but not as written: held, not served; released on the next pass.
        _ => None,
    }
}

/// Deletes the volume's lock if this node still holds it under `lease`.
async fn release_lock(ctx: &GroupContext, name: &str, lease: i64) {
    let lock_key = ctx.key(Kind::Locks, name);
    let release = Txn {
        compares: vec![
            Compare::Value {
                key: lock_key.clone(),
                value: ctx.node.as_bytes().to_vec(),
            },
            Compare::Lease {
                key: lock_key.clone(),
                lease,
            },
        ],
        success: vec![TxnOp::Delete { key: lock_key }],
        failure: vec![],
    };
    match ctx.store.txn(release).await {
        Ok(answer) if answer.succeeded => {
            tracing::warn!("released the volume lock this node held without serving")
        }
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "releasing the volume lock failed; will retry"),
    }
}
