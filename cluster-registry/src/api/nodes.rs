//! Nodes, and join tokens for new nodes.

use tether_proto::admin::{JoinTokenRequest, JoinTokenResponse, NodeRecord, NodeView};

use super::{ApiResult, AppState};
use crate::placement;

/// Live nodes (their lease-bound registration exists) are "up"; a node that
/// still owns volumes but has no registration is listed as "down".
pub(crate) async fn list_nodes(state: AppState) -> ApiResult<Vec<NodeView>> {
    let (nodes, specs) = (state.nodes().await?, state.specs().await?);
    let allocated_by_volume = state.allocated_by_volume().await?;
    let view = |name: &str, up: Option<&NodeRecord>| NodeView {
        name: name.to_string(),
        cluster: state.cluster.clone(),
        state: if up.is_some() { "up" } else { "down" }.into(),
        capacity_bytes: up.map_or(0, |node| node.capacity_bytes),
        provisionable_bytes: up.map_or(0, |node| node.provisioning_limit()),
        allocated_bytes: specs
            .iter()
            .filter(|spec| spec.copy_nodes().iter().any(|copy| copy == name))
            .filter_map(|spec| allocated_by_volume.get(&spec.name))
            .sum(),
        provisioned_bytes: placement::provisioned_on(name, &specs),
        volumes: specs
            .iter()
            .filter(|spec| spec.copy_nodes().iter().any(|copy| copy == name))
            .count(),
        io_backend: up.map_or_else(|| "-".to_string(), |node| node.io_backend.clone()),
        labels: up.map(|node| node.labels.clone()).unwrap_or_default(),
        block_addr: up.and_then(|node| node.block_addr.clone()),
        control_addr: up.and_then(|node| node.control_addr.clone()),
        quarantined: up.map(|node| node.quarantined.clone()).unwrap_or_default(),
    };
    let mut views: Vec<NodeView> = nodes
        .iter()
        .map(|node| view(&node.name, Some(node)))
        .collect();
    let mut down: Vec<String> = specs
        .iter()
        .flat_map(|spec| spec.copy_nodes())
        .filter(|copy| !nodes.iter().any(|node| node.name == *copy))
        .collect();
    down.sort_unstable();
    down.dedup();
    views.extend(down.iter().map(|name| view(name, None)));
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(views)
}

/// `POST /v1/join-tokens`: a token a new node (or `uses` nodes) joins with.
pub(crate) async fn mint_join_token(
    state: AppState,
    request: JoinTokenRequest,
) -> ApiResult<JoinTokenResponse> {
    let ttl = std::time::Duration::from_secs(request.ttl_seconds.unwrap_or(3600));
    let (token, record) = crate::join_tokens::mint_uses(
        state.store.as_ref(),
        &state.cluster,
        request.node.as_deref(),
        ttl,
        request.uses.unwrap_or(1),
    )
    .await?;
    Ok(JoinTokenResponse {
        token,
        node: record.node,
        expires_unix_ms: record.expires_unix_ms,
    })
}
