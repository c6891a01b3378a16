//! `tether-registry`: the admin API of one cluster. Flags -> config -> telemetry -> run.

use clap::Parser;
use cluster_registry::RegistryArgs;
use tether_common::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "tether-registry",
    about = "Tether cluster registry and admin API",
    version
)]
struct Cli {
    #[command(flatten)]
    registry: RegistryArgs,
    /// json (default) or pretty.
    #[arg(long, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    if let Some(addr) = cli.registry.metrics_addr {
        telemetry::serve_metrics(addr)?;
    }
    cluster_registry::run(
        cli.registry.config(),
        |_| {},
        tether_common::shutdown_signal(),
    )
    .await?;
    Ok(())
}
