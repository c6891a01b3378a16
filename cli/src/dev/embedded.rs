//! `dev up --embedded` (or without etcd): one process, `tether dev serve`,
//! running the registry, every node, the gateways and the satellites on the
//! embedded store.

use super::*;

pub(super) fn up_embedded(
    dir: &Path,
    options: &UpOptions,
    previous_cluster: Option<ClusterEntry>,
    previous_satellites: &[SatelliteEntry],
) -> anyhow::Result<Federation> {
    use super::federation_daemons::{
        gateway_credentials, gateway_endpoint, gateway_names, satellite_names, wait_joined,
        wait_ready_files,
    };
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
    let trust = prepare_trust(dir, CLUSTER, LOOPBACK)?;
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
    let mut gateways = Vec::new();
    let mut ready_files = Vec::new();
    for name in gateway_names(options.gateways, previous_cluster.as_ref()) {
        let before = previous_cluster
            .as_ref()
            .and_then(|cluster| cluster.gateways.iter().find(|g| g.name == name));
        gateway_credentials(dir, CLUSTER, &name, LOOPBACK)?;
        let endpoint = gateway_endpoint(before, LOOPBACK);
        let ready_file = dir.join(CLUSTER).join(&name).join("ready");
        let _ = std::fs::remove_file(&ready_file);
        args.push(format!("--gateway={name}={endpoint}"));
        ready_files.push(ready_file);
        gateways.push(GatewayEntry {
            endpoint,
            pid: 0,
            name,
            log: log.clone(),
            metrics: None,
        });
    }
    let satellites = satellite_names(options.satellites, previous_satellites);
    anyhow::ensure!(
        satellites.is_empty() || !gateways.is_empty(),
        "satellites need gateways (--gateways 1 or more)"
    );
    if !satellites.is_empty() {
        args.push(format!("--satellite-names={}", satellites.join(",")));
    }
    let child = spawn_self(&args, &log)?;
    let pid = child.id();
    for gateway in &mut gateways {
        gateway.pid = pid;
        gateway.metrics = Some(metrics.clone());
    }
    let mut children = vec![("federation".to_string(), child, log.clone())];
    let admin = format!("https://{admin_listen}");
    let satellites: Vec<SatelliteEntry> = satellites
        .into_iter()
        .map(|name| SatelliteEntry {
            csi_socket: Some(dir.join("satellites").join(&name).join("csi.sock")),
            name,
            pid,
            log: log.clone(),
            host: None,
        })
        .collect();
    let ready = wait_ready(&admin, &trust.admin_dir, node_names.len(), &mut children)
        .and_then(|()| wait_ready_files(&ready_files, "a gateway", dir, &mut children))
        .and_then(|()| {
            let client = AdminClient::new(&admin, Some(&trust.admin_dir))?;
            wait_joined(&client, &satellites, &mut children)
        });
    if let Err(err) = ready {
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
            host: None,
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
            gateway: gateways.first().cloned(),
            gateways,
            network: None,
        }],
        satellites,
        peers: vec![],
    })
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
    /// Gateways to run: name and QUIC endpoint.
    pub gateways: Vec<(String, SocketAddr)>,
    /// Satellites to run, each with its state in `DIR/satellites/NAME`.
    pub satellites: Vec<String>,
}

/// The one-process federation: embedded store, registry and every node.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let store: Arc<dyn CoordStore> =
        Arc::new(EmbeddedStore::open(&options.dir.join("store.json"))?);
    let trust = prepare_trust(&options.dir, CLUSTER, LOOPBACK)?;
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
                dr_tls_dir: None,
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
    let registry_failed = failed.clone();
    tasks.push(tokio::spawn(async move {
        let stop_requested = async move {
            let _ = registry_stopped.changed().await;
        };
        if let Err(err) = cluster_registry::run(registry_config, |_| {}, stop_requested).await {
            let _ = registry_failed
                .send(anyhow::Error::from(err).context("registry"))
                .await;
        }
    }));
    for (name, listen) in &options.gateways {
        let config = federation_gateway::GatewayConfig {
            cluster: CLUSTER.into(),
            name: name.clone(),
            listen: *listen,
            store: federation_gateway::GatewayStore::Shared(store.clone()),
            tls_dir: options.dir.join(CLUSTER).join(name).join("tls"),
            limits: Default::default(),
            advertise: None,
            registry: Some(format!("https://{}", options.admin_listen)),
        };
        let ready_file = options.dir.join(CLUSTER).join(name).join("ready");
        let (mut stopped, failed, name) = (stopped.clone(), failed.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let stop_requested = async move {
                let _ = stopped.changed().await;
            };
            let ready = move |_| {
                let _ = std::fs::write(&ready_file, b"");
            };
            if let Err(err) = federation_gateway::run(config, ready, stop_requested).await {
                let _ = failed
                    .send(anyhow::Error::from(err).context(format!("gateway {name}")))
                    .await;
            }
        }));
    }
    let endpoints: Vec<String> = options
        .gateways
        .iter()
        .map(|(_, listen)| listen.to_string())
        .collect();
    for name in &options.satellites {
        let state_dir = options.dir.join("satellites").join(name);
        std::fs::create_dir_all(&state_dir)?;
        // Added with a one-time token on its first start, as `dev up` does
        // with etcd; it joins through the admin API like any satellite.
        let join_token_file = if state_dir.join("tls").join("tls.crt").exists() {
            None
        } else {
            let added = cluster_registry::federation::add_satellite(
                store.as_ref(),
                CLUSTER,
                name,
                DEV_JOIN_TOKEN_TTL,
            )
            .await?;
            Some(write_join_token(&state_dir, &added.token)?)
        };
        let args = satellite_csi::daemon::SatelliteArgs {
            cluster: CLUSTER.into(),
            name: name.clone(),
            registry: format!("https://{}", options.admin_listen),
            gateway: endpoints.clone(),
            csi_socket: Some(state_dir.join("csi.sock")),
            state_dir,
            join_token_file,
            trust_ca: Some(trust.ca_cert.clone()),
            csi_prefix: None,
            csi_mode: satellite_csi::csi::CsiMode::Both,
            csi_node_id: Some(name.clone()),
            csi_node_dir: None,
            csi_max_volumes: 64,
            serve_attachments: true,
        };
        let (mut stopped, failed, name) = (stopped.clone(), failed.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let stop_requested = async move {
                let _ = stopped.changed().await;
            };
            if let Err(err) = satellite_csi::daemon::run(args, stop_requested).await {
                let _ = failed.send(err.context(format!("satellite {name}"))).await;
            }
        }));
    }
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
