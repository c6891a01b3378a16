//! The federation gateway: satellites open central volumes through it over
//! mutual-TLS QUIC, and it forwards their I/O to each volume's current
//! master over block-frame streams, following failover as a presenting
//! node does (the shared `master-follower` crate; the gateway never links
//! the storage engine).
//!
//! - a session is one QUIC connection from one satellite (certificate role
//!   `satellite`, of this cluster's CA, joined and not removed: [`access`]);
//! - each bidirectional stream opens one volume with a link `Hello`
//!   (`tether_proto::link`), checked against the satellite's grants, and then
//!   carries only that volume's requests ([`stream`]);
//! - the records behind those checks are watched: a removed satellite's
//!   session and a removed grant's streams end as soon as the change reaches
//!   the gateway's mirror ([`session`]);
//! - every stream's requests and bytes in flight are bounded, and all
//!   streams of the gateway share one byte budget, so one slow or hostile
//!   satellite cannot starve another.
//!
//! Any gateway of a cluster can serve any volume: nothing here is per-volume
//! state that another gateway would need.

pub mod access;
pub mod config;
mod dr;
mod error;
mod session;
mod stream;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coord_store::{CoordStore, EtcdStore};
use master_follower::{BlockTls, Mirror, VolumeFollower};
use tether_tls::{Credentials, Role, TlsContext};
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use config::{GatewayArgs, GatewayConfig, GatewayLimits, GatewayStore};
pub use error::GatewayError;

/// A block stream to a master that does not connect in this long is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What every session of the gateway shares.
pub struct Gateway {
    pub cluster: String,
    pub name: String,
    pub mirror: Arc<Mirror>,
    pub limits: GatewayLimits,
    block_tls: BlockTls,
    followers: Mutex<HashMap<String, Arc<VolumeFollower>>>,
    /// Bytes in flight across every stream.
    shared_bytes: Arc<Semaphore>,
    sessions: tether_common::limits::ConnectionCap,
    store: Arc<dyn CoordStore>,
    tls: Arc<TlsContext>,
    /// The admin API, for creating DR secondaries.
    registry: Option<String>,
    /// Followers of DR receivers (`GATEWAY+dr`: their writes are batches).
    dr_followers: Mutex<HashMap<String, Arc<VolumeFollower>>>,
}

impl Gateway {
    /// The follower of `volume`'s master, shared by every stream that opens it.
    fn follower(&self, volume: &str) -> Arc<VolumeFollower> {
        self.followers
            .lock()
            .unwrap()
            .entry(volume.to_string())
            .or_insert_with(|| {
                Arc::new(VolumeFollower::new(
                    volume,
                    &self.name,
                    self.mirror.clone(),
                    Some(self.block_tls.clone()),
                    CONNECT_TIMEOUT,
                ))
            })
            .clone()
    }
}

impl Gateway {
    fn key(&self, kind: tether_proto::keys::Kind, name: &str) -> String {
        tether_proto::keys::ClusterKeys::new(&self.cluster).key(kind, name)
    }

    /// The follower a DR receiver applies batches to `volume` through.
    fn dr_follower(&self, volume: &str) -> Arc<VolumeFollower> {
        let name = format!("{}{}", self.name, tether_proto::block::DR_APPLY_SUFFIX);
        self.dr_followers
            .lock()
            .unwrap()
            .entry(volume.to_string())
            .or_insert_with(|| {
                Arc::new(VolumeFollower::new(
                    volume,
                    &name,
                    self.mirror.clone(),
                    Some(self.block_tls.clone()),
                    CONNECT_TIMEOUT,
                ))
            })
            .clone()
    }
}

/// Loads the gateway's credential and checks it names this gateway.
fn credentials(config: &GatewayConfig) -> Result<Arc<TlsContext>, GatewayError> {
    let loaded =
        Credentials::load(&config.tls_dir).map_err(|source| GatewayError::Credentials {
            dir: config.tls_dir.clone(),
            source,
        })?;
    let identity = &loaded.identity;
    if identity.role != Role::Gateway
        || identity.cluster != config.cluster
        || identity.name != config.name
    {
        return Err(GatewayError::WrongIdentity {
            dir: config.tls_dir.clone(),
            identity: identity.uri(),
            cluster: config.cluster.clone(),
        });
    }
    Ok(TlsContext::new(&loaded)?)
}

fn quic_server(
    tls: &Arc<TlsContext>,
    peers: Arc<tether_tls::PeerTrust>,
    limits: &GatewayLimits,
) -> Result<quinn::ServerConfig, GatewayError> {
    // Satellites of this cluster, and the linked DR peers' `dr-peer`
    // certificates (their CAs vouch for nothing else).
    let rustls = tls.server_config_with_peers(
        vec![
            tether_proto::link::LINK_ALPN.to_vec(),
            tether_proto::dr::wire::DR_ALPN.to_vec(),
        ],
        peers,
    );
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls).map_err(|err| {
        GatewayError::Quic {
            reason: err.to_string(),
        }
    })?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Flow control bounds what a satellite can have buffered here, per
    // stream and per session, before the budgets even see it.
    transport
        .max_concurrent_bidi_streams(limits.max_streams_per_session.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((8u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20)
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(
            Duration::from_secs(10)
                .try_into()
                .expect("10 s is a valid idle timeout"),
        ))
        .mtu_discovery_config(Some({
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(tether_proto::link::LINK_MTU_UPPER_BOUND);
            mtu
        }));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Keeps `peers` the linked DR peers' CAs, as the mirror changes.
async fn follow_peers(mirror: Arc<Mirror>, peers: Arc<tether_tls::PeerTrust>) {
    let mut changes = mirror.subscribe();
    let mut trusted: Vec<(String, String)> = Vec::new();
    loop {
        let mut linked: Vec<(String, String)> = mirror
            .peers()
            .into_iter()
            .filter(|peer| peer.state == tether_proto::dr::PeerState::Linked)
            .filter_map(|peer| Some((peer.name, peer.ca_pem?)))
            .collect();
        linked.sort();
        if linked != trusted {
            match peers.set(&linked) {
                Ok(()) => {
                    tracing::info!(peers = ?linked.iter().map(|(name, _)| name).collect::<Vec<_>>(), "DR peers' dr-peer certificates trusted");
                    trusted = linked;
                }
                Err(err) => tracing::warn!(error = %err, "a DR peer's CA is unusable"),
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Runs a gateway until `shutdown` resolves; `ready` gets the bound address.
pub async fn run(
    config: GatewayConfig,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let span = tracing::info_span!("gateway", cluster = %config.cluster, gateway = %config.name);
    run_in_span(config, ready, shutdown).instrument(span).await
}

async fn run_in_span(
    config: GatewayConfig,
    ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let tls = credentials(&config)?;
    let store: Arc<dyn CoordStore> = match &config.store {
        GatewayStore::Etcd(endpoints) => {
            Arc::new(EtcdStore::connect(endpoints, Some(tls.clone())).await?)
        }
        GatewayStore::Shared(store) => store.clone(),
    };
    let mirror = Mirror::new(&config.cluster);
    let mirror_task = tokio::spawn(mirror.clone().run(store.clone()).in_current_span());
    // Serve only once the records are in: before that every satellite
    // would look unknown.
    let _ = mirror.subscribe().wait_for(|revision| *revision > 0).await;
    let peers = tether_tls::PeerTrust::new();
    let peers_task = tokio::spawn(follow_peers(mirror.clone(), peers.clone()).in_current_span());
    let listen_error = |source| GatewayError::Listen {
        addr: config.listen.to_string(),
        source,
    };
    let socket = tether_common::udp::bind_for_quic(config.listen).map_err(listen_error)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quic_server(&tls, peers, &config.limits)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(listen_error)?;
    let local = endpoint
        .local_addr()
        .map_err(|source| GatewayError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    let gateway = Arc::new(Gateway {
        cluster: config.cluster.clone(),
        name: config.name.clone(),
        mirror,
        limits: config.limits,
        block_tls: BlockTls::new(tls.clone()),
        followers: Mutex::new(HashMap::new()),
        shared_bytes: Arc::new(Semaphore::new(config.limits.gateway_bytes as usize)),
        sessions: tether_common::limits::ConnectionCap::new(config.limits.max_sessions),
        store: store.clone(),
        tls: tls.clone(),
        registry: config.registry.clone(),
        dr_followers: Mutex::new(HashMap::new()),
    });
    let advertised = config
        .advertise
        .clone()
        .unwrap_or_else(|| local.to_string());
    let promotes_task = tokio::spawn(dr::watch_forced_promotes(gateway.clone()).in_current_span());
    let register_task = tokio::spawn(
        dr::register(
            store.clone(),
            config.cluster.clone(),
            config.name.clone(),
            advertised,
        )
        .in_current_span(),
    );
    tracing::info!(addr = %local, "federation gateway up");
    ready(local);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => session::admit(incoming, gateway.clone()),
                None => break,
            },
        }
    }
    tracing::info!("federation gateway stopping");
    endpoint.close(session::CLOSE_SHUTDOWN, b"gateway stopping");
    mirror_task.abort();
    peers_task.abort();
    register_task.abort();
    promotes_task.abort();
    endpoint.wait_idle().await;
    Ok(())
}
