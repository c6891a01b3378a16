//! Clusters and grants: `tether cluster …` and `tether grant …`.

use tether_proto::federation::{
    AddGrantRequest, AddSatelliteRequest, AddSatelliteResponse, ClusterRecord, ClusterView,
    GrantRecord, GrantView,
};

use super::{ApiResult, AppState};

fn satellite_view(record: &ClusterRecord) -> ClusterView {
    ClusterView {
        name: record.name.clone(),
        role: "satellite".into(),
        nodes_up: 0,
        state: record.state.as_str().into(),
        last_seen_unix_ms: record.last_seen_unix_ms,
        certificate_not_after_unix_ms: record.certificate_not_after_unix_ms,
    }
}

/// `GET /v1/clusters`: this central cluster, then its satellites.
pub(crate) async fn list_clusters(state: AppState) -> ApiResult<Vec<ClusterView>> {
    let nodes = state.nodes().await?;
    let mut views = vec![ClusterView {
        name: state.cluster.clone(),
        role: "central".into(),
        nodes_up: nodes.len(),
        state: "up".into(),
        last_seen_unix_ms: None,
        certificate_not_after_unix_ms: None,
    }];
    let satellites = crate::federation::satellites(state.store.as_ref(), &state.cluster).await?;
    views.extend(satellites.iter().map(satellite_view));
    Ok(views)
}

/// `POST /v1/clusters`: adds a satellite and answers its join token.
pub(crate) async fn add_satellite(
    state: AppState,
    request: AddSatelliteRequest,
) -> ApiResult<AddSatelliteResponse> {
    let ttl = std::time::Duration::from_secs(request.ttl_seconds.unwrap_or(3600));
    let answer =
        crate::federation::add_satellite(state.store.as_ref(), &state.cluster, &request.name, ttl)
            .await?;
    Ok(answer)
}

/// `DELETE /v1/clusters/{name}`: revokes a satellite.
pub(crate) async fn remove_satellite(state: AppState, name: String) -> ApiResult<ClusterView> {
    let record = crate::federation::revoke(state.store.as_ref(), &state.cluster, &name).await?;
    Ok(satellite_view(&record))
}

/// `GET /v1/grants[?satellite=S]`, with each prefix grant's use.
pub(crate) async fn list_grants(
    state: AppState,
    satellite: Option<String>,
) -> ApiResult<Vec<GrantView>> {
    let grants =
        crate::grants::list(state.store.as_ref(), &state.cluster, satellite.as_deref()).await?;
    Ok(crate::grants::views(grants, &state.specs().await?))
}

/// `POST /v1/grants`.
pub(crate) async fn add_grant(state: AppState, request: AddGrantRequest) -> ApiResult<GrantRecord> {
    let grant = crate::grants::add(state.store.as_ref(), &state.cluster, request).await?;
    Ok(grant)
}

/// `DELETE /v1/grants/{satellite}/{id}` (`id`: `volume:NAME` or `prefix:P`).
pub(crate) async fn remove_grant(state: AppState, satellite: String, id: String) -> ApiResult<()> {
    crate::grants::remove(state.store.as_ref(), &state.cluster, &satellite, &id).await?;
    Ok(())
}
