//! DR peers in the store: adding one (a record and a one-time token that
//! names this cluster's CA by hash), accepting its link, and linking with
//! a peer that added this cluster. Afterwards each side holds the other's
//! CA certificate, to trust for `dr-peer` certificates only.

use std::time::Duration;

use coord_store::{Compare, CoordStore, Txn, TxnOp};
use tether_proto::dr::{AddPeerResponse, PeerRecord, PeerState, PeerView};
use tether_proto::keys::{ClusterKeys, Kind};

use crate::federation::{check_name, now_unix_ms};
use crate::join_tokens::{self, TokenPurpose};
use crate::RegistryError;

fn key(cluster: &str, name: &str) -> String {
    ClusterKeys::new(cluster).key(Kind::Peers, name)
}

/// Peer `name`'s record and its revision, if there is one.
pub async fn record(
    store: &dyn CoordStore,
    cluster: &str,
    name: &str,
) -> Result<Option<(PeerRecord, i64)>, RegistryError> {
    let key = key(cluster, name);
    match store.get(&key).await? {
        Some(kv) => Ok(Some((
            crate::api::decode(&key, &kv.value)?,
            kv.mod_revision,
        ))),
        None => Ok(None),
    }
}

pub async fn list(store: &dyn CoordStore, cluster: &str) -> Result<Vec<PeerView>, RegistryError> {
    let (kvs, _) = store
        .get_prefix(&ClusterKeys::new(cluster).kind_prefix(Kind::Peers))
        .await?;
    let mut views: Vec<PeerView> = kvs
        .iter()
        .map(|kv| crate::api::decode::<PeerRecord>(&kv.key, &kv.value).map(|record| view(&record)))
        .collect::<Result<_, _>>()?;
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(views)
}

pub fn view(record: &PeerRecord) -> PeerView {
    PeerView {
        name: record.name.clone(),
        state: record.state,
        endpoint: record.endpoint.clone(),
        linked_unix_ms: record.linked_unix_ms,
        ca_hash: record
            .ca_pem
            .as_deref()
            .and_then(|pem| tether_tls::ca_hash(pem).ok()),
        gateways: record.gateways.clone(),
    }
}

fn put(key: &str, record: &PeerRecord) -> TxnOp {
    TxnOp::Put {
        key: key.to_string(),
        value: serde_json::to_vec(record).expect("records serialize"),
        lease: None,
    }
}

/// Writes `record` if the key is still at `revision` (0: absent).
async fn write(
    store: &dyn CoordStore,
    cluster: &str,
    record: &PeerRecord,
    revision: i64,
) -> Result<(), RegistryError> {
    let key = key(cluster, &record.name);
    let done = store
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: key.clone(),
                revision,
            }],
            success: vec![put(&key, record)],
            failure: vec![],
        })
        .await?;
    if done.succeeded {
        Ok(())
    } else {
        Err(RegistryError::PeerExists {
            name: record.name.clone(),
            state: "being changed by another call".into(),
        })
    }
}

/// This cluster's gateways as they registered (`gateways/*`), sorted:
/// what a peer's shippers dial.
pub async fn own_gateways(
    store: &dyn CoordStore,
    cluster: &str,
) -> Result<Vec<String>, RegistryError> {
    let prefix = ClusterKeys::new(cluster).kind_prefix(Kind::Gateways);
    let (kvs, _) = store.get_prefix(&prefix).await?;
    let mut endpoints: Vec<String> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<tether_proto::dr::GatewayRecord>(&kv.value).ok())
        .map(|gateway| gateway.endpoint)
        .collect();
    endpoints.sort();
    Ok(endpoints)
}

/// Adds peer `name` (or mints a new token while it has not linked) and
/// returns the token: its secret and the hash of this cluster's CA.
pub async fn add(
    store: &dyn CoordStore,
    cluster: &str,
    own_ca_pem: &str,
    name: &str,
    ttl: Duration,
) -> Result<AddPeerResponse, RegistryError> {
    check_name(name)?;
    if name == cluster {
        return Err(RegistryError::Invalid {
            field: "name",
            reason: format!("{name} is this cluster"),
        });
    }
    match record(store, cluster, name).await? {
        Some((existing, _)) if existing.state == PeerState::Linked => {
            return Err(RegistryError::PeerExists {
                name: name.into(),
                state: "linked".into(),
            })
        }
        Some(_) => {}
        None => {
            let record = PeerRecord {
                name: name.into(),
                state: PeerState::Pending,
                added_unix_ms: now_unix_ms(),
                linked_unix_ms: None,
                endpoint: None,
                ca_pem: None,
                gateways: Vec::new(),
            };
            write(store, cluster, &record, 0).await?;
        }
    }
    let (secret, token) =
        join_tokens::mint_for(store, cluster, TokenPurpose::DrPeer, Some(name), ttl).await?;
    tracing::info!(peer = %name, "DR peer added; link token minted");
    Ok(AddPeerResponse {
        name: name.into(),
        token: format!("{secret}.{}", tether_tls::ca_hash(own_ca_pem)?),
        expires_unix_ms: token.expires_unix_ms,
    })
}

/// Peer `name` (which this cluster added) links with `token`, handing over
/// its CA and admin endpoint: the token is consumed, the peer recorded
/// linked.
pub async fn accept(
    store: &dyn CoordStore,
    cluster: &str,
    own_ca_pem: &str,
    request: &tether_proto::dr::AcceptPeerRequest,
) -> Result<(), RegistryError> {
    let name = &request.name;
    let refused = |reason: String| RegistryError::BadJoinToken {
        node: format!("DR peer {name}"),
        reason,
    };
    let Some((secret, hash)) = tether_proto::dr::split_token(&request.token) else {
        return Err(refused("the token is not SECRET.CAHASH".into()));
    };
    if !hash.eq_ignore_ascii_case(&tether_tls::ca_hash(own_ca_pem)?) {
        return Err(refused("the token names another cluster's CA".into()));
    }
    let ca_hash = tether_tls::ca_hash(&request.ca_pem).map_err(|err| RegistryError::Invalid {
        field: "ca_pem",
        reason: err.to_string(),
    })?;
    let Some((mut record, revision)) = record(store, cluster, name).await? else {
        return Err(refused(format!(
            "{cluster} has not added {name} (`tether cluster add-peer {name}` there)"
        )));
    };
    if record.state == PeerState::Linked {
        return Err(refused("it is linked already".into()));
    }
    join_tokens::redeem_for(store, cluster, TokenPurpose::DrPeer, secret, name, None).await?;
    record.state = PeerState::Linked;
    record.linked_unix_ms = Some(now_unix_ms());
    record.endpoint = Some(request.endpoint.clone());
    record.ca_pem = Some(request.ca_pem.clone());
    record.gateways = request.gateways.clone();
    write(store, cluster, &record, revision).await?;
    tracing::info!(peer = %name, endpoint = %request.endpoint, %ca_hash, "DR peer linked (it linked with us)");
    Ok(())
}

/// Links with peer `name` at the request's endpoint, which added this
/// cluster and gave out its token: fetches its CA (taken only if its hash
/// is the token's), then has it accept this cluster over TLS that trusts
/// that CA.
pub async fn link(
    store: &dyn CoordStore,
    cluster: &str,
    own_ca_pem: &str,
    name: &str,
    request: &tether_proto::dr::LinkPeerRequest,
) -> Result<PeerView, RegistryError> {
    let (own_endpoint, endpoint, token, peer_gateways) = (
        request.own_endpoint.as_str(),
        request.endpoint.as_str(),
        request.token.as_str(),
        &request.peer_gateways,
    );
    check_name(name)?;
    let failed = |reason: String| RegistryError::PeerFailed {
        endpoint: endpoint.to_string(),
        reason,
    };
    let Some((_, hash)) = tether_proto::dr::split_token(token) else {
        return Err(RegistryError::Invalid {
            field: "token",
            reason: "not SECRET.CAHASH (as `tether cluster add-peer` printed it)".into(),
        });
    };
    if let Some((existing, _)) = record(store, cluster, name).await? {
        if existing.state == PeerState::Linked {
            return Err(RegistryError::PeerExists {
                name: name.into(),
                state: "linked".into(),
            });
        }
    }
    let peer_ca = tether_tls::fetch_pinned_ca(endpoint, hash)
        .await
        .map_err(|err| failed(err.to_string()))?;
    let trust = tether_tls::anonymous_client_config(&peer_ca)?;
    let request = tether_proto::dr::AcceptPeerRequest {
        name: cluster.to_string(),
        token: token.trim().to_string(),
        ca_pem: own_ca_pem.to_string(),
        endpoint: own_endpoint.to_string(),
        gateways: own_gateways(store, cluster).await?,
    };
    let accepted: tether_proto::dr::AcceptPeerResponse =
        tether_tls::client::post_json(endpoint, "/v1/peers/accept", trust, &request)
            .await
            .map_err(|err| failed(err.to_string()))?;
    if accepted.name != name {
        return Err(failed(format!(
            "it is cluster {}, not {name}",
            accepted.name
        )));
    }
    let revision = record(store, cluster, name)
        .await?
        .map_or(0, |(_, revision)| revision);
    let record = PeerRecord {
        name: name.into(),
        state: PeerState::Linked,
        added_unix_ms: now_unix_ms(),
        linked_unix_ms: Some(now_unix_ms()),
        endpoint: Some(endpoint.to_string()),
        ca_pem: Some(peer_ca),
        gateways: if peer_gateways.is_empty() {
            accepted.gateways.clone()
        } else {
            peer_gateways.to_vec()
        },
    };
    write(store, cluster, &record, revision).await?;
    tracing::info!(peer = %name, %endpoint, "DR peer linked");
    Ok(view(&record))
}
