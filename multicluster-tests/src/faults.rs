//! The whole-federation fault suite's tools: a seeded schedule of faults
//! (kill -9, SIGSTOP past the lease, partitions), the partitions themselves
//! (iptables rules inside a host's network namespace under `dev up
//! --netns`; on a federation whose daemons share loopback, rules matched
//! per process by putting it in its own cgroup v2 group), restarting a
//! killed process with the command line it had (in its namespace), and the
//! report (times as p50/p99/max).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::clients::run;

/// xorshift64*: a schedule that a seed reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";

/// A process moved into its own cgroup v2 group, so iptables can match its
/// packets (`-m cgroup --path`). Dropping it moves the process back.
pub struct Isolated {
    path: String,
    pid: u32,
}

impl Isolated {
    pub fn new(name: &str, pid: u32) -> anyhow::Result<Self> {
        let path = format!("tether-faults/{name}-{pid}");
        let dir = Path::new(CGROUP_ROOT).join(&path);
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", dir.display()))?;
        Ok(Isolated { path, pid })
    }

    /// The iptables match arguments for this process's packets.
    pub fn matcher(&self) -> Vec<String> {
        vec![
            "-m".into(),
            "cgroup".into(),
            "--path".into(),
            self.path.clone(),
        ]
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = std::fs::write(
            Path::new(CGROUP_ROOT).join("cgroup.procs"),
            self.pid.to_string(),
        );
        let _ = std::fs::remove_dir(Path::new(CGROUP_ROOT).join(&self.path));
    }
}

/// An iptables rule in place while this lives, in a host's network
/// namespace or the root one.
pub struct Rule {
    netns: Option<String>,
    args: Vec<String>,
}

fn iptables(netns: Option<&str>, action: &str, args: &[String]) -> anyhow::Result<()> {
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, "iptables"]);
            command
        }
        None => Command::new("iptables"),
    };
    let output = command
        .arg("-w")
        .arg(action)
        .args(args)
        .output()
        .context("running iptables")?;
    if !output.status.success() {
        bail!(
            "iptables {action} {} (in {}): {}",
            args.join(" "),
            netns.unwrap_or("the root namespace"),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl Rule {
    /// `iptables -I CHAIN ARGS… -j DROP` in the root namespace.
    pub fn drop(chain: &str, args: &[String]) -> anyhow::Result<Self> {
        Self::drop_in(None, chain, args)
    }

    /// `iptables -I CHAIN ARGS… -j DROP` inside `netns` (the root namespace if none).
    pub fn drop_in(netns: Option<&str>, chain: &str, args: &[String]) -> anyhow::Result<Self> {
        let mut full = vec![chain.to_string()];
        full.extend_from_slice(args);
        full.extend(["-j".to_string(), "DROP".to_string()]);
        iptables(netns, "-I", &full)?;
        Ok(Rule {
            netns: netns.map(str::to_string),
            args: full,
        })
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = iptables(self.netns.as_deref(), "-D", &self.args);
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| arg.to_string()).collect()
}

/// Inside host `netns`, every packet to `address` on `protocol` `port` is
/// dropped: its open connections stall as new ones do.
pub fn cut_host_from_port(
    netns: &str,
    address: &str,
    protocol: &str,
    port: u16,
) -> anyhow::Result<Rule> {
    let port = port.to_string();
    Rule::drop_in(
        Some(netns),
        "OUTPUT",
        &strings(&["-d", address, "-p", protocol, "--dport", &port]),
    )
}

/// Inside host `netns`, everything to and from `address` is dropped.
pub fn cut_host_from_host(netns: &str, address: &str) -> anyhow::Result<Vec<Rule>> {
    Ok(vec![
        Rule::drop_in(Some(netns), "OUTPUT", &strings(&["-d", address]))?,
        Rule::drop_in(Some(netns), "INPUT", &strings(&["-s", address]))?,
    ])
}

/// In the root namespace, packets from the hosts of `subnet` to `address`
/// (another cluster's bridge, where its gateways listen) are dropped.
pub fn cut_subnet_from(subnet: &str, address: &str) -> anyhow::Result<Rule> {
    Rule::drop("INPUT", &strings(&["-s", subnet, "-d", address]))
}

/// Packets from `isolated` to TCP `port` on loopback are dropped: those of
/// connections it opens from now on (matched by its cgroup) and those of
/// the connections it has open already (matched by their ports: a socket
/// keeps the cgroup it was created in).
pub fn cut_tcp_from(isolated: &Isolated, port: u16) -> anyhow::Result<Vec<Rule>> {
    let mut args = vec!["-o".to_string(), "lo".into()];
    args.extend(isolated.matcher());
    args.extend([
        "-p".into(),
        "tcp".into(),
        "--dport".into(),
        port.to_string(),
    ]);
    let mut rules = vec![Rule::drop("OUTPUT", &args)?];
    for local in connections_to(isolated.pid, port)? {
        let args: Vec<String> = ["-o", "lo", "-p", "tcp", "--sport", &local.to_string()]
            .into_iter()
            .chain(["--dport", &port.to_string()])
            .map(str::to_string)
            .collect();
        rules.push(Rule::drop("OUTPUT", &args)?);
    }
    Ok(rules)
}

/// The local ports of `pid`'s established TCP connections to `port`, as `ss` lists them.
fn connections_to(pid: u32, port: u16) -> anyhow::Result<Vec<u16>> {
    let output = Command::new("ss")
        .args([
            "-Htnp",
            "state",
            "established",
            "dport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .context("running ss")?;
    if !output.status.success() {
        bail!("ss: {}", String::from_utf8_lossy(&output.stderr));
    }
    let owner = format!("pid={pid},");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&owner))
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter_map(|local| local.rsplit_once(':')?.1.parse().ok())
        .collect())
}

/// Every packet to `protocol` `port` on loopback is dropped (the listener
/// is partitioned from all its clients).
pub fn cut_port(protocol: &str, port: u16) -> anyhow::Result<Rule> {
    Rule::drop(
        "INPUT",
        &[
            "-i".into(),
            "lo".into(),
            "-p".into(),
            protocol.into(),
            "--dport".into(),
            port.to_string(),
        ],
    )
}

/// The port of `host:port`.
pub fn port_of(endpoint: &str) -> anyhow::Result<u16> {
    let tail = endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    Ok(tail
        .rsplit_once(':')
        .with_context(|| format!("{endpoint} has no port"))?
        .1
        .trim_end_matches('/')
        .parse()?)
}

/// A process's command line, read before it is killed so it can be started again.
pub fn cmdline(pid: u32) -> anyhow::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("process {pid} is not running"))?;
    Ok(raw
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect())
}

/// Starts `cmdline` again, appending to `log`.
pub fn respawn(cmdline: &[String], log: &Path) -> anyhow::Result<Child> {
    respawn_in(None, cmdline, log)
}

/// Starts `cmdline` again inside network namespace `netns` (a host of `dev
/// up --netns`) when given, appending to `log`.
pub fn respawn_in(netns: Option<&str>, cmdline: &[String], log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(&cmdline[0]);
            command
        }
        None => Command::new(&cmdline[0]),
    };
    Ok(command
        .args(&cmdline[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()?)
}

/// Processes the suite started again: `dev down` knows only the pids it
/// started, so these are killed when this goes (also when a test panics).
#[derive(Default)]
pub struct Respawned(Vec<Child>);

impl Respawned {
    pub fn push(&mut self, child: Child) {
        self.0.push(child);
    }
}

impl Drop for Respawned {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// p50, p99 and max of `times`, in seconds (zeros when there are none).
pub fn percentiles(times: &[Duration]) -> (f64, f64, f64) {
    if times.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut sorted: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), *sorted.last().expect("not empty"))
}

/// Samples counters (writers' acknowledged writes) every 10 ms on its own
/// thread, so the stall a fault causes is measured while it lasts.
/// Each sample: when, and every counter's value then.
type Samples = Arc<Mutex<Vec<(Instant, Vec<u64>)>>>;

pub struct Progress {
    samples: Samples,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(counters: Vec<Arc<AtomicU64>>) -> Self {
        let samples: Samples = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (samples.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Acquire) {
                let now: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Acquire)).collect();
                into.lock().unwrap().push((Instant::now(), now));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Progress {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits until every counter in `live` moved after `healed` (or `limit`
    /// past it); each counter's longest time without moving from `start` on.
    pub fn stalls(
        &self,
        start: Instant,
        healed: Instant,
        live: &[bool],
        limit: Duration,
    ) -> Vec<Duration> {
        loop {
            let samples = self.samples.lock().unwrap();
            let window: Vec<&(Instant, Vec<u64>)> =
                samples.iter().filter(|(at, _)| *at >= start).collect();
            let n = live.len();
            let mut longest = vec![Duration::ZERO; n];
            let mut moved_after = vec![false; n];
            if let Some((first_at, first)) = window.first() {
                let mut last_at = vec![*first_at; n];
                let mut last = first.clone();
                for (at, values) in &window[1..] {
                    for i in 0..n {
                        if values[i] > last[i] {
                            longest[i] = longest[i].max(*at - last_at[i]);
                            last_at[i] = *at;
                            last[i] = values[i];
                            if *at > healed {
                                moved_after[i] = true;
                            }
                        }
                    }
                }
                let now = window.last().map_or(*first_at, |(at, _)| *at);
                let done = (0..n).all(|i| moved_after[i] || !live[i]);
                if done || now > healed + limit {
                    for i in 0..n {
                        if !moved_after[i] && live[i] {
                            longest[i] = longest[i].max(now - last_at[i]);
                        }
                    }
                    return longest;
                }
            }
            drop(samples);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Forgets samples before `before` (the run is long; memory is not).
    pub fn forget_before(&self, before: Instant) {
        self.samples.lock().unwrap().retain(|(at, _)| *at >= before);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A node's pool on a filesystem of its own, a small ext4 on a loop
/// device, which [`SmallPool::fill`] can fill to its last block: a full
/// pool as a node sees one (ENOSPC from the kernel), not a simulated one.
/// Unmounted (lazily: the node may still hold files) on drop.
pub struct SmallPool {
    mountpoint: PathBuf,
}

impl SmallPool {
    /// Moves node `name`'s pool onto a new ext4 of `bytes`: stops the
    /// node, copies its data dir onto the new filesystem mounted in its
    /// place, and starts it again.
    pub fn put(
        federation: &crate::harness::DevFederation,
        name: &str,
        bytes: u64,
    ) -> anyhow::Result<Self> {
        let data_dir = PathBuf::from(
            federation.node(name)["data_dir"]
                .as_str()
                .context("node has a data_dir")?,
        );
        let cmdline = federation.kill_node_gracefully(name);
        let image = federation.dir().join(format!("{name}-pool.ext4"));
        let old = federation.dir().join(format!("{name}-pool.old"));
        std::fs::File::create(&image)?.set_len(bytes)?;
        // No blocks reserved for root: the nodes run as root, and a pool
        // full for them is full.
        run("mkfs.ext4", &["-q", "-F", "-m", "0", path_str(&image)?])?;
        std::fs::rename(&data_dir, &old)?;
        std::fs::create_dir(&data_dir)?;
        run(
            "mount",
            &["-o", "loop", path_str(&image)?, path_str(&data_dir)?],
        )?;
        let pool = SmallPool {
            mountpoint: data_dir.clone(),
        };
        run(
            "cp",
            &[
                "-a",
                &format!("{}/.", path_str(&old)?),
                path_str(&data_dir)?,
            ],
        )?;
        std::fs::remove_dir_all(&old)?;
        federation.start_node(name, &cmdline);
        Ok(pool)
    }

    /// Takes every free block with ballast files; the pool has room again
    /// when the answer drops.
    pub fn fill(&self) -> anyhow::Result<Ballast> {
        let dir = self.mountpoint.join("ballast");
        std::fs::create_dir_all(&dir)?;
        // All but the last MiB at once (fallocate needs room for its own
        // extent tree), the rest block by block until ENOSPC.
        let free = free_bytes(&self.mountpoint)?.saturating_sub(1 << 20);
        let big = dir.join("big");
        run("fallocate", &["-l", &free.to_string(), path_str(&big)?])?;
        let mut file = std::fs::File::create(dir.join("rest"))?;
        let block = vec![0u8; 4096];
        loop {
            use std::io::Write;
            match file.write_all(&block).and_then(|_| file.sync_data()) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(28) => break,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(Ballast { dir })
    }
}

impl Drop for SmallPool {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

/// The files filling a [`SmallPool`]; removed on drop.
pub struct Ballast {
    dir: PathBuf,
}

impl Drop for Ballast {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("path is not UTF-8")
}

/// Bytes free on the filesystem holding `path`, as `df` counts them.
fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    run("df", &["--output=avail", "-B1", path_str(path)?])?
        .lines()
        .nth(1)
        .context("df printed no size")?
        .trim()
        .parse()
        .context("df's size")
}
