//! Overlapping writes in flight at once (NBD allows it; the last to land
//! wins) must land in the same order on every copy of a replicated volume:
//! after a failover the client must read what it last wrote, whichever copy
//! is master.

use std::path::{Path, PathBuf};
use std::process::Command;

use multicluster_tests::harness::{copies_of, DevFederation};

const BLOCK: usize = 64 * 1024;
const OFFSETS: usize = 64;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/overlapping_writes.py")
}

/// Runs the libnbd client (Debian's python3 has the `nbd` module).
fn overlapping_writes(uri: &str, rounds: usize) {
    let output = Command::new("/usr/bin/python3")
        .arg(script())
        .args([uri, &OFFSETS.to_string(), &rounds.to_string()])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "overlapping writes failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The first `OFFSETS` blocks of a copy's data file, as the node wrote them.
fn blocks_of(federation: &DevFederation, node: &str, volume: &str) -> Vec<Vec<u8>> {
    let data_dir = federation.node(node)["data_dir"]
        .as_str()
        .unwrap()
        .to_string();
    let data = std::fs::read(
        Path::new(&data_dir)
            .join("volumes")
            .join(volume)
            .join("data"),
    )
    .expect("the copy's data file");
    data[..OFFSETS * BLOCK]
        .chunks(BLOCK)
        .map(<[u8]>::to_vec)
        .collect()
}

/// Which blocks differ between every copy and the first.
fn differing_blocks(federation: &DevFederation, volume: &str) -> Vec<(String, usize)> {
    let view = federation.tether_json(&["volume", "get", volume]).unwrap();
    let copies = copies_of(&view);
    let first = blocks_of(federation, &copies[0], volume);
    let mut differing = Vec::new();
    for copy in &copies[1..] {
        let other = blocks_of(federation, copy, volume);
        for (block_idx, (a, b)) in first.iter().zip(&other).enumerate() {
            if a != b {
                differing.push((copy.clone(), block_idx));
            }
        }
    }
    differing
}

#[test]
fn overlapping_writes_land_in_the_same_order_on_every_copy() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    // Through a node without a copy (one block stream to the master) ...
    let (_, remote_uri, _) = federation.create_presented("remote", "64MiB", 2);
    // ... and on the master itself (the NBD server runs on the master's node).
    let (view, _, _) = federation.create_presented("local", "64MiB", 2);
    let master = view["master"].as_str().unwrap().to_string();
    federation
        .tether_ok(&["volume", "detach", "local"])
        .unwrap();
    let socket = federation.dir().join("local-master.sock");
    let local_uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "local",
            "--nbd",
            &format!("unix:{}", socket.display()),
            "--node",
            &master,
        ])
        .unwrap()
        .trim()
        .to_string();

    for (volume, uri) in [("remote", &remote_uri), ("local", &local_uri)] {
        overlapping_writes(uri, 6);
        let differing = differing_blocks(&federation, volume);
        assert!(
            differing.is_empty(),
            "volume {volume}: {} of {OFFSETS} blocks differ between copies: {differing:?}",
            differing.len()
        );
        let view = federation.wait_in_sync(volume, std::time::Duration::from_secs(30));
        federation.assert_copies_identical(volume);
        println!("{volume}: every copy identical; {view}");
    }
}

/// A master whose own disk fails a write its replica took does not stay in
/// the ISR with different data: it hands the volume to the replica, and the
/// client, whose request the presenting node sends again, sees no error.
#[test]
fn a_master_whose_disk_fails_hands_over_and_the_client_sees_no_error() {
    use multicluster_tests::clients::qemu_io;
    use multicluster_tests::harness::replicas_of;
    use std::time::Duration;
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let (view, uri, _) = federation.create_presented("failing", "64MiB", 2);
    let first_master = view["master"].as_str().unwrap().to_string();
    let lossy = replicas_of(&view)[0].clone();
    // The replica's pool moves onto a disk that can fail...
    let (disk, _) = federation.put_on_lossy_disk(&lossy);
    federation.wait_in_sync("failing", Duration::from_secs(60));
    // ... and becomes master (the first master stops; it comes back as replica).
    let other = federation.kill_node_gracefully(&first_master);
    federation.wait_volume("failing", Duration::from_secs(30), "failover", |view| {
        view["master"] == lossy.as_str()
    });
    federation.start_node(&first_master, &other);
    let before = federation.wait_in_sync("failing", Duration::from_secs(60));
    qemu_io(&uri, &["write -P 0x11 0 1M", "flush"]).unwrap();

    // The master's disk fails; its replica takes the write.
    disk.toggle_failing();
    qemu_io(&uri, &["write -P 0x77 0 1M", "flush"])
        .expect("the client sees no error when the master's own disk fails");
    let after = federation.wait_volume("failing", Duration::from_secs(30), "hand-over", |view| {
        view["master"] == first_master.as_str()
    });
    assert!(
        after["epoch"].as_u64() > before["epoch"].as_u64(),
        "{after}"
    );
    let failed_copy = after["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|copy| copy["node"] == lossy.as_str())
        .unwrap()
        .clone();
    assert_ne!(failed_copy["state"], "in-sync", "{after}");
    qemu_io(&uri, &["read -P 0x77 0 1M"]).unwrap();
    assert!(federation
        .node_log(&lossy)
        .contains("local write failed where the replicas succeeded; stepping down"));

    // The disk recovers: the copy is brought back and agrees again.
    disk.toggle_failing();
    federation.wait_in_sync("failing", Duration::from_secs(60));
    federation.assert_copies_identical("failing");
    let _ = federation.kill_node(&lossy);
}
