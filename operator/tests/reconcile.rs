//! The operator's reconcile logic against a real registry (`tether dev up
//! --dr`, etcd, storage nodes, a paired DR cluster), over the gRPC admin
//! API as the operator's admin credential: satellites added, given a new
//! token while their Secret is gone, reported joined and removed; grants
//! made, left alone when unchanged, replaced when changed, refused with the
//! registry's reason, revoked; a DR link made and reported.

use multicluster_tests::harness::DevFederation;
use tether_operator::crd::{DrLinkSpec, SatelliteClusterSpec, VolumeGrantSpec};
use tether_operator::reconcile;
use tether_tls::{Credentials, Identity, Role, TlsContext};

fn admin(federation: &DevFederation) -> admin_grpc::Client {
    let operator = federation.issue(&Identity::new("central", Role::Admin, "operator"), None);
    let tls = TlsContext::new(&Credentials::load(&operator).unwrap()).unwrap();
    admin_grpc::connect(&format!("https://{}", federation.admin_addr()), tls).unwrap()
}

#[test]
fn satellites_and_grants_reach_the_registry_and_report_their_state() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "shared", "--size", "16MiB"])
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut admin = admin(&federation);
        let spec = SatelliteClusterSpec {
            satellite_name: None,
            token_ttl_seconds: Some(600),
        };
        let added = reconcile::satellite(&mut admin, "edge-op", &spec, "edge-op-join-token", false)
            .await
            .unwrap();
        let token = added
            .new_token
            .clone()
            .expect("a new satellite gets a token");
        assert_eq!(added.status.state.as_deref(), Some("pending"));
        assert_eq!(
            (added.ready.ready, added.ready.reason),
            (false, "AwaitingJoin")
        );
        // Its Secret exists: nothing new. Gone before the join: a new token.
        let again = reconcile::satellite(&mut admin, "edge-op", &spec, "edge-op-join-token", true)
            .await
            .unwrap();
        assert_eq!(again.new_token, None);
        let reminted =
            reconcile::satellite(&mut admin, "edge-op", &spec, "edge-op-join-token", false)
                .await
                .unwrap();
        let token2 = reminted.new_token.expect("a token again");
        assert_ne!(token2, token);
        federation.join_satellite("edge-op", &token2).unwrap();
        let joined = reconcile::satellite(&mut admin, "edge-op", &spec, "edge-op-join-token", true)
            .await
            .unwrap();
        assert_eq!((joined.ready.ready, joined.ready.reason), (true, "Joined"));
        assert_eq!(joined.new_token, None, "a joined satellite gets no token");

        // Grants: made, then left alone while unchanged.
        let volume_grant = VolumeGrantSpec {
            satellite: "edge-op".into(),
            volume: Some("shared".into()),
            read_only: true,
            prefix: None,
            capacity: None,
            count: None,
        };
        let (status, ready) = reconcile::grant(&mut admin, &volume_grant).await.unwrap();
        assert!(ready.ready, "{ready:?}");
        assert_eq!(status.grant_id.as_deref(), Some("volume:shared"));
        let listed = federation
            .tether_json(&["grant", "list", "--satellite", "edge-op"])
            .unwrap();
        assert_eq!(listed[0]["read_only"], true, "{listed}");
        let created = listed[0]["created_unix_ms"].clone();
        reconcile::grant(&mut admin, &volume_grant).await.unwrap();
        let unchanged = federation
            .tether_json(&["grant", "list", "--satellite", "edge-op"])
            .unwrap();
        assert_eq!(unchanged[0]["created_unix_ms"], created, "left alone");
        // Changed: replaced.
        let writable = VolumeGrantSpec {
            read_only: false,
            ..volume_grant.clone()
        };
        reconcile::grant(&mut admin, &writable).await.unwrap();
        let replaced = federation
            .tether_json(&["grant", "list", "--satellite", "edge-op"])
            .unwrap();
        assert_eq!(replaced[0]["read_only"], false, "{replaced}");

        let prefix_grant = VolumeGrantSpec {
            satellite: "edge-op".into(),
            volume: None,
            read_only: false,
            prefix: Some("edge-op-".into()),
            capacity: Some("10Gi".into()),
            count: Some(3),
        };
        let (status, ready) = reconcile::grant(&mut admin, &prefix_grant).await.unwrap();
        assert!(ready.ready, "{ready:?}");
        assert_eq!(status.grant_id.as_deref(), Some("prefix:edge-op-"));
        let listed = federation
            .tether_json(&["grant", "list", "--satellite", "edge-op"])
            .unwrap();
        let prefix = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|grant| grant["kind"] == "prefix")
            .expect("the prefix grant");
        assert_eq!(prefix["capacity_bytes"], 10u64 << 30, "{listed}");
        assert_eq!(prefix["count"], 3);

        // What the registry refuses is reported with its reason; a spec
        // that asks for nothing valid, with what is wrong.
        let (_, refused) = reconcile::grant(
            &mut admin,
            &VolumeGrantSpec {
                satellite: "nobody".into(),
                ..volume_grant.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!((refused.ready, refused.reason), (false, "Refused"));
        assert!(refused.message.contains("nobody"), "{refused:?}");
        let (_, invalid) = reconcile::grant(
            &mut admin,
            &VolumeGrantSpec {
                prefix: Some("x-".into()),
                ..volume_grant.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!((invalid.ready, invalid.reason), (false, "Invalid"));

        reconcile::remove_grant(&mut admin, &writable)
            .await
            .unwrap();
        reconcile::remove_grant(&mut admin, &writable)
            .await
            .unwrap();
        let left = federation
            .tether_json(&["grant", "list", "--satellite", "edge-op"])
            .unwrap();
        assert_eq!(left.as_array().unwrap().len(), 1, "{left}");

        // Removed: revoked, and reported so; removing again is no error.
        reconcile::remove_satellite(&mut admin, "edge-op")
            .await
            .unwrap();
        reconcile::remove_satellite(&mut admin, "edge-op")
            .await
            .unwrap();
        let revoked =
            reconcile::satellite(&mut admin, "edge-op", &spec, "edge-op-join-token", false)
                .await
                .unwrap();
        assert_eq!(
            (revoked.ready.ready, revoked.ready.reason),
            (false, "Revoked")
        );
        assert_eq!(
            revoked.new_token, None,
            "a removed name is never issued again"
        );
    });
}

#[test]
fn a_dr_link_is_made_once_and_reported() {
    let federation = DevFederation::builder().nodes(1).dr().start().unwrap();
    multicluster_tests::dr::pair(&federation, &[]).unwrap();
    federation.create_attached("db", "16MiB").unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut admin = admin(&federation);
        let spec = DrLinkSpec {
            volume: "db".into(),
            to: "dr".into(),
            rpo_seconds: Some(10),
            replicas: Some(1),
        };
        let (status, _) = reconcile::dr_link(&mut admin, &spec).await.unwrap();
        assert_eq!(status.role.as_deref(), Some("primary"));
        let links = federation.tether_json(&["dr", "list"]).unwrap();
        assert_eq!(links.as_array().unwrap().len(), 1, "{links}");
        assert_eq!(links[0]["rpo_secs"], 10);
        // Again: the same link reported, not a second one.
        let (again, _) = reconcile::dr_link(&mut admin, &spec).await.unwrap();
        assert_eq!(again.role.as_deref(), Some("primary"));
        assert_eq!(
            federation
                .tether_json(&["dr", "list"])
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // Asked to go elsewhere: reported, not re-linked.
        let (_, elsewhere) = reconcile::dr_link(
            &mut admin,
            &DrLinkSpec {
                to: "other".into(),
                ..spec.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (elsewhere.ready, elsewhere.reason),
            (false, "LinkedElsewhere")
        );
    });
}
