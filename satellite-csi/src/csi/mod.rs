//! The CSI services (spec v1.9, `protos/csi/v1/csi.proto`) a satellite
//! serves to its Kubernetes cluster on a Unix socket: [`identity`],
//! [`controller`] (volumes under the satellite's grant prefix, through the
//! central admin API with the satellite's own certificate) and [`node`]
//! (volumes staged as local block devices and filesystems), as the mode
//! says: Kubernetes runs the controller in a Deployment and the node
//! service in a DaemonSet.

pub mod controller;
pub mod identity;
mod names;
pub mod node;

use std::path::Path;
use std::sync::Arc;

pub use names::volume_name;

/// The generated messages, servers and clients.
pub mod pb {
    tonic::include_proto!("csi.v1");
}

/// The plugin's name, the same everywhere (at most 63 characters).
pub const PLUGIN_NAME: &str = "csi.tether.io";

/// Which services one plugin process serves (Identity always).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CsiMode {
    Controller,
    Node,
    Both,
}

impl CsiMode {
    pub fn controller(self) -> bool {
        matches!(self, CsiMode::Controller | CsiMode::Both)
    }

    pub fn node(self) -> bool {
        matches!(self, CsiMode::Node | CsiMode::Both)
    }
}

/// What the services share: the admin API client and the link (for Probe).
#[derive(Clone)]
pub struct CsiContext {
    pub admin: admin_grpc::Client,
    pub link: Arc<crate::LinkClient>,
    /// This satellite's name.
    pub satellite: String,
    /// Prefix of every volume this plugin provisions (its prefix grant).
    pub prefix: String,
}

/// A gRPC channel to CSI services on the Unix socket at `path`, as a CO
/// (kubelet, the external-provisioner) or `tether csi` dials them.
pub async fn connect(path: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://csi.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Serves Identity, and Controller and Node as `mode` says, on the Unix
/// socket at `path` (replacing a stale socket file) until `shutdown`
/// resolves. `node` is required when `mode` includes the node service.
pub async fn serve(
    path: &Path,
    context: CsiContext,
    mode: CsiMode,
    node: Option<node::NodeConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    tracing::info!(socket = %path.display(), plugin = PLUGIN_NAME, ?mode, "CSI services listening");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let controller = mode.controller().then(|| {
        pb::controller_server::ControllerServer::new(controller::ControllerService::new(
            context.clone(),
        ))
    });
    let node = match (mode.node(), node) {
        (true, Some(config)) => Some(pb::node_server::NodeServer::new(node::NodeService::new(
            context.clone(),
            config,
        ))),
        (true, None) => {
            return Err(std::io::Error::other(
                "the CSI node service needs its node configuration",
            ))
        }
        (false, _) => None,
    };
    tonic::transport::Server::builder()
        .add_service(pb::identity_server::IdentityServer::new(
            identity::IdentityService::new(context, mode),
        ))
        .add_optional_service(controller)
        .add_optional_service(node)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(std::io::Error::other)
}
