//! Replacing copies whose node stays down.

use std::time::{Duration, Instant};

use tether_proto::admin::NodeRecord;

use super::AppState;
use crate::placement;

/// Replaces copies whose node has been down for `replace_after` and that are
/// out of the in-sync set (an ISR member may hold the only current data, so
/// it is never replaced): a new node is placed with the volume's constraints
/// and the spec's copy list is changed by compare-and-swap. The new node
/// creates an empty copy and the master seeds it by Delta Sync (a thin
/// volume's unwritten chunks hash the same on both sides, so only written
/// chunks are copied).
pub async fn replace_lost_copies(state: AppState, replace_after: Duration) {
    let mut down_since: std::collections::HashMap<(String, String), Instant> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Three reads a pass, however many volumes: store load stays flat.
        let (Ok(nodes), Ok(specs), Ok(groups)) = (
            state.nodes().await,
            state.specs().await,
            state.groups().await,
        ) else {
            continue;
        };
        let mut still_down = std::collections::HashSet::new();
        for spec in &specs {
            let Some(group) = groups.get(&spec.name) else {
                continue;
            };
            for copy in spec.copy_nodes() {
                if nodes.iter().any(|node| node.name == copy) || group.in_sync(&copy) {
                    continue;
                }
                let key = (spec.name.clone(), copy.clone());
                still_down.insert(key.clone());
                let since = *down_since.entry(key).or_insert_with(Instant::now);
                if since.elapsed() < replace_after {
                    continue;
                }
                let candidates: Vec<NodeRecord> = nodes
                    .iter()
                    .filter(|node| !spec.copy_nodes().contains(&node.name))
                    .cloned()
                    .collect();
                let remaining: Vec<NodeRecord> = nodes
                    .iter()
                    .filter(|node| spec.copy_nodes().contains(&node.name))
                    .cloned()
                    .collect();
                let replacement = match placement::place_beside(
                    spec.size_bytes,
                    1,
                    &spec.placement,
                    &candidates,
                    &specs,
                    &remaining,
                ) {
                    Ok(mut chosen) => chosen.remove(0),
                    Err(err) => {
                        tracing::warn!(volume = %spec.name, lost = %copy, error = %err, "no node to replace a lost copy on");
                        continue;
                    }
                };
                let replaced = state
                    .update_spec(&spec.name, |spec| {
                        for node in spec.copies.iter_mut() {
                            if *node == copy {
                                *node = replacement.clone();
                            }
                        }
                        Ok(())
                    })
                    .await;
                match replaced {
                    Ok(_) => tracing::warn!(
                        volume = %spec.name,
                        lost = %copy,
                        replacement = %replacement,
                        down_secs = since.elapsed().as_secs(),
                        "replaced a copy whose node stayed down"
                    ),
                    Err(err) => {
                        tracing::warn!(volume = %spec.name, error = %err, "replacing a lost copy failed")
                    }
                }
            }
        }
        down_since.retain(|key, _| still_down.contains(key));
    }
}
