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
