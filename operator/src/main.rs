//! `tether-operator`: runs the controllers, or prints the CRDs.

use clap::{Parser, Subcommand};
use tether_common::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "tether-operator",
    about = "Tether's Kubernetes operator",
    version,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The registry's admin API (https://HOST:PORT).
    #[arg(long, required = true)]
    registry: Option<String>,
    /// An admin credential: a directory with tls.crt, tls.key and ca.crt.
    #[arg(long, required = true)]
    credentials: Option<std::path::PathBuf>,
    /// The namespace whose resources it reconciles.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "json")]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRDs (what charts/tether-central/crds holds).
    Crds,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Crds) = args.command {
        print!("{}", tether_operator::crd::crds_yaml());
        return Ok(());
    }
    telemetry::init_logging(args.log_format);
    let registry = args.registry.expect("required");
    let credentials = tether_tls::Credentials::load(&args.credentials.expect("required"))?;
    let admin = admin_grpc::connect(&registry, tether_tls::TlsContext::new(&credentials)?)?;
    let kube = kube::Client::try_default().await?;
    tracing::info!(%registry, namespace = %args.namespace, "tether-operator reconciling SatelliteCluster, VolumeGrant and DrLink");
    tether_operator::controller::run(tether_operator::controller::Context {
        kube,
        admin,
        namespace: args.namespace,
    })
    .await;
    Ok(())
}
