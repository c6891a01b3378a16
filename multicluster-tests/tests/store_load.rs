//! Store writes grow with busy volumes, at most about one per volume every
//! couple of seconds, not with the product of volumes and nodes: a status
//! write must not wake every node into writing again.

use std::time::Duration;

use multicluster_tests::harness::DevFederation;

/// fio random writes, 4 KiB at queue depth 8, for `seconds`.
fn busy(uri: &str, seconds: u64) -> std::process::Child {
    std::process::Command::new("fio")
        .args([
            "--name=busy",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=32M",
            "--time_based",
            &format!("--runtime={seconds}"),
            "--output-format=terse",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fio runs")
}

#[test]
fn store_writes_grow_at_most_linearly_with_busy_volumes() {
    const VOLUMES: usize = 4;
    const SECONDS: u64 = 10;
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let uris: Vec<String> = (0..VOLUMES)
        .map(|index| {
            let name = format!("busy{index}");
            let (_, uri, _) = federation.create_presented(&name, "64MiB", 2);
            uri
        })
        .collect();
    let idle_before = federation.store_revision().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let idle = federation.store_revision().unwrap() - idle_before;
    assert_eq!(idle, 0, "an idle federation writes nothing");

    let before = federation.store_revision().unwrap();
    let workloads: Vec<_> = uris.iter().map(|uri| busy(uri, SECONDS)).collect();
    for workload in workloads {
        let output = workload.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let writes = federation.store_revision().unwrap() - before;
    println!("{VOLUMES} busy volumes for {SECONDS} s: {writes} store writes");
    // At most one status write per busy volume per second, and a few more.
    let bound = (VOLUMES as u64 * SECONDS + 10) as i64;
    assert!(writes <= bound, "{writes} store writes (bound {bound})");
}
