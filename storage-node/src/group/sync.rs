//! Delta Sync: the master brings a copy that is out of the ISR back by
//! comparing hash trees and copying only the chunks that differ, while
//! serving I/O.
//!
//! Order of a sync (ARCHITECTURE.md, rules 1 and 5):
//! 1. the copy starts receiving every live write (taking the members lock
//!    waits out writes already in flight), so nothing written from now on
//!    can be missed;
//! 2. both sides settle their dirty chunks (a stale hash must never say
//!    "same"), then the master walks the trees from the root, fetching only
//!    the children of differing nodes;
//! 3. each differing chunk is read and sent holding its range in the
//!    master's write order, so a
//!    live write to it lands on the copy either before the copy of the chunk
//!    was read or after the copy was applied, never in between;
//! 4. a second comparison checks the result (and copies what raced);
//! 5. the copy joins the ISR by compare-and-swap; from then on writes wait for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tether_proto::admin::SyncProgress;
use tether_proto::block::Frame;
use tracing::Instrument;

use super::master::MasterState;
use super::transport::BlockConn;
use crate::error::{NodeError, Result};
use crate::hashlist::DiffWalk;

/// Node indices per tree request: as many as a peer takes in one.
const INDICES_PER_REQUEST: usize = tether_proto::block::MAX_TREE_INDICES;
/// Comparison passes before the copy joins the ISR: one to copy, one to check.
const PASSES: usize = 2;
/// How often the master looks for copies to bring back.
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);

/// While `master` serves, brings every copy of the spec that is out of the
/// ISR back as soon as it answers.
pub fn spawn_resync_loop(master: Arc<MasterState>) {
    tokio::spawn(
        async move {
            while !master.is_deposed() {
                if let Some(request) = master.ctx.mirror.verify_request(master.name()) {
                    let handled = master.verify.lock().unwrap().as_ref().map(|report| report.id);
                    if handled != Some(request.id) {
                        super::verify::run(&master, request.id, request.repair).await;
                    }
                }
                if let Err(err) = master.drop_lost_members().await {
                    tracing::warn!(volume = master.name(), error = %err, "dropping lost replicas failed");
                }
                for node in master.out_of_sync().await {
                    match master.connect(&node).await {
                        Ok(conn) => {
                            // One copy at a time: syncs share the master's disk and network.
                            if let Err(err) = delta_sync(&master, &node, conn).await {
                                tracing::warn!(volume = master.name(), copy = %node, error = %err, "Delta Sync failed; will retry");
                            }
                        }
                        Err(err) => {
                            tracing::debug!(volume = master.name(), copy = %node, error = %err, "copy not reachable yet")
                        }
                    }
                }
                tokio::time::sleep(RESYNC_INTERVAL).await;
            }
        }
        .in_current_span(),
    );
}

/// Reconciles `node`'s copy with the master's and adds it to the ISR.
pub async fn delta_sync(master: &Arc<MasterState>, node: &str, conn: Arc<BlockConn>) -> Result<()> {
    master.begin_sync(node, conn.clone()).await;
    let result = reconcile(master, node, &conn).await;
    if let Err(NodeError::NotMaster { epoch, .. }) = &result {
        // The copy claims a newer epoch; the store decides (no lock is held here).
        master.confirm_newer_epoch(*epoch).await;
    }
    let result = match result {
        Ok(()) => master.join_isr(node).await,
        Err(err) => Err(err),
    };
    master.end_sync(node).await;
    if result.is_err() {
        master.syncs.lock().unwrap().remove(node);
    }
    result
}

async fn reconcile(master: &Arc<MasterState>, node: &str, conn: &BlockConn) -> Result<()> {
    let volume = &master.volume;
    let started = Instant::now();
    let chunk_size = volume.chunk_size();
    let mut progress = SyncProgress {
        node: node.to_string(),
        phase: "comparing".into(),
        chunks_total: volume.n_chunks(),
        started_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
        ..Default::default()
    };
    let publish = |progress: &SyncProgress| {
        master
            .syncs
            .lock()
            .unwrap()
            .insert(node.to_string(), progress.clone());
    };
    publish(&progress);
    tracing::info!(
        volume = volume.name(),
        copy = node,
        epoch = master.epoch,
        "Delta Sync started"
    );
    let limit = master.ctx.sync_rate_limit;
    let labels = [("volume", volume.name().to_string())];
    for pass in 0..PASSES {
        let rehashed_before = volume.bytes_rehashed();
        let (differing, fetched) = differing_chunks(master, node, conn).await?;
        progress.source_bytes_read += volume.bytes_rehashed() - rehashed_before;
        metrics::counter!("tether_sync_hashes_fetched_total", &labels).increment(fetched);
        progress.hashes_fetched += fetched;
        progress.chunks_compared = progress.chunks_total;
        progress.chunks_differing += differing.len() as u64;
        progress.phase = "copying".into();
        progress.elapsed_ms = started.elapsed().as_millis() as u64;
        publish(&progress);
        if differing.is_empty() {
            break;
        }
        tracing::info!(
            volume = volume.name(),
            copy = node,
            pass,
            differing = differing.len(),
            "copying differing chunks"
        );
        for chunk_idx in differing {
            let offset = chunk_idx * chunk_size;
            let length = chunk_size.min(volume.size_bytes().saturating_sub(offset));
            if length == 0 {
                continue;
            }
            let copied = copy_chunk(master, node, conn, chunk_idx, length).await?;
            progress.source_bytes_read += length;
            progress.chunks_copied += 1;
            progress.bytes_copied += copied;
            metrics::counter!("tether_sync_chunks_copied_total", &labels).increment(1);
            metrics::counter!("tether_sync_bytes_copied_total", &labels).increment(copied);
            let elapsed = started.elapsed().as_secs_f64().max(1e-3);
            progress.bytes_per_sec = (progress.bytes_copied as f64 / elapsed) as u64;
            let left = progress
                .chunks_differing
                .saturating_sub(progress.chunks_copied);
            progress.eta_seconds = (left * chunk_size)
                .checked_div(progress.bytes_per_sec)
                .unwrap_or(0);
            progress.elapsed_ms = started.elapsed().as_millis() as u64;
            if progress.chunks_copied.is_multiple_of(64) {
                publish(&progress);
            }
            if limit > 0 {
                let due = Duration::from_secs_f64(progress.bytes_copied as f64 / limit as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        flush_copy(master, node, conn).await?;
    }
    progress.phase = "done".into();
    progress.eta_seconds = 0;
    progress.elapsed_ms = started.elapsed().as_millis() as u64;
    publish(&progress);
    tracing::info!(
        volume = volume.name(),
        copy = node,
        chunks_total = progress.chunks_total,
        chunks_copied = progress.chunks_copied,
        bytes_copied = progress.bytes_copied,
        hashes_fetched = progress.hashes_fetched,
        seconds = started.elapsed().as_secs_f64(),
        "Delta Sync done"
    );
    Ok(())
}

/// Settles both sides' hashes (rule 1) and walks the two hash trees from
/// the root, fetching only the children of differing nodes; returns the
/// differing chunks and how many remote hashes were fetched.
pub(super) async fn differing_chunks(
    master: &MasterState,
    node: &str,
    conn: &BlockConn,
) -> Result<(Vec<u64>, u64)> {
    master.volume.settle().await?;
    let tree = master.volume.hash_tree();
    let mut walk = DiffWalk::new(&tree);
    while let Some((level, indices)) = walk.next_request() {
        let mut hashes = Vec::with_capacity(indices.len());
        for batch in indices.chunks(INDICES_PER_REQUEST) {
            let request = Frame::TreeRequest {
                seq: 0,
                epoch: master.epoch,
                level: level as u8,
                indices: batch.to_vec(),
            };
            match conn.request(request, master.replica_timeout() * 4).await? {
                Frame::TreeResponse { hashes: got, .. } => hashes.extend(got),
                other => return Err(refused(master, node, &other)),
            }
        }
        walk.feed(&hashes);
    }
    Ok(walk.finish())
}

/// Copies one chunk (`length` bytes of it, the last may be short) from the
/// master to the copy, holding its range in the write order (rule 5);
/// returns the payload bytes sent (0 for a zero chunk, sent as a hole).
pub(super) async fn copy_chunk(
    master: &MasterState,
    node: &str,
    conn: &BlockConn,
    chunk_idx: u64,
    length: u64,
) -> Result<u64> {
    let volume = &master.volume;
    let offset = chunk_idx * volume.chunk_size();
    let _ordered = master.lock_chunk(chunk_idx).await;
    let data = volume.read(offset, length as u32).await?;
    let frame = if data.iter().all(|byte| *byte == 0) {
        Frame::WriteZeroes {
            seq: 0,
            epoch: master.epoch,
            offset,
            length,
            punch: true,
            fua: false,
        }
    } else {
        Frame::ChunkData {
            seq: 0,
            epoch: master.epoch,
            chunk_idx,
            data: Bytes::from(data),
        }
    };
    let sent = match &frame {
        Frame::ChunkData { data, .. } => data.len() as u64,
        _ => 0,
    };
    match conn.request(frame, master.replica_timeout()).await? {
        Frame::Ack { error: 0, .. } => Ok(sent),
        other => Err(refused(master, node, &other)),
    }
}

/// Flushes the copy, so the chunks it took are as durable as acknowledged writes.
pub(super) async fn flush_copy(master: &MasterState, node: &str, conn: &BlockConn) -> Result<()> {
    let flush = Frame::Flush {
        seq: 0,
        epoch: master.epoch,
    };
    match conn.request(flush, master.replica_timeout()).await? {
        Frame::Ack { error: 0, .. } => Ok(()),
        other => Err(refused(master, node, &other)),
    }
}

fn refused(master: &MasterState, node: &str, answer: &Frame) -> NodeError {
    if let Frame::StaleEpoch { newest_epoch, .. } = answer {
        return NodeError::NotMaster {
            volume: master.name().to_string(),
            epoch: *newest_epoch,
        };
    }
    NodeError::Peer {
        volume: master.name().to_string(),
        peer: node.to_string(),
        reason: format!("answered {answer:?} during Delta Sync"),
    }
}
