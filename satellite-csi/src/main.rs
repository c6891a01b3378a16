//! `tether-satellite`: a satellite's daemon. Flags -> telemetry -> run.

use clap::Parser;
use satellite_csi::daemon::SatelliteArgs;
use tether_common::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(name = "tether-satellite", about = "Tether satellite daemon", version)]
struct Cli {
    #[command(flatten)]
    satellite: SatelliteArgs,
    /// json (default) or pretty.
    #[arg(long, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    satellite_csi::daemon::run(cli.satellite, tether_common::shutdown_signal()).await?;
    // A long poll to the registry may still hold a blocking thread: exit
    // without waiting for it.
    std::process::exit(0)
}
