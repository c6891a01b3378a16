//! A power cut, not only kill -9: the node's pool sits on `lossyfs`, a FUSE
//! filesystem that keeps every write in memory until it is fsynced and
//! forgets the rest when the power is cut. kill -9 alone keeps the page
//! cache and cannot show a missing fdatasync; this can. After the cut,
//! every write acknowledged and then flushed reads back, and every hash
//! matches its data.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use multicluster_tests::clients::qemu_io;
use multicluster_tests::harness::{DevFederation, LossyDisk as Lossy};

#[test]
fn a_power_cut_loses_no_acknowledged_flushed_write_and_no_hash_lies() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let uri = federation.create_attached("power", "256MiB").unwrap();
    // Move the node's pool onto lossyfs.
    let data_dir = PathBuf::from(federation.node("node-1")["data_dir"].as_str().unwrap());
    let cmdline = federation.kill_node_gracefully("node-1");
    let backing = federation.dir().join("backing");
    std::fs::rename(&data_dir, &backing).unwrap();
    std::fs::create_dir(&data_dir).unwrap();
    let mut disk = Lossy::mount(&backing, &data_dir);
    federation.start_node("node-1", &cmdline);
    let deadline = Instant::now() + Duration::from_secs(30);
    while qemu_io(&uri, &["read 0 4k"]).is_err() {
        assert!(
            Instant::now() < deadline,
            "the node did not serve from lossyfs"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Acknowledged and flushed (qemu-io flushes before it exits).
    qemu_io(
        &uri,
        &["write -P 0x3c 100M 8M", "write -P 0xc3 255M 1M", "flush"],
    )
    .unwrap();
    // Then writes that are acknowledged but never flushed, in flight at the cut.
    let fio = multicluster_tests::clients::fio_random_load(&uri, "64M", 16);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let view = federation.tether_json(&["volume", "get", "power"]).unwrap();
        if view["dirty_chunks"].as_u64().unwrap_or(0) > 16 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workload never got going: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The cut: the node dies and the disk forgets what was not synced.
    federation.kill9(federation.node_pid("node-1") as u64);
    disk.cut_power();
    let mut fio = fio;
    let _ = fio.kill();
    let _ = fio.wait();

    // As a restart opens the pool: recovery rehashes the marked extents,
    // and every chunk's hash must equal a fresh hash of its data.
    let report = federation.scrub(backing.to_str().unwrap()).unwrap();
    assert_eq!(report[0]["volume"], "power", "{report}");
    assert_eq!(
        report[0]["mismatched_chunks"], 0,
        "a hash lies after the cut: {report}"
    );

    // Back on a fresh mount of the same disk: the flushed writes are there.
    let _disk = Lossy::mount(&backing, &data_dir);
    federation.start_node("node-1", &cmdline);
    let deadline = Instant::now() + Duration::from_secs(30);
    while qemu_io(&uri, &["read 0 4k"]).is_err() {
        assert!(Instant::now() < deadline, "the node did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    qemu_io(&uri, &["read -P 0x3c 100M 8M", "read -P 0xc3 255M 1M"]).unwrap();
    let _ = federation.kill_node("node-1");
}
