//! CSI Identity: who the plugin is, what it offers, and whether it is ready
//! (the central admin API and a gateway both answer).

use tonic::{Request, Response, Status};

use super::pb::{self, plugin_capability};
use super::{CsiContext, CsiMode, PLUGIN_NAME};

pub struct IdentityService {
    context: CsiContext,
    mode: CsiMode,
}

impl IdentityService {
    pub fn new(context: CsiContext, mode: CsiMode) -> Self {
        IdentityService { context, mode }
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: PLUGIN_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        let service = plugin_capability::Type::Service(plugin_capability::Service {
            r#type: plugin_capability::service::Type::ControllerService as i32,
        });
        let expansion =
            plugin_capability::Type::VolumeExpansion(plugin_capability::VolumeExpansion {
                r#type: plugin_capability::volume_expansion::Type::Online as i32,
            });
        // A node-only plugin offers no controller service.
        let service = self.mode.controller().then_some(service);
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities: service
                .into_iter()
                .chain([expansion])
                .map(|capability| pb::PluginCapability {
                    r#type: Some(capability),
                })
                .collect(),
        }))
    }

    async fn probe(
        &self,
        _: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        let admin = self
            .context
            .admin
            .clone()
            .list_volumes(admin_grpc::pb::Empty {})
            .await;
        let gateway = self.context.link.reachable().await;
        let ready = match (&admin, &gateway) {
            (Ok(_), Ok(_)) => true,
            _ => {
                tracing::info!(admin = ?admin.as_ref().err().map(|s| s.message().to_string()), gateway = ?gateway.as_ref().err().map(|e| e.to_string()), "not ready");
                false
            }
        };
        Ok(Response::new(pb::ProbeResponse { ready: Some(ready) }))
    }
}
