//! CSI Controller: volumes provisioned in the central cluster, under the
//! satellite's prefix grant, through the admin API (gRPC) with the
//! satellite's own certificate: the registry's grants and quotas decide,
//! and its errors come back with the codes the CSI spec names.

use admin_grpc::pb as admin;
use tonic::{Code, Request, Response, Status};

use super::pb::{self, controller_service_capability, volume_capability};
use super::{volume_name, CsiContext};

/// Sizes are whole MiB.
const GRANULE: u64 = 1 << 20;
/// A volume asked for with no capacity range.
const DEFAULT_SIZE: u64 = 1 << 30;
/// StorageClass parameters understood.
const PARAMETERS: [&str; 3] = ["replicas", "placement", "encrypted"];
/// The CSI secret holding the user's key of an encrypted StorageClass
/// (32 raw bytes or 64 hex digits): it wraps the volume's data key here,
/// and never reaches the central cluster.
pub const KEY_SECRET: &str = "encryptionKey";

pub struct ControllerService {
    context: CsiContext,
}

impl ControllerService {
    pub fn new(context: CsiContext) -> Self {
        ControllerService { context }
    }

    fn admin(&self) -> admin_grpc::Client {
        self.context.admin.clone()
    }

    /// The volume, or `None` if it does not exist.
    async fn find(&self, name: &str) -> Result<Option<admin::VolumeView>, Status> {
        match self
            .admin()
            .get_volume(admin::VolumeName { name: name.into() })
            .await
        {
            Ok(view) => Ok(Some(view.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(from_registry(status, name)),
        }
    }
}

/// The registry's refusal as the CSI spec codes it: quotas and a full
/// pool are RESOURCE_EXHAUSTED, an attached volume FAILED_PRECONDITION.
pub(super) fn from_registry(status: Status, volume: &str) -> Status {
    let code = status
        .metadata()
        .get("tether-code")
        .and_then(|code| code.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let message = format!("volume {volume}: {}", status.message());
    match code.as_str() {
        "over_quota" | "pool_full" => Status::resource_exhausted(message),
        "attached" => Status::failed_precondition(format!(
            "{message} (csi:NODE is a staging: NodeUnstageVolume ends it)"
        )),
        _ => Status::new(status.code(), message),
    }
}

/// The size to allocate for `range` (whole MiB), or why none fits.
fn size_for(range: Option<&pb::CapacityRange>) -> Result<u64, Status> {
    let (required, limit) = match range {
        Some(range) if range.required_bytes < 0 || range.limit_bytes < 0 => {
            return Err(Status::invalid_argument("capacity_range: negative bytes"))
        }
        Some(range) => (range.required_bytes as u64, range.limit_bytes as u64),
        None => (0, 0),
    };
    let size = match (required, limit) {
        (0, 0) => DEFAULT_SIZE,
        (0, limit) => DEFAULT_SIZE.min(limit / GRANULE * GRANULE),
        (required, _) => required.div_ceil(GRANULE) * GRANULE,
    };
    if size == 0 || (limit != 0 && size > limit) {
        return Err(Status::out_of_range(format!(
            "capacity_range: no whole number of MiB is at least {required} and at most {limit} bytes"
        )));
    }
    Ok(size)
}

/// What the central nodes' free room (`free`, largest first) allows for
/// volumes of `copies` copies on distinct nodes: in all, and for one
/// volume (the `copies`-th largest room). In all is the largest `t` with
/// `sum(min(room, t)) >= copies * t`: no node holds more than one copy of
/// any byte, so none gives more than `t`.
fn central_room(free: &[u64], copies: usize) -> (u64, u64) {
    if copies == 0 || free.len() < copies {
        return (0, 0);
    }
    let fits = |t: u64| {
        free.iter().map(|room| (*room).min(t)).sum::<u64>() >= t.saturating_mul(copies as u64)
    };
    let (mut low, mut high) = (0u64, free.iter().sum::<u64>() / copies as u64);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if fits(middle) {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    (low, free[copies - 1])
}

/// Whether `size` satisfies `range`.
fn fits(size: u64, range: Option<&pb::CapacityRange>) -> bool {
    range.is_none_or(|range| {
        size >= range.required_bytes.max(0) as u64
            && (range.limit_bytes <= 0 || size <= range.limit_bytes as u64)
    })
}

/// Why the plugin cannot serve `capability`, if it cannot.
pub(super) fn unsupported(capability: &pb::VolumeCapability) -> Option<String> {
    use volume_capability::access_mode::Mode;
    let mode = capability
        .access_mode
        .as_ref()
        .and_then(|mode| Mode::try_from(mode.mode).ok())
        .unwrap_or(Mode::Unknown);
    if !matches!(
        mode,
        Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter
    ) {
        return Some(format!(
            "access mode {mode:?}: a Tether volume is attached on one node at a time"
        ));
    }
    match &capability.access_type {
        None => Some("no access type (block or mount)".into()),
        Some(volume_capability::AccessType::Block(_)) => None,
        Some(volume_capability::AccessType::Mount(mount)) => (!["", "ext4", "xfs"]
            .contains(&mount.fs_type.as_str()))
        .then(|| format!("filesystem {:?}: ext4 or xfs", mount.fs_type)),
    }
}

fn check_capabilities(capabilities: &[pb::VolumeCapability]) -> Result<(), Status> {
    if capabilities.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities: none given"));
    }
    match capabilities.iter().find_map(unsupported) {
        Some(reason) => Err(Status::invalid_argument(format!(
            "volume_capabilities: {reason}"
        ))),
        None => Ok(()),
    }
}

fn csi_volume(view: &admin::VolumeView) -> pb::Volume {
    pb::Volume {
        capacity_bytes: view.size_bytes as i64,
        volume_id: view.name.clone(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("name: required"));
        }
        check_capabilities(&request.volume_capabilities)?;
        if request.volume_content_source.is_some() {
            return Err(Status::invalid_argument(format!(
                "volume {}: creating from a snapshot or another volume is not supported yet",
                request.name
            )));
        }
        if let Some(unknown) = request
            .parameters
            .keys()
            .find(|key| !PARAMETERS.contains(&key.as_str()))
        {
            return Err(Status::invalid_argument(format!(
                "parameter {unknown:?}: known are {}",
                PARAMETERS.join(", ")
            )));
        }
        let replicas = match request.parameters.get("replicas") {
            Some(text) => text.parse::<u32>().map_err(|_| {
                Status::invalid_argument(format!("parameter replicas: {text:?} is not a number"))
            })?,
            None => 1,
        };
        let mut placement = std::collections::BTreeMap::new();
        for pair in request
            .parameters
            .get("placement")
            .map(String::as_str)
            .unwrap_or_default()
            .split(',')
            .filter(|pair| !pair.is_empty())
        {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                Status::invalid_argument(format!("parameter placement: {pair:?} is not key=value"))
            })?;
            placement.insert(key.trim().to_string(), value.trim().to_string());
        }
        let encryption = match request.parameters.get("encrypted").map(String::as_str) {
            None | Some("false") => None,
            Some("true") => {
                let Some(secret) = request.secrets.get(KEY_SECRET) else {
                    return Err(Status::invalid_argument(format!(
                        "volume {}: an encrypted StorageClass needs the secret {KEY_SECRET:?} (the user's key)",
                        request.name
                    )));
                };
                let user =
                    volume_crypto::UserKey::from_bytes(secret.as_bytes()).map_err(|reason| {
                        Status::invalid_argument(format!("secret {KEY_SECRET}: {reason}"))
                    })?;
                let data = volume_crypto::DataKey::generate();
                Some(admin::EncryptionSpec {
                    cipher: volume_crypto::CIPHER.into(),
                    sector_bytes: volume_crypto::SECTOR_BYTES as u32,
                    wrapped_key: data.wrap(&user),
                    key_check: data.check_value(),
                })
            }
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "parameter encrypted: {other:?} is not true or false"
                )))
            }
        };
        let name = volume_name(&self.context.prefix, &request.name);
        let range = request.capacity_range.as_ref();
        // Idempotent by name: the same volume for a compatible size.
        if let Some(existing) = self.find(&name).await? {
            return if fits(existing.size_bytes, range)
                && existing.encryption.is_some() == encryption.is_some()
            {
                Ok(Response::new(pb::CreateVolumeResponse {
                    volume: Some(csi_volume(&existing)),
                }))
            } else {
                Err(Status::already_exists(format!(
                    "volume {} exists as {name} with {} bytes{}, not as asked for",
                    request.name,
                    existing.size_bytes,
                    if existing.encryption.is_some() {
                        ", encrypted"
                    } else {
                        ""
                    }
                )))
            };
        }
        let size_bytes = size_for(range)?;
        let created = self
            .admin()
            .create_volume(admin::CreateVolumeRequest {
                name: name.clone(),
                size_bytes,
                replicas,
                placement,
                encryption,
            })
            .await;
        let view = match created {
            Ok(view) => view.into_inner(),
            // Created meanwhile by a retry of this very call: the same answer.
            Err(status) if status.code() == Code::AlreadyExists => self
                .find(&name)
                .await?
                .filter(|view| fits(view.size_bytes, range))
                .ok_or_else(|| from_registry(status, &name))?,
            Err(status) => return Err(from_registry(status, &name)),
        };
        tracing::info!(csi_name = %request.name, volume = %name, size_bytes, replicas, encrypted = view.encryption.is_some(), "CSI volume created");
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(csi_volume(&view)),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let id = request.into_inner().volume_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("volume_id: required"));
        }
        match self
            .admin()
            .delete_volume(admin::VolumeName { name: id.clone() })
            .await
        {
            Ok(_) => {
                tracing::info!(volume = %id, "CSI volume deleted");
                Ok(Response::new(pb::DeleteVolumeResponse {}))
            }
            // Deleting what is not there succeeds: the CO may retry.
            Err(status) if status.code() == Code::NotFound => {
                Ok(Response::new(pb::DeleteVolumeResponse {}))
            }
            Err(status) => Err(from_registry(status, &id)),
        }
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id: required"));
        }
        if request.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities: none given"));
        }
        if self.find(&request.volume_id).await?.is_none() {
            return Err(Status::not_found(format!(
                "volume {}: not found",
                request.volume_id
            )));
        }
        let answer = match request.volume_capabilities.iter().find_map(unsupported) {
            Some(reason) => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: reason,
            },
            None => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
                    volume_context: request.volume_context,
                    volume_capabilities: request.volume_capabilities,
                    parameters: request.parameters,
                }),
                message: String::new(),
            },
        };
        Ok(Response::new(answer))
    }

    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let request = request.into_inner();
        if request.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries: negative"));
        }
        let start = match request.starting_token.as_str() {
            "" => 0,
            token => token.parse::<usize>().map_err(|_| {
                Status::aborted(format!("starting_token {token:?}: not one of ours"))
            })?,
        };
        let mut volumes: Vec<admin::VolumeView> = self
            .admin()
            .list_volumes(admin::Empty {})
            .await
            .map_err(|status| from_registry(status, "*"))?
            .into_inner()
            .volumes
            .into_iter()
            .filter(|view| view.name.starts_with(&self.context.prefix))
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        if start > volumes.len() {
            return Err(Status::aborted(format!(
                "starting_token {start}: past the {} volumes",
                volumes.len()
            )));
        }
        let take = match request.max_entries {
            0 => usize::MAX,
            max => max as usize,
        };
        let page: Vec<_> = volumes.iter().skip(start).take(take).collect();
        let end = start + page.len();
        Ok(Response::new(pb::ListVolumesResponse {
            entries: page
                .into_iter()
                .map(|view| pb::list_volumes_response::Entry {
                    volume: Some(csi_volume(view)),
                    status: None,
                })
                .collect(),
            next_token: if end < volumes.len() {
                end.to_string()
            } else {
                String::new()
            },
        }))
    }

    /// What the satellite's prefix grant still allows: its capacity less
    /// what its volumes are promised, none once it holds its count.
    async fn get_capacity(
        &self,
        request: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let request = request.into_inner();
        if !request.volume_capabilities.is_empty() {
            check_capabilities(&request.volume_capabilities)?;
        }
        let copies = match request.parameters.get("replicas") {
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "parameter replicas: {text:?} is not a number of copies"
                    ))
                })?,
            None => 1,
        };
        let listed = self
            .admin()
            .list_satellite_grants(admin::SatelliteName {
                name: self.context.satellite.clone(),
            })
            .await
            .map_err(|status| from_registry(status, "*"))?
            .into_inner();
        let grants = listed.grants;
        let granted = grants
            .iter()
            .find(|grant| grant.kind == "prefix" && self.context.prefix.starts_with(&grant.prefix))
            .map_or(0, |grant| {
                if grant.used_count.unwrap_or(0) >= grant.count {
                    0
                } else {
                    grant
                        .capacity_bytes
                        .saturating_sub(grant.used_bytes.unwrap_or(0))
                }
            });
        let (central, largest) = central_room(&listed.central_free_bytes, copies);
        let available = granted.min(central) / GRANULE * GRANULE;
        let largest = granted.min(largest) / GRANULE * GRANULE;
        Ok(Response::new(pb::GetCapacityResponse {
            available_capacity: available as i64,
            maximum_volume_size: Some(largest as i64),
            minimum_volume_size: Some(GRANULE as i64),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        let capabilities = [
            Type::CreateDeleteVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::ExpandVolume,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|rpc| pb::ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc { r#type: rpc as i32 },
            )),
        })
        .collect();
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let request = request.into_inner();
        if request.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id: required"));
        }
        let Some(range) = request.capacity_range.as_ref() else {
            return Err(Status::invalid_argument("capacity_range: required"));
        };
        let Some(view) = self.find(&request.volume_id).await? else {
            return Err(Status::not_found(format!(
                "volume {}: not found",
                request.volume_id
            )));
        };
        // A filesystem grows on the node (NodeExpandVolume); a block device does not need to.
        let node_expansion_required = !matches!(
            request
                .volume_capability
                .as_ref()
                .and_then(|capability| capability.access_type.as_ref()),
            Some(volume_capability::AccessType::Block(_))
        );
        let wanted = size_for(Some(range))?;
        let size_bytes = if view.size_bytes >= wanted {
            view.size_bytes
        } else {
            self.admin()
                .resize_volume(admin::ResizeVolumeRequest {
                    name: request.volume_id.clone(),
                    size_bytes: wanted,
                })
                .await
                .map_err(|status| from_registry(status, &request.volume_id))?
                .into_inner()
                .size_bytes
        };
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            capacity_bytes: size_bytes as i64,
            node_expansion_required,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(required: i64, limit: i64) -> pb::CapacityRange {
        pb::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }
    }

    #[test]
    fn central_room_counts_copies_on_distinct_nodes() {
        assert_eq!(central_room(&[100, 100, 100], 1), (300, 100));
        assert_eq!(central_room(&[100, 100, 100], 2), (150, 100));
        // One big node cannot hold both copies of anything.
        assert_eq!(central_room(&[1000, 10], 2), (10, 10));
        assert_eq!(central_room(&[50], 2), (0, 0));
        assert_eq!(central_room(&[], 1), (0, 0));
    }

    #[test]
    fn sizes_are_whole_mib_within_the_range() {
        assert_eq!(size_for(None).unwrap(), DEFAULT_SIZE);
        assert_eq!(size_for(Some(&range(1, 0))).unwrap(), GRANULE);
        assert_eq!(
            size_for(Some(&range(GRANULE as i64 + 1, 0))).unwrap(),
            2 * GRANULE
        );
        assert_eq!(
            size_for(Some(&range(0, 5 * GRANULE as i64))).unwrap(),
            5 * GRANULE
        );
        let code = |r| size_for(Some(&r)).unwrap_err().code();
        assert_eq!(
            code(range(GRANULE as i64 + 1, GRANULE as i64 + 2)),
            Code::OutOfRange
        );
        assert_eq!(code(range(0, 1000)), Code::OutOfRange);
        assert_eq!(code(range(-1, 0)), Code::InvalidArgument);
        assert!(fits(2 * GRANULE, Some(&range(GRANULE as i64, 0))));
        assert!(!fits(GRANULE, Some(&range(2 * GRANULE as i64, 0))));
    }
}
