//! Crash safety with real processes: `kill -9` of a storage node in the
//! middle of a write workload loses no flushed write, and after restart the
//! hash list matches the data (checked by recomputing it).

use multicluster_tests::clients::qemu_io;
use multicluster_tests::harness::DevFederation;

#[test]
fn kill_9_loses_no_flushed_write_and_hash_lists_stay_true() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let uri = federation.create_attached("crash", "512MiB").unwrap();
    // Acknowledged and flushed (qemu-io flushes before it exits), in a region
    // the workload below does not touch.
    qemu_io(
        &uri,
        &["write -P 0x3c 400M 8M", "write -P 0xc3 511M 1M", "flush"],
    )
    .unwrap();

    // A random-write workload over the first 256 MiB; kill -9 the node under it.
    let fio = multicluster_tests::clients::fio_random_load(&uri, "256M", 32);
    let node = federation.node("node-1");
    // Wait until the workload has dirtied chunks (the node reports them), then kill.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let view = federation.tether_json(&["volume", "get", "crash"]).unwrap();
        if view["allocated_bytes"].as_u64().unwrap() > (9u64 << 20) + (64 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workload never got going: {view}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    federation.kill9(node["pid"].as_u64().unwrap());
    let mut fio = fio;
    let _ = fio.wait();

    // Offline, as a restart opens it: recovery rehashes the marked extents
    // and every chunk hash must equal a fresh hash of the data.
    let report = federation
        .scrub(node["data_dir"].as_str().unwrap())
        .unwrap();
    assert_eq!(report[0]["volume"], "crash");
    assert_eq!(report[0]["mismatched_chunks"], 0, "{report}");
    assert_eq!(report[0]["chunks"], 2048);
    assert!(
        report[0]["recovered_extents"].as_u64().unwrap() > 0,
        "the crash left extents to rehash: {report}"
    );

    // Bring the federation back and read the flushed data.
    federation.down().unwrap();
    let restarted = federation.up().unwrap();
    qemu_io(&uri, &["read -P 0x3c 400M 8M", "read -P 0xc3 511M 1M"]).unwrap();
    let view = restarted.tether_json(&["volume", "get", "crash"]).unwrap();
    assert_eq!(view["copies"][0]["state"], "in-sync", "{view}");
}
