//! A satellite's CSI node service, driven as kubelet drives it, as root on
//! real loop devices over the volume hosts' FUSE files: volumes staged
//! (with a filesystem made only when there is none), published, written,
//! handed to another node, expanded while mounted, measured, and kept
//! across a node plugin killed with -9.

use std::path::Path;
use std::time::{Duration, Instant};

use multicluster_tests::csi::*;
use multicluster_tests::harness::DevFederation;
use satellite_csi::csi::pb;
use satellite_csi::csi::pb::volume_capability::access_mode::Mode;
use tonic::Code;

fn federation(satellites: usize) -> DevFederation {
    let federation = DevFederation::builder()
        .nodes(1)
        .satellites(satellites)
        .start()
        .unwrap();
    for satellite in 1..=satellites {
        let name = format!("satellite-{satellite}");
        federation
            .tether_ok(&[
                "grant",
                "add",
                &name,
                "--prefix",
                &format!("{name}-"),
                "--capacity",
                "4GiB",
                "--count",
                "8",
            ])
            .unwrap();
    }
    federation
}

fn kubelet_dirs(
    federation: &DevFederation,
    volume: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let staging = federation.dir().join("kubelet/staging").join(volume);
    let pods = federation.dir().join("kubelet/pods").join(volume);
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(&pods).unwrap();
    (staging, pods.join("mount"))
}

fn mounted_source(path: &Path) -> Option<String> {
    satellite_csi::csi::node::system::mounted_at(path)
        .unwrap()
        .map(|entry| entry.source)
}

#[test]
fn csi_node_stages_publishes_and_hands_a_filesystem_to_another_node_intact() {
    let federation = federation(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node_dir = federation.dir().join("satellites/satellite-1/csi-node");
    runtime.block_on(async {
        let one = channel(&socket(&federation, "satellite-1")).await;
        let mut controller = pb::controller_client::ControllerClient::new(one.clone());
        let mut node = pb::node_client::NodeClient::new(one);

        let info = node
            .node_get_info(pb::NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.node_id, "satellite-1");
        assert!(info.max_volumes_per_node > 0);

        let volume = controller
            .create_volume(create("pvc-files", 256 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let id = volume.volume_id.clone();
        let (staging, target) = kubelet_dirs(&federation, "pvc-files");
        let capability = mount_capability(Mode::SingleNodeWriter);
        node.node_stage_volume(stage(&id, &staging, capability.clone()))
            .await
            .unwrap();
        let device = mounted_source(&staging).expect("the staging path is mounted");
        assert!(device.starts_with("/dev/loop"), "{device}");
        // Again: the same answer, nothing redone.
        node.node_stage_volume(stage(&id, &staging, capability.clone()))
            .await
            .unwrap();
        assert_eq!(mounted_source(&staging), Some(device.clone()));

        node.node_publish_volume(publish(&id, &staging, &target, capability.clone(), false))
            .await
            .unwrap();
        node.node_publish_volume(publish(&id, &staging, &target, capability.clone(), false))
            .await
            .unwrap();
        let sums = write_files(&target, "first", 24);

        // Staged here: not deletable, and not stageable on another node.
        let (refused, message) = code(
            controller
                .delete_volume(pb::DeleteVolumeRequest {
                    volume_id: id.clone(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(refused, Code::FailedPrecondition, "{message}");
        let mut other = NodePlugin::start(&federation, "satellite-1", "node-b");
        let mut node_b = pb::node_client::NodeClient::new(channel(&other.socket).await);
        let staging_b = federation.dir().join("kubelet-b/staging");
        let target_b = federation.dir().join("kubelet-b/pod/mount");
        std::fs::create_dir_all(&staging_b).unwrap();
        std::fs::create_dir_all(target_b.parent().unwrap()).unwrap();
        let (refused, message) = code(
            node_b
                .node_stage_volume(stage(&id, &staging_b, capability.clone()))
                .await,
        );
        assert_eq!(refused, Code::FailedPrecondition, "{message}");

        node.node_unpublish_volume(unpublish(&id, &target))
            .await
            .unwrap();
        assert!(!target.exists());
        node.node_unpublish_volume(unpublish(&id, &target))
            .await
            .unwrap();
        node.node_unstage_volume(unstage(&id, &staging))
            .await
            .unwrap();
        assert_eq!(mounted_source(&staging), None);
        node.node_unstage_volume(unstage(&id, &staging))
            .await
            .unwrap();
        assert!(satellite_csi::csi::node::records::Records::new(&node_dir)
            .list()
            .unwrap()
            .is_empty());

        // Node B stages it (no new filesystem: the files are there) and
        // publishes it read-only.
        node_b
            .node_stage_volume(stage(&id, &staging_b, capability.clone()))
            .await
            .unwrap();
        node_b
            .node_publish_volume(publish(
                &id,
                &staging_b,
                &target_b,
                capability.clone(),
                true,
            ))
            .await
            .unwrap();
        assert_files(&sums, &target, &target_b);
        let denied = std::fs::write(target_b.join("new.bin"), b"x").unwrap_err();
        assert_eq!(denied.raw_os_error(), Some(libc::EROFS), "{denied}");
        node_b
            .node_unpublish_volume(unpublish(&id, &target_b))
            .await
            .unwrap();
        node_b
            .node_unstage_volume(unstage(&id, &staging_b))
            .await
            .unwrap();
        other.kill9();

        controller
            .delete_volume(pb::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let _ = Instant::now() + Duration::ZERO;
}

fn stats(answer: pb::NodeGetVolumeStatsResponse) -> (Vec<pb::VolumeUsage>, pb::VolumeCondition) {
    (answer.usage, answer.volume_condition.unwrap())
}

/// Polls the volume's condition until it is `abnormal`; panics after a minute.
async fn wait_condition(
    node: &mut pb::node_client::NodeClient<tonic::transport::Channel>,
    request: &pb::NodeGetVolumeStatsRequest,
    abnormal: bool,
) -> String {
    let started = Instant::now();
    loop {
        let (_, condition) = stats(
            node.node_get_volume_stats(request.clone())
                .await
                .unwrap()
                .into_inner(),
        );
        if condition.abnormal == abnormal {
            return condition.message;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "condition still {condition:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn xfs_capability() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume {
                fs_type: "xfs".into(),
                mount_flags: vec!["noatime".into()],
                ..Default::default()
            },
        )),
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

#[test]
fn csi_node_keeps_filesystems_grows_them_online_measures_them_and_serves_raw_blocks() {
    let federation = federation(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let one = channel(&socket(&federation, "satellite-1")).await;
        let mut controller = pb::controller_client::ControllerClient::new(one.clone());
        let mut node = pb::node_client::NodeClient::new(one);
        // xfs: it grows online with the capabilities these hosts give root
        // (ext4 needs CAP_SYS_RESOURCE, checked below).
        let capability = xfs_capability();
        let id = controller
            .create_volume(pb::CreateVolumeRequest {
                volume_capabilities: vec![capability.clone()],
                ..create("pvc-grow", 320 * MIB)
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        let (staging, target) = kubelet_dirs(&federation, "pvc-grow");
        node.node_stage_volume(stage(&id, &staging, capability.clone()))
            .await
            .unwrap();
        node.node_publish_volume(publish(&id, &staging, &target, capability.clone(), false))
            .await
            .unwrap();
        let sums = write_files(&target, "kept", 12);

        // Unstaged and staged again: the filesystem is mounted, not made anew.
        node.node_unpublish_volume(unpublish(&id, &target))
            .await
            .unwrap();
        node.node_unstage_volume(unstage(&id, &staging))
            .await
            .unwrap();
        node.node_stage_volume(stage(&id, &staging, capability.clone()))
            .await
            .unwrap();
        node.node_publish_volume(publish(&id, &staging, &target, capability.clone(), false))
            .await
            .unwrap();
        assert_files(&sums, &target, &target);

        // Stats match df's, for bytes and inodes.
        let request = pb::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            staging_target_path: staging.display().to_string(),
        };
        let (usage, condition) = stats(
            node.node_get_volume_stats(request.clone())
                .await
                .unwrap()
                .into_inner(),
        );
        assert!(!condition.abnormal, "{condition:?}");
        let (bytes, inodes) = df(&target);
        use pb::volume_usage::Unit;
        let bytes_usage = usage.iter().find(|u| u.unit == Unit::Bytes as i32).unwrap();
        let inode_usage = usage
            .iter()
            .find(|u| u.unit == Unit::Inodes as i32)
            .unwrap();
        assert_eq!(
            [bytes_usage.total, bytes_usage.used, bytes_usage.available],
            bytes
        );
        assert_eq!(
            [inode_usage.total, inode_usage.used, inode_usage.available],
            inodes
        );

        // Online expansion: the controller grows the volume, the node the
        // filesystem, while it is mounted.
        let expanded = controller
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: 640 * MIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(capability.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(expanded.node_expansion_required);
        assert_eq!(expanded.capacity_bytes, 640 * MIB);
        let grown = node
            .node_expand_volume(pb::NodeExpandVolumeRequest {
                volume_id: id.clone(),
                volume_path: target.display().to_string(),
                staging_target_path: staging.display().to_string(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: 640 * MIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(capability.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(grown.capacity_bytes, 640 * MIB);
        let (after, _) = df(&target);
        assert!(
            after[0] > bytes[0] * 3 / 2,
            "the filesystem grew from {} to {} bytes",
            bytes[0],
            after[0]
        );
        assert_files(&sums, &target, &target);
        let more = write_files(&target, "after-growth", 4);
        assert_files(&more, &target, &target);

        // The condition follows the gateways: abnormal while none answers.
        let gateways: Vec<u32> = federation
            .gateways()
            .into_iter()
            .map(|(_, _, pid, _)| pid)
            .collect();
        for pid in &gateways {
            unsafe { libc::kill(*pid as i32, libc::SIGSTOP) };
        }
        let message = wait_condition(&mut node, &request, true).await;
        assert!(message.contains("gateway"), "{message}");
        for pid in &gateways {
            unsafe { libc::kill(*pid as i32, libc::SIGCONT) };
        }
        wait_condition(&mut node, &request, false).await;
        assert_files(&more, &target, &target);
        node.node_unpublish_volume(unpublish(&id, &target))
            .await
            .unwrap();
        node.node_unstage_volume(unstage(&id, &staging))
            .await
            .unwrap();

        // ext4 grows online only with CAP_SYS_RESOURCE; without it the
        // refusal says so, and the filesystem is untouched.
        let ext4 = controller
            .create_volume(create("pvc-ext4", 64 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        let ext4_capability = mount_capability(Mode::SingleNodeWriter);
        let (staging, target) = kubelet_dirs(&federation, "pvc-ext4");
        node.node_stage_volume(stage(&ext4, &staging, ext4_capability.clone()))
            .await
            .unwrap();
        node.node_publish_volume(publish(
            &ext4,
            &staging,
            &target,
            ext4_capability.clone(),
            false,
        ))
        .await
        .unwrap();
        let ext4_files = write_files(&target, "ext4", 3);
        let (before, _) = df(&target);
        controller
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: ext4.clone(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: 128 * MIB,
                    limit_bytes: 0,
                }),
                volume_capability: Some(ext4_capability.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let expand = pb::NodeExpandVolumeRequest {
            volume_id: ext4.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        };
        use satellite_csi::csi::node::system::{has_capability, CAP_SYS_RESOURCE};
        if has_capability(CAP_SYS_RESOURCE) {
            node.node_expand_volume(expand).await.unwrap();
            assert!(df(&target).0[0] > before[0] * 3 / 2);
        } else {
            let (_, message) = code(node.node_expand_volume(expand).await);
            assert!(message.contains("CAP_SYS_RESOURCE"), "{message}");
            assert_eq!(df(&target).0, before);
        }
        assert_files(&ext4_files, &target, &target);
        node.node_unpublish_volume(unpublish(&ext4, &target))
            .await
            .unwrap();
        node.node_unstage_volume(unstage(&ext4, &staging))
            .await
            .unwrap();

        // Raw block: the device node at the target path, and the bytes
        // written there read back after staging again.
        let block = controller
            .create_volume(pb::CreateVolumeRequest {
                volume_capabilities: vec![block_capability()],
                ..create("pvc-block", 64 * MIB)
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        let (staging, pod) = kubelet_dirs(&federation, "pvc-block");
        let device_file = pod.with_file_name("dev");
        node.node_stage_volume(stage(&block, &staging, block_capability()))
            .await
            .unwrap();
        node.node_publish_volume(publish(
            &block,
            &staging,
            &device_file,
            block_capability(),
            false,
        ))
        .await
        .unwrap();
        let pattern: Vec<u8> = (0..8 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut device = std::fs::OpenOptions::new()
                .write(true)
                .open(&device_file)
                .unwrap();
            device.seek(SeekFrom::Start(3 * MIB as u64)).unwrap();
            device.write_all(&pattern).unwrap();
            device.sync_all().unwrap();
        }
        let (usage, _) = stats(
            node.node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: block.clone(),
                volume_path: device_file.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
        );
        assert_eq!(usage[0].total, 64 * MIB);
        node.node_unpublish_volume(unpublish(&block, &device_file))
            .await
            .unwrap();
        node.node_unstage_volume(unstage(&block, &staging))
            .await
            .unwrap();
        node.node_stage_volume(stage(&block, &staging, block_capability()))
            .await
            .unwrap();
        node.node_publish_volume(publish(
            &block,
            &staging,
            &device_file,
            block_capability(),
            false,
        ))
        .await
        .unwrap();
        let whole = std::fs::read(&device_file).unwrap();
        assert_eq!(whole.len(), 64 * MIB as usize);
        assert_eq!(
            blake3::hash(&whole[3 * MIB as usize..11 * MIB as usize]),
            blake3::hash(&pattern)
        );
        assert!(whole[..3 * MIB as usize].iter().all(|b| *b == 0));
        node.node_unpublish_volume(unpublish(&block, &device_file))
            .await
            .unwrap();
        node.node_unstage_volume(unstage(&block, &staging))
            .await
            .unwrap();
    });
}
