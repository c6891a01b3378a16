//! A three-member etcd: kill -9 of the member every node and the registry
//! talk to does not take the volumes down. The clients of the store move to
//! the other members, no node loses its lease (so no master is deposed and
//! no failover happens), and a verifying workload loses nothing.

use std::time::Duration;

use multicluster_tests::clients::{finish, fio_verify, qemu_io};
use multicluster_tests::harness::DevFederation;

#[test]
fn kill_9_of_the_etcd_member_in_use_loses_no_lease_and_no_write() {
    let federation = DevFederation::builder()
        .nodes(3)
        .etcd_members(3)
        .start()
        .unwrap();
    let members = federation.etcd_members();
    assert_eq!(members.len(), 3, "{}", federation.info);
    let (view, uri, _) = federation.create_presented("quorum", "256MiB", 2);
    let epoch = view["epoch"].as_u64().unwrap();
    qemu_io(&uri, &["write -P 0x5a 0 32M", "flush"]).unwrap();

    let mut fio = fio_verify(&uri, "64M", "128M", 11);
    federation.wait_volume(
        "quorum",
        Duration::from_secs(30),
        "writes under way",
        |view| view["allocated_bytes"].as_u64().unwrap_or(0) > (32 << 20) + (16 << 20),
    );
    // Every client of the store starts with the first endpoint.
    let (endpoint, pid) = members[0].clone();
    federation.kill9(pid as u64);
    assert!(
        fio.try_wait().unwrap().is_none(),
        "the workload was still running when {endpoint} died"
    );
    finish(fio, "fio verify across the loss of an etcd member");
    qemu_io(&uri, &["read -P 0x5a 0 32M"]).unwrap();

    // No lease lapsed: same master, same epoch, every node up, copies in sync.
    let after = federation.wait_in_sync("quorum", Duration::from_secs(60));
    assert_eq!(
        after["epoch"].as_u64().unwrap(),
        epoch,
        "a failover happened: {after}"
    );
    assert_eq!(after["master"], view["master"], "{after}");
    federation.assert_copies_identical("quorum");
    federation.assert_all_nodes_up();
    // The nodes say where they went.
    let switched = federation
        .nodes()
        .iter()
        .filter(|node| {
            federation
                .node_log(node["name"].as_str().unwrap())
                .contains("etcd member unreachable; switched to another")
        })
        .count();
    assert_eq!(switched, 3, "every node moved to another member");
}
