//! `tether volume verify` compares every in-sync copy's hash tree with the
//! master's and, with --repair, copies what differs from the master. To
//! make a copy differ while it stays in sync, the test writes to the
//! replica as its master would (a certificate in the master's name from the
//! cluster's CA, the epoch the store holds): the divergence a replication
//! bug would leave.

use std::time::Duration;

use multicluster_tests::clients::qemu_io;
use multicluster_tests::harness::{
    block_exchange as exchange, replicas_of, tls_connect, DevFederation,
};
use tether_proto::block::Frame;
use tether_tls::{Identity, Role};

#[test]
fn verify_finds_a_copy_that_differs_and_repair_copies_it_from_the_master() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let (view, uri, _) = federation.create_presented("checked", "64MiB", 2);
    qemu_io(&uri, &["write -P 0x42 0 4M", "flush"]).unwrap();
    let report = federation.assert_copies_identical("checked");
    assert_eq!(report["copies"].as_array().unwrap().len(), 1, "{report}");

    // Write 64 KiB of something else into the replica's copy at 1 MiB
    // (chunk 4), as the master would.
    let master = view["master"].as_str().unwrap().to_string();
    let replica = replicas_of(&view)[0].clone();
    let epoch = view["epoch"].as_u64().unwrap();
    let addr = federation.block_addr(&replica);
    let as_master = federation.issue(&Identity::new("central", Role::Node, &master), None);
    let trust = std::fs::read_to_string(as_master.join("ca.crt")).unwrap();
    let server = Identity::new("central", Role::Node, &replica).dns_name();
    let mut stream = tls_connect(&addr, Some(&as_master), &trust, &server).unwrap();
    let hello = Frame::Hello {
        volume: "checked".into(),
        node: master.clone(),
        epoch,
    };
    assert_eq!(
        exchange(&mut stream, hello),
        Frame::Ack { seq: 0, error: 0 }
    );
    let write = Frame::Write {
        seq: 1,
        epoch,
        offset: 1 << 20,
        fua: true,
        data: bytes::Bytes::from(vec![0x99u8; 64 << 10]),
    };
    assert_eq!(
        exchange(&mut stream, write),
        Frame::Ack { seq: 1, error: 0 }
    );
    drop(stream);

    // verify finds exactly that chunk, and says so with a failing exit.
    let found = federation.tether(&["volume", "verify", "checked", "-o", "json"]);
    assert!(
        !found.status.success(),
        "verify must fail when copies differ"
    );
    let report: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    let copy = &report["copies"][0];
    assert_eq!(copy["node"], replica.as_str(), "{report}");
    assert_eq!(copy["chunks_differing"], 1, "{report}");
    assert_eq!(copy["differing"][0], 4, "{report}");
    assert!(String::from_utf8_lossy(&found.stderr).contains("--repair"));

    // --repair copies it from the master; then the copies agree again, and
    // the client still reads what it wrote.
    let repaired = federation
        .tether_json(&["volume", "verify", "checked", "--repair"])
        .unwrap();
    assert_eq!(repaired["copies"][0]["chunks_repaired"], 1, "{repaired}");
    federation.assert_copies_identical("checked");
    qemu_io(&uri, &["read -P 0x42 0 4M"]).unwrap();
    let data_dir = federation.node(&replica)["data_dir"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = std::fs::read(format!("{data_dir}/volumes/checked/data")).unwrap();
    assert!(copy[1 << 20..(1 << 20) + (64 << 10)]
        .iter()
        .all(|byte| *byte == 0x42));
    federation.wait_in_sync("checked", Duration::from_secs(30));
}
