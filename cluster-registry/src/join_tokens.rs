//! Join tokens: the one-time secret a new node presents with its first CSR.
//!
//! An admin mints one (`tether node join-token [--name NODE]`); the store
//! keeps only its BLAKE3 hash, under `join-tokens/{hash}`, bound to a lease
//! that expires it. A join consumes the token by compare-and-delete before
//! anything is signed, so a token works once: a leaked token that was used
//! is worthless, and one bound to a name mints nothing else. A node
//! bootstrap token may be minted for several joins (`--uses N`, for a
//! DaemonSet's nodes, as kubeadm's bootstrap tokens): each join counts it
//! down under the same compare-and-swap, the last deletes it. Independently
//! of tokens, a name whose node is registered and alive is never issued
//! again (`security::join`).

use std::time::{Duration, SystemTime};

use coord_store::{Compare, CoordStore, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// Who a token lets join: a token minted for a node never makes a
/// satellite, and one minted for a satellite never makes a node.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TokenPurpose {
    #[default]
    Node,
    Satellite,
    /// A DR peer cluster linking with this one.
    DrPeer,
}

/// What the store holds for an unused token. Key:
/// `/tether/v1/{cluster}/join-tokens/{blake3 hex of the token}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub version: u32,
    /// The only name this token may join as (`None`: any free node name).
    pub node: Option<String>,
    pub expires_unix_ms: u64,
    #[serde(default)]
    pub purpose: TokenPurpose,
    /// Joins left (a node bootstrap token for a DaemonSet admits several;
    /// every other token one).
    #[serde(default = "one_use")]
    pub uses: u32,
}

fn one_use() -> u32 {
    1
}

/// Most joins one node token may admit.
pub const MAX_USES: u32 = 10_000;

/// Longest a token may live.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the store keeps of `token`: its BLAKE3 hash, hex.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.trim().as_bytes()).to_hex().to_string()
}

fn key(cluster: &str, token: &str) -> String {
    tether_proto::keys::ClusterKeys::new(cluster)
        .key(tether_proto::keys::Kind::JoinTokens, &token_hash(token))
}

/// Makes a token valid for `ttl` (rounded up to whole seconds), for `node`
/// only if given. Returns the token (shown once; only its hash is kept).
pub async fn mint(
    store: &dyn CoordStore,
    cluster: &str,
    node: Option<&str>,
    ttl: Duration,
) -> Result<(String, TokenRecord), RegistryError> {
    mint_uses(store, cluster, node, ttl, 1).await
}

/// [`mint`] for `uses` node joins (not for a named node: a name joins once).
pub async fn mint_uses(
    store: &dyn CoordStore,
    cluster: &str,
    node: Option<&str>,
    ttl: Duration,
    uses: u32,
) -> Result<(String, TokenRecord), RegistryError> {
    if !(1..=MAX_USES).contains(&uses) {
        return Err(RegistryError::Invalid {
            field: "uses",
            reason: format!("{uses}: a join token admits from 1 to {MAX_USES} joins"),
        });
    }
    if uses > 1 && node.is_some() {
        return Err(RegistryError::Invalid {
            field: "uses",
            reason: "a token bound to a node name admits one join".into(),
        });
    }
    mint_counted(store, cluster, TokenPurpose::Node, node, ttl, uses).await
}

/// [`mint`] for a purpose.
pub async fn mint_for(
    store: &dyn CoordStore,
    cluster: &str,
    purpose: TokenPurpose,
    node: Option<&str>,
    ttl: Duration,
) -> Result<(String, TokenRecord), RegistryError> {
    mint_counted(store, cluster, purpose, node, ttl, 1).await
}

async fn mint_counted(
    store: &dyn CoordStore,
    cluster: &str,
    purpose: TokenPurpose,
    node: Option<&str>,
    ttl: Duration,
    uses: u32,
) -> Result<(String, TokenRecord), RegistryError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(RegistryError::Invalid {
            field: "ttl",
            reason: format!("{ttl:?}: a join token lives between 1 s and 7 days"),
        });
    }
    let ttl = Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0));
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let expires = SystemTime::now() + ttl;
    let record = TokenRecord {
        version: 1,
        node: node.map(str::to_string),
        expires_unix_ms: expires
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
        purpose,
        uses,
    };
    let lease = store.grant_lease(ttl).await?;
    store
        .put(
            &key(cluster, &token),
            serde_json::to_vec(&record).expect("token record serializes"),
            Some(lease.id),
        )
        .await?;
    tracing::info!(node = ?node, ?purpose, uses, ttl_secs = ttl.as_secs(), "minted a join token");
    Ok((token, record))
}

/// Consumes `token` for a join as `node`: it must exist (not used, not
/// expired) and, if bound to a name, be bound to this one.
pub async fn redeem(
    store: &dyn CoordStore,
    cluster: &str,
    token: &str,
    node: &str,
) -> Result<(), RegistryError> {
    redeem_for(store, cluster, TokenPurpose::Node, token, node, None).await
}

/// [`redeem`] for a purpose: a token of another purpose is refused, and
/// left unused; so is one whose hash is not `newest` when that is given
/// (a newer token was minted for the name since).
pub async fn redeem_for(
    store: &dyn CoordStore,
    cluster: &str,
    purpose: TokenPurpose,
    token: &str,
    node: &str,
    newest: Option<&str>,
) -> Result<(), RegistryError> {
    let refused = |reason: &str| RegistryError::BadJoinToken {
        node: node.to_string(),
        reason: reason.to_string(),
    };
    let key = key(cluster, token);
    let Some(stored) = store.get(&key).await? else {
        return Err(refused(
            "the join token is unknown, used or expired (mint one with `tether node join-token`)",
        ));
    };
    let record: TokenRecord =
        serde_json::from_slice(&stored.value).map_err(|err| RegistryError::BadRecord {
            key: key.clone(),
            reason: err.to_string(),
        })?;
    if record.purpose != purpose {
        return Err(refused(&format!(
            "the join token is for a {}, not a {}",
            purpose_name(record.purpose),
            purpose_name(purpose)
        )));
    }
    if let Some(bound) = &record.node {
        if bound != node {
            return Err(refused(&format!(
                "the join token is for {} {bound}",
                purpose_name(record.purpose)
            )));
        }
    }
    if newest.is_some_and(|newest| newest != token_hash(token)) {
        return Err(refused(&format!(
            "the join token was superseded: adding the {} again minted a newer one",
            purpose_name(record.purpose)
        )));
    }
    // The last use deletes the token; an earlier one counts it down (same
    // lease, so it still expires when it was minted to).
    let spend = if record.uses > 1 {
        TxnOp::Put {
            key: key.clone(),
            value: serde_json::to_vec(&TokenRecord {
                uses: record.uses - 1,
                ..record
            })
            .expect("token record serializes"),
            lease: stored.lease,
        }
    } else {
        TxnOp::Delete { key: key.clone() }
    };
    let consume = Txn {
        compares: vec![Compare::ModRevision {
            key,
            revision: stored.mod_revision,
        }],
        success: vec![spend],
        failure: vec![],
    };
    if !store.txn(consume).await?.succeeded {
        return Err(refused("the join token was just used by another join"));
    }
    Ok(())
}

fn purpose_name(purpose: TokenPurpose) -> &'static str {
    match purpose {
        TokenPurpose::Node => "node",
        TokenPurpose::Satellite => "satellite",
        TokenPurpose::DrPeer => "DR peer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coord_store::EmbeddedStore;

    /// A DaemonSet's nodes join with one bootstrap token (as kubeadm's
    /// nodes do): it admits as many joins as it was minted for, then none.
    #[tokio::test]
    async fn a_token_minted_for_n_joins_admits_n_nodes_and_then_no_more() {
        let store = EmbeddedStore::in_memory();
        let ttl = Duration::from_secs(60);
        let (token, record) = mint_uses(&store, "c", None, ttl, 3).await.unwrap();
        assert_eq!(record.uses, 3);
        for node in ["node-a", "node-b", "node-c"] {
            redeem(&store, "c", &token, node).await.unwrap();
        }
        let refused = redeem(&store, "c", &token, "node-d").await.unwrap_err();
        assert!(
            refused.to_string().contains("unknown, used or expired"),
            "{refused}"
        );

        // A token bound to a name joins once, whatever it asks for.
        let bound = mint_uses(&store, "c", Some("node-e"), ttl, 2)
            .await
            .unwrap_err();
        assert!(bound.to_string().contains("one join"), "{bound}");
        let too_many = mint_uses(&store, "c", None, ttl, MAX_USES + 1)
            .await
            .unwrap_err();
        assert!(too_many.to_string().contains("uses"), "{too_many}");
    }
}
