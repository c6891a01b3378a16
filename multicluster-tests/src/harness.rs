//! A dev federation for tests, driven through the `tether` CLI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use serde_json::Value;
use tether_tls::{CertificateAuthority, Identity};

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
    replace_after: Option<String>,
    cert_lifetime: Option<String>,
    etcd_members: usize,
    satellites: usize,
    overprovision: Option<String>,
    dr: bool,
    netns: bool,
}

impl Default for FederationBuilder {
    fn default() -> Self {
        Self {
            nodes: 3,
            embedded: false,
            capacity: None,
            hash_upkeep: true,
            replace_after: None,
            cert_lifetime: None,
            etcd_members: 1,
            satellites: 0,
            overprovision: None,
            dr: false,
            netns: false,
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
    /// The registry replaces a copy whose node stays down this long.
    pub fn replace_after(mut self, after: &str) -> Self {
        self.replace_after = Some(after.to_string());
        self
    }
    /// Lifetime of the certificates the cluster CA issues.
    pub fn cert_lifetime(mut self, lifetime: &str) -> Self {
        self.cert_lifetime = Some(lifetime.to_string());
        self
    }
    /// Each node's over-provisioning, e.g. "200%".
    pub fn overprovision(mut self, percent: &str) -> Self {
        self.overprovision = Some(percent.to_string());
        self
    }
    /// Members of the local etcd cluster.
    /// Satellite daemons `dev up` runs (`satellite-1`, ...).
    pub fn satellites(mut self, satellites: usize) -> Self {
        self.satellites = satellites;
        self
    }

    pub fn etcd_members(mut self, members: usize) -> Self {
        self.etcd_members = members;
        self
    }
    pub fn capacity(mut self, capacity: &str) -> Self {
        self.capacity = Some(capacity.to_string());
        self
    }
    /// Also the DR peer cluster (`dev up --dr`), in `DIR/dr`.
    pub fn dr(mut self) -> Self {
        self.dr = true;
        self
    }
    /// Each node and satellite in a network namespace of its own (`dev up --netns`).
    pub fn netns(mut self) -> Self {
        self.netns = true;
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
            restarted: Mutex::new(HashMap::new()),
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
    /// Nodes the test restarted itself, by name (their pids are not in `federation.json`).
    restarted: Mutex<HashMap<String, Child>>,
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
        if let Some(after) = &self.builder.replace_after {
            args.push(format!("--replace-after={after}"));
        }
        if let Some(lifetime) = &self.builder.cert_lifetime {
            args.push(format!("--cert-lifetime={lifetime}"));
        }
        if let Some(percent) = &self.builder.overprovision {
            args.push(format!("--overprovision={percent}"));
        }
        if self.builder.satellites != 0 {
            args.push(format!("--satellites={}", self.builder.satellites));
        }
        if self.builder.dr {
            args.push("--dr".into());
        }
        if self.builder.netns {
            args.push("--netns".into());
        }
        if self.builder.etcd_members != 1 {
            args.push(format!("--etcd-members={}", self.builder.etcd_members));
        }
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(err) = self.tether_ok(&arg_refs) {
            // The directory goes with the test: say what the logs said.
            bail!("{err:#}\n{}", self.log_tails(30));
        }
        let json = std::fs::read(self.dir().join("federation.json"))?;
        self.info = serde_json::from_slice(&json)?;
        Ok(self)
    }

    /// The last `lines` lines of every log in `DIR/logs`, each headed by its name.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut tails = String::new();
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir().join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            tails.push_str(&format!("--- {}\n", log.display()));
            for line in &all[all.len().saturating_sub(lines)..] {
                tails.push_str(line);
                tails.push('\n');
            }
        }
        tails
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

    /// Runs `tether --dir DIR/PEER ARGS`: the DR peer `dev up --dr` started.
    pub fn tether_peer(&self, peer: &str, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--dir")
            .arg(self.dir().join(peer))
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

    /// Credentials for `identity` from the cluster's own CA (as an operator
    /// holding the CA could make), valid for `validity` (default: an hour
    /// from now), in a new directory (tls.crt, tls.key, ca.crt).
    pub fn issue(
        &self,
        identity: &Identity,
        validity: Option<(SystemTime, SystemTime)>,
    ) -> PathBuf {
        let ca =
            CertificateAuthority::load_or_create(&self.dir().join("central/control/ca"), "central")
                .expect("the dev CA loads");
        issue_from(&ca, identity, validity, &self.dir().join("issued"))
    }

    /// Creates a volume with `copies` copies and attaches it through the one
    /// node that holds no copy, on a Unix socket; returns the view, the URI and
    /// the presenting node.
    pub fn create_presented(
        &self,
        name: &str,
        size: &str,
        copies: usize,
    ) -> (Value, String, String) {
        let replicas = copies.to_string();
        self.tether_ok(&[
            "volume",
            "create",
            name,
            "--size",
            size,
            "--replicas",
            &replicas,
        ])
        .unwrap();
        let view = self.wait_in_sync(name, Duration::from_secs(60));
        assert_eq!(view["copies"].as_array().unwrap().len(), copies, "{view}");
        let presenter = self
            .node_without_copy(&view)
            .expect("a node without a copy");
        let socket = self.dir().join(format!("{name}.sock"));
        let uri = self
            .tether_ok(&[
                "volume",
                "attach",
                name,
                "--nbd",
                &format!("unix:{}", socket.display()),
                "--node",
                &presenter,
            ])
            .unwrap()
            .trim()
            .to_string();
        (view, uri, presenter)
    }

    /// Everything the registry logged.
    pub fn registry_log(&self) -> String {
        let path = self.info["clusters"][0]["registry"]["log"]
            .as_str()
            .unwrap();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The local etcd's members in `federation.json`: (endpoint, pid).
    pub fn etcd_members(&self) -> Vec<(String, u32)> {
        self.info["clusters"][0]["etcd"]["members"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|member| {
                (
                    member["endpoint"].as_str().unwrap().to_string(),
                    member["pid"].as_u64().unwrap() as u32,
                )
            })
            .collect()
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

    /// The pid of node `name` now (restarted nodes have new ones).
    pub fn node_pid(&self, name: &str) -> u32 {
        if let Some(child) = self.restarted.lock().unwrap().get(name) {
            return child.id();
        }
        self.node(name)["pid"].as_u64().unwrap() as u32
    }

    /// `kill -9` of node `name`; returns its command line, for [`Self::start_node`].
    pub fn kill_node(&self, name: &str) -> Vec<String> {
        self.stop_node(name, 9)
    }

    /// SIGTERM: the node stops serving, settles and deregisters.
    pub fn kill_node_gracefully(&self, name: &str) -> Vec<String> {
        self.stop_node(name, 15)
    }

    fn stop_node(&self, name: &str, signal: i32) -> Vec<String> {
        let pid = self.node_pid(name);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("node is running");
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        send_signal(pid as i32, signal);
        wait_gone(pid);
        if let Some(mut child) = self.restarted.lock().unwrap().remove(name) {
            let _ = child.wait();
        }
        args
    }

    /// Node `name`'s host under `dev up --netns`: (network namespace, address).
    pub fn node_host(&self, name: &str) -> Option<(String, String)> {
        host_of(&self.node(name))
    }

    /// Starts node `name` again with the command line it had, in its
    /// network namespace if it has one, logging to its log.
    pub fn start_node(&self, name: &str, cmdline: &[String]) {
        let log = self.node(name)["log"].as_str().unwrap().to_string();
        let netns = self.node_host(name).map(|(netns, _)| netns);
        let child = crate::faults::respawn_in(netns.as_deref(), cmdline, Path::new(&log))
            .expect("node restarts");
        self.restarted
            .lock()
            .unwrap()
            .insert(name.to_string(), child);
    }

    /// SIGSTOP / SIGCONT of node `name`.
    pub fn pause_node(&self, name: &str) {
        send_signal(self.node_pid(name) as i32, 19);
    }
    pub fn resume_node(&self, name: &str) {
        send_signal(self.node_pid(name) as i32, 18);
    }

    /// Polls `tether volume get NAME` until `done` holds; panics after `timeout`.
    pub fn wait_volume(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let view = self.tether_json(&["volume", "get", name]);
            if let Ok(view) = &view {
                if done(view) {
                    return view.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "volume {name}: {what} did not happen within {timeout:?}; last view: {view:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A node that holds no copy of the volume in `view` (to present it from).
    pub fn node_without_copy(&self, view: &Value) -> Option<String> {
        let copies = view["copies"].as_array().cloned().unwrap_or_default();
        self.nodes()
            .iter()
            .filter_map(|node| node["name"].as_str().map(str::to_string))
            .find(|node| !copies.iter().any(|copy| copy["node"] == node.as_str()))
    }

    /// Waits until every copy of `name` is in sync.
    pub fn wait_in_sync(&self, name: &str, timeout: Duration) -> Value {
        self.wait_volume(name, timeout, "all copies in sync", |view| {
            view["copies"]
                .as_array()
                .is_some_and(|copies| copies.iter().all(|copy| copy["state"] == "in-sync"))
        })
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
        for (_, mut child) in self.restarted.lock().unwrap().drain() {
            send_signal(child.id() as i32, 18);
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.tether(&["dev", "down"]);
    }
}

/// The `host` of a node's or satellite's entry in `federation.json`:
/// (network namespace, address).
pub fn host_of(entry: &Value) -> Option<(String, String)> {
    let host = entry.get("host")?;
    Some((
        host["netns"].as_str()?.to_string(),
        host["address"].as_str()?.to_string(),
    ))
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

/// The replicas in a `volume get -o json` view.
pub fn replicas_of(view: &Value) -> Vec<String> {
    copies_where(view, |copy| copy["role"] == "replica")
}

/// The node holding the master copy in a `volume get -o json` view.
pub fn master_of(view: &Value) -> Option<String> {
    copies_where(view, |copy| copy["role"] == "master")
        .into_iter()
        .next()
}

/// Every node holding a copy in a `volume get -o json` view.
pub fn copies_of(view: &Value) -> Vec<String> {
    copies_where(view, |_| true)
}

fn copies_where(view: &Value, keep: impl Fn(&Value) -> bool) -> Vec<String> {
    view["copies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|copy| keep(copy))
        .map(|copy| copy["node"].as_str().unwrap().to_string())
        .collect()
}

/// Credentials for `identity` from `ca`, saved under `parent`.
pub fn issue_from(
    ca: &CertificateAuthority,
    identity: &Identity,
    validity: Option<(SystemTime, SystemTime)>,
    parent: &Path,
) -> PathBuf {
    let now = SystemTime::now();
    let (from, until) = validity.unwrap_or((
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    ));
    let credentials = ca
        .issue_credentials_valid(identity, &[], from, until)
        .expect("the CA issues");
    let dir = parent.join(format!(
        "{}-{}-{}",
        identity.role,
        identity.name,
        until
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    ));
    credentials.save(&dir).expect("credentials save");
    dir
}

/// A blocking TLS stream, as a test client of a Tether endpoint.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// Opens TLS to `addr` as the holder of `credentials` (none: no client
/// certificate), trusting `trust_pem`, expecting the server's certificate to
/// name `server` (a DNS name or an IP). The handshake is driven to its end;
/// a refusal of the client's certificate shows on the first read.
pub fn tls_connect(
    addr: &str,
    credentials: Option<&Path>,
    trust_pem: &str,
    server: &str,
) -> anyhow::Result<TlsStream> {
    let config = match credentials {
        Some(dir) => {
            let credentials = tether_tls::Credentials::load(dir)?;
            Arc::new(tether_tls::TlsContext::new(&credentials)?.client_config_with_alpn(vec![]))
        }
        None => tether_tls::anonymous_client_config(trust_pem)?,
    };
    let name = rustls::pki_types::ServerName::try_from(server.to_string())?;
    let mut connection = rustls::ClientConnection::new(config, name)?;
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    while connection.is_handshaking() {
        connection.complete_io(&mut tcp)?;
    }
    Ok(rustls::StreamOwned::new(connection, tcp))
}

/// True if the server closed (or failed) the stream instead of answering.
pub fn refused(stream: &mut impl std::io::Read) -> bool {
    let mut buf = [0u8; 64];
    !matches!(stream.read(&mut buf), Ok(n) if n > 0)
}

/// True if a plaintext stream to a TLS port got nothing back but (at most)
/// a TLS alert before being closed: no answer of the protocol behind it.
pub fn closed_with_at_most_an_alert(stream: &mut impl std::io::Read) -> bool {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.is_empty() || answer[0] == 0x15
}

/// `POST path` with a JSON `body` to the admin API at `addr` over TLS, as
/// the holder of `credentials` (none: no client certificate); returns the
/// status code and the body.
pub fn https_post(
    addr: &str,
    credentials: Option<&Path>,
    trust_pem: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = tls_connect(addr, credentials, trust_pem, "127.0.0.1")?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, payload) = response
        .split_once("\r\n\r\n")
        .context("HTTP response without a body")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("HTTP response without a status")?;
    Ok((status, payload.to_string()))
}

impl DevFederation {
    /// The admin API's `host:port`.
    pub fn admin_addr(&self) -> String {
        self.info["admin"]
            .as_str()
            .unwrap()
            .trim_start_matches("https://")
            .to_string()
    }
}

impl DevFederation {
    /// Runs `op` on the cluster's etcd, connected with the dev admin's
    /// credential (what an attacker holding etcd could do, too).
    pub fn with_store<T>(
        &self,
        op: impl AsyncFnOnce(&coord_store::EtcdStore) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let endpoints: Vec<String> = self.info["clusters"][0]["etcd"]["endpoints"]
            .as_array()
            .context("an etcd federation")?
            .iter()
            .filter_map(|endpoint| endpoint.as_str().map(str::to_string))
            .collect();
        let credentials = tether_tls::Credentials::load(&self.dir().join("admin"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let tls = tether_tls::TlsContext::new(&credentials)?;
            let store = coord_store::EtcdStore::connect(&endpoints, Some(tls)).await?;
            op(&store).await
        })
    }

    /// The cluster's etcd revision now (how many writes it has taken).
    pub fn store_revision(&self) -> anyhow::Result<i64> {
        use coord_store::CoordStore;
        self.with_store(async |store| {
            let (_, revision) = store.get_prefix("/tether/revision-probe/").await?;
            Ok(revision)
        })
    }
}

impl DevFederation {
    /// `tether volume verify NAME`: asserts every in-sync replica is
    /// identical to the master (hash trees compared, settled); returns the report.
    pub fn assert_copies_identical(&self, name: &str) -> Value {
        let report = self
            .tether_json(&["volume", "verify", name])
            .unwrap_or_else(|err| panic!("verify {name}: {err}"));
        for copy in report["copies"].as_array().unwrap() {
            assert_eq!(copy["chunks_differing"], 0, "volume {name}: {report}");
        }
        report
    }
}

/// Writes a user's key file as a careful user does: readable by its owner only.
pub fn write_key_file(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("key file opens");
    std::io::Write::write_all(&mut file, contents.as_ref()).expect("key file writes");
}

impl DevFederation {
    /// Asserts `tether node list` shows every node up.
    pub fn assert_all_nodes_up(&self) {
        let nodes = self.tether_json(&["node", "list"]).unwrap();
        assert!(
            nodes
                .as_array()
                .unwrap()
                .iter()
                .all(|node| node["state"] == "up"),
            "{nodes}"
        );
    }
}

/// Sends one block frame on `stream` and reads frames until the first
/// answer (a test speaking to a block port as a node).
pub fn block_exchange(
    stream: &mut TlsStream,
    frame: tether_proto::block::Frame,
) -> tether_proto::block::Frame {
    use std::io::{Read, Write};
    let mut out = bytes::BytesMut::new();
    tether_proto::block::encode_frame(&frame, &mut out);
    stream.write_all(&out).unwrap();
    let mut input = bytes::BytesMut::new();
    loop {
        if let Some(answer) = tether_proto::block::decode_frame(&mut input).unwrap() {
            return answer;
        }
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed instead of answering {frame:?}");
        input.extend_from_slice(&buf[..n]);
    }
}

/// A mounted `lossyfs` (the test FUSE filesystem that forgets unsynced
/// writes at a power cut, and can fail writes); unmounted on drop.
pub struct LossyDisk {
    child: Option<Child>,
    mountpoint: PathBuf,
}

impl LossyDisk {
    /// Mounts `backing` on `mountpoint`; returns once the mount is there.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Self {
        let child = Command::new(tether_bin().with_file_name("lossyfs"))
            .arg(backing)
            .arg(mountpoint)
            .spawn()
            .expect("lossyfs runs (cargo build --workspace --bins builds it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        let wanted = mountpoint.display().to_string();
        while !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some(wanted.as_str()))
        {
            assert!(Instant::now() < deadline, "lossyfs did not mount {wanted}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
        }
    }

    /// The power cut: everything not yet fsynced is gone.
    pub fn cut_power(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-USR1", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mountpoint)
            .status();
    }
}

impl LossyDisk {
    /// Turns the failing disk on or off: while on, writes and fsyncs fail with EIO.
    pub fn toggle_failing(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-USR2", &child.id().to_string()])
                .status();
        }
    }
}

impl Drop for LossyDisk {
    fn drop(&mut self) {
        self.cut_power();
    }
}

impl DevFederation {
    /// Moves node `name`'s pool onto a `lossyfs` (stopping the node,
    /// mounting, starting it again); returns the disk and the node's command line.
    pub fn put_on_lossy_disk(&self, name: &str) -> (LossyDisk, Vec<String>) {
        let data_dir = PathBuf::from(self.node(name)["data_dir"].as_str().unwrap());
        let cmdline = self.kill_node_gracefully(name);
        let backing = self.dir().join(format!("{name}-backing"));
        std::fs::rename(&data_dir, &backing).unwrap();
        std::fs::create_dir(&data_dir).unwrap();
        let disk = LossyDisk::mount(&backing, &data_dir);
        self.start_node(name, &cmdline);
        (disk, cmdline)
    }
}

impl DevFederation {
    /// Where node `name` takes block frames, as `tether node list` says.
    pub fn block_addr(&self, name: &str) -> String {
        let nodes = self.tether_json(&["node", "list"]).unwrap();
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|node| node["name"] == name)
            .unwrap_or_else(|| panic!("node {name} is not listed: {nodes}"))["block_addr"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl DevFederation {
    /// Joins satellite `name` with its `token` as a satellite daemon does (its
    /// own key, a CSR, the token) and saves the credential it gets (tls.crt,
    /// tls.key, ca.crt) in a new directory, for `tether --credentials DIR`.
    pub fn join_satellite(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let identity = Identity::new("central", tether_tls::Role::Satellite, name);
        let request = tether_tls::KeyAndRequest::new(&identity)?;
        let trust = std::fs::read_to_string(self.dir().join("central/control/ca/ca.crt"))?;
        let body =
            serde_json::json!({"name": name, "token": token.trim(), "csr_pem": request.csr_pem});
        let (status, payload) = https_post(
            &self.admin_addr(),
            None,
            &trust,
            "/v1/satellites/join",
            &body.to_string(),
        )?;
        anyhow::ensure!(
            status == 200,
            "join of satellite {name}: {status} {payload}"
        );
        let answer: Value = serde_json::from_str(&payload)?;
        let credentials = tether_tls::Credentials {
            identity,
            chain_pem: answer["chain_pem"].as_str().unwrap_or_default().to_string(),
            key_pem: request.key_pem,
            trust_pem: answer["trust_pem"].as_str().unwrap_or_default().to_string(),
        };
        let dir = self.dir().join("satellites").join(name);
        credentials.save(&dir)?;
        Ok(dir)
    }

    /// `tether ARGS` as the holder of the credential in `credentials`.
    pub fn tether_as(&self, credentials: &Path, args: &[&str]) -> Output {
        let mut all = vec!["--credentials", credentials.to_str().unwrap()];
        all.extend_from_slice(args);
        self.tether(&all)
    }
}

impl DevFederation {
    /// The gateways `dev up` started: (name, endpoint, pid, log).
    pub fn gateways(&self) -> Vec<(String, String, u32, PathBuf)> {
        self.info["clusters"][0]["gateways"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|gateway| {
                (
                    gateway["name"].as_str().unwrap_or_default().to_string(),
                    gateway["endpoint"].as_str().unwrap_or_default().to_string(),
                    gateway["pid"].as_u64().unwrap_or_default() as u32,
                    PathBuf::from(gateway["log"].as_str().unwrap_or_default()),
                )
            })
            .collect()
    }

    /// Every gateway's Prometheus metrics now, one after another.
    pub fn gateway_metrics(&self) -> String {
        self.info["clusters"][0]["gateways"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|gateway| gateway["metrics"].as_str().map(str::to_string))
            .filter_map(|addr| ureq::get(&format!("http://{addr}/metrics")).call().ok())
            .filter_map(|answer| answer.into_string().ok())
            .collect()
    }

    /// Every gateway's log so far, together.
    pub fn gateway_logs(&self) -> String {
        self.gateways()
            .iter()
            .map(|(_, _, _, log)| std::fs::read_to_string(log).unwrap_or_default())
            .collect()
    }

    /// Creates volume `name` (`create_args`: `--size 64MiB`, `--replicas 2`
    /// …), grants it to `satellite`, attaches it from there on a Unix
    /// socket in the federation's directory, and returns its socket and URI.
    pub fn attach_on_satellite(
        &self,
        name: &str,
        create_args: &[&str],
        satellite: &str,
    ) -> anyhow::Result<(PathBuf, String)> {
        let mut create = vec!["volume", "create", name];
        create.extend_from_slice(create_args);
        self.tether_ok(&create)?;
        self.tether_ok(&["grant", "add", satellite, "--volume", name])?;
        let socket = self.dir().join(format!("{name}-on-{satellite}.sock"));
        let endpoint = format!("unix:{}", socket.display());
        let uri = self.tether_ok(&[
            "volume", "attach", name, "--from", satellite, "--nbd", &endpoint,
        ])?;
        Ok((socket, uri.trim().to_string()))
    }

    /// Adds satellite `name`, joins it, and returns its credential directory.
    pub fn satellite(&self, name: &str) -> PathBuf {
        let token = self
            .tether_ok(&["cluster", "add-satellite", name])
            .expect("add-satellite");
        self.join_satellite(name, &token).expect("satellite joins")
    }
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// Every packet on the loopback interface while it runs (an `AF_PACKET`
/// socket, as tcpdump opens; needs root): what crossed between the
/// processes of a dev federation, for tests that look for plaintext.
pub struct LoopbackCapture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl LoopbackCapture {
    pub fn start() -> anyhow::Result<LoopbackCapture> {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket calls with valid arguments; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol as i32) };
        anyhow::ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a socket we just opened and own from here on.
        let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        anyhow::ensure!(index != 0, "no loopback interface");
        // SAFETY: sockaddr_ll is plain data; zeroed then filled.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as i32;
        let buffer: libc::c_int = 64 << 20;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: valid fd, option values of the right sizes.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&buffer as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let bound = libc::bind(
                fd,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            anyhow::ensure!(
                bound == 0,
                "bind to lo: {}",
                std::io::Error::last_os_error()
            );
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let mut captured = Vec::new();
            let mut packet = vec![0u8; 1 << 16];
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: reading into a buffer of the length given.
                let read = unsafe {
                    libc::recv(
                        socket.as_raw_fd(),
                        packet.as_mut_ptr().cast(),
                        packet.len(),
                        0,
                    )
                };
                if read > 0 {
                    captured.extend_from_slice(&packet[..read as usize]);
                }
            }
            captured
        });
        Ok(LoopbackCapture {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns every captured frame's bytes, one after another.
    pub fn finish(mut self) -> Vec<u8> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|thread| thread.join().unwrap_or_default())
            .unwrap_or_default()
    }
}
