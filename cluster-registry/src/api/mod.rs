//! The admin API, on one mutual-TLS listener with two front ends over the
//! same operations (one module per concern below):
//! - JSON over HTTP ([`http`], described by the OpenAPI document at
//!   `/v1/openapi.json`),
//! - gRPC, `tether.admin.v1.Admin` ([`grpc`]; `admin-grpc/protos`), where
//!   satellites follow their attachments on a stream.
//!
//! | method | path | body → answer |
//! | --- | --- | --- |
//! | GET | /v1/health | → `{"ok": true}` |
//! | GET | /v1/openapi.json | → the OpenAPI document (no certificate needed) |
//! | GET, POST | /v1/clusters | `AddSatelliteRequest` → `AddSatelliteResponse` (its join token); GET → `[ClusterView]` |
//! | DELETE | /v1/clusters/{name} | → `ClusterView` (the satellite, revoked) |
//! | GET, POST | /v1/grants | `AddGrantRequest` → `GrantRecord`; GET `?satellite=S` → `[GrantView]` |
//! | DELETE | /v1/grants/{satellite}/{id} | (`id`: `volume:NAME` or `prefix:P`) |
//! | GET | /v1/satellites/{name}/attachments | `?version=V` → `SatelliteAttachments` (waits up to 25 s for a change) |
//! | POST | /v1/satellites/{name}/presenting | `SatellitePresenting` (what the satellite serves) |
//! | GET | /v1/satellites/{name}/grants | → `[GrantView]` (a satellite's own, with their use) |
//! | POST | /v1/satellites/join | `SatelliteJoinRequest` → `CertificateResponse` (join token, no certificate) |
//! | GET | /v1/nodes | → `[NodeView]` |
//! | GET, POST | /v1/volumes | `CreateVolumeRequest` → `VolumeView` |
//! | GET, DELETE | /v1/volumes/{name} | → `VolumeView` |
//! | POST | /v1/volumes/{name}/resize | `ResizeVolumeRequest` → `VolumeView` |
//! | POST | /v1/volumes/{name}/attach | `AttachRequest` → `AttachResponse` |
//! | POST | /v1/volumes/{name}/detach | → `VolumeView` |
//! | POST | /v1/volumes/{name}/verify | `VerifyRequest` → `VerifyReport` (every in-sync copy against the master) |
//! | POST | /v1/join-tokens | `JoinTokenRequest` → `JoinTokenResponse` (a one-time token for a new node) |
//! | POST | /v1/join | `JoinRequest` → `CertificateResponse` (join token, no certificate) |
//! | POST | /v1/renew | `RenewRequest` → `CertificateResponse` (a node's certificate) |
//! | GET | /v1/ca | → `CaCertificate` (no certificate needed) |
//! | GET, POST | /v1/peers | `AddPeerRequest` → `AddPeerResponse`; GET → `[PeerView]` |
//! | POST | /v1/peers/accept | `AcceptPeerRequest` → `AcceptPeerResponse` (the token is the credential) |
//! | POST | /v1/peers/{name}/link | `LinkPeerRequest` → `PeerView` |
//! | GET, POST | /v1/dr/links | `DrLinkRequest` → `DrLinkView`; GET → `[DrLinkView]` |
//! | GET | /v1/dr/links/{volume} | → `DrLinkView` |
//! | POST | /v1/dr/links/{volume}/promote | `DrPromoteRequest` → `DrLinkView` (waits for the switch) |
//! | POST | /v1/dr/links/{volume}/failback | → `DrLinkView` (returns at once) |
//! | POST | /v1/dr/secondaries | `DrSecondaryRequest` → `[VolumeView]` (a gateway of this cluster) |
//! | GET | /v1/audit | `?since_unix_ms=T` → `AuditList` (every admin action, hash-chained) |
//!
//! Every call comes over mutual TLS; [`crate::security::Access`] says which
//! role each operation needs, for both front ends. Satellites may call the volume routes (not verify), scoped by
//! their grants (`grants::Caller`).
//!
//! Every action (not reads), on either front end and refused or not, is
//! appended to the audit log ([`audit`], `crate::audit`).
//!
//! Errors are `ErrorBody` with a 4xx/5xx status.

mod attach;
mod audit;
mod dr;
mod federation;
mod grpc;
mod http;
mod nodes;
mod peers;
mod replacement;
mod satellites;
mod verify;
mod view;
mod volumes;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_proto::keys::Kind;

use axum::Router;
use coord_store::{Compare, CoordStore, Txn, TxnOp};
use tether_proto::admin::{NodeRecord, PresentingStatus, VolumeSpec, VolumeStatus, VolumeView};
use tether_proto::group::GroupRecord;

use crate::RegistryError;
use view::{build_view, Observed};

pub use replacement::replace_lost_copies;

/// How long an API call waits for the storage node to act on a spec.
const NODE_ACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Most copies a volume may have.
const MAX_COPIES: u32 = 5;
const POLL_INTERVAL: Duration = Duration::from_millis(25);

#[derive(Clone)]
pub struct AppState {
    pub cluster: String,
    pub store: Arc<dyn CoordStore>,
    pub security: Arc<crate::security::Security>,
    /// Data keys of encrypted volumes attached from satellites, by (volume,
    /// satellite): memory only, handed to that satellite over mutual TLS
    /// (never to a gateway). Lost with a registry restart: attach again.
    pub satellite_keys: Arc<std::sync::Mutex<std::collections::HashMap<(String, String), String>>>,
    /// Attachment watches (long polls, gRPC streams) each satellite holds.
    pub attachment_watches: WatchCounts,
}

pub type WatchCounts = Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// The admin API: the JSON routes (each admitted by the path's
/// [`Access`](crate::security::Access)) and the gRPC service (each method
/// admits its own caller), on one listener.
pub fn router(state: AppState) -> Router {
    let json = http::routes(&state).into_router().with_state(state.clone());
    let grpc =
        admin_grpc::pb::admin_server::AdminServer::new(grpc::AdminService::new(state.clone()));
    Router::new()
        .route_service("/tether.admin.v1.Admin/{*method}", grpc)
        .merge(json)
        .layer(axum::middleware::from_fn_with_state(
            state,
            audit::record_action,
        ))
        .layer(axum::middleware::from_fn(record_request))
}

/// The OpenAPI document of the JSON API (served at `/v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    <http::ApiDoc as utoipa::OpenApi>::openapi()
}

/// Counts admin requests and their latency by route and status.
async fn record_request(
    matched: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = matched.map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("tether_admin_requests_total", &labels).increment(1);
    metrics::histogram!("tether_admin_request_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

type ApiResult<T> = Result<T, RegistryError>;

impl AppState {
    fn keys(&self) -> tether_proto::keys::ClusterKeys {
        tether_proto::keys::ClusterKeys::new(&self.cluster)
    }

    fn key(&self, kind: Kind, name: &str) -> String {
        self.keys().key(kind, name)
    }

    fn prefix(&self, kind: Kind) -> String {
        self.keys().kind_prefix(kind)
    }

    async fn nodes(&self) -> ApiResult<Vec<NodeRecord>> {
        let (kvs, _) = self.store.get_prefix(&self.prefix(Kind::Nodes)).await?;
        kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    async fn specs(&self) -> ApiResult<Vec<VolumeSpec>> {
        let (kvs, _) = self.store.get_prefix(&self.prefix(Kind::Volumes)).await?;
        kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    async fn spec(&self, name: &str) -> ApiResult<(VolumeSpec, i64)> {
        let key = self.key(Kind::Volumes, name);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| RegistryError::VolumeNotFound { name: name.into() })?;
        Ok((decode(&key, &kv.value)?, kv.mod_revision))
    }

    async fn status(&self, name: &str) -> ApiResult<Option<VolumeStatus>> {
        let key = self.key(Kind::Status, name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    async fn group(&self, name: &str) -> ApiResult<Option<GroupRecord>> {
        let key = self.key(Kind::Groups, name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Every group record, by volume.
    async fn groups(&self) -> ApiResult<std::collections::HashMap<String, GroupRecord>> {
        let prefix = self.prefix(Kind::Groups);
        let (kvs, _) = self.store.get_prefix(&prefix).await?;
        kvs.iter()
            .map(|kv| {
                let name = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key).to_string();
                decode(&kv.key, &kv.value).map(|group| (name, group))
            })
            .collect()
    }

    /// What each presenting node reports for the volume.
    /// Allocated bytes of every volume whose master reports a status.
    async fn allocated_by_volume(&self) -> ApiResult<std::collections::HashMap<String, u64>> {
        let (kvs, _) = self.store.get_prefix(&self.prefix(Kind::Status)).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let status: VolumeStatus = serde_json::from_slice(&kv.value).ok()?;
                let name = kv.key.rsplit('/').next()?.to_string();
                Some((name, status.allocated_bytes))
            })
            .collect())
    }

    async fn presenting(&self, name: &str) -> ApiResult<Vec<PresentingStatus>> {
        let prefix = self.keys().presenting_prefix(name);
        let (kvs, _) = self.store.get_prefix(&prefix).await?;
        kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// Polls the presenting status of `node` until `check` decides.
    async fn wait_for_presenter<T>(
        &self,
        name: &str,
        node: &str,
        what: &str,
        check: impl FnMut(Option<&PresentingStatus>) -> Option<Result<T, String>>,
    ) -> ApiResult<T> {
        let key = self.keys().presenting(name, node);
        self.wait_on(&key, name, node, what, NODE_ACTION_TIMEOUT, check)
            .await
    }

    /// Read-modify-write of a spec, retried while someone else changes it.
    async fn update_spec(
        &self,
        name: &str,
        mut change: impl FnMut(&mut VolumeSpec) -> ApiResult<()>,
    ) -> ApiResult<VolumeSpec> {
        self.update_spec_guarded(name, None, |spec, _| change(spec))
            .await
    }

    /// [`Self::update_spec`] under a satellite's prefix grant: `change` also
    /// sees every spec (to check the quota), and the write commits only if
    /// the grant is unchanged since (and bumps it).
    async fn update_spec_guarded(
        &self,
        name: &str,
        grant: Option<&tether_proto::federation::GrantRecord>,
        mut change: impl FnMut(&mut VolumeSpec, &[VolumeSpec]) -> ApiResult<()>,
    ) -> ApiResult<VolumeSpec> {
        loop {
            let guard = match grant {
                Some(grant) => {
                    Some(crate::grants::guard(self.store.as_ref(), &self.cluster, grant).await?)
                }
                None => None,
            };
            let specs = match guard {
                Some(_) => self.specs().await?,
                None => Vec::new(),
            };
            let (mut spec, revision) = self.spec(name).await?;
            change(&mut spec, &specs)?;
            let key = self.key(Kind::Volumes, name);
            let mut compares = vec![Compare::ModRevision {
                key: key.clone(),
                revision,
            }];
            let mut success = vec![TxnOp::Put {
                key,
                value: serde_json::to_vec(&spec).expect("spec serializes"),
                lease: None,
            }];
            if let Some(guard) = &guard {
                compares.push(guard.compare());
                success.push(guard.touch());
            }
            let txn = Txn {
                compares,
                success,
                failure: vec![],
            };
            if self.store.txn(txn).await?.succeeded {
                return Ok(spec);
            }
        }
    }

    /// Polls the volume's status until `check` decides, or the node takes too long.
    async fn wait_for<T>(
        &self,
        name: &str,
        node: &str,
        what: &str,
        check: impl FnMut(Option<&VolumeStatus>) -> Option<Result<T, String>>,
    ) -> ApiResult<T> {
        self.wait_for_within(name, node, what, NODE_ACTION_TIMEOUT, check)
            .await
    }

    /// [`Self::wait_for`] for actions that take longer than a spec change.
    async fn wait_for_within<T>(
        &self,
        name: &str,
        node: &str,
        what: &str,
        timeout: Duration,
        check: impl FnMut(Option<&VolumeStatus>) -> Option<Result<T, String>>,
    ) -> ApiResult<T> {
        let key = self.key(Kind::Status, name);
        self.wait_on(&key, name, node, what, timeout, check).await
    }

    /// Polls the record at `key` until `check` decides (a value, or the
    /// node's error), or `node` takes longer than `timeout`.
    async fn wait_on<R: serde::de::DeserializeOwned, T>(
        &self,
        key: &str,
        name: &str,
        node: &str,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(Option<&R>) -> Option<Result<T, String>>,
    ) -> ApiResult<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let record: Option<R> = match self.store.get(key).await? {
                Some(kv) => Some(decode(key, &kv.value)?),
                None => None,
            };
            match check(record.as_ref()) {
                Some(Ok(value)) => return Ok(value),
                Some(Err(reason)) => {
                    return Err(RegistryError::NodeFailed {
                        name: name.into(),
                        node: node.into(),
                        reason,
                    })
                }
                None if Instant::now() > deadline => {
                    return Err(RegistryError::Unavailable {
                        reason: format!(
                            "node {node} did not {what} volume {name} within {timeout:?}"
                        ),
                    })
                }
                None => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
    }

    async fn view(&self, spec: VolumeSpec) -> ApiResult<VolumeView> {
        let status = self.status(&spec.name).await?;
        let group = self.group(&spec.name).await?;
        let presenting = self.presenting(&spec.name).await?;
        let nodes = self.nodes().await?;
        Ok(build_view(
            &self.cluster,
            spec,
            &Observed {
                status: status.as_ref(),
                group: group.as_ref(),
                presenting: &presenting,
                nodes: &nodes,
            },
        ))
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(value).map_err(|err| RegistryError::BadRecord {
        key: key.into(),
        reason: err.to_string(),
    })
}
