//! A live copy of a cluster's keys: volume specs, group records, master
//! locks, node registrations, the federation's satellites and grants, and
//! DR peers, DR links and gateways.
//! One list-then-watch per node (or gateway) feeds every volume's
//! controller and presenter (or every session), so the store's load grows
//! with processes, not with volumes.
//!
//! Only changes to what the mirror holds wake its subscribers: a status or
//! presenting record (written by every busy volume's master every couple of
//! seconds) wakes nobody, or every write would wake every node's loops and
//! each wake-up would write again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use coord_store::{CoordStore, KeyValue, WatchEvent};
use tether_proto::admin::{NodeRecord, VerifyRequestRecord, VolumeSpec};
use tether_proto::dr::{DrLinkRecord, GatewayRecord, PeerRecord};
use tether_proto::federation::{ClusterRecord, GrantRecord};
use tether_proto::group::GroupRecord;
use tether_proto::keys::{ClusterKeys, Kind};
use tokio::sync::watch;

/// A lock key: which node holds it, under which lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub node: String,
    pub lease: i64,
}

#[derive(Default)]
struct State {
    specs: HashMap<String, VolumeSpec>,
    /// Group record and its mod revision (the CAS token).
    groups: HashMap<String, (GroupRecord, i64)>,
    locks: HashMap<String, LockHolder>,
    nodes: HashMap<String, NodeRecord>,
    /// Verifications asked for, by volume.
    verifies: HashMap<String, VerifyRequestRecord>,
    /// Satellites, by name.
    clusters: HashMap<String, ClusterRecord>,
    /// Grants, by `satellite/id`.
    grants: HashMap<String, GrantRecord>,
    /// DR peers, by name.
    peers: HashMap<String, PeerRecord>,
    /// DR links by volume, and their mod revisions (the CAS token).
    dr_links: HashMap<String, (DrLinkRecord, i64)>,
    /// This cluster's gateways, by name.
    gateways: HashMap<String, GatewayRecord>,
}

pub struct Mirror {
    keys: ClusterKeys,
    state: RwLock<State>,
    /// The store revision last applied; bumps wake the watchers.
    revision: watch::Sender<i64>,
}

impl Mirror {
    pub fn new(cluster: &str) -> Arc<Self> {
        Arc::new(Self {
            keys: ClusterKeys::new(cluster),
            state: RwLock::new(State::default()),
            revision: watch::channel(0).0,
        })
    }

    /// The store revision last applied (changes with every event).
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Wakes on every change the mirror applies.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    pub fn spec(&self, volume: &str) -> Option<VolumeSpec> {
        self.state.read().unwrap().specs.get(volume).cloned()
    }

    pub fn group(&self, volume: &str) -> Option<(GroupRecord, i64)> {
        self.state.read().unwrap().groups.get(volume).cloned()
    }

    pub fn lock(&self, volume: &str) -> Option<LockHolder> {
        self.state.read().unwrap().locks.get(volume).cloned()
    }

    pub fn node(&self, node: &str) -> Option<NodeRecord> {
        self.state.read().unwrap().nodes.get(node).cloned()
    }

    /// The verification last asked for on `volume`.
    pub fn verify_request(&self, volume: &str) -> Option<VerifyRequestRecord> {
        self.state.read().unwrap().verifies.get(volume).cloned()
    }

    /// Satellite `name`'s record.
    pub fn satellite(&self, name: &str) -> Option<ClusterRecord> {
        self.state.read().unwrap().clusters.get(name).cloned()
    }

    /// Every grant of satellite `name`.
    pub fn grants(&self, satellite: &str) -> Vec<GrantRecord> {
        self.state
            .read()
            .unwrap()
            .grants
            .values()
            .filter(|grant| grant.satellite == satellite)
            .cloned()
            .collect()
    }

    /// Every DR peer record.
    /// The DR link of `volume` and its mod revision.
    pub fn dr_link(&self, volume: &str) -> Option<(DrLinkRecord, i64)> {
        self.state.read().unwrap().dr_links.get(volume).cloned()
    }

    pub fn dr_links(&self) -> Vec<DrLinkRecord> {
        let state = self.state.read().unwrap();
        let mut links: Vec<DrLinkRecord> = state
            .dr_links
            .values()
            .map(|(link, _)| link.clone())
            .collect();
        links.sort_by(|a, b| a.volume.cmp(&b.volume));
        links
    }

    /// This cluster's gateways' endpoints, sorted.
    pub fn gateway_endpoints(&self) -> Vec<String> {
        let mut endpoints: Vec<String> = self
            .state
            .read()
            .unwrap()
            .gateways
            .values()
            .map(|gateway| gateway.endpoint.clone())
            .collect();
        endpoints.sort();
        endpoints
    }

    pub fn peers(&self) -> Vec<PeerRecord> {
        self.state.read().unwrap().peers.values().cloned().collect()
    }

    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.state.read().unwrap().nodes.values().cloned().collect()
    }

    /// Lists, then follows changes; lists again whenever the watch breaks.
    pub async fn run(self: Arc<Self>, store: Arc<dyn CoordStore>) {
        loop {
            let (kvs, revision) = match store.get_prefix(self.keys.prefix()).await {
                Ok(listing) => listing,
                Err(err) => {
                    tracing::warn!(error = %err, "listing the cluster's keys failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            {
                let mut state = self.state.write().unwrap();
                *state = State::default();
                for kv in &kvs {
                    apply_put(&self.keys, &mut state, kv);
                }
            }
            self.revision.send_replace(revision);
            let mut events = match store.watch_prefix(self.keys.prefix(), revision + 1).await {
                Ok(events) => events,
                Err(err) => {
                    tracing::warn!(error = %err, "watching the cluster's keys failed; re-listing");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            while let Some(event) = events.recv().await {
                let event = match event {
                    Ok(event) => event,
                    Err(err) => {
                        tracing::warn!(error = %err, "cluster watch broke; re-listing");
                        break;
                    }
                };
                let revision = event.mod_revision();
                let held = {
                    let mut state = self.state.write().unwrap();
                    match &event {
                        WatchEvent::Put(kv) => apply_put(&self.keys, &mut state, kv),
                        WatchEvent::Delete { key, .. } => apply_delete(&self.keys, &mut state, key),
                    }
                };
                if held {
                    self.revision.send_replace(revision);
                }
            }
        }
    }
}

/// Applies a put; false if the key is not one the mirror holds.
fn apply_put(keys: &ClusterKeys, state: &mut State, kv: &KeyValue) -> bool {
    let Some((kind, name)) = keys.parse(&kv.key) else {
        return false;
    };
    match kind {
        Kind::Volumes => {
            if let Ok(spec) = serde_json::from_slice::<VolumeSpec>(&kv.value) {
                state.specs.insert(name.to_string(), spec);
            }
        }
        Kind::Groups => {
            if let Ok(group) = serde_json::from_slice::<GroupRecord>(&kv.value) {
                state
                    .groups
                    .insert(name.to_string(), (group, kv.mod_revision));
            }
        }
        Kind::Locks => {
            let node = String::from_utf8_lossy(&kv.value).into_owned();
            let lease = kv.lease.unwrap_or(0);
            state
                .locks
                .insert(name.to_string(), LockHolder { node, lease });
        }
        Kind::Nodes => {
            if let Ok(node) = serde_json::from_slice::<NodeRecord>(&kv.value) {
                state.nodes.insert(name.to_string(), node);
            }
        }
        Kind::Verify => {
            if let Ok(request) = serde_json::from_slice::<VerifyRequestRecord>(&kv.value) {
                state.verifies.insert(name.to_string(), request);
            }
        }
        Kind::Clusters => {
            if let Ok(record) = serde_json::from_slice::<ClusterRecord>(&kv.value) {
                state.clusters.insert(name.to_string(), record);
            }
        }
        Kind::Grants => {
            if let Ok(grant) = serde_json::from_slice::<GrantRecord>(&kv.value) {
                state.grants.insert(name.to_string(), grant);
            }
        }
        Kind::Peers => {
            if let Ok(peer) = serde_json::from_slice::<PeerRecord>(&kv.value) {
                state.peers.insert(name.to_string(), peer);
            }
        }
        Kind::DrLinks => {
            if let Ok(link) = serde_json::from_slice::<DrLinkRecord>(&kv.value) {
                state
                    .dr_links
                    .insert(name.to_string(), (link, kv.mod_revision));
            }
        }
        Kind::Gateways => {
            if let Ok(gateway) = serde_json::from_slice::<GatewayRecord>(&kv.value) {
                state.gateways.insert(name.to_string(), gateway);
            }
        }
        _ => return false,
    }
    true
}

/// Applies a delete; false if the key is not one the mirror holds.
fn apply_delete(keys: &ClusterKeys, state: &mut State, key: &str) -> bool {
    let Some((kind, name)) = keys.parse(key) else {
        return false;
    };
    match kind {
        Kind::Volumes => {
            state.specs.remove(name);
        }
        Kind::Groups => {
            state.groups.remove(name);
        }
        Kind::Locks => {
            state.locks.remove(name);
        }
        Kind::Nodes => {
            state.nodes.remove(name);
        }
        Kind::Verify => {
            state.verifies.remove(name);
        }
        Kind::Clusters => {
            state.clusters.remove(name);
        }
        Kind::Grants => {
            state.grants.remove(name);
        }
        Kind::Peers => {
            state.peers.remove(name);
        }
        Kind::DrLinks => {
            state.dr_links.remove(name);
        }
        Kind::Gateways => {
            state.gateways.remove(name);
        }
        _ => return false,
    }
    true
}
