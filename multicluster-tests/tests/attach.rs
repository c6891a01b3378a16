//! Attaching a volume touches a path on the presenting node, which runs as
//! root: an attach may create a socket, never replace or delete a file, and
//! never reach into a pool or a state directory. A failed or abandoned
//! attach leaves no attachment behind, and says the node's own error.

use std::time::{Duration, Instant};

use multicluster_tests::clients::qemu_io;
use multicluster_tests::harness::DevFederation;

fn attach(federation: &DevFederation, volume: &str, endpoint: &str) -> std::process::Output {
    federation.tether(&["volume", "attach", volume, "--nbd", endpoint])
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

fn attachments(federation: &DevFederation, volume: &str) -> usize {
    federation.tether_json(&["volume", "get", volume]).unwrap()["attachments"]
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn attach_never_replaces_a_file_or_reaches_into_a_pool() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let uri = federation.create_attached("vj", "64MiB").unwrap();
    qemu_io(&uri, &["write -P 0x4e 0 1M", "flush"]).unwrap();
    federation.tether_ok(&["volume", "detach", "vj"]).unwrap();

    // An existing regular file is not a socket: refused, left as it was.
    let victim = federation.dir().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let started = Instant::now();
    let refused = attach(&federation, "vj", &format!("unix:{}", victim.display()));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("exists and is not a socket"),
        "{}",
        stderr(&refused)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the node's error came back at once, not after a timeout"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(
        attachments(&federation, "vj"),
        0,
        "no attachment left behind"
    );

    // Paths inside a pool (the volume's own metadata, or a new name there)
    // or the registry's state directory: refused with one clear line.
    let data_dir = federation.node("node-1")["data_dir"]
        .as_str()
        .unwrap()
        .to_string();
    let control = federation.dir().join("central/control");
    for inside in [
        format!("{data_dir}/volumes/vj/volume.json"),
        format!("{data_dir}/volumes/new.sock"),
        format!("{}/admin.sock", control.display()),
    ] {
        let refused = attach(&federation, "vj", &format!("unix:{inside}"));
        assert!(!refused.status.success(), "attach to {inside} succeeded");
        let message = stderr(&refused);
        assert!(
            message.contains("not a socket") || message.contains("pool or state directory"),
            "{inside}: {message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
    }
    assert!(!std::path::Path::new(&format!("{data_dir}/volumes/new.sock")).exists());

    // tcp:PORT serves on loopback only (plain NBD has no TLS).
    let tcp = federation
        .tether_ok(&["volume", "attach", "vj", "--nbd", "tcp:0"])
        .unwrap();
    assert!(tcp.trim().starts_with("nbd://127.0.0.1:"), "{tcp}");
    qemu_io(tcp.trim(), &["read -P 0x4e 0 1M"]).unwrap();
    federation.tether_ok(&["volume", "detach", "vj"]).unwrap();

    // The node restarts with the volume whole: nothing was deleted.
    federation.down().unwrap();
    let federation = federation.up().unwrap();
    let socket = federation.dir().join("vj-again.sock");
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "vj",
            "--nbd",
            &format!("unix:{}", socket.display()),
        ])
        .unwrap();
    qemu_io(uri.trim(), &["read -P 0x4e 0 1M"]).unwrap();
    // Detach removes the socket it made, and nothing else.
    federation.tether_ok(&["volume", "detach", "vj"]).unwrap();
    assert!(!socket.exists());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_failed_or_abandoned_attach_leaves_no_attachment_and_says_why() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "g2", "--size", "64MiB"])
        .unwrap();
    // A directory that does not exist, with a quote in the name (escaped in
    // JSON): the node's own error comes back, not a timeout.
    let endpoint = "unix:/tmp/tether-no-such-dir/q\"x.sock";
    let started = Instant::now();
    let failed = attach(&federation, "g2", endpoint);
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("No such file or directory"),
        "{}",
        stderr(&failed)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(attachments(&federation, "g2"), 0);

    // A client that gives up mid-attach (timeout 3 tether volume attach ...):
    // the registry still finishes the attach or rolls it back.
    let mut abandoned = std::process::Command::new(multicluster_tests::harness::tether_bin())
        .arg("--dir")
        .arg(federation.dir())
        .args(["volume", "attach", "g2", "--nbd", endpoint])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _ = abandoned.kill();
    let _ = abandoned.wait();
    let deadline = Instant::now() + Duration::from_secs(40);
    while attachments(&federation, "g2") != 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned attach stayed in the spec"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And the volume can be deleted (no attachment blocks it).
    federation.tether_ok(&["volume", "delete", "g2"]).unwrap();
}

/// After a restart an encrypted volume waits for its key; attaching again
/// (same endpoint, no --node) with the key goes to the node that presents
/// it, and the data is there.
#[test]
fn an_encrypted_volume_attaches_again_with_its_key_after_a_restart() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let key = federation.dir().join("vault.key");
    multicluster_tests::harness::write_key_file(&key, [0x5cu8; 32]);
    let key = key.to_str().unwrap().to_string();
    federation
        .tether_ok(&[
            "volume",
            "create",
            "vault",
            "--size",
            "64MiB",
            "--replicas",
            "2",
            "--encrypt-key-file",
            &key,
        ])
        .unwrap();
    let view = federation.wait_in_sync("vault", Duration::from_secs(30));
    // Presented by the node without a copy: not the master attach would pick.
    let presenter = federation.node_without_copy(&view).unwrap();
    let socket = federation.dir().join("vault.sock");
    let endpoint = format!("unix:{}", socket.display());
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "vault",
            "--nbd",
            &endpoint,
            "--node",
            &presenter,
            "--encrypt-key-file",
            &key,
        ])
        .unwrap()
        .trim()
        .to_string();
    qemu_io(&uri, &["write -P 0x3e 0 1M", "flush"]).unwrap();
    federation.down().unwrap();
    let federation = federation.up().unwrap();
    let again = federation.tether(&[
        "volume",
        "attach",
        "vault",
        "--nbd",
        &endpoint,
        "--encrypt-key-file",
        &key,
    ]);
    assert!(
        again.status.success(),
        "attach again: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), uri);
    qemu_io(&uri, &["read -P 0x3e 0 1M"]).unwrap();
}

/// Attaching a volume whose master just died goes to a live node (the next
/// master), not to the dead one, and `volume get` names the presenting node.
#[test]
fn attach_right_after_the_master_died_is_presented_by_a_live_node() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    federation
        .tether_ok(&[
            "volume",
            "create",
            "r1",
            "--size",
            "64MiB",
            "--replicas",
            "2",
        ])
        .unwrap();
    let view = federation.wait_in_sync("r1", Duration::from_secs(30));
    let master = view["master"].as_str().unwrap().to_string();
    federation.kill_node(&master);
    let socket = federation.dir().join("r1.sock");
    let started = Instant::now();
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "r1",
            "--nbd",
            &format!("unix:{}", socket.display()),
        ])
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "attach waited {:?}",
        started.elapsed()
    );
    let view = federation.tether_json(&["volume", "get", "r1"]).unwrap();
    let presenter = view["attachments"][0]["node"].as_str().unwrap().to_string();
    assert_ne!(presenter, master, "{view}");
    let shown = federation.tether_ok(&["volume", "get", "r1"]).unwrap();
    assert!(
        shown.contains(&format!("presented by {presenter}")),
        "{shown}"
    );
    qemu_io(uri.trim(), &["write -P 0x61 0 1M", "read -P 0x61 0 1M"]).unwrap();
}
