//! Security end to end, on a dev federation with etcd and one process per
//! node: every endpoint refuses plaintext and strangers (with a log line
//! saying why), certificates renew under I/O, and encrypted volumes leave no
//! plaintext on disk or on the wire and open only with their key.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use multicluster_tests::clients::{file_hash, fio_verify, nbdcopy_in, nbdcopy_out, qemu_io};
use multicluster_tests::harness::{
    closed_with_at_most_an_alert, copies_of, issue_from, refused, replicas_of, tls_connect,
    DevFederation,
};
use tether_tls::{CertificateAuthority, Identity, Role};

const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

fn admin_addr(federation: &DevFederation) -> String {
    federation.info["admin"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .to_string()
}

/// A field of `node list` for `node`, if it is listed with one.
fn try_node_field(federation: &DevFederation, node: &str, field: &str) -> Option<String> {
    let nodes = federation.tether_json(&["node", "list"]).unwrap();
    nodes
        .as_array()?
        .iter()
        .find(|entry| entry["name"] == node)?[field]
        .as_str()
        .map(str::to_string)
}

fn node_field(federation: &DevFederation, node: &str, field: &str) -> String {
    try_node_field(federation, node, field)
        .unwrap_or_else(|| panic!("node {node} lists no {field}"))
}

/// Polls `read` until it contains `needle` (a log line written asynchronously).
fn wait_for_log(what: &str, needle: &str, read: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = read();
        if text.contains(needle) {
            return text;
        }
        if Instant::now() > deadline {
            let refusals: Vec<&str> = text
                .lines()
                .filter(|line| line.contains("refused"))
                .collect();
            panic!("{what} never logged {needle:?}; its refusals: {refusals:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tether --credentials DIR volume list`: the CLI's error line.
fn cli_refused(federation: &DevFederation, credentials: &Path) -> String {
    let output = federation.tether(&[
        "--credentials",
        credentials.to_str().unwrap(),
        "volume",
        "list",
    ]);
    assert!(
        !output.status.success(),
        "the admin API answered {credentials:?}"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_endpoint_refuses_plaintext_and_strangers() {
    let federation = DevFederation::builder().nodes(2).start().unwrap();
    let admin = admin_addr(&federation);
    let trust = std::fs::read_to_string(federation.dir().join("admin/ca.crt")).unwrap();
    let now = SystemTime::now();
    let stranger_ca = tempfile::tempdir().unwrap();
    let other_ca = CertificateAuthority::load_or_create(stranger_ca.path(), "central").unwrap();
    let admin_of_other_ca = issue_from(
        &other_ca,
        &Identity::new("central", Role::Admin, "mallory"),
        None,
        stranger_ca.path(),
    );
    // The stranger trusts our CA (it knows whom it calls), but its own
    // certificate is another CA's: the server must refuse it.
    std::fs::write(admin_of_other_ca.join("ca.crt"), &trust).unwrap();
    let expired_admin = federation.issue(
        &Identity::new("central", Role::Admin, "old-admin"),
        Some((
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )),
    );
    let node_cert = federation.issue(&Identity::new("central", Role::Node, "node-1"), None);
    let admin_cert = federation.dir().join("admin");

    // --- The admin API ---
    // The dev admin credential works, and so does one an operator issues.
    federation.tether_ok(&["volume", "list"]).unwrap();
    let alice = federation.dir().join("alice");
    let state = federation.dir().join("central/control");
    federation
        .tether_ok(&[
            "ca",
            "issue",
            "--state-dir",
            state.to_str().unwrap(),
            "--name",
            "alice",
            "--out",
            alice.to_str().unwrap(),
        ])
        .unwrap();
    federation
        .tether_ok(&["--credentials", alice.to_str().unwrap(), "volume", "list"])
        .unwrap();
    // Plaintext HTTP.
    let plaintext = ureq::get(&format!("http://{admin}/v1/volumes")).call();
    assert!(plaintext.is_err(), "plaintext HTTP answered");
    wait_for_log("registry", "not TLS: a plaintext client", || {
        federation.registry_log()
    });
    // No client certificate: the handshake succeeds, the request is refused.
    let anonymous = ureq::AgentBuilder::new()
        .tls_config(tether_tls::anonymous_client_config(&trust).unwrap())
        .build();
    match anonymous.get(&format!("https://{admin}/v1/volumes")).call() {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("a client without a certificate got {other:?}"),
    }
    wait_for_log("registry", "needs a client certificate", || {
        federation.registry_log()
    });
    // A certificate from another CA (same cluster name, same subject).
    cli_refused(&federation, &admin_of_other_ca);
    wait_for_log("registry", "not from this cluster's CA", || {
        federation.registry_log()
    });
    // An expired certificate from our CA.
    cli_refused(&federation, &expired_admin);
    wait_for_log("registry", "has expired", || federation.registry_log());
    // A node's certificate: authenticated, but not an admin.
    let error = cli_refused(&federation, &node_cert);
    assert!(error.contains("may not call"), "{error}");
    wait_for_log("registry", "refused an admin API request", || {
        federation.registry_log()
    });
    let log = federation.registry_log();
    assert!(
        log.contains("tether://central/node/node-1"),
        "the refusal names the caller"
    );

    // --- A node's block port (replication, Delta Sync, presenters) ---
    let block = node_field(&federation, "node-2", "block_addr");
    let node2 = Identity::new("central", Role::Node, "node-2").dns_name();
    let node2_log = || federation.node_log("node-2");
    let mut plain = std::net::TcpStream::connect(&block).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain.write_all(b"\x00\x00\x00\x10hello").unwrap();
    assert!(
        closed_with_at_most_an_alert(&mut plain),
        "a plaintext block stream got more than a TLS alert"
    );
    wait_for_log(
        "node-2",
        "refused a block stream: TLS handshake failed",
        node2_log,
    );
    for (who, credentials) in [
        ("no certificate", None),
        (
            "another CA's node",
            Some(issue_from(
                &other_ca,
                &Identity::new("central", Role::Node, "node-1"),
                None,
                stranger_ca.path(),
            )),
        ),
    ] {
        let opened = tls_connect(&block, credentials.as_deref(), &trust, &node2);
        assert!(
            opened.map_or(true, |mut stream| {
                let _ = stream.write_all(b"x");
                refused(&mut stream)
            }),
            "{who} opened a block stream"
        );
    }
    // An admin is not a node.
    let mut as_admin = tls_connect(&block, Some(&admin_cert), &trust, &node2).unwrap();
    let _ = as_admin.write_all(b"x");
    assert!(refused(&mut as_admin), "an admin opened a block stream");
    wait_for_log(
        "node-2",
        "only nodes and gateways of this cluster may open one",
        node2_log,
    );
    // A node may not speak as another node.
    let mut impostor = tls_connect(&block, Some(&node_cert), &trust, &node2).unwrap();
    let mut hello = bytes::BytesMut::new();
    tether_proto::block::encode_frame(
        &tether_proto::block::Frame::Hello {
            volume: "any".into(),
            node: "node-3".into(),
            epoch: 7,
        },
        &mut hello,
    );
    impostor.write_all(&hello).unwrap();
    impostor.flush().unwrap();
    assert!(refused(&mut impostor), "a node spoke for another");
    wait_for_log(
        "node-2",
        "Hello names another node than the certificate",
        node2_log,
    );
    // The client checks the server too: node-1's port is not node-2.
    let node1_block = node_field(&federation, "node-1", "block_addr");
    assert!(
        tls_connect(&node1_block, Some(&node_cert), &trust, &node2).is_err(),
        "a client accepted the wrong node's certificate"
    );

    // --- A node's control RPCs (volume keys) ---
    let control = node_field(&federation, "node-2", "control_addr");
    let port = control.rsplit(':').next().unwrap();
    let url = format!("https://{node2}:{port}/v1/volumes/any/key");
    let addr: std::net::SocketAddr = control.parse().unwrap();
    let as_holder = |credentials: &Path| {
        let credentials = tether_tls::Credentials::load(credentials).unwrap();
        ureq::AgentBuilder::new()
            .tls_config(
                tether_tls::TlsContext::new(&credentials)
                    .unwrap()
                    .client_config(),
            )
            .resolver(move |_: &str| Ok(vec![addr]))
            .build()
    };
    for (who, credentials, needle) in [
        ("an admin", &admin_cert, "refused a control RPC"),
        ("a node", &node_cert, "only the registry hands out keys"),
    ] {
        let answer = as_holder(credentials)
            .put(&url)
            .send_json(serde_json::json!({"data_key": "00".repeat(64)}));
        assert!(
            matches!(answer, Err(ureq::Error::Status(403, _))),
            "{who} got {answer:?} from a key RPC"
        );
        wait_for_log("node-2", needle, node2_log);
    }
    let plaintext = ureq::AgentBuilder::new()
        .resolver(move |_: &str| Ok(vec![addr]))
        .build()
        .put(&url.replace("https://", "http://"))
        .call();
    assert!(plaintext.is_err(), "plaintext control RPC answered");

    // The federation still works for its own members.
    federation
        .tether_ok(&[
            "volume",
            "create",
            "still",
            "--size",
            "16MiB",
            "--replicas",
            "2",
        ])
        .unwrap();
    federation.wait_in_sync("still", SYNC_TIMEOUT);
}

#[test]
fn certificates_renew_under_io_without_a_failed_request() {
    // Certificates last 12 s (renewed at 8 s), so the test sees several renewals.
    let federation = DevFederation::builder()
        .nodes(3)
        .cert_lifetime("12s")
        .start()
        .unwrap();
    // Presented from the node without a copy: client streams cross TLS too.
    let (view, uri, _presenter) = federation.create_presented("steady", "256MiB", 2);
    let holders = copies_of(&view);
    let replica = replicas_of(&view)[0].clone();

    // Writes run, and are verified, while every node renews twice; then a
    // replica restarts, so new streams need the renewed certificates.
    let running = Arc::new(AtomicBool::new(true));
    let passes = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (running, passes, failures, uri) = (
            running.clone(),
            passes.clone(),
            failures.clone(),
            uri.clone(),
        );
        std::thread::spawn(move || {
            while running.load(Ordering::Acquire) {
                let output = fio_verify(&uri, "0", "64M", 20 + passes.load(Ordering::Relaxed))
                    .wait_with_output()
                    .unwrap();
                if !output.status.success() {
                    failures
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&output.stderr).into_owned());
                }
                passes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let renewals = |node: &str| {
        federation
            .node_log(node)
            .matches("renewed this node's certificate")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while ["node-1", "node-2", "node-3"]
        .iter()
        .any(|node| renewals(node) < 2)
    {
        assert!(
            Instant::now() < deadline,
            "nodes did not renew twice within 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every node's first certificate has expired by now.
    let cmdline = federation.kill_node(&replica);
    federation.start_node(&replica, &cmdline);
    federation.wait_in_sync("steady", SYNC_TIMEOUT);
    let restarted_log = federation.node_log(&replica);
    assert!(
        !restarted_log.contains("joining again"),
        "the restarted node used its renewed certificate, not a new join"
    );
    running.store(false, Ordering::Release);
    load.join().unwrap();
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "fio failed during renewals: {failures:?}"
    );
    assert!(
        passes.load(Ordering::Relaxed) >= 1,
        "fio ran across the renewals"
    );
    // Renewal at two thirds of 12 s: a handful per node over the test, not a storm.
    let issued = federation
        .registry_log()
        .matches("renewed a node's certificate")
        .count();
    assert!((6..=60).contains(&issued), "{issued} renewals");
    for node in holders {
        assert!(
            !federation
                .node_log(&node)
                .contains("refused a block stream"),
            "{node} refused a member's stream"
        );
    }
}

use multicluster_tests::harness::{contains, files_under};

/// A TCP proxy that records every byte it forwards, both ways.
fn recording_proxy(listen: std::net::TcpListener, target: String, tape: Arc<Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        for client in listen.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(&target) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let tape = tape.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        tape.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

#[test]
fn encrypted_volumes_leave_no_plaintext_and_open_only_with_their_key() {
    let federation = DevFederation::builder().nodes(2).start().unwrap();
    // node-2's block port behind a recording proxy: replication to it is captured.
    let block_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let real = block_port.local_addr().unwrap().to_string();
    drop(block_port);
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let advertised = proxy.local_addr().unwrap().to_string();
    let tape = Arc::new(Mutex::new(Vec::new()));
    recording_proxy(proxy, real.clone(), tape.clone());
    let mut cmdline = federation.kill_node_gracefully("node-2");
    cmdline
        .retain(|arg| !arg.starts_with("--block-listen") && !arg.starts_with("--block-advertise"));
    cmdline.push(format!("--block-listen={real}"));
    cmdline.push(format!("--block-advertise={advertised}"));
    federation.start_node("node-2", &cmdline);
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_node_field(&federation, "node-2", "block_addr").as_deref()
        != Some(advertised.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "node-2 did not come back behind the proxy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let key_file = federation.dir().join("user.key");
    let user_key: [u8; 32] = rand::random();
    multicluster_tests::harness::write_key_file(&key_file, user_key);
    let wrong_file = federation.dir().join("wrong.key");
    multicluster_tests::harness::write_key_file(&wrong_file, hex_of(&rand::random::<[u8; 32]>()));
    federation
        .tether_ok(&[
            "volume",
            "create",
            "secret",
            "--size",
            "64MiB",
            "--replicas",
            "2",
            "--encrypt-key-file",
            key_file.to_str().unwrap(),
        ])
        .unwrap();
    let view = federation.wait_in_sync("secret", SYNC_TIMEOUT);
    assert_eq!(
        view["master"], "node-1",
        "replication goes to node-2, through the proxy"
    );
    let socket = federation.dir().join("secret.sock");
    let endpoint = format!("unix:{}", socket.display());
    let attach = |key: Option<&Path>| {
        let mut args = vec!["volume", "attach", "secret", "--nbd", &endpoint];
        if let Some(key) = key {
            args.extend(["--encrypt-key-file", key.to_str().unwrap()]);
        }
        federation.tether(&args)
    };

    let attach_with_key = || {
        let output = attach(Some(&key_file));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };

    // Without its key, or with a wrong one: refused, one clear line.
    for (key, expected) in [
        (
            None,
            "volume secret is encrypted: attach it with --encrypt-key-file",
        ),
        (
            Some(wrong_file.as_path()),
            "the key does not open volume secret (wrong key)",
        ),
    ] {
        let output = attach(key);
        assert!(!output.status.success());
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains(expected), "{error}");
        assert_eq!(error.trim().lines().count(), 1, "{error}");
    }
    // The registry refuses a wrong data key sent to the API directly, too.
    let wrong_data_key = volume_crypto::DataKey::generate().to_hex();
    let raw = federation.tether(&["volume", "get", "secret"]);
    assert!(raw.status.success());
    let creds = tether_tls::Credentials::load(&federation.dir().join("admin")).unwrap();
    let answer = ureq::AgentBuilder::new()
        .tls_config(tether_tls::TlsContext::new(&creds).unwrap().client_config())
        .build()
        .post(&format!(
            "{}/v1/volumes/secret/attach",
            federation.info["admin"].as_str().unwrap()
        ))
        .send_json(serde_json::json!({"nbd": endpoint, "data_key": wrong_data_key}));
    assert!(
        matches!(answer, Err(ureq::Error::Status(400, _))),
        "a wrong data key was taken: {answer:?}"
    );
    assert!(!socket.exists(), "nothing was presented without the key");

    let uri = attach_with_key();
    // A known pattern: 8 MiB of a canary text.
    const CANARY: &[u8] = b"TETHER-PLAINTEXT-CANARY:the quick brown fox|";
    let pattern = federation.dir().join("pattern.bin");
    let text: Vec<u8> = CANARY.iter().copied().cycle().take(8 << 20).collect();
    std::fs::write(&pattern, &text).unwrap();
    nbdcopy_in(&pattern, &uri).unwrap();
    qemu_io(&uri, &["flush"]).unwrap();
    let back = federation.dir().join("back.bin");
    nbdcopy_out(&uri, &back).unwrap();
    let written = file_hash(&pattern, 8 << 20).unwrap();
    assert_eq!(
        file_hash(&back, 8 << 20).unwrap(),
        written,
        "reads decrypt what was written"
    );
    federation.wait_in_sync("secret", SYNC_TIMEOUT);

    // No plaintext anywhere: every file of the federation (both pools, etcd,
    // logs, certificates) and the captured replication traffic.
    let wrapped = federation
        .tether_json(&["volume", "get", "secret"])
        .unwrap()["encryption"]["wrapped_key"]
        .as_str()
        .unwrap()
        .to_string();
    let user = volume_crypto::UserKey::from_bytes(&user_key).unwrap();
    let data_key = volume_crypto::DataKey::unwrap("secret", &wrapped, &user)
        .unwrap()
        .to_hex();
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("the canary", CANARY[..24].to_vec()),
        ("the user key", user_key.to_vec()),
        ("the user key in hex", hex_of(&user_key).into_bytes()),
        ("the data key in hex", data_key.clone().into_bytes()),
        (
            "the data key",
            (0..64)
                .map(|i| u8::from_str_radix(&data_key[2 * i..2 * i + 2], 16).unwrap())
                .collect(),
        ),
    ];
    // The CA's private key lives in its own file (mode 0600) and nowhere else.
    let ca_key_file = federation.dir().join("central/control/ca/ca.key");
    let ca_key = std::fs::read_to_string(&ca_key_file).unwrap();
    let ca_key_line = ca_key
        .lines()
        .find(|line| !line.starts_with("-----"))
        .unwrap();
    secrets.push(("the CA key", ca_key_line.as_bytes().to_vec()));
    let ignore = [
        pattern.clone(),
        back.clone(),
        key_file.clone(),
        wrong_file.clone(),
        ca_key_file,
    ];
    let mut scanned = 0u64;
    for file in files_under(federation.dir()) {
        if ignore.contains(&file) {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap_or_default();
        scanned += bytes.len() as u64;
        for (what, secret) in &secrets {
            assert!(
                !contains(&bytes, secret),
                "{what} found in {}",
                file.display()
            );
        }
    }
    assert!(
        scanned > 16 << 20,
        "the scan covered both copies ({scanned} bytes)"
    );
    for node in ["node-1", "node-2"] {
        let data = federation
            .dir()
            .join(format!("central/{node}/volumes/secret/data"));
        let bytes = std::fs::read(&data).unwrap();
        assert!(
            bytes[..8 << 20].iter().any(|byte| *byte != 0),
            "{node} holds the data"
        );
    }
    let tape = tape.lock().unwrap().clone();
    assert!(
        tape.len() > 8 << 20,
        "replication went through the proxy ({} bytes)",
        tape.len()
    );
    for (what, secret) in &secrets {
        assert!(
            !contains(&tape, secret),
            "{what} crossed the network in the clear"
        );
    }

    // Detach, a wrong key again, then the right key: the data is intact.
    federation
        .tether_ok(&["volume", "detach", "secret"])
        .unwrap();
    assert!(!attach(Some(&wrong_file)).status.success());
    let uri = attach_with_key();
    nbdcopy_out(&uri, &back).unwrap();
    assert_eq!(
        file_hash(&back, 8 << 20).unwrap(),
        written,
        "data intact after a wrong-key attempt"
    );

    // The presenting node restarts: the key went with its memory, so it
    // does not present the volume until the user attaches again with it.
    let cmdline = federation.kill_node_gracefully("node-1");
    federation.start_node("node-1", &cmdline);
    let node1_log = || federation.node_log("node-1");
    wait_for_log("node-1", "its key is not loaded on node node-1", node1_log);
    assert!(
        qemu_io(&uri, &["read 0 4k"]).is_err(),
        "served without its key after a restart"
    );
    let output = federation.tether(&[
        "volume",
        "attach",
        "secret",
        "--nbd",
        &endpoint,
        "--node",
        "node-1",
        "--encrypt-key-file",
        key_file.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    nbdcopy_out(&uri, &back).unwrap();
    assert_eq!(
        file_hash(&back, 8 << 20).unwrap(),
        written,
        "data intact after the presenting node restarted"
    );
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A join token mints one certificate, for the name it is bound to, and
/// never a live node's name; every issuance is logged.
#[test]
fn join_tokens_are_single_use_bound_to_a_name_and_never_reissue_a_live_node() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let admin = admin_addr(&federation);
    let trust = std::fs::read_to_string(federation.dir().join("admin/ca.crt")).unwrap();
    let join = |node: &str, token: &str| -> (u16, String) {
        let request =
            tether_tls::KeyAndRequest::new(&Identity::new("central", Role::Node, node)).unwrap();
        let body = serde_json::json!({"node": node, "token": token, "csr_pem": request.csr_pem});
        multicluster_tests::harness::https_post(&admin, None, &trust, "/v1/join", &body.to_string())
            .unwrap()
    };
    let mint = |args: &[&str]| -> String {
        let mut all = vec!["node", "join-token"];
        all.extend(args);
        federation.tether_ok(&all).unwrap().trim().to_string()
    };

    // An unbound token: any free name, once.
    let token = mint(&[]);
    assert_eq!(join("node-7", &token).0, 200);
    let (status, body) = join("node-8", &token);
    assert_eq!(status, 401, "a used token joined again: {body}");
    assert!(body.contains("unknown, used or expired"), "{body}");

    // A live node's name is refused, whatever the token.
    let token = mint(&[]);
    let (status, body) = join("node-1", &token);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("node node-1 is up"), "{body}");

    // A token bound to a name joins only that name.
    let token = mint(&["--name", "node-9"]);
    let (status, body) = join("node-10", &token);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("is for node node-9"), "{body}");
    assert_eq!(join("node-9", &token).0, 200);

    // Garbage is refused too.
    assert_eq!(join("node-11", "0000").0, 401);

    let log = federation.registry_log();
    for issued in [
        "tether://central/node/node-7",
        "tether://central/node/node-9",
    ] {
        assert!(
            log.lines()
                .any(|line| line.contains("issued a certificate") && line.contains(issued)),
            "no issuance logged for {issued}"
        );
    }
}
