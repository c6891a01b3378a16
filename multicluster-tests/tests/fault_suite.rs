//! The whole-federation fault suite: a central cluster of 3 nodes with 2
//! satellites and a paired DR cluster of 3 nodes, each node and satellite
//! a host in its own network namespace (`dev up --netns`; partitions are
//! iptables rules inside a host, or between the two clusters' bridges in
//! the root namespace), verifying writers on a replicated
//! volume, a DR-linked one and one volume on each satellite, and a seeded
//! random schedule of faults: kill -9 and restart of a node, SIGSTOP past
//! its lease, a node cut from etcd, master cut from replica, satellites cut
//! from the gateways, the DC-to-DC link cut, a gateway killed and started
//! again, a node of the DR cluster and the central registry killed and
//! started again, the central etcd killed and started again, and one
//! node's pool (its own small ext4) filled to the last block. Each writer (`scripts/sequenced_writes.py`, libnbd) puts write i
//! in block i mod 512 and logs every acknowledgement; at the end every
//! volume, and the DR copy after a planned promote, must hold exactly a
//! prefix of its writer's writes that includes every acknowledged one.
//!
//! `FAULT_SECONDS` (default 180, what CI runs) sets how long faults go on;
//! `FAULT_SEED` replays a schedule; `FAULT_KINDS=KillEtcd,FullPool` draws
//! only from those kinds. The report (seed, every fault, the
//! longest stall each writer saw per fault as p50/p99/max, client errors,
//! acknowledged writes lost) is printed and written to
//! `target/fault-report.txt`. For an hour:
//! `FAULT_SECONDS=3600 cargo test -p multicluster-tests --test fault_suite -- --nocapture`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use multicluster_tests::dr::{block_sequences, prefix_point, SequencedWriter};
use multicluster_tests::faults::{
    cmdline, cut_host_from_host, cut_host_from_port, cut_subnet_from, percentiles, port_of,
    respawn, respawn_in, Progress, Respawned, Rng, SmallPool,
};
use multicluster_tests::harness::{host_of, DevFederation};

const BLOCKS: u64 = 512;
/// A writer that makes no progress this long after a fault is healed has
/// not recovered: the suite fails.
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);
/// A DC-to-DC cut (2 s or longer) that left the DR copy less behind than
/// this did not cut the link.
const DC_CUT_MIN_LAG: f64 = 1.0;

struct Writer {
    volume: String,
    uri: String,
    writer: Option<SequencedWriter>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    KillNode,
    StopNode,
    NodeFromEtcd,
    MasterFromReplica,
    SatellitesFromGateways,
    DcLink,
    KillGateway,
    KillPeerNode,
    KillRegistry,
    FullPool,
    KillEtcd,
}

const KINDS: [Kind; 11] = [
    Kind::KillNode,
    Kind::StopNode,
    Kind::NodeFromEtcd,
    Kind::MasterFromReplica,
    Kind::SatellitesFromGateways,
    Kind::DcLink,
    Kind::KillGateway,
    Kind::KillPeerNode,
    Kind::KillRegistry,
    Kind::FullPool,
    Kind::KillEtcd,
];

fn acked(writers: &[Writer]) -> Vec<u64> {
    writers
        .iter()
        .map(|w| w.writer.as_ref().map_or(0, SequencedWriter::acked))
        .collect()
}

#[test]
fn the_federation_loses_no_acknowledged_write_under_a_random_schedule_of_faults() {
    let seconds: u64 = std::env::var("FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut rng = Rng::new(seed);
    // FAULT_KINDS=KillEtcd,FullPool: only these (names as in the report).
    let kinds: Vec<Kind> = match std::env::var("FAULT_KINDS") {
        Ok(names) => names
            .split(',')
            .map(|name| {
                *KINDS
                    .iter()
                    .find(|kind| format!("{kind:?}") == name.trim())
                    .unwrap_or_else(|| panic!("FAULT_KINDS: no fault {name}; they are {KINDS:?}"))
            })
            .collect(),
        Err(_) => KINDS.to_vec(),
    };
    let mut report = String::new();
    writeln!(report, "fault suite: seed {seed}, {seconds} s of faults").unwrap();
    println!("fault suite seed {seed} (FAULT_SEED={seed} replays it)");

    let federation = DevFederation::builder()
        .nodes(3)
        .satellites(2)
        .dr()
        .netns()
        .start()
        .unwrap();
    multicluster_tests::dr::pair(&federation, &[]).unwrap();
    let dir = federation.dir().to_path_buf();
    // One node's pool on a filesystem of its own, which the full-pool fault fills.
    let pool_node = "node-3";
    let small_pool = SmallPool::put(&federation, pool_node, 1 << 30).unwrap();

    // One node presents the central volumes and is never faulted: its NBD
    // clients are the writers (a presenter's death is its clients' death).
    let (_, repl_uri, presenter) = federation.create_presented("repl", "64MiB", 2);
    federation
        .tether_ok(&[
            "volume",
            "create",
            "drv",
            "--size",
            "64MiB",
            "--replicas",
            "2",
        ])
        .unwrap();
    federation.wait_in_sync("drv", Duration::from_secs(60));
    let drv_socket = dir.join("drv.sock");
    let drv_uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "drv",
            "--nbd",
            &format!("unix:{}", drv_socket.display()),
            "--node",
            &presenter,
        ])
        .unwrap()
        .trim()
        .to_string();
    federation
        .tether_ok(&["dr", "link", "drv", "--to", "dr", "--rpo", "10s"])
        .unwrap();
    let (_, sat1_uri) = federation
        .attach_on_satellite(
            "sat1",
            &["--size", "64MiB", "--replicas", "2"],
            "satellite-1",
        )
        .unwrap();
    let (_, sat2_uri) = federation
        .attach_on_satellite(
            "sat2",
            &["--size", "64MiB", "--replicas", "2"],
            "satellite-2",
        )
        .unwrap();
    let mut writers: Vec<Writer> = [
        ("repl", repl_uri),
        ("drv", drv_uri),
        ("sat1", sat1_uri),
        ("sat2", sat2_uri),
    ]
    .into_iter()
    .map(|(volume, uri)| Writer {
        volume: volume.into(),
        writer: Some(SequencedWriter::start(&uri, BLOCKS, u64::MAX / 2).unwrap()),
        uri,
    })
    .collect();
    let started = Instant::now();
    while acked(&writers).contains(&0) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "writers did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let progress = Progress::start(
        writers
            .iter()
            .map(|w| w.writer.as_ref().unwrap().acked_counter())
            .collect(),
    );
    let targets: Vec<String> = federation
        .nodes()
        .iter()
        .map(|node| node["name"].as_str().unwrap().to_string())
        .filter(|name| *name != presenter)
        .collect();
    let etcd_port = port_of(
        federation.info["clusters"][0]["etcd"]["endpoints"][0]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut gateways: Vec<(String, String, u32, std::path::PathBuf)> = federation.gateways();
    let mut respawned = Respawned::default();
    let peer = multicluster_tests::dr::peer_info(&federation).unwrap();
    // Each cluster's bridge: where its etcd, registry and gateways listen.
    let network = |info: &serde_json::Value| -> (String, String) {
        let network = &info["clusters"][0]["network"];
        let address = network["address"].as_str().expect("--netns").to_string();
        let subnet = format!("{}.0/24", address.rsplit_once('.').unwrap().0);
        (address, subnet)
    };
    let (central_address, central_subnet) = network(&federation.info);
    let (peer_address, peer_subnet) = network(&peer);
    // The satellites' hosts.
    let satellite_hosts: Vec<String> = federation.info["satellites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|satellite| host_of(satellite).expect("a satellite's host").0)
        .collect();
    // (name, pid, log, network namespace) of the DR cluster's nodes.
    let mut peer_nodes: Vec<(String, u32, std::path::PathBuf, String)> = peer["clusters"][0]
        ["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| {
            (
                node["name"].as_str().unwrap().to_string(),
                node["pid"].as_u64().unwrap() as u32,
                node["log"].as_str().unwrap().into(),
                host_of(node).expect("a DR node's host").0,
            )
        })
        .collect();
    let registry = &federation.info["clusters"][0]["registry"];
    let mut registry_pid = registry["pid"].as_u64().unwrap() as u32;
    let registry_log: std::path::PathBuf = registry["log"].as_str().unwrap().into();
    let etcd = &federation.info["clusters"][0]["etcd"];
    let mut etcd_pid = etcd["pid"].as_u64().unwrap() as u32;
    let etcd_log: std::path::PathBuf = etcd["log"].as_str().unwrap().into();

    let mut stalls: BTreeMap<Kind, Vec<Duration>> = BTreeMap::new();
    let mut client_errors: Vec<String> = Vec::new();
    let mut unrecovered: Vec<String> = Vec::new();
    let mut ineffective: Vec<String> = Vec::new();
    let faults_started = Instant::now();
    let mut count = 0;
    while faults_started.elapsed() < Duration::from_secs(seconds) {
        let kind = *rng.pick(&kinds);
        let target = rng.pick(&targets).clone();
        let hold = Duration::from_millis(2000 + rng.below(3000));
        let at = faults_started.elapsed().as_secs_f64();
        let start = Instant::now();
        let what = match kind {
            Kind::KillNode => {
                let args = federation.kill_node(&target);
                std::thread::sleep(hold);
                federation.start_node(&target, &args);
                format!("kill -9 {target}, restarted after {hold:?}")
            }
            Kind::StopNode => {
                federation.pause_node(&target);
                std::thread::sleep(hold + Duration::from_secs(2));
                federation.resume_node(&target);
                format!(
                    "SIGSTOP {target} for {:?} (lease 2 s)",
                    hold + Duration::from_secs(2)
                )
            }
            Kind::NodeFromEtcd => {
                let (netns, _) = federation.node_host(&target).unwrap();
                let cut = cut_host_from_port(&netns, &central_address, "tcp", etcd_port).unwrap();
                std::thread::sleep(hold);
                drop(cut);
                format!("{target} cut from etcd for {hold:?}")
            }
            Kind::MasterFromReplica => {
                let view = federation.tether_json(&["volume", "get", "repl"]).unwrap();
                let master =
                    multicluster_tests::harness::master_of(&view).unwrap_or_else(|| target.clone());
                let replica = multicluster_tests::harness::replicas_of(&view)
                    .first()
                    .cloned()
                    .unwrap_or_else(|| presenter.clone());
                let (netns, _) = federation.node_host(&master).unwrap();
                let (_, replica_address) = federation.node_host(&replica).unwrap();
                let cut = cut_host_from_host(&netns, &replica_address).unwrap();
                std::thread::sleep(hold);
                drop(cut);
                format!("master {master} of repl cut from its replica {replica} for {hold:?}")
            }
            Kind::SatellitesFromGateways => {
                let cuts: Vec<_> = satellite_hosts
                    .iter()
                    .flat_map(|netns| {
                        gateways.iter().map(|(_, endpoint, _, _)| {
                            let port = port_of(endpoint).unwrap();
                            cut_host_from_port(netns, &central_address, "udp", port).unwrap()
                        })
                    })
                    .collect();
                std::thread::sleep(hold);
                drop(cuts);
                format!("satellites cut from every gateway for {hold:?}")
            }
            Kind::DcLink => {
                // Each datacentre's hosts from the other's bridge, both ways.
                let cuts = [
                    cut_subnet_from(&central_subnet, &peer_address).unwrap(),
                    cut_subnet_from(&peer_subnet, &central_address).unwrap(),
                ];
                std::thread::sleep(hold);
                // The cut holds: drv's DR copy fell behind by about as long.
                let lag = multicluster_tests::dr::dr_status(&federation, None, "drv")
                    .ok()
                    .and_then(|status| status["lag_seconds"].as_f64())
                    .unwrap_or(0.0);
                drop(cuts);
                if lag < DC_CUT_MIN_LAG {
                    ineffective.push(format!("DC-to-DC cut of {hold:?}: DR lag only {lag:.1}s"));
                }
                format!("DC-to-DC link cut for {hold:?} (DR lag at heal {lag:.1}s)")
            }
            Kind::KillGateway => {
                let index = rng.below(gateways.len() as u64) as usize;
                let (name, _, pid, log) = gateways[index].clone();
                let args = cmdline(pid).unwrap();
                federation.kill9(pid as u64);
                std::thread::sleep(Duration::from_millis(500));
                let child = respawn(&args, &log).unwrap();
                gateways[index].2 = child.id();
                respawned.push(child);
                format!("kill -9 gateway {name}, restarted after 0.5 s")
            }
            Kind::KillPeerNode => {
                let index = rng.below(peer_nodes.len() as u64) as usize;
                let (name, pid, log, netns) = peer_nodes[index].clone();
                let args = cmdline(pid).unwrap();
                federation.kill9(pid as u64);
                std::thread::sleep(hold);
                let child = respawn_in(Some(&netns), &args, &log).unwrap();
                peer_nodes[index].1 = child.id();
                respawned.push(child);
                format!("kill -9 DR-cluster node {name}, restarted after {hold:?}")
            }
            Kind::KillRegistry => {
                let args = cmdline(registry_pid).unwrap();
                federation.kill9(registry_pid as u64);
                std::thread::sleep(hold);
                let child = respawn(&args, &registry_log).unwrap();
                registry_pid = child.id();
                respawned.push(child);
                format!("kill -9 the central registry, restarted after {hold:?}")
            }
            Kind::KillEtcd => {
                let args = cmdline(etcd_pid).unwrap();
                federation.kill9(etcd_pid as u64);
                std::thread::sleep(hold);
                let child = respawn(&args, &etcd_log).unwrap();
                etcd_pid = child.id();
                respawned.push(child);
                format!("kill -9 the central etcd, restarted after {hold:?}")
            }
            Kind::FullPool => {
                let ballast = small_pool.fill().unwrap();
                std::thread::sleep(hold);
                drop(ballast);
                format!("pool of {pool_node} full (ENOSPC) for {hold:?}")
            }
        };
        let during = start.elapsed();
        let live: Vec<bool> = writers.iter().map(|w| w.writer.is_some()).collect();
        let longest = progress.stalls(start, start + during, &live, RECOVERY_LIMIT);
        progress.forget_before(Instant::now());
        for (writer, stall) in writers.iter_mut().zip(&longest) {
            if writer.writer.is_none() {
                continue;
            }
            stalls.entry(kind).or_default().push(*stall);
            if *stall > during + RECOVERY_LIMIT {
                unrecovered.push(format!(
                    "{}: no write for {stall:?} after {what}",
                    writer.volume
                ));
            }
        }
        // A writer that stopped got an error from its NBD client.
        for writer in &mut writers {
            let stopped = writer.writer.as_mut().is_some_and(|w| !w.running());
            if stopped {
                let (last, stderr) = writer.writer.take().unwrap().wait().unwrap();
                client_errors.push(format!(
                    "{} after write {last} ({what}): {}",
                    writer.volume,
                    stderr.trim()
                ));
            }
        }
        count += 1;
        writeln!(
            report,
            "{at:7.1}s  {what}: longest stall per writer {:?}",
            writers
                .iter()
                .zip(&longest)
                .map(|(w, s)| format!("{}={:.2}s", w.volume, s.as_secs_f64()))
                .collect::<Vec<_>>()
        )
        .unwrap();
        // Settle before the next fault: both copies in sync again, so one
        // fault at a time is what the volumes must survive.
        for volume in ["repl", "drv", "sat1", "sat2"] {
            federation.wait_in_sync(volume, Duration::from_secs(120));
        }
    }

    drop(progress);
    // The end: stop the writers, then check every volume against its log.
    let mut lost = 0u64;
    let mut diverged: Vec<String> = Vec::new();
    let mut finals = BTreeMap::new();
    for writer in &mut writers {
        let Some(running) = writer.writer.take() else {
            continue;
        };
        let acked = running.acked();
        drop(running);
        let image = dir.join(format!("{}.final", writer.volume));
        multicluster_tests::clients::nbdcopy_out(&writer.uri, &image).unwrap();
        let seqs = block_sequences(&std::fs::read(&image).unwrap(), BLOCKS).unwrap();
        let point = prefix_point(&seqs, BLOCKS)
            .unwrap_or_else(|err| panic!("volume {}: {err}", writer.volume));
        lost += acked.saturating_sub(point);
        writeln!(
            report,
            "volume {}: {acked} writes acknowledged, holds writes 1..={point}",
            writer.volume
        )
        .unwrap();
        finals.insert(writer.volume.clone(), point);
        // Every in-sync copy identical to the master.
        let verified = federation.tether(&["volume", "verify", &writer.volume, "-o", "json"]);
        if !verified.status.success() {
            let view = federation.tether_json(&["volume", "get", &writer.volume]);
            diverged.push(format!(
                "volume {}: {} {}; view {view:?}",
                writer.volume,
                String::from_utf8_lossy(&verified.stderr).trim(),
                String::from_utf8_lossy(&verified.stdout).trim()
            ));
        }
    }
    // The DR copy, after a planned promote (it loses nothing): the same point.
    let promoted = federation.tether_peer("dr", &["dr", "promote", "drv"]);
    assert!(promoted.status.success(), "{promoted:?}");
    let dr_uri = multicluster_tests::dr::attach_in_dr(&federation, "drv");
    let image = dir.join("drv-dr.final");
    multicluster_tests::clients::nbdcopy_out(&dr_uri, &image).unwrap();
    let dr_point = prefix_point(
        &block_sequences(&std::fs::read(&image).unwrap(), BLOCKS).unwrap(),
        BLOCKS,
    )
    .unwrap();
    writeln!(
        report,
        "DR copy of drv after a planned promote: writes 1..={dr_point}"
    )
    .unwrap();
    if let Some(primary) = finals.get("drv") {
        lost += primary.saturating_sub(dr_point);
    }

    writeln!(report, "faults: {count}").unwrap();
    writeln!(
        report,
        "longest stall per writer per fault (failover / reconnect), by kind:"
    )
    .unwrap();
    for (kind, times) in &stalls {
        let (p50, p99, max) = percentiles(times);
        writeln!(
            report,
            "  {kind:?}: n={} p50 {p50:.2}s p99 {p99:.2}s max {max:.2}s",
            times.len()
        )
        .unwrap();
    }
    let all: Vec<Duration> = stalls.values().flatten().copied().collect();
    let (p50, p99, max) = percentiles(&all);
    writeln!(
        report,
        "  all: n={} p50 {p50:.2}s p99 {p99:.2}s max {max:.2}s",
        all.len()
    )
    .unwrap();
    writeln!(report, "client errors: {}", client_errors.len()).unwrap();
    for error in &client_errors {
        writeln!(report, "  {error}").unwrap();
    }
    writeln!(report, "acknowledged writes lost: {lost}").unwrap();
    writeln!(report, "copies that differ: {}", diverged.len()).unwrap();
    for line in &diverged {
        writeln!(report, "  {line}").unwrap();
    }
    println!("{report}");
    let target_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let _ = std::fs::write(target_dir.join("fault-report.txt"), &report);
    drop(respawned);

    assert_eq!(lost, 0, "acknowledged writes were lost:\n{report}");
    assert!(
        diverged.is_empty(),
        "in-sync copies differ after the faults:\n{report}"
    );
    assert!(
        ineffective.is_empty(),
        "partitions that did not cut: {ineffective:?}\n{report}"
    );
    assert!(
        unrecovered.is_empty(),
        "writers did not recover: {unrecovered:?}\n{report}"
    );
}
