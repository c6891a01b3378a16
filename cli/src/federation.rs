//! `federation.json`: what `tether dev up` started, so `tether` finds the
//! admin API and `tether dev down` / a second `dev up` find the processes.
//! The names here are a contract for scripts (see DESIGN.md); add, never rename.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Federation {
    /// Admin API base URL.
    pub admin: String,
    /// "etcd" (one process per node, a local etcd) or "embedded" (one process, embedded store).
    pub mode: String,
    pub clusters: Vec<ClusterEntry>,
    pub satellites: Vec<SatelliteEntry>,
    /// DR peer clusters `dev up --dr` runs beside this one, each a dev
    /// federation of its own in `dir` (`tether --dir DIR/dr …` drives it).
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerEntry {
    pub name: String,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterEntry {
    pub name: String,
    pub role: String,
    pub etcd: Option<EtcdEntry>,
    pub registry: ProcessEntry,
    pub nodes: Vec<NodeEntry>,
    /// The first gateway (DESIGN's shape); every one is in `gateways`.
    pub gateway: Option<GatewayEntry>,
    #[serde(default)]
    pub gateways: Vec<GatewayEntry>,
    /// The cluster's hosts in network namespaces of their own (`dev up --netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkEntry>,
}

/// The bridge `dev up --netns` joins a cluster's hosts on: its address
/// (`address`, in the root namespace) is where etcd, the registry and the
/// gateways listen; each node and satellite is a host of `10.88.INDEX.0/24`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkEntry {
    pub bridge: String,
    pub index: u8,
    pub address: String,
}

/// A host of a [`NetworkEntry`]: a network namespace with one address on the bridge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostEntry {
    /// Its name for `ip netns exec`.
    pub netns: String,
    pub address: String,
}

/// The local etcd: `endpoints` of every member; `pid`, ports, `data_dir`
/// and `log` are the first member's (a one-member cluster has only that).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdEntry {
    pub endpoints: Vec<String>,
    pub pid: u32,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Every member (absent in files of one-member clusters from before).
    #[serde(default)]
    pub members: Vec<EtcdMemberEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdMemberEntry {
    pub name: String,
    pub endpoint: String,
    pub pid: u32,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl EtcdEntry {
    /// How to start the same members again.
    pub fn member_specs(&self) -> Vec<coord_store::etcd_process::EtcdMemberSpec> {
        if self.members.is_empty() {
            return vec![coord_store::etcd_process::EtcdMemberSpec {
                name: "tether".into(),
                data_dir: self.data_dir.clone(),
                log_path: self.log.clone(),
                client_port: self.client_port,
                peer_port: self.peer_port,
                host: endpoint_host(&self.endpoints[0]),
            }];
        }
        self.members
            .iter()
            .map(|member| coord_store::etcd_process::EtcdMemberSpec {
                name: member.name.clone(),
                data_dir: member.data_dir.clone(),
                log_path: member.log.clone(),
                client_port: member.client_port,
                peer_port: member.peer_port,
                host: endpoint_host(&member.endpoint),
            })
            .collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        if self.members.is_empty() {
            vec![self.pid]
        } else {
            self.members.iter().map(|member| member.pid).collect()
        }
    }
}

/// The host of an etcd endpoint (`https://HOST:PORT`).
fn endpoint_host(endpoint: &str) -> String {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    rest.rsplit_once(':')
        .map_or(rest, |(host, _)| host)
        .to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessEntry {
    pub pid: u32,
    pub log: PathBuf,
    pub listen: String,
    /// Prometheus metrics address.
    #[serde(default)]
    pub metrics: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    pub name: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub metrics: String,
    /// Its network namespace (`dev up --netns`); restart it in there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayEntry {
    /// `host:port` (UDP: QUIC) satellites dial.
    pub endpoint: String,
    pub pid: u32,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub log: PathBuf,
    #[serde(default)]
    pub metrics: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SatelliteEntry {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    /// Its CSI identity and controller services (a Unix socket).
    #[serde(default)]
    pub csi_socket: Option<PathBuf>,
    /// Its network namespace (`dev up --netns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostEntry>,
}

impl Federation {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("federation.json")
    }

    pub fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is unreadable", path.display())
                })?))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn store(&self, dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Every process of the federation, gateways and nodes first (they stop
    /// before what they depend on).
    pub fn pids_in_stop_order(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .satellites
            .iter()
            .map(|satellite| satellite.pid)
            .collect();
        for cluster in &self.clusters {
            pids.extend(cluster.gateways.iter().map(|gateway| gateway.pid));
        }
        for cluster in &self.clusters {
            pids.extend(cluster.nodes.iter().map(|node| node.pid));
        }
        for cluster in &self.clusters {
            pids.push(cluster.registry.pid);
        }
        for cluster in &self.clusters {
            pids.extend(cluster.etcd.iter().flat_map(EtcdEntry::pids));
        }
        let mut seen = std::collections::HashSet::new();
        pids.retain(|pid| seen.insert(*pid));
        pids
    }
}
