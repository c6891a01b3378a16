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

#[test]
fn cluster_link_pairs_the_datacentres_once_with_a_token_naming_the_peer_ca() {
    let federation = DevFederation::builder().nodes(1).dr().start().unwrap();
    let peer_admin = federation_json(&federation.dir().join("dr"))["admin"]
        .as_str()
        .unwrap()
        .to_string();
    let token_of = |output: std::process::Output| {
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let token = token_of(federation.tether_peer("dr", &["cluster", "add-peer", "central"]));
    let (secret, hash) = token.rsplit_once('.').unwrap();

    // A token whose hash is not the peer's CA: refused before anything is
    // sent (a man in the middle would present another CA).
    let forged = format!("{secret}.{}", "0".repeat(64));
    let refused = federation.tether(&[
        "cluster",
        "link",
        "dr",
        "--endpoint",
        &peer_admin,
        "--token",
        &forged,
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("not the cluster that minted it"),
        "{stderr}"
    );
    // The token is for `central`: another name is refused by the peer.
    let other = federation.tether_peer("dr", &["cluster", "add-peer", "elsewhere"]);
    let other = token_of(other);
    let refused = federation.tether(&[
        "cluster",
        "link",
        "dr",
        "--endpoint",
        &peer_admin,
        "--token",
        &other,
    ]);
    assert!(!refused.status.success(), "{refused:?}");

    let linked = federation
        .tether_ok(&[
            "cluster",
            "link",
            "dr",
            "--endpoint",
            &peer_admin,
            "--token",
            &token,
        ])
        .unwrap();
    assert!(linked.contains(hash), "{linked}");
    // Each side holds the other's CA: its hash is the one the other's
    // token carries, or the one its own CA has.
    let here: Value = serde_json::from_str(
        &federation
            .tether_ok(&["-o", "json", "cluster", "peers"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(here[0]["name"], "dr");
    assert_eq!(here[0]["state"], "linked");
    assert_eq!(here[0]["ca_hash"], hash);
    let there: Value = serde_json::from_slice(
        &federation
            .tether_peer("dr", &["-o", "json", "cluster", "peers"])
            .stdout,
    )
    .unwrap();
    let central = there
        .as_array()
        .unwrap()
        .iter()
        .find(|peer| peer["name"] == "central")
        .unwrap();
    assert_eq!(central["state"], "linked");
    let central_ca = std::fs::read_to_string(federation.dir().join("admin/ca.crt")).unwrap();
    assert_eq!(
        central["ca_hash"].as_str().unwrap(),
        tether_tls::ca_hash(&central_ca).unwrap()
    );
    // Once: the token is spent, and a linked peer is not linked again.
    let again = federation.tether(&[
        "cluster",
        "link",
        "dr",
        "--endpoint",
        &peer_admin,
        "--token",
        &token,
    ]);
    assert!(!again.status.success());
}
