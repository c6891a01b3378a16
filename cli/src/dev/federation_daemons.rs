//! The federation's daemons under `dev up`: gateways (credentials issued
//! from the dev CA, QUIC endpoints on loopback) and satellites (added with a
//! one-time token, joined, each with its own state directory).

use super::*;

/// Issues gateway `name` its credential (if missing or due), valid for the
/// loopback address satellites dial.
pub(super) fn gateway_credentials(
    dir: &Path,
    cluster: &str,
    name: &str,
) -> anyhow::Result<PathBuf> {
    let tls_dir = dir.join(cluster).join(name).join("tls");
    dev_credentials(dir, cluster, tether_tls::Role::Gateway, name, &tls_dir)?;
    tether_common::protected::mark(&dir.join(cluster).join(name), "a dev gateway's state")?;
    Ok(tls_dir)
}

/// Issues `name` a credential of `role` from the dev CA into `tls_dir`
/// (if missing or due): gateways', and nodes' `dr-peer` credentials.
pub(super) fn dev_credentials(
    dir: &Path,
    cluster: &str,
    role: tether_tls::Role,
    name: &str,
    tls_dir: &Path,
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
        ca.issue_credentials(
            &identity,
            &["127.0.0.1".into(), "localhost".into()],
            DEV_CERT_LIFETIME,
        )?
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

/// A gateway's QUIC endpoint: the one it had if still free, else a new one.
pub(super) fn gateway_endpoint(before: Option<&GatewayEntry>) -> String {
    match before {
        Some(gateway) if udp_port_free(&gateway.endpoint) => gateway.endpoint.clone(),
        _ => loop {
            let candidate = format!("127.0.0.1:{}", free_port());
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

/// Starts the gateways not running yet (each keeps its address if it is
/// still free) and waits until each serves.
pub(super) fn start_gateways(
    dir: &Path,
    cluster: &str,
    count: usize,
    previous: Option<&ClusterEntry>,
    etcd: &str,
    admin: &str,
    children: &mut Vec<(String, Child, PathBuf)>,
) -> anyhow::Result<Vec<GatewayEntry>> {
    let names = gateway_names(count, previous);
    let mut gateways = Vec::new();
    let mut waiting = Vec::new();
    for name in names {
        let before = previous.and_then(|cluster| cluster.gateways.iter().find(|g| g.name == name));
        if let Some(running) = before.filter(|gateway| alive(gateway.pid)) {
            gateways.push(running.clone());
            continue;
        }
        let tls_dir = gateway_credentials(dir, cluster, &name)?;
        let endpoint = gateway_endpoint(before);
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
/// registry lists it joined.
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
    children: &mut Vec<(String, Child, PathBuf)>,
) -> anyhow::Result<Vec<SatelliteEntry>> {
    let names = satellite_names(count, previous);
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
        let child = spawn_self(&args, &log)?;
        satellites.push(SatelliteEntry {
            name: name.clone(),
            pid: child.id(),
            log: log.clone(),
            csi_socket: Some(state_dir.join("csi.sock")),
        });
        children.push((name, child, log));
    }
    wait_joined(client, &satellites, children)?;
    Ok(satellites)
}
