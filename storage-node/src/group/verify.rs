//! Online verification: the master compares every in-sync copy's hash tree
//! with its own (both settled first, so no stale hash says "same") and
//! reports the chunks that differ; with repair, it copies them from the
//! master, ordered with live writes as Delta Sync does. A chunk counts as
//! differing only if two comparisons in a row say so, so a write landing
//! between the two sides' settles is not reported.
//!
//! Asked for through the store (`verify/{volume}`, see
//! `tether_proto::admin::VerifyRequestRecord`); answered in the master's
//! status (`VolumeStatus::verify`).

use std::sync::Arc;

use tether_proto::admin::{CopyVerification, VerifyReport};

use super::master::MasterState;
use super::sync::{copy_chunk, differing_chunks, flush_copy};
use crate::error::Result;

/// Most differing chunk indices a report lists per copy.
const LISTED: usize = 100;

/// Runs verification `id` and records its progress and result on the master.
pub async fn run(master: &Arc<MasterState>, id: u64, repair: bool) {
    let mut report = VerifyReport {
        id,
        repair,
        state: "running".into(),
        master: master.ctx.node.clone(),
        epoch: master.epoch,
        copies: vec![],
        error: None,
    };
    *master.verify.lock().unwrap() = Some(report.clone());
    tracing::info!(
        volume = master.name(),
        id,
        repair,
        "verifying the copies against the master"
    );
    let links: Vec<_> = {
        let members = master.members.read().await;
        members
            .links
            .iter()
            .map(|(node, conn)| (node.clone(), conn.clone()))
            .collect()
    };
    for (node, conn) in links {
        match verify_copy(master, &node, &conn, repair).await {
            Ok(copy) => {
                if copy.chunks_differing > 0 {
                    tracing::warn!(volume = master.name(), copy = %node, differing = copy.chunks_differing, repaired = copy.chunks_repaired, "an in-sync copy differs from the master");
                }
                report.copies.push(copy);
            }
            Err(err) => {
                report.state = "failed".into();
                report.error = Some(format!("verifying the copy on {node}: {err}"));
                *master.verify.lock().unwrap() = Some(report);
                return;
            }
        }
        *master.verify.lock().unwrap() = Some(report.clone());
    }
    report.state = "done".into();
    tracing::info!(
        volume = master.name(),
        id,
        copies = report.copies.len(),
        "verification done"
    );
    *master.verify.lock().unwrap() = Some(report);
}

async fn verify_copy(
    master: &MasterState,
    node: &str,
    conn: &super::transport::BlockConn,
    repair: bool,
) -> Result<CopyVerification> {
    let (first, _) = differing_chunks(master, node, conn).await?;
    let differing = if first.is_empty() {
        first
    } else {
        let (second, _) = differing_chunks(master, node, conn).await?;
        first
            .into_iter()
            .filter(|chunk| second.binary_search(chunk).is_ok())
            .collect()
    };
    let mut repaired = 0;
    if repair && !differing.is_empty() {
        let chunk_size = master.volume.chunk_size();
        for &chunk_idx in &differing {
            let length = chunk_size.min(
                master
                    .volume
                    .size_bytes()
                    .saturating_sub(chunk_idx * chunk_size),
            );
            if length > 0 {
                copy_chunk(master, node, conn, chunk_idx, length).await?;
                repaired += 1;
            }
        }
        flush_copy(master, node, conn).await?;
    }
    Ok(CopyVerification {
        node: node.to_string(),
        chunks_compared: master.volume.n_chunks(),
        chunks_differing: differing.len() as u64,
        differing: differing.iter().take(LISTED).copied().collect(),
        chunks_repaired: repaired,
    })
}
