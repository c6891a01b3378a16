//! The satellite daemon: joins the central cluster once (its own key, a
//! CSR and the one-time token), then follows its attachments and serves each
//! as a local NBD export whose I/O goes through the gateways. It only dials
//! out: it watches its attachments on the registry's gRPC stream
//! (`WatchAttachments`), and reports what it serves (`ReportPresenting`),
//! which is what an attach `--from` this satellite waits for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use admin_grpc::pb;
use nbd_export::{NbdContext, NbdServer};
use tether_proto::admin::{EndpointFailure, PresentingStatus, ServingEndpoint};
use tether_proto::federation::SatelliteAttachments;

use crate::export::export;
use crate::link::{LinkClient, RemoteVolume};

const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Flags of `tether-satellite` (and `tether daemon satellite`).
#[derive(Debug, Clone, clap::Args)]
pub struct SatelliteArgs {
    /// The central cluster this satellite uses.
    #[arg(long, default_value = "central")]
    pub cluster: String,
    /// This satellite's name, as `tether cluster add-satellite` was given it.
    #[arg(long)]
    pub name: String,
    /// The central registry's admin API (https://host:port).
    #[arg(long)]
    pub registry: String,
    /// The gateways' QUIC endpoints (host:port), comma-separated; tried in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    pub gateway: Vec<String>,
    /// Where the satellite keeps its credential (`tls/`).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The join token (the first start only).
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// The central CA's certificate, to check the registry's when joining.
    #[arg(long)]
    pub trust_ca: Option<PathBuf>,
    /// Serve the CSI identity and controller services on this Unix socket.
    #[arg(long)]
    pub csi_socket: Option<PathBuf>,
    /// Prefix of the volumes the CSI controller provisions (the satellite's
    /// prefix grant); default: the satellite's name and a dash.
    #[arg(long)]
    pub csi_prefix: Option<String>,
    /// Which CSI services this process serves: `controller` (a Deployment),
    /// `node` (a DaemonSet) or `both`.
    #[arg(long, value_enum, default_value = "both")]
    pub csi_mode: crate::csi::CsiMode,
    /// The node id the CSI node service reports (the Kubernetes node
    /// name); default: the host name.
    #[arg(long, env = "KUBE_NODE_NAME")]
    pub csi_node_id: Option<String>,
    /// The CSI node service's state (what it staged; its volume hosts'
    /// files); default: STATE_DIR/csi-node.
    #[arg(long)]
    pub csi_node_dir: Option<PathBuf>,
    /// Volumes one node stages at most (NodeGetInfo's max_volumes_per_node).
    #[arg(long, default_value_t = 64)]
    pub csi_max_volumes: i64,
    /// Follow this satellite's attachments and serve them over NBD (off for
    /// a node plugin that shares the satellite's credential with another
    /// process that does).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub serve_attachments: bool,
}

impl SatelliteArgs {
    /// The CSI node service's configuration, from these flags.
    fn node_config(&self) -> crate::csi::node::NodeConfig {
        crate::csi::node::NodeConfig {
            node_id: self.csi_node_id.clone().unwrap_or_else(host_name),
            state_dir: self
                .csi_node_dir
                .clone()
                .unwrap_or_else(|| self.state_dir.join("csi-node")),
            gateways: self.gateway.clone(),
            tls_dir: self.state_dir.join("tls"),
            host_binary: crate::csi::node::hosts::default_binary(),
            max_volumes: self.csi_max_volumes,
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// Runs the satellite until `shutdown` resolves.
pub async fn run(
    args: SatelliteArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use tracing::Instrument;
    let span = tracing::info_span!("satellite", satellite = %args.name);
    run_in_span(args, shutdown).instrument(span).await
}

async fn run_in_span(
    args: SatelliteArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir)?;
    tether_common::protected::mark(&args.state_dir, "a Tether satellite's state")?;
    let tls = crate::credential::establish(&args).await?;
    let link = LinkClient::new(&tls, args.gateway.clone())?;
    let nbd = NbdContext::new(&tls);
    let client = admin_grpc::connect(&args.registry, tls.clone())?;
    let renewer = tokio::spawn(crate::credential::renew_loop(
        tls.clone(),
        args.clone(),
        client.clone(),
    ));
    let (stop_csi, csi_stopped) = tokio::sync::oneshot::channel::<()>();
    let node = args.csi_mode.node().then(|| args.node_config());
    let mode = args.csi_mode;
    let csi = args.csi_socket.clone().map(|socket| {
        let context = crate::csi::CsiContext {
            admin: client.clone(),
            link: link.clone(),
            satellite: args.name.clone(),
            prefix: args
                .csi_prefix
                .clone()
                .unwrap_or_else(|| format!("{}-", args.name)),
        };
        tokio::spawn(async move {
            let stopped = async move {
                let _ = csi_stopped.await;
            };
            if let Err(err) = crate::csi::serve(&socket, context, mode, node, stopped).await {
                tracing::error!(socket = %socket.display(), error = %err, "the CSI services stopped");
            }
        })
    });
    tracing::info!(gateways = ?args.gateway, "satellite up");
    let mut attachments = Attachments::default();
    let mut watch: Option<tonic::Streaming<pb::SatelliteAttachments>> = None;
    // The version last served and reported; a report that failed leaves it
    // behind, and the watch is opened again to get the current set.
    let mut version: Option<String> = None;
    tokio::pin!(shutdown);
    if !args.serve_attachments {
        (&mut shutdown).await;
    }
    loop {
        if !args.serve_attachments {
            break;
        }
        let Some(stream) = watch.as_mut() else {
            let mut client = client.clone();
            let request = pb::SatelliteName {
                name: args.name.clone(),
            };
            tokio::select! {
                _ = &mut shutdown => break,
                opened = client.watch_attachments(request) => match opened {
                    Ok(opened) => watch = Some(opened.into_inner()),
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), error = %status.message(), "cannot watch this satellite's attachments; retrying");
                        tokio::time::sleep(RETRY_PAUSE * 2).await;
                    }
                },
            }
            continue;
        };
        let wanted: SatelliteAttachments = tokio::select! {
            _ = &mut shutdown => break,
            message = stream.message() => match message {
                Ok(Some(message)) => admin_grpc::convert("SatelliteAttachments", &message)?,
                Ok(None) => {
                    watch = None;
                    continue;
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), error = %status.message(), "the attachment watch ended; opening it again");
                    watch = None;
                    tokio::time::sleep(RETRY_PAUSE * 2).await;
                    continue;
                }
            },
        };
        if version.as_deref() == Some(wanted.version.as_str()) {
            continue;
        }
        let report = attachments.reconcile(&wanted, &link, &nbd).await;
        let report = pb::SatellitePresenting {
            satellite: args.name.clone(),
            volumes: report
                .into_iter()
                .map(|(volume, mut status)| {
                    status.version = 1;
                    status.node = args.name.clone();
                    Ok(pb::VolumePresenting {
                        volume,
                        status: Some(admin_grpc::convert("PresentingStatus", &status)?),
                    })
                })
                .collect::<Result<_, admin_grpc::GrpcError>>()?,
        };
        match client.clone().report_presenting(report).await {
            Ok(_) => version = Some(wanted.version),
            Err(status) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "cannot report what this satellite serves; retrying");
                watch = None;
                tokio::time::sleep(RETRY_PAUSE * 2).await;
            }
        }
    }
    renewer.abort();
    let _ = stop_csi.send(());
    if let Some(csi) = csi {
        let _ = csi.await;
    }
    tracing::info!("satellite stopping");
    Ok(())
}

/// What the satellite serves: the volumes it opened through the gateways
/// and the NBD exports of each.
#[derive(Default)]
struct Attachments {
    served: HashMap<(String, String), NbdServer>,
    volumes: HashMap<String, Arc<RemoteVolume>>,
    /// Volumes last reported serving or failing something.
    reported: std::collections::HashSet<String>,
}

impl Attachments {
    /// Serves what `wanted` lists (and stops what it does not), and says
    /// what is served and what failed, by volume.
    async fn reconcile(
        &mut self,
        wanted: &SatelliteAttachments,
        link: &Arc<LinkClient>,
        nbd: &NbdContext,
    ) -> HashMap<String, PresentingStatus> {
        // CSI stagings are the node plugin's to serve, not this daemon's.
        let keys: Vec<(String, String)> = wanted
            .attachments
            .iter()
            .filter(|attachment| {
                tether_proto::federation::csi_staging_node(&attachment.endpoint).is_none()
            })
            .map(|attachment| (attachment.volume.clone(), attachment.endpoint.clone()))
            .collect();
        self.served.retain(|key, _| keys.contains(key));
        self.volumes
            .retain(|volume, _| keys.iter().any(|(wanted, _)| wanted == volume));
        let mut failures: HashMap<String, Vec<EndpointFailure>> = HashMap::new();
        for (volume, endpoint) in &keys {
            if self
                .served
                .contains_key(&(volume.clone(), endpoint.clone()))
            {
                continue;
            }
            let remote = match self.volumes.get(volume) {
                Some(remote) => Ok(remote.clone()),
                None => link.open(volume).await,
            };
            let data_key = wanted
                .attachments
                .iter()
                .find(|a| a.volume == *volume && a.endpoint == *endpoint)
                .and_then(|a| a.data_key.clone());
            let outcome = match remote {
                Ok(remote) => {
                    self.volumes.insert(volume.clone(), remote.clone());
                    match export(volume, remote, data_key) {
                        Ok(export) => nbd_export::serve(endpoint, Arc::new(export), nbd.clone())
                            .await
                            .map_err(|err| err.to_string()),
                        Err(reason) => Err(reason),
                    }
                }
                Err(err) => Err(err.to_string()),
            };
            match outcome {
                Ok(server) => {
                    tracing::info!(%volume, uri = %server.uri, "serving over NBD");
                    self.served
                        .insert((volume.clone(), endpoint.clone()), server);
                }
                Err(error) => {
                    tracing::warn!(%volume, %endpoint, %error, "cannot serve the attachment");
                    failures
                        .entry(volume.clone())
                        .or_default()
                        .push(EndpointFailure {
                            endpoint: endpoint.clone(),
                            error,
                        });
                }
            }
        }
        let mut report: HashMap<String, PresentingStatus> = HashMap::new();
        for ((volume, endpoint), server) in &self.served {
            report
                .entry(volume.clone())
                .or_default()
                .serving
                .push(ServingEndpoint {
                    endpoint: endpoint.clone(),
                    uri: server.uri.clone(),
                });
        }
        for (volume, failed) in failures {
            let status = report.entry(volume).or_default();
            status.errors = failed
                .iter()
                .map(|f| format!("{}: {}", f.endpoint, f.error))
                .collect();
            status.failures = failed;
        }
        // A volume served before and not now is reported with nothing
        // served, so its record does not claim an export that is gone.
        for volume in self.reported.drain() {
            report.entry(volume).or_default();
        }
        self.reported.extend(
            report
                .iter()
                .filter(|(_, status)| !status.serving.is_empty() || !status.failures.is_empty())
                .map(|(volume, _)| volume.clone()),
        );
        report
    }
}
