//! Volumes: list, get, create, resize, delete.

use coord_store::{Compare, Txn, TxnOp};
use tether_proto::admin::{
    valid_volume_name, CreateVolumeRequest, ResizeVolumeRequest, VolumeSpec, VolumeView,
};
use tether_proto::group::GroupRecord;
use tether_proto::keys::Kind;

use super::{ApiResult, AppState, MAX_COPIES};
use crate::grants::Caller;
use crate::placement;
use crate::RegistryError;

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

fn check_size(size_bytes: u64) -> ApiResult<()> {
    let max = tether_proto::disk::meta::MAX_VOLUME_BYTES;
    if size_bytes == 0 || !size_bytes.is_multiple_of(512) || size_bytes > max {
        return Err(RegistryError::Invalid {
            field: "size",
            reason: format!(
                "{} ({size_bytes} bytes) is not a positive multiple of 512 bytes of at most {}",
                tether_common::size::format_size(size_bytes),
                tether_common::size::format_size(max),
            ),
        });
    }
    Ok(())
}

pub(crate) async fn list_volumes(state: AppState, caller: Caller) -> ApiResult<Vec<VolumeView>> {
    let mut views = Vec::new();
    for spec in state.specs().await? {
        if !caller.may_see(&spec.name) {
            continue;
        }
        views.push(state.view(spec).await?);
    }
    Ok(views)
}

pub(crate) async fn get_volume(
    state: AppState,
    caller: Caller,
    name: String,
) -> ApiResult<VolumeView> {
    caller.require_volume(&name)?;
    let (spec, _) = state.spec(&name).await?;
    state.view(spec).await
}

pub(crate) async fn create_volume(
    state: AppState,
    caller: Caller,
    request: CreateVolumeRequest,
) -> ApiResult<VolumeView> {
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
    // A satellite creates only under a prefix grant, within its quota; the
    // grant record is compared and bumped with the create, so concurrent
    // creates under one quota are checked one after the other.
    let grant = caller.prefix_grant(&request.name, "create")?.cloned();
    let mut attempts = 0;
    let (spec, key, copies, master) = loop {
        attempts += 1;
        // The grant's revision first, then the specs: if the grant is still
        // at that revision when the create commits, no other change under
        // it committed since, and the specs read counted every earlier one.
        let guard = match &grant {
            Some(grant) => {
                Some(crate::grants::guard(state.store.as_ref(), &state.cluster, grant).await?)
            }
            None => None,
        };
        let specs = state.specs().await?;
        if let (Some(grant), Some(satellite)) = (&grant, caller.satellite()) {
            crate::grants::check_quota(satellite, grant, &specs, 1, request.size_bytes)?;
        }
        let copies = placement::place(
            request.size_bytes,
            request.replicas as usize,
            &request.placement,
            &state.nodes().await?,
            &specs,
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
        let key = state.key(Kind::Volumes, &spec.name);
        let group = GroupRecord::new(&copies);
        let mut compares = vec![Compare::ModRevision {
            key: key.clone(),
            revision: 0,
        }];
        let mut success = vec![
            TxnOp::Put {
                key: key.clone(),
                value: serde_json::to_vec(&spec).expect("spec serializes"),
                lease: None,
            },
            TxnOp::Put {
                key: state.key(Kind::Groups, &spec.name),
                value: serde_json::to_vec(&group).expect("group serializes"),
                lease: None,
            },
        ];
        if let Some(guard) = &guard {
            compares.push(guard.compare());
            success.push(guard.touch());
        }
        let created = state
            .store
            .txn(Txn {
                compares,
                success,
                failure: vec![],
            })
            .await?;
        if created.succeeded {
            break (spec, key, copies, master);
        }
        if guard.is_none() || state.store.get(&key).await?.is_some() || attempts >= 10 {
            return Err(RegistryError::VolumeExists { name: spec.name });
        }
        // Another change under the same grant came first: check again.
    };
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
        let _ = state
            .store
            .delete(&state.key(Kind::Groups, &spec.name))
            .await;
        return Err(err);
    }
    state.view(spec).await
}

pub(crate) async fn resize_volume(
    state: AppState,
    caller: Caller,
    name: String,
    request: ResizeVolumeRequest,
) -> ApiResult<VolumeView> {
    check_size(request.size_bytes)?;
    let grant = caller.prefix_grant(&name, "resize")?.cloned();
    let (nodes, specs) = (state.nodes().await?, state.specs().await?);
    let spec = state
        .update_spec_guarded(&name, grant.as_ref(), |spec, current| {
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
            if let (Some(grant), Some(satellite)) = (&grant, caller.satellite()) {
                crate::grants::check_quota(satellite, grant, current, 0, growth)?;
            }
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
    state.view(spec).await
}

pub(crate) async fn delete_volume(state: AppState, caller: Caller, name: String) -> ApiResult<()> {
    caller.prefix_grant(&name, "delete")?;
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
    let key = state.key(Kind::Volumes, &name);
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
                    key: state.key(Kind::Groups, &name),
                },
                TxnOp::Delete {
                    key: state.key(Kind::Verify, &name),
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
    Ok(())
}
