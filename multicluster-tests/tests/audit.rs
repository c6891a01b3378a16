//! The audit log on a real `tether dev up` (etcd): every admin action, over
//! JSON or gRPC, allowed or refused, is recorded with who (certificate
//! identity), what, when and the outcome; reads are not; and an entry
//! edited in etcd afterwards makes `tether audit list` fail, naming it.

use coord_store::CoordStore;
use multicluster_tests::harness::DevFederation;
use serde_json::Value;
use tether_tls::{Credentials, Identity, Role, TlsContext};

fn find<'a>(entries: &'a [Value], action: &str, outcome: &str) -> &'a Value {
    entries
        .iter()
        .find(|entry| {
            entry["action"] == action && entry["outcome"].as_str().unwrap().contains(outcome)
        })
        .unwrap_or_else(|| panic!("no {action} entry with outcome {outcome:?}: {entries:#?}"))
}

#[test]
fn every_admin_action_is_recorded_and_an_edited_entry_is_found() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "logged", "--size", "16MiB"])
        .unwrap();
    assert!(!federation
        .tether(&["volume", "create", "logged", "--size", "16MiB"])
        .status
        .success());
    federation.tether_ok(&["volume", "list"]).unwrap();
    // A node's valid certificate asking for an admin action: refused, and recorded.
    let intruder = federation.issue(&Identity::new("central", Role::Node, "intruder"), None);
    let credentials = intruder.display().to_string();
    assert!(!federation
        .tether(&[
            "--credentials",
            &credentials,
            "volume",
            "create",
            "stolen",
            "--size",
            "16MiB"
        ])
        .status
        .success());
    // Over gRPC, by another admin.
    let auditor = federation.issue(&Identity::new("central", Role::Admin, "ops-grpc"), None);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let tls = TlsContext::new(&Credentials::load(&auditor).unwrap()).unwrap();
        let mut admin =
            admin_grpc::connect(&format!("https://{}", federation.admin_addr()), tls).unwrap();
        admin
            .resize_volume(admin_grpc::pb::ResizeVolumeRequest {
                name: "logged".into(),
                size_bytes: 32 << 20,
            })
            .await
            .unwrap();
    });

    let listed = federation.tether_json(&["audit", "list"]).unwrap();
    assert_eq!(listed["intact"], true, "{listed:#}");
    let entries = listed["entries"].as_array().unwrap().clone();
    let created = find(&entries, "POST /v1/volumes", "ok");
    assert!(
        created["identity"]
            .as_str()
            .unwrap()
            .starts_with("tether://central/admin/"),
        "{created}"
    );
    assert!(
        created["target"].as_str().unwrap().contains("name=logged"),
        "{created}"
    );
    assert!(created["at_unix_ms"].as_u64().unwrap() > 0);
    let duplicate = find(&entries, "POST /v1/volumes", "already exists");
    assert_eq!(duplicate["status"], 409, "{duplicate}");
    let refused = find(&entries, "POST /v1/volumes", "intruder");
    assert_eq!(
        refused["identity"], "tether://central/node/intruder",
        "{refused}"
    );
    assert_eq!(refused["status"], 403, "{refused}");
    assert!(refused["target"].as_str().unwrap().contains("name=stolen"));
    let resized = find(&entries, "gRPC ResizeVolume", "ok");
    assert_eq!(resized["identity"], "tether://central/admin/ops-grpc");
    assert!(resized["target"]
        .as_str()
        .unwrap()
        .contains("name=logged size_bytes=33554432"));
    assert!(
        entries
            .iter()
            .all(|entry| !entry["action"].as_str().unwrap().starts_with("GET ")),
        "reads are not actions: {entries:#?}"
    );
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["seq"], pair[0]["seq"].as_u64().unwrap() + 1);
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    let table = federation
        .tether_ok(&["audit", "list", "--since", "1h"])
        .unwrap();
    assert!(table.contains("tether://central/node/intruder"), "{table}");

    // Someone with write access to etcd rewrites the refusal as a success.
    let seq = refused["seq"].as_u64().unwrap();
    let key = tether_proto::keys::ClusterKeys::new("central").audit_entry(seq);
    federation
        .with_store(async |store| {
            let kv = store.get(&key).await?.expect("the entry is in etcd");
            let mut entry: Value = serde_json::from_slice(&kv.value)?;
            entry["outcome"] = "ok".into();
            entry["status"] = 200.into();
            store.put(&key, serde_json::to_vec(&entry)?, None).await?;
            Ok(())
        })
        .unwrap();
    let output = federation.tether(&["audit", "list"]);
    assert!(
        !output.status.success(),
        "a tampered log must not list clean"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tampered") && stderr.contains(&format!("entry {seq} ")),
        "{stderr}"
    );
}
