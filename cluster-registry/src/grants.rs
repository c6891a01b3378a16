//! Grants: which volumes a satellite may reach, and the quota of a prefix
//! grant. Stored under `grants/{satellite}/{id}` (`volume:NAME`,
//! `prefix:P`), one per volume or prefix, so adding one again updates it.
//!
//! A satellite's admin calls run as a [`Caller::Satellite`] holding the
//! grants read at the start of the call: every volume it names is checked
//! against them, and what it lists is filtered by them.

use coord_store::{CoordStore, TxnOp};
use tether_proto::admin::{valid_volume_name, VolumeSpec};
use tether_proto::federation::{AddGrantRequest, ClusterState, GrantRecord, GrantScope, GrantView};
use tether_proto::keys::{ClusterKeys, Kind};

use crate::RegistryError;

/// Who is calling the admin API, as far as volumes are concerned.
#[derive(Debug, Clone)]
pub enum Caller {
    /// An operator: every volume, every operation.
    Admin,
    /// A satellite: what its grants cover.
    Satellite {
        name: String,
        grants: Vec<GrantRecord>,
    },
}

/// A prefix grant a change is made under, with the grant record's revision:
/// the change commits only if the grant is unchanged, and bumps it, so two
/// concurrent creates under one quota cannot both pass the check.
pub struct QuotaGuard {
    pub key: String,
    pub revision: i64,
    pub value: Vec<u8>,
}

impl QuotaGuard {
    pub fn compare(&self) -> coord_store::Compare {
        coord_store::Compare::ModRevision {
            key: self.key.clone(),
            revision: self.revision,
        }
    }

    pub fn touch(&self) -> TxnOp {
        TxnOp::Put {
            key: self.key.clone(),
            value: self.value.clone(),
            lease: None,
        }
    }
}

impl Caller {
    /// Whether the caller may see volume `name` at all.
    pub fn may_see(&self, name: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Satellite { grants, .. } => grants.iter().any(|g| g.scope.covers(name)),
        }
    }

    /// The satellite's name, if the caller is one.
    pub fn satellite(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Satellite { name, .. } => Some(name),
        }
    }

    /// Refuses a volume the caller's grants do not cover.
    pub fn require_volume(&self, name: &str) -> Result<(), RegistryError> {
        match self {
            Caller::Satellite {
                name: satellite, ..
            } if !self.may_see(name) => Err(RegistryError::OutOfGrant {
                satellite: satellite.clone(),
                volume: name.into(),
            }),
            _ => Ok(()),
        }
    }

    /// For create, resize and delete: the prefix grant covering `name` (the
    /// longest, if several do). `None` for an admin.
    pub fn prefix_grant(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<&GrantRecord>, RegistryError> {
        let Caller::Satellite {
            name: satellite,
            grants,
        } = self
        else {
            return Ok(None);
        };
        let best = grants
            .iter()
            .filter(|grant| {
                matches!(grant.scope, GrantScope::Prefix { .. }) && grant.scope.covers(name)
            })
            .max_by_key(|grant| grant.scope.id().len());
        match best {
            Some(grant) => Ok(Some(grant)),
            None => match grants.iter().find(|grant| grant.scope.covers(name)) {
                Some(volume_grant) => Err(RegistryError::ReadOnlyGrant {
                    satellite: satellite.clone(),
                    grant: volume_grant.scope.describe(),
                    what: format!("attaching volume {name}, not to {what} it"),
                }),
                None => Err(RegistryError::OutOfGrant {
                    satellite: satellite.clone(),
                    volume: name.into(),
                }),
            },
        }
    }
}

/// What the volumes under a prefix grant use now: (count, provisioned bytes).
pub fn usage(grant: &GrantRecord, specs: &[VolumeSpec]) -> (u32, u64) {
    specs
        .iter()
        .filter(|spec| grant.scope.covers(&spec.name))
        .fold((0, 0), |(count, bytes), spec| {
            (count + 1, bytes + spec.size_bytes)
        })
}

/// Checks that `grant` has room for `added_count` more volumes and
/// `added_bytes` more bytes, given today's `specs`.
pub fn check_quota(
    satellite: &str,
    grant: &GrantRecord,
    specs: &[VolumeSpec],
    added_count: u32,
    added_bytes: u64,
) -> Result<(), RegistryError> {
    let GrantScope::Prefix {
        capacity_bytes,
        count,
        ..
    } = &grant.scope
    else {
        return Ok(());
    };
    let (used_count, used_bytes) = usage(grant, specs);
    let over = |reason: String| RegistryError::OverQuota {
        satellite: satellite.into(),
        grant: grant.scope.describe(),
        reason,
    };
    if used_count + added_count > *count {
        return Err(over(format!(
            "{used_count} of {count} volumes exist; it allows no more"
        )));
    }
    if used_bytes + added_bytes > *capacity_bytes {
        let human = tether_common::size::format_size;
        return Err(over(format!(
            "{} of {} provisioned; {} more does not fit",
            human(used_bytes),
            human(*capacity_bytes),
            human(added_bytes)
        )));
    }
    Ok(())
}

/// The guard for a change under `grant`: its current record and revision.
pub async fn guard(
    store: &dyn CoordStore,
    cluster: &str,
    grant: &GrantRecord,
) -> Result<QuotaGuard, RegistryError> {
    let key = ClusterKeys::new(cluster).grant(&grant.satellite, &grant.scope.id());
    let kv = store
        .get(&key)
        .await?
        .ok_or_else(|| RegistryError::GrantNotFound {
            satellite: grant.satellite.clone(),
            grant: grant.scope.describe(),
        })?;
    Ok(QuotaGuard {
        key,
        revision: kv.mod_revision,
        value: kv.value,
    })
}

/// Adds (or updates) a grant for a satellite that exists and is not removed.
pub async fn add(
    store: &dyn CoordStore,
    cluster: &str,
    request: AddGrantRequest,
) -> Result<GrantRecord, RegistryError> {
    match crate::federation::record(store, cluster, &request.satellite).await? {
        None => {
            return Err(RegistryError::ClusterNotFound {
                name: request.satellite,
            })
        }
        Some((record, _)) if record.state == ClusterState::Revoked => {
            return Err(RegistryError::SatelliteRevoked {
                name: request.satellite,
            })
        }
        Some(_) => {}
    }
    let invalid = |field, reason: String| RegistryError::Invalid { field, reason };
    match &request.scope {
        GrantScope::Volume { volume, .. } => {
            let key = ClusterKeys::new(cluster).key(Kind::Volumes, volume);
            if store.get(&key).await?.is_none() {
                return Err(RegistryError::VolumeNotFound {
                    name: volume.clone(),
                });
            }
        }
        GrantScope::Prefix {
            prefix,
            capacity_bytes,
            count,
        } => {
            // A prefix must itself be the start of a valid volume name.
            if prefix.is_empty() || !valid_volume_name(prefix) {
                return Err(invalid(
                    "prefix",
                    format!("{prefix:?}: a prefix is 1-63 of a-z 0-9 . _ - starting with a letter or digit"),
                ));
            }
            if *capacity_bytes == 0 || *count == 0 {
                return Err(invalid(
                    "quota",
                    "a prefix grant needs a capacity and a count above zero".into(),
                ));
            }
        }
    }
    let record = GrantRecord {
        satellite: request.satellite,
        scope: request.scope,
        created_unix_ms: crate::federation::now_unix_ms(),
    };
    let key = ClusterKeys::new(cluster).grant(&record.satellite, &record.scope.id());
    store
        .put(
            &key,
            serde_json::to_vec(&record).expect("grants serialize"),
            None,
        )
        .await?;
    tracing::info!(satellite = %record.satellite, grant = %record.scope.id(), "grant added");
    Ok(record)
}

/// Every grant (of one satellite, if named).
pub async fn list(
    store: &dyn CoordStore,
    cluster: &str,
    satellite: Option<&str>,
) -> Result<Vec<GrantRecord>, RegistryError> {
    let keys = ClusterKeys::new(cluster);
    let prefix = match satellite {
        Some(satellite) => keys.grants_prefix(satellite),
        None => keys.kind_prefix(Kind::Grants),
    };
    let (kvs, _) = store.get_prefix(&prefix).await?;
    kvs.iter()
        .map(|kv| crate::api::decode(&kv.key, &kv.value))
        .collect()
}

/// Each grant with what its prefix uses now.
pub fn views(grants: Vec<GrantRecord>, specs: &[VolumeSpec]) -> Vec<GrantView> {
    grants
        .into_iter()
        .map(|grant| {
            let used =
                matches!(grant.scope, GrantScope::Prefix { .. }).then(|| usage(&grant, specs));
            GrantView {
                used_count: used.map(|(count, _)| count),
                used_bytes: used.map(|(_, bytes)| bytes),
                grant,
            }
        })
        .collect()
}

/// Removes grant `id` (`volume:NAME` or `prefix:P`) of `satellite`.
pub async fn remove(
    store: &dyn CoordStore,
    cluster: &str,
    satellite: &str,
    id: &str,
) -> Result<(), RegistryError> {
    let key = ClusterKeys::new(cluster).grant(satellite, id);
    if store.get(&key).await?.is_none() {
        return Err(RegistryError::GrantNotFound {
            satellite: satellite.into(),
            grant: format!("grant {id}"),
        });
    }
    store.delete(&key).await?;
    tracing::info!(%satellite, grant = %id, "grant removed");
    Ok(())
}
