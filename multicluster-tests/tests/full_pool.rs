//! A full pool, as the kernel reports one (ENOSPC from a real ext4 filled
//! to its last block): on one copy it costs the client nothing (the copy
//! leaves the in-sync set, or the master hands over) and the copy comes
//! back by Delta Sync once there is room; on every copy the client gets
//! ENOSPC for the write, keeps what was acknowledged, and writes again
//! once there is room.

use std::time::Duration;

use multicluster_tests::clients::qemu_io;
use multicluster_tests::faults::SmallPool;
use multicluster_tests::harness::{copies_of, DevFederation};

const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn a_full_pool_costs_the_client_nothing_while_a_copy_has_room_and_is_a_clear_error_when_none_has() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let (view, uri, _) = federation.create_presented("full", "128MiB", 2);
    let pools: Vec<SmallPool> = copies_of(&view)
        .iter()
        .map(|node| SmallPool::put(&federation, node, 256 << 20).unwrap())
        .collect();
    federation.wait_in_sync("full", SYNC_TIMEOUT);
    qemu_io(&uri, &["write -P 0x11 0 16M", "flush"]).unwrap();

    // Each copy's pool full in turn, while the other has room: fresh
    // regions written (they need new blocks), no error for the client.
    for (round, pool) in pools.iter().enumerate() {
        let ballast = pool.fill().unwrap();
        let offset = format!("{}M", 16 + 16 * round);
        let pattern = format!("0x{:x}", 0x22 + round);
        qemu_io(
            &uri,
            &[&format!("write -P {pattern} {offset} 16M"), "flush"],
        )
        .unwrap_or_else(|err| panic!("round {round}: the client saw the full pool: {err}"));
        qemu_io(&uri, &[&format!("read -P {pattern} {offset} 16M")]).unwrap();
        let view = federation.tether_json(&["volume", "get", "full"]).unwrap();
        let in_sync = view["copies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|copy| copy["state"] == "in-sync")
            .count();
        assert_eq!(
            in_sync, 1,
            "round {round}: the full copy left the ISR: {view}"
        );
        drop(ballast);
        federation.wait_in_sync("full", SYNC_TIMEOUT);
        federation.assert_copies_identical("full");
    }

    // Every pool full: the write fails with ENOSPC, nothing else does.
    let ballasts: Vec<_> = pools.iter().map(|pool| pool.fill().unwrap()).collect();
    let refused = qemu_io(&uri, &["write -P 0x44 64M 16M", "flush"]);
    let error = format!(
        "{:#}",
        refused.expect_err("a write with no room anywhere fails")
    );
    assert!(error.contains("No space left on device"), "{error}");
    qemu_io(
        &uri,
        &[
            "read -P 0x11 0 16M",
            "read -P 0x22 16M 16M",
            "read -P 0x23 32M 16M",
        ],
    )
    .unwrap();
    drop(ballasts);
    federation.wait_in_sync("full", SYNC_TIMEOUT);
    qemu_io(
        &uri,
        &["write -P 0x55 64M 16M", "flush", "read -P 0x55 64M 16M"],
    )
    .unwrap();
    federation.wait_in_sync("full", SYNC_TIMEOUT);
    federation.assert_copies_identical("full");
    drop(pools);
}
