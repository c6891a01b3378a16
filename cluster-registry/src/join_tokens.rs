//! Join tokens: the one-time secret a new node presents with its first CSR.
//!
//! An admin mints one (`tether node join-token [--name NODE]`); the store
//! keeps only its BLAKE3 hash, under `join-tokens/{hash}`, bound to a lease
//! that expires it. A join consumes the token by compare-and-delete before
//! anything is signed, so a token works once: a leaked token that was used
//! is worthless, and one bound to a name mints nothing else. Independently
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
}

/// Longest a token may live.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn key(cluster: &str, token: &str) -> String {
    let hash = blake3::hash(token.trim().as_bytes()).to_hex();
    tether_proto::keys::ClusterKeys::new(cluster).key(tether_proto::keys::Kind::JoinTokens, &hash)
}

/// Makes a token valid for `ttl` (rounded up to whole seconds), for `node`
/// only if given. Returns the token (shown once; only its hash is kept).
pub async fn mint(
    store: &dyn CoordStore,
    cluster: &str,
    node: Option<&str>,
    ttl: Duration,
) -> Result<(String, TokenRecord), RegistryError> {
    mint_for(store, cluster, TokenPurpose::Node, node, ttl).await
}

/// [`mint`] for a purpose.
pub async fn mint_for(
    store: &dyn CoordStore,
    cluster: &str,
    purpose: TokenPurpose,
    node: Option<&str>,
    ttl: Duration,
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
    };
    let lease = store.grant_lease(ttl).await?;
    store
        .put(
            &key(cluster, &token),
            serde_json::to_vec(&record).expect("token record serializes"),
            Some(lease.id),
        )
        .await?;
    tracing::info!(node = ?node, ?purpose, ttl_secs = ttl.as_secs(), "minted a join token");
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
    redeem_for(store, cluster, TokenPurpose::Node, token, node).await
}

/// [`redeem`] for a purpose: a token of another purpose is refused, and
/// left unused.
pub async fn redeem_for(
    store: &dyn CoordStore,
    cluster: &str,
    purpose: TokenPurpose,
    token: &str,
    node: &str,
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
    let consume = Txn {
        compares: vec![Compare::ModRevision {
            key: key.clone(),
            revision: stored.mod_revision,
        }],
        success: vec![TxnOp::Delete { key }],
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
