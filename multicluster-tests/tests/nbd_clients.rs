//! Real NBD clients against a real dev federation (etcd, a process per node).

use multicluster_tests::clients::{
    file_hash, nbdcopy_in, nbdcopy_out, nbdinfo, qemu_img_convert, qemu_io, random_file, run,
};
use multicluster_tests::harness::DevFederation;

#[test]
fn nbdinfo_reports_size_flags_and_block_sizes() {
    let federation = DevFederation::builder().start().unwrap();
    let uri = federation.create_attached("info", "256MiB").unwrap();
    let info = nbdinfo(&uri).unwrap();
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 256u64 << 20);
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(export[flag], true, "{flag} in {export}");
    }
    assert_eq!(export["is_read_only"], false);
    assert_eq!(export["block_size_minimum"], 1);
    assert_eq!(export["block_size_preferred"], 4096);
    assert_eq!(export["block_size_maximum"], 32u64 << 20);
}

#[test]
fn qemu_io_patterns_over_unix_and_tcp() {
    let federation = DevFederation::builder().start().unwrap();
    let unix_uri = federation.create_attached("patterns", "128MiB").unwrap();
    qemu_io(
        &unix_uri,
        &[
            "write -P 0xa5 0 1M",
            "write -P 0x5a 4095 3",
            "write -P 0x11 127M 1M",
            "write -z 64M 2M",
            "discard 96M 1M",
            "flush",
        ],
    )
    .unwrap();
    let tcp = federation
        .tether_ok(&["volume", "attach", "patterns", "--nbd", "tcp:127.0.0.1:0"])
        .unwrap();
    let tcp_uri = tcp.trim();
    assert!(tcp_uri.starts_with("nbd://127.0.0.1:"), "{tcp_uri}");
    for uri in [unix_uri.as_str(), tcp_uri] {
        qemu_io(
            uri,
            &[
                "read -P 0xa5 0 4095",
                "read -P 0x5a 4095 3",
                "read -P 0xa5 4098 1044478",
                "read -P 0x11 127M 1M",
                "read -P 0 64M 2M",
                "read -P 0 96M 1M",
                "read -P 0 1M 1M",
            ],
        )
        .unwrap();
    }
    // qemu-img sees the same bytes.
    let converted = federation.dir().join("converted.raw");
    qemu_img_convert(&unix_uri, &converted).unwrap();
    let bytes = std::fs::read(&converted).unwrap();
    assert_eq!(bytes.len(), 128 << 20);
    assert!(bytes[..4095].iter().all(|b| *b == 0xa5));
    assert!(bytes[(127 << 20)..].iter().all(|b| *b == 0x11));
}

#[test]
fn nbdcopy_round_trips_random_data_on_many_volumes_at_once() {
    let federation = DevFederation::builder().start().unwrap();
    let length = 48usize << 20;
    let volumes: Vec<(String, String)> = (0..3)
        .map(|i| {
            let name = format!("copy{i}");
            let uri = federation.create_attached(&name, "64MiB").unwrap();
            (name, uri)
        })
        .collect();
    std::thread::scope(|scope| {
        for (i, (name, uri)) in volumes.iter().enumerate() {
            let dir = federation.dir().to_path_buf();
            scope.spawn(move || {
                let source = dir.join(format!("{name}.in"));
                let copy = dir.join(format!("{name}.out"));
                random_file(&source, length, i as u64).unwrap();
                nbdcopy_in(&source, uri).unwrap();
                nbdcopy_out(uri, &copy).unwrap();
                assert_eq!(
                    file_hash(&source, length as u64).unwrap(),
                    file_hash(&copy, length as u64).unwrap(),
                    "{name} round trip"
                );
                let tail = std::fs::read(&copy).unwrap();
                assert!(
                    tail[length..].iter().all(|b| *b == 0),
                    "{name}: the rest of the volume stays zero"
                );
            });
        }
    });
    // Volumes landed on different nodes: placement spreads by free capacity.
    let masters: std::collections::HashSet<String> = volumes
        .iter()
        .map(|(name, _)| {
            federation.tether_json(&["volume", "get", name]).unwrap()["master"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(masters.len(), 3, "{masters:?}");
}

#[test]
fn fio_verifies_crc32c_over_nbd() {
    let federation = DevFederation::builder().start().unwrap();
    let uri = federation.create_attached("fio", "256MiB").unwrap();
    let output = run(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=64M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=json",
        ],
    )
    .unwrap();
    let json_start = output.find('{').unwrap();
    let report: serde_json::Value = serde_json::from_str(&output[json_start..]).unwrap();
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["write"]["io_bytes"], 64u64 << 20);
    assert_eq!(
        job["read"]["io_bytes"],
        64u64 << 20,
        "the verify pass read everything back"
    );
}

#[test]
fn resize_is_seen_by_a_client_on_reconnect() {
    let federation = DevFederation::builder().start().unwrap();
    let uri = federation.create_attached("grow", "64MiB").unwrap();
    qemu_io(&uri, &["write -P 0x77 63M 1M"]).unwrap();
    assert!(
        qemu_io(&uri, &["write -P 0x78 64M 4k"]).is_err(),
        "writing past the end fails before the resize"
    );
    federation
        .tether_ok(&["volume", "resize", "grow", "--size", "128MiB"])
        .unwrap();
    assert_eq!(
        nbdinfo(&uri).unwrap()["exports"][0]["export-size"],
        128u64 << 20
    );
    qemu_io(
        &uri,
        &[
            "write -P 0x78 100M 1M",
            "read -P 0x77 63M 1M",
            "read -P 0x78 100M 1M",
            "read -P 0 64M 1M",
        ],
    )
    .unwrap();
    let view = federation.tether_json(&["volume", "get", "grow"]).unwrap();
    assert_eq!(view["size_bytes"], 128u64 << 20);
}
