//! `bench groups`: volume groups, one run each, on this machine.
//! - replicated write cost: fio with 1, 2 and 3 copies;
//! - failover: kill -9 of the master under a client writing through another
//!   node; the client's longest pause, 10 trials;
//! - Delta Sync vs rsync: a 4 GiB volume with 1 % of its chunks changed,
//!   against `rsync --inplace --no-whole-file` of the same two files through
//!   a loopback rsync daemon;
//! - etcd requests per second at idle with 10, 100 and 1,000 volumes;
//! - store writes per second with 1, 10 and 100 busy volumes (each written
//!   to all the time), against the same federation at idle.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use multicluster_tests::clients::http_get;
use multicluster_tests::harness::DevFederation;
use serde_json::Value;

use super::{fio, prefill, Target, WORKLOADS};

const SYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the parts named in `only` (all when empty): write, failover, delta, etcd, busy.
pub fn run(runtime: u64, size: &str, size_bytes: u64, only: &[String]) -> anyhow::Result<()> {
    let wanted = |part: &str| only.is_empty() || only.iter().any(|name| name == part);
    if wanted("write") {
        replicated_write_cost(runtime, size, size_bytes)?;
    }
    if wanted("failover") {
        failover_trials(10)?;
    }
    if wanted("delta") {
        delta_sync_vs_rsync()?;
    }
    if wanted("etcd") {
        etcd_idle_load()?;
    }
    if wanted("busy") {
        store_writes_under_load()?;
    }
    Ok(())
}

/// Store writes (etcd revisions) per second while 1, 10 and 100 volumes are
/// written to (fio, 4 KiB random writes at 200 IOPS each, through a node
/// without a copy), and at idle before each.
fn store_writes_under_load() -> anyhow::Result<()> {
    const SECONDS: u64 = 10;
    let federation = DevFederation::builder().nodes(3).start()?;
    let mut uris: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for busy in [1usize, 10, 100] {
        eprintln!("store writes: presenting {busy} volumes ...");
        while uris.len() < busy {
            let name = format!("busy{}", uris.len());
            let (_, uri, _) = federation.create_presented(&name, "64MiB", 2);
            uris.push(uri);
        }
        std::thread::sleep(Duration::from_secs(3));
        let idle_start = federation.store_revision()?;
        std::thread::sleep(Duration::from_secs(SECONDS));
        let idle = (federation.store_revision()? - idle_start) as f64 / SECONDS as f64;
        let mut args = vec![
            "--ioengine=nbd".to_string(),
            "--rw=randwrite".into(),
            "--bs=4k".into(),
            "--iodepth=4".into(),
            "--size=32M".into(),
            "--rate_iops=200".into(),
            "--time_based".into(),
            format!("--runtime={SECONDS}"),
            "--output-format=terse".into(),
        ];
        for (index, uri) in uris.iter().enumerate() {
            args.push(format!("--name=busy{index}"));
            args.push(format!("--uri={uri}"));
        }
        let start = federation.store_revision()?;
        let output = Command::new("fio").args(&args).output()?;
        if !output.status.success() {
            bail!("fio: {}", String::from_utf8_lossy(&output.stderr));
        }
        let rate = (federation.store_revision()? - start) as f64 / SECONDS as f64;
        eprintln!("{busy} busy volumes: {rate:.1} store writes/s (idle {idle:.1})");
        rows.push((busy, idle, rate));
    }
    println!("\n### Store writes under load, 3 nodes, volumes with 2 copies, {SECONDS} s each\n");
    println!("| busy volumes | store writes/s at idle | store writes/s busy | per busy volume |");
    println!("| --- | --- | --- | --- |");
    for (busy, idle, rate) in &rows {
        println!(
            "| {busy} | {idle:.1} | {rate:.1} | {:.2} |",
            rate / *busy as f64
        );
    }
    let met = rows
        .iter()
        .all(|(busy, _, rate)| *rate <= *busy as f64 + 1.0);
    println!(
        "\ntarget <= 1 write/s per busy volume: {}",
        if met { "met" } else { "MISSED" }
    );
    Ok(())
}

fn replicated_write_cost(runtime: u64, size: &str, size_bytes: u64) -> anyhow::Result<()> {
    let federation = DevFederation::builder().nodes(3).start()?;
    let mut rows = Vec::new();
    for copies in 1..=3u32 {
        let name = format!("copies{copies}");
        federation.tether_ok(&[
            "volume",
            "create",
            &name,
            "--size",
            &format!("{size_bytes}B"),
            "--replicas",
            &copies.to_string(),
        ])?;
        federation.wait_in_sync(&name, SYNC_TIMEOUT);
        let socket = federation.dir().join(format!("{name}.sock"));
        let uri = federation
            .tether_ok(&[
                "volume",
                "attach",
                &name,
                "--nbd",
                &format!("unix:{}", socket.display()),
            ])?
            .trim()
            .to_string();
        eprintln!("{copies} copies: prefill and warm-up ...");
        prefill(&Target::Nbd(&uri), size)?;
        fio(&Target::Nbd(&uri), WORKLOADS[1], 5, size)?;
        let random = fio(&Target::Nbd(&uri), WORKLOADS[1], runtime, size)?;
        let sequential = fio(&Target::Nbd(&uri), WORKLOADS[3], runtime, size)?;
        rows.push((copies, random, sequential));
        federation.tether_ok(&["volume", "detach", &name])?;
        federation.tether_ok(&["volume", "delete", &name])?;
    }
    println!("\n### Replicated write cost ({size} working set, {runtime} s per run)\n");
    println!("| copies | 4k randwrite QD32 IOPS | vs 1 copy | p99 ms | 1M seqwrite QD8 MB/s | vs 1 copy | p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let (one_random, one_sequential) = (rows[0].1.value, rows[0].2.value);
    for (copies, random, sequential) in &rows {
        println!(
            "| {copies} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |",
            random.value,
            random.value / one_random,
            random.p99_ms,
            sequential.value,
            sequential.value / one_sequential,
            sequential.p99_ms
        );
    }
    let three = rows[2].1.value / one_random;
    println!(
        "\ntarget 3 copies >= 0.6 x 1 copy on 4k: {:.2} -> {}",
        three,
        if three >= 0.6 { "met" } else { "MISSED" }
    );
    Ok(())
}

/// The smallest NBD client: fixed newstyle, NBD_OPT_EXPORT_NAME, writes.
struct NbdClient {
    stream: UnixStream,
    cookie: u64,
}

impl NbdClient {
    fn connect(socket: &Path, export: &str) -> anyhow::Result<Self> {
        let mut stream = UnixStream::connect(socket)?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting)?;
        let handshake_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
        let no_zeroes = handshake_flags & 2 != 0;
        let client_flags: u32 = 1 | if no_zeroes { 2 } else { 0 };
        stream.write_all(&client_flags.to_be_bytes())?;
        let mut option = Vec::new();
        option.extend_from_slice(&0x4948_4156_454F_5054u64.to_be_bytes());
        option.extend_from_slice(&1u32.to_be_bytes());
        option.extend_from_slice(&(export.len() as u32).to_be_bytes());
        option.extend_from_slice(export.as_bytes());
        stream.write_all(&option)?;
        let mut reply = vec![0u8; 10 + if no_zeroes { 0 } else { 124 }];
        stream.read_exact(&mut reply)?;
        Ok(Self { stream, cookie: 0 })
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> anyhow::Result<()> {
        self.cookie += 1;
        let mut request = Vec::with_capacity(28 + data.len());
        request.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        request.extend_from_slice(&0u16.to_be_bytes());
        request.extend_from_slice(&1u16.to_be_bytes());
        request.extend_from_slice(&self.cookie.to_be_bytes());
        request.extend_from_slice(&offset.to_be_bytes());
        request.extend_from_slice(&(data.len() as u32).to_be_bytes());
        request.extend_from_slice(data);
        self.stream.write_all(&request)?;
        let mut reply = [0u8; 16];
        self.stream.read_exact(&mut reply)?;
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        if error != 0 {
            bail!("write at {offset} failed with errno {error}");
        }
        Ok(())
    }
}

fn failover_trials(trials: usize) -> anyhow::Result<()> {
    eprintln!("failover trials ...");
    let federation = DevFederation::builder().nodes(3).start()?;
    federation.tether_ok(&[
        "volume",
        "create",
        "fo",
        "--size",
        "64MiB",
        "--replicas",
        "2",
    ])?;
    let view = federation.wait_in_sync("fo", SYNC_TIMEOUT);
    let presenter = federation
        .node_without_copy(&view)
        .context("a node without a copy")?;
    let socket = federation.dir().join("fo.sock");
    federation.tether_ok(&[
        "volume",
        "attach",
        "fo",
        "--nbd",
        &format!("unix:{}", socket.display()),
        "--node",
        &presenter,
    ])?;
    let completions = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (completions, stop, socket) = (completions.clone(), stop.clone(), socket.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut client = NbdClient::connect(&socket, "fo")?;
            let block = vec![0xa5u8; 4096];
            let mut offset = 0u64;
            while !stop.load(Ordering::Acquire) {
                client.write(offset, &block)?;
                completions.lock().unwrap().push(Instant::now());
                offset = (offset + 4096) % (64 << 20);
            }
            Ok(())
        })
    };
    let mut pauses = Vec::new();
    for trial in 0..trials {
        let view = federation.wait_in_sync("fo", SYNC_TIMEOUT);
        let master = view["master"].as_str().unwrap().to_string();
        let epoch = view["epoch"].as_u64().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(300));
        let killed_at = Instant::now();
        let cmdline = federation.kill_node(&master);
        let after = federation.wait_volume("fo", SYNC_TIMEOUT, "takeover", |view| {
            view["epoch"].as_u64().unwrap_or(0) > epoch
        });
        // The client's pause: the longest gap between consecutive completions
        // from the last one before the kill until I/O flows again.
        let deadline = Instant::now() + Duration::from_secs(60);
        let pause = loop {
            let done = completions.lock().unwrap().clone();
            let from = done.iter().rposition(|at| *at <= killed_at).unwrap_or(0);
            let window = &done[from..];
            if window.len() > 20 {
                break window
                    .windows(2)
                    .map(|pair| pair[1] - pair[0])
                    .max()
                    .unwrap_or_default();
            }
            if Instant::now() > deadline {
                bail!("no I/O completed within 60 s of killing {master}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!(
            "trial {trial}: killed {master} (epoch {epoch}), client paused {pause:?}; now {} at epoch {}",
            after["master"], after["epoch"]
        );
        pauses.push(pause.as_secs_f64());
        federation.start_node(&master, &cmdline);
    }
    stop.store(true, Ordering::Release);
    writer.join().expect("writer thread")?;
    pauses.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = pauses[pauses.len() / 2];
    let max = *pauses.last().unwrap();
    println!("\n### Failover: kill -9 of the master, client writing 4k through a third node ({trials} trials)\n");
    println!("| p50 | max | all (s) |");
    println!("| --- | --- | --- |");
    println!(
        "| {p50:.2} s | {max:.2} s | {} |",
        pauses
            .iter()
            .map(|pause| format!("{pause:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "\ntarget p50 <= 3 s: {}; max <= 6 s: {}",
        if p50 <= 3.0 { "met" } else { "MISSED" },
        if max <= 6.0 { "met" } else { "MISSED" }
    );
    Ok(())
}

/// Sectors read from every disk, for reads by processes that are gone (rsync).
fn disk_read_bytes() -> anyhow::Result<u64> {
    let stats = std::fs::read_to_string("/proc/diskstats")?;
    Ok(stats
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = fields.get(2)?;
            // Whole disks only (vda, sda, nvme0n1), not partitions or loops.
            let whole = (name.starts_with("vd") || name.starts_with("sd"))
                && !name.chars().last()?.is_ascii_digit()
                || name.starts_with("nvme") && !name.contains('p');
            whole.then(|| {
                fields
                    .get(5)?
                    .parse::<u64>()
                    .ok()
                    .map(|sectors| sectors * 512)
            })?
        })
        .sum())
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
}

fn delta_sync_vs_rsync() -> anyhow::Result<()> {
    const SIZE: u64 = 4 << 30;
    const CHUNK: u64 = 256 << 10;
    eprintln!("Delta Sync vs rsync: preparing two 4 GiB copies ...");
    let federation = DevFederation::builder().nodes(3).start()?;
    let work = federation.dir().to_path_buf();
    let source = work.join("source.img");
    std::fs::create_dir_all(work.join("rsync-dest"))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {SIZE} /dev/urandom > {0} && cp {0} {1}",
            source.display(),
            work.join("rsync-dest/dest.img").display()
        ))
        .status()?;
    anyhow::ensure!(status.success(), "preparing the rsync files failed");
    federation.tether_ok(&[
        "volume",
        "create",
        "delta",
        "--size",
        "4GiB",
        "--replicas",
        "2",
    ])?;
    let view = federation.wait_in_sync("delta", SYNC_TIMEOUT);
    let socket = work.join("delta.sock");
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "delta",
            "--nbd",
            &format!("unix:{}", socket.display()),
        ])?
        .trim()
        .to_string();
    multicluster_tests::clients::nbdcopy_in(&source, &uri)?;
    federation.wait_in_sync("delta", SYNC_TIMEOUT);
    let master = view["master"].as_str().unwrap().to_string();
    let replica = multicluster_tests::harness::replicas_of(&view)[0].clone();

    // 1 % of the chunks, chosen with a fixed seed, rewritten whole with new random bytes.
    let n_chunks = SIZE / CHUNK;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chosen = std::collections::BTreeSet::new();
    while (chosen.len() as u64) < n_chunks / 100 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chosen.insert(state % n_chunks);
    }
    // The replica goes away cleanly (a node taken down for maintenance).
    let cmdline = federation.kill_node_gracefully(&replica);
    let mut client = NbdClient::connect(&socket, "delta")?;
    let file = std::fs::OpenOptions::new().write(true).open(&source)?;
    let mut random = std::fs::File::open("/dev/urandom")?;
    let mut chunk = vec![0u8; CHUNK as usize];
    for index in &chosen {
        random.read_exact(&mut chunk)?;
        client.write(index * CHUNK, &chunk)?;
        use std::os::unix::fs::FileExt;
        file.write_all_at(&chunk, index * CHUNK)?;
    }
    file.sync_all()?;
    drop(client);
    let changed = chosen.len() as u64 * CHUNK;

    // Tether: the replica comes back and Delta Sync brings it in sync.
    drop_caches();
    let _ = &master;
    let restarted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let disk_before = disk_read_bytes()?;
    federation.start_node(&replica, &cmdline);
    let this_sync = |sync: &Value| {
        sync["node"] == replica.as_str()
            && sync["started_unix_ms"].as_u64().unwrap_or(0) >= restarted_ms
    };
    federation.wait_in_sync("delta", SYNC_TIMEOUT);
    let sync = federation.wait_volume("delta", SYNC_TIMEOUT, "sync record", |view| {
        view["syncs"].as_array().is_some_and(|syncs| {
            syncs
                .iter()
                .any(|sync| this_sync(sync) && sync["phase"] == "done")
        })
    })["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sync| this_sync(sync))
        .unwrap()
        .clone();
    let tether_disk = disk_read_bytes()? - disk_before;
    let tether_source_reads = sync["source_bytes_read"].as_u64().unwrap();
    let copied = sync["bytes_copied"].as_u64().unwrap();
    let hashes = sync["hashes_fetched"].as_u64().unwrap();
    // Hash overhead on the wire: 32 bytes per hash fetched, 8 per index asked,
    // and a 28-byte frame header per request and answer.
    let frames = 2 * (sync["chunks_copied"].as_u64().unwrap() + 64);
    let overhead = hashes * 40 + frames * 28;
    let tether_sent = copied + overhead;
    let tether_secs = sync["elapsed_ms"].as_u64().unwrap() as f64 / 1000.0;

    // rsync: the same change, through a loopback daemon.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = work.join("rsyncd.conf");
    std::fs::write(
        &config,
        format!(
            "use chroot = no\nread only = no\nuid = root\ngid = root\n[dest]\npath = {}\n",
            work.join("rsync-dest").display()
        ),
    )?;
    let mut daemon = Command::new("rsync")
        .args(["--daemon", "--no-detach", &format!("--port={port}")])
        .arg(format!("--config={}", config.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the rsync daemon")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "rsync daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop_caches();
    let disk_before = disk_read_bytes()?;
    let started = Instant::now();
    let output = Command::new("rsync")
        .args(["--inplace", "--no-whole-file", "--stats"])
        .arg(&source)
        .arg(format!("rsync://127.0.0.1:{port}/dest/dest.img"))
        .output()?;
    let rsync_secs = started.elapsed().as_secs_f64();
    let rsync_disk = disk_read_bytes()? - disk_before;
    let _ = daemon.kill();
    let _ = daemon.wait();
    anyhow::ensure!(
        output.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats = String::from_utf8_lossy(&output.stdout);
    let rsync_sent: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("Total bytes sent: "))
        .map(|value| value.replace(',', "").trim().parse().unwrap_or(0))
        .unwrap_or(0);

    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "\n### Delta Sync vs rsync: 4 GiB, {} of {n_chunks} chunks (1 %) changed, {:.1} MiB\n",
        chosen.len(),
        mib(changed)
    );
    println!("| | bytes sent | reads on the source (engine count) | disk reads, both sides (/proc/diskstats, cold cache) | wall time |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| Tether Delta Sync | {:.1} MiB ({:.1} MiB data + {:.1} KiB hashes and headers) | {:.1} MiB | {:.1} MiB | {tether_secs:.2} s |",
        mib(tether_sent),
        mib(copied),
        overhead as f64 / 1024.0,
        mib(tether_source_reads),
        mib(tether_disk)
    );
    println!(
        "| rsync --inplace --no-whole-file | {:.1} MiB | the whole file (rolling checksums, by design) | {:.1} MiB | {rsync_secs:.2} s |",
        mib(rsync_sent),
        mib(rsync_disk)
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "\ntargets: bytes sent <= 1.05 x changed + hash overhead: {:.3} x -> {}; source reads <= 1.1 x changed: {:.2} x -> {}; wall time <= 0.1 x rsync: {:.3} x -> {}",
        copied as f64 / changed as f64,
        verdict(copied as f64 <= 1.05 * changed as f64),
        tether_source_reads as f64 / changed as f64,
        verdict(tether_source_reads as f64 <= 1.1 * changed as f64),
        tether_secs / rsync_secs,
        verdict(tether_secs <= 0.1 * rsync_secs)
    );
    Ok(())
}

/// Sum of every gRPC message etcd has received.
fn etcd_messages(metrics_addr: &str) -> anyhow::Result<f64> {
    let text = http_get(metrics_addr, "/metrics")?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("grpc_server_msg_received_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn etcd_idle_load() -> anyhow::Result<()> {
    let federation = DevFederation::builder().nodes(3).start()?;
    let etcd = &federation.info["clusters"][0]["etcd"];
    let addr = format!(
        "127.0.0.1:{}",
        etcd["client_port"].as_u64().context("etcd port")?
    );
    let mut rows = Vec::new();
    let mut created = 0usize;
    for target in [10usize, 100, 1000] {
        eprintln!("etcd idle load: creating volumes up to {target} ...");
        let names: Vec<String> = (created..target).map(|i| format!("idle{i}")).collect();
        let federation_ref = &federation;
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let handles: Vec<_> = names
                .chunks(names.len().div_ceil(8).max(1))
                .map(|batch| {
                    scope.spawn(move || -> anyhow::Result<()> {
                        for name in batch {
                            federation_ref.tether_ok(&[
                                "volume",
                                "create",
                                name,
                                "--size",
                                "64MiB",
                                "--replicas",
                                "2",
                            ])?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for handle in handles {
                handle.join().expect("create thread")?;
            }
            Ok(())
        })?;
        created = target;
        // Let statuses settle, then count what etcd receives in 20 s of idleness.
        std::thread::sleep(Duration::from_secs(10));
        let before = etcd_messages(&addr)?;
        std::thread::sleep(Duration::from_secs(20));
        let rate = (etcd_messages(&addr)? - before) / 20.0;
        eprintln!("{target} volumes: {rate:.1} etcd requests/s");
        rows.push((target, rate));
    }
    println!("\n### etcd load at idle, 3 nodes, volumes with 2 copies\n");
    println!("| volumes | etcd requests/s |");
    println!("| --- | --- |");
    for (volumes, rate) in &rows {
        println!("| {volumes} | {rate:.1} |");
    }
    let flat = rows.last().unwrap().1 <= rows[0].1 * 1.5 + 1.0;
    println!("\ntarget flat: {}", if flat { "met" } else { "MISSED" });
    Ok(())
}
