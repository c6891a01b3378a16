//! The admin API's endpoints (JSON over HTTP):
//!
//! | method | path | body → answer |
//! | --- | --- | --- |
//! | GET | /v1/health | → `{"ok": true}` |
//! | GET | /v1/clusters | → `[ClusterView]` |
//! | GET | /v1/nodes | → `[NodeView]` |
//! | GET, POST | /v1/volumes | `CreateVolumeRequest` → `VolumeView` |
//! | GET, DELETE | /v1/volumes/{name} | → `VolumeView` |
//! | POST | /v1/volumes/{name}/resize | `ResizeVolumeRequest` → `VolumeView` |
//! | POST | /v1/volumes/{name}/attach | `AttachRequest` → `AttachResponse` |
//! | POST | /v1/volumes/{name}/detach | → `VolumeView` |
//! | POST | /v1/join | `JoinRequest` → `CertificateResponse` (join token, no certificate) |
//! | POST | /v1/renew | `RenewRequest` → `CertificateResponse` (a node's certificate) |
//!
//! Every call comes over mutual TLS; `security` says which role each path needs.
//!
//! Errors are `ErrorBody` with a 4xx/5xx status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use coord_store::{Compare, CoordStore, Txn, TxnOp};
use tether_proto::admin::{
    valid_volume_name, AttachRequest, AttachResponse, AttachmentSpec, AttachmentView, ClusterView,
    CopyView, CreateVolumeRequest, NodeRecord, NodeView, PresentingStatus, ResizeVolumeRequest,
    VolumeSpec, VolumeStatus, VolumeView,
};
use tether_proto::group::GroupRecord;

use crate::placement;
use crate::RegistryError;

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
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .route("/v1/clusters", get(list_clusters))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/{name}", get(get_volume).delete(delete_volume))
        .route("/v1/volumes/{name}/resize", post(resize_volume))
        .route("/v1/volumes/{name}/attach", post(attach_volume))
        .route("/v1/volumes/{name}/detach", post(detach_volume))
        .route("/v1/join", post(crate::security::join))
        .route("/v1/renew", post(crate::security::renew))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::security::authorize,
        ))
        .layer(axum::middleware::from_fn(record_request))
        .with_state(state)
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
    fn key(&self, kind: &str, name: &str) -> String {
        format!("/tether/v1/{}/{kind}/{name}", self.cluster)
    }

    fn prefix(&self, kind: &str) -> String {
        format!("/tether/v1/{}/{kind}/", self.cluster)
    }

    async fn nodes(&self) -> ApiResult<Vec<NodeRecord>> {
        let (kvs, _) = self.store.get_prefix(&self.prefix("nodes")).await?;
        kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    async fn specs(&self) -> ApiResult<Vec<VolumeSpec>> {
        let (kvs, _) = self.store.get_prefix(&self.prefix("volumes")).await?;
        kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    async fn spec(&self, name: &str) -> ApiResult<(VolumeSpec, i64)> {
        let key = self.key("volumes", name);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| RegistryError::VolumeNotFound { name: name.into() })?;
        Ok((decode(&key, &kv.value)?, kv.mod_revision))
    }

    async fn status(&self, name: &str) -> ApiResult<Option<VolumeStatus>> {
        let key = self.key("status", name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    async fn group(&self, name: &str) -> ApiResult<Option<GroupRecord>> {
        let key = self.key("groups", name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Every group record, by volume.
    async fn groups(&self) -> ApiResult<std::collections::HashMap<String, GroupRecord>> {
        let prefix = self.prefix("groups");
        let (kvs, _) = self.store.get_prefix(&prefix).await?;
        kvs.iter()
            .map(|kv| {
                let name = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key).to_string();
                decode(&kv.key, &kv.value).map(|group| (name, group))
            })
            .collect()
    }

    /// What each presenting node reports for the volume.
    async fn presenting(&self, name: &str) -> ApiResult<Vec<PresentingStatus>> {
        let prefix = format!("{}{name}/", self.prefix("presenting"));
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
        let key = self.key("presenting", &format!("{name}/{node}"));
        self.wait_on(&key, name, node, what, check).await
    }

    /// Read-modify-write of a spec, retried while someone else changes it.
    async fn update_spec(
        &self,
        name: &str,
        mut change: impl FnMut(&mut VolumeSpec) -> ApiResult<()>,
    ) -> ApiResult<VolumeSpec> {
        loop {
            let (mut spec, revision) = self.spec(name).await?;
            change(&mut spec)?;
            let key = self.key("volumes", name);
            let txn = Txn {
                compares: vec![Compare::ModRevision {
                    key: key.clone(),
                    revision,
                }],
                success: vec![TxnOp::Put {
                    key,
                    value: serde_json::to_vec(&spec).expect("spec serializes"),
                    lease: None,
                }],
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
        let key = self.key("status", name);
        self.wait_on(&key, name, node, what, check).await
    }

    /// Polls the record at `key` until `check` decides (a value, or the
    /// node's error), or `node` takes longer than [`NODE_ACTION_TIMEOUT`].
    async fn wait_on<R: serde::de::DeserializeOwned, T>(
        &self,
        key: &str,
        name: &str,
        node: &str,
        what: &str,
        mut check: impl FnMut(Option<&R>) -> Option<Result<T, String>>,
    ) -> ApiResult<T> {
        let deadline = Instant::now() + NODE_ACTION_TIMEOUT;
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
                        "node {node} did not {what} volume {name} within {NODE_ACTION_TIMEOUT:?}"
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

/// What the store says about a volume besides its spec.
struct Observed<'a> {
    status: Option<&'a VolumeStatus>,
    group: Option<&'a GroupRecord>,
    presenting: &'a [PresentingStatus],
    nodes: &'a [NodeRecord],
}

/// An encryption spec the nodes can use: a cipher they know, and key
/// material of the right shape (its correctness is the user's key's business).
fn check_encryption(encryption: &tether_proto::admin::EncryptionSpec) -> ApiResult<()> {
    let invalid = |reason: String| RegistryError::Invalid {
        field: "encryption",
        reason,
    };
    if encryption.cipher != volume_crypto::CIPHER
        || encryption.sector_bytes as usize != volume_crypto::SECTOR_BYTES
    {
        return Err(invalid(format!(
            "cipher {} with {}-byte sectors is not supported (use {} with {})",
            encryption.cipher,
            encryption.sector_bytes,
            volume_crypto::CIPHER,
            volume_crypto::SECTOR_BYTES
        )));
    }
    if blake3::Hash::from_hex(&encryption.key_check).is_err() || encryption.wrapped_key.len() != 144
    {
        return Err(invalid("malformed wrapped key or key check".into()));
    }
    Ok(())
}

fn build_view(cluster: &str, spec: VolumeSpec, observed: &Observed) -> VolumeView {
    let status = observed.status;
    let alive = |node: &str| observed.nodes.iter().any(|record| record.name == node);
    let master = observed
        .group
        .map_or_else(|| spec.master.clone(), |group| group.master.clone());
    let copies = spec
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
        })
        .collect();
    VolumeView {
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

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(value).map_err(|err| RegistryError::BadRecord {
        key: key.into(),
        reason: err.to_string(),
    })
}

fn check_size(size_bytes: u64) -> ApiResult<()> {
    if size_bytes == 0 || !size_bytes.is_multiple_of(512) {
        return Err(RegistryError::Invalid {
            field: "size",
            reason: format!("{size_bytes} bytes is not a positive multiple of 512"),
        });
    }
    Ok(())
}

async fn list_clusters(State(state): State<AppState>) -> ApiResult<Json<Vec<ClusterView>>> {
    let nodes = state.nodes().await?;
    Ok(Json(vec![ClusterView {
        name: state.cluster.clone(),
        role: "central".into(),
        nodes_up: nodes.len(),
    }]))
}

/// Live nodes (their lease-bound registration exists) are "up"; a node that
/// still owns volumes but has no registration is listed as "down".
async fn list_nodes(State(state): State<AppState>) -> ApiResult<Json<Vec<NodeView>>> {
    let (nodes, specs) = (state.nodes().await?, state.specs().await?);
    let view = |name: &str, up: Option<&NodeRecord>| NodeView {
        name: name.to_string(),
        cluster: state.cluster.clone(),
        state: if up.is_some() { "up" } else { "down" }.into(),
        capacity_bytes: up.map_or(0, |node| node.capacity_bytes),
        provisioned_bytes: placement::provisioned_on(name, &specs),
        volumes: specs
            .iter()
            .filter(|spec| spec.copy_nodes().iter().any(|copy| copy == name))
            .count(),
        io_backend: up.map_or_else(|| "-".to_string(), |node| node.io_backend.clone()),
        labels: up.map(|node| node.labels.clone()).unwrap_or_default(),
        block_addr: up.and_then(|node| node.block_addr.clone()),
        control_addr: up.and_then(|node| node.control_addr.clone()),
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
    Ok(Json(views))
}

async fn list_volumes(State(state): State<AppState>) -> ApiResult<Json<Vec<VolumeView>>> {
    let mut views = Vec::new();
    for spec in state.specs().await? {
        views.push(state.view(spec).await?);
    }
    Ok(Json(views))
}

async fn get_volume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<VolumeView>> {
    let (spec, _) = state.spec(&name).await?;
    Ok(Json(state.view(spec).await?))
}

async fn create_volume(
    State(state): State<AppState>,
    Json(request): Json<CreateVolumeRequest>,
) -> ApiResult<(StatusCode, Json<VolumeView>)> {
    if !valid_volume_name(&request.name) {
        return Err(RegistryError::Invalid {
            field: "name",
            reason: format!(
                "{:?}: use 1-63 of a-z 0-9 . _ - starting with a letter or digit",
                request.name
            ),
        });
    }
    check_size(request.size_bytes)?;
    if let Some(encryption) = &request.encryption {
        check_encryption(encryption)?;
    }
    if !(1..=MAX_COPIES).contains(&request.replicas) {
        return Err(RegistryError::Invalid {
            field: "replicas",
            reason: format!(
                "{}: a volume has 1 to {MAX_COPIES} copies (master included)",
                request.replicas
            ),
        });
    }
    let copies = placement::place(
        request.size_bytes,
        request.replicas as usize,
        &request.placement,
        &state.nodes().await?,
        &state.specs().await?,
    )?;
    let master = copies[0].clone();
    let spec = VolumeSpec {
        version: VolumeSpec::VERSION,
        name: request.name.clone(),
        size_bytes: request.size_bytes,
        replicas: request.replicas,
        master: master.clone(),
        epoch: 1,
        attachments: vec![],
        placement: request.placement.clone(),
        copies: copies.clone(),
        encryption: request.encryption.clone(),
    };
    let key = state.key("volumes", &spec.name);
    let group = GroupRecord::new(&copies);
    let created = state
        .store
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: key.clone(),
                revision: 0,
            }],
            success: vec![
                TxnOp::Put {
                    key: key.clone(),
                    value: serde_json::to_vec(&spec).expect("spec serializes"),
                    lease: None,
                },
                TxnOp::Put {
                    key: state.key("groups", &spec.name),
                    value: serde_json::to_vec(&group).expect("group serializes"),
                    lease: None,
                },
            ],
            failure: vec![],
        })
        .await?;
    if !created.succeeded {
        return Err(RegistryError::VolumeExists { name: spec.name });
    }
    tracing::info!(volume = %spec.name, size_bytes = spec.size_bytes, node = %master, copies = ?copies, "volume create requested");
    let size = spec.size_bytes;
    let outcome = state
        .wait_for(&spec.name, &master, "create", |status| match status {
            Some(status) if status.size_bytes == size => Some(Ok(())),
            Some(status) if !status.errors.is_empty() => Some(Err(status.errors.join("; "))),
            _ => None,
        })
        .await;
    if let Err(err) = outcome {
        // Roll back: the nodes delete whatever they made when the spec goes.
        let _ = state.store.delete(&key).await;
        let _ = state.store.delete(&state.key("groups", &spec.name)).await;
        return Err(err);
    }
    Ok((StatusCode::CREATED, Json(state.view(spec).await?)))
}

async fn resize_volume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(request): Json<ResizeVolumeRequest>,
) -> ApiResult<Json<VolumeView>> {
    check_size(request.size_bytes)?;
    let (nodes, specs) = (state.nodes().await?, state.specs().await?);
    let spec = state
        .update_spec(&name, |spec| {
            if request.size_bytes < spec.size_bytes {
                return Err(RegistryError::Invalid {
                    field: "size",
                    reason: format!(
                        "volume {name} is {} bytes; shrinking a block device loses data, so only growing is allowed",
                        spec.size_bytes
                    ),
                });
            }
            let growth = request.size_bytes - spec.size_bytes;
            for copy in spec.copy_nodes() {
                let node = nodes.iter().find(|node| node.name == copy);
                let free = node.map_or(0, |node| node.capacity_bytes.saturating_sub(placement::provisioned_on(&node.name, &specs)));
                if growth > free {
                    return Err(RegistryError::PoolFull { requested: growth, largest_free: free });
                }
            }
            spec.size_bytes = request.size_bytes;
            Ok(())
        })
        .await?;
    tracing::info!(volume = %name, size_bytes = spec.size_bytes, "volume resize requested");
    let size = spec.size_bytes;
    state
        .wait_for(&name, &spec.master, "resize", |status| match status {
            Some(status) if status.size_bytes == size => Some(Ok(())),
            Some(status) if !status.errors.is_empty() => Some(Err(status.errors.join("; "))),
            _ => None,
        })
        .await?;
    Ok(Json(state.view(spec).await?))
}

async fn attach_volume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(request): Json<AttachRequest>,
) -> ApiResult<Json<AttachResponse>> {
    let endpoint = request.nbd.trim().to_string();
    if !(endpoint.starts_with("unix:") || endpoint.starts_with("tcp:")) {
        return Err(RegistryError::Invalid {
            field: "nbd",
            reason: format!("{endpoint:?}: expected unix:PATH or tcp:HOST:PORT"),
        });
    }
    let from = request.from.unwrap_or_else(|| state.cluster.clone());
    // The presenting node: as asked, or the master now.
    let (spec, _) = state.spec(&name).await?;
    let presenter = match request.node {
        Some(node) => {
            if !state
                .nodes()
                .await?
                .iter()
                .any(|record| record.name == node)
            {
                return Err(RegistryError::Invalid {
                    field: "node",
                    reason: format!("node {node} is not up in cluster {}", state.cluster),
                });
            }
            node
        }
        None => state
            .group(&name)
            .await?
            .map_or(spec.master.clone(), |group| group.master),
    };
    if let Some(encryption) = &spec.encryption {
        // The key goes to the presenting node before the attachment exists,
        // so the node never presents the volume without it.
        let Some(data_key) = request.data_key else {
            return Err(RegistryError::Invalid {
                field: "key",
                reason: format!(
                    "volume {name} is encrypted: attach needs its key (--encrypt-key-file)"
                ),
            });
        };
        volume_crypto::DataKey::from_hex(&name, &data_key)
            .and_then(|key| key.verify(&name, &encryption.key_check))
            .map_err(|err| RegistryError::Invalid {
                field: "key",
                reason: err.to_string(),
            })?;
        let record = state
            .nodes()
            .await?
            .into_iter()
            .find(|record| record.name == presenter)
            .ok_or_else(|| RegistryError::Unavailable {
                reason: format!("node {presenter} is not up to present volume {name}"),
            })?;
        crate::node_rpc::load_key(&state.security, &record, &name, data_key).await?;
    }
    let spec = state
        .update_spec(&name, |spec| {
            if let Some(existing) = spec
                .attachments
                .iter()
                .find(|attachment| attachment.endpoint == endpoint)
            {
                if existing.presenter(spec) != presenter {
                    return Err(RegistryError::Invalid {
                        field: "nbd",
                        reason: format!(
                            "{endpoint} is already presented by node {}",
                            existing.presenter(spec)
                        ),
                    });
                }
            } else {
                spec.attachments.push(AttachmentSpec {
                    endpoint: endpoint.clone(),
                    from: from.clone(),
                    node: Some(presenter.clone()),
                });
            }
            Ok(())
        })
        .await?;
    tracing::info!(volume = %name, %endpoint, node = %presenter, "volume attach requested");
    let outcome = state
        .wait_for_presenter(&name, &presenter, "serve", |status| {
            let status = status?;
            if let Some(serving) = status
                .serving
                .iter()
                .find(|serving| serving.endpoint == endpoint)
            {
                return Some(Ok(serving.uri.clone()));
            }
            status
                .errors
                .iter()
                .find(|error| error.contains(&endpoint))
                .map(|error| Err(error.clone()))
        })
        .await;
    let _ = spec;
    match outcome {
        Ok(uri) => Ok(Json(AttachResponse { uri })),
        Err(err) => {
            let _ = state
                .update_spec(&name, |spec| {
                    spec.attachments
                        .retain(|attachment| attachment.endpoint != endpoint);
                    Ok(())
                })
                .await;
            Err(err)
        }
    }
}

async fn detach_volume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<VolumeView>> {
    let (before, _) = state.spec(&name).await?;
    let spec = state
        .update_spec(&name, |spec| {
            spec.attachments.clear();
            Ok(())
        })
        .await?;
    tracing::info!(volume = %name, "volume detach requested");
    let live = state.nodes().await?;
    for attachment in &before.attachments {
        let node = attachment.presenter(&before);
        let Some(record) = live.iter().find(|record| record.name == node) else {
            continue;
        };
        state
            .wait_for_presenter(&name, node, "stop serving", |status| match status {
                Some(status) if !status.serving.is_empty() => None,
                _ => Some(Ok(())),
            })
            .await?;
        if before.encryption.is_some() {
            crate::node_rpc::drop_key(&state.security, record, &name).await?;
        }
    }
    Ok(Json(state.view(spec).await?))
}

async fn delete_volume(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let (spec, revision) = state.spec(&name).await?;
    if !spec.attachments.is_empty() {
        let view = state.view(spec).await?;
        let uris: Vec<String> = view
            .attachments
            .into_iter()
            .map(|attachment| attachment.uri)
            .collect();
        return Err(RegistryError::Attached {
            name,
            uris: uris.join(", "),
        });
    }
    let key = state.key("volumes", &name);
    let deleted = state
        .store
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: key.clone(),
                revision,
            }],
            success: vec![
                TxnOp::Delete { key },
                TxnOp::Delete {
                    key: state.key("groups", &name),
                },
            ],
            failure: vec![],
        })
        .await?;
    if !deleted.succeeded {
        return Err(RegistryError::Unavailable {
            reason: format!("volume {name} changed while deleting; try again"),
        });
    }
    tracing::info!(volume = %name, node = %spec.master, "volume deleted");
    if state
        .nodes()
        .await?
        .iter()
        .any(|node| node.name == spec.master)
    {
        state
            .wait_for(&name, &spec.master, "delete", |status| {
                status.is_none().then_some(Ok(()))
            })
            .await?;
    } else {
        tracing::warn!(volume = %name, node = %spec.master, "node is down; its copy is kept until an operator removes it");
    }
    Ok(StatusCode::NO_CONTENT)
}

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
