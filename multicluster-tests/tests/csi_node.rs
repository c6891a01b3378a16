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
        let (mut controller, mut node) = clients(&federation, "satellite-1").await;

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
        unpublish_and_unstage(&mut node, &id, &staging, &target).await;
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
        let (mut controller, mut node) = clients(&federation, "satellite-1").await;
        // xfs: it grows online with the capabilities these hosts give root
        // (ext4 needs CAP_SYS_RESOURCE, checked below).
        let capability = xfs_capability();
        let id = create_id(
            &mut controller,
            pb::CreateVolumeRequest {
                volume_capabilities: vec![capability.clone()],
                ..create("pvc-grow", 320 * MIB)
            },
        )
        .await;
        let (staging, target) = kubelet_dirs(&federation, "pvc-grow");
        stage_and_publish(&mut node, &id, &staging, &target, &capability, false).await;
        let sums = write_files(&target, "kept", 12);
        // xfs, with the StorageClass's mount flags.
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info
            .lines()
            .find(|line| line.contains(&format!(" {} ", staging.display())))
            .expect("the staging path is mounted");
        assert!(line.contains(" - xfs "), "{line}");
        assert!(
            line.split(' ')
                .nth(5)
                .unwrap()
                .split(',')
                .any(|o| o == "noatime"),
            "{line}"
        );

        // Unstaged and staged again: the filesystem is mounted, not made anew.
        unpublish_and_unstage(&mut node, &id, &staging, &target).await;
        stage_and_publish(&mut node, &id, &staging, &target, &capability, false).await;
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
        unpublish_and_unstage(&mut node, &id, &staging, &target).await;

        // ext4 grows online only with CAP_SYS_RESOURCE; without it the
        // refusal says so, and the filesystem is untouched.
        let ext4 = create_id(&mut controller, create("pvc-ext4", 64 * MIB)).await;
        let ext4_capability = mount_capability(Mode::SingleNodeWriter);
        let (staging, target) = kubelet_dirs(&federation, "pvc-ext4");
        stage_and_publish(&mut node, &ext4, &staging, &target, &ext4_capability, false).await;
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
        unpublish_and_unstage(&mut node, &ext4, &staging, &target).await;

        // Raw block: the device node at the target path, and the bytes
        // written there read back after staging again.
        let block = create_id(
            &mut controller,
            pb::CreateVolumeRequest {
                volume_capabilities: vec![block_capability()],
                ..create("pvc-block", 64 * MIB)
            },
        )
        .await;
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
        unpublish_and_unstage(&mut node, &block, &staging, &device_file).await;
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
        unpublish_and_unstage(&mut node, &block, &staging, &device_file).await;
    });
}

#[test]
fn csi_node_plugin_killed_with_9_leaves_mounts_serving_and_takes_them_up_again() {
    let federation = federation(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (mut controller, mut node_a) = clients(&federation, "satellite-1").await;
        let mut plugin = NodePlugin::start(&federation, "satellite-1", "node-k");
        let mut node = pb::node_client::NodeClient::new(channel(&plugin.socket).await);
        let capability = mount_capability(Mode::SingleNodeWriter);
        let id = create_id(&mut controller, create("pvc-kill", 128 * MIB)).await;
        let (staging, target) = kubelet_dirs(&federation, "pvc-kill");
        stage_and_publish(&mut node, &id, &staging, &target, &capability, false).await;
        let before = write_files(&target, "before", 10);

        plugin.kill9();
        // The volume host serves on: the mounted filesystem takes writes
        // and fsyncs while no plugin runs.
        let during = write_files(&target, "during", 10);
        assert_files(&before, &target, &target);

        plugin.restart();
        let mut node = pb::node_client::NodeClient::new(channel(&plugin.socket).await);
        // kubelet's calls after a plugin restart find everything in place.
        stage_and_publish(&mut node, &id, &staging, &target, &capability, false).await;
        let (_, condition) = stats(
            node.node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
        );
        assert!(!condition.abnormal, "{condition:?}");
        let after = write_files(&target, "after", 4);

        // The volume host itself killed: the condition says so, staging
        // again is refused until the volume is unstaged, and then it works.
        let records = satellite_csi::csi::node::records::Records::new(&plugin.state_dir);
        let host = satellite_csi::csi::node::hosts::status(&records.socket(&id))
            .await
            .expect("the volume host answers");
        unsafe { libc::kill(host.pid as i32, libc::SIGKILL) };
        multicluster_tests::harness::wait_gone(host.pid);
        let (_, condition) = stats(
            node.node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: id.clone(),
                volume_path: target.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
        );
        assert!(condition.abnormal, "{condition:?}");
        let (refused, message) = code(
            node.node_stage_volume(stage(&id, &staging, capability.clone()))
                .await,
        );
        assert_eq!(refused, Code::FailedPrecondition, "{message}");
        unpublish_and_unstage(&mut node, &id, &staging, &target).await;
        assert!(std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .all(|line| !line.contains(records.volume_dir(&id).to_str().unwrap())));
        stage_and_publish(&mut node, &id, &staging, &target, &capability, false).await;
        for sums in [&before, &during, &after] {
            assert_files(sums, &target, &target);
        }
        unpublish_and_unstage(&mut node, &id, &staging, &target).await;

        // A reboot: the host, its mounts and loop device gone, the
        // plugin's records kept. kubelet stages again, and it works.
        stage_and_publish(&mut node, &id, &staging, &target, &capability, false).await;
        let host = satellite_csi::csi::node::hosts::status(&records.socket(&id))
            .await
            .expect("the volume host answers");
        let device = mounted_source(&staging).unwrap();
        for path in [&target, &staging] {
            let status = std::process::Command::new("umount")
                .arg(path)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let detached = std::process::Command::new("losetup")
            .args(["-d", &device])
            .status();
        assert!(detached.unwrap().success());
        unsafe { libc::kill(host.pid as i32, libc::SIGKILL) };
        multicluster_tests::harness::wait_gone(host.pid);
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(records.fuse_dir(&id))
            .status();
        stage_and_publish(&mut node, &id, &staging, &target, &capability, false).await;
        for sums in [&before, &during, &after] {
            assert_files(sums, &target, &target);
        }
        unpublish_and_unstage(&mut node, &id, &staging, &target).await;

        // Nothing written is lost: another node reads it all from the
        // central cluster.
        let (staging_a, target_a) = kubelet_dirs(&federation, "pvc-kill-a");
        node_a
            .node_stage_volume(stage(&id, &staging_a, capability.clone()))
            .await
            .unwrap();
        node_a
            .node_publish_volume(publish(
                &id,
                &staging_a,
                &target_a,
                capability.clone(),
                false,
            ))
            .await
            .unwrap();
        for sums in [&before, &during, &after] {
            assert_files(sums, &target, &target_a);
        }
        node_a
            .node_unpublish_volume(unpublish(&id, &target_a))
            .await
            .unwrap();
        node_a
            .node_unstage_volume(unstage(&id, &staging_a))
            .await
            .unwrap();
    });
}

const MARKER: &[u8] = b"tether-csi-plaintext-marker-0123456789abcdef";

/// A file of `MARKER` over and over, fsynced.
fn write_marker(dir: &Path) {
    use std::io::Write;
    let data: Vec<u8> = MARKER.iter().copied().cycle().take(1 << 20).collect();
    let mut file = std::fs::File::create(dir.join("marker.bin")).unwrap();
    file.write_all(&data).unwrap();
    file.sync_all().unwrap();
}

fn pools_contain(federation: &DevFederation, needle: &[u8]) -> bool {
    multicluster_tests::harness::files_under(&federation.dir().join("central"))
        .iter()
        .any(|file| {
            std::fs::read(file)
                .map(|data| multicluster_tests::harness::contains(&data, needle))
                .unwrap_or(false)
        })
}

#[test]
fn csi_node_encrypted_volumes_are_ciphertext_centrally_and_other_satellites_are_refused() {
    let federation = federation(2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (mut controller, mut node) = clients(&federation, "satellite-1").await;
        let capability = mount_capability(Mode::SingleNodeWriter);
        let key = "7a".repeat(32);
        let secrets = std::collections::HashMap::from([("encryptionKey".to_string(), key.clone())]);
        let sealed = create_id(
            &mut controller,
            pb::CreateVolumeRequest {
                parameters: [("encrypted".to_string(), "true".to_string())].into(),
                secrets: secrets.clone(),
                ..create("pvc-sealed", 64 * MIB)
            },
        )
        .await;
        let plain = create_id(&mut controller, create("pvc-plain", 64 * MIB)).await;
        let (staging, target) = kubelet_dirs(&federation, "pvc-sealed");

        // No key, or the wrong one: refused, nothing staged.
        let (refused, message) = code(
            node.node_stage_volume(stage(&sealed, &staging, capability.clone()))
                .await,
        );
        assert_eq!(refused, Code::InvalidArgument, "{message}");
        let wrong = pb::NodeStageVolumeRequest {
            secrets: [("encryptionKey".to_string(), "01".repeat(32))].into(),
            ..stage(&sealed, &staging, capability.clone())
        };
        let (refused, message) = code(node.node_stage_volume(wrong).await);
        assert_eq!(refused, Code::InvalidArgument, "{message}");
        assert_eq!(mounted_source(&staging), None);

        let keyed = pb::NodeStageVolumeRequest {
            secrets: secrets.clone(),
            ..stage(&sealed, &staging, capability.clone())
        };
        node.node_stage_volume(keyed).await.unwrap();
        node.node_publish_volume(publish(
            &sealed,
            &staging,
            &target,
            capability.clone(),
            false,
        ))
        .await
        .unwrap();
        write_marker(&target);
        let sums = write_files(&target, "sealed", 3);
        unpublish_and_unstage(&mut node, &sealed, &staging, &target).await;

        // The same bytes on a plain volume are in the pools, so the check
        // below can see plaintext where there is some.
        let (plain_staging, plain_target) = kubelet_dirs(&federation, "pvc-plain");
        stage_and_publish(
            &mut node,
            &plain,
            &plain_staging,
            &plain_target,
            &capability,
            false,
        )
        .await;
        write_marker(&plain_target);
        unpublish_and_unstage(&mut node, &plain, &plain_staging, &plain_target).await;
        assert!(pools_contain(&federation, MARKER));
        controller
            .delete_volume(pb::DeleteVolumeRequest {
                volume_id: plain.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            !pools_contain(&federation, MARKER),
            "plaintext of the encrypted volume in a central pool file"
        );

        // Satellite 2 can neither stage nor delete satellite 1's volume,
        // and what it creates lands under its own prefix.
        let two = channel(&socket(&federation, "satellite-2")).await;
        let mut controller_2 = pb::controller_client::ControllerClient::new(two.clone());
        let mut node_2 = pb::node_client::NodeClient::new(two);
        let (staging_2, _) = kubelet_dirs(&federation, "other-satellite");
        let keyed = pb::NodeStageVolumeRequest {
            secrets: secrets.clone(),
            ..stage(&sealed, &staging_2, capability.clone())
        };
        let (refused, message) = code(node_2.node_stage_volume(keyed).await);
        assert!(
            matches!(refused, Code::NotFound | Code::PermissionDenied),
            "{refused:?}: {message}"
        );
        let (refused, message) = code(
            controller_2
                .delete_volume(pb::DeleteVolumeRequest {
                    volume_id: sealed.clone(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(refused, Code::PermissionDenied, "{message}");
        let own = create_id(&mut controller_2, create("pvc-sealed", 64 * MIB)).await;
        assert!(own.starts_with("satellite-2-"), "{own}");
        assert_ne!(own, sealed);

        // Satellite 1's volume is whole, and reads back with its key.
        let keyed = pb::NodeStageVolumeRequest {
            secrets,
            ..stage(&sealed, &staging, capability.clone())
        };
        node.node_stage_volume(keyed).await.unwrap();
        node.node_publish_volume(publish(
            &sealed,
            &staging,
            &target,
            capability.clone(),
            true,
        ))
        .await
        .unwrap();
        assert_files(&sums, &target, &target);
        unpublish_and_unstage(&mut node, &sealed, &staging, &target).await;
    });
}

#[test]
fn csi_node_calls_answer_with_the_spec_codes() {
    let federation = federation(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (mut controller, mut node) = clients(&federation, "satellite-1").await;
        let capability = mount_capability(Mode::SingleNodeWriter);
        let id = create_id(&mut controller, create("pvc-codes", 64 * MIB)).await;
        let (staging, target) = kubelet_dirs(&federation, "pvc-codes");
        let elsewhere = federation.dir().join("kubelet/elsewhere");
        let unknown = "satellite-1-no-such-volume";
        let multi = mount_capability(Mode::MultiNodeMultiWriter);

        let stages: Vec<(&str, pb::NodeStageVolumeRequest, Code)> = vec![
            (
                "no volume id",
                stage("", &staging, capability.clone()),
                Code::InvalidArgument,
            ),
            (
                "no staging path",
                pb::NodeStageVolumeRequest {
                    staging_target_path: String::new(),
                    ..stage(&id, &staging, capability.clone())
                },
                Code::InvalidArgument,
            ),
            (
                "a relative staging path",
                pb::NodeStageVolumeRequest {
                    staging_target_path: "relative/path".into(),
                    ..stage(&id, &staging, capability.clone())
                },
                Code::InvalidArgument,
            ),
            (
                "no capability",
                pb::NodeStageVolumeRequest {
                    volume_capability: None,
                    ..stage(&id, &staging, capability.clone())
                },
                Code::InvalidArgument,
            ),
            (
                "a multi-node mode",
                stage(&id, &staging, multi.clone()),
                Code::InvalidArgument,
            ),
            (
                "an unknown volume",
                stage(unknown, &staging, capability.clone()),
                Code::NotFound,
            ),
        ];
        for (case, request, expected) in stages {
            let (got, message) = code(node.node_stage_volume(request).await);
            assert_eq!(got, expected, "stage with {case}: {message}");
        }

        // Publishing what is not staged.
        let (got, message) = code(
            node.node_publish_volume(publish(&id, &staging, &target, capability.clone(), false))
                .await,
        );
        assert_eq!(got, Code::FailedPrecondition, "{message}");

        node.node_stage_volume(stage(&id, &staging, capability.clone()))
            .await
            .unwrap();
        let (got, message) = code(
            node.node_stage_volume(stage(&id, &elsewhere, capability.clone()))
                .await,
        );
        assert_eq!(
            got,
            Code::AlreadyExists,
            "stage at a second path: {message}"
        );
        let block = block_capability();
        let (got, message) = code(node.node_stage_volume(stage(&id, &staging, block)).await);
        assert_eq!(got, Code::AlreadyExists, "stage as block too: {message}");

        let publishes: Vec<(&str, pb::NodePublishVolumeRequest, Code)> = vec![
            (
                "no volume id",
                publish("", &staging, &target, capability.clone(), false),
                Code::InvalidArgument,
            ),
            (
                "no target path",
                pb::NodePublishVolumeRequest {
                    target_path: String::new(),
                    ..publish(&id, &staging, &target, capability.clone(), false)
                },
                Code::InvalidArgument,
            ),
            (
                "no capability",
                pb::NodePublishVolumeRequest {
                    volume_capability: None,
                    ..publish(&id, &staging, &target, capability.clone(), false)
                },
                Code::InvalidArgument,
            ),
            (
                "no staging path",
                pb::NodePublishVolumeRequest {
                    staging_target_path: String::new(),
                    ..publish(&id, &staging, &target, capability.clone(), false)
                },
                Code::FailedPrecondition,
            ),
            (
                "another staging path",
                publish(&id, &elsewhere, &target, capability.clone(), false),
                Code::FailedPrecondition,
            ),
            (
                "an unstaged volume",
                publish(unknown, &staging, &target, capability.clone(), false),
                Code::FailedPrecondition,
            ),
        ];
        for (case, request, expected) in publishes {
            let (got, message) = code(node.node_publish_volume(request).await);
            assert_eq!(got, expected, "publish with {case}: {message}");
        }
        node.node_publish_volume(publish(&id, &staging, &target, capability.clone(), false))
            .await
            .unwrap();
        let (got, message) = code(
            node.node_publish_volume(publish(&id, &staging, &target, capability.clone(), true))
                .await,
        );
        assert_eq!(
            got,
            Code::AlreadyExists,
            "published again read-only: {message}"
        );

        let stats = |id: &str, path: &Path| pb::NodeGetVolumeStatsRequest {
            volume_id: id.into(),
            volume_path: path.display().to_string(),
            ..Default::default()
        };
        for (case, request, expected) in [
            ("no volume id", stats("", &target), Code::InvalidArgument),
            ("no path", stats(&id, Path::new("")), Code::InvalidArgument),
            ("an unknown volume", stats(unknown, &target), Code::NotFound),
            (
                "a path not the volume's",
                stats(&id, &elsewhere),
                Code::NotFound,
            ),
        ] {
            let (got, message) = code(node.node_get_volume_stats(request).await);
            assert_eq!(got, expected, "stats with {case}: {message}");
        }
        let expand = |id: &str, path: &Path| pb::NodeExpandVolumeRequest {
            volume_id: id.into(),
            volume_path: path.display().to_string(),
            ..Default::default()
        };
        for (case, request, expected) in [
            ("no volume id", expand("", &target), Code::InvalidArgument),
            ("no path", expand(&id, Path::new("")), Code::InvalidArgument),
            (
                "an unknown volume",
                expand(unknown, &target),
                Code::NotFound,
            ),
            (
                "more than the volume has",
                pb::NodeExpandVolumeRequest {
                    capacity_range: Some(pb::CapacityRange {
                        required_bytes: 1 << 40,
                        limit_bytes: 0,
                    }),
                    ..expand(&id, &target)
                },
                Code::OutOfRange,
            ),
        ] {
            let (got, message) = code(node.node_expand_volume(request).await);
            assert_eq!(got, expected, "expand with {case}: {message}");
        }
        for (case, request) in [
            ("no volume id", unpublish("", &target)),
            ("no target", unpublish(&id, Path::new(""))),
        ] {
            let (got, message) = code(node.node_unpublish_volume(request).await);
            assert_eq!(
                got,
                Code::InvalidArgument,
                "unpublish with {case}: {message}"
            );
        }
        for (case, request) in [
            ("no volume id", unstage("", &staging)),
            ("no staging path", unstage(&id, Path::new(""))),
        ] {
            let (got, message) = code(node.node_unstage_volume(request).await);
            assert_eq!(got, Code::InvalidArgument, "unstage with {case}: {message}");
        }
        // Unstaging while published is refused; what is not there succeeds.
        let (got, message) = code(node.node_unstage_volume(unstage(&id, &staging)).await);
        assert_eq!(got, Code::FailedPrecondition, "{message}");
        node.node_unpublish_volume(unpublish(unknown, &target))
            .await
            .unwrap();
        node.node_unstage_volume(unstage(unknown, &staging))
            .await
            .unwrap();
        assert!(
            mounted_source(&target).is_some(),
            "an unknown volume's calls touched nothing"
        );

        unpublish_and_unstage(&mut node, &id, &staging, &target).await;
        // Capabilities: what kubelet reads to decide which calls to make.
        let capabilities: Vec<i32> = node
            .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .into_iter()
            .filter_map(|c| {
                c.r#type
                    .map(|pb::node_service_capability::Type::Rpc(rpc)| rpc.r#type)
            })
            .collect();
        use pb::node_service_capability::rpc::Type;
        for wanted in [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::ExpandVolume,
            Type::VolumeCondition,
        ] {
            assert!(capabilities.contains(&(wanted as i32)), "{wanted:?}");
        }
    });
}

#[test]
fn dev_up_comes_back_while_a_node_plugin_keeps_a_volume_staged() {
    let federation = federation(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut plugin = NodePlugin::start(&federation, "satellite-1", "node-s");
    let capability = mount_capability(Mode::SingleNodeWriter);
    let (staging, target) = kubelet_dirs(&federation, "pvc-stays");
    let (id, sums) = runtime.block_on(async {
        let one = channel(&socket(&federation, "satellite-1")).await;
        let mut controller = pb::controller_client::ControllerClient::new(one);
        let mut node = pb::node_client::NodeClient::new(channel(&plugin.socket).await);
        let id = create_id(&mut controller, create("pvc-stays", 64 * MIB)).await;
        stage_and_publish(&mut node, &id, &staging, &target, &capability, false).await;
        (id.clone(), write_files(&target, "stays", 4))
    });
    // The central side restarts under a node that keeps its volume staged
    // (its staging stays recorded): dev up does not wait on it.
    plugin.kill9();
    federation.down().unwrap();
    let federation = federation.up().unwrap();
    plugin.restart();
    runtime.block_on(async {
        let mut node = pb::node_client::NodeClient::new(channel(&plugin.socket).await);
        assert_files(&sums, &target, &target);
        unpublish_and_unstage(&mut node, &id, &staging, &target).await;
        let one = channel(&socket(&federation, "satellite-1")).await;
        pb::controller_client::ControllerClient::new(one)
            .delete_volume(pb::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
}
