//! The CSI services (spec v1.9, `protos/csi/v1/csi.proto`) a satellite
//! serves to its Kubernetes cluster on a Unix socket: [`identity`] and
//! [`controller`] (volumes under the satellite's grant prefix, through the
//! central admin API with the satellite's own certificate). The node
//! service (staging volumes as local block devices) comes next.

pub mod controller;
pub mod identity;
mod names;

use std::path::Path;
use std::sync::Arc;

pub use names::volume_name;

/// The generated messages, servers and clients.
pub mod pb {
    tonic::include_proto!("csi.v1");
}

/// The plugin's name, the same everywhere (at most 63 characters).
pub const PLUGIN_NAME: &str = "csi.tether.io";

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

/// Serves Identity and Controller on the Unix socket at `path` (replacing
/// a stale socket file) until `shutdown` resolves.
pub async fn serve(
    path: &Path,
    context: CsiContext,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    tracing::info!(socket = %path.display(), plugin = PLUGIN_NAME, "CSI identity and controller listening");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(pb::identity_server::IdentityServer::new(
            identity::IdentityService::new(context.clone()),
        ))
        .add_service(pb::controller_server::ControllerServer::new(
            controller::ControllerService::new(context),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(std::io::Error::other)
}
