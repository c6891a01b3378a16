//! `bench federation`: what the federation path costs, one run each, on
//! this machine.
//! - path: a central volume through a satellite (its local NBD export, the
//!   QUIC link, a gateway, the block stream to the master) against the same
//!   volume on a local NBD export on its node, and against the peer for
//!   remote block with encryption on the wire: qemu-nbd serving a file over
//!   TCP with x509 TLS, read by fio's nbd engine through libnbd (`nbds://`);
//! - zstd: wire bytes against data bytes through the gateways for 50 %
//!   compressible data (`fio --buffer_compress_percentage=50`);
//! - scale: 100 satellites with one volume each through one gateway (an
//!   in-process load generator speaking the link protocol, one session per
//!   satellite certificate): the gateway's RSS and CPU per active session;
//!   and a satellite daemon's RSS serving 10 attached volumes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use multicluster_tests::harness::DevFederation;
use tether_tls::{CertificateAuthority, Credentials, Identity, Role, TlsContext};

use super::{fio, prefill, rss_kib, Measured, Target, Workload, WORKLOADS};

pub fn run(runtime: u64, size: &str, size_bytes: u64, only: &[String]) -> anyhow::Result<()> {
    let wanted = |part: &str| only.is_empty() || only.iter().any(|name| name == part);
    if wanted("path") || wanted("zstd") {
        let federation = DevFederation::builder().nodes(1).satellites(1).start()?;
        if wanted("path") {
            path_cost(&federation, runtime, size, size_bytes)?;
        }
        if wanted("zstd") {
            compression(&federation, size_bytes)?;
        }
    }
    if wanted("satellite-rss") {
        // A satellite of its own: what it holds for 10 volumes, not what
        // earlier parts' gigabytes left in its allocator.
        let federation = DevFederation::builder().nodes(1).satellites(1).start()?;
        satellite_rss(&federation)?;
    }
    if wanted("scale") {
        gateway_scale(runtime)?;
    }
    Ok(())
}

fn attach(federation: &DevFederation, name: &str, from: Option<&str>) -> anyhow::Result<String> {
    let tag = from.unwrap_or("central");
    let socket = federation.dir().join(format!("{name}-{tag}.sock"));
    let endpoint = format!("unix:{}", socket.display());
    let mut args = vec!["volume", "attach", name, "--nbd", &endpoint];
    if let Some(from) = from {
        args.extend(["--from", from]);
    }
    Ok(federation.tether_ok(&args)?.trim().to_string())
}

/// A volume of `size_bytes` granted to satellite-1.
fn granted_volume(federation: &DevFederation, name: &str, size_bytes: u64) -> anyhow::Result<()> {
    let size = format!("{size_bytes}B");
    federation.tether_ok(&["volume", "create", name, "--size", &size])?;
    federation.tether_ok(&["grant", "add", "satellite-1", "--volume", name])?;
    Ok(())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Puts the dev CA where libnbd looks by default (`~/.pki/libnbd/ca-cert.pem`)
/// for the run, and what was there back afterwards.
struct LibnbdPki {
    dir: PathBuf,
    saved: Option<PathBuf>,
}

impl LibnbdPki {
    fn install(from: &Path, work: &Path) -> anyhow::Result<LibnbdPki> {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let dir = Path::new(&home).join(".pki/libnbd");
        let saved = if dir.exists() {
            let aside = work.join("libnbd-pki-saved");
            std::fs::rename(&dir, &aside)?;
            Some(aside)
        } else {
            None
        };
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(from.join("ca-cert.pem"), dir.join("ca-cert.pem"))
            .with_context(|| format!("copying ca-cert.pem from {}", from.display()))?;
        Ok(LibnbdPki { dir, saved })
    }
}

impl Drop for LibnbdPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(saved) = &self.saved {
            let _ = std::fs::rename(saved, &self.dir);
        }
    }
}

/// qemu-nbd serving `file` over TCP on loopback with x509 TLS, its
/// certificate from the dev CA; as the peer is commonly run, it does not ask
/// for client certificates (fio's libnbd, given a plain `nbds://` URI,
/// sends none; the satellite path always authenticates both ends).
fn start_qemu_nbd_tls(federation: &DevFederation, file: &Path) -> anyhow::Result<(Server, String)> {
    let ca = CertificateAuthority::load_or_create(
        &federation.dir().join("central/control/ca"),
        "central",
    )?;
    let now = SystemTime::now();
    let credentials = ca.issue_credentials_valid(
        &Identity::new("central", Role::Gateway, "qemu-nbd"),
        &["127.0.0.1".to_string()],
        now - Duration::from_secs(60),
        now + Duration::from_secs(86_400),
    )?;
    let dir = federation.dir().join("qemu-nbd-tls");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ca-cert.pem"), &credentials.trust_pem)?;
    std::fs::write(dir.join("server-cert.pem"), &credentials.chain_pem)?;
    std::fs::write(dir.join("server-key.pem"), &credentials.key_pem)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("qemu-nbd")
        .args(["-f", "raw", "-t", "--cache=writeback", "--aio=io_uring"])
        .arg("--object")
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
            dir.display()
        ))
        .args([
            "--tls-creds",
            "tls0",
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-nbd with TLS")?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "qemu-nbd did not listen");
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok((server, format!("nbds://127.0.0.1:{port}/")))
}

fn path_cost(
    federation: &DevFederation,
    runtime: u64,
    size: &str,
    size_bytes: u64,
) -> anyhow::Result<()> {
    granted_volume(federation, "path", size_bytes)?;
    let local = attach(federation, "path", None)?;
    let remote = attach(federation, "path", Some("satellite-1"))?;
    let work = federation.dir().join("bench-work");
    std::fs::create_dir_all(&work)?;
    let file = work.join("qemu-tls.img");
    let _pki = LibnbdPki::install(&federation.dir().join("nbd-client"), &work)?;
    eprintln!("federation path: prefill ...");
    prefill(&Target::File(&file), size)?;
    prefill(&Target::Nbd(&local), size)?;
    let (_qemu, qemu_uri) = start_qemu_nbd_tls(federation, &file)?;
    let mut rows: Vec<(Workload, Measured, Measured, Measured)> = Vec::new();
    for workload in WORKLOADS {
        eprintln!("federation path: {} ...", workload.name);
        let measure = |uri: &str| -> anyhow::Result<Measured> {
            fio(&Target::Nbd(uri), workload, 3, size)?;
            fio(&Target::Nbd(uri), workload, runtime, size)
        };
        let on_node = measure(&local)?;
        let through = measure(&remote)?;
        let qemu_tls = measure(&qemu_uri)?;
        rows.push((workload, on_node, through, qemu_tls));
    }
    println!("\n### Federation path: a satellite's export vs the same volume on its node, and vs qemu-nbd with x509 TLS ({size} working set, {runtime} s per run)\n");
    println!("| workload | local NBD on the node | through a satellite | qemu-nbd TLS (nbds://) | satellite / local | target | satellite / qemu-nbd TLS | target >= 1.0 | p99 ms local / satellite / qemu TLS |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (workload, on_node, through, qemu_tls) in &rows {
        let unit = if workload.iops { "IOPS" } else { "MB/s" };
        let target = if workload.iops { 0.6 } else { 0.8 };
        let local_ratio = through.value / on_node.value;
        let peer_ratio = through.value / qemu_tls.value;
        let verdict = |ratio: f64, target: f64| if ratio >= target { "met" } else { "MISSED" };
        println!(
            "| {} | {:.0} {unit} | {:.0} {unit} | {:.0} {unit} | {local_ratio:.2} | >= {target} {} | {peer_ratio:.2} | {} | {:.2} / {:.2} / {:.2} |",
            workload.name,
            on_node.value,
            through.value,
            qemu_tls.value,
            verdict(local_ratio, target),
            verdict(peer_ratio, 1.0),
            on_node.p99_ms,
            through.p99_ms,
            qemu_tls.p99_ms,
        );
    }
    Ok(())
}

/// The sum over every gateway of each `name{direction="…"}` counter.
fn gateway_counters(federation: &DevFederation, name: &str) -> anyhow::Result<(f64, f64)> {
    let (mut inbound, mut outbound) = (0.0, 0.0);
    let gateways = federation.info["clusters"][0]["gateways"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for gateway in gateways {
        let addr = gateway["metrics"]
            .as_str()
            .context("gateway metrics address")?;
        let text = ureq::get(&format!("http://{addr}/metrics"))
            .call()?
            .into_string()?;
        for line in text.lines().filter(|line| line.starts_with(name)) {
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if line.contains("direction=\"in\"") {
                inbound += value;
            } else if line.contains("direction=\"out\"") {
                outbound += value;
            }
        }
    }
    Ok((inbound, outbound))
}

fn compression(federation: &DevFederation, size_bytes: u64) -> anyhow::Result<()> {
    let bytes = size_bytes.min(256 << 20);
    granted_volume(federation, "squeeze", bytes)?;
    let uri = attach(federation, "squeeze", Some("satellite-1"))?;
    let wire_before = gateway_counters(federation, "tether_gateway_wire_bytes_total")?;
    let data_before = gateway_counters(federation, "tether_gateway_data_bytes_total")?;
    eprintln!(
        "zstd: writing and reading {} MiB of 50 % compressible data ...",
        bytes >> 20
    );
    for rw in ["write", "read"] {
        let status = Command::new("fio")
            .args([
                "--name=squeeze",
                &format!("--rw={rw}"),
                "--bs=1M",
                "--iodepth=8",
                &format!("--size={bytes}"),
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--buffer_compress_percentage=50",
                "--buffer_compress_chunk=4k",
                "--refill_buffers",
            ])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "fio {rw} failed");
    }
    let wire_after = gateway_counters(federation, "tether_gateway_wire_bytes_total")?;
    let data_after = gateway_counters(federation, "tether_gateway_data_bytes_total")?;
    let rows = [
        (
            "writes (satellite to gateway)",
            wire_after.0 - wire_before.0,
            data_after.0 - data_before.0,
        ),
        (
            "reads (gateway to satellite)",
            wire_after.1 - wire_before.1,
            data_after.1 - data_before.1,
        ),
    ];
    println!(
        "\n### zstd on the link: 50 % compressible data ({} MiB written, then read)\n",
        bytes >> 20
    );
    println!("| direction | data bytes | wire bytes | wire / data |");
    println!("| --- | --- | --- | --- |");
    for (direction, wire, data) in rows {
        println!(
            "| {direction} | {:.1} MiB | {:.1} MiB | {:.2} |",
            data / 1048576.0,
            wire / 1048576.0,
            wire / data
        );
    }
    Ok(())
}

fn satellite_pid(federation: &DevFederation) -> anyhow::Result<u64> {
    let satellites = federation.info["satellites"]
        .as_array()
        .or_else(|| federation.info["clusters"][0]["satellites"].as_array())
        .context("satellites in federation.json")?;
    satellites
        .iter()
        .find(|s| s["name"] == "satellite-1")
        .and_then(|s| s["pid"].as_u64())
        .context("satellite-1's pid")
}

fn satellite_rss(federation: &DevFederation) -> anyhow::Result<()> {
    let pid = satellite_pid(federation)?;
    let before = rss_kib(pid)?;
    eprintln!("satellite RSS: attaching 10 volumes ...");
    for index in 0..10 {
        let name = format!("many{index}");
        granted_volume(federation, &name, 64 << 20)?;
        let uri = attach(federation, &name, Some("satellite-1"))?;
        // Some I/O on each, so every session has moved data.
        let status = Command::new("fio")
            .args([
                "--name=touch",
                "--rw=randrw",
                "--bs=64k",
                "--iodepth=8",
                "--size=16M",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
            ])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "fio on {name} failed");
    }
    let after = rss_kib(pid)?;
    let verdict = if after <= 30 * 1024 { "met" } else { "MISSED" };
    println!("\n### Satellite daemon memory\n");
    println!("| satellite daemon RSS | joined, nothing attached | 10 attached volumes, each with I/O done | target <= 30 MiB |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| tether-satellite | {:.1} MiB | {:.1} MiB | {verdict} |",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    Ok(())
}

/// User plus system CPU time of `pid`, in seconds.
fn cpu_seconds(pid: u64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat[stat.rfind(')').context("stat")? + 2..]
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn gateway_scale(runtime: u64) -> anyhow::Result<()> {
    const SATELLITES: usize = 100;
    let federation = DevFederation::builder().nodes(1).start()?;
    let gateway = federation.info["clusters"][0]["gateways"][0].clone();
    let gateway_pid = gateway["pid"].as_u64().context("gateway pid")?;
    let endpoint = gateway["endpoint"]
        .as_str()
        .context("gateway endpoint")?
        .to_string();
    eprintln!("scale: {SATELLITES} satellites, each with a granted 16 MiB volume ...");
    let mut sessions = Vec::new();
    for index in 0..SATELLITES {
        let name = format!("load-{index}");
        let volume = format!("load-vol-{index}");
        let credentials = federation.satellite(&name);
        federation.tether_ok(&["volume", "create", &volume, "--size", "16MiB"])?;
        federation.tether_ok(&["grant", "add", &name, "--volume", &volume])?;
        sessions.push((credentials, volume));
    }
    let rss_idle = rss_kib(gateway_pid)?;
    let runtime_tokio = tokio::runtime::Runtime::new()?;
    let (ops, rss_active, cpu, elapsed) = runtime_tokio.block_on(async {
        let mut volumes = Vec::new();
        for (credentials, volume) in &sessions {
            let tls = TlsContext::new(&Credentials::load(credentials)?)?;
            let link = satellite_csi::LinkClient::new(&tls, vec![endpoint.clone()])?;
            volumes.push(link.open(volume).await?);
        }
        let opened_rss = rss_kib(gateway_pid)?;
        let cpu_before = cpu_seconds(gateway_pid)?;
        let started = Instant::now();
        let stop = started + Duration::from_secs(runtime);
        let ops = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (index, remote) in volumes.iter().enumerate() {
            let (remote, ops) = (remote.clone(), ops.clone());
            tasks.push(tokio::spawn(async move {
                let mut offset = (index as u64 * 7919) % 4096;
                let data = bytes::Bytes::from(vec![index as u8; 4096]);
                while Instant::now() < stop {
                    offset = (offset * 31 + 17) % 4096;
                    let at = offset * 4096;
                    remote
                        .execute(satellite_csi::BlockOp::Write {
                            offset: at,
                            data: data.clone(),
                            fua: false,
                        })
                        .await?;
                    remote
                        .execute(satellite_csi::BlockOp::Read {
                            offset: at,
                            length: 4096,
                        })
                        .await?;
                    ops.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        let mut peak = opened_rss;
        while Instant::now() < stop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            peak = peak.max(rss_kib(gateway_pid)?);
        }
        for task in tasks {
            task.await??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(gateway_pid)? - cpu_before;
        anyhow::Ok((
            ops.load(std::sync::atomic::Ordering::Relaxed),
            peak,
            cpu,
            elapsed,
        ))
    })?;
    let verdict = if rss_active <= 128 * 1024 {
        "met"
    } else {
        "MISSED"
    };
    println!("\n### One gateway, {SATELLITES} satellites with one volume each (4k write then read, QD1 per session, {runtime} s)\n");
    println!("| gateway RSS idle | gateway RSS peak, {SATELLITES} active sessions | target <= 128 MiB | gateway CPU | CPU per active session | ops/s through the gateway |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {:.1} MiB | {:.1} MiB | {verdict} | {:.0} % of a core | {:.2} % of a core | {:.0} |",
        rss_idle as f64 / 1024.0,
        rss_active as f64 / 1024.0,
        cpu / elapsed * 100.0,
        cpu / elapsed * 100.0 / SATELLITES as f64,
        ops as f64 / elapsed,
    );
    Ok(())
}
