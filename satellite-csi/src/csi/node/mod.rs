//! CSI Node: a volume staged on this host is opened through the gateways
//! by a volume host (its own process, serving it as a FUSE file), made a
//! block device by a loop device on that file, and, for mount access,
//! given a filesystem (only when it holds none) and mounted at the staging
//! path; publishing bind-mounts the staging path (or the device node) at
//! the target. Every step is looked for before it is done, so each call is
//! idempotent, also after one that failed half-way; the plugin's record of
//! what it staged lives in its state directory (see [`records`]).
//!
//! The central registry records each staging (`csi:NODE`, see
//! `tether_proto::federation::csi_staging_endpoint`): a volume is staged on
//! one node at a time and is not deleted while staged.

pub mod hosts;
pub mod records;
pub mod system;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use admin_grpc::pb as admin;
use tonic::{Code, Request, Response, Status};

use super::controller::{from_registry, unsupported, KEY_SECRET};
use super::pb::{self, node_service_capability, volume_capability};
use super::CsiContext;
use crate::volume_host::HostConfig;
use records::{Access, Records, StagedVolume};

/// Where and how this node plugin works.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id (the Kubernetes node name).
    pub node_id: String,
    /// The plugin's state directory (records, hosts' files).
    pub state_dir: PathBuf,
    pub gateways: Vec<String>,
    /// The satellite's credential directory, which hosts present.
    pub tls_dir: PathBuf,
    pub host_binary: PathBuf,
    pub max_volumes: i64,
}

pub struct NodeService {
    context: CsiContext,
    config: NodeConfig,
    records: Records,
    /// Volumes with a call in progress (a second one is ABORTED).
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Marks a volume busy for one call.
struct Busy {
    set: Arc<Mutex<HashSet<String>>>,
    volume: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.set.lock().unwrap().remove(&self.volume);
    }
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: required")));
    }
    Ok(value)
}

fn absolute(path: &str, field: &str) -> Result<PathBuf, Status> {
    let path = Path::new(required(path, field)?);
    if !path.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "{field}: {} is not an absolute path",
            path.display()
        )));
    }
    Ok(path.to_path_buf())
}

fn internal(volume: &str, what: impl std::fmt::Display) -> Status {
    Status::internal(format!("volume {volume}: {what}"))
}

/// The access a capability asks for, and whether it is read-only.
fn access_of(capability: Option<&pb::VolumeCapability>) -> Result<(Access, bool), Status> {
    let capability =
        capability.ok_or_else(|| Status::invalid_argument("volume_capability: required"))?;
    if let Some(reason) = unsupported(capability) {
        return Err(Status::invalid_argument(format!(
            "volume_capability: {reason}"
        )));
    }
    use volume_capability::access_mode::Mode;
    let read_only = capability
        .access_mode
        .as_ref()
        .is_some_and(|mode| mode.mode == Mode::SingleNodeReaderOnly as i32);
    let access = match &capability.access_type {
        Some(volume_capability::AccessType::Mount(mount)) => Access::Mount {
            fs_type: if mount.fs_type.is_empty() {
                "ext4".into()
            } else {
                mount.fs_type.clone()
            },
            mount_flags: mount.mount_flags.clone(),
        },
        _ => Access::Block,
    };
    Ok((access, read_only))
}

impl NodeService {
    pub fn new(context: CsiContext, config: NodeConfig) -> Self {
        NodeService {
            records: Records::new(&config.state_dir),
            context,
            config,
            busy: Arc::default(),
        }
    }

    fn busy(&self, volume: &str) -> Result<Busy, Status> {
        if !self.busy.lock().unwrap().insert(volume.to_string()) {
            return Err(Status::aborted(format!(
                "volume {volume}: another call on it is in progress"
            )));
        }
        Ok(Busy {
            set: self.busy.clone(),
            volume: volume.to_string(),
        })
    }

    fn load(&self, volume: &str) -> Result<Option<StagedVolume>, Status> {
        self.records
            .load(volume)
            .map_err(|err| internal(volume, format!("its staging record: {err}")))
    }

    fn save(&self, record: &StagedVolume) -> Result<(), Status> {
        self.records.save(record).map_err(|err| {
            internal(
                &record.volume_id,
                format!("saving its staging record: {err}"),
            )
        })
    }

    /// The volume's data key (hex), if it is encrypted: the user's key from
    /// the CSI secret unwraps the key the volume was created with.
    fn data_key(
        &self,
        view: &admin::VolumeView,
        secrets: &std::collections::HashMap<String, String>,
    ) -> Result<Option<String>, Status> {
        let Some(encryption) = &view.encryption else {
            return Ok(None);
        };
        let Some(secret) = secrets.get(KEY_SECRET) else {
            return Err(Status::invalid_argument(format!(
                "volume {}: it is encrypted; the node-stage secret {KEY_SECRET:?} (the user's key) is required",
                view.name
            )));
        };
        let user = volume_crypto::UserKey::from_bytes(secret.as_bytes())
            .map_err(|reason| Status::invalid_argument(format!("secret {KEY_SECRET}: {reason}")))?;
        let key = volume_crypto::DataKey::unwrap(&view.name, &encryption.wrapped_key, &user)
            .and_then(|key| key.verify(&view.name, &encryption.key_check).map(|()| key))
            .map_err(|err| Status::invalid_argument(format!("secret {KEY_SECRET}: {err}")))?;
        Ok(Some(key.to_hex()))
    }

    /// The volume host serving `volume`, started if need be.
    async fn host(
        &self,
        volume: &str,
        data_key: Option<String>,
        read_only: bool,
    ) -> Result<hosts::HostStatus, Status> {
        let config = HostConfig {
            volume: volume.to_string(),
            gateways: self.config.gateways.clone(),
            tls_dir: self.config.tls_dir.clone(),
            mount_dir: self.records.fuse_dir(volume),
            socket: self.records.socket(volume),
            data_key,
            read_only,
        };
        hosts::ensure(
            &config,
            &self.config.host_binary,
            &self.records.host_log(volume),
        )
        .await
        .map_err(|reason| Status::unavailable(format!("volume {volume}: {reason}")))
    }

    /// The path a stats or expand call names, if it is one of the volume's.
    fn check_path(&self, record: &StagedVolume, path: &Path) -> Result<(), Status> {
        if record.staging_path == path || record.published.contains_key(path) {
            Ok(())
        } else {
            Err(Status::not_found(format!(
                "volume {}: not staged or published at {}",
                record.volume_id,
                path.display()
            )))
        }
    }

    async fn stage(&self, request: pb::NodeStageVolumeRequest) -> Result<(), Status> {
        let volume = required(&request.volume_id, "volume_id")?.to_string();
        let staging = absolute(&request.staging_target_path, "staging_target_path")?;
        let (access, read_only) = access_of(request.volume_capability.as_ref())?;
        let _busy = self.busy(&volume)?;
        if let Some(existing) = self.load(&volume)? {
            if existing.staging_path != staging
                || existing.access != access
                || existing.read_only != read_only
            {
                return Err(Status::already_exists(format!(
                    "volume {volume}: already staged at {} as {:?}{}",
                    existing.staging_path.display(),
                    existing.access,
                    if existing.read_only {
                        ", read-only"
                    } else {
                        ""
                    }
                )));
            }
        }
        let view = match self
            .context
            .admin
            .clone()
            .get_volume(admin::VolumeName {
                name: volume.clone(),
            })
            .await
        {
            Ok(view) => view.into_inner(),
            Err(status) if status.code() == Code::NotFound => {
                return Err(Status::not_found(format!("volume {volume}: not found")))
            }
            Err(status) => return Err(from_registry(status, &volume)),
        };
        let data_key = self.data_key(&view, &request.secrets)?;
        self.context
            .admin
            .clone()
            .attach_volume(admin::AttachVolumeRequest {
                name: volume.clone(),
                nbd: tether_proto::federation::csi_staging_endpoint(&self.config.node_id),
                from: None,
                node: None,
                data_key: None,
            })
            .await
            .map_err(|status| from_registry(status, &volume))?;
        let mut previous = self.load(&volume)?;
        if let Some(previous) = previous.as_mut() {
            let host_running = hosts::status(&self.records.socket(&volume)).await.is_some();
            if !host_running && previous.loop_device.is_some() {
                if self.remains_of_a_dead_host(previous) {
                    return Err(Status::failed_precondition(format!(
                        "volume {volume}: its volume host died while it was staged, and I/O on its mounts fails; unpublish and unstage it, then stage it again"
                    )));
                }
                // Nothing of the old staging is left (the host rebooted):
                // the record only says what to make again.
                tracing::info!(%volume, "staged before a reboot: staging it again");
                previous.loop_device = None;
                previous.host_pid = None;
                previous.published.clear();
            }
        }
        let mut record = previous.unwrap_or(StagedVolume {
            volume_id: volume.clone(),
            staging_path: staging.clone(),
            access: access.clone(),
            read_only,
            loop_device: None,
            host_pid: None,
            published: Default::default(),
        });
        // Recorded before anything is made, so an unstage after a crash
        // here finds what to take down.
        self.save(&record)?;
        let host = self.host(&volume, data_key, read_only).await?;
        let disk = self.records.disk_file(&volume);
        let device = match system::loop_device_of(&disk)
            .await
            .map_err(|err| internal(&volume, err))?
        {
            Some(device) => device,
            None => system::attach_loop(&disk, host.block_bytes, read_only)
                .await
                .map_err(|err| internal(&volume, err))?,
        };
        record.loop_device = Some(device.clone());
        record.host_pid = Some(host.pid);
        self.save(&record)?;
        if let Access::Mount {
            fs_type,
            mount_flags,
        } = &access
        {
            self.mount_staging(&volume, &device, &staging, fs_type, mount_flags, read_only)
                .await?;
        }
        tracing::info!(%volume, staging = %staging.display(), %device, "volume staged");
        Ok(())
    }

    /// Whether mounts or a loop device of a dead volume host are still there
    /// (then they must be taken down first), rather than gone with a reboot.
    fn remains_of_a_dead_host(&self, record: &StagedVolume) -> bool {
        let disk = self.records.disk_file(&record.volume_id);
        let mounted = std::iter::once(&record.staging_path)
            .chain(record.published.keys())
            .any(|path| system::mounted_at(path).ok().flatten().is_some());
        let loop_left = record
            .loop_device
            .as_deref()
            .and_then(system::loop_backing_file)
            .is_some_and(|file| file == disk);
        mounted || loop_left
    }

    async fn mount_staging(
        &self,
        volume: &str,
        device: &str,
        staging: &Path,
        fs_type: &str,
        mount_flags: &[String],
        read_only: bool,
    ) -> Result<(), Status> {
        let mounted = system::mounted_at(staging).map_err(|err| internal(volume, err))?;
        if let Some(mounted) = mounted {
            if mounted.source == device {
                return Ok(());
            }
            return Err(Status::already_exists(format!(
                "volume {volume}: {} has {} mounted on it",
                staging.display(),
                mounted.source
            )));
        }
        match system::probe(device)
            .await
            .map_err(|err| internal(volume, err))?
        {
            system::Content::Empty if read_only => {
                return Err(Status::failed_precondition(format!(
                    "volume {volume}: holds no filesystem, and a read-only staging cannot make one"
                )))
            }
            system::Content::Empty => {
                tracing::info!(%volume, %device, fs_type, "no filesystem on the volume: making one");
                system::make_filesystem(fs_type, device)
                    .await
                    .map_err(|err| internal(volume, err))?;
            }
            system::Content::Filesystem(found) if found == fs_type => {}
            system::Content::Filesystem(found) => {
                return Err(Status::failed_precondition(format!(
                    "volume {volume}: holds a {found} filesystem, not {fs_type}; it is never reformatted"
                )))
            }
            system::Content::Other(what) => {
                return Err(Status::failed_precondition(format!(
                    "volume {volume}: holds {what}, not a filesystem; it is never formatted over"
                )))
            }
        }
        std::fs::create_dir_all(staging).map_err(|err| internal(volume, err))?;
        let mut options = mount_flags.to_vec();
        if read_only {
            options.push("ro".into());
        }
        system::mount(device, staging, Some(fs_type), &options)
            .await
            .map_err(|err| internal(volume, err))
    }

    async fn unstage(&self, request: pb::NodeUnstageVolumeRequest) -> Result<(), Status> {
        let volume = required(&request.volume_id, "volume_id")?.to_string();
        let staging = absolute(&request.staging_target_path, "staging_target_path")?;
        let _busy = self.busy(&volume)?;
        let Some(record) = self.load(&volume)? else {
            return Ok(());
        };
        if record.staging_path != staging {
            return Err(Status::not_found(format!(
                "volume {volume}: staged at {}, not at {}",
                record.staging_path.display(),
                staging.display()
            )));
        }
        let still: Vec<String> = record
            .published
            .keys()
            .filter(|target| system::mounted_at(target).ok().flatten().is_some())
            .map(|target| target.display().to_string())
            .collect();
        if !still.is_empty() {
            return Err(Status::failed_precondition(format!(
                "volume {volume}: still published at {}",
                still.join(", ")
            )));
        }
        if system::mounted_at(&staging)
            .map_err(|err| internal(&volume, err))?
            .is_some()
        {
            system::unmount(&staging)
                .await
                .map_err(|err| internal(&volume, err))?;
        }
        let disk = self.records.disk_file(&volume);
        let mut devices: Vec<String> = system::loop_device_of(&disk)
            .await
            .map_err(|err| internal(&volume, err))?
            .into_iter()
            .collect();
        // The loop device made on a host that since died: `losetup -j`
        // no longer finds it (the new FUSE file is another inode), the
        // kernel still names its file.
        if let Some(recorded) = &record.loop_device {
            if !devices.contains(recorded)
                && system::loop_backing_file(recorded).is_some_and(|file| file == disk)
            {
                devices.push(recorded.clone());
            }
        }
        for device in devices {
            system::detach_loop(&device)
                .await
                .map_err(|err| internal(&volume, err))?;
        }
        hosts::stop(&self.records.socket(&volume))
            .await
            .map_err(|reason| internal(&volume, reason))?;
        // A host that died leaves a dead FUSE mount behind.
        let fuse = self.records.fuse_dir(&volume);
        if system::mounted_at(&fuse).ok().flatten().is_some() {
            let _ = system::unmount(&fuse).await;
        }
        match self
            .context
            .admin
            .clone()
            .detach_volume(admin::VolumeName {
                name: volume.clone(),
            })
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(from_registry(status, &volume)),
        }
        self.records
            .remove(&volume)
            .map_err(|err| internal(&volume, err))?;
        tracing::info!(%volume, staging = %staging.display(), "volume unstaged");
        Ok(())
    }

    async fn publish(&self, request: pb::NodePublishVolumeRequest) -> Result<(), Status> {
        let volume = required(&request.volume_id, "volume_id")?.to_string();
        let target = absolute(&request.target_path, "target_path")?;
        let (access, _) = access_of(request.volume_capability.as_ref())?;
        if request.staging_target_path.is_empty() {
            return Err(Status::failed_precondition(format!(
                "volume {volume}: staging_target_path is required (the plugin stages volumes)"
            )));
        }
        let staging = absolute(&request.staging_target_path, "staging_target_path")?;
        let _busy = self.busy(&volume)?;
        let Some(mut record) = self.load(&volume)? else {
            return Err(Status::failed_precondition(format!(
                "volume {volume}: not staged on this node"
            )));
        };
        if record.staging_path != staging {
            return Err(Status::failed_precondition(format!(
                "volume {volume}: staged at {}, not at {}",
                record.staging_path.display(),
                staging.display()
            )));
        }
        if std::mem::discriminant(&record.access) != std::mem::discriminant(&access) {
            return Err(Status::invalid_argument(format!(
                "volume {volume}: staged as {:?}, published as {access:?}",
                record.access
            )));
        }
        let read_only = request.readonly || record.read_only;
        if let Some(mounted) = system::mounted_at(&target).map_err(|err| internal(&volume, err))? {
            if record.published.get(&target) == Some(&read_only) {
                return Ok(());
            }
            return Err(Status::already_exists(format!(
                "volume {volume}: {} is already mounted ({}{})",
                target.display(),
                mounted.source,
                if mounted.read_only { ", read-only" } else { "" }
            )));
        }
        let source = match &record.access {
            Access::Mount { .. } => {
                std::fs::create_dir_all(&target).map_err(|err| internal(&volume, err))?;
                staging.clone()
            }
            Access::Block => {
                let device = record.loop_device.clone().ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "volume {volume}: its staging did not finish"
                    ))
                })?;
                if !target.exists() {
                    std::fs::File::create(&target).map_err(|err| internal(&volume, err))?;
                }
                PathBuf::from(device)
            }
        };
        system::bind_mount(&source, &target, read_only)
            .await
            .map_err(|err| internal(&volume, err))?;
        record.published.insert(target.clone(), read_only);
        self.save(&record)?;
        tracing::info!(%volume, target = %target.display(), read_only, "volume published");
        Ok(())
    }

    async fn unpublish(&self, request: pb::NodeUnpublishVolumeRequest) -> Result<(), Status> {
        let volume = required(&request.volume_id, "volume_id")?.to_string();
        let target = absolute(&request.target_path, "target_path")?;
        let _busy = self.busy(&volume)?;
        let record = self.load(&volume)?;
        // Only a mount this plugin made is taken down.
        let ours = record
            .as_ref()
            .is_some_and(|record| record.published.contains_key(&target));
        if ours
            && system::mounted_at(&target)
                .map_err(|err| internal(&volume, err))?
                .is_some()
        {
            system::unmount(&target)
                .await
                .map_err(|err| internal(&volume, err))?;
        }
        if ours {
            let removed = if target.is_dir() {
                std::fs::remove_dir(&target)
            } else {
                std::fs::remove_file(&target)
            };
            match removed {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(internal(&volume, err))
                }
                _ => {}
            }
        }
        if let Some(mut record) = record {
            if record.published.remove(&target).is_some() {
                self.save(&record)?;
            }
        }
        Ok(())
    }

    async fn stats(
        &self,
        request: pb::NodeGetVolumeStatsRequest,
    ) -> Result<pb::NodeGetVolumeStatsResponse, Status> {
        let volume = required(&request.volume_id, "volume_id")?.to_string();
        let path = absolute(&request.volume_path, "volume_path")?;
        let record = self.load(&volume)?.ok_or_else(|| {
            Status::not_found(format!("volume {volume}: not staged on this node"))
        })?;
        self.check_path(&record, &path)?;
        let condition = match hosts::status(&self.records.socket(&volume)).await {
            Some(hosts::HostStatus { problem: None, .. }) => pb::VolumeCondition {
                abnormal: false,
                message: "served through the gateways".into(),
            },
            Some(hosts::HostStatus {
                problem: Some(problem),
                ..
            }) => pb::VolumeCondition {
                abnormal: true,
                message: format!("no gateway session: {problem}"),
            },
            None => pb::VolumeCondition {
                abnormal: true,
                message:
                    "its volume host is not running: I/O fails until the volume is staged again"
                        .into(),
            },
        };
        use pb::volume_usage::Unit;
        let usage = match &record.access {
            Access::Mount { .. } => {
                let usage = system::usage(&path).map_err(|err| internal(&volume, err))?;
                vec![
                    pb::VolumeUsage {
                        available: usage.available_bytes as i64,
                        total: usage.total_bytes as i64,
                        used: usage.used_bytes as i64,
                        unit: Unit::Bytes as i32,
                    },
                    pb::VolumeUsage {
                        available: usage.free_inodes as i64,
                        total: usage.total_inodes as i64,
                        used: (usage.total_inodes - usage.free_inodes) as i64,
                        unit: Unit::Inodes as i32,
                    },
                ]
            }
            Access::Block => {
                let device = record.loop_device.as_deref().unwrap_or_default();
                let total = system::device_bytes(device).map_err(|err| internal(&volume, err))?;
                vec![pb::VolumeUsage {
                    available: 0,
                    total: total as i64,
                    used: 0,
                    unit: Unit::Bytes as i32,
                }]
            }
        };
        Ok(pb::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(condition),
        })
    }

    async fn expand(
        &self,
        request: pb::NodeExpandVolumeRequest,
    ) -> Result<pb::NodeExpandVolumeResponse, Status> {
        let volume = required(&request.volume_id, "volume_id")?.to_string();
        let path = absolute(&request.volume_path, "volume_path")?;
        let _busy = self.busy(&volume)?;
        let record = self.load(&volume)?.ok_or_else(|| {
            Status::not_found(format!("volume {volume}: not staged on this node"))
        })?;
        self.check_path(&record, &path)?;
        let size = hosts::refresh(&self.records.socket(&volume))
            .await
            .map_err(|reason| Status::unavailable(format!("volume {volume}: {reason}")))?;
        if let Some(range) = &request.capacity_range {
            if range.required_bytes > 0 && size < range.required_bytes as u64 {
                return Err(Status::out_of_range(format!(
                    "volume {volume}: has {size} bytes, fewer than the {} asked for (expand it with ControllerExpandVolume first)",
                    range.required_bytes
                )));
            }
        }
        let device = record.loop_device.clone().ok_or_else(|| {
            Status::failed_precondition(format!("volume {volume}: its staging did not finish"))
        })?;
        system::refresh_loop(&device)
            .await
            .map_err(|err| internal(&volume, err))?;
        if let Access::Mount { fs_type, .. } = &record.access {
            system::grow_filesystem(fs_type, &device, &record.staging_path)
                .await
                .map_err(|err| internal(&volume, err))?;
        }
        tracing::info!(%volume, size_bytes = size, "volume expanded on the node");
        Ok(pb::NodeExpandVolumeResponse {
            capacity_bytes: size as i64,
        })
    }
}

/// Takes down everything the node plugin with state `state_dir` staged,
/// on this host only (mounts, loop devices, volume hosts, records), with
/// no call to the registry: for `tether dev down` and tests, not for a
/// node of a live cluster (there the CO unstages). Says what it could not
/// take down.
pub async fn teardown(state_dir: &Path) -> Vec<String> {
    let records = Records::new(state_dir);
    let mut problems = Vec::new();
    for record in records.list().unwrap_or_default() {
        let volume = &record.volume_id;
        // A host that cannot reach a gateway would hold every unmount for
        // as long as its requests wait: end it first, and the mounts on it
        // fail fast (the kernel aborts a FUSE connection whose server died).
        let healthy = hosts::status(&records.socket(volume))
            .await
            .is_some_and(|status| status.problem.is_none());
        if !healthy {
            if let Some(pid) = record.host_pid {
                hosts::kill(pid);
            }
        }
        let unmount = |path: PathBuf| async move {
            if system::mounted_at(&path).ok().flatten().is_some()
                && system::unmount(&path).await.is_err()
            {
                system::unmount_lazily(&path)
                    .await
                    .map_err(|err| format!("volume {volume}: {err}"))?;
            }
            Ok::<(), String>(())
        };
        for target in record.published.keys() {
            if let Err(problem) = unmount(target.clone()).await {
                problems.push(problem);
            }
            let _ = std::fs::remove_dir(target).or_else(|_| std::fs::remove_file(target));
        }
        if let Err(problem) = unmount(record.staging_path.clone()).await {
            problems.push(problem);
        }
        let disk = records.disk_file(volume);
        if let Ok(Some(device)) = system::loop_device_of(&disk).await {
            if let Err(err) = system::detach_loop(&device).await {
                problems.push(format!("volume {volume}: {err}"));
            }
        }
        if let Err(reason) = hosts::stop(&records.socket(volume)).await {
            problems.push(format!("volume {volume}: {reason}"));
        }
        if let Err(problem) = unmount(records.fuse_dir(volume)).await {
            problems.push(problem);
        }
        if let Err(err) = records.remove(volume) {
            problems.push(format!("volume {volume}: {err}"));
        }
    }
    problems
}

fn log_failure<T>(call: &str, outcome: Result<T, Status>) -> Result<Response<T>, Status> {
    match outcome {
        Ok(answer) => Ok(Response::new(answer)),
        Err(status) => {
            tracing::warn!(call, code = ?status.code(), error = %status.message(), "CSI node call failed");
            Err(status)
        }
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let outcome = self.stage(request.into_inner()).await;
        log_failure(
            "NodeStageVolume",
            outcome.map(|()| pb::NodeStageVolumeResponse {}),
        )
    }

    async fn node_unstage_volume(
        &self,
        request: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let outcome = self.unstage(request.into_inner()).await;
        log_failure(
            "NodeUnstageVolume",
            outcome.map(|()| pb::NodeUnstageVolumeResponse {}),
        )
    }

    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let outcome = self.publish(request.into_inner()).await;
        log_failure(
            "NodePublishVolume",
            outcome.map(|()| pb::NodePublishVolumeResponse {}),
        )
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let outcome = self.unpublish(request.into_inner()).await;
        log_failure(
            "NodeUnpublishVolume",
            outcome.map(|()| pb::NodeUnpublishVolumeResponse {}),
        )
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        let outcome = self.stats(request.into_inner()).await;
        log_failure("NodeGetVolumeStats", outcome)
    }

    async fn node_expand_volume(
        &self,
        request: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        let outcome = self.expand(request.into_inner()).await;
        log_failure("NodeExpandVolume", outcome)
    }

    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|rpc| pb::NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc { r#type: rpc as i32 },
            )),
        })
        .collect();
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: self.config.max_volumes,
            accessible_topology: None,
        }))
    }
}
