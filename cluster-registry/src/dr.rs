//! DR links as the registry keeps them: `tether dr link` on the primary's
//! side, the secondary created when the first batch stream reaches one of
//! this cluster's gateways, and the requests (promote, failback) that the
//! shippers and receivers carry out. The registry never moves data.

use std::time::{Duration, Instant};

use coord_store::CoordStore;
use tether_proto::admin::CreateVolumeRequest;
use tether_proto::dr::journal::JournalLayout;
use tether_proto::dr::{
    journal_volume_name, DrLinkRecord, DrLinkRequest, DrLinkView, DrRole, DrSecondaryRequest,
    DrStatusRecord, PeerState,
};
use tether_proto::keys::{ClusterKeys, Kind};

use crate::federation::now_unix_ms;
use crate::RegistryError;

/// How long promote and failback wait for the sides to act.
pub const ACT_PATIENCE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(100);

fn key(cluster: &str, kind: Kind, volume: &str) -> String {
    ClusterKeys::new(cluster).key(kind, volume)
}

pub async fn record(
    store: &dyn CoordStore,
    cluster: &str,
    volume: &str,
) -> Result<Option<(DrLinkRecord, i64)>, RegistryError> {
    let Some(kv) = store.get(&key(cluster, Kind::DrLinks, volume)).await? else {
        return Ok(None);
    };
    let link = serde_json::from_slice(&kv.value).map_err(|err| RegistryError::DrLinkState {
        volume: volume.to_string(),
        reason: format!("its record is unreadable: {err}"),
    })?;
    Ok(Some((link, kv.mod_revision)))
}

async fn status(store: &dyn CoordStore, cluster: &str, volume: &str) -> Option<DrStatusRecord> {
    status_of(store, cluster, Kind::DrStatus, volume).await
}

async fn status_of(
    store: &dyn CoordStore,
    cluster: &str,
    kind: Kind,
    volume: &str,
) -> Option<DrStatusRecord> {
    let kv = store.get(&key(cluster, kind, volume)).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

pub async fn view(
    store: &dyn CoordStore,
    cluster: &str,
    volume: &str,
) -> Result<DrLinkView, RegistryError> {
    let (link, _) =
        record(store, cluster, volume)
            .await?
            .ok_or_else(|| RegistryError::DrLinkNotFound {
                volume: volume.to_string(),
            })?;
    Ok(DrLinkView::new(
        &link,
        status(store, cluster, volume).await.as_ref(),
        status_of(store, cluster, Kind::DrReceived, volume)
            .await
            .as_ref(),
        now_unix_ms(),
    ))
}

pub async fn list(store: &dyn CoordStore, cluster: &str) -> Result<Vec<DrLinkView>, RegistryError> {
    let (kvs, _) = store
        .get_prefix(&ClusterKeys::new(cluster).kind_prefix(Kind::DrLinks))
        .await?;
    let mut views = Vec::new();
    for kv in kvs {
        if let Ok(link) = serde_json::from_slice::<DrLinkRecord>(&kv.value) {
            let shipped = status(store, cluster, &link.volume).await;
            let received = status_of(store, cluster, Kind::DrReceived, &link.volume).await;
            views.push(DrLinkView::new(
                &link,
                shipped.as_ref(),
                received.as_ref(),
                now_unix_ms(),
            ));
        }
    }
    Ok(views)
}

/// Writes `link` if the record is still at `revision` (0: absent).
async fn put(
    store: &dyn CoordStore,
    cluster: &str,
    link: &DrLinkRecord,
    revision: i64,
) -> Result<bool, RegistryError> {
    let key = key(cluster, Kind::DrLinks, &link.volume);
    let value = serde_json::to_vec(link).expect("a link record serializes");
    Ok(coord_store::put_if_revision(store, &key, value, revision)
        .await?
        .is_some())
}

/// A new link record, no request pending.
fn new_link(
    volume: &str,
    peer: &str,
    role: DrRole,
    generation: u64,
    rpo_secs: u64,
    replicas: u32,
) -> DrLinkRecord {
    DrLinkRecord {
        volume: volume.to_string(),
        peer: peer.to_string(),
        role,
        generation,
        rpo_secs,
        replicas,
        journal_volume: None,
        handover_requested: false,
        failback_requested: false,
        force_requested: false,
        created_unix_ms: now_unix_ms(),
    }
}

fn linked_peer_check(
    peers: &[tether_proto::dr::PeerView],
    peer: &str,
) -> Result<(), RegistryError> {
    match peers.iter().find(|view| view.name == peer) {
        Some(view) if view.state == PeerState::Linked => Ok(()),
        Some(_) => Err(RegistryError::DrLinkState {
            volume: String::new(),
            reason: format!("peer {peer} is added but has not linked yet"),
        }),
        None => Err(RegistryError::PeerNotFound {
            name: peer.to_string(),
        }),
    }
}

/// `tether dr link`: records this side as the primary; the volume's master
/// then ships to the peer, whose gateway creates the secondary.
pub async fn link(
    store: &dyn CoordStore,
    cluster: &str,
    request: &DrLinkRequest,
) -> Result<DrLinkView, RegistryError> {
    let volume = &request.volume;
    if store
        .get(&key(cluster, Kind::Volumes, volume))
        .await?
        .is_none()
    {
        return Err(RegistryError::VolumeNotFound {
            name: volume.clone(),
        });
    }
    if request.rpo_secs == 0 {
        return Err(RegistryError::Invalid {
            field: "rpo_secs",
            reason: "an RPO of 0 s cannot be held by asynchronous replication".into(),
        });
    }
    if !(1..=5).contains(&request.replicas) {
        return Err(RegistryError::Invalid {
            field: "replicas",
            reason: format!("{}: the secondary has 1 to 5 copies", request.replicas),
        });
    }
    linked_peer_check(&crate::peers::list(store, cluster).await?, &request.to)?;
    if volume.len() + 4 > 63 {
        return Err(RegistryError::Invalid {
            field: "volume",
            reason: "DR needs names of 59 characters at most (the journal adds -drj)".into(),
        });
    }
    let link = new_link(
        volume,
        &request.to,
        DrRole::Primary,
        1,
        request.rpo_secs,
        request.replicas,
    );
    if !put(store, cluster, &link, 0).await? {
        return Err(RegistryError::DrLinkState {
            volume: volume.clone(),
            reason: "it is DR-linked already (`tether dr status`)".into(),
        });
    }
    tracing::info!(volume = %volume, peer = %request.to, rpo_secs = request.rpo_secs, "DR link recorded; the master ships from now on");
    view(store, cluster, volume).await
}

/// A peer's first batch stream reached a gateway here: record the
/// secondary, then create it and its journal (this cluster's placement).
/// Returns the requests to create (the caller runs them through the
/// volume API, which waits for the nodes).
pub async fn record_secondary(
    store: &dyn CoordStore,
    cluster: &str,
    request: &DrSecondaryRequest,
) -> Result<Vec<CreateVolumeRequest>, RegistryError> {
    linked_peer_check(&crate::peers::list(store, cluster).await?, &request.peer)?;
    let volume = &request.volume;
    let journal = journal_volume_name(volume);
    for name in [volume, &journal] {
        if store
            .get(&key(cluster, Kind::Volumes, name))
            .await?
            .is_some()
        {
            return Err(RegistryError::VolumeExists { name: name.clone() });
        }
    }
    if request.chunk_size == 0 || request.chunk_size > tether_proto::dr::wire::MAX_DR_CHUNK {
        return Err(RegistryError::Invalid {
            field: "chunk_size",
            reason: format!("{} bytes", request.chunk_size),
        });
    }
    let layout = JournalLayout::for_volume(request.size_bytes);
    let link = DrLinkRecord {
        journal_volume: Some(journal.clone()),
        ..new_link(
            volume,
            &request.peer,
            DrRole::Secondary,
            request.generation,
            request.rpo_secs,
            request.replicas,
        )
    };
    // The record first: the secondary's master starts with its gate shut
    // to everything but the receiver.
    if !put(store, cluster, &link, 0).await? {
        return Err(RegistryError::DrLinkState {
            volume: volume.clone(),
            reason: "a DR link of this volume exists here already".into(),
        });
    }
    tracing::info!(volume = %volume, peer = %request.peer, "creating a DR secondary and its journal");
    Ok(vec![
        CreateVolumeRequest {
            name: volume.clone(),
            size_bytes: request.size_bytes,
            replicas: request.replicas,
            placement: Default::default(),
            encryption: request.encryption.clone(),
        },
        CreateVolumeRequest {
            name: journal,
            size_bytes: layout.size_bytes(),
            replicas: request.replicas,
            placement: Default::default(),
            encryption: None,
        },
    ])
}

/// Changes the link with `change` (compare-and-swap, retried on races).
async fn update(
    store: &dyn CoordStore,
    cluster: &str,
    volume: &str,
    change: impl Fn(&mut DrLinkRecord) -> Result<(), RegistryError>,
) -> Result<DrLinkRecord, RegistryError> {
    loop {
        let (mut link, revision) =
            record(store, cluster, volume)
                .await?
                .ok_or_else(|| RegistryError::DrLinkNotFound {
                    volume: volume.to_string(),
                })?;
        change(&mut link)?;
        if put(store, cluster, &link, revision).await? {
            return Ok(link);
        }
    }
}

/// Waits until the link's role is `role` (at a newer generation than
/// `from_generation`).
async fn wait_for_role(
    store: &dyn CoordStore,
    cluster: &str,
    volume: &str,
    role: DrRole,
    from_generation: u64,
    what: &'static str,
) -> Result<DrLinkView, RegistryError> {
    let started = Instant::now();
    loop {
        if let Some((link, _)) = record(store, cluster, volume).await? {
            if link.role == role && link.generation > from_generation {
                return view(store, cluster, volume).await;
            }
        }
        if started.elapsed() > ACT_PATIENCE {
            let status = status(store, cluster, volume).await.unwrap_or_default();
            return Err(RegistryError::DrTimeout {
                volume: volume.to_string(),
                what,
                waited_secs: ACT_PATIENCE.as_secs(),
                reason: format!(
                    "the link is {} ({})",
                    status.link_state,
                    status.error.unwrap_or_else(|| "no error reported".into())
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `tether dr promote` on the secondary's side. Planned: the primary
/// drains, ships its last point and hands over (zero loss). Forced: this
/// side becomes primary at its last consistent point, without the primary.
pub async fn promote(
    store: &dyn CoordStore,
    cluster: &str,
    volume: &str,
    force: bool,
) -> Result<DrLinkView, RegistryError> {
    let link = update(store, cluster, volume, |link| {
        if link.role != DrRole::Secondary {
            return Err(RegistryError::DrLinkState {
                volume: link.volume.clone(),
                reason: format!(
                    "only a secondary is promoted; this side is the {:?} (generation {})",
                    link.role, link.generation
                )
                .to_lowercase(),
            });
        }
        if force {
            link.force_requested = true;
        } else {
            link.handover_requested = true;
        }
        Ok(())
    })
    .await?;
    tracing::info!(
        volume,
        force,
        generation = link.generation,
        "DR promote asked for"
    );
    let what = if force {
        "forced promote"
    } else {
        "planned promote"
    };
    wait_for_role(
        store,
        cluster,
        volume,
        DrRole::Primary,
        link.generation,
        what,
    )
    .await
}

/// The journal the fenced side of `volume` needs to take batches, if it
/// has none yet (laid out for the engine's chunks, as the peer's are).
pub async fn failback_journal(
    store: &dyn CoordStore,
    cluster: &str,
    volume: &str,
) -> Result<Option<CreateVolumeRequest>, RegistryError> {
    let (link, _) =
        record(store, cluster, volume)
            .await?
            .ok_or_else(|| RegistryError::DrLinkNotFound {
                volume: volume.to_string(),
            })?;
    if link.role != DrRole::Fenced {
        return Ok(None);
    }
    let journal = journal_volume_name(volume);
    if store
        .get(&key(cluster, Kind::Volumes, &journal))
        .await?
        .is_some()
    {
        return Ok(None);
    }
    let Some(kv) = store.get(&key(cluster, Kind::Volumes, volume)).await? else {
        return Err(RegistryError::VolumeNotFound {
            name: volume.to_string(),
        });
    };
    let spec: tether_proto::admin::VolumeSpec =
        serde_json::from_slice(&kv.value).map_err(|err| RegistryError::DrLinkState {
            volume: volume.to_string(),
            reason: format!("its volume record is unreadable: {err}"),
        })?;
    let layout = JournalLayout::for_volume(spec.size_bytes);
    Ok(Some(CreateVolumeRequest {
        name: journal,
        size_bytes: layout.size_bytes(),
        replicas: spec.replicas,
        placement: spec.placement.clone(),
        encryption: None,
    }))
}

/// `tether dr failback` on the fenced (old primary's) side: it becomes the
/// secondary of the new primary, takes only the chunks that differ, and
/// then a planned promote makes it the primary again. Returns at once; the
/// status shows the progress.
pub async fn failback(
    store: &dyn CoordStore,
    cluster: &str,
    volume: &str,
) -> Result<DrLinkView, RegistryError> {
    update(store, cluster, volume, |link| {
        if link.role != DrRole::Fenced {
            return Err(RegistryError::DrLinkState {
                volume: link.volume.clone(),
                reason: format!(
                    "failback runs on the fenced side (the old primary); this side is the {:?}",
                    link.role
                )
                .to_lowercase(),
            });
        }
        link.failback_requested = true;
        link.journal_volume = Some(journal_volume_name(&link.volume));
        Ok(())
    })
    .await?;
    tracing::info!(volume, "DR failback asked for");
    view(store, cluster, volume).await
}
