//! A satellite daemon (`tether dev up --satellites 2`) serving central
//! volumes as local NBD exports, through the gateways, to real NBD clients
//! (nbdcopy, qemu-io, fio with crc32c verification); data checked by
//! checksum on the satellite and again through a central NBD export.

use multicluster_tests::clients::{
    file_hash, finish, fio_verify, nbdcopy_in, nbdcopy_out, qemu_io, random_file,
};
use multicluster_tests::harness::DevFederation;

#[test]
fn a_satellite_serves_a_granted_volume_to_real_nbd_clients_and_nothing_else() {
    let federation = DevFederation::builder().satellites(2).start().unwrap();
    let clusters = federation.tether_json(&["cluster", "list"]).unwrap();
    let joined = clusters
        .as_array()
        .unwrap()
        .iter()
        .filter(|cluster| cluster["role"] == "satellite" && cluster["state"] == "joined")
        .count();
    assert_eq!(joined, 2, "{clusters}");
    let (socket, uri) = federation
        .attach_on_satellite(
            "edge",
            &["--size", "64MiB", "--replicas", "2"],
            "satellite-1",
        )
        .unwrap();
    assert!(uri.starts_with("nbd+unix:///edge?socket="), "{uri}");

    // Real clients on the satellite's export.
    let length = 24u64 << 20;
    let source = federation.dir().join("source.raw");
    random_file(&source, length as usize, 11).unwrap();
    nbdcopy_in(&source, &uri).unwrap();
    qemu_io(
        &uri,
        &["write -P 0x5c 40M 1M", "flush", "read -P 0x5c 40M 1M"],
    )
    .unwrap();
    let fio = fio_verify(&uri, "48M", "8M", 3);
    finish(fio, "fio --verify=crc32c through the satellite");
    let back = federation.dir().join("back.raw");
    nbdcopy_out(&uri, &back).unwrap();
    assert_eq!(
        file_hash(&back, length).unwrap(),
        file_hash(&source, length).unwrap()
    );

    // The gateways counted it: sessions, the satellite's requests by
    // operation with their latency, bytes on the wire and before compression;
    // and logged the session with satellite and volume named.
    let metrics = federation.gateway_metrics();
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(value("tether_gateway_sessions") >= 1.0, "{metrics}");
    assert!(
        value("tether_gateway_ops_total{op=\"write\",satellite=\"satellite-1\"}") > 0.0
            || value("tether_gateway_ops_total{satellite=\"satellite-1\",op=\"write\"}") > 0.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("tether_gateway_op_seconds_bucket"),
        "{metrics}"
    );
    assert!(value("tether_gateway_data_bytes_total{direction=\"in\"}") >= length as f64);
    assert!(value("tether_gateway_wire_bytes_total{direction=\"in\"}") > 0.0);
    let logs = federation.gateway_logs();
    let opened = logs
        .lines()
        .find(|line| line.contains("volume opened") && line.contains("\"volume\":\"edge\""))
        .unwrap_or_else(|| panic!("no JSON line for the opened volume: {logs}"));
    assert!(opened.contains("\"satellite\":\"satellite-1\""), "{opened}");
    assert!(opened.contains("\"session\""), "{opened}");

    // The same bytes are what a central NBD client reads.
    let central = federation
        .tether_ok(&[
            "volume",
            "attach",
            "edge",
            "--nbd",
            &format!(
                "unix:{}",
                federation.dir().join("edge-central.sock").display()
            ),
        ])
        .unwrap();
    let central_copy = federation.dir().join("central.raw");
    nbdcopy_out(central.trim(), &central_copy).unwrap();
    assert_eq!(
        file_hash(&central_copy, length).unwrap(),
        file_hash(&source, length).unwrap()
    );
    let bytes = std::fs::read(&central_copy).unwrap();
    assert!(bytes[40 << 20..41 << 20].iter().all(|b| *b == 0x5c));

    // Satellite 2 has no grant: refused at attach, naming it.
    let refused = federation
        .tether_ok(&[
            "volume",
            "attach",
            "edge",
            "--from",
            "satellite-2",
            "--nbd",
            &format!("unix:{}", federation.dir().join("other.sock").display()),
        ])
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("satellite satellite-2 has no grant for volume edge"),
        "{refused}"
    );
    assert!(!federation.dir().join("other.sock").exists());

    // Detach stops the satellite's export.
    federation.tether_ok(&["volume", "detach", "edge"]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the satellite still serves after detach"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Attached again, it is served when the attach answers (no record of
    // the earlier export stands in for it).
    federation
        .tether_ok(&[
            "volume",
            "attach",
            "edge",
            "--from",
            "satellite-1",
            "--nbd",
            &format!("unix:{}", socket.display()),
        ])
        .unwrap();
    assert!(
        socket.exists(),
        "attach answered before the satellite served"
    );
    federation.tether_ok(&["volume", "detach", "edge"]).unwrap();
    federation.assert_copies_identical("edge");

    // An encrypted volume: the satellite encrypts and decrypts with the key
    // the registry handed it; no central pool file, gateway log or packet
    // on loopback holds the plaintext.
    let key_file = federation.dir().join("vault.key");
    multicluster_tests::harness::write_key_file(&key_file, rand::random::<[u8; 32]>());
    let key = key_file.to_str().unwrap();
    federation
        .tether_ok(&[
            "volume",
            "create",
            "vault",
            "--size",
            "16MiB",
            "--replicas",
            "2",
            "--encrypt-key-file",
            key,
        ])
        .unwrap();
    federation
        .tether_ok(&["grant", "add", "satellite-1", "--volume", "vault"])
        .unwrap();
    let vault_socket = format!("unix:{}", federation.dir().join("vault.sock").display());
    let no_key = federation
        .tether_ok(&[
            "volume",
            "attach",
            "vault",
            "--from",
            "satellite-1",
            "--nbd",
            &vault_socket,
        ])
        .unwrap_err();
    assert!(
        no_key.to_string().contains("--encrypt-key-file"),
        "{no_key}"
    );
    let vault = federation
        .tether_ok(&[
            "volume",
            "attach",
            "vault",
            "--from",
            "satellite-1",
            "--nbd",
            &vault_socket,
            "--encrypt-key-file",
            key,
        ])
        .unwrap();
    let marker = b"TETHER-SATELLITE-PLAINTEXT-MARKER-";
    let plain: Vec<u8> = marker.iter().copied().cycle().take(4 << 20).collect();
    let plain_file = federation.dir().join("plain.raw");
    std::fs::write(&plain_file, &plain).unwrap();
    // Everything on loopback meanwhile: satellite to gateway (QUIC), gateway
    // to master and master to replica (TLS).
    let capture = multicluster_tests::harness::LoopbackCapture::start().unwrap();
    nbdcopy_in(&plain_file, vault.trim()).unwrap();
    let vault_back = federation.dir().join("vault-back.raw");
    nbdcopy_out(vault.trim(), &vault_back).unwrap();
    let wire = capture.finish();
    // The data crossed loopback several times (write, replication, read).
    assert!(
        wire.len() > 2 * plain.len(),
        "captured only {} bytes",
        wire.len()
    );
    assert!(
        !multicluster_tests::harness::contains(&wire, marker),
        "plaintext on the wire between the satellite, the gateway and the nodes"
    );
    assert_eq!(
        file_hash(&vault_back, plain.len() as u64).unwrap(),
        file_hash(&plain_file, plain.len() as u64).unwrap()
    );
    federation
        .tether_ok(&["volume", "detach", "vault"])
        .unwrap();
    let mut scanned = 0;
    for file in multicluster_tests::harness::files_under(&federation.dir().join("central")) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !multicluster_tests::harness::contains(&bytes, marker),
            "plaintext in {}",
            file.display()
        );
        scanned += 1;
    }
    assert!(scanned > 0);
    assert!(!multicluster_tests::harness::contains(
        federation.gateway_logs().as_bytes(),
        marker
    ));
    federation.assert_copies_identical("vault");
}

/// The one-process dev federation (`dev up --embedded`) runs the gateways
/// and satellites too, on the embedded store: the same attach, the same
/// bytes, and `dev up` on the stopped directory brings the satellite's
/// attachment back.
#[test]
fn the_embedded_federation_runs_gateways_and_satellites_in_its_one_process() {
    let federation = DevFederation::builder()
        .embedded(true)
        .nodes(1)
        .satellites(1)
        .start()
        .unwrap();
    assert_eq!(federation.info["mode"], "embedded");
    let process = federation.info["clusters"][0]["registry"]["pid"].clone();
    assert_eq!(federation.info["satellites"][0]["pid"], process);
    let gateways = federation.gateways();
    assert_eq!(gateways.len(), 2, "{:?}", federation.info);
    assert!(gateways.iter().all(|(_, _, pid, _)| process == *pid));
    let (_, uri) = federation
        .attach_on_satellite("small", &["--size", "16MiB"], "satellite-1")
        .unwrap();
    let length = 8u64 << 20;
    let source = federation.dir().join("source.raw");
    random_file(&source, length as usize, 21).unwrap();
    nbdcopy_in(&source, &uri).unwrap();

    federation.down().unwrap();
    let federation = federation.up().unwrap();
    let back = federation.dir().join("back.raw");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Err(err) = nbdcopy_out(&uri, &back) {
        assert!(
            std::time::Instant::now() < deadline,
            "the satellite's attachment did not come back: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        file_hash(&back, length).unwrap(),
        file_hash(&source, length).unwrap()
    );
}
