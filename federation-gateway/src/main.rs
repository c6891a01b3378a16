//! `tether-gateway`: a federation gateway. Flags -> config -> telemetry -> run.

use clap::Parser;
use federation_gateway::{GatewayArgs, GatewayConfig};
use tether_common::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "tether-gateway", about = "Tether federation gateway", version)]
struct Cli {
    #[command(flatten)]
    gateway: GatewayArgs,
    /// json (default) or pretty.
    #[arg(long, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    if let Some(addr) = cli.gateway.metrics_addr {
        telemetry::serve_metrics(addr)?;
    }
    let config = GatewayConfig::from_args(cli.gateway);
    federation_gateway::run(config, |_| {}, tether_common::shutdown_signal()).await?;
    Ok(())
}
