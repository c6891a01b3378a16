//! The cluster registry: serves the federation admin API (JSON over HTTPS
//! with mutual TLS; gRPC comes with the federation issues) over the
//! coordination store, and holds the cluster's CA.
//!
//! It never touches volume data. It writes volume specs; the storage node a
//! spec names acts on it and reports status; the registry waits for that
//! status so an API call returns only once the change is real (or failed).
//!
//! Read first: [`api::router`] (the endpoints, one module per concern), [`placement`].

pub mod api;
pub mod audit;
pub mod dr;
mod error;
pub mod federation;
pub mod grants;
pub mod join_tokens;
pub mod node_rpc;
pub mod peers;
pub mod placement;
pub mod security;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use coord_store::{CoordStore, EtcdStore};
use security::{OperatorCa, SecurityConfig};
use tether_tls::ClientAuth;

pub use error::RegistryError;

/// Flags of the registry daemon (shared by `tether-registry` and `tether daemon registry`).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// This cluster's name.
    #[arg(long, default_value = "central")]
    pub cluster: String,
    /// Admin API address.
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Serve Prometheus metrics here (http://ADDR/metrics).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// A copy whose node has been down this long (and that is out of the
    /// in-sync set) is replaced by a new copy on another node.
    #[arg(long, default_value = "10m", value_parser = tether_common::size::parse_duration)]
    pub replace_after: Duration,
    /// The control plane's state: the CA (`ca/ca.crt`, `ca/ca.key` at 0600,
    /// made on first start) and the nodes' `join-token`.
    #[arg(long, default_value = "/var/lib/tether/registry")]
    pub state_dir: PathBuf,
    /// Use the operator's CA instead of making one: its certificate (a root
    /// or an intermediate) ...
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// ... its private key (mode 0600) ...
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// ... and, for an intermediate, the certificates above it up to the root.
    #[arg(long, requires = "ca_cert")]
    pub ca_chain: Option<PathBuf>,
    /// Names (DNS or IP) clients reach the admin API by; they go in its certificate.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    pub tls_name: Vec<String>,
    /// Lifetime of issued certificates; holders renew after two thirds of it.
    #[arg(long, default_value = "30d", value_parser = tether_common::size::parse_duration)]
    pub cert_lifetime: Duration,
}

impl RegistryArgs {
    pub fn config(&self) -> RegistryConfig {
        RegistryConfig {
            cluster: self.cluster.clone(),
            listen: self.listen,
            store: RegistryStore::Etcd(self.etcd.clone()),
            replace_after: self.replace_after,
            security: SecurityConfig {
                state_dir: self.state_dir.clone(),
                operator_ca: self.ca_cert.as_ref().map(|cert| OperatorCa {
                    cert: cert.clone(),
                    key: self.ca_key.clone().expect("clap requires --ca-key"),
                    chain: self.ca_chain.clone(),
                }),
                admin_names: self.tls_name.clone(),
                cert_lifetime: self.cert_lifetime,
            },
        }
    }
}

/// Default for `--replace-after`.
pub const DEFAULT_REPLACE_AFTER: Duration = Duration::from_secs(600);

/// Everything the registry needs to run.
#[derive(Clone)]
pub struct RegistryConfig {
    pub cluster: String,
    pub listen: SocketAddr,
    pub store: RegistryStore,
    pub replace_after: Duration,
    pub security: SecurityConfig,
}

#[derive(Clone)]
pub enum RegistryStore {
    Etcd(Vec<String>),
    Shared(Arc<dyn CoordStore>),
}

/// Serves the admin API until `shutdown` resolves. `on_listening` gets the bound address.
pub async fn run(
    config: RegistryConfig,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    let security = security::open(&config.cluster, config.security)?;
    let store: Arc<dyn CoordStore> = match config.store {
        RegistryStore::Etcd(endpoints) => {
            Arc::new(EtcdStore::connect(&endpoints, Some(security.tls.clone())).await?)
        }
        RegistryStore::Shared(store) => store,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| RegistryError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| RegistryError::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    tracing::info!(cluster = %config.cluster, admin = %local, "admin API listening (mutual TLS)");
    on_listening(local);
    let state = api::AppState {
        cluster: config.cluster,
        store,
        security: security.clone(),
        satellite_keys: Default::default(),
        attachment_watches: Default::default(),
    };
    let renewer = tokio::spawn(security.clone().renew_own_certificate());
    let replacer = tokio::spawn(api::replace_lost_copies(
        state.clone(),
        config.replace_after,
    ));
    let app = api::router(state);
    tether_tls::http::serve(
        listener,
        security.tls.clone(),
        ClientAuth::Optional,
        app,
        "admin API",
        shutdown,
    )
    .await;
    replacer.abort();
    renewer.abort();
    Ok(())
}
