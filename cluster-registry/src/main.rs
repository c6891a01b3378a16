//! `tether-registry`: the admin API of one cluster. Flags -> config -> telemetry -> run.

use std::net::SocketAddr;

use clap::Parser;
use cluster_registry::{RegistryConfig, RegistryStore};
use tether_common::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "tether-registry",
    about = "Tether cluster registry and admin API",
    version
)]
struct Cli {
    /// This cluster's name.
    #[arg(long, default_value = "central")]
    cluster: String,
    /// Admin API address.
    #[arg(long, default_value = "127.0.0.1:7480")]
    listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// Serve Prometheus metrics here (http://ADDR/metrics).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// json (default) or pretty.
    #[arg(long, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    if let Some(addr) = cli.metrics_addr {
        telemetry::serve_metrics(addr)?;
    }
    let config = RegistryConfig {
        cluster: cli.cluster,
        listen: cli.listen,
        store: RegistryStore::Etcd(cli.etcd),
    };
    cluster_registry::run(config, |_| {}, tether_common::shutdown_signal()).await?;
    Ok(())
}
