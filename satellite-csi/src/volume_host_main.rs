//! `tether-volume-host`: serves one staged volume as a FUSE file (see
//! `satellite_csi::volume_host`). The CSI node plugin starts it, with its
//! configuration on standard input; it is not meant to be run by hand.

use std::io::Read;

use tether_common::telemetry::{self, LogFormat};

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    telemetry::init_logging(LogFormat::Json);
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    let config: satellite_csi::volume_host::HostConfig = serde_json::from_str(&input)
        .map_err(|err| anyhow::anyhow!("the configuration on standard input: {err}"))?;
    let volume = config.volume.clone();
    if let Err(err) = satellite_csi::volume_host::run(config).await {
        tracing::error!(%volume, error = format!("{err:#}"), "volume host failed");
        eprintln!("tether-volume-host: volume {volume}: {err:#}");
        std::process::exit(1);
    }
    std::process::exit(0)
}
