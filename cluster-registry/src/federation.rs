//! Satellites in the store: adding one (a record and a one-time join
//! token), its join, its last-seen time, and its removal.
//!
//! A removed satellite's record stays, `revoked`, for as long as the
//! cluster lives: its certificate is still cryptographically valid until it
//! expires, so every check of a satellite's call or session reads the record,
//! and the name is never issued again.

use std::time::{Duration, SystemTime};

use coord_store::{Compare, CoordStore, Txn, TxnOp};
use tether_proto::federation::{
    AddSatelliteResponse, ClusterRecord, ClusterRole, ClusterState, LAST_SEEN_EVERY_MS,
};
use tether_proto::keys::{ClusterKeys, Kind};

use crate::join_tokens::{self, TokenPurpose};
use crate::RegistryError;

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// Satellite names: what a node name may be (they become certificate names).
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(RegistryError::Invalid {
            field: "name",
            reason: format!(
                "{name:?} is not a valid cluster name (lowercase letters, digits and -)"
            ),
        })
    }
}

/// The record of satellite `name`, with its mod revision.
pub async fn record(
    store: &dyn CoordStore,
    cluster: &str,
    name: &str,
) -> Result<Option<(ClusterRecord, i64)>, RegistryError> {
    let key = ClusterKeys::new(cluster).key(Kind::Clusters, name);
    match store.get(&key).await? {
        None => Ok(None),
        Some(kv) => Ok(Some((
            crate::api::decode(&key, &kv.value)?,
            kv.mod_revision,
        ))),
    }
}

/// Every satellite record, by name.
pub async fn satellites(
    store: &dyn CoordStore,
    cluster: &str,
) -> Result<Vec<ClusterRecord>, RegistryError> {
    let (kvs, _) = store
        .get_prefix(&ClusterKeys::new(cluster).kind_prefix(Kind::Clusters))
        .await?;
    let mut records: Vec<ClusterRecord> = kvs
        .iter()
        .map(|kv| crate::api::decode(&kv.key, &kv.value))
        .collect::<Result<_, _>>()?;
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

/// Adds satellite `name` (or, while it has not joined yet, mints it a new
/// token: the first may have been lost) and returns its join token.
pub async fn add_satellite(
    store: &dyn CoordStore,
    cluster: &str,
    name: &str,
    ttl: Duration,
) -> Result<AddSatelliteResponse, RegistryError> {
    check_name(name)?;
    if name == cluster {
        return Err(RegistryError::ClusterExists {
            name: name.into(),
            state: "this central cluster".into(),
        });
    }
    let key = ClusterKeys::new(cluster).key(Kind::Clusters, name);
    match record(store, cluster, name).await? {
        Some((existing, _)) if existing.state != ClusterState::Pending => {
            return Err(RegistryError::ClusterExists {
                name: name.into(),
                state: format!(
                    "{}{}",
                    existing.state.as_str(),
                    if existing.state == ClusterState::Revoked {
                        "; a removed satellite's name is never issued again"
                    } else {
                        ""
                    }
                ),
            });
        }
        Some(_) => {}
        None => {
            let record = ClusterRecord {
                name: name.into(),
                role: ClusterRole::Satellite,
                state: ClusterState::Pending,
                added_unix_ms: now_unix_ms(),
                joined_unix_ms: None,
                certificate_not_after_unix_ms: None,
                last_seen_unix_ms: None,
                revoked_unix_ms: None,
                join_token_hash: None,
            };
            let created = store
                .txn(Txn {
                    compares: vec![Compare::ModRevision {
                        key: key.clone(),
                        revision: 0,
                    }],
                    success: vec![put(&key, &record)],
                    failure: vec![],
                })
                .await?;
            if !created.succeeded {
                return Err(RegistryError::ClusterExists {
                    name: name.into(),
                    state: "just added".into(),
                });
            }
        }
    }
    let (token, token_record) =
        join_tokens::mint_for(store, cluster, TokenPurpose::Satellite, Some(name), ttl).await?;
    // The newest token is the only one that joins: the one it replaces may
    // be the one that leaked (it stays in the store until it expires, and
    // is refused as superseded).
    let mut superseded = None;
    let hash = join_tokens::token_hash(&token);
    update(store, cluster, name, |record| {
        if record.state != ClusterState::Pending {
            return Err(RegistryError::ClusterExists {
                name: name.into(),
                state: format!("{} (it joined meanwhile)", record.state.as_str()),
            });
        }
        superseded = record.join_token_hash.replace(hash.clone());
        Ok(())
    })
    .await?;
    if superseded.is_some() {
        tracing::info!(satellite = %name, "satellite's earlier join token superseded");
    }
    tracing::info!(satellite = %name, "satellite added; join token minted");
    Ok(AddSatelliteResponse {
        name: name.into(),
        token,
        expires_unix_ms: token_record.expires_unix_ms,
    })
}

/// Consumes the join token of pending satellite `name`; the caller signs its
/// CSR only after this succeeds, then calls [`joined`].
pub async fn redeem_join(
    store: &dyn CoordStore,
    cluster: &str,
    name: &str,
    token: &str,
) -> Result<(), RegistryError> {
    match record(store, cluster, name).await? {
        None => Err(RegistryError::BadJoinToken {
            node: name.into(),
            reason: "no such satellite (add it with `tether cluster add-satellite`)".into(),
        }),
        Some((record, _)) if record.state == ClusterState::Revoked => {
            Err(RegistryError::SatelliteRevoked { name: name.into() })
        }
        Some((record, _)) if record.state == ClusterState::Joined => {
            Err(RegistryError::BadJoinToken {
                node: name.into(),
                reason: "it has joined already".into(),
            })
        }
        Some((record, _)) => {
            join_tokens::redeem_for(
                store,
                cluster,
                TokenPurpose::Satellite,
                token,
                name,
                record.join_token_hash.as_deref(),
            )
            .await
        }
    }
}

/// Records that satellite `name` holds a certificate valid until `not_after`.
pub async fn joined(
    store: &dyn CoordStore,
    cluster: &str,
    name: &str,
    not_after_unix_ms: u64,
) -> Result<(), RegistryError> {
    update(store, cluster, name, |record| {
        if record.state == ClusterState::Revoked {
            return Err(RegistryError::SatelliteRevoked { name: name.into() });
        }
        let now = now_unix_ms();
        if record.state == ClusterState::Pending {
            record.joined_unix_ms = Some(now);
        }
        record.state = ClusterState::Joined;
        record.certificate_not_after_unix_ms = Some(not_after_unix_ms);
        record.last_seen_unix_ms = Some(now);
        Ok(())
    })
    .await
    .map(|_| ())
}

/// Revokes satellite `name` and drops its grants, in one transaction.
pub async fn revoke(
    store: &dyn CoordStore,
    cluster: &str,
    name: &str,
) -> Result<ClusterRecord, RegistryError> {
    let keys = ClusterKeys::new(cluster);
    loop {
        let Some((mut record, revision)) = record(store, cluster, name).await? else {
            return Err(RegistryError::ClusterNotFound { name: name.into() });
        };
        if record.state == ClusterState::Revoked {
            return Ok(record);
        }
        record.state = ClusterState::Revoked;
        record.revoked_unix_ms = Some(now_unix_ms());
        let key = keys.key(Kind::Clusters, name);
        let (grants, _) = store.get_prefix(&keys.grants_prefix(name)).await?;
        let mut success = vec![put(&key, &record)];
        success.extend(grants.into_iter().map(|kv| TxnOp::Delete { key: kv.key }));
        let done = store
            .txn(Txn {
                compares: vec![Compare::ModRevision { key, revision }],
                success,
                failure: vec![],
            })
            .await?;
        if done.succeeded {
            tracing::warn!(satellite = %name, "satellite removed: its certificate is refused from now on, its grants are gone");
            return Ok(record);
        }
    }
}

/// Refreshes `last_seen` if it is older than [`LAST_SEEN_EVERY_MS`]. Best
/// effort: a lost race means someone else just refreshed it.
pub async fn seen(store: &dyn CoordStore, cluster: &str, record: &ClusterRecord, revision: i64) {
    let now = now_unix_ms();
    if record
        .last_seen_unix_ms
        .is_some_and(|seen| now.saturating_sub(seen) < LAST_SEEN_EVERY_MS)
    {
        return;
    }
    let mut updated = record.clone();
    updated.last_seen_unix_ms = Some(now);
    let key = ClusterKeys::new(cluster).key(Kind::Clusters, &record.name);
    let _ = store
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: key.clone(),
                revision,
            }],
            success: vec![put(&key, &updated)],
            failure: vec![],
        })
        .await;
}

async fn update(
    store: &dyn CoordStore,
    cluster: &str,
    name: &str,
    mut change: impl FnMut(&mut ClusterRecord) -> Result<(), RegistryError>,
) -> Result<ClusterRecord, RegistryError> {
    let key = ClusterKeys::new(cluster).key(Kind::Clusters, name);
    loop {
        let Some((mut record, revision)) = record(store, cluster, name).await? else {
            return Err(RegistryError::ClusterNotFound { name: name.into() });
        };
        change(&mut record)?;
        let done = store
            .txn(Txn {
                compares: vec![Compare::ModRevision {
                    key: key.clone(),
                    revision,
                }],
                success: vec![put(&key, &record)],
                failure: vec![],
            })
            .await?;
        if done.succeeded {
            return Ok(record);
        }
    }
}

fn put<T: serde::Serialize>(key: &str, record: &T) -> TxnOp {
    TxnOp::Put {
        key: key.to_string(),
        value: serde_json::to_vec(record).expect("records serialize"),
        lease: None,
    }
}
