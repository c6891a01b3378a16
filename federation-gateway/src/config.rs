//! The gateway's flags and the config they make.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use coord_store::CoordStore;

/// Flags of `tether-gateway` (and `tether daemon gateway`).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// The central cluster this gateway serves.
    #[arg(long, default_value = "central")]
    pub cluster: String,
    /// This gateway's name (its certificate names it: tether://CLUSTER/gateway/NAME).
    #[arg(long, default_value = "gateway-1")]
    pub name: String,
    /// UDP address satellites' QUIC sessions come to.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Holds the gateway's credential (tls.crt, tls.key, ca.crt), e.g. from
    /// `tether ca issue --role gateway --name NAME --out DIR`.
    #[arg(long)]
    pub tls_dir: PathBuf,
    /// Serve Prometheus metrics here (http://ADDR/metrics).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Where DR peers' shippers reach this gateway (`host:port`; default:
    /// the bound address). Registered in the store for the pairing.
    #[arg(long)]
    pub advertise: Option<String>,
    /// The cluster's admin API (`https://host:port`): where this gateway
    /// asks for a DR secondary to be created when a peer's first batch stream arrives.
    #[arg(long)]
    pub registry: Option<String>,
}

pub enum GatewayStore {
    Etcd(Vec<String>),
    /// A store this process already holds (the one-process dev federation).
    Shared(Arc<dyn CoordStore>),
}

pub struct GatewayConfig {
    pub cluster: String,
    pub name: String,
    pub listen: SocketAddr,
    pub store: GatewayStore,
    pub tls_dir: PathBuf,
    pub limits: GatewayLimits,
    pub advertise: Option<String>,
    pub registry: Option<String>,
}

/// What one satellite, and all of them, can make a gateway hold.
#[derive(Debug, Clone, Copy)]
pub struct GatewayLimits {
    /// Sessions (QUIC connections) at once.
    pub max_sessions: usize,
    /// Volumes one session may have open (QUIC bidirectional streams).
    pub max_streams_per_session: u32,
    /// Requests one stream may have in flight ...
    pub max_in_flight: u32,
    /// ... and their bytes (write payloads, read answers).
    pub stream_bytes: u32,
    /// Bytes every stream of the gateway may have in flight together.
    pub gateway_bytes: u32,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            max_sessions: 1024,
            max_streams_per_session: 64,
            max_in_flight: 128,
            stream_bytes: 64 << 20,
            gateway_bytes: 1 << 30,
        }
    }
}

impl GatewayConfig {
    pub fn from_args(args: GatewayArgs) -> Self {
        Self {
            cluster: args.cluster,
            name: args.name,
            listen: args.listen,
            store: GatewayStore::Etcd(args.etcd),
            tls_dir: args.tls_dir,
            limits: GatewayLimits::default(),
            advertise: args.advertise,
            registry: args.registry,
        }
    }
}
