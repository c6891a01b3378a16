//! What satellites ask of the registry about their attachments: which
//! volumes to present (a long poll), what they serve (their presenting
//! status, which the attach that asked for it waits on), and the attach
//! itself when it comes `--from` a satellite.

use std::time::Duration;

use tether_proto::admin::{AttachmentSpec, PresentingStatus};
use tether_proto::federation::{SatelliteAttachment, SatelliteAttachments, SatellitePresenting};
use tether_proto::keys::Kind;

use super::{ApiResult, AppState};
use crate::grants::Caller;
use crate::RegistryError;

/// A long poll answers after this long even if nothing changed.
const LONG_POLL: Duration = Duration::from_secs(25);

/// The caller must be satellite `name` itself.
fn require_self(caller: &Caller, name: &str) -> ApiResult<()> {
    match caller.satellite() {
        Some(satellite) if satellite == name => Ok(()),
        Some(satellite) => Err(RegistryError::Forbidden {
            identity: format!("satellite {satellite}"),
            what: format!("the attachments of satellite {name}"),
        }),
        None => Ok(()),
    }
}

/// The attachments of satellite `name` that its grants still cover.
async fn attachments(state: &AppState, name: &str) -> ApiResult<SatelliteAttachments> {
    let grants = crate::grants::list(state.store.as_ref(), &state.cluster, Some(name)).await?;
    let mut attachments: Vec<SatelliteAttachment> = state
        .specs()
        .await?
        .into_iter()
        .filter(|spec| grants.iter().any(|grant| grant.scope.covers(&spec.name)))
        .flat_map(|spec| {
            spec.attachments
                .iter()
                .filter(|attachment| attachment.from == name)
                .map(|attachment| SatelliteAttachment {
                    volume: spec.name.clone(),
                    endpoint: attachment.endpoint.clone(),
                    data_key: state
                        .satellite_keys
                        .lock()
                        .unwrap()
                        .get(&(spec.name.clone(), name.to_string()))
                        .cloned(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    attachments.sort_by(|a, b| (&a.volume, &a.endpoint).cmp(&(&b.volume, &b.endpoint)));
    // Whether a key is there counts (a key given later must reach the
    // satellite); the key itself stays out of the version, which travels in URLs.
    let shape: Vec<(&str, &str, bool)> = attachments
        .iter()
        .map(|a| (a.volume.as_str(), a.endpoint.as_str(), a.data_key.is_some()))
        .collect();
    let version = blake3::hash(&serde_json::to_vec(&shape).expect("serializes"))
        .to_hex()
        .to_string();
    Ok(SatelliteAttachments {
        version,
        attachments,
    })
}

/// Long polls one satellite may hold at once (JSON polls and gRPC watches
/// together): each holds store watches, so a satellite cannot make the
/// registry hold more than this many.
pub const MAX_WATCHES_PER_SATELLITE: usize = 4;

/// A satellite's seat among its [`MAX_WATCHES_PER_SATELLITE`], held for a
/// long poll or for the life of a gRPC stream, given back on drop.
pub(crate) struct WatchSeat {
    watches: super::WatchCounts,
    satellite: String,
}

impl WatchSeat {
    /// A seat to watch the attachments of `satellite`, for the satellite
    /// itself (or an admin).
    pub(crate) fn take(state: &AppState, caller: &Caller, satellite: &str) -> ApiResult<WatchSeat> {
        require_self(caller, satellite)?;
        let mut watches = state.attachment_watches.lock().unwrap();
        let held = watches.entry(satellite.to_string()).or_default();
        if *held >= MAX_WATCHES_PER_SATELLITE {
            return Err(RegistryError::TooManyWatches {
                satellite: satellite.into(),
                limit: MAX_WATCHES_PER_SATELLITE,
            });
        }
        *held += 1;
        Ok(WatchSeat {
            watches: state.attachment_watches.clone(),
            satellite: satellite.into(),
        })
    }
}

impl Drop for WatchSeat {
    fn drop(&mut self) {
        let mut watches = self.watches.lock().unwrap();
        if let Some(held) = watches.get_mut(&self.satellite) {
            *held -= 1;
            if *held == 0 {
                watches.remove(&self.satellite);
            }
        }
    }
}

/// `GET /v1/satellites/{name}/attachments[?version=V]` and each turn of the
/// gRPC `WatchAttachments` stream: with the version the satellite already
/// has, waits (up to [`LONG_POLL`]) for a change of its volumes or grants.
/// A satellite removed meanwhile gets its refusal, not an answer.
pub(crate) async fn attachments_after(
    state: AppState,
    caller: Caller,
    seat: &WatchSeat,
    version: Option<String>,
) -> ApiResult<SatelliteAttachments> {
    let name = seat.satellite.clone();
    let current = attachments(&state, &name).await?;
    if version.as_deref() != Some(current.version.as_str()) {
        return Ok(current);
    }
    let (_, revision) = state.store.get_prefix(&state.prefix(Kind::Volumes)).await?;
    let mut volumes = state
        .store
        .watch_prefix(&state.prefix(Kind::Volumes), revision + 1)
        .await?;
    let mut grants = state
        .store
        .watch_prefix(&state.keys().grants_prefix(&name), revision + 1)
        .await?;
    let mut standing = state
        .store
        .watch_prefix(&state.key(Kind::Clusters, &name), revision + 1)
        .await?;
    let deadline = tokio::time::sleep(LONG_POLL);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            event = volumes.recv() => if event.is_none() { break },
            event = grants.recv() => if event.is_none() { break },
            event = standing.recv() => if event.is_none() { break },
        }
        // Standing first: a removal drops the grants too, and that change
        // must end the watch, not be answered as an empty set.
        if caller.satellite().is_some() {
            crate::security::satellite_caller(&state, &name).await?;
        }
        let now = attachments(&state, &name).await?;
        if now.version != current.version {
            return Ok(now);
        }
    }
    attachments(&state, &name).await
}

/// `POST /v1/satellites/{name}/presenting`: what the satellite serves.
pub(crate) async fn satellite_presenting(
    state: AppState,
    caller: Caller,
    name: String,
    report: SatellitePresenting,
) -> ApiResult<()> {
    require_self(&caller, &name)?;
    for (volume, mut status) in report.volumes {
        caller.require_volume(&volume)?;
        status.node = name.clone();
        state
            .store
            .put(
                &state.keys().presenting(&volume, &name),
                serde_json::to_vec(&status).expect("status serializes"),
                None,
            )
            .await?;
    }
    Ok(())
}

/// `GET /v1/satellites/{name}/grants`: a satellite's own grants, with what
/// each prefix grant uses (what its CSI controller's GetCapacity answers from).
pub(crate) async fn satellite_grants(
    state: AppState,
    caller: Caller,
    name: String,
) -> ApiResult<Vec<tether_proto::federation::GrantView>> {
    require_self(&caller, &name)?;
    super::federation::list_grants(state, Some(name)).await
}

/// The room each live node has for new copies (its provisioning limit less
/// what is provisioned on it), largest first: no names, only what a
/// satellite needs to say how large a volume can be.
pub(crate) async fn central_free_bytes(state: &AppState) -> ApiResult<Vec<u64>> {
    let (nodes, specs) = (state.nodes().await?, state.specs().await?);
    let mut free: Vec<u64> = nodes
        .iter()
        .map(|node| {
            node.provisioning_limit()
                .saturating_sub(crate::placement::provisioned_on(&node.name, &specs))
        })
        .collect();
    free.sort_unstable_by(|a, b| b.cmp(a));
    Ok(free)
}

/// A CSI node plugin of `satellite` stages `name` on `node`: recorded at
/// once (the plugin serves it itself, with the key its CSI secret unwraps),
/// and refused while another node holds it, so one filesystem is never
/// mounted on two hosts.
async fn stage_for_csi(
    state: &AppState,
    name: &str,
    satellite: &str,
    node: &str,
    endpoint: &str,
) -> ApiResult<String> {
    state
        .update_spec(name, |spec| {
            let elsewhere: Vec<String> = spec
                .attachments
                .iter()
                .filter(|attachment| {
                    attachment.endpoint != endpoint
                        && tether_proto::federation::csi_staging_node(&attachment.endpoint)
                            .is_some()
                })
                .map(|attachment| format!("{} of {}", attachment.endpoint, attachment.from))
                .collect();
            if !elsewhere.is_empty() {
                return Err(RegistryError::Attached {
                    name: name.to_string(),
                    uris: elsewhere.join(", "),
                });
            }
            if !spec
                .attachments
                .iter()
                .any(|attachment| attachment.endpoint == endpoint && attachment.from == satellite)
            {
                spec.attachments.push(AttachmentSpec {
                    endpoint: endpoint.to_string(),
                    from: satellite.to_string(),
                    node: Some(satellite.to_string()),
                });
            }
            Ok(())
        })
        .await?;
    tracing::info!(volume = %name, %satellite, csi_node = %node, "volume staged by a CSI node plugin");
    Ok(endpoint.to_string())
}

/// An attach `--from` satellite `satellite` (already checked against its
/// grants): records the attachment for the satellite to pick up, and waits
/// until it serves the endpoint (or says why it cannot).
pub(crate) async fn attach_from_satellite(
    state: &AppState,
    name: &str,
    satellite: &str,
    endpoint: &str,
    data_key: Option<String>,
) -> ApiResult<String> {
    if let Some(node) = tether_proto::federation::csi_staging_node(endpoint) {
        return stage_for_csi(state, name, satellite, node, endpoint).await;
    }
    let (spec, _) = state.spec(name).await?;
    if let Some(encryption) = &spec.encryption {
        // The key goes to the satellite with its attachment, never to a gateway.
        let Some(data_key) = data_key else {
            return Err(RegistryError::Invalid {
                field: "key",
                reason: format!(
                    "volume {name} is encrypted: attach needs its key (--encrypt-key-file)"
                ),
            });
        };
        volume_crypto::DataKey::from_hex(name, &data_key)
            .and_then(|key| key.verify(name, &encryption.key_check))
            .map_err(|err| RegistryError::Invalid {
                field: "key",
                reason: err.to_string(),
            })?;
        state
            .satellite_keys
            .lock()
            .unwrap()
            .insert((name.to_string(), satellite.to_string()), data_key);
    }
    state
        .update_spec(name, |spec| {
            match spec
                .attachments
                .iter()
                .find(|attachment| attachment.endpoint == endpoint)
            {
                Some(existing) if existing.from != satellite => Err(RegistryError::Invalid {
                    field: "nbd",
                    reason: format!(
                        "{endpoint} is already presented by {}",
                        existing.presenter(spec)
                    ),
                }),
                Some(_) => Ok(()),
                None => {
                    spec.attachments.push(AttachmentSpec {
                        endpoint: endpoint.to_string(),
                        from: satellite.to_string(),
                        node: Some(satellite.to_string()),
                    });
                    Ok(())
                }
            }
        })
        .await?;
    tracing::info!(volume = %name, %endpoint, %satellite, "attach from a satellite requested");
    let outcome = state
        .wait_for_presenter(
            name,
            satellite,
            "serve",
            |status: Option<&PresentingStatus>| {
                let status = status?;
                if let Some(serving) = status.serving.iter().find(|s| s.endpoint == endpoint) {
                    return Some(Ok(serving.uri.clone()));
                }
                status
                    .failures
                    .iter()
                    .find(|failure| failure.endpoint == endpoint)
                    .map(|failure| Err(failure.error.clone()))
            },
        )
        .await;
    if outcome.is_err() {
        let _ = state
            .update_spec(name, |spec| {
                spec.attachments.retain(|attachment| {
                    !(attachment.endpoint == endpoint && attachment.from == satellite)
                });
                Ok(())
            })
            .await;
    }
    outcome
}
