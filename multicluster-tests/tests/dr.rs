//! Two datacentres (`dev up --dr`): the central cluster and its DR peer,
//! each a cluster of its own (etcd, CA, registry, nodes, gateways), which
//! trust nothing of each other until they are linked.

use std::path::Path;

use multicluster_tests::harness::DevFederation;
use serde_json::Value;

fn federation_json(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("federation.json")).unwrap()).unwrap()
}

#[test]
fn dev_up_dr_starts_two_datacentres_that_do_not_trust_each_other_yet() {
    let federation = DevFederation::builder().nodes(2).dr().start().unwrap();
    let dir = federation.dir();
    let peer_dir = dir.join("dr");
    let central = federation_json(dir);
    let peer = federation_json(&peer_dir);
    assert_eq!(central["clusters"][0]["name"], "central");
    assert_eq!(central["peers"][0]["name"], "dr");
    assert_eq!(peer["clusters"][0]["name"], "dr");
    assert_eq!(peer["clusters"][0]["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(peer["clusters"][0]["gateways"].as_array().unwrap().len(), 2);
    assert_ne!(central["admin"], peer["admin"]);
    assert_ne!(
        central["clusters"][0]["etcd"]["endpoints"],
        peer["clusters"][0]["etcd"]["endpoints"]
    );
    // Two CAs.
    assert_ne!(
        std::fs::read(dir.join("admin/ca.crt")).unwrap(),
        std::fs::read(peer_dir.join("admin/ca.crt")).unwrap()
    );

    // Each has its own volumes.
    let created = federation.tether_peer("dr", &["volume", "create", "in-dr", "--size", "64MiB"]);
    assert!(created.status.success(), "{created:?}");
    let listed = federation.tether_ok(&["volume", "list"]).unwrap();
    assert!(!listed.contains("in-dr"), "{listed}");

    // Unlinked, neither admits the other's certificates: the peer's admin
    // is a stranger to the central registry.
    let stranger = federation.tether_as(&peer_dir.join("admin"), &["volume", "list"]);
    assert!(!stranger.status.success());

    // Down and up: both datacentres stop and come back, data kept.
    federation.down().unwrap();
    let federation = federation.up().unwrap();
    let listed = federation.tether_peer("dr", &["volume", "list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("in-dr"),
        "{listed:?}"
    );
}
