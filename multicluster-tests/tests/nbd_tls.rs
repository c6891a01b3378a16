//! NBD over TLS (STARTTLS) with real clients: libnbd (`nbds://` URIs,
//! nbdinfo, nbdcopy) and qemu (`--object tls-creds-x509`), using the
//! `client` credential `tether dev up` issues from the cluster CA. Only a
//! client certificate of this cluster gets in; data checked by checksum.

use std::path::{Path, PathBuf};

use multicluster_tests::clients::{file_hash, nbdcopy_in, nbdcopy_out, nbdinfo, random_file, run};
use multicluster_tests::harness::DevFederation;
use tether_tls::{CertificateAuthority, Credentials, Identity, Role};

fn with_certificates(uri: &str, dir: &Path) -> String {
    format!("{uri}?tls-certificates={}", dir.display())
}

/// `qemu-img convert` of the whole volume over TLS, as qemu's client does it.
/// qemu's `--object` (the x509 credentials) and `--image-opts` for `uri` over TLS.
fn qemu_tls_args(uri: &str, certificates: &Path) -> (String, String) {
    let (host, port, export) = split_nbds(uri);
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        certificates.display()
    );
    let image = format!(
        "driver=nbd,server.type=inet,server.host={host},server.port={port},export={export},tls-creds=tls0"
    );
    (object, image)
}

fn qemu_img_convert_tls(uri: &str, certificates: &Path, out: &Path) -> anyhow::Result<()> {
    let (object, image) = qemu_tls_args(uri, certificates);
    run(
        "qemu-img",
        &[
            "convert",
            "--object",
            &object,
            "--image-opts",
            &image,
            "-O",
            "raw",
            out.to_str().unwrap(),
        ],
    )
    .map(|_| ())
}

fn qemu_io_tls(uri: &str, certificates: &Path, commands: &[&str]) -> anyhow::Result<String> {
    let (object, image) = qemu_tls_args(uri, certificates);
    let mut args = vec!["--object", &object, "--image-opts", &image];
    for command in commands {
        args.extend(["-c", command]);
    }
    let out = run("qemu-io", &args)?;
    anyhow::ensure!(
        !out.contains("Pattern verification failed") && !out.contains("failed:"),
        "qemu-io reported a failure: {out}"
    );
    Ok(out)
}

/// `nbds://HOST:PORT/EXPORT` or `nbd://…` into its parts.
fn split_nbds(uri: &str) -> (String, String, String) {
    let rest = uri
        .strip_prefix("nbds://")
        .or_else(|| uri.strip_prefix("nbd://"))
        .expect("an NBD TCP URI");
    let (addr, export) = rest.split_once('/').unwrap();
    let (host, port) = addr.rsplit_once(':').unwrap();
    (host.into(), port.into(), export.into())
}

/// A credential in the NBD clients' layout, for `identity` from `ca`, next
/// to the cluster's own CA certificate (so the client trusts the node and
/// only the server's verdict on the client certificate is tested).
fn nbd_credential(
    federation: &DevFederation,
    ca: &CertificateAuthority,
    identity: &Identity,
    name: &str,
) -> PathBuf {
    let issued = ca
        .issue_credentials(identity, &[], std::time::Duration::from_secs(3600))
        .unwrap();
    let dir = federation.dir().join("nbd-credentials").join(name);
    issued.save_for_nbd_client(&dir).unwrap();
    std::fs::copy(
        federation.dir().join("nbd-client/ca-cert.pem"),
        dir.join("ca-cert.pem"),
    )
    .unwrap();
    dir
}

#[test]
fn tls_export_serves_client_certificates_of_the_cluster_and_refuses_everyone_else() {
    let federation = DevFederation::builder().start().unwrap();
    federation
        .tether_ok(&[
            "volume",
            "create",
            "secure",
            "--size",
            "64MiB",
            "--replicas",
            "1",
        ])
        .unwrap();
    let uri = federation
        .tether_ok(&["volume", "attach", "secure", "--nbd", "tls:0"])
        .unwrap()
        .trim()
        .to_string();
    assert!(uri.starts_with("nbds://127.0.0.1:"), "{uri}");
    let client = federation.dir().join("nbd-client");

    // libnbd verifies the node's certificate against 127.0.0.1 and presents
    // the dev client's; the data goes in and comes out unchanged.
    let info = nbdinfo(&with_certificates(&uri, &client)).unwrap();
    assert_eq!(info["TLS"], true, "{info}");
    assert_eq!(info["exports"][0]["export-size"], 64u64 << 20);
    let length = 16u64 << 20;
    let source = federation.dir().join("source.raw");
    random_file(&source, length as usize, 7).unwrap();
    nbdcopy_in(&source, &with_certificates(&uri, &client)).unwrap();
    qemu_io_tls(
        &uri,
        &client,
        &["write -P 0x3c 32M 1M", "flush", "read -P 0x3c 32M 1M"],
    )
    .unwrap();
    let copied = federation.dir().join("copied.raw");
    qemu_img_convert_tls(&uri, &client, &copied).unwrap();
    assert_eq!(
        file_hash(&copied, length).unwrap(),
        file_hash(&source, length).unwrap(),
        "what libnbd wrote, qemu reads back"
    );
    let bytes = std::fs::read(&copied).unwrap();
    assert!(bytes[32 << 20..33 << 20].iter().all(|b| *b == 0x3c));

    // Refused: plaintext, no certificate, other roles of this cluster, and a
    // client certificate from another CA.
    let plaintext = uri.replacen("nbds://", "nbd://", 1);
    let err = nbdinfo(&plaintext).unwrap_err().to_string();
    assert!(err.contains("nbd_opt_go"), "plaintext GO is refused: {err}");
    let ca = CertificateAuthority::load_or_create(
        &federation.dir().join("central/control/ca"),
        "central",
    )
    .unwrap();
    let no_certificate = federation.dir().join("nbd-credentials/none");
    std::fs::create_dir_all(&no_certificate).unwrap();
    std::fs::copy(
        client.join("ca-cert.pem"),
        no_certificate.join("ca-cert.pem"),
    )
    .unwrap();
    let node = nbd_credential(
        &federation,
        &ca,
        &Identity::new("central", Role::Node, "node-1"),
        "node",
    );
    let admin = nbd_credential(
        &federation,
        &ca,
        &Identity::new("central", Role::Admin, "ops"),
        "admin",
    );
    let other_cluster = nbd_credential(
        &federation,
        &ca,
        &Identity::new("elsewhere", Role::Client, "app"),
        "other-cluster",
    );
    let foreign_ca =
        CertificateAuthority::load_or_create(&federation.dir().join("foreign-ca"), "central")
            .unwrap();
    let foreign = nbd_credential(
        &federation,
        &foreign_ca,
        &Identity::new("central", Role::Client, "app"),
        "foreign",
    );
    for (what, dir) in [
        ("no certificate", &no_certificate),
        ("a node's certificate", &node),
        ("an admin's certificate", &admin),
        ("another cluster's client", &other_cluster),
        ("a client certificate from another CA", &foreign),
    ] {
        let refused = nbdinfo(&with_certificates(&uri, dir));
        assert!(refused.is_err(), "{what} got in: {refused:?}");
        let out = federation.dir().join("refused.raw");
        assert!(
            nbdcopy_out(&with_certificates(&uri, dir), &out).is_err(),
            "{what} read the volume"
        );
    }
    let view = federation
        .tether_json(&["volume", "get", "secure"])
        .unwrap();
    let log = federation.node_log(view["attachments"][0]["node"].as_str().unwrap());
    assert!(
        log.contains("tether://central/node/node-1 may not use volumes over NBD"),
        "the refusal names who was refused"
    );

    // Nothing the refused clients did changed the data.
    qemu_img_convert_tls(&uri, &client, &copied).unwrap();
    assert_eq!(
        file_hash(&copied, length).unwrap(),
        file_hash(&source, length).unwrap()
    );
    federation.assert_copies_identical("secure");
}

#[test]
fn loopback_tcp_export_offers_starttls_and_still_serves_plaintext() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "local", "--size", "16MiB"])
        .unwrap();
    let uri = federation
        .tether_ok(&["volume", "attach", "local", "--nbd", "tcp:0"])
        .unwrap()
        .trim()
        .to_string();
    assert!(uri.starts_with("nbd://127.0.0.1:"), "{uri}");
    let client = federation.dir().join("nbd-client");
    let tls_uri = with_certificates(&uri.replacen("nbd://", "nbds://", 1), &client);
    assert_eq!(nbdinfo(&tls_uri).unwrap()["TLS"], true);
    assert_eq!(nbdinfo(&uri).unwrap()["TLS"], false);
    qemu_io_tls(&uri, &client, &["write -P 0x77 0 64k", "flush"]).unwrap();
    let out = federation.dir().join("plain.raw");
    nbdcopy_out(&uri, &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes[..64 << 10].iter().all(|b| *b == 0x77));
    assert!(bytes[64 << 10..].iter().all(|b| *b == 0));
    // A client credential is what `ca issue --role client` writes, too.
    let issued = federation.dir().join("issued-client");
    federation
        .tether_ok(&[
            "ca",
            "issue",
            "--state-dir",
            federation.dir().join("central/control").to_str().unwrap(),
            "--role",
            "client",
            "--name",
            "backup-job",
            "--out",
            issued.to_str().unwrap(),
        ])
        .unwrap();
    let credentials = Credentials::load_nbd_client(&issued).unwrap();
    assert_eq!(
        credentials.identity.uri(),
        "tether://central/client/backup-job"
    );
    let info = nbdinfo(&with_certificates(
        &uri.replacen("nbd://", "nbds://", 1),
        &issued,
    ))
    .unwrap();
    assert_eq!(info["TLS"], true);
}

#[test]
fn a_node_whose_certificate_lacks_its_address_renews_it_at_start() {
    // A node certified before it asked for addresses (or given a new
    // --tls-san) must not wait two thirds of a lifetime to be verifiable.
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let tls_dir = federation.dir().join("central/node-1/tls");
    let names = || {
        Credentials::load(&tls_dir)
            .unwrap()
            .alternative_names()
            .unwrap()
    };
    assert!(names().contains(&"127.0.0.1".to_string()), "{:?}", names());
    let cmdline = federation.kill_node_gracefully("node-1");
    let ca = CertificateAuthority::load_or_create(
        &federation.dir().join("central/control/ca"),
        "central",
    )
    .unwrap();
    ca.issue_credentials(
        &Identity::new("central", Role::Node, "node-1"),
        &[],
        std::time::Duration::from_secs(24 * 3600),
    )
    .unwrap()
    .save(&tls_dir)
    .unwrap();
    assert!(!names().contains(&"127.0.0.1".to_string()));
    federation.start_node("node-1", &cmdline);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !names().contains(&"127.0.0.1".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the certificate was not renewed with the node's address: {:?}",
            names()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let node_up = || {
        let nodes = federation.tether_json(&["node", "list"]).unwrap();
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|node| node["name"] == "node-1" && node["state"] == "up")
    };
    while !node_up() {
        assert!(
            std::time::Instant::now() < deadline,
            "node-1 did not come back"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    federation
        .tether_ok(&["volume", "create", "after", "--size", "8MiB"])
        .unwrap();
    let uri = federation
        .tether_ok(&["volume", "attach", "after", "--nbd", "tls:0"])
        .unwrap();
    let info = nbdinfo(&with_certificates(
        uri.trim(),
        &federation.dir().join("nbd-client"),
    ));
    assert_eq!(info.unwrap()["TLS"], true);
}
