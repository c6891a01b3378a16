//! `bench csi`: a satellite volume as Kubernetes consumes it, one run each,
//! on this machine.
//! - fio: fio (libaio, O_DIRECT) on a file in the ext4 filesystem of a
//!   staged and published satellite volume, against the same fio on a file
//!   in the host's filesystem (no target yet: the baseline the performance
//!   work starts from);
//! - latency: CreateVolume to a mounted filesystem (stage: volume host,
//!   loop device, mkfs, mount; publish: bind mount) over 20 volumes, p50
//!   and p99 (target p99 <= 2 s);
//! - rss: the node plugin's RSS with 10 volumes staged (target <= 30 MiB),
//!   and what the volume hosts hold beside it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use multicluster_tests::csi::{
    clients, create, create_id, mount_capability, publish, stage, unpublish, unstage, Controller,
    Node, MIB,
};
use multicluster_tests::harness::DevFederation;
use satellite_csi::csi::pb::volume_capability::access_mode::Mode;

use super::{fio, prefill, rss_kib, Target, WORKLOADS};

pub fn run(runtime: u64, size: &str, size_bytes: u64, only: &[String]) -> anyhow::Result<()> {
    let wanted = |part: &str| only.is_empty() || only.iter().any(|name| name == part);
    let federation = DevFederation::builder().nodes(1).satellites(1).start()?;
    federation.tether_ok(&[
        "grant",
        "add",
        "satellite-1",
        "--prefix",
        "satellite-1-",
        "--capacity",
        "200GiB",
        "--count",
        "100",
    ])?;
    let tokio = tokio::runtime::Runtime::new()?;
    let (mut controller, mut node) = tokio.block_on(clients(&federation, "satellite-1"));
    let kubelet = federation.dir().join("kubelet");
    if wanted("fio") {
        fio_through_mount(
            &tokio,
            (&mut controller, &mut node),
            &kubelet,
            runtime,
            size,
            size_bytes,
        )?;
    }
    if wanted("latency") {
        latency(&tokio, (&mut controller, &mut node), &kubelet)?;
    }
    if wanted("rss") {
        rss(&tokio, &federation, (&mut controller, &mut node), &kubelet)?;
    }
    Ok(())
}

/// Creates, stages and publishes `name` (ext4), returning (staging, target).
async fn mounted(
    (controller, node): (&mut Controller, &mut Node),
    kubelet: &Path,
    name: &str,
    bytes: i64,
) -> anyhow::Result<(String, PathBuf, PathBuf)> {
    let id = create_id(controller, create(name, bytes)).await;
    let staging = kubelet.join("staging").join(name);
    let target = kubelet.join("pods").join(name).join("mount");
    std::fs::create_dir_all(&staging)?;
    std::fs::create_dir_all(target.parent().unwrap())?;
    let capability = mount_capability(Mode::SingleNodeWriter);
    node.node_stage_volume(stage(&id, &staging, capability.clone()))
        .await?;
    node.node_publish_volume(publish(&id, &staging, &target, capability, false))
        .await?;
    Ok((id, staging, target))
}

async fn taken_down(
    node: &mut Node,
    id: &str,
    staging: &Path,
    target: &Path,
) -> anyhow::Result<()> {
    node.node_unpublish_volume(unpublish(id, target)).await?;
    node.node_unstage_volume(unstage(id, staging)).await?;
    Ok(())
}

fn fio_through_mount(
    tokio: &tokio::runtime::Runtime,
    (controller, node): (&mut Controller, &mut Node),
    kubelet: &Path,
    runtime: u64,
    size: &str,
    size_bytes: u64,
) -> anyhow::Result<()> {
    // Room for the file and the filesystem's own blocks.
    let bytes = (size_bytes + size_bytes / 4 + 256 * MIB as u64) as i64;
    let (id, staging, target) =
        tokio.block_on(mounted((controller, node), kubelet, "bench-fio", bytes))?;
    let in_volume = target.join("fio.dat");
    let host_dir = tempfile::Builder::new()
        .prefix("tether-bench-host")
        .tempdir_in("/var/tmp")?;
    let on_host = host_dir.path().join("fio.dat");
    let targets = [Target::FsFile(&on_host), Target::FsFile(&in_volume)];
    eprintln!("csi fio: prefill ...");
    for target in &targets {
        prefill(target, size)?;
    }
    let mut rows = Vec::new();
    for workload in WORKLOADS {
        eprintln!("csi fio: {} ...", workload.name);
        let host = fio(&targets[0], workload, runtime, size)?;
        let volume = fio(&targets[1], workload, runtime, size)?;
        rows.push((workload, host, volume));
    }
    tokio.block_on(taken_down(node, &id, &staging, &target))?;
    println!("\n### CSI: fio (libaio, O_DIRECT) on a file in a satellite volume's ext4 vs a file in the host's filesystem ({size} file, {runtime} s per run)\n");
    println!("| workload | host filesystem | satellite volume (ext4, loop, FUSE, link) | volume / host | p99 ms host / volume |");
    println!("| --- | --- | --- | --- | --- |");
    for (workload, host, volume) in rows {
        let unit = super::unit(workload);
        println!(
            "| {} | {:.0} {unit} | {:.0} {unit} | {:.2} | {:.2} / {:.2} |",
            workload.name,
            host.value,
            volume.value,
            volume.value / host.value,
            host.p99_ms,
            volume.p99_ms
        );
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn latency(
    tokio: &tokio::runtime::Runtime,
    (controller, node): (&mut Controller, &mut Node),
    kubelet: &Path,
) -> anyhow::Result<()> {
    const VOLUMES: usize = 20;
    let mut took = Vec::new();
    let mut staged = Vec::new();
    for index in 0..VOLUMES {
        let started = Instant::now();
        let volume = tokio.block_on(mounted(
            (controller, node),
            kubelet,
            &format!("bench-latency-{index}"),
            256 * MIB,
        ))?;
        took.push(started.elapsed());
        staged.push(volume);
    }
    for (id, staging, target) in &staged {
        tokio.block_on(taken_down(node, id, staging, target))?;
    }
    took.sort();
    let (p50, p99) = (percentile(&took, 0.50), percentile(&took, 0.99));
    let verdict = if p99 <= Duration::from_secs(2) {
        "met"
    } else {
        "MISSED"
    };
    println!("\n### CSI: CreateVolume to a mounted filesystem (stage: volume host, loop device, mkfs.ext4, mount; publish: bind mount), {VOLUMES} volumes of 256 MiB one after another\n");
    println!("| p50 | p99 | target p99 <= 2 s |");
    println!("| --- | --- | --- |");
    println!(
        "| {:.0} ms | {:.0} ms | {verdict} |",
        p50.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Volume hosts serving under the node plugin's state directory, by pid.
fn host_pids(node_dir: &Path) -> Vec<u64> {
    satellite_csi::csi::node::records::Records::new(node_dir)
        .list()
        .unwrap_or_default()
        .iter()
        .filter_map(|record| record.host_pid.map(u64::from))
        .collect()
}

fn rss(
    tokio: &tokio::runtime::Runtime,
    federation: &DevFederation,
    (controller, node): (&mut Controller, &mut Node),
    kubelet: &Path,
) -> anyhow::Result<()> {
    const VOLUMES: usize = 10;
    let plugin = federation.info["satellites"][0]["pid"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no satellite pid in federation.json"))?;
    let before = rss_kib(plugin)?;
    let mut staged = Vec::new();
    for index in 0..VOLUMES {
        let (id, staging, target) = tokio.block_on(mounted(
            (controller, node),
            kubelet,
            &format!("bench-rss-{index}"),
            64 * MIB,
        ))?;
        // Some I/O on each, as pods would do.
        std::fs::write(target.join("data"), vec![7u8; 4 << 20])?;
        staged.push((id, staging, target));
    }
    let after = rss_kib(plugin)?;
    let node_dir = federation.dir().join("satellites/satellite-1/csi-node");
    let hosts: Vec<u64> = host_pids(&node_dir)
        .into_iter()
        .filter_map(|pid| rss_kib(pid).ok())
        .collect();
    for (id, staging, target) in &staged {
        tokio.block_on(taken_down(node, id, staging, target))?;
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let host_total: u64 = hosts.iter().sum();
    let verdict = if after <= 30 * 1024 { "met" } else { "MISSED" };
    println!("\n### CSI: node plugin memory with {VOLUMES} volumes staged and published\n");
    println!("| node plugin RSS before | with {VOLUMES} staged | target <= 30 MiB | volume hosts (one per volume): each, mean | all hosts | plugin + hosts |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {:.1} MiB | {:.1} MiB | {verdict} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
        mib(before),
        mib(after),
        mib(host_total / hosts.len().max(1) as u64),
        mib(host_total),
        mib(after + host_total)
    );
    Ok(())
}
