//! `dev up` with etcd: a local etcd, and a process each for the registry,
//! every node, every gateway and every satellite; with `--netns`, each
//! node and satellite in a network namespace of its own.

use super::*;

use super::netns::{self, HostKind};

use super::federation_daemons::{dev_credentials, start_gateways, start_satellites, ControlPlane};

pub(super) fn up_with_etcd(
    dir: &Path,
    options: &UpOptions,
    previous_cluster: Option<ClusterEntry>,
    previous_satellites: &[SatelliteEntry],
) -> anyhow::Result<Federation> {
    let runtime = tokio::runtime::Runtime::new()?;
    // The hosts' network: the one the cluster had, or a new one if asked for.
    let previous_network = previous_cluster.as_ref().and_then(|c| c.network.clone());
    if options.netns && previous_cluster.is_some() && previous_network.is_none() {
        eprintln!("note: the federation in {} runs without --netns and comes back so; --netns applies only to a new directory", dir.display());
    }
    let network = match &previous_network {
        Some(previous) => Some(netns::network_for(Some(previous))?),
        None if options.netns && previous_cluster.is_none() => Some(netns::network_for(None)?),
        None => None,
    };
    let new_network = network.is_some() && previous_network.is_none();
    let control_host = network
        .as_ref()
        .map_or(LOOPBACK.to_string(), |network| network.address.clone());
    let result = up_on_network(
        dir,
        options,
        previous_cluster,
        previous_satellites,
        &runtime,
        network.as_ref(),
        &control_host,
    );
    if result.is_err() && new_network {
        if let Some(network) = &network {
            netns::remove(network, &[]);
        }
    }
    result
}

fn up_on_network(
    dir: &Path,
    options: &UpOptions,
    previous_cluster: Option<ClusterEntry>,
    previous_satellites: &[SatelliteEntry],
    runtime: &tokio::runtime::Runtime,
    network: Option<&crate::federation::NetworkEntry>,
    control_host: &str,
) -> anyhow::Result<Federation> {
    let trust = prepare_trust(dir, &options.cluster, control_host)?;
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
                EtcdMemberSpec {
                    host: control_host.to_string(),
                    ..EtcdMemberSpec::local(
                        index,
                        dir.join(&options.cluster).join(format!("etcd{suffix}")),
                        dir.join("logs").join(format!("etcd{suffix}.log")),
                        None,
                    )
                }
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
                _ => format!("{control_host}:{}", free_port()),
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
                        format!("--cluster={}", options.cluster),
                        format!("--listen={admin_listen}"),
                        format!("--tls-name={}", host_names(control_host).join(",")),
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
        for (index, (name, metrics)) in node_names.into_iter().enumerate() {
            let running = previous_cluster
                .as_ref()
                .and_then(|cluster| cluster.nodes.iter().find(|node| node.name == name))
                .filter(|node| alive(node.pid));
            if let Some(running) = running {
                nodes.push(running.clone());
                continue;
            }
            let host = network
                .map(|network| netns::host(network, &name, HostKind::Node(index + 1)))
                .transpose()?;
            // In its own namespace a node listens on its host's address;
            // the metrics port was picked on loopback and stays.
            let metrics = match &host {
                Some(host) => format!(
                    "{}:{}",
                    host.address,
                    metrics
                        .rsplit_once(':')
                        .and_then(|(_, port)| port.parse().ok())
                        .unwrap_or_else(free_port)
                ),
                None if port_free(&metrics) => metrics,
                None => format!("127.0.0.1:{}", free_port()),
            };
            let data_dir = dir.join(&options.cluster).join(&name);
            let log = dir.join("logs").join(format!("{name}.log"));
            let mut args = vec![
                "daemon".into(),
                "node".into(),
                format!("--cluster={}", options.cluster),
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
                        uses: None,
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
            if let Some(host) = &host {
                args.push(format!("--block-listen={}:0", host.address));
                args.push(format!("--control-listen={}:0", host.address));
            }
            // A DR shipper's credential, for the peer cluster's gateways.
            dev_credentials(
                dir,
                &options.cluster,
                tether_tls::Role::DrPeer,
                &name,
                &data_dir.join("dr-tls"),
                control_host,
            )?;
            let child = spawn_self_in(host.as_ref().map(|h| h.netns.as_str()), &args, &log)?;
            nodes.push(NodeEntry {
                name: name.clone(),
                pid: child.id(),
                data_dir,
                log: log.clone(),
                metrics,
                host,
            });
            children.push((name, child, log));
        }
        wait_ready(&admin, &trust.admin_dir, nodes.len(), &mut children)?;
        let gateways = start_gateways(
            dir,
            &options.cluster,
            options.gateways,
            previous_cluster.as_ref(),
            &ControlPlane {
                etcd: &endpoint,
                admin: &admin_listen,
                host: control_host,
            },
            &mut children,
        )?;
        let satellites = start_satellites(
            dir,
            &options.cluster,
            options.satellites,
            previous_satellites,
            &client,
            &admin,
            &trust.ca_cert,
            &gateways,
            network,
            &mut children,
        )?;
        Ok(Federation {
            admin,
            mode: "etcd".into(),
            clusters: vec![ClusterEntry {
                name: options.cluster.clone(),
                role: "central".into(),
                etcd: Some(etcd_entry),
                registry: registry_entry,
                nodes,
                gateway: gateways.first().cloned(),
                gateways,
                network: network.cloned(),
            }],
            satellites,
            peers: vec![],
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
