//! Disaster recovery between two central clusters (datacentres): the
//! pairing records and the admin API shapes. Pairing is once per pair of
//! clusters: one side adds the other (`tether cluster add-peer NAME`, a
//! one-time token that also names its CA by hash), the other links with
//! that token (`tether cluster link NAME --endpoint URL --token T`), and
//! each side then holds the other's CA certificate, trusted for the
//! `dr-peer` role only.

use serde::{Deserialize, Serialize};

pub mod journal;
mod records;
mod rules;
pub mod wire;

pub use records::*;
pub use rules::*;

/// Where a pairing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PeerState {
    /// Added here; its token not used yet.
    Pending,
    /// Both sides hold each other's CA.
    Linked,
}

/// A DR peer cluster. Key: `/tether/v1/{cluster}/peers/{peer}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerRecord {
    pub name: String,
    pub state: PeerState,
    pub added_unix_ms: u64,
    #[serde(default)]
    pub linked_unix_ms: Option<u64>,
    /// The peer's admin API (`https://host:port`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The peer's CA certificate (PEM): trusted for its `dr-peer`
    /// certificates only.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// The peer's gateways (`host:port`), where this side's shippers send
    /// batches; exchanged at pairing, refreshed by `tether cluster link`.
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// `POST /v1/peers`: add a peer that will link with the token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AddPeerRequest {
    pub name: String,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AddPeerResponse {
    pub name: String,
    /// `SECRET.CAHASH`: the one-time secret, and the BLAKE3 of this
    /// cluster's CA certificate (DER; `tether_tls::ca_hash`), which the
    /// linking side checks before it trusts anything this cluster says.
    pub token: String,
    pub expires_unix_ms: u64,
}

/// `POST /v1/peers/{name}/link` (admin): link with peer `name`, which
/// added this cluster and gave out `token`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LinkPeerRequest {
    /// The peer's admin API (`https://host:port`).
    pub endpoint: String,
    pub token: String,
    /// This cluster's admin API as the peer reaches it.
    pub own_endpoint: String,
    /// The peer's gateways as this cluster reaches them (`host:port`), if
    /// not the addresses the peer's gateways advertise (NAT, a WAN proxy).
    #[serde(default)]
    pub peer_gateways: Vec<String>,
}

/// `POST /v1/peers/accept` (open; the token is the credential): what the
/// linking cluster sends the cluster that added it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AcceptPeerRequest {
    /// The linking cluster's name (as the token was minted for).
    pub name: String,
    pub token: String,
    pub ca_pem: String,
    /// The linking cluster's admin API.
    pub endpoint: String,
    /// The linking cluster's gateways (`host:port`).
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// The answer to an accept: the accepting cluster's name and CA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AcceptPeerResponse {
    pub name: String,
    pub ca_pem: String,
    /// The accepting cluster's gateways (`host:port`).
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// `GET /v1/peers`: a peer as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PeerView {
    pub name: String,
    pub state: PeerState,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub linked_unix_ms: Option<u64>,
    /// BLAKE3 of the peer's CA certificate (DER), once linked.
    #[serde(default)]
    pub ca_hash: Option<String>,
    /// The peer's gateways, where shippers send DR batches.
    #[serde(default)]
    pub gateways: Vec<String>,
}

/// `GET /v1/ca` (open): this cluster's CA certificate, what a linking peer
/// fetches before checking it against the hash in its token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CaCertificate {
    pub ca_pem: String,
}

/// A token's two parts: the secret and the CA hash.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let (secret, hash) = token.trim().rsplit_once('.')?;
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then_some((secret, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_into_secret_and_ca_hash() {
        let hash = "ab".repeat(32);
        assert_eq!(
            split_token(&format!("s3cret.{hash}")),
            Some(("s3cret", hash.as_str()))
        );
        assert_eq!(split_token("no-hash"), None);
        assert_eq!(split_token(&format!(".{hash}")), None);
        assert_eq!(split_token("s.short"), None);
    }
}
