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
use crate::federation::{
    ClusterEntry, EtcdEntry, EtcdMemberEntry, Federation, GatewayEntry, NodeEntry, ProcessEntry,
    SatelliteEntry,
};

const CLUSTER: &str = "central";
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
/// it when missing or due for renewal.
fn prepare_trust(dir: &Path) -> anyhow::Result<DevTrust> {
    use tether_tls::{CertificateAuthority, Credentials, Identity, Role};
    let control_dir = dir.join(CLUSTER).join("control");
    let ca = CertificateAuthority::load_or_create(
        &control_dir.join(cluster_registry::security::CA_DIR),
        CLUSTER,
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
        Identity::new(CLUSTER, Role::Admin, "dev-admin"),
        &[],
    )?;
    let nbd_client_dir = dir.join(NBD_CLIENT_CREDENTIALS_DIR);
    issue_if_due(
        &nbd_client_dir,
        Identity::new(CLUSTER, Role::Client, "dev-client"),
        &[],
    )?;
    let etcd_tls_dir = dir.join(CLUSTER).join("etcd-tls");
    issue_if_due(
        &etcd_tls_dir,
        Identity::new(CLUSTER, Role::Store, "etcd"),
        &["127.0.0.1".into(), "localhost".into()],
    )?;
    // Pools, the registry's state, etcd's data and every credential: no
    // client-chosen path (an NBD socket) may land in there.
    tether_common::protected::mark(&admin_dir, "the dev admin's credentials")?;
    tether_common::protected::mark(&nbd_client_dir, "the dev NBD client's credentials")?;
    tether_common::protected::mark(&dir.join(CLUSTER), "a dev cluster's state")?;
    Ok(DevTrust {
        ca_cert: control_dir
            .join(cluster_registry::security::CA_DIR)
            .join("ca.crt"),
        control_dir,
        etcd_tls_dir,
        admin_dir,
    })
}

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
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the tether executable")?;
    let (stdout, stderr) = log_file(log)?;
    Command::new(exe)
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
    let previous_satellites: Vec<SatelliteEntry> = previous
        .as_ref()
        .map(|federation| federation.satellites.clone())
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
            up_embedded(&dir, &options, previous_cluster.clone())
        };
        match started {
            Err(err)
                if previous_cluster.is_none()
                    && attempt < START_ATTEMPTS
                    && is_port_collision(&err) =>
            {
                eprintln!("a port was taken while starting (attempt {attempt}); starting again with new ports");
                let _ = std::fs::remove_dir_all(dir.join(CLUSTER).join("etcd"));
                attempt += 1;
            }
            other => break other?,
        }
    };
    federation.store(&dir)?;
    Ok(federation)
}

fn up_with_etcd(
    dir: &Path,
    options: &UpOptions,
    previous_cluster: Option<ClusterEntry>,
    previous_satellites: &[SatelliteEntry],
) -> anyhow::Result<Federation> {
    let runtime = tokio::runtime::Runtime::new()?;
    let trust = prepare_trust(dir)?;
    let admin_credentials = tether_tls::Credentials::load(&trust.admin_dir)?;
    let etcd_tls = coord_store::etcd_process::EtcdTls {
        cert_file: trust.etcd_tls_dir.join("tls.crt"),
        key_file: trust.etcd_tls_dir.join("tls.key"),
        trusted_ca_file: trust.etcd_tls_dir.join("ca.crt"),
        client: tether_tls::TlsContext::new(&admin_credentials)?,
    };
    // The members as they were (ports, names, data), or new ones.
    let specs: Vec<EtcdMemberSpec> = match previous_cluster.as_ref().and_then(|c| c.etcd.as_ref()) {
        Some(etcd) => etcd.member_specs(),
        None => (0..options.etcd_members.max(1))
            .map(|index| {
                let suffix = if index == 0 {
                    String::new()
                } else {
                    format!("-{}", index + 1)
                };
                EtcdMemberSpec::local(
                    index,
                    dir.join(CLUSTER).join(format!("etcd{suffix}")),
                    dir.join("logs").join(format!("etcd{suffix}.log")),
                    None,
                )
            })
            .collect(),
    };
    // Members still running (a partly running federation) are kept as they are.
    let running: Vec<EtcdMemberEntry> = previous_cluster
        .as_ref()
        .and_then(|cluster| cluster.etcd.as_ref())
        .map(|etcd| etcd.members.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|member| alive(member.pid))
        .collect();
    let missing: Vec<EtcdMemberSpec> = specs
        .iter()
        .filter(|spec| !running.iter().any(|member| member.name == spec.name))
        .cloned()
        .collect();
    let first_log = specs[0].log_path.clone();
    let started = if missing.is_empty() {
        Vec::new()
    } else {
        runtime
            .block_on(EtcdProcess::start_cluster(&missing, Some(etcd_tls)))
            .with_context(|| format!("starting etcd (log: {})", first_log.display()))?
    };
    let mut started_pids = Vec::new();
    let mut members: Vec<EtcdMemberEntry> = started
        .into_iter()
        .zip(&missing)
        .map(|(process, spec)| {
            let endpoint = process.endpoint.clone();
            let pid = process.detach();
            started_pids.push(pid);
            EtcdMemberEntry {
                name: spec.name.clone(),
                endpoint,
                client_port: spec.client_port,
                peer_port: spec.peer_port,
                data_dir: spec.data_dir.clone(),
                log: spec.log_path.clone(),
                pid,
            }
        })
        .chain(running)
        .collect();
    // In the order of the specs, the first member first.
    members.sort_by_key(|member| specs.iter().position(|spec| spec.name == member.name));
    let etcd_entry = EtcdEntry {
        endpoints: members
            .iter()
            .map(|member| member.endpoint.clone())
            .collect(),
        pid: members[0].pid,
        client_port: members[0].client_port,
        peer_port: members[0].peer_port,
        data_dir: members[0].data_dir.clone(),
        log: members[0].log.clone(),
        members,
    };
    let endpoint = etcd_entry.endpoints.join(",");

    let mut children = Vec::new();
    let result = (|| -> anyhow::Result<Federation> {
        let running_registry = previous_cluster
            .as_ref()
            .map(|cluster| cluster.registry.clone())
            .filter(|registry| alive(registry.pid));
        // A process started again keeps its address unless something else
        // took that port meanwhile (an ephemeral port can be).
        let keep = |addr: Option<String>| -> String {
            match addr {
                Some(addr) if running_registry.is_some() || port_free(&addr) => addr,
                _ => format!("127.0.0.1:{}", free_port()),
            }
        };
        let admin_listen = keep(
            previous_cluster
                .as_ref()
                .map(|cluster| cluster.registry.listen.clone()),
        );
        let registry_log = dir.join("logs").join("registry.log");
        let registry_metrics = keep(
            previous_cluster
                .as_ref()
                .and_then(|cluster| cluster.registry.metrics.clone()),
        );
        let registry_entry = match running_registry {
            Some(running) => running,
            None => {
                let registry = spawn_self(
                    &[
                        "daemon".into(),
                        "registry".into(),
                        format!("--cluster={CLUSTER}"),
                        format!("--listen={admin_listen}"),
                        format!("--etcd={endpoint}"),
                        format!("--metrics-addr={registry_metrics}"),
                        format!("--state-dir={}", trust.control_dir.display()),
                        format!(
                            "--cert-lifetime={}",
                            options.cert_lifetime.as_deref().unwrap_or("30d")
                        ),
                        format!(
                            "--replace-after={}",
                            options.replace_after.as_deref().unwrap_or("10m")
                        ),
                    ],
                    &registry_log,
                )?;
                let entry = ProcessEntry {
                    pid: registry.id(),
                    log: registry_log,
                    listen: admin_listen.clone(),
                    metrics: Some(registry_metrics),
                };
                children.push(("registry".to_string(), registry, entry.log.clone()));
                entry
            }
        };
        let admin = format!("https://{admin_listen}");
        let client = wait_registry(&admin, &trust.admin_dir, &mut children)?;

        let node_names: Vec<(String, String)> = match &previous_cluster {
            Some(cluster) => cluster
                .nodes
                .iter()
                .map(|node| (node.name.clone(), node.metrics.clone()))
                .collect(),
            None => (1..=options.nodes)
                .map(|i| (format!("node-{i}"), format!("127.0.0.1:{}", free_port())))
                .collect(),
        };
        let mut nodes = Vec::new();
        for (name, metrics) in node_names {
            let running = previous_cluster
                .as_ref()
                .and_then(|cluster| cluster.nodes.iter().find(|node| node.name == name))
                .filter(|node| alive(node.pid));
            if let Some(running) = running {
                nodes.push(running.clone());
                continue;
            }
            let metrics = if port_free(&metrics) {
                metrics
            } else {
                format!("127.0.0.1:{}", free_port())
            };
            let data_dir = dir.join(CLUSTER).join(&name);
            let log = dir.join("logs").join(format!("{name}.log"));
            let mut args = vec![
                "daemon".into(),
                "node".into(),
                format!("--cluster={CLUSTER}"),
                format!("--name={name}"),
                format!("--data-dir={}", data_dir.display()),
                format!("--etcd={endpoint}"),
                format!("--metrics-addr={metrics}"),
                format!("--label={FAILURE_DOMAIN_LABEL}={}", dev_zone(&name)),
                format!("--registry=https://{admin_listen}"),
                format!("--trust-ca={}", trust.ca_cert.display()),
            ];
            if !has_credentials(&data_dir) {
                let token: tether_proto::admin::JoinTokenResponse = client.post(
                    "/v1/join-tokens",
                    &tether_proto::admin::JoinTokenRequest {
                        node: Some(name.clone()),
                        ttl_seconds: Some(DEV_JOIN_TOKEN_TTL.as_secs()),
                    },
                )?;
                let file = write_join_token(&data_dir, &token.token)?;
                args.push(format!("--join-token-file={}", file.display()));
            }
            if let Some(capacity) = &options.capacity {
                args.push(format!("--capacity={capacity}"));
            }
            if let Some(overprovision) = &options.overprovision {
                args.push(format!("--overprovision={overprovision}"));
            }
            if !options.hash_upkeep {
                args.push("--no-hash-upkeep".into());
            }
            let child = spawn_self(&args, &log)?;
            nodes.push(NodeEntry {
                name: name.clone(),
                pid: child.id(),
                data_dir,
                log: log.clone(),
                metrics,
            });
            children.push((name, child, log));
        }
        wait_ready(&admin, &trust.admin_dir, nodes.len(), &mut children)?;
        let gateways = start_gateways(
            dir,
            options.gateways,
            previous_cluster.as_ref(),
            &endpoint,
            &mut children,
        )?;
        let satellites = start_satellites(
            dir,
            options.satellites,
            previous_satellites,
            &client,
            &admin,
            &trust.ca_cert,
            &gateways,
            &mut children,
        )?;
        Ok(Federation {
            admin,
            mode: "etcd".into(),
            clusters: vec![ClusterEntry {
                name: CLUSTER.into(),
                role: "central".into(),
                etcd: Some(etcd_entry),
                registry: registry_entry,
                nodes,
                gateway: gateways.first().cloned(),
                gateways,
            }],
            satellites,
        })
    })();
    if result.is_err() {
        for (_, child, _) in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in started_pids {
            stop_pid(pid);
        }
    }
    result
}

fn up_embedded(
    dir: &Path,
    options: &UpOptions,
    previous_cluster: Option<ClusterEntry>,
) -> anyhow::Result<Federation> {
    let (admin_listen, metrics, node_names) = match &previous_cluster {
        Some(cluster) => (
            cluster.registry.listen.clone(),
            cluster
                .nodes
                .first()
                .map(|node| node.metrics.clone())
                .unwrap_or_else(|| format!("127.0.0.1:{}", free_port())),
            cluster
                .nodes
                .iter()
                .map(|node| node.name.clone())
                .collect::<Vec<_>>(),
        ),
        None => (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
            (1..=options.nodes).map(|i| format!("node-{i}")).collect(),
        ),
    };
    let trust = prepare_trust(dir)?;
    let log = dir.join("logs").join("federation.log");
    let mut args = vec![
        "dev".into(),
        "serve".into(),
        format!("--dir={}", dir.display()),
        format!("--admin-listen={admin_listen}"),
        format!("--metrics-addr={metrics}"),
        format!("--node-names={}", node_names.join(",")),
    ];
    if let Some(capacity) = &options.capacity {
        args.push(format!("--capacity={capacity}"));
    }
    if !options.hash_upkeep {
        args.push("--no-hash-upkeep".into());
    }
    if let Some(replace_after) = &options.replace_after {
        args.push(format!("--replace-after={replace_after}"));
    }
    if let Some(cert_lifetime) = &options.cert_lifetime {
        args.push(format!("--cert-lifetime={cert_lifetime}"));
    }
    let child = spawn_self(&args, &log)?;
    let pid = child.id();
    let mut children = vec![("federation".to_string(), child, log.clone())];
    let admin = format!("https://{admin_listen}");
    if let Err(err) = wait_ready(&admin, &trust.admin_dir, node_names.len(), &mut children) {
        let _ = children[0].1.kill();
        let _ = children[0].1.wait();
        return Err(err);
    }
    let nodes = node_names
        .iter()
        .map(|name| NodeEntry {
            name: name.clone(),
            pid,
            data_dir: dir.join(CLUSTER).join(name),
            log: log.clone(),
            metrics: metrics.clone(),
        })
        .collect();
    Ok(Federation {
        admin,
        mode: "embedded".into(),
        clusters: vec![ClusterEntry {
            name: CLUSTER.into(),
            role: "central".into(),
            etcd: None,
            registry: ProcessEntry {
                pid,
                log,
                listen: admin_listen,
                metrics: Some(metrics.clone()),
            },
            nodes,
            gateway: None,
            gateways: vec![],
        }],
        satellites: vec![],
    })
}

/// Waits until the admin API answers; fails fast, naming the log, if a
/// process exits first. Returns a client of it.
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

/// Issues gateway `name` its credential (if missing or due), valid for the
/// loopback address satellites dial.
fn gateway_credentials(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    use tether_tls::{CertificateAuthority, Credentials, Identity, Role};
    let ca = CertificateAuthority::load_or_create(
        &dir.join(CLUSTER)
            .join("control")
            .join(cluster_registry::security::CA_DIR),
        CLUSTER,
    )?;
    let tls_dir = dir.join(CLUSTER).join(name).join("tls");
    let identity = Identity::new(CLUSTER, Role::Gateway, name);
    if !Credentials::load(&tls_dir)
        .is_ok_and(|credentials| still_good(&credentials, &identity, &ca))
    {
        ca.issue_credentials(
            &identity,
            &["127.0.0.1".into(), "localhost".into()],
            DEV_CERT_LIFETIME,
        )?
        .save(&tls_dir)?;
    }
    tether_common::protected::mark(&dir.join(CLUSTER).join(name), "a dev gateway's state")?;
    Ok(tls_dir)
}

/// True if nothing has UDP `addr` bound now.
fn udp_port_free(addr: &str) -> bool {
    std::net::UdpSocket::bind(addr).is_ok()
}

/// Starts the gateways not running yet (each keeps its address if it is
/// still free) and waits until each serves.
fn start_gateways(
    dir: &Path,
    count: usize,
    previous: Option<&ClusterEntry>,
    etcd: &str,
    children: &mut Vec<(String, Child, PathBuf)>,
) -> anyhow::Result<Vec<GatewayEntry>> {
    let names: Vec<String> = match previous.filter(|cluster| !cluster.gateways.is_empty()) {
        Some(cluster) => cluster.gateways.iter().map(|g| g.name.clone()).collect(),
        None => (1..=count).map(|i| format!("gateway-{i}")).collect(),
    };
    let mut gateways = Vec::new();
    let mut waiting = Vec::new();
    for name in names {
        let before = previous.and_then(|cluster| cluster.gateways.iter().find(|g| g.name == name));
        if let Some(running) = before.filter(|gateway| alive(gateway.pid)) {
            gateways.push(running.clone());
            continue;
        }
        let tls_dir = gateway_credentials(dir, &name)?;
        let endpoint = match before {
            Some(gateway) if udp_port_free(&gateway.endpoint) => gateway.endpoint.clone(),
            _ => loop {
                let candidate = format!("127.0.0.1:{}", free_port());
                if udp_port_free(&candidate) {
                    break candidate;
                }
            },
        };
        let metrics = match before.and_then(|gateway| gateway.metrics.clone()) {
            Some(metrics) if port_free(&metrics) => metrics,
            _ => format!("127.0.0.1:{}", free_port()),
        };
        let log = dir.join("logs").join(format!("{name}.log"));
        let ready_file = dir.join(CLUSTER).join(&name).join("ready");
        let _ = std::fs::remove_file(&ready_file);
        let child = spawn_self(
            &[
                "daemon".into(),
                "gateway".into(),
                format!("--cluster={CLUSTER}"),
                format!("--name={name}"),
                format!("--listen={endpoint}"),
                format!("--etcd={etcd}"),
                format!("--tls-dir={}", tls_dir.display()),
                format!("--metrics-addr={metrics}"),
                format!("--ready-file={}", ready_file.display()),
            ],
            &log,
        )?;
        gateways.push(GatewayEntry {
            endpoint,
            pid: child.id(),
            name: name.clone(),
            log: log.clone(),
            metrics: Some(metrics),
        });
        waiting.push(ready_file);
        children.push((name, child, log));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for ready_file in waiting {
        while !ready_file.exists() {
            check_children(children)?;
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "a gateway did not start within 60 s (see {})",
                dir.join("logs").display()
            );
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }
    Ok(gateways)
}

/// Starts the satellites not running yet: each is added (a one-time
/// token) on its first start, joins with it, and is waited for until the
/// registry lists it joined.
#[allow(clippy::too_many_arguments)]
fn start_satellites(
    dir: &Path,
    count: usize,
    previous: &[SatelliteEntry],
    client: &AdminClient,
    admin: &str,
    ca_cert: &Path,
    gateways: &[GatewayEntry],
    children: &mut Vec<(String, Child, PathBuf)>,
) -> anyhow::Result<Vec<SatelliteEntry>> {
    let names: Vec<String> = if previous.is_empty() {
        (1..=count).map(|i| format!("satellite-{i}")).collect()
    } else {
        previous
            .iter()
            .map(|satellite| satellite.name.clone())
            .collect()
    };
    let endpoints: Vec<String> = gateways.iter().map(|g| g.endpoint.clone()).collect();
    let mut satellites = Vec::new();
    for name in names {
        if let Some(running) = previous.iter().find(|s| s.name == name && alive(s.pid)) {
            satellites.push(running.clone());
            continue;
        }
        anyhow::ensure!(
            !endpoints.is_empty(),
            "satellites need gateways (--gateways 1 or more)"
        );
        let state_dir = dir.join("satellites").join(&name);
        std::fs::create_dir_all(&state_dir)?;
        let log = dir.join("logs").join(format!("{name}.log"));
        let mut args = vec![
            "daemon".into(),
            "satellite".into(),
            format!("--cluster={CLUSTER}"),
            format!("--name={name}"),
            format!("--registry={admin}"),
            format!("--gateway={}", endpoints.join(",")),
            format!("--state-dir={}", state_dir.display()),
            format!("--trust-ca={}", ca_cert.display()),
        ];
        if !state_dir.join("tls").join("tls.crt").exists() {
            let added: tether_proto::federation::AddSatelliteResponse = client.post(
                "/v1/clusters",
                &tether_proto::federation::AddSatelliteRequest {
                    name: name.clone(),
                    ttl_seconds: Some(DEV_JOIN_TOKEN_TTL.as_secs()),
                },
            )?;
            let file = write_join_token(&state_dir, &added.token)?;
            args.push(format!("--join-token-file={}", file.display()));
        }
        let child = spawn_self(&args, &log)?;
        satellites.push(SatelliteEntry {
            name: name.clone(),
            pid: child.id(),
            log: log.clone(),
        });
        children.push((name, child, log));
    }
    let started = Instant::now();
    loop {
        check_children(children)?;
        let clusters: Vec<tether_proto::federation::ClusterView> = client.get("/v1/clusters")?;
        let joined = satellites.iter().all(|satellite| {
            clusters
                .iter()
                .any(|cluster| cluster.name == satellite.name && cluster.state == "joined")
        });
        if joined {
            return Ok(satellites);
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("a satellite did not join within {READY_TIMEOUT:?}; see its log");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
                || volume
                    .attachments
                    .iter()
                    .all(|attachment| attachment.uri.starts_with("nbd"))
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
    let running = pids.iter().filter(|pid| alive(**pid)).count();
    for pid in pids {
        stop_pid(pid);
    }
    Ok(running)
}

pub struct ServeOptions {
    pub dir: PathBuf,
    pub admin_listen: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub node_names: Vec<String>,
    pub capacity: Option<String>,
    pub hash_upkeep: bool,
    pub replace_after: std::time::Duration,
    pub cert_lifetime: std::time::Duration,
}

/// The one-process federation: embedded store, registry and every node.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let store: Arc<dyn CoordStore> =
        Arc::new(EmbeddedStore::open(&options.dir.join("store.json"))?);
    let trust = prepare_trust(&options.dir)?;
    let trust_pem = std::fs::read_to_string(&trust.ca_cert)?;
    tether_common::telemetry::serve_metrics(options.metrics_addr)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // A node or the registry that fails stops the whole process, so
    // `dev up` (and whoever watches the process) sees it.
    let (failed, mut failures) = tokio::sync::mpsc::channel::<anyhow::Error>(4);
    let mut tasks = Vec::new();
    for name in &options.node_names {
        let data_dir = options.dir.join(CLUSTER).join(name);
        std::fs::create_dir_all(&data_dir)?;
        let capacity_bytes = match &options.capacity {
            Some(capacity) => tether_common::size::parse_size(capacity)?,
            None => storage_node::config::filesystem_size(&data_dir)?,
        };
        let data_dir_tls = data_dir.join("tls");
        let join_token = if has_credentials(&data_dir) {
            None
        } else {
            let (token, _) = cluster_registry::join_tokens::mint(
                store.as_ref(),
                CLUSTER,
                Some(name),
                DEV_JOIN_TOKEN_TTL,
            )
            .await?;
            Some(token)
        };
        let config = NodeConfig {
            cluster: CLUSTER.into(),
            node: name.clone(),
            data_dir,
            store: StoreConfig::Shared(store.clone()),
            capacity_bytes,
            overprovision_percent: 100,
            metrics_addr: Some(options.metrics_addr),
            io_uring: true,
            hash_upkeep: options.hash_upkeep,
            lease_ttl: DEFAULT_LEASE_TTL,
            labels: [(FAILURE_DOMAIN_LABEL.to_string(), dev_zone(name))].into(),
            block_listen: "127.0.0.1:0".into(),
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
            sync_rate_limit: 0,
            control_listen: "127.0.0.1:0".into(),
            block_advertise: None,
            security: storage_node::security::NodeSecurityConfig {
                tls_dir: data_dir_tls,
                registry: Some(format!("https://{}", options.admin_listen)),
                join_token,
                trust_pem: Some(trust_pem.clone()),
                plaintext_block: false,
                addresses: vec!["127.0.0.1".into()],
            },
        };
        let (mut stopped, failed) = (stopped.clone(), failed.clone());
        let node = name.clone();
        tasks.push(tokio::spawn(async move {
            let stop_requested = async move {
                let _ = stopped.changed().await;
            };
            if let Err(err) = storage_node::run(config, stop_requested).await {
                let _ = failed
                    .send(anyhow::Error::from(err).context(format!("node {node}")))
                    .await;
            }
        }));
    }
    let registry_config = cluster_registry::RegistryConfig {
        cluster: CLUSTER.into(),
        listen: options.admin_listen,
        store: cluster_registry::RegistryStore::Shared(store.clone()),
        replace_after: options.replace_after,
        security: cluster_registry::security::SecurityConfig {
            state_dir: trust.control_dir.clone(),
            operator_ca: None,
            admin_names: vec!["localhost".into(), "127.0.0.1".into()],
            cert_lifetime: options.cert_lifetime,
        },
    };
    let mut registry_stopped = stopped.clone();
    tasks.push(tokio::spawn(async move {
        let stop_requested = async move {
            let _ = registry_stopped.changed().await;
        };
        if let Err(err) = cluster_registry::run(registry_config, |_| {}, stop_requested).await {
            let _ = failed
                .send(anyhow::Error::from(err).context("registry"))
                .await;
        }
    }));
    let failure = tokio::select! {
        _ = tether_common::shutdown_signal() => None,
        Some(err) = failures.recv() => Some(err),
    };
    if let Some(err) = &failure {
        tracing::error!(error = %format!("{err:#}"), "stopping the federation");
    }
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}
