//! Federation membership and grants through the admin API, with real
//! processes and etcd: satellites join with one-time tokens and CSRs, see
//! only what their grants cover, stay within their quotas, and are cut off
//! when removed.

use std::path::Path;

use multicluster_tests::harness::DevFederation;
use serde_json::Value;

/// `tether --credentials DIR ARGS`: stdout on success, stderr as the error.
fn as_satellite(
    federation: &DevFederation,
    credentials: &Path,
    args: &[&str],
) -> Result<String, String> {
    let output = federation.tether_as(credentials, args);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn cluster<'a>(clusters: &'a Value, name: &str) -> &'a Value {
    clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|cluster| cluster["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {clusters}"))
}

fn add_and_join(federation: &DevFederation, name: &str) -> std::path::PathBuf {
    let token = federation
        .tether_ok(&["cluster", "add-satellite", name])
        .unwrap();
    federation.join_satellite(name, &token).unwrap()
}

#[test]
fn satellites_join_once_with_their_token_and_removal_cuts_them_off() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let token = federation
        .tether_ok(&["cluster", "add-satellite", "edge-1"])
        .unwrap();
    let clusters = federation.tether_json(&["cluster", "list"]).unwrap();
    assert_eq!(cluster(&clusters, "central")["role"], "central");
    assert_eq!(cluster(&clusters, "edge-1")["role"], "satellite");
    assert_eq!(cluster(&clusters, "edge-1")["state"], "pending");

    // A node's join token makes no satellite, and the satellite's token
    // makes no node.
    let node_token = federation
        .tether_ok(&["node", "join-token", "--name", "edge-1"])
        .unwrap();
    let err = federation
        .join_satellite("edge-1", &node_token)
        .unwrap_err();
    assert!(
        err.to_string().contains("for a node, not a satellite"),
        "{err}"
    );

    // Adding it again (its token lost, or leaked) supersedes the first token.
    let newer = federation
        .tether_ok(&["cluster", "add-satellite", "edge-1"])
        .unwrap();
    let superseded = federation.join_satellite("edge-1", &token).unwrap_err();
    assert!(
        superseded.to_string().contains("superseded"),
        "{superseded}"
    );
    let token = newer;

    let credentials = federation.join_satellite("edge-1", &token).unwrap();
    let clusters = federation.tether_json(&["cluster", "list"]).unwrap();
    let edge = cluster(&clusters, "edge-1");
    assert_eq!(edge["state"], "joined");
    assert!(edge["last_seen_unix_ms"].as_u64().unwrap() > 0);
    assert!(edge["certificate_not_after_unix_ms"].as_u64().unwrap() > 0);
    let issued = tether_tls::Credentials::load(&credentials).unwrap();
    assert_eq!(issued.identity.uri(), "tether://central/satellite/edge-1");

    let again = federation.join_satellite("edge-1", &token).unwrap_err();
    assert!(
        again.to_string().contains("401"),
        "a used token joins nothing: {again}"
    );
    let stranger = federation.join_satellite("edge-2", &token).unwrap_err();
    assert!(stranger.to_string().contains("cannot join"), "{stranger}");

    // A satellite is not an admin.
    let refused = as_satellite(&federation, &credentials, &["node", "list"]).unwrap_err();
    assert!(refused.contains("may not call GET /v1/nodes"), "{refused}");
    assert_eq!(
        as_satellite(&federation, &credentials, &["volume", "list", "-o", "json"])
            .unwrap()
            .trim(),
        "[]"
    );

    federation
        .tether_ok(&["cluster", "remove", "edge-1"])
        .unwrap();
    let cut_off = as_satellite(&federation, &credentials, &["volume", "list"]).unwrap_err();
    assert!(
        cut_off.contains("satellite edge-1 was removed"),
        "{cut_off}"
    );
    let clusters = federation.tether_json(&["cluster", "list"]).unwrap();
    assert_eq!(cluster(&clusters, "edge-1")["state"], "revoked");
    let reuse = federation
        .tether_ok(&["cluster", "add-satellite", "edge-1"])
        .unwrap_err();
    assert!(reuse.to_string().contains("never issued again"), "{reuse}");
    assert!(federation
        .registry_log()
        .contains("refused an admin API request"));
}

#[test]
fn grants_scope_what_a_satellite_sees_and_quotas_hold_under_concurrent_creates() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    for volume in ["shared-db", "private"] {
        federation
            .tether_ok(&["volume", "create", volume, "--size", "16MiB"])
            .unwrap();
    }
    let a = add_and_join(&federation, "sat-a");
    let b = add_and_join(&federation, "sat-b");
    federation
        .tether_ok(&["grant", "add", "sat-a", "--volume", "shared-db"])
        .unwrap();
    federation
        .tether_ok(&[
            "grant",
            "add",
            "sat-a",
            "--prefix",
            "a-",
            "--capacity",
            "96MiB",
            "--count",
            "2",
        ])
        .unwrap();

    // What A sees and may do.
    let listed: Value = serde_json::from_str(
        &as_satellite(&federation, &a, &["volume", "list", "-o", "json"]).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|volume| volume["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["shared-db"]);
    let hidden = as_satellite(&federation, &a, &["volume", "get", "private"]).unwrap_err();
    assert!(
        hidden.contains("satellite sat-a has no grant for volume private"),
        "{hidden}"
    );
    let not_managed =
        as_satellite(&federation, &a, &["volume", "delete", "shared-db"]).unwrap_err();
    assert!(
        not_managed.contains("grant volume:shared-db allows attaching"),
        "{not_managed}"
    );
    as_satellite(
        &federation,
        &a,
        &["volume", "create", "a-1", "--size", "32MiB"],
    )
    .unwrap();
    as_satellite(
        &federation,
        &a,
        &["volume", "create", "a-2", "--size", "64MiB"],
    )
    .unwrap();
    let count = as_satellite(
        &federation,
        &a,
        &["volume", "create", "a-3", "--size", "1MiB"],
    )
    .unwrap_err();
    assert!(
        count.contains("grant prefix:a- is at its limit: 2 of 2 volumes exist"),
        "{count}"
    );
    let capacity = as_satellite(
        &federation,
        &a,
        &["volume", "resize", "a-1", "--size", "40MiB"],
    )
    .unwrap_err();
    assert!(
        capacity.contains("96MiB provisioned; 8MiB more does not fit"),
        "{capacity}"
    );
    let outside = as_satellite(
        &federation,
        &a,
        &["volume", "create", "b-1", "--size", "1MiB"],
    )
    .unwrap_err();
    assert!(outside.contains("has no grant for volume b-1"), "{outside}");
    as_satellite(&federation, &a, &["volume", "delete", "a-2"]).unwrap();
    as_satellite(
        &federation,
        &a,
        &["volume", "resize", "a-1", "--size", "96MiB"],
    )
    .unwrap();

    let grants = federation
        .tether_json(&["grant", "list", "--satellite", "sat-a"])
        .unwrap();
    let prefix = grants
        .as_array()
        .unwrap()
        .iter()
        .find(|grant| grant["kind"] == "prefix")
        .unwrap();
    assert_eq!(prefix["used_count"], 1);
    assert_eq!(prefix["used_bytes"], 96u64 << 20);

    // B reaches none of it, at the API and at attach (also when an admin
    // attaches for B).
    let refused = as_satellite(&federation, &b, &["volume", "get", "shared-db"]).unwrap_err();
    assert!(
        refused.contains("satellite sat-b has no grant for volume shared-db"),
        "{refused}"
    );
    let attach = federation
        .tether_ok(&[
            "volume",
            "attach",
            "shared-db",
            "--from",
            "sat-b",
            "--nbd",
            "unix:/tmp/sat-b.sock",
        ])
        .unwrap_err();
    assert!(
        attach
            .to_string()
            .contains("satellite sat-b has no grant for volume shared-db"),
        "{attach}"
    );
    let for_other = as_satellite(
        &federation,
        &a,
        &[
            "volume",
            "attach",
            "shared-db",
            "--from",
            "sat-b",
            "--nbd",
            "unix:/tmp/x.sock",
        ],
    )
    .unwrap_err();
    assert!(
        for_other.contains("may not call attach volume shared-db for sat-b"),
        "{for_other}"
    );

    // A removed grant takes effect on the next call.
    federation
        .tether_ok(&["grant", "remove", "sat-a", "--volume", "shared-db"])
        .unwrap();
    let gone = as_satellite(&federation, &a, &["volume", "get", "shared-db"]).unwrap_err();
    assert!(gone.contains("has no grant for volume shared-db"), "{gone}");

    // Five creates at once under a quota of two: exactly two pass.
    federation
        .tether_ok(&[
            "grant",
            "add",
            "sat-b",
            "--prefix",
            "race-",
            "--capacity",
            "1GiB",
            "--count",
            "2",
        ])
        .unwrap();
    let outcomes: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..5)
            .map(|i| {
                let (federation, b) = (&federation, &b);
                scope.spawn(move || {
                    let name = format!("race-{i}");
                    as_satellite(
                        federation,
                        b,
                        &["volume", "create", &name, "--size", "8MiB"],
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    let created = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(created, 2, "{outcomes:?}");
    for refused in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert!(refused.contains("at its limit"), "{refused}");
    }
    let volumes = federation.tether_json(&["volume", "list"]).unwrap();
    let races = volumes
        .as_array()
        .unwrap()
        .iter()
        .filter(|volume| volume["name"].as_str().unwrap().starts_with("race-"))
        .count();
    assert_eq!(races, 2);
}
