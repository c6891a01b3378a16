//! `tether-node`: one storage node. Flags -> config -> telemetry -> run.

use clap::Parser;
use storage_node::config::{NodeArgs, NodeConfig};
use tether_common::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "tether-node", about = "Tether storage node", version)]
struct Cli {
    #[command(flatten)]
    node: NodeArgs,
    /// json (default) or pretty.
    #[arg(long, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    let config = NodeConfig::from_args(cli.node)?;
    if let Some(addr) = config.metrics_addr {
        telemetry::serve_metrics(addr)?;
    }
    storage_node::run(config, tether_common::shutdown_signal()).await?;
    Ok(())
}
