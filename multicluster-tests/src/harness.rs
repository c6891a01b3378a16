//! A dev federation for tests, driven through the `tether` CLI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context};
use serde_json::Value;

/// The `tether` binary: `TETHER_BIN`, else `target/<profile>/tether`.
pub fn tether_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TETHER_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("tether");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p tether-cli` (or set TETHER_BIN)",
        bin.display()
    );
    bin
}

/// Options for [`DevFederation::start`].
#[derive(Debug, Clone)]
pub struct FederationBuilder {
    nodes: usize,
    embedded: bool,
    capacity: Option<String>,
    hash_upkeep: bool,
}

impl Default for FederationBuilder {
    fn default() -> Self {
        Self {
            nodes: 3,
            embedded: false,
            capacity: None,
            hash_upkeep: true,
        }
    }
}

impl FederationBuilder {
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }
    /// One process on the embedded store instead of etcd + a process per node.
    pub fn embedded(mut self, embedded: bool) -> Self {
        self.embedded = embedded;
        self
    }
    /// Nodes without hash-list upkeep (benchmarks only).
    pub fn no_hash_upkeep(mut self) -> Self {
        self.hash_upkeep = false;
        self
    }
    pub fn capacity(mut self, capacity: &str) -> Self {
        self.capacity = Some(capacity.to_string());
        self
    }
    pub fn start(self) -> anyhow::Result<DevFederation> {
        let dir = tempfile::Builder::new()
            .prefix("tether-e2e")
            .tempdir_in("/tmp")?;
        let federation = DevFederation {
            dir,
            bin: tether_bin(),
            builder: self,
            info: Value::Null,
        };
        federation.up()
    }
}

/// A running dev federation in a temporary directory; stopped on drop.
pub struct DevFederation {
    dir: tempfile::TempDir,
    bin: PathBuf,
    builder: FederationBuilder,
    /// The parsed `federation.json`.
    pub info: Value,
}

impl DevFederation {
    pub fn builder() -> FederationBuilder {
        FederationBuilder::default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `tether dev up` (first start, or bringing a stopped federation back).
    pub fn up(mut self) -> anyhow::Result<Self> {
        let mut args = vec![
            "dev".to_string(),
            "up".into(),
            format!("--nodes={}", self.builder.nodes),
        ];
        if self.builder.embedded {
            args.push("--embedded".into());
        }
        if let Some(capacity) = &self.builder.capacity {
            args.push(format!("--capacity={capacity}"));
        }
        if !self.builder.hash_upkeep {
            args.push("--no-hash-upkeep".into());
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.tether_ok(&arg_refs)?;
        let json = std::fs::read(self.dir().join("federation.json"))?;
        self.info = serde_json::from_slice(&json)?;
        Ok(self)
    }

    pub fn down(&self) -> anyhow::Result<()> {
        self.tether_ok(&["dev", "down"]).map(|_| ())
    }

    /// Runs `tether --dir DIR ARGS`.
    pub fn tether(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--dir")
            .arg(self.dir())
            .args(args)
            .env_remove("TETHER_ADMIN")
            .output()
            .expect("tether runs")
    }

    /// Runs `tether ARGS`, failing with its stderr unless it succeeds; returns stdout.
    pub fn tether_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.tether(args);
        if !output.status.success() {
            bail!(
                "tether {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// `tether ARGS -o json`, parsed.
    pub fn tether_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut with_json = args.to_vec();
        with_json.extend(["-o", "json"]);
        let stdout = self.tether_ok(&with_json)?;
        serde_json::from_str(&stdout).with_context(|| format!("parsing {stdout}"))
    }

    /// Creates a volume, attaches it on a Unix socket in the federation's
    /// directory, and returns the NBD URI.
    pub fn create_attached(&self, name: &str, size: &str) -> anyhow::Result<String> {
        self.tether_ok(&["volume", "create", name, "--size", size])?;
        let socket = self.dir().join(format!("{name}.sock"));
        let uri = self.tether_ok(&[
            "volume",
            "attach",
            name,
            "--nbd",
            &format!("unix:{}", socket.display()),
        ])?;
        Ok(uri.trim().to_string())
    }

    /// The node entries of `federation.json`.
    pub fn nodes(&self) -> Vec<Value> {
        self.info["clusters"][0]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The node entry named `name`.
    pub fn node(&self, name: &str) -> Value {
        self.nodes()
            .into_iter()
            .find(|node| node["name"] == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Sends SIGKILL to a process and waits until it is gone.
    pub fn kill9(&self, pid: u64) {
        send_signal(pid as i32, 9);
        wait_gone(pid as u32);
    }

    /// The node's log so far.
    pub fn node_log(&self, name: &str) -> String {
        let node = self.node(name);
        std::fs::read_to_string(node["log"].as_str().unwrap()).unwrap_or_default()
    }

    /// `tether daemon scrub` on a stopped node's pool: the per-volume report.
    pub fn scrub(&self, data_dir: &str) -> anyhow::Result<Value> {
        let stdout = self.tether_ok(&["daemon", "scrub", "--data-dir", data_dir])?;
        Ok(serde_json::from_str(&stdout)?)
    }
}

impl Drop for DevFederation {
    fn drop(&mut self) {
        let _ = self.tether(&["dev", "down"]);
    }
}

fn send_signal(pid: i32, signal: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// Waits until `pid` no longer runs (or is a zombie).
pub fn wait_gone(pid: u32) {
    for _ in 0..2000 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().next())
                    != Some("Z") =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            _ => return,
        }
    }
    panic!("process {pid} did not exit");
}
