//! The resources operators declare in Kubernetes, as Rust types: their
//! CRDs are generated from these (`tether-operator crds`, written into the
//! central chart's `crds/` and kept current by a test).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A satellite cluster of the federation: the operator adds it (its join
/// token goes into the Secret `status.tokenSecret` names, for the
/// satellite's chart) and removes it when the resource is deleted (its
/// certificate is then refused everywhere; the name is never issued again).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tether.io",
    version = "v1alpha1",
    kind = "SatelliteCluster",
    doc = "A satellite cluster of the Tether federation, added to the central registry.",
    namespaced,
    status = "SatelliteClusterStatus",
    shortname = "tsat",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Token","type":"string","jsonPath":".status.tokenSecret"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SatelliteClusterSpec {
    /// The satellite's name in the federation (default: this resource's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satellite_name: Option<String>,
    /// How long its join token lives, in seconds (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ttl_seconds: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SatelliteClusterStatus {
    /// pending (its token not used yet), joined, or revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The Secret (same namespace) holding the join token, key `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_unix_ms: Option<u64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// What a satellite may reach: one volume (`volume`, optionally read-only),
/// or the volumes whose names start with `prefix` within a quota.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tether.io",
    version = "v1alpha1",
    kind = "VolumeGrant",
    doc = "What a satellite may reach: one volume, or a name prefix within a quota.",
    namespaced,
    status = "VolumeGrantStatus",
    shortname = "tgrant",
    printcolumn = r#"{"name":"Satellite","type":"string","jsonPath":".spec.satellite"}"#,
    printcolumn = r#"{"name":"Grant","type":"string","jsonPath":".status.grantId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGrantSpec {
    pub satellite: String,
    /// One existing volume ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default)]
    pub read_only: bool,
    /// ... or a name prefix, with `capacity` and `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Total size of the prefix's volumes, e.g. `100Gi` or `500GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Most volumes under the prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGrantStatus {
    /// `volume:NAME` or `prefix:P`: the grant in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A volume replicated to a paired cluster (`tether cluster link` first):
/// the operator links it and reports the link's role, lag and RPO.
/// Deleting the resource stops the reporting; the link itself stays (a
/// promote or failback is an operator's decision, made with `tether dr`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "tether.io",
    version = "v1alpha1",
    kind = "DrLink",
    doc = "A volume replicated to a paired cluster for disaster recovery.",
    namespaced,
    status = "DrLinkStatus",
    shortname = "tdr",
    printcolumn = r#"{"name":"Volume","type":"string","jsonPath":".spec.volume"}"#,
    printcolumn = r#"{"name":"To","type":"string","jsonPath":".spec.to"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".status.role"}"#,
    printcolumn = r#"{"name":"Lag","type":"number","jsonPath":".status.lagSeconds"}"#,
    printcolumn = r#"{"name":"RPO met","type":"boolean","jsonPath":".status.rpoMet"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DrLinkSpec {
    pub volume: String,
    /// The paired cluster.
    pub to: String,
    /// The recovery point objective, seconds (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<u64>,
    /// Copies of the secondary in the peer (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrLinkStatus {
    /// primary or secondary, on this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_point: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_met: Option<bool>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Every CRD, as the YAML documents `kubectl apply` and Helm's `crds/` take.
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::from(
        "# Generated by `tether-operator crds` from operator/src/crd.rs: do not edit.\n",
    );
    for crd in [SatelliteCluster::crd(), VolumeGrant::crd(), DrLink::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("a CRD serializes"));
    }
    out
}
