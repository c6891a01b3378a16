//! The JSON front end: each route's extractors, its OpenAPI description
//! (served at `/v1/openapi.json`), and the call into the operation it
//! shares with the gRPC front end ([`super::grpc`]).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Json, Router};
use tether_proto::admin::*;
use tether_proto::federation::*;
use tether_tls::http::Peer;

use super::{attach, federation, nodes, satellites, verify, volumes, ApiResult, AppState};
use crate::error::JsonBody;
use crate::grants::Caller;

mod dr;
use dr::*;

/// The routes, each added through [`RouteTable::route`] so the OpenAPI
/// test can find every one of them.
pub(crate) struct RouteTable {
    router: Router<AppState>,
    paths: Vec<&'static str>,
    state: AppState,
}

impl RouteTable {
    /// Adds `methods` at `path`, each admitted by the path's
    /// [`Access`](crate::security::Access) (a method not served is a 405
    /// to anyone, before admission).
    fn route(mut self, path: &'static str, methods: MethodRouter<AppState>) -> Self {
        let admitted = methods.route_layer(axum::middleware::from_fn_with_state(
            self.state.clone(),
            crate::security::authorize,
        ));
        self.router = self.router.route(path, admitted);
        self.paths.push(path);
        self
    }

    #[cfg(test)]
    pub(crate) fn paths(&self) -> &[&'static str] {
        &self.paths
    }

    pub(crate) fn into_router(self) -> Router<AppState> {
        self.router
    }
}

pub(crate) fn routes(state: &AppState) -> RouteTable {
    let table = RouteTable {
        router: Router::new(),
        paths: Vec::new(),
        state: state.clone(),
    };
    table
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/clusters", get(list_clusters).post(add_satellite))
        .route(
            "/v1/clusters/{name}",
            axum::routing::delete(remove_satellite),
        )
        .route("/v1/grants", get(list_grants).post(add_grant))
        .route(
            "/v1/grants/{satellite}/{id}",
            axum::routing::delete(remove_grant),
        )
        .route("/v1/satellites/join", post(join_satellite))
        .route(
            "/v1/satellites/{name}/attachments",
            get(satellite_attachments),
        )
        .route(
            "/v1/satellites/{name}/presenting",
            post(satellite_presenting),
        )
        .route("/v1/satellites/{name}/grants", get(satellite_grants))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/join-tokens", post(mint_join_token))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/{name}", get(get_volume).delete(delete_volume))
        .route("/v1/volumes/{name}/resize", post(resize_volume))
        .route("/v1/volumes/{name}/attach", post(attach_volume))
        .route("/v1/volumes/{name}/detach", post(detach_volume))
        .route("/v1/volumes/{name}/verify", post(verify_volume))
        .route("/v1/join", post(join_node))
        .route("/v1/renew", post(renew))
        .route("/v1/ca", get(ca_certificate))
        .route("/v1/peers", get(list_peers).post(add_peer))
        .route("/v1/peers/accept", post(accept_peer))
        .route("/v1/peers/{name}/link", post(link_peer))
        .route("/v1/dr/links", get(list_dr_links).post(link_dr))
        .route("/v1/dr/links/{volume}", get(dr_status))
        .route("/v1/dr/links/{volume}/promote", post(promote_dr))
        .route("/v1/dr/links/{volume}/failback", post(failback_dr))
        .route("/v1/dr/secondaries", post(create_dr_secondary))
        .route("/v1/audit", get(list_audit))
}

/// The OpenAPI document of the JSON API.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tether admin API",
        description = "The registry's JSON API (mutual TLS). The same operations are served over gRPC as tether.admin.v1.Admin on the same address."
    ),
    paths(
        health,
        openapi_json,
        list_clusters,
        add_satellite,
        remove_satellite,
        list_grants,
        add_grant,
        remove_grant,
        join_satellite,
        satellite_attachments,
        satellite_presenting,
        satellite_grants,
        list_nodes,
        mint_join_token,
        list_volumes,
        create_volume,
        get_volume,
        delete_volume,
        resize_volume,
        attach_volume,
        detach_volume,
        verify_volume,
        join_node,
        renew,
        ca_certificate,
        list_peers,
        add_peer,
        accept_peer,
        link_peer,
        list_dr_links,
        link_dr,
        dr_status,
        promote_dr,
        failback_dr,
        create_dr_secondary,
        list_audit
    )
)]
pub struct ApiDoc;

/// Any error: its message and a stable code.
pub(super) const ERROR: &str = "an error: `{error, code}`";

#[utoipa::path(get, path = "/v1/health", responses((status = 200, description = "the registry answers")))]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"ok": true}))
}

#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "this document")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

#[utoipa::path(get, path = "/v1/clusters", tag = "federation",
    responses((status = 200, body = [ClusterView]), (status = "default", body = ErrorBody, description = ERROR)))]
async fn list_clusters(State(state): State<AppState>) -> ApiResult<Json<Vec<ClusterView>>> {
    Ok(Json(federation::list_clusters(state).await?))
}

#[utoipa::path(post, path = "/v1/clusters", tag = "federation", request_body = AddSatelliteRequest,
    responses((status = 201, body = AddSatelliteResponse), (status = "default", body = ErrorBody, description = ERROR)))]
async fn add_satellite(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<AddSatelliteRequest>,
) -> ApiResult<(StatusCode, Json<AddSatelliteResponse>)> {
    let answer = federation::add_satellite(state, request).await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

#[utoipa::path(delete, path = "/v1/clusters/{name}", tag = "federation", params(("name" = String, Path)),
    responses((status = 200, body = ClusterView), (status = "default", body = ErrorBody, description = ERROR)))]
async fn remove_satellite(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<ClusterView>> {
    Ok(Json(federation::remove_satellite(state, name).await?))
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    #[serde(default)]
    since_unix_ms: u64,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(("since_unix_ms" = Option<u64>, Query)),
    responses((status = 200, body = tether_proto::audit::AuditList), (status = "default", body = ErrorBody, description = ERROR)))]
async fn list_audit(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<tether_proto::audit::AuditList>> {
    Ok(Json(super::audit::list(state, query.since_unix_ms).await?))
}

#[derive(serde::Deserialize)]
struct GrantQuery {
    satellite: Option<String>,
}

#[utoipa::path(get, path = "/v1/grants", tag = "federation", params(("satellite" = Option<String>, Query)),
    responses((status = 200, body = [GrantView]), (status = "default", body = ErrorBody, description = ERROR)))]
async fn list_grants(
    State(state): State<AppState>,
    Query(query): Query<GrantQuery>,
) -> ApiResult<Json<Vec<GrantView>>> {
    Ok(Json(federation::list_grants(state, query.satellite).await?))
}

#[utoipa::path(post, path = "/v1/grants", tag = "federation", request_body = AddGrantRequest,
    responses((status = 201, body = GrantRecord), (status = "default", body = ErrorBody, description = ERROR)))]
async fn add_grant(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<AddGrantRequest>,
) -> ApiResult<(StatusCode, Json<GrantRecord>)> {
    let grant = federation::add_grant(state, request).await?;
    Ok((StatusCode::CREATED, Json(grant)))
}

#[utoipa::path(delete, path = "/v1/grants/{satellite}/{id}", tag = "federation",
    params(("satellite" = String, Path), ("id" = String, Path, description = "`volume:NAME` or `prefix:P`")),
    responses((status = 204), (status = "default", body = ErrorBody, description = ERROR)))]
async fn remove_grant(
    State(state): State<AppState>,
    Path((satellite, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    federation::remove_grant(state, satellite, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/satellites/join", tag = "certificates", request_body = SatelliteJoinRequest,
    responses((status = 200, body = CertificateResponse), (status = "default", body = ErrorBody, description = ERROR)))]
async fn join_satellite(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<SatelliteJoinRequest>,
) -> ApiResult<Json<CertificateResponse>> {
    Ok(Json(
        crate::security::join_satellite(state, peer, request).await?,
    ))
}

#[derive(serde::Deserialize)]
struct VersionQuery {
    version: Option<String>,
}

#[utoipa::path(get, path = "/v1/satellites/{name}/attachments", tag = "federation",
    params(("name" = String, Path), ("version" = Option<String>, Query, description = "the version held: wait up to 25 s for another")),
    responses((status = 200, body = SatelliteAttachments), (status = "default", body = ErrorBody, description = ERROR)))]
async fn satellite_attachments(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
) -> ApiResult<Json<SatelliteAttachments>> {
    let seat = satellites::WatchSeat::take(&state, &caller, &name)?;
    Ok(Json(
        satellites::attachments_after(state, caller, &seat, query.version).await?,
    ))
}

#[utoipa::path(post, path = "/v1/satellites/{name}/presenting", tag = "federation",
    params(("name" = String, Path)), request_body = SatellitePresenting,
    responses((status = 200, description = "`{\"ok\": true}`"), (status = "default", body = ErrorBody, description = ERROR)))]
async fn satellite_presenting(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(report): JsonBody<SatellitePresenting>,
) -> ApiResult<Json<serde_json::Value>> {
    satellites::satellite_presenting(state, caller, name, report).await?;
    Ok(Json(serde_json::json!({"ok": true})))
}

#[utoipa::path(get, path = "/v1/satellites/{name}/grants", tag = "federation",
    params(("name" = String, Path)),
    responses((status = 200, body = [GrantView]), (status = "default", body = ErrorBody, description = ERROR)))]
async fn satellite_grants(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<GrantView>>> {
    Ok(Json(
        satellites::satellite_grants(state, caller, name).await?,
    ))
}

#[utoipa::path(get, path = "/v1/nodes", tag = "nodes",
    responses((status = 200, body = [NodeView]), (status = "default", body = ErrorBody, description = ERROR)))]
async fn list_nodes(State(state): State<AppState>) -> ApiResult<Json<Vec<NodeView>>> {
    Ok(Json(nodes::list_nodes(state).await?))
}

#[utoipa::path(post, path = "/v1/join-tokens", tag = "nodes", request_body = JoinTokenRequest,
    responses((status = 200, body = JoinTokenResponse), (status = "default", body = ErrorBody, description = ERROR)))]
async fn mint_join_token(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<JoinTokenRequest>,
) -> ApiResult<Json<JoinTokenResponse>> {
    Ok(Json(nodes::mint_join_token(state, request).await?))
}

#[utoipa::path(get, path = "/v1/volumes", tag = "volumes",
    responses((status = 200, body = [VolumeView]), (status = "default", body = ErrorBody, description = ERROR)))]
async fn list_volumes(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<VolumeView>>> {
    Ok(Json(volumes::list_volumes(state, caller).await?))
}

#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", request_body = CreateVolumeRequest,
    responses((status = 201, body = VolumeView), (status = "default", body = ErrorBody, description = ERROR)))]
async fn create_volume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    JsonBody(request): JsonBody<CreateVolumeRequest>,
) -> ApiResult<(StatusCode, Json<VolumeView>)> {
    let view = volumes::create_volume(state, caller, request).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(get, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 200, body = VolumeView), (status = "default", body = ErrorBody, description = ERROR)))]
async fn get_volume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<VolumeView>> {
    Ok(Json(volumes::get_volume(state, caller, name).await?))
}

#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 204), (status = "default", body = ErrorBody, description = ERROR)))]
async fn delete_volume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    volumes::delete_volume(state, caller, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/volumes/{name}/resize", tag = "volumes", params(("name" = String, Path)),
    request_body = ResizeVolumeRequest,
    responses((status = 200, body = VolumeView), (status = "default", body = ErrorBody, description = ERROR)))]
async fn resize_volume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<ResizeVolumeRequest>,
) -> ApiResult<Json<VolumeView>> {
    Ok(Json(
        volumes::resize_volume(state, caller, name, request).await?,
    ))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/attach", tag = "volumes", params(("name" = String, Path)),
    request_body = AttachRequest,
    responses((status = 200, body = AttachResponse), (status = "default", body = ErrorBody, description = ERROR)))]
async fn attach_volume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<AttachRequest>,
) -> ApiResult<Json<AttachResponse>> {
    Ok(Json(
        attach::attach_volume(state, caller, name, request).await?,
    ))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/detach", tag = "volumes", params(("name" = String, Path)),
    responses((status = 200, body = VolumeView), (status = "default", body = ErrorBody, description = ERROR)))]
async fn detach_volume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<VolumeView>> {
    Ok(Json(attach::detach_volume(state, caller, name).await?))
}

#[utoipa::path(post, path = "/v1/volumes/{name}/verify", tag = "volumes", params(("name" = String, Path)),
    request_body = VerifyRequest,
    responses((status = 200, body = VerifyReport), (status = "default", body = ErrorBody, description = ERROR)))]
async fn verify_volume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    JsonBody(request): JsonBody<VerifyRequest>,
) -> ApiResult<Json<VerifyReport>> {
    Ok(Json(verify::verify_volume(state, name, request).await?))
}

#[utoipa::path(post, path = "/v1/join", tag = "certificates", request_body = JoinRequest,
    responses((status = 200, body = CertificateResponse), (status = "default", body = ErrorBody, description = ERROR)))]
async fn join_node(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<JoinRequest>,
) -> ApiResult<Json<CertificateResponse>> {
    Ok(Json(crate::security::join(state, peer, request).await?))
}

#[utoipa::path(post, path = "/v1/renew", tag = "certificates", request_body = RenewRequest,
    responses((status = 200, body = CertificateResponse), (status = "default", body = ErrorBody, description = ERROR)))]
async fn renew(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<RenewRequest>,
) -> ApiResult<Json<CertificateResponse>> {
    Ok(Json(crate::security::renew(state, peer, request).await?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    fn state(dir: &std::path::Path) -> AppState {
        let security = crate::security::open(
            "central",
            crate::security::SecurityConfig {
                state_dir: dir.to_path_buf(),
                operator_ca: None,
                admin_names: vec!["localhost".into()],
                cert_lifetime: std::time::Duration::from_secs(3600),
            },
        )
        .unwrap();
        AppState {
            cluster: "central".into(),
            store: Arc::new(coord_store::EmbeddedStore::in_memory()),
            security,
            satellite_keys: Default::default(),
            attachment_watches: Default::default(),
        }
    }

    /// Every route the router serves, with every method it answers, is in
    /// the OpenAPI document, and the document names nothing it does not serve.
    #[tokio::test]
    async fn every_route_is_in_the_openapi_document() {
        let dir = tempfile::tempdir().unwrap();
        let doc = serde_json::to_value(crate::api::openapi()).unwrap();
        let documented = doc["paths"].as_object().unwrap();
        let state = state(dir.path());
        let paths: Vec<&'static str> = routes(&state).paths().to_vec();
        let app = crate::api::router(state).layer(axum::Extension(Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            identity: Some(tether_tls::Identity::new(
                "central",
                tether_tls::Role::Admin,
                "test",
            )),
        }));
        let methods = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ];
        for path in &paths {
            let in_doc = documented
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is served but not in /v1/openapi.json"));
            let concrete = path
                .replace("{name}", "x")
                .replace("{satellite}", "x")
                .replace("{id}", "volume:x");
            for method in &methods {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&concrete)
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap();
                let status = app.clone().oneshot(request).await.unwrap().status();
                let served = status != StatusCode::METHOD_NOT_ALLOWED;
                let listed = in_doc.get(method.as_str().to_lowercase()).is_some();
                assert_eq!(
                    served,
                    listed,
                    "{method} {path}: answered {status}, {} in the document",
                    if listed { "listed" } else { "not listed" }
                );
            }
        }
        for path in documented.keys() {
            assert!(
                paths.contains(&path.as_str()),
                "{path} is documented but not served"
            );
        }
        // The document itself is served, to anyone.
        let request = Request::get("/v1/openapi.json")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let served: serde_json::Value = serde_json::from_slice(
            &axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(served, doc);
        assert!(doc["components"]["schemas"]["VolumeView"].is_object());
    }
}
