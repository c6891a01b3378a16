//! DR on the secondary's side: a paired cluster's shippers (their `dr-peer`
//! certificates, verified against that cluster's CA) open one stream per
//! volume, and the gateway's [`receiver`] stages each batch in the
//! secondary's journal volume and applies it atomically
//! (`tether_proto::dr::journal`). A DR session carries DR streams and
//! nothing else.

mod journal;
mod receiver;
mod waves;

pub(crate) use receiver::watch_forced_promotes;

use std::sync::Arc;
use std::time::Duration;

use coord_store::{Compare, CoordStore, Txn, TxnOp};
use tether_proto::dr::GatewayRecord;
use tether_proto::keys::{ClusterKeys, Kind};
use tracing::Instrument;

use crate::Gateway;

/// Serves one DR peer's session: each stream is one volume's batches.
pub(crate) async fn serve_session(
    gateway: Arc<Gateway>,
    connection: quinn::Connection,
    peer: String,
) {
    tracing::info!(%peer, "DR session opened");
    metrics::gauge!("tether_gateway_dr_sessions").increment(1.0);
    loop {
        let Ok((send, recv)) = connection.accept_bi().await else {
            break;
        };
        let (gateway, peer) = (gateway.clone(), peer.clone());
        tokio::spawn(
            async move { receiver::receive(gateway, peer, send, recv).await }.in_current_span(),
        );
    }
    metrics::gauge!("tether_gateway_dr_sessions").decrement(1.0);
    tracing::info!(%peer, reason = ?connection.close_reason(), "DR session closed");
}

/// Keeps `gateways/NAME` (leased) naming where DR peers reach this gateway.
pub(crate) async fn register(
    store: Arc<dyn CoordStore>,
    cluster: String,
    name: String,
    endpoint: String,
) {
    let key = ClusterKeys::new(&cluster).key(Kind::Gateways, &name);
    let value = serde_json::to_vec(&GatewayRecord {
        name: name.clone(),
        endpoint: endpoint.clone(),
    })
    .expect("a gateway record serializes");
    loop {
        let registered = async {
            let lease = store.grant_lease(Duration::from_secs(10)).await?;
            store
                .txn(Txn {
                    compares: vec![],
                    success: vec![TxnOp::Put {
                        key: key.clone(),
                        value: value.clone(),
                        lease: Some(lease.id),
                    }],
                    failure: vec![],
                })
                .await?;
            tracing::info!(%endpoint, "gateway registered for DR peers");
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                store.keep_alive(lease.id).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), coord_store::StoreError>(())
        };
        if let Err(err) = registered.await {
            tracing::warn!(error = %err, "gateway registration lapsed; registering again");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Takes `key` for this gateway under a lease, if no one holds it.
pub(crate) async fn take_leased(
    store: &Arc<dyn CoordStore>,
    key: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<i64>, coord_store::StoreError> {
    let lease = store.grant_lease(ttl).await?;
    let taken = store
        .txn(Txn {
            compares: vec![Compare::ModRevision {
                key: key.to_string(),
                revision: 0,
            }],
            success: vec![TxnOp::Put {
                key: key.to_string(),
                value: holder.as_bytes().to_vec(),
                lease: Some(lease.id),
            }],
            failure: vec![],
        })
        .await?;
    if taken.succeeded {
        Ok(Some(lease.id))
    } else {
        let _ = store.revoke_lease(lease.id).await;
        Ok(None)
    }
}
