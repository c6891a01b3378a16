//! Attaching a volume: which node presents it, on which NBD endpoint.
//!
//! An attach runs to its end in a task of its own, whatever becomes of the
//! request: a client that gives up (a timeout, Ctrl-C) still leaves either a
//! served attachment or none, never one the node cannot serve.

use tether_proto::admin::{AttachRequest, AttachResponse, AttachmentSpec, VolumeSpec, VolumeView};
use tether_proto::keys::Kind;

use super::{ApiResult, AppState};
use crate::grants::Caller;
use crate::RegistryError;

pub(crate) async fn attach_volume(
    state: AppState,
    caller: Caller,
    name: String,
    mut request: AttachRequest,
) -> ApiResult<AttachResponse> {
    let from = attaching_cluster(&state, &caller, &name, request.from.take()).await?;
    if from != state.cluster {
        let endpoint = check_satellite_endpoint(&request.nbd)?;
        let data_key = request.data_key.take();
        return tokio::spawn(async move {
            super::satellites::attach_from_satellite(&state, &name, &from, &endpoint, data_key)
                .await
        })
        .await
        .map_err(|err| RegistryError::Unavailable {
            reason: format!("attach failed: {err}"),
        })?
        .map(|uri| AttachResponse { uri });
    }
    request.from = Some(from);
    tokio::spawn(attach(state, name, request))
        .await
        .map_err(|err| RegistryError::Unavailable {
            reason: format!("attach failed: {err}"),
        })?
}

/// An endpoint of a known kind (the presenting side parses the rest).
fn check_endpoint(nbd: &str) -> ApiResult<String> {
    let endpoint = nbd.trim().to_string();
    if !["unix:", "tcp:", "tls:"]
        .iter()
        .any(|scheme| endpoint.starts_with(scheme))
    {
        return Err(RegistryError::Invalid {
            field: "nbd",
            reason: format!("{endpoint:?}: expected unix:PATH, tcp:[HOST:]PORT or tls:[HOST:]PORT"),
        });
    }
    Ok(endpoint)
}

/// An endpoint a satellite may ask for: an NBD one, or a CSI staging
/// (`csi:NODE`, a node name without separators).
fn check_satellite_endpoint(nbd: &str) -> ApiResult<String> {
    let trimmed = nbd.trim();
    match tether_proto::federation::csi_staging_node(trimmed) {
        Some(node)
            if !node.is_empty()
                && node.len() <= 128
                && node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            Ok(trimmed.to_string())
        }
        Some(node) => Err(RegistryError::Invalid {
            field: "nbd",
            reason: format!("CSI node {node:?}: 1 to 128 letters, digits, '-', '_' or '.'"),
        }),
        None => check_endpoint(trimmed),
    }
}

/// Which cluster attaches: this one, or a satellite whose grants cover the
/// volume (a satellite attaches only for itself).
async fn attaching_cluster(
    state: &AppState,
    caller: &Caller,
    name: &str,
    from: Option<String>,
) -> ApiResult<String> {
    let from = match (caller.satellite(), from) {
        (Some(satellite), Some(other)) if other != satellite => {
            return Err(RegistryError::Forbidden {
                identity: format!("satellite {satellite}"),
                what: format!("attach volume {name} for {other}"),
            })
        }
        (Some(satellite), _) => satellite.to_string(),
        (None, from) => from.unwrap_or_else(|| state.cluster.clone()),
    };
    if from == state.cluster {
        return Ok(from);
    }
    caller.require_volume(name)?;
    let store = state.store.as_ref();
    match crate::federation::record(store, &state.cluster, &from).await? {
        None => return Err(RegistryError::ClusterNotFound { name: from }),
        Some((record, _)) if record.state == tether_proto::federation::ClusterState::Revoked => {
            return Err(RegistryError::SatelliteRevoked { name: from })
        }
        Some(_) => {}
    }
    let grants = crate::grants::list(store, &state.cluster, Some(&from)).await?;
    if !grants.iter().any(|grant| grant.scope.covers(name)) {
        return Err(RegistryError::OutOfGrant {
            satellite: from,
            volume: name.into(),
        });
    }
    Ok(from)
}

/// The presenting node when none is asked for: the one already presenting
/// this endpoint (attaching again, e.g. with a key after a restart), else the
/// master if it is up, else a live copy (the next master), else any live node.
async fn default_presenter(
    state: &AppState,
    spec: &VolumeSpec,
    endpoint: &str,
) -> ApiResult<String> {
    if let Some(existing) = spec
        .attachments
        .iter()
        .find(|attachment| attachment.endpoint == endpoint)
    {
        return Ok(existing.presenter(spec).to_string());
    }
    default_presenter_except(state, spec, &[]).await
}

/// The master if it is up, else a live copy (the next master), else any
/// live node; never one of `excluded`.
async fn default_presenter_except(
    state: &AppState,
    spec: &VolumeSpec,
    excluded: &[String],
) -> ApiResult<String> {
    let live: Vec<String> = state
        .nodes()
        .await?
        .into_iter()
        .map(|node| node.name)
        .collect();
    let group = state.group(&spec.name).await?;
    let master = group
        .as_ref()
        .map_or(spec.master.clone(), |group| group.master.clone());
    let isr = group.map(|group| group.isr).unwrap_or_default();
    [master]
        .into_iter()
        .chain(isr)
        .chain(spec.copy_nodes())
        .chain(live.iter().cloned())
        .find(|node| live.contains(node) && !excluded.contains(node))
        .ok_or_else(|| RegistryError::Unavailable {
            reason: format!(
                "no node of cluster {} is up to present volume {}",
                state.cluster, spec.name
            ),
        })
}

enum Waited {
    /// The presenting node's registration is gone (its lease lapsed).
    Gone,
    Failed(RegistryError),
}

/// Waits until `presenter` serves `endpoint` for `name` (its URI), reports
/// a failure for it, goes away, or takes longer than a node may.
async fn wait_served(
    state: &AppState,
    name: &str,
    presenter: &str,
    endpoint: &str,
) -> Result<String, Waited> {
    let deadline = std::time::Instant::now() + super::NODE_ACTION_TIMEOUT;
    let status_key = state.keys().presenting(name, presenter);
    let node_key = state.key(Kind::Nodes, presenter);
    loop {
        let record = state
            .store
            .get(&status_key)
            .await
            .map_err(|err| Waited::Failed(err.into()))?;
        if let Some(kv) = record {
            let status: tether_proto::admin::PresentingStatus =
                super::decode(&status_key, &kv.value).map_err(Waited::Failed)?;
            if let Some(serving) = status
                .serving
                .iter()
                .find(|serving| serving.endpoint == endpoint)
            {
                return Ok(serving.uri.clone());
            }
            if let Some(failure) = status
                .failures
                .iter()
                .find(|failure| failure.endpoint == endpoint)
            {
                return Err(Waited::Failed(RegistryError::NodeFailed {
                    name: name.into(),
                    node: presenter.into(),
                    reason: failure.error.clone(),
                }));
            }
        }
        let alive = state
            .store
            .get(&node_key)
            .await
            .map_err(|err| Waited::Failed(err.into()))?;
        if alive.is_none() {
            return Err(Waited::Gone);
        }
        if std::time::Instant::now() > deadline {
            return Err(Waited::Failed(RegistryError::Unavailable {
                reason: format!(
                    "node {presenter} did not serve volume {name} within {:?}",
                    super::NODE_ACTION_TIMEOUT
                ),
            }));
        }
        tokio::time::sleep(super::POLL_INTERVAL).await;
    }
}

async fn attach(
    state: AppState,
    name: String,
    request: AttachRequest,
) -> ApiResult<AttachResponse> {
    let endpoint = check_endpoint(&request.nbd)?;
    let from = request.from.unwrap_or_else(|| state.cluster.clone());
    // The presenting node: as asked, or the master now.
    let (spec, _) = state.spec(&name).await?;
    let chose_presenter = request.node.is_none();
    let mut presenter = match request.node {
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
        None => default_presenter(&state, &spec, &endpoint).await?,
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
    // A presenter chosen here that dies before serving (its lease lapses:
    // it was the master that just died) is replaced by another live node.
    // An encrypted volume's key went to the first one, so it is not moved.
    let mut tried = vec![presenter.clone()];
    let outcome = loop {
        match wait_served(&state, &name, &presenter, &endpoint).await {
            Err(Waited::Gone) if chose_presenter && spec.encryption.is_none() => {
                let mut next = spec.clone();
                next.attachments
                    .retain(|attachment| attachment.endpoint != endpoint);
                let Ok(candidate) = default_presenter_except(&state, &next, &tried).await else {
                    break Err(RegistryError::Unavailable {
                        reason: format!("no live node left to present volume {name}"),
                    });
                };
                tracing::warn!(volume = %name, %endpoint, gone = %presenter, node = %candidate, "presenting node went away before serving; moving the attachment");
                let moved = candidate.clone();
                let updated = state
                    .update_spec(&name, |spec| {
                        for attachment in &mut spec.attachments {
                            if attachment.endpoint == endpoint {
                                attachment.node = Some(moved.clone());
                            }
                        }
                        Ok(())
                    })
                    .await;
                if let Err(err) = updated {
                    break Err(err);
                }
                tried.push(candidate.clone());
                presenter = candidate;
            }
            Err(Waited::Gone) => {
                break Err(RegistryError::Unavailable {
                    reason: format!("node {presenter} went away before serving volume {name}"),
                })
            }
            Err(Waited::Failed(err)) => break Err(err),
            Ok(uri) => break Ok(uri),
        }
    };
    let _ = spec;
    match outcome {
        Ok(uri) => Ok(AttachResponse { uri }),
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

pub(crate) async fn detach_volume(
    state: AppState,
    caller: Caller,
    name: String,
) -> ApiResult<VolumeView> {
    caller.require_volume(&name)?;
    // An admin detaches every attachment; a satellite only its own.
    let detached = |attachment: &AttachmentSpec| {
        caller
            .satellite()
            .is_none_or(|satellite| attachment.from == satellite)
    };
    let (mut before, _) = state.spec(&name).await?;
    let spec = state
        .update_spec(&name, |spec| {
            spec.attachments.retain(|attachment| !detached(attachment));
            Ok(())
        })
        .await?;
    before.attachments.retain(|attachment| detached(attachment));
    for attachment in &before.attachments {
        if attachment.from != state.cluster {
            state
                .satellite_keys
                .lock()
                .unwrap()
                .remove(&(name.clone(), attachment.from.clone()));
        }
    }
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
    state.view(spec).await
}
