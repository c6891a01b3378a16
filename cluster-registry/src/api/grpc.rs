//! The gRPC front end (`tether.admin.v1.Admin`, served on the admin API's
//! address beside the JSON routes): each method admits its caller with the
//! same [`Access`] as its JSON route, converts its message to the JSON
//! shape, and calls the same operation.

use std::pin::Pin;

use admin_grpc::pb;
use tether_proto::admin::{AttachRequest, CreateVolumeRequest, ResizeVolumeRequest, VerifyRequest};
use tether_proto::federation::SatellitePresenting;
use tether_tls::http::Peer;
use tonic::{Request, Response, Status};

use super::{attach, federation, nodes, peers, satellites, verify, volumes, AppState};
use crate::grants::Caller;
use crate::security::Access;

/// The service; cheap to clone (the registry's state is shared).
#[derive(Clone)]
pub struct AdminService {
    state: AppState,
}

impl AdminService {
    pub fn new(state: AppState) -> Self {
        AdminService { state }
    }

    /// The caller of `request`, admitted to `access` (`method` names the call).
    /// Also leaves the message's naming fields for the audit log.
    async fn admit<T: serde::Serialize>(
        &self,
        request: &Request<T>,
        access: Access,
        method: &str,
    ) -> Result<Option<Caller>, Status> {
        if let Some(note) = request.extensions().get::<super::audit::AuditNote>() {
            note.note(request.get_ref());
        }
        let Some(peer) = request.extensions().get::<Peer>() else {
            return Err(Status::internal("no peer on the request"));
        };
        let what = format!("gRPC {method}");
        Ok(crate::security::admit(&self.state, peer, access, &what).await?)
    }

    async fn caller<T: serde::Serialize>(
        &self,
        request: &Request<T>,
        access: Access,
        method: &str,
    ) -> Result<Caller, Status> {
        self.admit(request, access, method)
            .await?
            .ok_or_else(|| Status::internal("no caller"))
    }

    fn peer<T>(request: &Request<T>) -> Result<Peer, Status> {
        request
            .extensions()
            .get::<Peer>()
            .cloned()
            .ok_or_else(|| Status::internal("no peer on the request"))
    }
}

/// A JSON shape as its message, or a message as its JSON shape.
fn convert<From: serde::Serialize, To: serde::de::DeserializeOwned>(
    what: &'static str,
    value: &From,
) -> Result<To, Status> {
    Ok(admin_grpc::convert(what, value)?)
}

fn all<From: serde::Serialize, To: serde::de::DeserializeOwned>(
    what: &'static str,
    values: &[From],
) -> Result<Vec<To>, Status> {
    values.iter().map(|value| convert(what, value)).collect()
}

type AttachmentStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::SatelliteAttachments, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_clusters(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::ClusterList>, Status> {
        self.admit(&request, Access::Admin, "ListClusters").await?;
        let clusters = federation::list_clusters(self.state.clone()).await?;
        Ok(Response::new(pb::ClusterList {
            clusters: all("ClusterView", &clusters)?,
        }))
    }

    async fn add_satellite(
        &self,
        request: Request<pb::AddSatelliteRequest>,
    ) -> Result<Response<pb::AddSatelliteResponse>, Status> {
        self.admit(&request, Access::Admin, "AddSatellite").await?;
        let shape = convert("AddSatelliteRequest", request.get_ref())?;
        let answer = federation::add_satellite(self.state.clone(), shape).await?;
        Ok(Response::new(convert("AddSatelliteResponse", &answer)?))
    }

    async fn remove_satellite(
        &self,
        request: Request<pb::ClusterName>,
    ) -> Result<Response<pb::ClusterView>, Status> {
        self.admit(&request, Access::Admin, "RemoveSatellite")
            .await?;
        let name = request.into_inner().name;
        let view = federation::remove_satellite(self.state.clone(), name).await?;
        Ok(Response::new(convert("ClusterView", &view)?))
    }

    async fn add_grant(&self, request: Request<pb::Grant>) -> Result<Response<pb::Grant>, Status> {
        self.admit(&request, Access::Admin, "AddGrant").await?;
        let shape = convert("AddGrantRequest", request.get_ref())?;
        let grant = federation::add_grant(self.state.clone(), shape).await?;
        Ok(Response::new(convert("GrantRecord", &grant)?))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::GrantList>, Status> {
        self.admit(&request, Access::Admin, "ListGrants").await?;
        let satellite = request.into_inner().satellite;
        let grants = federation::list_grants(self.state.clone(), satellite).await?;
        Ok(Response::new(pb::GrantList {
            grants: all("GrantView", &grants)?,
            central_free_bytes: vec![],
        }))
    }

    async fn remove_grant(
        &self,
        request: Request<pb::RemoveGrantRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.admit(&request, Access::Admin, "RemoveGrant").await?;
        let pb::RemoveGrantRequest { satellite, id } = request.into_inner();
        federation::remove_grant(self.state.clone(), satellite, id).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::NodeList>, Status> {
        self.admit(&request, Access::Admin, "ListNodes").await?;
        let views = nodes::list_nodes(self.state.clone()).await?;
        Ok(Response::new(pb::NodeList {
            nodes: all("NodeView", &views)?,
        }))
    }

    async fn mint_join_token(
        &self,
        request: Request<pb::JoinTokenRequest>,
    ) -> Result<Response<pb::JoinTokenResponse>, Status> {
        self.admit(&request, Access::Admin, "MintJoinToken").await?;
        let shape = convert("JoinTokenRequest", request.get_ref())?;
        let answer = nodes::mint_join_token(self.state.clone(), shape).await?;
        Ok(Response::new(convert("JoinTokenResponse", &answer)?))
    }

    async fn list_volumes(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::VolumeList>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "ListVolumes")
            .await?;
        let views = volumes::list_volumes(self.state.clone(), caller).await?;
        Ok(Response::new(pb::VolumeList {
            volumes: all("VolumeView", &views)?,
        }))
    }

    async fn get_volume(
        &self,
        request: Request<pb::VolumeName>,
    ) -> Result<Response<pb::VolumeView>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "GetVolume")
            .await?;
        let view =
            volumes::get_volume(self.state.clone(), caller, request.into_inner().name).await?;
        Ok(Response::new(convert("VolumeView", &view)?))
    }

    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::VolumeView>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "CreateVolume")
            .await?;
        let mut shape: CreateVolumeRequest = convert("CreateVolumeRequest", request.get_ref())?;
        // proto3 has no "absent" for a number: 0 copies means the default, one.
        shape.replicas = shape.replicas.max(1);
        let view = volumes::create_volume(self.state.clone(), caller, shape).await?;
        Ok(Response::new(convert("VolumeView", &view)?))
    }

    async fn resize_volume(
        &self,
        request: Request<pb::ResizeVolumeRequest>,
    ) -> Result<Response<pb::VolumeView>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "ResizeVolume")
            .await?;
        let pb::ResizeVolumeRequest { name, size_bytes } = request.into_inner();
        let shape = ResizeVolumeRequest { size_bytes };
        let view = volumes::resize_volume(self.state.clone(), caller, name, shape).await?;
        Ok(Response::new(convert("VolumeView", &view)?))
    }

    async fn delete_volume(
        &self,
        request: Request<pb::VolumeName>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "DeleteVolume")
            .await?;
        volumes::delete_volume(self.state.clone(), caller, request.into_inner().name).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn attach_volume(
        &self,
        request: Request<pb::AttachVolumeRequest>,
    ) -> Result<Response<pb::AttachResponse>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "AttachVolume")
            .await?;
        let shape: AttachRequest = convert("AttachRequest", request.get_ref())?;
        let name = request.into_inner().name;
        let answer = attach::attach_volume(self.state.clone(), caller, name, shape).await?;
        Ok(Response::new(convert("AttachResponse", &answer)?))
    }

    async fn detach_volume(
        &self,
        request: Request<pb::VolumeName>,
    ) -> Result<Response<pb::VolumeView>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "DetachVolume")
            .await?;
        let view =
            attach::detach_volume(self.state.clone(), caller, request.into_inner().name).await?;
        Ok(Response::new(convert("VolumeView", &view)?))
    }

    async fn verify_volume(
        &self,
        request: Request<pb::VerifyVolumeRequest>,
    ) -> Result<Response<pb::VerifyReport>, Status> {
        self.admit(&request, Access::Admin, "VerifyVolume").await?;
        let pb::VerifyVolumeRequest { name, repair } = request.into_inner();
        let report =
            verify::verify_volume(self.state.clone(), name, VerifyRequest { repair }).await?;
        Ok(Response::new(convert("VerifyReport", &report)?))
    }

    async fn join_satellite(
        &self,
        request: Request<pb::SatelliteJoinRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        self.admit(&request, Access::Open, "JoinSatellite").await?;
        let peer = Self::peer(&request)?;
        let shape = convert("SatelliteJoinRequest", request.get_ref())?;
        let answer = crate::security::join_satellite(self.state.clone(), peer, shape).await?;
        Ok(Response::new(convert("CertificateResponse", &answer)?))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        self.admit(&request, Access::Holder, "Renew").await?;
        let peer = Self::peer(&request)?;
        let shape = convert("RenewRequest", request.get_ref())?;
        let answer = crate::security::renew(self.state.clone(), peer, shape).await?;
        Ok(Response::new(convert("CertificateResponse", &answer)?))
    }

    type WatchAttachmentsStream = AttachmentStream;

    async fn watch_attachments(
        &self,
        request: Request<pb::SatelliteName>,
    ) -> Result<Response<AttachmentStream>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "WatchAttachments")
            .await?;
        let name = request.into_inner().name;
        // Held for the stream's life: a satellite opens a bounded number.
        let seat = satellites::WatchSeat::take(&self.state, &caller, &name)?;
        let state = self.state.clone();
        // One message in flight: a satellite that stops reading holds one
        // answer, and the task ends when it hangs up.
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut version: Option<String> = None;
            loop {
                let next = satellites::attachments_after(
                    state.clone(),
                    caller.clone(),
                    &seat,
                    version.clone(),
                );
                let answer = tokio::select! {
                    _ = sender.closed() => return,
                    answer = next => answer,
                };
                let message = match answer {
                    Ok(current) if version.as_deref() == Some(current.version.as_str()) => {
                        continue;
                    }
                    Ok(current) => {
                        version = Some(current.version.clone());
                        convert("SatelliteAttachments", &current)
                    }
                    Err(refused) => Err(refused.into()),
                };
                let last = message.is_err();
                if sender.send(message).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn add_peer(
        &self,
        request: Request<pb::AddPeerRequest>,
    ) -> Result<Response<pb::AddPeerResponse>, Status> {
        self.admit(&request, Access::Admin, "AddPeer").await?;
        let shape = convert("AddPeerRequest", request.get_ref())?;
        let answer = peers::add_peer(self.state.clone(), shape).await?;
        Ok(Response::new(convert("AddPeerResponse", &answer)?))
    }

    async fn link_peer(
        &self,
        request: Request<pb::LinkPeerRequest>,
    ) -> Result<Response<pb::PeerView>, Status> {
        self.admit(&request, Access::Admin, "LinkPeer").await?;
        let pb::LinkPeerRequest {
            name,
            endpoint,
            token,
            own_endpoint,
            peer_gateways,
        } = request.into_inner();
        let shape = tether_proto::dr::LinkPeerRequest {
            endpoint,
            token,
            own_endpoint,
            peer_gateways,
        };
        let view = peers::link_peer(self.state.clone(), name, shape).await?;
        Ok(Response::new(convert("PeerView", &view)?))
    }

    async fn link_dr(
        &self,
        request: Request<pb::DrLinkRequest>,
    ) -> Result<Response<pb::DrLinkView>, Status> {
        self.admit(&request, Access::Admin, "LinkDr").await?;
        let shape = convert("DrLinkRequest", request.get_ref())?;
        let view = super::dr::link(self.state.clone(), shape).await?;
        Ok(Response::new(convert("DrLinkView", &view)?))
    }

    async fn list_audit(
        &self,
        request: Request<pb::AuditQuery>,
    ) -> Result<Response<pb::AuditList>, Status> {
        self.admit(&request, Access::Admin, "ListAudit").await?;
        let listed =
            super::audit::list(self.state.clone(), request.get_ref().since_unix_ms).await?;
        Ok(Response::new(convert("AuditList", &listed)?))
    }

    async fn list_dr_links(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::DrLinkList>, Status> {
        self.admit(&request, Access::Admin, "ListDrLinks").await?;
        let listed = super::dr::list(self.state.clone()).await?;
        Ok(Response::new(pb::DrLinkList {
            links: all("DrLinkView", &listed)?,
        }))
    }

    async fn get_dr_status(
        &self,
        request: Request<pb::VolumeName>,
    ) -> Result<Response<pb::DrLinkView>, Status> {
        self.admit(&request, Access::Admin, "GetDrStatus").await?;
        let view = super::dr::status(self.state.clone(), request.into_inner().name).await?;
        Ok(Response::new(convert("DrLinkView", &view)?))
    }

    async fn promote_dr(
        &self,
        request: Request<pb::DrPromoteRequest>,
    ) -> Result<Response<pb::DrLinkView>, Status> {
        self.admit(&request, Access::Admin, "PromoteDr").await?;
        let pb::DrPromoteRequest { volume, force } = request.into_inner();
        let view = super::dr::promote(self.state.clone(), volume, force).await?;
        Ok(Response::new(convert("DrLinkView", &view)?))
    }

    async fn failback_dr(
        &self,
        request: Request<pb::VolumeName>,
    ) -> Result<Response<pb::DrLinkView>, Status> {
        self.admit(&request, Access::Admin, "FailbackDr").await?;
        let view = super::dr::failback(self.state.clone(), request.into_inner().name).await?;
        Ok(Response::new(convert("DrLinkView", &view)?))
    }

    async fn create_dr_secondary(
        &self,
        request: Request<pb::DrSecondaryRequest>,
    ) -> Result<Response<pb::VolumeList>, Status> {
        self.admit(&request, Access::Gateway, "CreateDrSecondary")
            .await?;
        let shape = convert("DrSecondaryRequest", request.get_ref())?;
        let views = super::dr::create_secondary(self.state.clone(), shape).await?;
        Ok(Response::new(pb::VolumeList {
            volumes: all("VolumeView", &views)?,
        }))
    }

    async fn list_peers(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::PeerList>, Status> {
        self.admit(&request, Access::Admin, "ListPeers").await?;
        let listed = peers::list_peers(self.state.clone()).await?;
        Ok(Response::new(pb::PeerList {
            peers: all("PeerView", &listed)?,
        }))
    }

    async fn accept_peer(
        &self,
        request: Request<pb::AcceptPeerRequest>,
    ) -> Result<Response<pb::AcceptPeerResponse>, Status> {
        self.admit(&request, Access::Open, "AcceptPeer").await?;
        let shape = convert("AcceptPeerRequest", request.get_ref())?;
        let answer = peers::accept_peer(self.state.clone(), shape).await?;
        Ok(Response::new(convert("AcceptPeerResponse", &answer)?))
    }

    async fn get_ca_certificate(
        &self,
        request: Request<pb::Empty>,
    ) -> Result<Response<pb::CaCertificate>, Status> {
        self.admit(&request, Access::Open, "GetCaCertificate")
            .await?;
        Ok(Response::new(convert(
            "CaCertificate",
            &peers::ca_certificate(&self.state),
        )?))
    }

    async fn list_satellite_grants(
        &self,
        request: Request<pb::SatelliteName>,
    ) -> Result<Response<pb::GrantList>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "ListSatelliteGrants")
            .await?;
        let name = request.into_inner().name;
        let grants = satellites::satellite_grants(self.state.clone(), caller, name).await?;
        let central_free_bytes = satellites::central_free_bytes(&self.state).await?;
        Ok(Response::new(pb::GrantList {
            grants: all("GrantView", &grants)?,
            central_free_bytes,
        }))
    }

    async fn report_presenting(
        &self,
        request: Request<pb::SatellitePresenting>,
    ) -> Result<Response<pb::Empty>, Status> {
        let caller = self
            .caller(&request, Access::AdminOrSatellite, "ReportPresenting")
            .await?;
        let pb::SatellitePresenting { satellite, volumes } = request.into_inner();
        let report = SatellitePresenting {
            volumes: volumes
                .into_iter()
                .map(|volume| {
                    let status = volume.status.unwrap_or_default();
                    Ok((volume.volume, convert("PresentingStatus", &status)?))
                })
                .collect::<Result<_, Status>>()?,
        };
        satellites::satellite_presenting(self.state.clone(), caller, satellite, report).await?;
        Ok(Response::new(pb::Empty {}))
    }
}
