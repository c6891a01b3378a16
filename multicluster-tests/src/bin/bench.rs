//! `bench nbd`: one run, on this machine, of fio against (a) the backing file
//! with io_uring, (b) qemu-nbd serving an identical file, (c) a Tether volume
//! over NBD; then hash-list upkeep on vs off, and node RSS with 100 idle
//! volumes. Prints a markdown table with ratios. A command, not a test:
//! timings are reported, never asserted.
//!
//! Run: `./scripts/bench.sh nbd` or `./scripts/bench.sh groups` (builds the
//! release binaries first); `groups` is in `groups_bench.rs`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

#[path = "../csi_bench.rs"]
mod csi_bench;
#[path = "../dr_bench.rs"]
mod dr_bench;
#[path = "../federation_bench.rs"]
mod federation_bench;
#[path = "../groups_bench.rs"]
mod groups_bench;
#[path = "../security_bench.rs"]
mod security_bench;
use multicluster_tests::harness::DevFederation;
use serde_json::Value;

#[derive(Parser)]
struct Args {
    /// Which benchmark: nbd, groups (replication, failover, Delta Sync, etcd
    /// load), security (encryption at rest, mutual TLS on replication), or
    /// federation (the satellite path, zstd on the link, gateway scale), or
    /// csi (a satellite volume's filesystem, staging latency, node plugin RSS).
    suite: String,
    /// Seconds per fio run.
    #[arg(long, default_value_t = 10)]
    runtime: u64,
    /// Working-set size per target.
    #[arg(long, default_value = "1G")]
    size: String,
    /// Run only these parts (groups: write, failover, delta, etcd, busy; security:
    /// encryption, tls; federation: path, zstd, satellite-rss, scale; csi:
    /// fio, latency, rss); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Clone, Copy)]
struct Workload {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    iodepth: u32,
    /// IOPS for 4k rows, MB/s for 1 MiB rows.
    iops: bool,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "4k randread QD32",
        rw: "randread",
        bs: "4k",
        iodepth: 32,
        iops: true,
    },
    Workload {
        name: "4k randwrite QD32",
        rw: "randwrite",
        bs: "4k",
        iodepth: 32,
        iops: true,
    },
    Workload {
        name: "1M seqread QD8",
        rw: "read",
        bs: "1M",
        iodepth: 8,
        iops: false,
    },
    Workload {
        name: "1M seqwrite QD8",
        rw: "write",
        bs: "1M",
        iodepth: 8,
        iops: false,
    },
];

#[derive(Clone, Copy, Default)]
struct Measured {
    /// IOPS or MB/s, as the workload says.
    value: f64,
    p99_ms: f64,
}

enum Target<'a> {
    File(&'a Path),
    Nbd(&'a str),
    /// A file in a filesystem, as an application uses one: libaio, O_DIRECT.
    FsFile(&'a Path),
}

impl Target<'_> {
    /// The fio engine and target arguments.
    fn fio_args(&self) -> Vec<String> {
        match self {
            Target::File(path) => vec![
                "--ioengine=io_uring".into(),
                format!("--filename={}", path.display()),
            ],
            Target::Nbd(uri) => vec!["--ioengine=nbd".into(), format!("--uri={uri}")],
            Target::FsFile(path) => vec![
                "--ioengine=libaio".into(),
                "--direct=1".into(),
                format!("--filename={}", path.display()),
            ],
        }
    }
}

fn fio(target: &Target, workload: Workload, runtime: u64, size: &str) -> anyhow::Result<Measured> {
    // Write back what earlier runs dirtied, so no run pays for another's writeback.
    Command::new("sync").status()?;
    let mut args = vec![
        "--name=bench".to_string(),
        format!("--rw={}", workload.rw),
        format!("--bs={}", workload.bs),
        format!("--iodepth={}", workload.iodepth),
        format!("--size={size}"),
        "--time_based".into(),
        format!("--runtime={runtime}"),
        "--ramp_time=1".into(),
        "--randrepeat=0".into(),
        "--norandommap".into(),
        "--output-format=json".into(),
    ];
    args.extend(target.fio_args());
    let output = Command::new("fio")
        .args(&args)
        .output()
        .context("running fio")?;
    if !output.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(&stdout[stdout.find('{').context("fio JSON")?..])?;
    let job = &report["jobs"][0];
    let side = if workload.rw.contains("read") {
        &job["read"]
    } else {
        &job["write"]
    };
    let value = if workload.iops {
        side["iops"].as_f64().unwrap_or(0.0)
    } else {
        side["bw_bytes"].as_f64().unwrap_or(0.0) / 1e6
    };
    let p99_ns = side["clat_ns"]["percentile"]["99.000000"]
        .as_f64()
        .unwrap_or(0.0);
    Ok(Measured {
        value,
        p99_ms: p99_ns / 1e6,
    })
}

/// Writes the whole working set so reads hit allocated data on every target.
fn prefill(target: &Target, size: &str) -> anyhow::Result<()> {
    let mut args = vec![
        "--name=prefill".to_string(),
        "--rw=write".into(),
        "--bs=1M".into(),
        "--iodepth=8".into(),
        format!("--size={size}"),
    ];
    args.extend(target.fio_args());
    let status = Command::new("fio")
        .args(&args)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "prefill failed");
    Ok(())
}

struct QemuNbd {
    child: Child,
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_qemu_nbd(file: &Path, socket: &Path) -> anyhow::Result<QemuNbd> {
    let child = Command::new("qemu-nbd")
        .args([
            "-f",
            "raw",
            "-t",
            "--cache=writeback",
            "--aio=io_uring",
            "-k",
        ])
        .arg(socket)
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-nbd")?;
    let server = QemuNbd { child };
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("qemu-nbd did not start listening on {}", socket.display())
}

/// Waits until the node has rehashed every chunk the last run dirtied, so
/// that work is not charged to the next run. Returns how long it took.
fn wait_settled(federation: &DevFederation, volume: &str) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    loop {
        let view = federation.tether_json(&["volume", "get", volume])?;
        if view["dirty_chunks"] == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "volume {volume} never settled: {view}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rss_kib(pid: u64) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .map(|line| line.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

fn unit(workload: Workload) -> &'static str {
    if workload.iops {
        "IOPS"
    } else {
        "MB/s"
    }
}

/// A suite's entry: runtime per fio run, working-set size (text and bytes), parts to run.
type SuiteRun = fn(u64, &str, u64, &[String]) -> anyhow::Result<()>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let suite: Option<SuiteRun> = match args.suite.as_str() {
        "groups" => Some(groups_bench::run),
        "security" => Some(security_bench::run),
        "federation" => Some(federation_bench::run),
        "csi" => Some(csi_bench::run),
        "dr" => Some(dr_bench::run),
        _ => None,
    };
    if let Some(run) = suite {
        eprintln!("machine: {}", machine());
        return run(
            args.runtime,
            &args.size,
            multicluster_size(&args.size)?,
            &args.only,
        );
    }
    anyhow::ensure!(
        args.suite == "nbd",
        "unknown suite {:?} (available: nbd, groups, security, federation, csi, dr)",
        args.suite
    );
    let work = tempfile::Builder::new()
        .prefix("tether-bench")
        .tempdir_in("/tmp")?;
    let size = args.size.clone();
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    eprintln!("machine: {}", machine());

    // (a) the raw file, (b) qemu-nbd on an identical file, (c) a Tether volume.
    let raw: PathBuf = work.path().join("raw.img");
    let qemu_file = work.path().join("qemu.img");
    prefill(&Target::File(&raw), &size)?;
    prefill(&Target::File(&qemu_file), &size)?;
    let qemu_socket = work.path().join("qemu.sock");
    let _qemu = start_qemu_nbd(&qemu_file, &qemu_socket)?;
    let qemu_uri = format!("nbd+unix:///?socket={}", qemu_socket.display());

    let federation = DevFederation::builder().nodes(1).start()?;
    let tether_uri =
        federation.create_attached("bench", &format!("{}B", multicluster_size(&size)?))?;
    prefill(&Target::Nbd(&tether_uri), &size)?;

    // Every target gets the same warm-up: a freshly prefilled file takes
    // random writes more slowly than one that has seen some.
    for target in [
        Target::File(&raw),
        Target::Nbd(&qemu_uri),
        Target::Nbd(&tether_uri),
    ] {
        fio(&target, WORKLOADS[1], 5, &size)?;
    }
    wait_settled(&federation, "bench")?;

    let mut rows = Vec::new();
    for workload in WORKLOADS {
        eprintln!("running {} ...", workload.name);
        let a = fio(&Target::File(&raw), workload, args.runtime, &size)?;
        let b = fio(&Target::Nbd(&qemu_uri), workload, args.runtime, &size)?;
        let c = fio(&Target::Nbd(&tether_uri), workload, args.runtime, &size)?;
        let settle = wait_settled(&federation, "bench")?;
        eprintln!(
            "  hash list settled {:.1} s after the run",
            settle.as_secs_f64()
        );
        rows.push((workload, a, b, c));
    }

    // Hash-list upkeep: 4k randwrite on two nodes, one keeping hash lists and
    // one not, alternating runs so both see the same machine state.
    let without = DevFederation::builder().nodes(1).no_hash_upkeep().start()?;
    let uri_without =
        without.create_attached("bench", &format!("{}B", multicluster_size(&size)?))?;
    prefill(&Target::Nbd(&uri_without), &size)?;
    fio(&Target::Nbd(&uri_without), WORKLOADS[1], 5, &size)?;
    let (mut upkeep_on, mut upkeep_off, mut settle_seconds) = (0.0, 0.0, 0.0);
    for round in 0..2 {
        eprintln!("hash upkeep on/off, round {} ...", round + 1);
        upkeep_on += fio(&Target::Nbd(&tether_uri), WORKLOADS[1], args.runtime, &size)?.value / 2.0;
        let settle = wait_settled(&federation, "bench")?;
        eprintln!(
            "  hash list settled {:.1} s after the run",
            settle.as_secs_f64()
        );
        settle_seconds += settle.as_secs_f64() / 2.0;
        upkeep_off += fio(
            &Target::Nbd(&uri_without),
            WORKLOADS[1],
            args.runtime,
            &size,
        )?
        .value
            / 2.0;
    }
    drop(without);
    drop(federation);

    // RSS of a node holding 100 idle 1 GiB volumes.
    eprintln!("creating 100 idle volumes ...");
    let idle = DevFederation::builder().nodes(1).start()?;
    let node_pid = idle.node("node-1")["pid"].as_u64().unwrap();
    let rss_empty = rss_kib(node_pid)?;
    for i in 0..100 {
        idle.tether_ok(&["volume", "create", &format!("idle{i}"), "--size", "1GiB"])?;
    }
    std::thread::sleep(Duration::from_secs(3)); // let the status loop and allocator settle before sampling
    let rss_idle = rss_kib(node_pid)?;
    drop(idle);

    println!(
        "Benchmark {date}, {}; working set {size}, {} s per run, buffered I/O on every target.",
        machine(),
        args.runtime
    );
    println!();
    println!("| workload | (a) file io_uring | (b) qemu-nbd | (c) Tether | c/a | c/b | p99 a / b / c (ms) |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (workload, a, b, c) in &rows {
        println!(
            "| {} | {:.0} {u} | {:.0} {u} | {:.0} {u} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} |",
            workload.name,
            a.value,
            b.value,
            c.value,
            c.value / a.value,
            c.value / b.value,
            a.p99_ms,
            b.p99_ms,
            c.p99_ms,
            u = unit(*workload)
        );
    }
    println!();
    println!(
        "| hash-list upkeep, 4k randwrite QD32 (mean of 2 alternating runs) | on: {:.0} IOPS | off: {:.0} IOPS | cost {:.1} % |",
        upkeep_on,
        upkeep_off,
        (1.0 - upkeep_on / upkeep_off) * 100.0
    );
    println!(
        "| deferred rehash after a {} s 4k randwrite run | settled in {settle_seconds:.1} s | | |",
        args.runtime
    );
    println!(
        "| storage-node RSS | empty: {:.1} MiB | 100 idle 1 GiB volumes: {:.1} MiB | |",
        rss_empty as f64 / 1024.0,
        rss_idle as f64 / 1024.0
    );
    Ok(())
}

/// The working-set size in bytes, for `tether volume create --size`.
fn multicluster_size(size: &str) -> anyhow::Result<u64> {
    let (number, unit) = size.split_at(
        size.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(size.len()),
    );
    let number: u64 = number.parse()?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => bail!("size {size}: use a number with K, M or G"),
    };
    Ok(number << shift)
}
