//! Driving a satellite's CSI services as kubelet and the external
//! provisioner do: requests, a second node plugin process, and teardown of
//! what a test staged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use satellite_csi::csi::pb;
use satellite_csi::csi::pb::volume_capability::{access_mode::Mode, AccessMode, AccessType};
use tonic::transport::Channel;

use crate::harness::DevFederation;

pub const MIB: i64 = 1 << 20;

pub async fn channel(socket: &Path) -> Channel {
    satellite_csi::csi::connect(socket).await.unwrap()
}

pub type Controller = pb::controller_client::ControllerClient<Channel>;
pub type Node = pb::node_client::NodeClient<Channel>;

/// The controller and node clients of `satellite`'s CSI socket.
pub async fn clients(federation: &DevFederation, satellite: &str) -> (Controller, Node) {
    let csi = channel(&socket(federation, satellite)).await;
    (Controller::new(csi.clone()), Node::new(csi))
}

/// CreateVolume that must succeed; the new volume's id.
pub async fn create_id(controller: &mut Controller, request: pb::CreateVolumeRequest) -> String {
    controller
        .create_volume(request)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

/// The CSI socket `dev up` gave `satellite`.
pub fn socket(federation: &DevFederation, satellite: &str) -> PathBuf {
    federation.info["satellites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == satellite)
        .and_then(|s| s["csi_socket"].as_str())
        .map(PathBuf::from)
        .unwrap()
}

pub fn mount_capability(mode: Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(AccessType::Mount(pb::volume_capability::MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn block_capability() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(AccessType::Block(pb::volume_capability::BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

pub fn create(name: &str, required: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: required,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_capability(Mode::SingleNodeWriter)],
        ..Default::default()
    }
}

pub fn stage(
    volume: &str,
    staging: &Path,
    capability: pb::VolumeCapability,
) -> pb::NodeStageVolumeRequest {
    pb::NodeStageVolumeRequest {
        volume_id: volume.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(capability),
        ..Default::default()
    }
}

pub fn unstage(volume: &str, staging: &Path) -> pb::NodeUnstageVolumeRequest {
    pb::NodeUnstageVolumeRequest {
        volume_id: volume.into(),
        staging_target_path: staging.display().to_string(),
    }
}

pub fn publish(
    volume: &str,
    staging: &Path,
    target: &Path,
    capability: pb::VolumeCapability,
    readonly: bool,
) -> pb::NodePublishVolumeRequest {
    pb::NodePublishVolumeRequest {
        volume_id: volume.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability),
        readonly,
        ..Default::default()
    }
}

pub fn unpublish(volume: &str, target: &Path) -> pb::NodeUnpublishVolumeRequest {
    pb::NodeUnpublishVolumeRequest {
        volume_id: volume.into(),
        target_path: target.display().to_string(),
    }
}

/// NodeStageVolume then NodePublishVolume, as kubelet makes them for a
/// pod; both must succeed.
pub async fn stage_and_publish(
    node: &mut Node,
    volume: &str,
    staging: &Path,
    target: &Path,
    capability: &pb::VolumeCapability,
    readonly: bool,
) {
    node.node_stage_volume(stage(volume, staging, capability.clone()))
        .await
        .unwrap();
    node.node_publish_volume(publish(
        volume,
        staging,
        target,
        capability.clone(),
        readonly,
    ))
    .await
    .unwrap();
}

/// NodeUnpublishVolume then NodeUnstageVolume; both must succeed.
pub async fn unpublish_and_unstage(node: &mut Node, volume: &str, staging: &Path, target: &Path) {
    node.node_unpublish_volume(unpublish(volume, target))
        .await
        .unwrap();
    node.node_unstage_volume(unstage(volume, staging))
        .await
        .unwrap();
}

/// The code and message of a refused call.
pub fn code<T: std::fmt::Debug>(
    answer: Result<tonic::Response<T>, tonic::Status>,
) -> (tonic::Code, String) {
    let status = answer.expect_err("refused");
    (status.code(), status.message().to_string())
}

/// Files with random contents under `dir`, and their BLAKE3 sums; each is
/// fsynced, as an application that wants its data kept does.
pub fn write_files(dir: &Path, prefix: &str, count: usize) -> HashMap<PathBuf, String> {
    use rand::RngCore;
    use std::io::Write;
    let mut sums = HashMap::new();
    for index in 0..count {
        let mut data = vec![0u8; 4096 * (1 + index * 37 % 300)];
        rand::rng().fill_bytes(&mut data);
        let path = dir.join(format!("{prefix}-{index}.bin"));
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&data).unwrap();
        file.sync_all().unwrap();
        sums.insert(path, blake3::hash(&data).to_hex().to_string());
    }
    sums
}

/// Asserts every file under its new root has the sum it was written with.
pub fn assert_files(sums: &HashMap<PathBuf, String>, from: &Path, to: &Path) {
    for (path, sum) in sums {
        let moved = to.join(path.strip_prefix(from).unwrap());
        let data = std::fs::read(&moved).unwrap_or_else(|err| panic!("{}: {err}", moved.display()));
        assert_eq!(
            &blake3::hash(&data).to_hex().to_string(),
            sum,
            "{}",
            moved.display()
        );
    }
}

/// What `df` (coreutils, not our statvfs call) says of the filesystem at
/// `path`: (total, used, available) bytes and (total, used, free) inodes.
pub fn df(path: &Path) -> ([i64; 3], [i64; 3]) {
    let numbers = |args: &[&str]| -> [i64; 3] {
        let output = Command::new("df").args(args).arg(path).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().nth(1).unwrap_or_default();
        let fields: Vec<i64> = line
            .split_whitespace()
            .map(|field| field.parse().unwrap())
            .collect();
        [fields[0], fields[1], fields[2]]
    };
    (
        numbers(&["-B1", "--output=size,used,avail"]),
        numbers(&["--output=itotal,iused,iavail"]),
    )
}

/// A node plugin of its own (`tether-satellite --csi-mode node`) sharing
/// the satellite's credential, as a second Kubernetes node's DaemonSet pod.
pub struct NodePlugin {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl NodePlugin {
    pub fn start(federation: &DevFederation, satellite: &str, node_id: &str) -> NodePlugin {
        let dir = federation.dir().join(format!("node-{node_id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let gateways: Vec<String> = federation
            .gateways()
            .into_iter()
            .map(|(_, endpoint, _, _)| endpoint)
            .collect();
        let socket = dir.join("csi.sock");
        let state_dir = dir.join("state");
        let args = vec![
            "daemon".to_string(),
            "satellite".into(),
            "--cluster=central".into(),
            format!("--name={satellite}"),
            format!("--registry=https://{}", federation.admin_addr()),
            format!("--gateway={}", gateways.join(",")),
            format!(
                "--state-dir={}",
                federation
                    .dir()
                    .join("satellites")
                    .join(satellite)
                    .display()
            ),
            format!("--csi-socket={}", socket.display()),
            "--csi-mode=node".into(),
            format!("--csi-node-id={node_id}"),
            format!("--csi-node-dir={}", state_dir.display()),
            "--serve-attachments=false".into(),
        ];
        let mut plugin = NodePlugin {
            socket,
            state_dir,
            args,
            log: dir.join("plugin.log"),
            child: None,
        };
        plugin.restart();
        plugin
    }

    /// Starts the plugin (again) and waits until its Probe says ready.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(crate::harness::tether_bin())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let ready = apart(async {
                let channel = satellite_csi::csi::connect(&self.socket).await.ok()?;
                pb::identity_client::IdentityClient::new(channel)
                    .probe(pb::ProbeRequest {})
                    .await
                    .ok()?
                    .into_inner()
                    .ready
            });
            if ready == Some(true) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "node plugin not ready: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for NodePlugin {
    fn drop(&mut self) {
        self.kill9();
        teardown(&self.state_dir);
    }
}

/// Takes down what a node plugin with state `state_dir` staged.
pub fn teardown(state_dir: &Path) {
    for problem in apart(satellite_csi::csi::node::teardown(state_dir)) {
        eprintln!("teardown: {problem}");
    }
}

/// Runs `work` to its end on a runtime of its own, on a thread of its own:
/// callable from a test's async code and from `Drop` alike.
fn apart<F: std::future::Future + Send>(work: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(work)
            })
            .join()
            .unwrap()
    })
}
