//! A satellite's CSI identity and controller services (`dev up
//! --satellites 2`: each satellite serves them on `csi.sock` in its state
//! directory), called over their Unix sockets as the external-provisioner
//! and kubelet do: volumes land in the central cluster under the
//! satellite's prefix grant, every call is idempotent, and errors carry the
//! codes the CSI spec names.

use multicluster_tests::csi::*;
use multicluster_tests::harness::DevFederation;
use satellite_csi::csi::pb;
use satellite_csi::csi::pb::volume_capability::access_mode::Mode;
use tonic::Code;

fn delete(volume_id: &str) -> pb::DeleteVolumeRequest {
    pb::DeleteVolumeRequest {
        volume_id: volume_id.into(),
        ..Default::default()
    }
}

#[test]
fn csi_controller_provisions_under_the_grant_idempotently_with_the_spec_codes() {
    let federation = DevFederation::builder()
        .nodes(1)
        .satellites(2)
        .start()
        .unwrap();
    federation
        .tether_ok(&[
            "grant",
            "add",
            "satellite-1",
            "--prefix",
            "satellite-1-",
            "--capacity",
            "1GiB",
            "--count",
            "3",
        ])
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let one = channel(&socket(&federation, "satellite-1")).await;
        let mut identity = pb::identity_client::IdentityClient::new(one.clone());
        let mut controller = pb::controller_client::ControllerClient::new(one);

        // Identity.
        let info = identity
            .get_plugin_info(pb::GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "csi.tether.io");
        assert!(!info.vendor_version.is_empty());
        let capabilities = identity
            .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities;
        assert_eq!(capabilities.len(), 2, "{capabilities:?}");
        let probe = identity
            .probe(pb::ProbeRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(probe.ready, Some(true));

        // Create, and the same call again: the same volume.
        let created = controller
            .create_volume(create("pvc-a", 100 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(created.volume_id, "satellite-1-pvc-a");
        assert_eq!(created.capacity_bytes, 100 * MIB);
        let view = federation
            .tether_json(&["volume", "get", "satellite-1-pvc-a"])
            .unwrap();
        assert_eq!(view["size_bytes"], 100 * MIB);
        let again = controller
            .create_volume(create("pvc-a", 100 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(again, created);
        let (refused, message) = code(controller.create_volume(create("pvc-a", 200 * MIB)).await);
        assert_eq!(refused, Code::AlreadyExists, "{message}");
        // GetCapacity: what the grant still allows.
        let capacity = |controller: &mut Controller| {
            let mut controller = controller.clone();
            async move {
                controller
                    .get_capacity(pb::GetCapacityRequest::default())
                    .await
                    .unwrap()
                    .into_inner()
                    .available_capacity
            }
        };
        assert_eq!(capacity(&mut controller).await, 924 * MIB);

        // `tether csi` calls the same socket.
        let listed = federation.tether_ok(&["csi", "list"]).unwrap();
        assert!(listed.contains("satellite-1-pvc-a\t100MiB"), "{listed}");
        let info = federation.tether_ok(&["csi", "info"]).unwrap();
        assert!(
            info.contains("csi.tether.io") && info.contains("ready:   true"),
            "{info}"
        );

        // Bad requests, each with INVALID_ARGUMENT naming what is wrong.
        let mut no_capabilities = create("pvc-x", MIB);
        no_capabilities.volume_capabilities.clear();
        let mut shared = create("pvc-x", MIB);
        shared.volume_capabilities = vec![mount_capability(Mode::MultiNodeMultiWriter)];
        let mut cloned = create("pvc-x", MIB);
        cloned.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Volume(
                pb::volume_content_source::VolumeSource {
                    volume_id: "satellite-1-pvc-a".into(),
                },
            )),
        });
        let mut unknown = create("pvc-x", MIB);
        unknown.parameters.insert("colour".into(), "blue".into());
        for (what, request, needle) in [
            ("no name", create("", MIB), "name"),
            ("no capabilities", no_capabilities, "volume_capabilities"),
            ("multi-node writers", shared, "MultiNodeMultiWriter"),
            ("a content source", cloned, "snapshot or another volume"),
            ("an unknown parameter", unknown, "colour"),
        ] {
            let (refused, message) = code(controller.create_volume(request).await);
            assert_eq!(refused, Code::InvalidArgument, "{what}: {message}");
            assert!(message.contains(needle), "{what}: {message}");
        }

        // The grant's quota: RESOURCE_EXHAUSTED, naming the grant.
        let (refused, message) = code(
            controller
                .create_volume(create("pvc-big", 2048 * MIB))
                .await,
        );
        assert_eq!(refused, Code::ResourceExhausted, "{message}");
        assert!(message.contains("prefix:satellite-1-"), "{message}");
        for name in ["pvc-b", "pvc-c"] {
            controller
                .create_volume(create(name, 10 * MIB))
                .await
                .unwrap();
        }
        let (refused, message) = code(controller.create_volume(create("pvc-d", 10 * MIB)).await);
        assert_eq!(refused, Code::ResourceExhausted, "{message}");
        // Its count is reached: nothing more can be provisioned.
        assert_eq!(capacity(&mut controller).await, 0);

        // ListVolumes, two at a time.
        let first = controller
            .list_volumes(pb::ListVolumesRequest {
                max_entries: 2,
                starting_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.entries.len(), 2);
        assert!(!first.next_token.is_empty());
        let rest = controller
            .list_volumes(pb::ListVolumesRequest {
                max_entries: 2,
                starting_token: first.next_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.entries.len(), 1);
        assert!(rest.next_token.is_empty());
        let mut names: Vec<String> = first
            .entries
            .iter()
            .chain(&rest.entries)
            .map(|entry| entry.volume.as_ref().unwrap().volume_id.clone())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "satellite-1-pvc-a",
                "satellite-1-pvc-b",
                "satellite-1-pvc-c"
            ]
        );
        let (refused, _) = code(
            controller
                .list_volumes(pb::ListVolumesRequest {
                    max_entries: 0,
                    starting_token: "not-a-token".into(),
                })
                .await,
        );
        assert_eq!(refused, Code::Aborted);

        // ValidateVolumeCapabilities.
        let validate = |id: &str, mode: Mode| pb::ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_capabilities: vec![mount_capability(mode)],
            ..Default::default()
        };
        let confirmed = controller
            .validate_volume_capabilities(validate("satellite-1-pvc-a", Mode::SingleNodeWriter))
            .await
            .unwrap()
            .into_inner();
        assert!(confirmed.confirmed.is_some(), "{confirmed:?}");
        let unconfirmed = controller
            .validate_volume_capabilities(validate("satellite-1-pvc-a", Mode::MultiNodeMultiWriter))
            .await
            .unwrap()
            .into_inner();
        assert!(unconfirmed.confirmed.is_none() && !unconfirmed.message.is_empty());
        let (refused, _) = code(
            controller
                .validate_volume_capabilities(validate("satellite-1-none", Mode::SingleNodeWriter))
                .await,
        );
        assert_eq!(refused, Code::NotFound);

        // Expansion: larger in the central cluster; a smaller ask is a no-op.
        let expand = |required: i64| pb::ControllerExpandVolumeRequest {
            volume_id: "satellite-1-pvc-a".into(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: required,
                limit_bytes: 0,
            }),
            volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
            ..Default::default()
        };
        let grown = controller
            .controller_expand_volume(expand(150 * MIB))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(grown.capacity_bytes, 150 * MIB);
        assert!(grown.node_expansion_required);
        let view = federation
            .tether_json(&["volume", "get", "satellite-1-pvc-a"])
            .unwrap();
        assert_eq!(view["size_bytes"], 150 * MIB);
        let same = controller
            .controller_expand_volume(expand(120 * MIB))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(same.capacity_bytes, 150 * MIB);

        // Another satellite's plugin cannot touch these volumes.
        let two = channel(&socket(&federation, "satellite-2")).await;
        let mut other = pb::controller_client::ControllerClient::new(two);
        let (refused, message) = code(other.delete_volume(delete("satellite-1-pvc-b")).await);
        assert_eq!(refused, Code::PermissionDenied, "{message}");
        let (refused, message) = code(other.create_volume(create("pvc-a", MIB)).await);
        assert_eq!(refused, Code::PermissionDenied, "{message}");

        // An attached volume is not deleted: FAILED_PRECONDITION.
        let attached_socket = federation.dir().join("pvc-b.sock");
        federation
            .tether_ok(&[
                "volume",
                "attach",
                "satellite-1-pvc-b",
                "--from",
                "satellite-1",
                "--nbd",
                &format!("unix:{}", attached_socket.display()),
            ])
            .unwrap();
        let (refused, message) = code(controller.delete_volume(delete("satellite-1-pvc-b")).await);
        assert_eq!(refused, Code::FailedPrecondition, "{message}");

        // Delete, twice: both succeed.
        for _ in 0..2 {
            controller
                .delete_volume(delete("satellite-1-pvc-a"))
                .await
                .unwrap();
        }
        let (refused, _) = code(
            controller
                .delete_volume(pb::DeleteVolumeRequest::default())
                .await,
        );
        assert_eq!(refused, Code::InvalidArgument);
        assert!(
            federation
                .tether(&["volume", "get", "satellite-1-pvc-a"])
                .status
                .code()
                != Some(0)
        );

        // An encrypted StorageClass: the data key is wrapped with the key in
        // the CSI secret; without it, INVALID_ARGUMENT.
        let mut sealed = create("pvc-sealed", 16 * MIB);
        sealed.parameters.insert("encrypted".into(), "true".into());
        let (refused, message) = code(controller.create_volume(sealed.clone()).await);
        assert_eq!(refused, Code::InvalidArgument, "{message}");
        assert!(message.contains("encryptionKey"), "{message}");
        sealed
            .secrets
            .insert("encryptionKey".into(), "ab".repeat(32));
        let volume = controller
            .create_volume(sealed.clone())
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let view = federation
            .tether_json(&["volume", "get", &volume.volume_id])
            .unwrap();
        assert_eq!(view["encryption"]["cipher"], "xts-aes-256", "{view}");
        // The same name without encryption is not the same volume.
        let (refused, _) = code(
            controller
                .create_volume(create("pvc-sealed", 16 * MIB))
                .await,
        );
        assert_eq!(refused, Code::AlreadyExists);
    });
}

#[test]
fn csi_get_capacity_is_what_the_grant_and_the_central_nodes_room_both_allow() {
    let federation = DevFederation::builder()
        .nodes(2)
        .capacity("512MiB")
        .satellites(1)
        .start()
        .unwrap();
    federation
        .tether_ok(&[
            "grant",
            "add",
            "satellite-1",
            "--prefix",
            "satellite-1-",
            "--capacity",
            "100GiB",
            "--count",
            "10",
        ])
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut controller = pb::controller_client::ControllerClient::new(
            channel(&socket(&federation, "satellite-1")).await,
        );
        let probe = controller.clone();
        let capacity = |copies: &str| {
            let mut controller = probe.clone();
            let request = pb::GetCapacityRequest {
                parameters: [("replicas".to_string(), copies.to_string())].into(),
                ..Default::default()
            };
            async move {
                let answer = controller.get_capacity(request).await.unwrap().into_inner();
                (
                    answer.available_capacity,
                    answer.maximum_volume_size.unwrap(),
                )
            }
        };
        let (one, one_largest) = capacity("1").await;
        let (two, two_largest) = capacity("2").await;
        let (three, _) = capacity("3").await;
        // Far below the grant's 100 GiB: the two 512 MiB nodes decide.
        assert!(one > 0 && one <= 1024 * MIB, "{one}");
        assert!(one_largest <= 512 * MIB, "{one_largest}");
        assert_eq!(two, one / 2, "two copies take twice the room");
        assert_eq!(two_largest, one_largest.min(two));
        assert_eq!(three, 0, "three copies need three nodes");
        controller
            .create_volume(create("pvc-room", 200 * MIB))
            .await
            .unwrap();
        let (after, _) = capacity("1").await;
        assert_eq!(one - after, 200 * MIB);
    });
}
