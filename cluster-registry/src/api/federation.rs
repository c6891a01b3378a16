//! Clusters and grants: `tether cluster …` and `tether grant …`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
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
pub(super) async fn list_clusters(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<ClusterView>>> {
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
    Ok(Json(views))
}

/// `POST /v1/clusters`: adds a satellite and answers its join token.
pub(super) async fn add_satellite(
    State(state): State<AppState>,
    crate::error::JsonBody(request): crate::error::JsonBody<AddSatelliteRequest>,
) -> ApiResult<(StatusCode, Json<AddSatelliteResponse>)> {
    let ttl = std::time::Duration::from_secs(request.ttl_seconds.unwrap_or(3600));
    let answer =
        crate::federation::add_satellite(state.store.as_ref(), &state.cluster, &request.name, ttl)
            .await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `DELETE /v1/clusters/{name}`: revokes a satellite.
pub(super) async fn remove_satellite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ClusterView>> {
    let record = crate::federation::revoke(state.store.as_ref(), &state.cluster, &name).await?;
    Ok(Json(satellite_view(&record)))
}

#[derive(serde::Deserialize)]
pub(super) struct GrantQuery {
    satellite: Option<String>,
}

/// `GET /v1/grants[?satellite=S]`, with each prefix grant's use.
pub(super) async fn list_grants(
    State(state): State<AppState>,
    Query(query): Query<GrantQuery>,
) -> ApiResult<Json<Vec<GrantView>>> {
    let grants = crate::grants::list(
        state.store.as_ref(),
        &state.cluster,
        query.satellite.as_deref(),
    )
    .await?;
    Ok(Json(crate::grants::views(grants, &state.specs().await?)))
}

/// `POST /v1/grants`.
pub(super) async fn add_grant(
    State(state): State<AppState>,
    crate::error::JsonBody(request): crate::error::JsonBody<AddGrantRequest>,
) -> ApiResult<(StatusCode, Json<GrantRecord>)> {
    let grant = crate::grants::add(state.store.as_ref(), &state.cluster, request).await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

/// `DELETE /v1/grants/{satellite}/{id}` (`id`: `volume:NAME` or `prefix:P`).
pub(super) async fn remove_grant(
    State(state): State<AppState>,
    Path((satellite, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    crate::grants::remove(state.store.as_ref(), &state.cluster, &satellite, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
