//! A satellite daemon keeps its certificate current and its attachments
//! across a restart: with 12 s certificates it renews over the registry's
//! gRPC API (saved before use), and after `kill -9` — by then past its
//! first certificate's expiry — `dev up` starts it again, it follows its
//! attachments on the stream and serves the same export, with the data
//! written before the kill.

use std::time::{Duration, Instant, SystemTime};

use multicluster_tests::clients::{file_hash, nbdcopy_in, nbdcopy_out, random_file};
use multicluster_tests::harness::DevFederation;
use tether_tls::Credentials;

fn not_after(dir: &std::path::Path) -> SystemTime {
    Credentials::load(dir).unwrap().validity().unwrap().1
}

#[test]
fn a_satellite_renews_its_certificate_and_brings_its_attachments_back_after_kill_9() {
    let federation = DevFederation::builder()
        .nodes(1)
        .satellites(1)
        .cert_lifetime("12s")
        .start()
        .unwrap();
    let tls_dir = federation.dir().join("satellites/satellite-1/tls");
    let first_expiry = not_after(&tls_dir);
    let (_, uri) = federation
        .attach_on_satellite("kept", &["--size", "32MiB"], "satellite-1")
        .unwrap();
    let length = 8u64 << 20;
    let source = federation.dir().join("source.raw");
    random_file(&source, length as usize, 5).unwrap();
    nbdcopy_in(&source, &uri).unwrap();

    // Renewed at two thirds of its 12 s: a later expiry on disk, in the log.
    let log = federation.dir().join("logs/satellite-1.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while not_after(&tls_dir) <= first_expiry {
        assert!(
            Instant::now() < deadline,
            "no renewal within 30 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("renewed this satellite's certificate"));

    // Past the first certificate's expiry, kill -9 and start it again.
    let pid = federation.info["satellites"][0]["pid"].as_u64().unwrap();
    while SystemTime::now() <= first_expiry + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(200));
    }
    federation.kill9(pid);
    let federation = federation.up().unwrap();
    let restarted = federation.info["satellites"][0]["pid"].as_u64().unwrap();
    assert_ne!(restarted, pid);

    // The attachment comes back on the same socket, with the same bytes.
    let back = federation.dir().join("back.raw");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match nbdcopy_out(&uri, &back) {
            Ok(()) => break,
            Err(err) => {
                assert!(
                    Instant::now() < deadline,
                    "the attachment did not come back within 30 s: {err}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    assert_eq!(
        file_hash(&back, length).unwrap(),
        file_hash(&source, length).unwrap()
    );
    let clusters = federation.tether_json(&["cluster", "list"]).unwrap();
    let satellite = clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|cluster| cluster["name"] == "satellite-1")
        .unwrap();
    assert_eq!(satellite["state"], "joined", "{clusters}");
}
