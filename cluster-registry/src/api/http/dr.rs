//! The JSON front end's DR routes: pairing with a peer cluster and the
//! volumes' DR links.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use tether_proto::admin::VolumeView;
use tether_proto::dr::*;

use super::super::{dr, peers, ApiResult, AppState};
use super::ERROR;
use crate::error::JsonBody;
use tether_proto::admin::ErrorBody;

#[utoipa::path(get, path = "/v1/ca", tag = "dr",
    responses((status = 200, body = CaCertificate)))]
pub(super) async fn ca_certificate(State(state): State<AppState>) -> Json<CaCertificate> {
    Json(peers::ca_certificate(&state))
}

#[utoipa::path(get, path = "/v1/peers", tag = "dr",
    responses((status = 200, body = Vec<PeerView>), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn list_peers(State(state): State<AppState>) -> ApiResult<Json<Vec<PeerView>>> {
    Ok(Json(peers::list_peers(state).await?))
}

#[utoipa::path(post, path = "/v1/peers", tag = "dr", request_body = AddPeerRequest,
    responses((status = 201, body = AddPeerResponse), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn add_peer(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<AddPeerRequest>,
) -> ApiResult<(StatusCode, Json<AddPeerResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(peers::add_peer(state, request).await?),
    ))
}

#[utoipa::path(post, path = "/v1/peers/accept", tag = "dr", request_body = AcceptPeerRequest,
    responses((status = 200, body = AcceptPeerResponse), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn accept_peer(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<AcceptPeerRequest>,
) -> ApiResult<Json<AcceptPeerResponse>> {
    Ok(Json(peers::accept_peer(state, request).await?))
}

#[utoipa::path(post, path = "/v1/peers/{name}/link", tag = "dr", params(("name" = String, Path)), request_body = LinkPeerRequest,
    responses((status = 200, body = PeerView), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn link_peer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<LinkPeerRequest>,
) -> ApiResult<Json<PeerView>> {
    Ok(Json(peers::link_peer(state, name, request).await?))
}

#[utoipa::path(get, path = "/v1/dr/links", tag = "dr",
    responses((status = 200, body = Vec<DrLinkView>), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn list_dr_links(
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<DrLinkView>>> {
    Ok(Json(dr::list(state).await?))
}

#[utoipa::path(post, path = "/v1/dr/links", tag = "dr", request_body = DrLinkRequest,
    responses((status = 201, body = DrLinkView), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn link_dr(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<DrLinkRequest>,
) -> ApiResult<(StatusCode, Json<DrLinkView>)> {
    Ok((StatusCode::CREATED, Json(dr::link(state, request).await?)))
}

#[utoipa::path(get, path = "/v1/dr/links/{volume}", tag = "dr", params(("volume" = String, Path)),
    responses((status = 200, body = DrLinkView), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn dr_status(
    State(state): State<AppState>,
    Path(volume): Path<String>,
) -> ApiResult<Json<DrLinkView>> {
    Ok(Json(dr::status(state, volume).await?))
}

#[utoipa::path(post, path = "/v1/dr/links/{volume}/promote", tag = "dr", params(("volume" = String, Path)), request_body = DrPromoteRequest,
    responses((status = 200, body = DrLinkView), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn promote_dr(
    State(state): State<AppState>,
    Path(volume): Path<String>,
    JsonBody(request): JsonBody<DrPromoteRequest>,
) -> ApiResult<Json<DrLinkView>> {
    Ok(Json(dr::promote(state, volume, request.force).await?))
}

#[utoipa::path(post, path = "/v1/dr/links/{volume}/failback", tag = "dr", params(("volume" = String, Path)),
    responses((status = 200, body = DrLinkView), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn failback_dr(
    State(state): State<AppState>,
    Path(volume): Path<String>,
) -> ApiResult<Json<DrLinkView>> {
    Ok(Json(dr::failback(state, volume).await?))
}

#[utoipa::path(post, path = "/v1/dr/secondaries", tag = "dr", request_body = DrSecondaryRequest,
    responses((status = 201, body = Vec<VolumeView>), (status = "default", body = ErrorBody, description = ERROR)))]
pub(super) async fn create_dr_secondary(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<DrSecondaryRequest>,
) -> ApiResult<(StatusCode, Json<Vec<VolumeView>>)> {
    Ok((
        StatusCode::CREATED,
        Json(dr::create_secondary(state, request).await?),
    ))
}
