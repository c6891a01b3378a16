//! `bench dr`: DR between two datacentres (`dev up --dr`, one node each),
//! one run, the link central → dr through a userspace shaper (100 Mbit/s,
//! 10 ms each way, a 256 KiB queue; netem is not available here):
//! - rpo: fio 4k random writes at 10 MB/s of 50 % compressible data for
//!   60 s; the lag sampled from `dr status` every 250 ms (p50, p99, max),
//!   wire bytes against written bytes; then a planned promote's time;
//! - seed: a 10 GiB thin volume with 1 GiB written (random), linked: bytes
//!   on the wire and the time, against what the link's rate allows;
//! - failback: a 4 GiB volume, the link cut, a forced promote, 1 % of the
//!   volume written in DR and a little more on the old primary, the link
//!   back: bytes the failback ships against the bytes that diverged (the
//!   way back, dr → central, is not shaped).

use std::time::{Duration, Instant};

use anyhow::Context;
use multicluster_tests::clients::{nbdcopy_in, qemu_io, random_file};
use multicluster_tests::dr::{dr_status, pair, peer_info, wait_caught_up, wait_dr};
use multicluster_tests::harness::DevFederation;
use multicluster_tests::link_shaper::{LinkShaper, Shape};
use serde_json::Value;

const LINK_BYTES_PER_SEC: u64 = 100_000_000 / 8;
const FIO_SECONDS: u64 = 60;
const PATIENCE: Duration = Duration::from_secs(900);

pub fn run(_runtime: u64, _size: &str, _size_bytes: u64, only: &[String]) -> anyhow::Result<()> {
    let wanted = |part: &str| only.is_empty() || only.iter().any(|name| name == part);
    let federation = DevFederation::builder().nodes(1).dr().start()?;
    let gateway: std::net::SocketAddr = peer_info(&federation)?["clusters"][0]["gateways"][0]
        ["endpoint"]
        .as_str()
        .context("the peer's gateway")?
        .parse()?;
    let shaper = LinkShaper::start(
        gateway,
        Shape {
            delay: Duration::from_millis(10),
            bytes_per_sec: LINK_BYTES_PER_SEC,
            queue_bytes: 256 << 10,
        },
    )?;
    pair(&federation, &[shaper.addr.to_string()])?;
    println!("\n### DR: central → dr over a shaped link (100 Mbit/s, 10 ms each way), one node per datacentre\n");
    if wanted("rpo") {
        rpo(&federation)?;
    }
    if wanted("seed") {
        seed(&federation)?;
    }
    if wanted("failback") {
        failback(&federation, &shaper)?;
    }
    Ok(())
}

fn attach(federation: &DevFederation, peer: Option<&str>, name: &str) -> anyhow::Result<String> {
    let socket = federation
        .dir()
        .join(format!("{name}-{}.sock", peer.unwrap_or("central")));
    let args = [
        "volume",
        "attach",
        name,
        "--nbd",
        &format!("unix:{}", socket.display()),
    ];
    let output = match peer {
        Some(peer) => federation.tether_peer(peer, &args),
        None => federation.tether(&args),
    };
    anyhow::ensure!(
        output.status.success(),
        "attach {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

fn link(federation: &DevFederation, name: &str) -> anyhow::Result<()> {
    federation.tether_ok(&["dr", "link", name, "--to", "dr", "--rpo", "5s"])?;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

fn rpo(federation: &DevFederation) -> anyhow::Result<()> {
    federation.tether_ok(&["volume", "create", "rpo", "--size", "4GiB"])?;
    let uri = attach(federation, None, "rpo")?;
    link(federation, "rpo")?;
    let before = wait_caught_up(federation, "rpo", PATIENCE)?;
    eprintln!("dr rpo: fio 4k randwrite at 10 MB/s for {FIO_SECONDS} s ...");
    let fio = std::process::Command::new("fio")
        .args([
            "--name=dr",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--rate=10m",
            "--size=4g",
            "--time_based",
            &format!("--runtime={FIO_SECONDS}"),
            "--buffer_compress_percentage=50",
            "--buffer_compress_chunk=4096",
            "--refill_buffers",
            "--randrepeat=0",
            "--output-format=json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running fio")?;
    let mut lags = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(FIO_SECONDS) {
        let status = dr_status(federation, None, "rpo")?;
        lags.push(status["lag_seconds"].as_f64().unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(250));
    }
    let output = fio.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout[stdout.find('{').context("fio JSON")?..])?;
    let written = report["jobs"][0]["write"]["io_bytes"].as_u64().unwrap_or(0);
    let drained_at = Instant::now();
    let after = wait_caught_up(federation, "rpo", PATIENCE)?;
    let drain = drained_at.elapsed().as_secs_f64();
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99, max) = (
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0.0),
    );
    let wire =
        after["bytes_wire"].as_u64().unwrap_or(0) - before["bytes_wire"].as_u64().unwrap_or(0);
    let raw = after["bytes_raw"].as_u64().unwrap_or(0) - before["bytes_raw"].as_u64().unwrap_or(0);
    let ratio = wire as f64 / written.max(1) as f64;

    // Planned promote of the same volume, asked for in DR.
    let promote_started = Instant::now();
    let promoted = federation.tether_peer("dr", &["dr", "promote", "rpo"]);
    let promote = promote_started.elapsed().as_secs_f64();
    anyhow::ensure!(
        promoted.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&promoted.stderr)
    );

    println!("#### RPO under fio 4k random writes, 10 MB/s, 50 % compressible, {FIO_SECONDS} s ({} samples)\n", lags.len());
    println!("| lag p50 | lag p99 (target ≤ 5 s) | lag max (target ≤ 30 s) | written | shipped raw | on the wire | wire / written (target ≤ 0.6) | drain after fio | planned promote (target ≤ 5 s) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {p50:.2} s | {p99:.2} s, {} | {max:.2} s, {} | {:.0} MB | {:.0} MB | {:.0} MB | {ratio:.2}, {} | {drain:.1} s | {promote:.2} s, {} |",
        met(p99 <= 5.0),
        met(max <= 30.0),
        written as f64 / 1e6,
        raw as f64 / 1e6,
        wire as f64 / 1e6,
        met(ratio <= 0.6),
        met(promote <= 5.0),
    );
    Ok(())
}

fn seed(federation: &DevFederation) -> anyhow::Result<()> {
    federation.tether_ok(&["volume", "create", "seed", "--size", "10GiB"])?;
    let uri = attach(federation, None, "seed")?;
    let file = federation.dir().join("seed.bin");
    eprintln!("dr seed: writing 1 GiB ...");
    random_file(&file, 1 << 30, 11)?;
    nbdcopy_in(&file, &uri)?;
    let _ = std::fs::remove_file(&file);
    eprintln!("dr seed: linking ...");
    let started = Instant::now();
    link(federation, "seed")?;
    let seeded = wait_caught_up(federation, "seed", PATIENCE)?;
    let seconds = started.elapsed().as_secs_f64();
    let wire = seeded["bytes_wire"].as_u64().unwrap_or(0);
    let floor = wire as f64 / LINK_BYTES_PER_SEC as f64;
    println!("\n#### Seed of a 10 GiB thin volume with 1 GiB written (random data)\n");
    println!("| on the wire (target ≤ 1.1 GiB) | time | the link's limit for those bytes | time / limit |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {:.3} GiB, {} | {seconds:.1} s | {floor:.1} s | {:.2} |",
        wire as f64 / (1u64 << 30) as f64,
        met(wire as f64 <= 1.1 * (1u64 << 30) as f64),
        seconds / floor.max(1e-3)
    );
    Ok(())
}

fn failback(federation: &DevFederation, shaper: &LinkShaper) -> anyhow::Result<()> {
    const MIB: u64 = 1 << 20;
    federation.tether_ok(&["volume", "create", "fb", "--size", "4GiB"])?;
    let uri = attach(federation, None, "fb")?;
    let base = federation.dir().join("fb-base.bin");
    random_file(&base, 256 << 20, 12)?;
    nbdcopy_in(&base, &uri)?;
    let _ = std::fs::remove_file(&base);
    link(federation, "fb")?;
    wait_caught_up(federation, "fb", PATIENCE)?;
    eprintln!("dr failback: cutting the link, forced promote ...");
    shaper.set_cut(true);
    wait_dr(
        federation,
        None,
        "fb",
        PATIENCE,
        "the shipper sees the cut",
        |status| status["link_state"] == "down" || status["link_state"] == "connecting",
    )?;
    let promoted = federation.tether_peer("dr", &["dr", "promote", "fb", "--force"]);
    anyhow::ensure!(
        promoted.status.success(),
        "forced promote: {}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    // 1 % of the volume written in DR (41 MiB at distinct 1 MiB offsets),
    // and 8 MiB on the cut-off old primary.
    let dr_uri = attach(federation, Some("dr"), "fb")?;
    let in_dr: Vec<String> = (0..41u64)
        .map(|index| format!("write -P 0x5a {} 1M", (index * 97 % 4000 + 48) * MIB))
        .chain(["flush".to_string()])
        .collect();
    qemu_io(
        &dr_uri,
        &in_dr.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let in_central: Vec<String> = (0..8u64)
        .map(|index| format!("write -P 0x3c {} 1M", (4040 + index * 4) * MIB))
        .chain(["flush".to_string()])
        .collect();
    qemu_io(
        &uri,
        &in_central.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let diverged = 49 * MIB;
    shaper.set_cut(false);
    wait_dr(
        federation,
        None,
        "fb",
        PATIENCE,
        "the old primary is fenced",
        |status| status["role"] == "fenced",
    )?;
    eprintln!("dr failback: failing back ...");
    let started = Instant::now();
    federation.tether_ok(&["dr", "failback", "fb", "--watch"])?;
    let seconds = started.elapsed().as_secs_f64();
    let here = dr_status(federation, None, "fb")?;
    let shipped = here["received"]["bytes_raw"].as_u64().unwrap_or(0);
    let ratio = shipped as f64 / diverged as f64;
    println!("\n#### Failback after 1 % divergence on a 4 GiB volume (41 MiB written in DR after a forced promote, 8 MiB on the old primary)\n");
    println!("| diverged | shipped back | shipped / diverged (target ≤ 1.1) | failback time (compare, ship, planned promote) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {} MiB | {:.1} MiB | {ratio:.2}, {} | {seconds:.1} s |",
        diverged / MIB,
        shipped as f64 / MIB as f64,
        met(ratio <= 1.1)
    );
    Ok(())
}
