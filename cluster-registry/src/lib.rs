//! The cluster registry: serves the federation admin API (JSON over HTTP;
//! gRPC comes with the federation issues) over the coordination store.
//!
//! It never touches volume data. It writes volume specs; the storage node a
//! spec names acts on it and reports status; the registry waits for that
//! status so an API call returns only once the change is real (or failed).
//!
//! Read first: [`api::router`] (the endpoints), [`placement`].

pub mod api;
mod error;
pub mod placement;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coord_store::{CoordStore, EtcdStore};

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
}

impl RegistryArgs {
    pub fn config(&self) -> RegistryConfig {
        RegistryConfig {
            cluster: self.cluster.clone(),
            listen: self.listen,
            store: RegistryStore::Etcd(self.etcd.clone()),
            replace_after: self.replace_after,
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
    let store: Arc<dyn CoordStore> = match config.store {
        RegistryStore::Etcd(endpoints) => Arc::new(EtcdStore::connect(&endpoints).await?),
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
    tracing::info!(cluster = %config.cluster, admin = %local, "admin API listening");
    on_listening(local);
    let state = api::AppState {
        cluster: config.cluster,
        store,
    };
    let replacer = tokio::spawn(api::replace_lost_copies(
        state.clone(),
        config.replace_after,
    ));
    let app = api::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| RegistryError::Listen {
            addr: local.to_string(),
            source,
        })?;
    replacer.abort();
    Ok(())
}
