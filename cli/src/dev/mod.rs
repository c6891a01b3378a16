//! `tether dev up/down/serve`: a whole local cluster in the background.
//!
//! With `etcd` on PATH: a local etcd, one registry process and one process
//! per node, each with its own pool directory. Without it (or with
//! `--embedded`): one process (`tether dev serve`) running the registry and
//! every node on the embedded store, persisted in `DIR/store.json`.
//! Either way `DIR/federation.json` records what runs where, and `dev up` on
//! a directory that holds a stopped federation brings the same one back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use coord_store::etcd_process::{find_etcd, free_port, EtcdMemberSpec, EtcdProcess};
use coord_store::{CoordStore, EmbeddedStore};
use storage_node::config::{NodeConfig, StoreConfig, DEFAULT_LEASE_TTL, DEFAULT_REPLICA_TIMEOUT};
use tether_proto::admin::NodeView;

use cluster_registry::placement::FAILURE_DOMAIN_LABEL;

use crate::client::AdminClient;
mod embedded;
mod etcd_mode;
mod federation_daemons;
mod netns;

use embedded::up_embedded;
pub use embedded::{serve, ServeOptions};
use etcd_mode::up_with_etcd;

use crate::federation::{
    ClusterEntry, EtcdEntry, EtcdMemberEntry, Federation, GatewayEntry, NodeEntry, ProcessEntry,
    SatelliteEntry,
};

/// The dev federation's (first) cluster; `--dr` adds the peer [`DR_PEER`].
const CLUSTER: &str = "central";
/// The DR peer `dev up --dr` starts beside it, in `DIR/dr`.
pub const DR_PEER: &str = "dr";
/// `DIR/admin`: the CLI's admin credential (tls.crt, tls.key, ca.crt).
pub const ADMIN_CREDENTIALS_DIR: &str = "admin";
/// A `client` credential for NBD over TLS, in the layout qemu and libnbd
/// read (`tls-certificates=DIR/nbd-client`).
pub const NBD_CLIENT_CREDENTIALS_DIR: &str = "nbd-client";
/// How long the dev admin's and etcd's certificates last; `dev up` renews them when due.
const DEV_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Paths of the dev cluster's trust, all under DIR.
struct DevTrust {
    /// The registry's state: `ca/`.
    control_dir: PathBuf,
    ca_cert: PathBuf,
    /// etcd's certificate, key and CA.
    etcd_tls_dir: PathBuf,
    admin_dir: PathBuf,
}

/// Makes (or reloads) the cluster's CA and join token the registry will
/// use, and issues the CLI's admin credential and etcd's certificate from
/// it when missing or due for renewal. etcd's certificate names
/// `control_host` too, the address it listens on.
fn prepare_trust(dir: &Path, cluster: &str, control_host: &str) -> anyhow::Result<DevTrust> {
    use tether_tls::{CertificateAuthority, Credentials, Identity, Role};
    let control_dir = dir.join(cluster).join("control");
    let ca = CertificateAuthority::load_or_create(
        &control_dir.join(cluster_registry::security::CA_DIR),
        cluster,
    )?;
    // A client's credential is in the files NBD clients read; the others in
    // Tether's own layout.
    let issue_if_due =
        |target: &Path, identity: Identity, names: &[String]| -> anyhow::Result<()> {
            let for_nbd = identity.role == Role::Client;
            let loaded = if for_nbd {
                Credentials::load_nbd_client(target)
            } else {
                Credentials::load(target)
            };
            if !loaded.is_ok_and(|credentials| still_good(&credentials, &identity, &ca)) {
                let issued = ca.issue_credentials(&identity, names, DEV_CERT_LIFETIME)?;
                if for_nbd {
                    issued.save_for_nbd_client(target)?;
                } else {
                    issued.save(target)?;
                }
            }
            Ok(())
        };
    let admin_dir = dir.join(ADMIN_CREDENTIALS_DIR);
    issue_if_due(
        &admin_dir,
        Identity::new(cluster, Role::Admin, "dev-admin"),
        &[],
    )?;
    let nbd_client_dir = dir.join(NBD_CLIENT_CREDENTIALS_DIR);
    issue_if_due(
        &nbd_client_dir,
        Identity::new(cluster, Role::Client, "dev-client"),
        &[],
    )?;
    let etcd_tls_dir = dir.join(cluster).join("etcd-tls");
    issue_if_due(
        &etcd_tls_dir,
        Identity::new(cluster, Role::Store, "etcd"),
        &host_names(control_host),
    )?;
    // Pools, the registry's state, etcd's data and every credential: no
    // client-chosen path (an NBD socket) may land in there.
    tether_common::protected::mark(&admin_dir, "the dev admin's credentials")?;
    tether_common::protected::mark(&nbd_client_dir, "the dev NBD client's credentials")?;
    tether_common::protected::mark(&dir.join(cluster), "a dev cluster's state")?;
    Ok(DevTrust {
        ca_cert: control_dir
            .join(cluster_registry::security::CA_DIR)
            .join("ca.crt"),
        control_dir,
        etcd_tls_dir,
        admin_dir,
    })
}

/// The names a dev server's certificate carries: loopback, and the
/// address it listens on (`--netns`: its bridge's).
fn host_names(host: &str) -> Vec<String> {
    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    if !names.iter().any(|name| name == host) {
        names.push(host.to_string());
    }
    names
}

/// Where a cluster's etcd, registry and gateways listen without `--netns`.
const LOOPBACK: &str = "127.0.0.1";

/// How long the join token `dev up` mints for a node without a certificate lives.
const DEV_JOIN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// True if the node whose pool is `data_dir` has its certificate already
/// (it restarts without a join token).
fn has_credentials(data_dir: &Path) -> bool {
    tether_tls::Credentials::load(&data_dir.join("tls")).is_ok()
}

/// Writes a one-time join token for a node to `DATA_DIR/join-token` (0600).
fn write_join_token(data_dir: &Path, token: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("join-token");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    Ok(path)
}

/// Each dev node is its own failure domain: `node-2` is in `zone=zone-2`.
fn dev_zone(node: &str) -> String {
    format!("zone-{}", node.trim_start_matches("node-"))
}
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Start-up attempts of a new federation when a chosen port turns out taken.
const START_ATTEMPTS: usize = 3;

fn is_port_collision(err: &anyhow::Error) -> bool {
    format!("{err:#}")
        .to_ascii_lowercase()
        .contains("address already in use")
}

pub struct UpOptions {
    pub dir: PathBuf,
    pub nodes: usize,
    pub embedded: bool,
    pub capacity: Option<String>,
    pub hash_upkeep: bool,
    /// The registry's `--replace-after` (default: its own).
    pub replace_after: Option<String>,
    /// The registry's `--cert-lifetime` (default: its own, 30 days).
    pub cert_lifetime: Option<String>,
    /// Members of the local etcd cluster (a new federation only).
    pub etcd_members: usize,
    /// Each node's `--overprovision` (default: its own, 100%).
    pub overprovision: Option<String>,
    /// Federation gateways to run (etcd mode).
    pub gateways: usize,
    /// Satellites to run (etcd mode), each with its own state directory.
    pub satellites: usize,
    /// The cluster's name.
    pub cluster: String,
    /// Start a DR peer cluster beside it too (etcd mode), in `DIR/dr`.
    pub dr: bool,
    /// Each node and satellite in a network namespace of its own (etcd
    /// mode, root; a new federation only: one brought back keeps its way).
    pub netns: bool,
}

/// True if nothing listens on `addr` now (it can be bound).
fn port_free(addr: &str) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

/// True if `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log {}", path.display()))?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

/// Starts `tether ARGS` in the background, logging to `log`, in its own
/// process group (a Ctrl-C aimed at this CLI does not reach it).
fn spawn_self(args: &[String], log: &Path) -> anyhow::Result<Child> {
    spawn_self_in(None, args, log)
}

/// [`spawn_self`] inside network namespace `netns` when given (`ip netns
/// exec` execs tether: the child's pid is tether's).
fn spawn_self_in(netns: Option<&str>, args: &[String], log: &Path) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the tether executable")?;
    let (stdout, stderr) = log_file(log)?;
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns]).arg(exe);
            command
        }
        None => Command::new(exe),
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting tether {}", args.join(" ")))
}

/// Brings the federation in `options.dir` up (new, or the stopped one there).
pub fn up(options: UpOptions) -> anyhow::Result<Federation> {
    let dir = absolute(&options.dir)?;
    let previous = Federation::load(&dir)?;
    if let Some(previous) = &previous {
        let running: Vec<u32> = previous
            .pids_in_stop_order()
            .into_iter()
            .filter(|pid| alive(*pid))
            .collect();
        if !running.is_empty() {
            if running.len() == previous.pids_in_stop_order().len() {
                println!(
                    "federation in {} is already running; admin API at {}",
                    dir.display(),
                    previous.admin
                );
                return Ok(previous.clone());
            }
            // Partly running (a node was killed): start what is missing,
            // and leave what runs alone, so its clients carry on.
            eprintln!(
                "federation in {} is partly running ({} of {} processes); starting the missing ones",
                dir.display(),
                running.len(),
                previous.pids_in_stop_order().len()
            );
        }
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let use_etcd = match &previous {
        Some(previous) => {
            if options.embedded && previous.mode == "etcd" {
                eprintln!(
                    "note: the federation in {} was created with etcd and comes back with etcd; --embedded applies only to a new directory",
                    dir.display()
                );
            }
            previous.mode == "etcd"
        }
        None => !options.embedded && find_etcd().is_some(),
    };
    if use_etcd && find_etcd().is_none() {
        bail!("this federation was created with etcd, and no `etcd` is on PATH now (Debian: apt-get install etcd-server)");
    }
    anyhow::ensure!(
        !options.netns || use_etcd,
        "--netns needs etcd mode (a host per process; the embedded federation is one process)"
    );
    let previous_satellites: Vec<SatelliteEntry> = previous
        .as_ref()
        .map(|federation| federation.satellites.clone())
        .unwrap_or_default();
    let previous_peers: Vec<crate::federation::PeerEntry> = previous
        .as_ref()
        .map(|federation| federation.peers.clone())
        .unwrap_or_default();
    let previous_cluster = previous.and_then(|federation| federation.clusters.into_iter().next());
    // A new federation picks free ports, and a port free a moment ago can be
    // taken before the child binds it (other federations starting at once):
    // then start again with new ports. A federation brought back keeps its ports.
    let mut attempt = 1;
    let federation = loop {
        let started = if use_etcd {
            up_with_etcd(
                &dir,
                &options,
                previous_cluster.clone(),
                &previous_satellites,
            )
        } else {
            up_embedded(
                &dir,
                &options,
                previous_cluster.clone(),
                &previous_satellites,
            )
        };
        match started {
            Err(err)
                if previous_cluster.is_none()
                    && attempt < START_ATTEMPTS
                    && is_port_collision(&err) =>
            {
                eprintln!("a port was taken while starting (attempt {attempt}); starting again with new ports");
                let _ = std::fs::remove_dir_all(dir.join(&options.cluster).join("etcd"));
                attempt += 1;
            }
            other => break other?,
        }
    };
    let mut federation = federation;
    // The DR peer: asked for now, or started before and brought back.
    let peer_wanted = options.dr || previous_peers.iter().any(|peer| peer.name == DR_PEER);
    if peer_wanted {
        anyhow::ensure!(
            use_etcd,
            "--dr needs etcd mode (a DR peer is its own cluster with its own etcd)"
        );
        let peer_dir = dir.join(DR_PEER);
        up(UpOptions {
            dir: peer_dir.clone(),
            cluster: DR_PEER.into(),
            dr: false,
            satellites: 0,
            embedded: false,
            capacity: options.capacity.clone(),
            replace_after: options.replace_after.clone(),
            cert_lifetime: options.cert_lifetime.clone(),
            overprovision: options.overprovision.clone(),
            ..options
        })
        .context("starting the DR peer cluster")?;
        federation.peers = vec![crate::federation::PeerEntry {
            name: DR_PEER.into(),
            dir: peer_dir,
        }];
    }
    federation.store(&dir)?;
    Ok(federation)
}

/// Waits until the admin API answers; fails fast, naming the log, if a
/// process exits first. Returns a client of it.
fn wait_registry(
    admin: &str,
    credentials: &Path,
    children: &mut [(String, Child, PathBuf)],
) -> anyhow::Result<AdminClient> {
    let client = AdminClient::new(admin, Some(credentials))?;
    let started = Instant::now();
    loop {
        check_children(children)?;
        if client.get::<serde_json::Value>("/v1/health").is_ok() {
            return Ok(client);
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("the registry did not answer within {READY_TIMEOUT:?}; see its log");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fails, naming the log and its last line, if a child has exited.
fn check_children(children: &mut [(String, Child, PathBuf)]) -> anyhow::Result<()> {
    for (name, child, log) in children.iter_mut() {
        if let Some(status) = child.try_wait()? {
            let log_text = std::fs::read_to_string(&*log).unwrap_or_default();
            let last = log_text
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("");
            bail!(
                "{name} exited with {status} during start-up: {} (log: {})",
                last.trim_start_matches("error: "),
                log.display()
            );
        }
    }
    Ok(())
}

/// Waits until the admin API answers and lists `n_nodes` nodes; fails fast,
/// naming the log, if a process exits first.
fn wait_ready(
    admin: &str,
    credentials: &Path,
    n_nodes: usize,
    children: &mut [(String, Child, PathBuf)],
) -> anyhow::Result<()> {
    let client = AdminClient::new(admin, Some(credentials))?;
    let started = Instant::now();
    loop {
        check_children(children)?;
        if let Ok(nodes) = client.get::<Vec<NodeView>>("/v1/nodes") {
            if nodes.iter().filter(|node| node.state == "up").count() >= n_nodes
                && attachments_served(&client)
            {
                return Ok(());
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "the federation did not come up within {READY_TIMEOUT:?}; see the logs in {}",
                children[0].2.parent().unwrap().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True once every attachment that can be served again by itself is served
/// (an encrypted volume's waits for its key) or has failed with an error,
/// so `dev up` returns with clients able to connect.
fn attachments_served(client: &AdminClient) -> bool {
    let Ok(volumes) = client.get::<Vec<tether_proto::admin::VolumeView>>("/v1/volumes") else {
        return false;
    };
    volumes
        .iter()
        .filter(|volume| volume.encryption.is_none())
        .all(|volume| {
            !volume.errors.is_empty()
                || volume.attachments.iter().all(|attachment| {
                    // A CSI staging is its node plugin's to serve again.
                    attachment.uri.starts_with("nbd")
                        || tether_proto::federation::csi_staging_node(&attachment.uri).is_some()
                })
        })
}

/// SIGTERM, then SIGKILL if the process has not exited after 20 s.
fn stop_pid(pid: u32) {
    if !alive(pid) {
        return;
    }
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        eprintln!("process {pid} did not stop within 20 s; killing it");
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        // Returns only once it is gone, so what it held (ports, files) is free.
        while alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn down(dir: &Path) -> anyhow::Result<usize> {
    let Some(federation) = Federation::load(dir)? else {
        bail!("no federation in {} (no federation.json)", dir.display());
    };
    let pids = federation.pids_in_stop_order();
    let mut running = pids.iter().filter(|pid| alive(**pid)).count();
    take_down_csi_stagings(dir);
    for pid in pids {
        stop_pid(pid);
    }
    // The hosts' namespaces and the bridge go too (`dev up` makes them again).
    for cluster in &federation.clusters {
        if let Some(network) = &cluster.network {
            let hosts: Vec<&crate::federation::HostEntry> = cluster
                .nodes
                .iter()
                .filter_map(|node| node.host.as_ref())
                .chain(federation.satellites.iter().filter_map(|s| s.host.as_ref()))
                .collect();
            netns::remove(network, &hosts);
        }
    }
    for peer in &federation.peers {
        running += down(&peer.dir).with_context(|| format!("stopping DR peer {}", peer.name))?;
    }
    Ok(running)
}

/// Volumes the satellites' CSI node plugins staged outlive the plugins
/// (their volume hosts run apart): take them down first, while the
/// gateways still answer their last flush.
fn take_down_csi_stagings(dir: &Path) {
    let Ok(satellites) = std::fs::read_dir(dir.join("satellites")) else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    for satellite in satellites.flatten() {
        let node_dir = satellite.path().join("csi-node");
        let socket = satellite.path().join("csi.sock");
        runtime.block_on(unstage_through(&socket, &node_dir));
        // What the plugin could not take down, taken down here.
        for problem in runtime.block_on(satellite_csi::csi::node::teardown(&node_dir)) {
            eprintln!("tearing down CSI stagings: {problem}");
        }
    }
}

/// Unpublishes and unstages what the node plugin on `socket` staged, as
/// kubelet would (the registry forgets the stagings too).
async fn unstage_through(socket: &Path, node_dir: &Path) {
    use satellite_csi::csi::pb;
    let staged = satellite_csi::csi::node::records::Records::new(node_dir)
        .list()
        .unwrap_or_default();
    if staged.is_empty() {
        return;
    }
    let Ok(channel) = satellite_csi::csi::connect(socket).await else {
        return;
    };
    let mut node = pb::node_client::NodeClient::new(channel);
    for record in staged {
        for target in record.published.keys() {
            let _ = node
                .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                    volume_id: record.volume_id.clone(),
                    target_path: target.display().to_string(),
                })
                .await;
        }
        if let Err(status) = node
            .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: record.volume_id.clone(),
                staging_target_path: record.staging_path.display().to_string(),
            })
            .await
        {
            eprintln!(
                "unstaging {}: {:?}: {}",
                record.volume_id,
                status.code(),
                status.message()
            );
        }
    }
}

/// A credential `dev up` may keep: it names `identity`, comes from `ca`,
/// and is not due for renewal.
fn still_good(
    credentials: &tether_tls::Credentials,
    identity: &tether_tls::Identity,
    ca: &tether_tls::CertificateAuthority,
) -> bool {
    credentials.identity == *identity
        && credentials.trust_pem == ca.trust_pem()
        && !credentials
            .renewal_due(std::time::SystemTime::now())
            .unwrap_or(true)
}
