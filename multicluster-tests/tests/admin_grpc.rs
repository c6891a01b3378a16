//! The admin API over gRPC (`tether.admin.v1.Admin`), on the registry of a
//! real `tether dev up` (etcd, storage nodes), called with tonic over
//! mutual TLS: the same answers as the JSON API, the same authorisation by
//! role and grant, and the attachment stream a satellite follows — acted
//! out here by the test as the satellite (it reports what it serves, which
//! is what the attach waits for), cut off when the satellite is removed.

use std::time::{Duration, Instant};

use admin_grpc::pb;
use multicluster_tests::harness::DevFederation;
use tether_tls::{Credentials, Identity, Role, TlsContext};
use tonic::Code;

fn client(federation: &DevFederation, credentials: &std::path::Path) -> admin_grpc::Client {
    let tls = TlsContext::new(&Credentials::load(credentials).unwrap()).unwrap();
    admin_grpc::connect(&format!("https://{}", federation.admin_addr()), tls).unwrap()
}

fn code<T: std::fmt::Debug>(answer: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let status = answer.expect_err("refused");
    (status.code(), status.message().to_string())
}

#[test]
fn grpc_admin_api_serves_the_same_operations_with_the_same_authorisation() {
    let federation = DevFederation::builder().nodes(2).start().unwrap();
    let admin_dir = federation.issue(&Identity::new("central", Role::Admin, "grpc"), None);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut admin = client(&federation, &admin_dir);

        // Volumes: created over gRPC, seen the same through the JSON API.
        let created = admin
            .create_volume(pb::CreateVolumeRequest {
                name: "shared".into(),
                size_bytes: 32 << 20,
                replicas: 2,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((created.size_bytes, created.copies.len()), (32 << 20, 2));
        let json = federation
            .tether_json(&["volume", "get", "shared"])
            .unwrap();
        assert_eq!(json["master"], created.master.as_str());
        assert_eq!(json["epoch"], created.epoch);
        admin
            .create_volume(pb::CreateVolumeRequest {
                name: "private".into(),
                size_bytes: 16 << 20,
                ..Default::default()
            })
            .await
            .unwrap();
        let listed = admin.list_volumes(pb::Empty {}).await.unwrap().into_inner();
        let mut names: Vec<_> = listed.volumes.iter().map(|v| v.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["private", "shared"]);
        let (refused, message) = code(
            admin
                .create_volume(pb::CreateVolumeRequest {
                    name: "shared".into(),
                    size_bytes: 1 << 20,
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(refused, Code::AlreadyExists, "{message}");
        assert!(
            message.contains("volume shared already exists"),
            "{message}"
        );

        // Satellites and grants, over gRPC; the JSON API sees them.
        let token = admin
            .add_satellite(pb::AddSatelliteRequest {
                name: "edge-a".into(),
                ttl_seconds: None,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let edge_a_dir = federation.join_satellite("edge-a", &token).unwrap();
        let edge_b_dir = federation.satellite("edge-b");
        admin
            .add_grant(pb::Grant {
                satellite: "edge-a".into(),
                kind: "volume".into(),
                volume: "shared".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let grants = federation
            .tether_json(&["grant", "list", "--satellite", "edge-a"])
            .unwrap();
        assert_eq!(grants[0]["volume"], "shared", "{grants}");
        let clusters = admin
            .list_clusters(pb::Empty {})
            .await
            .unwrap()
            .into_inner();
        let edge_a = clusters
            .clusters
            .iter()
            .find(|c| c.name == "edge-a")
            .unwrap();
        assert_eq!(
            (edge_a.role.as_str(), edge_a.state.as_str()),
            ("satellite", "joined")
        );

        // A satellite sees and reaches only what its grants cover, and none
        // of the admin's operations.
        let mut edge_a = client(&federation, &edge_a_dir);
        let seen = edge_a
            .list_volumes(pb::Empty {})
            .await
            .unwrap()
            .into_inner();
        let names: Vec<_> = seen.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["shared"]);
        let (refused, message) = code(
            edge_a
                .get_volume(pb::VolumeName {
                    name: "private".into(),
                })
                .await,
        );
        assert_eq!(refused, Code::PermissionDenied, "{message}");
        assert!(message.contains("no grant for volume private"), "{message}");
        for (what, answer) in [
            (
                "ListClusters",
                code(edge_a.list_clusters(pb::Empty {}).await),
            ),
            ("ListNodes", code(edge_a.list_nodes(pb::Empty {}).await)),
            (
                "VerifyVolume",
                code(
                    edge_a
                        .verify_volume(pb::VerifyVolumeRequest {
                            name: "shared".into(),
                            repair: false,
                        })
                        .await,
                ),
            ),
        ] {
            assert_eq!(answer.0, Code::PermissionDenied, "{what}: {}", answer.1);
            assert!(
                answer.1.contains("may not call gRPC"),
                "{what}: {}",
                answer.1
            );
        }
        let mut edge_b = client(&federation, &edge_b_dir);
        let refused = edge_b
            .watch_attachments(pb::SatelliteName {
                name: "edge-a".into(),
            })
            .await
            .map(|_| ())
            .expect_err("another satellite's attachments are refused");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

        // The attachment stream: the current set at once, then the attach
        // the admin asks for, which completes when the satellite reports it.
        let mut watch = edge_a
            .watch_attachments(pb::SatelliteName {
                name: "edge-a".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert!(first.attachments.is_empty(), "{first:?}");
        let mut attacher = admin.clone();
        let attach = tokio::spawn(async move {
            attacher
                .attach_volume(pb::AttachVolumeRequest {
                    name: "shared".into(),
                    nbd: "unix:/run/edge-a/shared.sock".into(),
                    from: Some("edge-a".into()),
                    ..Default::default()
                })
                .await
        });
        let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await
            .expect("the stream carries the new attachment")
            .unwrap()
            .unwrap();
        assert_ne!(next.version, first.version);
        assert_eq!(next.attachments.len(), 1, "{next:?}");
        assert_eq!(next.attachments[0].volume, "shared");
        assert_eq!(next.attachments[0].endpoint, "unix:/run/edge-a/shared.sock");
        let served = pb::PresentingStatus {
            version: 1,
            node: "edge-a".into(),
            serving: vec![pb::ServingEndpoint {
                endpoint: "unix:/run/edge-a/shared.sock".into(),
                uri: "nbd+unix:///shared?socket=/run/edge-a/shared.sock".into(),
            }],
            ..Default::default()
        };
        // Reporting for a volume outside its grants is refused.
        let (refused, _) = code(
            edge_a
                .report_presenting(pb::SatellitePresenting {
                    satellite: "edge-a".into(),
                    volumes: vec![pb::VolumePresenting {
                        volume: "private".into(),
                        status: Some(served.clone()),
                    }],
                })
                .await,
        );
        assert_eq!(refused, Code::PermissionDenied);
        edge_a
            .report_presenting(pb::SatellitePresenting {
                satellite: "edge-a".into(),
                volumes: vec![pb::VolumePresenting {
                    volume: "shared".into(),
                    status: Some(served),
                }],
            })
            .await
            .unwrap();
        let uri = attach.await.unwrap().unwrap().into_inner().uri;
        assert_eq!(uri, "nbd+unix:///shared?socket=/run/edge-a/shared.sock");
        let json = federation
            .tether_json(&["volume", "get", "shared"])
            .unwrap();
        assert_eq!(json["attachments"][0]["from"], "edge-a", "{json}");

        // A satellite holds a bounded number of watches (each holds store
        // watches on the registry): the fifth is refused while four are open,
        // and a seat given back serves the next.
        let mut watches = Vec::new();
        // The registry's MAX_WATCHES_PER_SATELLITE.
        for _ in 0..4 {
            let mut stream = edge_b
                .watch_attachments(pb::SatelliteName {
                    name: "edge-b".into(),
                })
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap().unwrap();
            watches.push(stream);
        }
        let (refused, message) = code(
            edge_b
                .watch_attachments(pb::SatelliteName {
                    name: "edge-b".into(),
                })
                .await,
        );
        assert_eq!(refused, Code::ResourceExhausted, "{message}");
        assert!(
            message.contains("already holds 4 attachment watches"),
            "{message}"
        );
        drop(watches.pop());
        let given_back = Instant::now();
        let reopened = loop {
            match edge_b
                .watch_attachments(pb::SatelliteName {
                    name: "edge-b".into(),
                })
                .await
            {
                Ok(stream) => break stream,
                Err(status) if status.code() == Code::ResourceExhausted => {
                    assert!(
                        given_back.elapsed() < Duration::from_secs(5),
                        "the seat was not given back"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(status) => panic!("{status:?}"),
            }
        };
        drop((watches, reopened));

        // Removing the satellite ends its stream within 5 s, refused.
        let removed_at = Instant::now();
        admin
            .remove_satellite(pb::ClusterName {
                name: "edge-a".into(),
            })
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .expect("the stream of a removed satellite ends within 5 s");
        let status = ended.expect_err("refused, not a clean end");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("was removed"), "{status:?}");
        assert!(removed_at.elapsed() < Duration::from_secs(5));
        let (refused, _) = code(edge_a.list_volumes(pb::Empty {}).await);
        assert_eq!(refused, Code::PermissionDenied);
    });
}
