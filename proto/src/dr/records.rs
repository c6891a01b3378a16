//! A volume's DR link as each side records it, its live status, and the
//! admin API's shapes for `tether dr`.

use serde::{Deserialize, Serialize};

use super::DrRole;

/// One side of a volume's DR link. Key: `dr-links/{volume}` (the same
/// volume name on both sides). The primary's registry writes it at
/// `tether dr link`; the secondary's gateway writes its own when the first
/// batch stream creates the secondary; role changes (promote, fence,
/// failback) are compare-and-swaps on it by whichever side learns of them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrLinkRecord {
    pub volume: String,
    pub peer: String,
    pub role: DrRole,
    /// Raised by every promote; a side that learns of a newer one than its
    /// own stops serving (`rules::on_newer_generation`).
    pub generation: u64,
    pub rpo_secs: u64,
    /// Copies of the secondary in the peer (its own placement).
    pub replicas: u32,
    /// The secondary's staging journal (a volume of its own cluster).
    #[serde(default)]
    pub journal_volume: Option<String>,
    /// Secondary: a planned promote asked for; the primary drains, ships a
    /// final point and hands over when it sees this in an answer.
    #[serde(default)]
    pub handover_requested: bool,
    /// Failback asked for on this (fenced) side: it takes batches again.
    #[serde(default)]
    pub failback_requested: bool,
    /// Secondary: a forced promote asked for; a gateway of this side
    /// finishes any committed batch, then makes it primary.
    #[serde(default)]
    pub force_requested: bool,
    pub created_unix_ms: u64,
}

/// How far a link is, as the side doing the work writes it: the primary's
/// shipper at `dr-status/{volume}`, the secondary's receiver at
/// `dr-received/{volume}` (its counts are what it took).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DrStatusRecord {
    /// The DR generation these counts are of.
    #[serde(default)]
    pub generation: u64,
    /// `connecting`, `comparing`, `shipping`, `idle`, `down`, `fenced`,
    /// `receiving`.
    pub link_state: String,
    /// The last point the secondary acknowledged (primary) or applied
    /// (secondary); 0: none yet (the seed has not finished).
    pub last_point: u64,
    /// When that point was cut, on the primary's clock.
    pub last_point_unix_ms: u64,
    /// Bytes written on the primary since that point (chunks × chunk size).
    pub lag_bytes: u64,
    /// Seconds the secondary is behind (0 when nothing is waiting), as of
    /// `updated_unix_ms`.
    pub lag_seconds: f64,
    /// Behind since (the last point's cut, when writes came after it):
    /// readers compute the lag as of now from it.
    #[serde(default)]
    pub behind_since_unix_ms: Option<u64>,
    pub batches: u64,
    pub chunks_compared: u64,
    pub extents_shipped: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
    pub bytes_per_sec: u64,
    /// Secondary: a committed batch is being applied from the journal.
    #[serde(default)]
    pub applying: bool,
    #[serde(default)]
    pub error: Option<String>,
    pub updated_unix_ms: u64,
}

impl DrStatusRecord {
    /// How far behind the secondary is at `now` (unix ms): from when it
    /// fell behind, or as last written.
    pub fn lag_at(&self, now: u64) -> f64 {
        match self.behind_since_unix_ms {
            Some(since) => now.saturating_sub(since) as f64 / 1000.0,
            None => self.lag_seconds,
        }
    }
}

/// `POST /v1/dr/links` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DrLinkRequest {
    pub volume: String,
    /// The peer cluster (paired with `tether cluster link`).
    pub to: String,
    #[serde(default = "default_rpo_secs")]
    pub rpo_secs: u64,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

pub fn default_rpo_secs() -> u64 {
    30
}

pub fn default_replicas() -> u32 {
    1
}

/// `POST /v1/dr/links/{volume}/promote` (admin, on the secondary's side).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DrPromoteRequest {
    /// Promote at the last consistent point without the primary.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/dr/secondaries` (a gateway of the secondary's cluster, when a
/// peer's first batch stream for the volume arrives): create the secondary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DrSecondaryRequest {
    pub volume: String,
    pub peer: String,
    pub size_bytes: u64,
    pub replicas: u32,
    pub rpo_secs: u64,
    pub generation: u64,
    /// The primary's chunk size (the secondary's engine uses its own; the
    /// journal is laid out in the primary's).
    pub chunk_size: u32,
    /// The primary's encryption (the data key wrapped by the user's key):
    /// the secondary holds the same ciphertext and opens with the same key.
    #[serde(default)]
    pub encryption: Option<crate::admin::EncryptionSpec>,
}

/// A link as `tether dr status` and `dr list` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DrLinkView {
    pub volume: String,
    pub peer: String,
    /// `primary`, `secondary` or `fenced`.
    pub role: String,
    pub generation: u64,
    pub rpo_secs: u64,
    pub rpo_met: bool,
    pub link_state: String,
    pub last_point: u64,
    pub last_point_unix_ms: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub batches: u64,
    pub chunks_compared: u64,
    pub extents_shipped: u64,
    pub bytes_raw: u64,
    pub bytes_wire: u64,
    pub bytes_per_sec: u64,
    /// Raw bytes over wire bytes (1.0 when nothing shrank).
    pub compression_ratio: f64,
    pub applying: bool,
    pub handover_requested: bool,
    pub failback_requested: bool,
    #[serde(default)]
    pub error: Option<String>,
    pub updated_unix_ms: u64,
    /// What this side's receiver took (chunks, bytes, batches), when it is
    /// or was a secondary: after a failback, what came back.
    #[serde(default)]
    pub received: Option<DrStatusRecord>,
}

impl DrLinkView {
    /// `shipped`: the shipper's status; `received`: the receiver's. A
    /// secondary shows what it received, a primary what it shipped; the
    /// lag is as of `now_unix_ms`.
    pub fn new(
        link: &DrLinkRecord,
        shipped: Option<&DrStatusRecord>,
        received: Option<&DrStatusRecord>,
        now_unix_ms: u64,
    ) -> Self {
        let status = match link.role {
            DrRole::Secondary => received.or(shipped),
            _ => shipped,
        }
        .cloned()
        .unwrap_or_default();
        let lag_seconds = status.lag_at(now_unix_ms);
        let role = match link.role {
            DrRole::Primary => "primary",
            DrRole::Secondary => "secondary",
            DrRole::Fenced => "fenced",
        };
        Self {
            volume: link.volume.clone(),
            peer: link.peer.clone(),
            role: role.into(),
            generation: link.generation,
            rpo_secs: link.rpo_secs,
            rpo_met: status.last_point > 0 && lag_seconds <= link.rpo_secs as f64,
            link_state: status.link_state.clone(),
            last_point: status.last_point,
            last_point_unix_ms: status.last_point_unix_ms,
            lag_bytes: status.lag_bytes,
            lag_seconds,
            batches: status.batches,
            chunks_compared: status.chunks_compared,
            extents_shipped: status.extents_shipped,
            bytes_raw: status.bytes_raw,
            bytes_wire: status.bytes_wire,
            bytes_per_sec: status.bytes_per_sec,
            compression_ratio: if status.bytes_wire == 0 {
                1.0
            } else {
                status.bytes_raw as f64 / status.bytes_wire as f64
            },
            applying: status.applying,
            handover_requested: link.handover_requested,
            failback_requested: link.failback_requested,
            error: status.error.clone(),
            updated_unix_ms: status.updated_unix_ms,
            received: received.cloned(),
        }
    }
}

/// The journal volume of secondary `volume`.
pub fn journal_volume_name(volume: &str) -> String {
    format!("{volume}-drj")
}

/// A gateway of a cluster, as it registers itself (key `gateways/{name}`,
/// leased): where DR peers' shippers reach this cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GatewayRecord {
    pub name: String,
    /// `host:port` (UDP).
    pub endpoint: String,
}
