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
