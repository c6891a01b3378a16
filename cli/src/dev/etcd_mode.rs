//! `dev up` with etcd: a local etcd, and a process each for the registry,
//! every node, every gateway and every satellite.

use super::*;

use super::federation_daemons::{dev_credentials, start_gateways, start_satellites};

pub(super) fn up_with_etcd(
    dir: &Path,
    options: &UpOptions,
    previous_cluster: Option<ClusterEntry>,
    previous_satellites: &[SatelliteEntry],
) -> anyhow::Result<Federation> {
    let runtime = tokio::runtime::Runtime::new()?;
    let trust = prepare_trust(dir, &options.cluster)?;
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
                    dir.join(&options.cluster).join(format!("etcd{suffix}")),
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
                        format!("--cluster={}", options.cluster),
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
            // A DR shipper's credential, for the peer cluster's gateways.
            dev_credentials(
                dir,
                &options.cluster,
                tether_tls::Role::DrPeer,
                &name,
                &data_dir.join("dr-tls"),
            )?;
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
            &options.cluster,
            options.gateways,
            previous_cluster.as_ref(),
            &endpoint,
            &admin_listen.to_string(),
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
