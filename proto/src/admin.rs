//! The federation admin API's JSON shapes (served by cluster-registry, used
//! by the `tether` CLI and scripts), and the records the control plane keeps
//! in the coordination store.
//!
//! Field names here are a contract: `tether volume get NAME -o json` prints
//! [`VolumeView`] as is. Add fields; never rename.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Volume names the admin API accepts: 1–63 of `[a-z0-9._-]`, starting with a
/// letter or digit (safe as a directory name and in an NBD URI).
pub fn valid_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// `GET /v1/nodes`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NodeView {
    pub name: String,
    pub cluster: String,
    /// "up" while the node's lease is alive.
    pub state: String,
    pub capacity_bytes: u64,
    /// What volumes may be promised here (capacity × over-provisioning).
    #[serde(default)]
    pub provisionable_bytes: u64,
    pub provisioned_bytes: u64,
    /// Bytes written to the copies here, as their masters report them.
    #[serde(default)]
    pub allocated_bytes: u64,
    pub volumes: usize,
    pub io_backend: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the node takes block frames (replication, Delta Sync, presenting).
    #[serde(default)]
    pub block_addr: Option<String>,
    /// Where the node serves its control RPCs (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_addr: Option<String>,
    /// Copies the node could not open at start (volume: why); kept, not served.
    #[serde(default)]
    pub quarantined: BTreeMap<String, String>,
}

/// One copy of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CopyView {
    pub node: String,
    /// "master" | "replica"
    pub role: String,
    /// "in-sync" | "syncing" | "faulted"
    pub state: String,
}

/// Where a volume is presented over NBD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AttachmentView {
    pub uri: String,
    /// The cluster the consumer attached from (this cluster for local attaches).
    pub from: String,
    /// The node that presents it (serves the NBD endpoint).
    #[serde(default)]
    pub node: String,
}

/// `GET /v1/volumes/{name}`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct VolumeView {
    pub name: String,
    /// "healthy" (every copy in sync), "degraded" (the master serves, some
    /// copy does not), "unavailable" (no master serves).
    #[serde(default)]
    pub state: String,
    /// What the nodes could not do for this volume (its master's copy, its
    /// presenting nodes), one line each.
    #[serde(default)]
    pub errors: Vec<String>,
    pub size_bytes: u64,
    pub cluster: String,
    pub epoch: u64,
    pub master: String,
    pub copies: Vec<CopyView>,
    pub attachments: Vec<AttachmentView>,
    pub chunk_size_bytes: u64,
    /// Bytes the volume occupies in its pool (thin provisioning).
    pub allocated_bytes: u64,
    /// Chunks whose hash is being recomputed after writes.
    pub dirty_chunks: u64,
    /// Delta Sync runs bringing copies back in sync, with their progress.
    #[serde(default)]
    pub syncs: Vec<SyncProgress>,
    /// Present when the volume is encrypted: the cipher and the wrapped
    /// data key (useless without the user's key), for the CLI to unwrap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
}

/// How a volume is encrypted at rest. Holds no usable key: the data key is
/// wrapped by the user's key, and the check value is one-way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EncryptionSpec {
    /// "xts-aes-256".
    pub cipher: String,
    /// Sector size of the cipher; encrypted I/O is aligned to it.
    pub sector_bytes: u32,
    /// The data key wrapped by the user's key (RFC 3394), hex.
    pub wrapped_key: String,
    /// BLAKE3 derivation of the data key, hex: lets servers refuse a wrong key.
    pub key_check: String,
}

/// Progress of one Delta Sync: the master reconciling one copy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct SyncProgress {
    /// The copy being brought in sync.
    pub node: String,
    /// "comparing" | "copying" | "done"
    pub phase: String,
    pub chunks_total: u64,
    /// Chunks whose hashes were compared (all of them once comparing ends).
    pub chunks_compared: u64,
    /// Chunks found different, to copy.
    pub chunks_differing: u64,
    pub chunks_copied: u64,
    pub bytes_copied: u64,
    /// Remote hashes fetched while comparing (the hash-tree overhead).
    pub hashes_fetched: u64,
    pub bytes_per_sec: u64,
    pub eta_seconds: u64,
    /// When the sync started, in milliseconds since the Unix epoch (tells one run from the next).
    #[serde(default)]
    pub started_unix_ms: u64,
    /// Time since the sync started (its whole duration once done).
    #[serde(default)]
    pub elapsed_ms: u64,
    /// Bytes the master read from its data file for this sync: differing
    /// chunks, and dirty chunks rehashed before comparing.
    #[serde(default)]
    pub source_bytes_read: u64,
}

/// `POST /v1/volumes`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CreateVolumeRequest {
    pub name: String,
    pub size_bytes: u64,
    /// Copies in all, master included.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Node labels every copy's node must carry (`zone=eu-1a`).
    #[serde(default)]
    pub placement: BTreeMap<String, String>,
    /// Encrypt at rest (made by the CLI from the user's key).
    #[serde(default)]
    pub encryption: Option<EncryptionSpec>,
}

fn one() -> u32 {
    1
}

/// `POST /v1/volumes/{name}/resize`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ResizeVolumeRequest {
    pub size_bytes: u64,
}

/// `POST /v1/volumes/{name}/attach`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AttachRequest {
    /// `unix:PATH` or `tcp:HOST:PORT`
    pub nbd: String,
    #[serde(default)]
    pub from: Option<String>,
    /// The node that presents the volume (default: its master when attached).
    #[serde(default)]
    pub node: Option<String>,
    /// An encrypted volume's data key (hex), unwrapped by the CLI with the
    /// user's key; handed to the presenting node only, never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
}

/// Answer to an attach: the NBD URI a client connects to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AttachResponse {
    pub uri: String,
}

/// Every error the admin API returns, as JSON with a non-2xx status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorBody {
    /// One line for a person.
    pub error: String,
    /// Stable, for scripts: "not_found", "already_exists", "invalid", "pool_full", "unavailable", "internal".
    pub code: String,
}

/// The volume spec in the coordination store, written by the registry and
/// acted on by the node named `master`.
///
/// Key: `/tether/v1/{cluster}/volumes/{name}`. Versioned: `version` is
/// [`VolumeSpec::VERSION`]; readers refuse newer versions rather than guess.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct VolumeSpec {
    pub version: u32,
    pub name: String,
    pub size_bytes: u64,
    pub replicas: u32,
    /// The node chosen to be master first; the group record says who is master now.
    pub master: String,
    pub epoch: u64,
    /// NBD endpoints the master must serve the volume on (`unix:PATH`, `tcp:HOST:PORT`).
    pub attachments: Vec<AttachmentSpec>,
    /// The placement constraints the volume was created with; replacements honour them too.
    #[serde(default)]
    pub placement: BTreeMap<String, String>,
    /// The nodes holding a copy, master first (empty in specs from before
    /// volume groups: then the master alone).
    #[serde(default)]
    pub copies: Vec<String>,
    /// Set for volumes encrypted at rest.
    #[serde(default)]
    pub encryption: Option<EncryptionSpec>,
}

impl VolumeSpec {
    pub const VERSION: u32 = 1;

    /// Every node that holds a copy.
    pub fn copy_nodes(&self) -> Vec<String> {
        if self.copies.is_empty() {
            vec![self.master.clone()]
        } else {
            self.copies.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AttachmentSpec {
    pub endpoint: String,
    pub from: String,
    /// The node presenting the volume on `endpoint` (none in specs from
    /// before volume groups: then the master).
    #[serde(default)]
    pub node: Option<String>,
}

impl AttachmentSpec {
    pub fn presenter<'a>(&'a self, spec: &'a VolumeSpec) -> &'a str {
        self.node.as_deref().unwrap_or(&spec.master)
    }
}

/// A node's registration, bound to the node's lease so it vanishes when the
/// node dies. Key: `/tether/v1/{cluster}/nodes/{node}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct NodeRecord {
    pub version: u32,
    pub name: String,
    pub capacity_bytes: u64,
    /// What the volumes placed here may add up to: the capacity times the
    /// node's over-provisioning ratio (0 in records from before: the capacity).
    #[serde(default)]
    pub provisionable_bytes: u64,
    pub io_backend: String,
    pub metrics_addr: Option<String>,
    pub pid: u32,
    /// Operator-given labels (e.g. `zone=eu-1a`): placement constraints and failure domains.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the node takes block frames (replication, Delta Sync, presenters).
    #[serde(default)]
    pub block_addr: Option<String>,
    /// Where the node serves its control RPCs (mutual TLS).
    #[serde(default)]
    pub control_addr: Option<String>,
    /// Copies the node could not open at start, kept as they are for an
    /// operator: volume name, and why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quarantined: BTreeMap<String, String>,
}

impl NodeRecord {
    pub const VERSION: u32 = 1;

    /// What placement may promise on this node.
    pub fn provisioning_limit(&self) -> u64 {
        if self.provisionable_bytes == 0 {
            self.capacity_bytes
        } else {
            self.provisionable_bytes
        }
    }
}

/// What the master node reports about a volume it serves. Key:
/// `/tether/v1/{cluster}/status/{volume}`, bound to the master's lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct VolumeStatus {
    pub version: u32,
    pub node: String,
    /// Size the engine currently serves (catches up with the spec after a resize).
    pub size_bytes: u64,
    pub chunk_size_bytes: u64,
    pub allocated_bytes: u64,
    pub dirty_chunks: u64,
    /// Endpoints now listening, as NBD URIs (kept for readers of version 1;
    /// presenting nodes report in [`PresentingStatus`]).
    pub serving: Vec<ServingEndpoint>,
    /// The last error acting on the spec (e.g. a pool that is full).
    pub errors: Vec<String>,
    /// The epoch the master serves.
    #[serde(default)]
    pub epoch: u64,
    /// Delta Sync runs in progress (or just finished).
    #[serde(default)]
    pub syncs: Vec<SyncProgress>,
    /// The last verification of the copies, once one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
}

/// A request to compare every in-sync copy's hash tree with the master's.
/// Key: `/tether/v1/{cluster}/verify/{volume}`, written by the registry; the
/// master answers in its status (`VolumeStatus::verify`, same `id`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct VerifyRequestRecord {
    pub version: u32,
    pub id: u64,
    /// Copy the differing chunks from the master to the copy.
    pub repair: bool,
}

/// `POST /v1/volumes/{name}/verify`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct VerifyRequest {
    #[serde(default)]
    pub repair: bool,
}

/// What a verification found (the answer of `POST /v1/volumes/{name}/verify`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct VerifyReport {
    pub id: u64,
    pub repair: bool,
    /// "running" | "done" | "failed"
    pub state: String,
    /// The master the copies were compared against, and its epoch.
    pub master: String,
    pub epoch: u64,
    pub copies: Vec<CopyVerification>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct CopyVerification {
    pub node: String,
    pub chunks_compared: u64,
    /// Chunks whose hashes differ from the master's (after settling, seen
    /// differing twice).
    pub chunks_differing: u64,
    /// The first differing chunk indices (at most 100).
    pub differing: Vec<u64>,
    /// Chunks copied from the master (with `repair`).
    pub chunks_repaired: u64,
}

/// What a presenting node reports about the NBD endpoints it serves for one
/// volume. Key: `/tether/v1/{cluster}/presenting/{volume}/{node}`, bound to
/// that node's lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct PresentingStatus {
    pub version: u32,
    pub node: String,
    pub serving: Vec<ServingEndpoint>,
    /// Endpoints that could not be served, with why, one line each (for people).
    pub errors: Vec<String>,
    /// The same, by endpoint: what the registry matches an attach against
    /// (an endpoint is never looked for inside an error's text).
    #[serde(default)]
    pub failures: Vec<EndpointFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EndpointFailure {
    pub endpoint: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ServingEndpoint {
    pub endpoint: String,
    pub uri: String,
}

/// `POST /v1/join`: a new node asks for its certificate. The join token
/// stands in for the client certificate it does not have yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct JoinRequest {
    pub node: String,
    pub token: String,
    /// PEM CSR for a key the node made and keeps.
    pub csr_pem: String,
    /// Host names and IP addresses the certificate should also be valid
    /// for, so NBD clients can verify the node by the address they dial.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// `POST /v1/join-tokens` (admin): a token for a new node (or `uses` of them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
pub struct JoinTokenRequest {
    /// The only name the token may join as (none: any name not in use).
    #[serde(default)]
    pub node: Option<String>,
    /// How long the token lives (default one hour, at most seven days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// How many nodes may join with it (default 1; more for a DaemonSet's
    /// bootstrap token; not with `node`).
    #[serde(default)]
    pub uses: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct JoinTokenResponse {
    /// Shown once; the registry keeps only its hash.
    pub token: String,
    pub node: Option<String>,
    pub expires_unix_ms: u64,
}

/// `POST /v1/renew`: a node (authenticated by its current certificate) asks
/// for a new one, for a new key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RenewRequest {
    pub csr_pem: String,
    /// As in [`JoinRequest::addresses`].
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// Answer to join and renew.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CertificateResponse {
    /// Leaf first, then intermediates.
    pub chain_pem: String,
    /// The CA certificate(s) to trust.
    pub trust_pem: String,
}

/// `PUT /v1/volumes/{name}/key` on a node's control API: the data key of an
/// encrypted volume the node presents, held in memory only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct VolumeKey {
    pub data_key: String,
}
