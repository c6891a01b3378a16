//! Federation records and API shapes: the clusters a central cluster knows
//! (itself and its satellites), and the grants that say which volumes a
//! satellite may reach. Stored under `clusters/{name}` and
//! `grants/{satellite}/{grant id}` (see [`crate::keys`]).
//!
//! As in [`crate::admin`], field names are a contract: add, never rename.

use serde::{Deserialize, Serialize};

/// What a cluster is to this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterRole {
    Central,
    Satellite,
}

/// Where a satellite stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterState {
    /// Added; its join token not used yet.
    Pending,
    /// Joined: holds a certificate.
    Joined,
    /// Removed: every session and call of it is refused, whatever its
    /// certificate says. The name is never issued again.
    Revoked,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Pending => "pending",
            ClusterState::Joined => "joined",
            ClusterState::Revoked => "revoked",
        }
    }
}

/// `clusters/{name}`: a satellite of this central cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ClusterRecord {
    pub name: String,
    pub role: ClusterRole,
    pub state: ClusterState,
    pub added_unix_ms: u64,
    #[serde(default)]
    pub joined_unix_ms: Option<u64>,
    /// When its newest certificate expires.
    #[serde(default)]
    pub certificate_not_after_unix_ms: Option<u64>,
    /// Last authenticated call or session (updated at most every
    /// [`LAST_SEEN_EVERY_MS`], so a busy satellite costs the store little).
    #[serde(default)]
    pub last_seen_unix_ms: Option<u64>,
    #[serde(default)]
    pub revoked_unix_ms: Option<u64>,
    /// While pending: the BLAKE3 hash (hex) of its newest join token. Adding
    /// a pending satellite again mints a new token and supersedes the old
    /// one, which then joins nothing (it may be the one that leaked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token_hash: Option<String>,
}

/// How stale `last_seen_unix_ms` may get before a call refreshes it.
pub const LAST_SEEN_EVERY_MS: u64 = 30_000;

/// `GET /v1/clusters`: this cluster first, then its satellites.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ClusterView {
    pub name: String,
    /// "central" or "satellite".
    pub role: String,
    /// Storage nodes up (0 for satellites: they run none).
    pub nodes_up: usize,
    /// "up" for this cluster; a satellite's [`ClusterState`].
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub last_seen_unix_ms: Option<u64>,
    #[serde(default)]
    pub certificate_not_after_unix_ms: Option<u64>,
}

/// `POST /v1/clusters` (admin): add a satellite; answers its join token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AddSatelliteRequest {
    pub name: String,
    /// Seconds the join token lives (default one hour).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AddSatelliteResponse {
    pub name: String,
    /// Shown once: the store keeps only its hash.
    pub token: String,
    pub expires_unix_ms: u64,
}

/// `POST /v1/satellites/join` (no certificate: the token is the credential).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SatelliteJoinRequest {
    pub name: String,
    pub token: String,
    /// PEM CSR for a key the satellite made and keeps.
    pub csr_pem: String,
}

/// What a grant lets a satellite reach.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum GrantScope {
    /// One existing volume: open and attach it (read-only if so marked).
    Volume { volume: String, read_only: bool },
    /// Volumes whose names start with `prefix`: create, resize, attach and
    /// delete them, within a quota.
    Prefix {
        prefix: String,
        capacity_bytes: u64,
        count: u32,
    },
}

impl GrantScope {
    /// The grant's id under its satellite: one grant per volume or prefix.
    pub fn id(&self) -> String {
        match self {
            GrantScope::Volume { volume, .. } => format!("volume:{volume}"),
            GrantScope::Prefix { prefix, .. } => format!("prefix:{prefix}"),
        }
    }

    /// Whether the grant covers the volume named `volume`.
    pub fn covers(&self, volume: &str) -> bool {
        match self {
            GrantScope::Volume {
                volume: granted, ..
            } => granted == volume,
            GrantScope::Prefix { prefix, .. } => volume.starts_with(prefix.as_str()),
        }
    }

    /// Whether writes are allowed through this grant.
    pub fn writable(&self) -> bool {
        !matches!(
            self,
            GrantScope::Volume {
                read_only: true,
                ..
            }
        )
    }

    /// How people name it in errors: "grant volume:db" / "grant prefix:ci-".
    pub fn describe(&self) -> String {
        format!("grant {}", self.id())
    }
}

/// `grants/{satellite}/{id}`, and one row of `GET /v1/grants`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct GrantRecord {
    pub satellite: String,
    #[serde(flatten)]
    pub scope: GrantScope,
    pub created_unix_ms: u64,
}

/// `POST /v1/grants` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AddGrantRequest {
    pub satellite: String,
    #[serde(flatten)]
    pub scope: GrantScope,
}

/// A prefix grant's use, as `GET /v1/grants` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct GrantView {
    #[serde(flatten)]
    pub grant: GrantRecord,
    /// Volumes under the prefix now, and the bytes they provision.
    #[serde(default)]
    pub used_count: Option<u32>,
    #[serde(default)]
    pub used_bytes: Option<u64>,
}

/// One volume a satellite presents, as `GET /v1/satellites/{name}/attachments` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SatelliteAttachment {
    pub volume: String,
    /// Where the satellite serves it (`unix:PATH`, `tcp:…`, `tls:…`).
    pub endpoint: String,
    /// An encrypted volume's data key (hex), for this satellite only: it
    /// encrypts and decrypts; gateways and central nodes see ciphertext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
}

/// The endpoint scheme of a volume staged by a satellite's CSI node plugin
/// (`csi:NODE`): the plugin serves it itself, so the satellite daemon does
/// not, and the attachment records which node holds it (a volume is staged
/// on one node at a time, and is not deleted while staged).
pub const CSI_STAGING_SCHEME: &str = "csi:";

/// The attachment endpoint of a volume staged on CSI node `node`.
pub fn csi_staging_endpoint(node: &str) -> String {
    format!("{CSI_STAGING_SCHEME}{node}")
}

/// The CSI node an endpoint names, if it is a CSI staging.
pub fn csi_staging_node(endpoint: &str) -> Option<&str> {
    endpoint.strip_prefix(CSI_STAGING_SCHEME)
}

/// What a satellite should present now. `version` changes whenever the set
/// does; asking with the version one has waits (up to ~25 s) for a change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SatelliteAttachments {
    pub version: String,
    pub attachments: Vec<SatelliteAttachment>,
}

/// `POST /v1/satellites/{name}/presenting`: what the satellite serves, per volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SatellitePresenting {
    pub volumes: Vec<(String, crate::admin::PresentingStatus)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_scopes_cover_what_they_name() {
        let volume = GrantScope::Volume {
            volume: "db".into(),
            read_only: true,
        };
        assert!(volume.covers("db") && !volume.covers("db2") && !volume.writable());
        let prefix = GrantScope::Prefix {
            prefix: "ci-".into(),
            capacity_bytes: 1 << 30,
            count: 2,
        };
        assert!(prefix.covers("ci-1") && !prefix.covers("c") && prefix.writable());
        assert_eq!(prefix.id(), "prefix:ci-");
        let record = GrantRecord {
            satellite: "edge".into(),
            scope: volume,
            created_unix_ms: 1,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["kind"], "volume");
        assert_eq!(json["volume"], "db");
        assert_eq!(serde_json::from_value::<GrantRecord>(json).unwrap(), record);
    }
}
