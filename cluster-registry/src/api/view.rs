//! A volume as the API shows it: its spec, with what the store says about
//! its copies, syncs and attachments.

use tether_proto::admin::{
    AttachmentView, CopyView, NodeRecord, PresentingStatus, VolumeSpec, VolumeStatus, VolumeView,
};
use tether_proto::group::GroupRecord;

/// What the store says about a volume besides its spec.
pub(super) struct Observed<'a> {
    pub status: Option<&'a VolumeStatus>,
    pub group: Option<&'a GroupRecord>,
    pub presenting: &'a [PresentingStatus],
    pub nodes: &'a [NodeRecord],
}

pub(super) fn build_view(cluster: &str, spec: VolumeSpec, observed: &Observed) -> VolumeView {
    let status = observed.status;
    let alive = |node: &str| observed.nodes.iter().any(|record| record.name == node);
    let master = observed
        .group
        .map_or_else(|| spec.master.clone(), |group| group.master.clone());
    let copies: Vec<CopyView> = spec
        .copy_nodes()
        .into_iter()
        .map(|node| {
            let syncing = status.is_some_and(|status| {
                status
                    .syncs
                    .iter()
                    .any(|sync| sync.node == node && sync.phase != "done")
            });
            let in_sync = observed.group.is_none_or(|group| group.in_sync(&node));
            // The status key is bound to the master's lease: present means it serves.
            let state = if node == master {
                match status {
                    Some(status) if status.errors.is_empty() && status.size_bytes > 0 => "in-sync",
                    _ => "faulted",
                }
            } else if syncing {
                "syncing"
            } else if in_sync && alive(&node) {
                "in-sync"
            } else {
                "faulted"
            };
            CopyView {
                role: if node == master { "master" } else { "replica" }.into(),
                state: state.into(),
                node,
            }
        })
        .collect();
    let attachments = spec
        .attachments
        .iter()
        .map(|attachment| AttachmentView {
            uri: observed
                .presenting
                .iter()
                .filter(|presenting| presenting.node == attachment.presenter(&spec))
                .flat_map(|presenting| presenting.serving.iter())
                .find(|serving| serving.endpoint == attachment.endpoint)
                .map(|serving| serving.uri.clone())
                .unwrap_or_else(|| attachment.endpoint.clone()),
            from: attachment.from.clone(),
            node: attachment.presenter(&spec).to_string(),
        })
        .collect();
    let state = match copies.iter().find(|copy| copy.role == "master") {
        Some(copy) if copy.state == "in-sync" => {
            if copies.iter().all(|copy| copy.state == "in-sync") {
                "healthy"
            } else {
                "degraded"
            }
        }
        _ => "unavailable",
    };
    let mut errors: Vec<String> = status
        .map(|status| status.errors.clone())
        .unwrap_or_default();
    for presenting in observed.presenting {
        errors.extend(
            presenting
                .errors
                .iter()
                .map(|error| format!("node {}: {error}", presenting.node)),
        );
    }
    VolumeView {
        state: state.into(),
        errors,
        encryption: spec.encryption.clone(),
        size_bytes: spec.size_bytes,
        cluster: cluster.to_string(),
        epoch: observed.group.map_or(spec.epoch, |group| group.epoch),
        master,
        copies,
        attachments,
        chunk_size_bytes: status.map_or(0, |status| status.chunk_size_bytes),
        allocated_bytes: status.map_or(0, |status| status.allocated_bytes),
        dirty_chunks: status.map_or(0, |status| status.dirty_chunks),
        syncs: status
            .map(|status| status.syncs.clone())
            .unwrap_or_default(),
        name: spec.name,
    }
}
