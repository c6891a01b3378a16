//! The CLI contract: clear one-line errors with a non-zero exit, stable JSON,
//! and `dev up` bringing a federation back with its volumes and data.

use std::time::Duration;

use multicluster_tests::clients::qemu_io;
use multicluster_tests::harness::{host_of, DevFederation};

fn fails_with(federation: &DevFederation, args: &[&str], expected: &str) {
    let output = federation.tether(args);
    assert!(!output.status.success(), "tether {args:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(expected),
        "tether {args:?}: {stderr:?} should mention {expected:?}"
    );
}

#[test]
fn errors_are_one_clear_line() {
    let federation = DevFederation::builder()
        .nodes(2)
        .capacity("1GiB")
        .start()
        .unwrap();
    federation
        .tether_ok(&["volume", "create", "taken", "--size", "100MiB"])
        .unwrap();
    fails_with(
        &federation,
        &["volume", "get", "missing"],
        "volume missing not found",
    );
    fails_with(
        &federation,
        &["volume", "create", "x", "--size", "ten"],
        "is not a size",
    );
    // clap's own message, whole, on one line: which argument is missing.
    fails_with(&federation, &["volume", "create", "m9"], "--size <SIZE>");
    fails_with(
        &federation,
        &["volume", "create", "x", "--size", "1.3"],
        "not a whole number of bytes",
    );
    // Kubernetes quantities: 1.5Gi is 1.5 GiB, 10G is 10^9 bytes.
    federation
        .tether_ok(&["volume", "create", "k8s-gi", "--size", "1.5Mi"])
        .unwrap();
    federation
        .tether_ok(&["volume", "create", "k8s-g", "--size", "1G"])
        .unwrap();
    for (name, bytes) in [("k8s-gi", 1_572_864u64), ("k8s-g", 1_000_000_000)] {
        let view = federation.tether_json(&["volume", "get", name]).unwrap();
        assert_eq!(view["size_bytes"].as_u64(), Some(bytes), "{view}");
    }
    fails_with(
        &federation,
        &["volume", "create", "odd", "--size", "1001"],
        "1001 bytes) is not a positive multiple of 512",
    );
    fails_with(
        &federation,
        &["volume", "create", "taken", "--size", "1MiB"],
        "already exists",
    );
    fails_with(
        &federation,
        &["volume", "create", "huge", "--size", "2GiB"],
        "no storage node has room for 2GiB",
    );
    fails_with(
        &federation,
        &["volume", "create", "Bad/Name", "--size", "1MiB"],
        "invalid name",
    );
    fails_with(
        &federation,
        &["volume", "resize", "taken", "--size", "1MiB"],
        "only growing",
    );
    fails_with(
        &federation,
        &["volume", "attach", "taken", "--nbd", "ftp:x"],
        "expected unix:PATH, tcp:[HOST:]PORT or tls:[HOST:]PORT",
    );
    fails_with(
        &federation,
        &[
            "volume",
            "attach",
            "taken",
            "--nbd",
            "unix:/nonexistent/dir/x.sock",
        ],
        "cannot listen",
    );
    fails_with(&federation, &["volume", "delete", "missing"], "not found");
    let attached = federation.dir().join("taken.sock");
    federation
        .tether_ok(&[
            "volume",
            "attach",
            "taken",
            "--nbd",
            &format!("unix:{}", attached.display()),
        ])
        .unwrap();
    fails_with(
        &federation,
        &["volume", "delete", "taken"],
        "detach it first",
    );
    federation
        .tether_ok(&["volume", "detach", "taken"])
        .unwrap();
    federation
        .tether_ok(&["volume", "delete", "taken"])
        .unwrap();
    fails_with(&federation, &["volume", "get", "taken"], "not found");

    // A key file others can read still works, with a warning.
    let key = federation.dir().join("loose.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let made = federation.tether(&[
        "volume",
        "create",
        "loose",
        "--size",
        "64MiB",
        "--encrypt-key-file",
        key.to_str().unwrap(),
    ]);
    assert!(made.status.success());
    assert!(
        String::from_utf8_lossy(&made.stderr).contains("is readable by others (mode 644)"),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let nobody = std::process::Command::new(multicluster_tests::harness::tether_bin())
        .args(["--admin", "http://127.0.0.1:1", "volume", "list"])
        .output()
        .unwrap();
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("cannot reach the admin API"));
}

#[test]
fn volume_json_has_the_contract_fields() {
    let federation = DevFederation::builder().start().unwrap();
    let uri = federation.create_attached("shape", "1GiB").unwrap();
    let view = federation.tether_json(&["volume", "get", "shape"]).unwrap();
    assert_eq!(view["name"], "shape");
    assert_eq!(view["size_bytes"], 1u64 << 30);
    assert_eq!(view["cluster"], "central");
    assert_eq!(view["epoch"], 1);
    let master = view["master"].as_str().unwrap();
    assert_eq!(view["copies"][0]["node"], master);
    assert_eq!(view["copies"][0]["role"], "master");
    assert_eq!(view["copies"][0]["state"], "in-sync");
    assert_eq!(view["attachments"][0]["uri"], uri.as_str());
    assert_eq!(view["attachments"][0]["from"], "central");

    let listing = federation.tether_json(&["volume", "list"]).unwrap();
    assert_eq!(listing.as_array().unwrap().len(), 1);
    let nodes = federation.tether_json(&["node", "list"]).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 3);
    assert_eq!(nodes[0]["io_backend"], "io_uring");
    let info = &federation.info;
    assert!(info["admin"].as_str().unwrap().starts_with("https://"));
    assert_eq!(info["clusters"][0]["role"], "central");
    assert!(info["clusters"][0]["etcd"]["endpoints"][0]
        .as_str()
        .unwrap()
        .starts_with("https://127.0.0.1:"));
    assert_eq!(info["clusters"][0]["nodes"].as_array().unwrap().len(), 3);
}

fn survives_restart(embedded: bool) {
    let federation = DevFederation::builder()
        .nodes(2)
        .embedded(embedded)
        .start()
        .unwrap();
    assert_eq!(
        federation.info["mode"],
        if embedded { "embedded" } else { "etcd" }
    );
    let uri = federation.create_attached("keep", "256MiB").unwrap();
    qemu_io(&uri, &["write -P 0x99 10M 3M", "flush"]).unwrap();
    federation.down().unwrap();
    assert!(
        federation.tether(&["volume", "list"]).status.code() != Some(0),
        "down means down"
    );
    let federation = federation.up().unwrap();
    let view = federation.tether_json(&["volume", "get", "keep"]).unwrap();
    assert_eq!(view["size_bytes"], 256u64 << 20);
    assert_eq!(
        view["attachments"][0]["uri"],
        uri.as_str(),
        "attachments come back too"
    );
    qemu_io(&uri, &["read -P 0x99 10M 3M", "read -P 0 0 10M"]).unwrap();
}

#[test]
fn dev_up_brings_back_volumes_and_data_with_etcd() {
    survives_restart(false);
}

#[test]
fn dev_up_brings_back_volumes_and_data_embedded() {
    survives_restart(true);
}

#[test]
fn a_copy_that_cannot_be_opened_is_quarantined_not_deleted_and_the_node_runs() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let mut uris = std::collections::HashMap::new();
    for name in ["future", "lost", "fine"] {
        let uri = federation.create_attached(name, "64MiB").unwrap();
        qemu_io(&uri, &["write -P 0x5d 0 1M", "flush"]).unwrap();
        uris.insert(name, uri);
    }
    federation.down().unwrap();
    let node = federation.node("node-1");
    let volumes = std::path::Path::new(node["data_dir"].as_str().unwrap()).join("volumes");
    // A volume from a newer version, and one whose metadata is gone.
    let meta = volumes.join("future/volume.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(
        &meta,
        text.replace("\"format_version\": 1", "\"format_version\": 9"),
    )
    .unwrap();
    std::fs::remove_file(volumes.join("lost/volume.json")).unwrap();
    let lost_data = std::fs::read(volumes.join("lost/data")).unwrap();

    // The node comes up: one bad copy does not stop it.
    let federation = federation.up().unwrap();
    let nodes = federation.tether_json(&["node", "list"]).unwrap();
    let quarantined = &nodes[0]["quarantined"];
    assert!(
        quarantined["future"]
            .as_str()
            .unwrap()
            .contains("format version 9 is newer than this build understands"),
        "{nodes}"
    );
    assert!(quarantined["lost"].is_string(), "{nodes}");
    let listed = federation.tether(&["node", "list"]);
    assert!(String::from_utf8_lossy(&listed.stderr).contains("copy of lost quarantined"));
    // Nothing was deleted or changed, and nothing was re-created over them.
    assert!(std::fs::read_to_string(&meta)
        .unwrap()
        .contains("\"format_version\": 9"));
    assert_eq!(std::fs::read(volumes.join("lost/data")).unwrap(), lost_data);
    assert!(!volumes.join("lost/volume.json").exists());
    let view = federation.wait_volume(
        "lost",
        Duration::from_secs(30),
        "the quarantine reported",
        |view| view.to_string().contains("quarantined"),
    );
    println!("{view}");
    // The healthy volume serves as before.
    qemu_io(&uris["fine"], &["read -P 0x5d 0 1M"]).unwrap();
}

#[test]
fn a_dead_node_is_listed_down_and_its_volumes_faulted() {
    let federation = DevFederation::builder().nodes(2).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "orphan", "--size", "64MiB"])
        .unwrap();
    federation
        .tether_ok(&[
            "volume",
            "create",
            "pair",
            "--size",
            "64MiB",
            "--replicas",
            "2",
        ])
        .unwrap();
    federation.wait_in_sync("pair", Duration::from_secs(30));
    let master = federation
        .tether_json(&["volume", "get", "orphan"])
        .unwrap()["master"]
        .as_str()
        .unwrap()
        .to_string();
    federation.kill9(federation.node(&master)["pid"].as_u64().unwrap());
    // The node's lease (10 s TTL) expires; then the registry reports it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let nodes = federation.tether_json(&["node", "list"]).unwrap();
        let entry = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["name"] == master.as_str())
            .cloned();
        if entry.as_ref().is_some_and(|node| node["state"] == "down") {
            assert_eq!(entry.unwrap()["volumes"], 2, "orphan and pair");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node never listed down: {nodes}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let view = federation
        .tether_json(&["volume", "get", "orphan"])
        .unwrap();
    assert_eq!(view["copies"][0]["state"], "faulted", "{view}");
    assert_eq!(view["state"], "unavailable", "{view}");
    // The other volume serves from its other copy: degraded, not faulted.
    let pair = federation.wait_volume("pair", Duration::from_secs(30), "degraded", |view| {
        view["state"] == "degraded"
    });
    let listing = federation.tether_ok(&["volume", "list"]).unwrap();
    let row = |name: &str| {
        listing
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("orphan").contains("unavailable"), "{listing}");
    assert!(
        row("pair").contains("degraded") && row("pair").contains("1/2"),
        "{listing}"
    );
    // --watch says what it is waiting for instead of printing nothing.
    let mut watch = std::process::Command::new(multicluster_tests::harness::tether_bin())
        .arg("--dir")
        .arg(federation.dir())
        .args(["volume", "get", "pair", "--watch"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = watch.stderr.take().unwrap();
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = said.send(line);
        }
    });
    let line = heard
        .recv_timeout(Duration::from_secs(20))
        .expect("volume get --watch said nothing while a copy was down");
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        line.contains(&format!("copy on {master}")) && line.contains("its node is down"),
        "{line}; {pair}"
    );
}

#[test]
fn placement_follows_node_labels() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let nodes = federation.tether_json(&["node", "list"]).unwrap();
    assert_eq!(
        nodes[1]["labels"]["zone"], "zone-2",
        "dev nodes are their own zones: {nodes}"
    );
    federation
        .tether_ok(&[
            "volume",
            "create",
            "pinned",
            "--size",
            "64MiB",
            "--placement",
            "zone=zone-2",
        ])
        .unwrap();
    assert_eq!(
        federation
            .tether_json(&["volume", "get", "pinned"])
            .unwrap()["master"],
        "node-2"
    );
    fails_with(
        &federation,
        &[
            "volume",
            "create",
            "lost",
            "--size",
            "64MiB",
            "--placement",
            "zone=mars",
        ],
        "no live node matches zone=mars",
    );
    fails_with(
        &federation,
        &[
            "volume",
            "create",
            "bad",
            "--size",
            "64MiB",
            "--placement",
            "zone",
        ],
        "expected key=value",
    );
}

#[test]
fn malformed_request_bodies_get_the_json_error_shape() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let credentials = federation.dir().join("admin");
    let trust = std::fs::read_to_string(credentials.join("ca.crt")).unwrap();
    for (path, body) in [
        ("/v1/volumes", "{not json"),
        ("/v1/volumes", r#"{"name": "x"}"#),
        ("/v1/volumes/x/resize", r#"{"size_bytes": "big"}"#),
    ] {
        let (status, payload) = multicluster_tests::harness::https_post(
            &federation.admin_addr(),
            Some(&credentials),
            &trust,
            path,
            body,
        )
        .unwrap();
        assert_eq!(status, 400, "{path} {body}: {payload}");
        let json: serde_json::Value = serde_json::from_str(payload.trim())
            .unwrap_or_else(|err| panic!("{path} {body}: not JSON ({err}): {payload}"));
        assert_eq!(json["code"], "invalid", "{json}");
        assert!(json["error"].as_str().unwrap().contains("body"), "{json}");
    }
}

/// `dev up` on a federation with one node killed starts that node alone:
/// the others keep running and their clients carry on.
#[test]
fn dev_up_starts_only_what_is_missing() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let (view, uri, presenter) = federation.create_presented("partial", "256MiB", 2);
    let replica = multicluster_tests::harness::replicas_of(&view)[0].clone();
    let presenter_pid = federation.node_pid(&presenter);
    federation.kill_node(&replica);
    let fio = multicluster_tests::clients::fio_verify(&uri, "0", "64M", 5);
    let federation = federation.up().unwrap();
    assert_eq!(
        federation.node_pid(&presenter),
        presenter_pid,
        "a running node was left alone"
    );
    multicluster_tests::clients::finish(fio, "fio verify across dev up");
    federation.assert_all_nodes_up();
    federation.wait_in_sync("partial", Duration::from_secs(60));
    federation.assert_copies_identical("partial");
}

/// Thin volumes promise what the over-provisioning ratio allows (all of the
/// capacity by default, twice it at 200%), and `node list` tells promised
/// from written.
#[test]
fn thin_volumes_promise_what_the_overprovisioning_ratio_allows() {
    for (overprovision, volumes_that_fit) in [(None, 1), (Some("200%"), 3)] {
        let mut builder = DevFederation::builder().nodes(1).capacity("1GiB");
        if let Some(percent) = overprovision {
            builder = builder.overprovision(percent);
        }
        let federation = builder.start().unwrap();
        for index in 0..volumes_that_fit {
            federation
                .tether_ok(&[
                    "volume",
                    "create",
                    &format!("thin{index}"),
                    "--size",
                    "600MiB",
                ])
                .unwrap();
        }
        fails_with(
            &federation,
            &["volume", "create", "onemore", "--size", "600MiB"],
            "no storage node has room",
        );
        let uri = {
            let socket = federation.dir().join("thin0.sock");
            federation
                .tether_ok(&[
                    "volume",
                    "attach",
                    "thin0",
                    "--nbd",
                    &format!("unix:{}", socket.display()),
                ])
                .unwrap()
        };
        qemu_io(uri.trim(), &["write -P 0x12 0 8M", "flush"]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let node = loop {
            let nodes = federation.tether_json(&["node", "list"]).unwrap();
            let node = nodes[0].clone();
            if node["allocated_bytes"].as_u64().unwrap_or(0) >= 8 << 20 {
                break node;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "allocation never reported: {node}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let limit = if overprovision.is_some() {
            2u64 << 30
        } else {
            1 << 30
        };
        assert_eq!(node["provisionable_bytes"].as_u64(), Some(limit), "{node}");
        assert_eq!(
            node["provisioned_bytes"].as_u64(),
            Some(volumes_that_fit * (600 << 20)),
            "{node}"
        );
        assert!(
            node["allocated_bytes"].as_u64().unwrap() < 64 << 20,
            "{node}"
        );
    }
}

/// The host entries (`dev up --netns`) of every node and satellite, with their pids.
fn hosts(federation: &DevFederation) -> Vec<(String, String, u32)> {
    let entries = federation.info["clusters"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .chain(federation.info["satellites"].as_array().unwrap())
        .cloned()
        .collect::<Vec<_>>();
    entries
        .iter()
        .map(|entry| {
            let (netns, address) = host_of(entry).unwrap_or_else(|| panic!("no host: {entry}"));
            (netns, address, entry["pid"].as_u64().unwrap() as u32)
        })
        .collect()
}

#[test]
fn dev_up_netns_runs_each_node_and_satellite_as_a_host_and_down_removes_them() {
    use std::os::unix::fs::MetadataExt;
    let federation = DevFederation::builder()
        .nodes(2)
        .satellites(1)
        .netns()
        .start()
        .unwrap();
    let bridge = federation.info["clusters"][0]["network"]["bridge"]
        .as_str()
        .unwrap()
        .to_string();
    let before = hosts(&federation);
    assert_eq!(before.len(), 3, "{}", federation.info);
    let mut addresses: Vec<&str> = before.iter().map(|(_, a, _)| a.as_str()).collect();
    addresses.dedup();
    assert_eq!(addresses.len(), 3, "one address per host: {before:?}");
    for (netns, address, pid) in &before {
        // The process is in its host's namespace, not the root one.
        let namespace = std::fs::metadata(format!("/run/netns/{netns}")).unwrap();
        let its = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        assert_eq!(its.ino(), namespace.ino(), "{pid} is in {netns}");
        let root = std::fs::metadata("/proc/self/ns/net").unwrap();
        assert_ne!(its.ino(), root.ino());
        assert!(address.starts_with("10.88."), "{address}");
    }
    for node in ["node-1", "node-2"] {
        let (_, address) = federation.node_host(node).unwrap();
        assert!(
            federation
                .block_addr(node)
                .starts_with(&format!("{address}:")),
            "{node} serves block frames on its host's address"
        );
    }
    // Data through a node and through the satellite (gateway on the bridge).
    let uri = federation.create_attached("keep", "64MiB").unwrap();
    qemu_io(&uri, &["write -P 0x5a 1M 2M", "flush"]).unwrap();
    let (_, on_satellite) = federation
        .attach_on_satellite(
            "far",
            &["--size", "64MiB", "--replicas", "2"],
            "satellite-1",
        )
        .unwrap();
    qemu_io(&on_satellite, &["write -P 0x3c 0 1M", "flush"]).unwrap();

    federation.down().unwrap();
    for (netns, _, _) in &before {
        assert!(
            !std::path::Path::new("/run/netns").join(netns).exists(),
            "{netns} removed"
        );
    }
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "bridge {bridge} removed"
    );

    let federation = federation.up().unwrap();
    let after: Vec<(String, String)> = hosts(&federation)
        .into_iter()
        .map(|(netns, address, _)| (netns, address))
        .collect();
    let expected: Vec<(String, String)> = before
        .into_iter()
        .map(|(netns, address, _)| (netns, address))
        .collect();
    assert_eq!(after, expected, "the same hosts come back");
    qemu_io(&uri, &["read -P 0x5a 1M 2M", "read -P 0 0 1M"]).unwrap();
    qemu_io(&on_satellite, &["read -P 0x3c 0 1M", "read -P 0 1M 1M"]).unwrap();
}
