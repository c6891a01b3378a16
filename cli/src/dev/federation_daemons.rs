//! The federation's daemons under `dev up`: gateways (credentials issued
//! from the dev CA, QUIC endpoints on loopback) and satellites (added with a
//! one-time token, joined, each with its own state directory).

use super::*;
use crate::federation::NetworkEntry;

/// Issues gateway `name` its credential (if missing or due), valid for
/// `host`, the address satellites dial.
pub(super) fn gateway_credentials(
    dir: &Path,
    cluster: &str,
    name: &str,
    host: &str,
) -> anyhow::Result<PathBuf> {
    let tls_dir = dir.join(cluster).join(name).join("tls");
    dev_credentials(
        dir,
        cluster,
        tether_tls::Role::Gateway,
        name,
        &tls_dir,
        host,
    )?;
    tether_common::protected::mark(&dir.join(cluster).join(name), "a dev gateway's state")?;
    Ok(tls_dir)
}

/// Issues `name` a credential of `role` from the dev CA into `tls_dir`
/// (if missing or due), naming `host` too: gateways', and nodes' `dr-peer`
/// credentials.
pub(super) fn dev_credentials(
    dir: &Path,
    cluster: &str,
    role: tether_tls::Role,
    name: &str,
    tls_dir: &Path,
    host: &str,
) -> anyhow::Result<()> {
    use tether_tls::{CertificateAuthority, Credentials, Identity};
    let ca = CertificateAuthority::load_or_create(
        &dir.join(cluster)
            .join("control")
            .join(cluster_registry::security::CA_DIR),
        cluster,
    )?;
    let identity = Identity::new(cluster, role, name);
    if !Credentials::load(tls_dir).is_ok_and(|credentials| still_good(&credentials, &identity, &ca))
    {
        ca.issue_credentials(&identity, &host_names(host), DEV_CERT_LIFETIME)?
            .save(tls_dir)?;
    }
    Ok(())
}

/// True if nothing has UDP `addr` bound now.
pub(super) fn udp_port_free(addr: &str) -> bool {
    std::net::UdpSocket::bind(addr).is_ok()
}

/// The gateways of a federation: those it had (by name), else
/// `gateway-1`..`gateway-N`.
pub(super) fn gateway_names(count: usize, previous: Option<&ClusterEntry>) -> Vec<String> {
    match previous.filter(|cluster| !cluster.gateways.is_empty()) {
        Some(cluster) => cluster.gateways.iter().map(|g| g.name.clone()).collect(),
        None => (1..=count).map(|i| format!("gateway-{i}")).collect(),
    }
}

/// A gateway's QUIC endpoint: the one it had if still free, else a new one on `host`.
pub(super) fn gateway_endpoint(before: Option<&GatewayEntry>, host: &str) -> String {
    match before {
        Some(gateway) if udp_port_free(&gateway.endpoint) => gateway.endpoint.clone(),
        _ => loop {
            let candidate = format!("{host}:{}", free_port());
            if udp_port_free(&candidate) {
                break candidate;
            }
        },
    }
}

/// Waits until each of `files` exists (a daemon's ready file), failing
/// fast if a child process exits first.
pub(super) fn wait_ready_files(
    files: &[PathBuf],
    what: &str,
    dir: &Path,
    children: &mut [(String, Child, PathBuf)],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for file in files {
        while !file.exists() {
            check_children(children)?;
            anyhow::ensure!(
                Instant::now() < deadline,
                "{what} did not start within {READY_TIMEOUT:?} (see {})",
                dir.join("logs").display()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    Ok(())
}

/// The satellites of a federation: those it had, else `satellite-1`..`satellite-N`.
pub(super) fn satellite_names(count: usize, previous: &[SatelliteEntry]) -> Vec<String> {
    if previous.is_empty() {
        (1..=count).map(|i| format!("satellite-{i}")).collect()
    } else {
        previous
            .iter()
            .map(|satellite| satellite.name.clone())
            .collect()
    }
}

/// A new satellite's one-time token in its state directory (none when it
/// already holds a credential).
pub(super) fn satellite_join_token(
    client: &AdminClient,
    name: &str,
    state_dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    if state_dir.join("tls").join("tls.crt").exists() {
        return Ok(None);
    }
    let added: tether_proto::federation::AddSatelliteResponse = client.post(
        "/v1/clusters",
        &tether_proto::federation::AddSatelliteRequest {
            name: name.to_string(),
            ttl_seconds: Some(DEV_JOIN_TOKEN_TTL.as_secs()),
        },
    )?;
    Ok(Some(write_join_token(state_dir, &added.token)?))
}

/// Waits until the registry lists every one of `satellites` joined.
pub(super) fn wait_joined(
    client: &AdminClient,
    satellites: &[SatelliteEntry],
    children: &mut [(String, Child, PathBuf)],
) -> anyhow::Result<()> {
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
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("a satellite did not join within {READY_TIMEOUT:?}; see its log");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where a cluster's control plane is, for the gateways `dev up` starts.
pub(super) struct ControlPlane<'a> {
    /// etcd's endpoints, comma-separated.
    pub etcd: &'a str,
    /// The registry's admin API, `host:port`.
    pub admin: &'a str,
    /// The address the gateways listen on (loopback, or the cluster's bridge).
    pub host: &'a str,
}

/// Starts the gateways not running yet (each keeps its address if it is
/// still free) and waits until each serves.
pub(super) fn start_gateways(
    dir: &Path,
    cluster: &str,
    count: usize,
    previous: Option<&ClusterEntry>,
    control: &ControlPlane,
    children: &mut Vec<(String, Child, PathBuf)>,
) -> anyhow::Result<Vec<GatewayEntry>> {
    let ControlPlane { etcd, admin, host } = *control;
    let names = gateway_names(count, previous);
    let mut gateways = Vec::new();
    let mut waiting = Vec::new();
    for name in names {
        let before = previous.and_then(|cluster| cluster.gateways.iter().find(|g| g.name == name));
        if let Some(running) = before.filter(|gateway| alive(gateway.pid)) {
            gateways.push(running.clone());
            continue;
        }
        let tls_dir = gateway_credentials(dir, cluster, &name, host)?;
        let endpoint = gateway_endpoint(before, host);
        let metrics = match before.and_then(|gateway| gateway.metrics.clone()) {
            Some(metrics) if port_free(&metrics) => metrics,
            _ => format!("127.0.0.1:{}", free_port()),
        };
        let log = dir.join("logs").join(format!("{name}.log"));
        let ready_file = dir.join(cluster).join(&name).join("ready");
        let _ = std::fs::remove_file(&ready_file);
        let child = spawn_self(
            &[
                "daemon".into(),
                "gateway".into(),
                format!("--cluster={cluster}"),
                format!("--name={name}"),
                format!("--listen={endpoint}"),
                format!("--etcd={etcd}"),
                format!("--tls-dir={}", tls_dir.display()),
                format!("--metrics-addr={metrics}"),
                format!("--registry=https://{admin}"),
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
    wait_ready_files(&waiting, "a gateway", dir, children)?;
    Ok(gateways)
}

/// Starts the satellites not running yet: each is added (a one-time
/// token) on its first start, joins with it, and is waited for until the
/// registry lists it joined. With `network`, satellite `k` is its host `k`.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_satellites(
    dir: &Path,
    cluster: &str,
    count: usize,
    previous: &[SatelliteEntry],
    client: &AdminClient,
    admin: &str,
    ca_cert: &Path,
    gateways: &[GatewayEntry],
    network: Option<&NetworkEntry>,
    children: &mut Vec<(String, Child, PathBuf)>,
) -> anyhow::Result<Vec<SatelliteEntry>> {
    let names = satellite_names(count, previous);
    let endpoints: Vec<String> = gateways.iter().map(|g| g.endpoint.clone()).collect();
    let mut satellites = Vec::new();
    for (index, name) in names.into_iter().enumerate() {
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
            format!("--cluster={cluster}"),
            format!("--name={name}"),
            format!("--registry={admin}"),
            format!("--gateway={}", endpoints.join(",")),
            format!("--state-dir={}", state_dir.display()),
            format!("--trust-ca={}", ca_cert.display()),
            format!("--csi-socket={}", state_dir.join("csi.sock").display()),
            format!("--csi-node-id={name}"),
        ];
        if let Some(file) = satellite_join_token(client, &name, &state_dir)? {
            args.push(format!("--join-token-file={}", file.display()));
        }
        let host = network
            .map(|network| netns::host(network, &name, netns::HostKind::Satellite(index + 1)))
            .transpose()?;
        let child = spawn_self_in(host.as_ref().map(|h| h.netns.as_str()), &args, &log)?;
        satellites.push(SatelliteEntry {
            name: name.clone(),
            pid: child.id(),
            log: log.clone(),
            csi_socket: Some(state_dir.join("csi.sock")),
            host,
        });
        children.push((name, child, log));
    }
    wait_joined(client, &satellites, children)?;
    wait_satellite_exports(client, &satellites, children)?;
    Ok(satellites)
}

/// Waits until every Unix-socket export the satellites had is served
/// again (a satellite brings its attachments back after it joined), so
/// `dev up` returns with their clients able to connect. An encrypted
/// volume's waits for its key and is not waited for.
fn wait_satellite_exports(
    client: &AdminClient,
    satellites: &[SatelliteEntry],
    children: &mut [(String, Child, PathBuf)],
) -> anyhow::Result<()> {
    let volumes: Vec<tether_proto::admin::VolumeView> = client.get("/v1/volumes")?;
    let sockets: Vec<PathBuf> = volumes
        .iter()
        .filter(|volume| volume.encryption.is_none())
        .flat_map(|volume| &volume.attachments)
        .filter(|attachment| satellites.iter().any(|s| s.name == attachment.from))
        .filter_map(|attachment| unix_socket_of(&attachment.uri))
        .collect();
    let started = Instant::now();
    for socket in sockets {
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            check_children(children)?;
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "a satellite did not serve {} again within {READY_TIMEOUT:?}; see its log",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The socket of an `nbd+unix:///NAME?socket=PATH` URI.
fn unix_socket_of(uri: &str) -> Option<PathBuf> {
    if !uri.starts_with("nbd+unix://") && !uri.starts_with("nbds+unix://") {
        return None;
    }
    let query = uri.split_once('?')?.1;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("socket="))
        .map(PathBuf::from)
}
