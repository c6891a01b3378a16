//! `tether`: the admin CLI over the federation admin API, `tether dev up`
//! for a local federation, and the daemons themselves (`tether daemon ...`,
//! so one binary is all a developer needs to build).

mod audit;
mod ca;
mod client;
mod csi;
mod csi_node;
mod dev;
mod dr;
mod federation;
mod membership;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tether_common::size::{format_size, parse_size};
use tether_common::telemetry::{self, LogFormat};
use tether_proto::admin::{
    AttachRequest, AttachResponse, CreateVolumeRequest, NodeView, ResizeVolumeRequest, VolumeView,
};

use crate::client::AdminClient;
use crate::federation::Federation;

#[derive(Parser)]
#[command(
    name = "tether",
    about = "Tether: federated block storage for Kubernetes",
    version
)]
struct Cli {
    /// Admin API URL (default: $TETHER_ADMIN, else DIR/federation.json).
    #[arg(long, global = true, env = "TETHER_ADMIN")]
    admin: Option<String>,
    /// Directory of the dev federation (`tether dev up` writes
    /// DIR/federation.json there; other commands read it to find the admin API).
    #[arg(long, global = true, default_value = ".tether")]
    dir: PathBuf,
    /// Admin credential: a directory with tls.crt, tls.key and ca.crt
    /// (default: $TETHER_CREDENTIALS, else DIR/admin written by `dev up`).
    #[arg(long, global = true, env = "TETHER_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Log format of daemons started from this binary: json or pretty.
    #[arg(long, global = true, default_value = "json")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Commands {
    /// A local federation for development and tests.
    #[command(subcommand)]
    Dev(DevCommand),
    /// Clusters of the federation: this one and its satellites.
    #[command(subcommand)]
    Cluster(membership::ClusterCommand),
    /// What each satellite may reach.
    #[command(subcommand)]
    Grant(membership::GrantCommand),
    /// Disaster recovery: volumes replicated to a paired cluster.
    #[command(subcommand)]
    Dr(dr::DrCommand),
    /// The audit log: every admin action, who by, when, and how it ended.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Storage nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// The cluster's CA: issue credentials (run where the control plane's state is).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// A satellite's CSI services, called by hand (as the external-provisioner would).
    Csi(csi::CsiArgs),
    /// Run a daemon in the foreground (what `dev up` starts).
    #[command(subcommand, hide = true)]
    Daemon(DaemonCommand),
}

#[derive(Subcommand)]
enum DevCommand {
    /// Start a local central cluster in the background (or bring back the one in --dir).
    Up {
        /// Storage nodes in the cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Run everything in one process on the embedded store, even if etcd is installed.
        #[arg(long)]
        embedded: bool,
        /// Pool capacity of each node (default: the size of the filesystem).
        #[arg(long)]
        capacity: Option<String>,
        /// Nodes do not keep hash lists current (only to measure what upkeep costs).
        #[arg(long, hide = true)]
        no_hash_upkeep: bool,
        /// Replace a copy whose node stays down this long (e.g. 30s, 10m).
        #[arg(long)]
        replace_after: Option<String>,
        /// Lifetime of the certificates the cluster CA issues (e.g. 30d);
        /// holders renew after two thirds of it.
        #[arg(long)]
        cert_lifetime: Option<String>,
        /// Members of the cluster's local etcd (3 or 5 survive a member's loss).
        #[arg(long, default_value_t = 1)]
        etcd_members: usize,
        /// Federation gateways satellites connect to.
        #[arg(long, default_value_t = 2)]
        gateways: usize,
        /// Satellite daemons to run, each joined with its own token.
        #[arg(long, default_value_t = 0)]
        satellites: usize,
        /// Also a second datacentre: the DR peer cluster `dr` (its own
        /// etcd, CA, registry, nodes and gateways) in DIR/dr.
        #[arg(long)]
        dr: bool,
        /// Each node's over-provisioning (tether-node --overprovision), e.g. 200%.
        #[arg(long)]
        overprovision: Option<String>,
        /// Each node and satellite in a network namespace of its own, on a
        /// bridge per cluster (10.88.N.0/24) where etcd, the registry and
        /// the gateways listen: partitions are then iptables rules inside a
        /// host. Needs root and iproute2; a new federation only.
        #[arg(long)]
        netns: bool,
    },
    /// Stop the federation in --dir (its data stays; `dev up` brings it back).
    Down,
    /// The one-process federation `dev up --embedded` starts.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        admin_listen: SocketAddr,
        #[arg(long)]
        metrics_addr: SocketAddr,
        #[arg(long, value_delimiter = ',')]
        node_names: Vec<String>,
        #[arg(long)]
        capacity: Option<String>,
        #[arg(long)]
        no_hash_upkeep: bool,
        #[arg(long, default_value = "10m", value_parser = tether_common::size::parse_duration)]
        replace_after: std::time::Duration,
        #[arg(long, default_value = "30d", value_parser = tether_common::size::parse_duration)]
        cert_lifetime: std::time::Duration,
        /// A gateway to run, NAME=HOST:PORT (repeat, or comma-separate).
        #[arg(long = "gateway", value_delimiter = ',', value_parser = parse_gateway)]
        gateways: Vec<(String, SocketAddr)>,
        #[arg(long, value_delimiter = ',')]
        satellite_names: Vec<String>,
    },
}

/// `NAME=HOST:PORT` of `dev serve --gateway`.
fn parse_gateway(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=HOST:PORT"))?;
    let addr = addr.parse().map_err(|err| format!("{text:?}: {err}"))?;
    Ok((name.to_string(), addr))
}

#[derive(Subcommand)]
enum NodeCommand {
    /// List storage nodes.
    List {
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Mint a join token for a new node (give it to `tether-node
    /// --join-token-file`); only its hash is kept, and it expires.
    JoinToken {
        /// The only name the token may join as (default: any name not in use).
        #[arg(long)]
        name: Option<String>,
        /// How many nodes may join with it (a DaemonSet's bootstrap token;
        /// not with --name).
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long the token lives.
        #[arg(long, default_value = "1h", value_parser = tether_common::size::parse_duration)]
        ttl: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum VolumeCommand {
    /// Create a thin-provisioned volume.
    Create {
        name: String,
        /// Size, e.g. 10GiB.
        #[arg(long)]
        size: String,
        /// Copies of the data, master included, each on a different node.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
        #[arg(long)]
        cluster: Option<String>,
        /// Only on nodes with this label, key=value (repeatable), e.g. zone=zone-2.
        #[arg(long, value_parser = storage_node::config::parse_label)]
        placement: Vec<(String, String)>,
        /// Encrypt at rest (XTS-AES-256) under your key: a file of 32 bytes
        /// or 64 hex digits. Tether keeps only the volume's data key wrapped
        /// by it; keep the file: without it the data cannot be read.
        #[arg(long)]
        encrypt_key_file: Option<PathBuf>,
    },
    /// List volumes.
    List,
    /// Show one volume.
    Get {
        name: String,
        /// Follow Delta Sync progress with a progress bar until every copy is in sync.
        #[arg(long)]
        watch: bool,
    },
    /// Grow a volume (clients see the new size when they reconnect).
    Resize {
        name: String,
        #[arg(long)]
        size: String,
    },
    /// Serve a volume over NBD and print its URI.
    Attach {
        name: String,
        /// unix:PATH; tcp:[HOST:]PORT (loopback if no host; STARTTLS offered,
        /// and required beyond loopback); tls:[HOST:]PORT (STARTTLS required)
        #[arg(long)]
        nbd: String,
        /// The cluster attaching (satellites come with the federation gateway).
        #[arg(long)]
        from: Option<String>,
        /// The node that presents the volume (default: its master); it follows failovers.
        #[arg(long)]
        node: Option<String>,
        /// The key file the (encrypted) volume was created with.
        #[arg(long)]
        encrypt_key_file: Option<PathBuf>,
    },
    /// Stop serving a volume.
    Detach { name: String },
    /// Delete a volume and its data.
    Delete { name: String },
    /// Compare every in-sync copy's hash tree with the master's; with
    /// --repair, copy the chunks that differ from the master.
    Verify {
        name: String,
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Subcommand)]
enum DaemonCommand {
    /// Offline check of a stopped node's pool: open it (recovering hash lists
    /// as a restart would), recompute every chunk hash from the data and
    /// report mismatches as JSON. Exits non-zero on any mismatch.
    Scrub {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// A storage node.
    Node(Box<storage_node::config::NodeArgs>),
    /// The cluster registry (admin API).
    Registry(Box<cluster_registry::RegistryArgs>),
    /// A satellite daemon.
    Satellite(Box<satellite_csi::daemon::SatelliteArgs>),
    /// A federation gateway.
    Gateway {
        #[command(flatten)]
        args: Box<federation_gateway::GatewayArgs>,
        /// Write the bound address here once serving (how `dev up` waits).
        #[arg(long, hide = true)]
        ready_file: Option<PathBuf>,
    },
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => err.exit(), // --help, --version
        Err(err) => {
            // One line, like every other error, with all of clap's message
            // (which arguments, which value); `--help` has the rest.
            eprintln!("error: {} (see --help)", usage_error_line(&err.to_string()));
            std::process::exit(2);
        }
    };
    if let Err(err) = run(cli) {
        eprintln!("error: {}", format!("{err:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

/// A key file others can read is a key others have: say so (it still works).
fn warn_if_others_can_read(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: key file {} is readable by others (mode {mode:03o}); `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

/// clap's message without its usage block, folded onto one line.
fn usage_error_line(rendered: &str) -> String {
    let message = rendered.split("\nUsage:").next().unwrap_or(rendered);
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    parts.join(" ").trim_start_matches("error: ").to_string()
}

fn admin_client(cli: &Cli) -> anyhow::Result<AdminClient> {
    let credentials = cli.credentials.clone().or_else(|| {
        let dev = cli.dir.join(dev::ADMIN_CREDENTIALS_DIR);
        dev.is_dir().then_some(dev)
    });
    if let Some(admin) = &cli.admin {
        return AdminClient::new(admin, credentials.as_deref());
    }
    match Federation::load(&cli.dir)? {
        Some(federation) => AdminClient::new(&federation.admin, credentials.as_deref()),
        None => anyhow::bail!(
            "no admin API: pass --admin URL, set TETHER_ADMIN, or start one with `tether dev up` (looked for {})",
            Federation::path(&cli.dir).display()
        ),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Commands::Daemon(daemon) => run_daemon(daemon, cli.log_format),
        Commands::Dev(dev) => run_dev(&cli, dev),
        Commands::Csi(args) => csi::run(&cli.dir, args, cli.output == Output::Json),
        Commands::Cluster(command) => {
            membership::run_cluster(&admin_client(&cli)?, command, cli.output == Output::Json)
        }
        Commands::Grant(command) => {
            membership::run_grant(&admin_client(&cli)?, command, cli.output == Output::Json)
        }
        Commands::Dr(command) => dr::run(&admin_client(&cli)?, command, cli.output == Output::Json),
        Commands::Audit(command) => {
            audit::run(&admin_client(&cli)?, command, cli.output == Output::Json)
        }
        Commands::Node(NodeCommand::List { cluster }) => {
            let mut nodes: Vec<NodeView> = admin_client(&cli)?.get("/v1/nodes")?;
            if let Some(cluster) = cluster {
                nodes.retain(|node| &node.cluster == cluster);
            }
            if cli.output == Output::Json {
                return print_json(&nodes);
            }
            println!(
                "{:<12} {:<10} {:<6} {:>10} {:>20} {:>10} {:>8} {:<9} LABELS",
                "NAME",
                "CLUSTER",
                "STATE",
                "CAPACITY",
                "PROVISIONED/LIMIT",
                "ALLOCATED",
                "VOLUMES",
                "IO"
            );
            let mut quarantined = Vec::new();
            for node in nodes {
                for (volume, reason) in &node.quarantined {
                    quarantined.push(format!(
                        "{}: copy of {volume} quarantined: {reason}",
                        node.name
                    ));
                }
                println!(
                    "{:<12} {:<10} {:<6} {:>10} {:>20} {:>10} {:>8} {:<9} {}",
                    node.name,
                    node.cluster,
                    node.state,
                    format_size(node.capacity_bytes),
                    format!(
                        "{}/{}",
                        format_size(node.provisioned_bytes),
                        format_size(node.provisionable_bytes)
                    ),
                    format_size(node.allocated_bytes),
                    node.volumes,
                    node.io_backend,
                    cluster_registry::placement::format_labels(&node.labels)
                );
            }
            for line in quarantined {
                eprintln!("warning: {line}");
            }
            Ok(())
        }
        Commands::Node(NodeCommand::JoinToken { name, ttl, uses }) => {
            let answer: tether_proto::admin::JoinTokenResponse = admin_client(&cli)?.post(
                "/v1/join-tokens",
                &tether_proto::admin::JoinTokenRequest {
                    node: name.clone(),
                    ttl_seconds: Some(ttl.as_secs().max(1)),
                    uses: Some(*uses),
                },
            )?;
            if cli.output == Output::Json {
                return print_json(&answer);
            }
            println!("{}", answer.token);
            Ok(())
        }
        Commands::Volume(volume) => run_volume(&cli, volume),
        Commands::Ca(command) => ca::run(command),
    }
}

fn run_volume(cli: &Cli, command: &VolumeCommand) -> anyhow::Result<()> {
    let client = admin_client(cli)?;
    match command {
        VolumeCommand::Create {
            name,
            size,
            replicas,
            cluster,
            placement,
            encrypt_key_file,
        } => {
            if let Some(cluster) = cluster {
                anyhow::ensure!(
                    cluster == "central",
                    "unknown cluster {cluster:?} (this federation has: central)"
                );
            }
            let size_bytes = parse_size(size)?;
            // The data key is made and wrapped here: the user's key never leaves this machine.
            let encryption = match encrypt_key_file {
                Some(path) => {
                    warn_if_others_can_read(path);
                    let user = volume_crypto::UserKey::from_file(path)?;
                    let data = volume_crypto::DataKey::generate();
                    Some(tether_proto::admin::EncryptionSpec {
                        cipher: volume_crypto::CIPHER.into(),
                        sector_bytes: volume_crypto::SECTOR_BYTES as u32,
                        wrapped_key: data.wrap(&user),
                        key_check: data.check_value(),
                    })
                }
                None => None,
            };
            let request = CreateVolumeRequest {
                name: name.clone(),
                size_bytes,
                replicas: *replicas,
                placement: placement.iter().cloned().collect(),
                encryption,
            };
            let view: VolumeView = client.post("/v1/volumes", &request)?;
            if cli.output == Output::Json {
                return print_json(&view);
            }
            println!(
                "volume {} created: {} on {}",
                view.name,
                format_size(view.size_bytes),
                view.master
            );
        }
        VolumeCommand::List => {
            let volumes: Vec<VolumeView> = client.get("/v1/volumes")?;
            if cli.output == Output::Json {
                return print_json(&volumes);
            }
            println!(
                "{:<20} {:>10} {:>10} {:<10} {:<12} {:<8} ATTACHED",
                "NAME", "SIZE", "ALLOCATED", "MASTER", "STATE", "IN-SYNC"
            );
            for volume in volumes {
                print_volume_row(&volume);
            }
        }
        VolumeCommand::Get { name, watch } => {
            let volume: VolumeView = client.get(&format!("/v1/volumes/{name}"))?;
            if *watch {
                return watch_sync(&client, volume);
            }
            if cli.output == Output::Json {
                return print_json(&volume);
            }
            println!("name:        {}", volume.name);
            println!("state:       {}", volume.state);
            println!("cluster:     {}", volume.cluster);
            println!(
                "size:        {} ({} bytes)",
                format_size(volume.size_bytes),
                volume.size_bytes
            );
            println!("allocated:   {}", format_size(volume.allocated_bytes));
            println!("epoch:       {}", volume.epoch);
            println!("master:      {}", volume.master);
            println!("chunk size:  {}", format_size(volume.chunk_size_bytes));
            println!(
                "dirty:       {} chunks awaiting rehash",
                volume.dirty_chunks
            );
            for copy in &volume.copies {
                println!("copy:        {} ({}, {})", copy.node, copy.role, copy.state);
            }
            for sync in &volume.syncs {
                println!(
                    "delta sync:  {} {}: compared {}/{} chunks, copied {}/{} ({}), {}/s, ETA {} s",
                    sync.node,
                    sync.phase,
                    sync.chunks_compared,
                    sync.chunks_total,
                    sync.chunks_copied,
                    sync.chunks_differing,
                    format_size(sync.bytes_copied),
                    format_size(sync.bytes_per_sec),
                    sync.eta_seconds
                );
            }
            for attachment in &volume.attachments {
                println!(
                    "attached:    {} (presented by {}, from {})",
                    attachment.uri, attachment.node, attachment.from
                );
            }
            for error in &volume.errors {
                println!("error:       {error}");
            }
        }
        VolumeCommand::Verify { name, repair } => {
            let report: tether_proto::admin::VerifyReport = client.post(
                &format!("/v1/volumes/{name}/verify"),
                &tether_proto::admin::VerifyRequest { repair: *repair },
            )?;
            if cli.output == Output::Json {
                print_json(&report)?;
            } else {
                for copy in &report.copies {
                    match (copy.chunks_differing, copy.chunks_repaired) {
                        (0, _) => println!(
                            "{}: identical to master {} ({} chunks compared)",
                            copy.node, report.master, copy.chunks_compared
                        ),
                        (differing, 0) => println!(
                            "{}: {differing} chunks differ from master {} (first: {:?})",
                            copy.node, report.master, copy.differing
                        ),
                        (differing, repaired) => println!(
                            "{}: {differing} chunks differed; {repaired} copied from master {}",
                            copy.node, report.master
                        ),
                    }
                }
                if report.copies.is_empty() {
                    println!(
                        "volume {name}: no in-sync replica to compare with master {}",
                        report.master
                    );
                }
            }
            let unrepaired: u64 = report
                .copies
                .iter()
                .map(|copy| copy.chunks_differing - copy.chunks_repaired.min(copy.chunks_differing))
                .sum();
            if unrepaired > 0 {
                anyhow::bail!(
                    "volume {name}: {unrepaired} chunks differ between copies; `tether volume verify {name} --repair` copies them from the master"
                );
            }
        }
        VolumeCommand::Resize { name, size } => {
            let request = ResizeVolumeRequest {
                size_bytes: parse_size(size)?,
            };
            let view: VolumeView = client.post(&format!("/v1/volumes/{name}/resize"), &request)?;
            if cli.output == Output::Json {
                return print_json(&view);
            }
            println!(
                "volume {} is now {} (clients see it when they reconnect)",
                view.name,
                format_size(view.size_bytes)
            );
        }
        VolumeCommand::Attach {
            name,
            nbd,
            from,
            node,
            encrypt_key_file,
        } => {
            // Unwrap the volume's data key here, so a wrong key fails before
            // anything is asked of the cluster.
            let view: VolumeView = client.get(&format!("/v1/volumes/{name}"))?;
            let data_key = match (&view.encryption, encrypt_key_file) {
                (Some(encryption), Some(path)) => {
                    warn_if_others_can_read(path);
                    let user = volume_crypto::UserKey::from_file(path)?;
                    let key = volume_crypto::DataKey::unwrap(name, &encryption.wrapped_key, &user)?;
                    Some(key.to_hex())
                }
                (Some(_), None) => anyhow::bail!(
                    "volume {name} is encrypted: attach it with --encrypt-key-file (the key it was created with)"
                ),
                (None, Some(_)) => anyhow::bail!(
                    "volume {name} is not encrypted; attach it without --encrypt-key-file"
                ),
                (None, None) => None,
            };
            let request = AttachRequest {
                nbd: nbd.clone(),
                from: from.clone(),
                node: node.clone(),
                data_key,
            };
            let response: AttachResponse =
                client.post(&format!("/v1/volumes/{name}/attach"), &request)?;
            if cli.output == Output::Json {
                return print_json(&response);
            }
            println!("{}", response.uri);
        }
        VolumeCommand::Detach { name } => {
            let view: VolumeView = client.post(
                &format!("/v1/volumes/{name}/detach"),
                &serde_json::json!({}),
            )?;
            if cli.output == Output::Json {
                return print_json(&view);
            }
            println!("volume {name} detached");
        }
        VolumeCommand::Delete { name } => {
            client.delete(&format!("/v1/volumes/{name}"))?;
            if cli.output == Output::Json {
                return print_json(&serde_json::json!({"deleted": name}));
            }
            println!("volume {name} deleted");
        }
    }
    Ok(())
}

/// Draws a progress bar per Delta Sync until every copy is in sync.
fn watch_sync(client: &client::AdminClient, mut volume: VolumeView) -> anyhow::Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} chunks {msg}")
        .expect("template is valid")
        .progress_chars("=> ");
    let bars = MultiProgress::new();
    let mut by_node: std::collections::HashMap<String, ProgressBar> = Default::default();
    // What each waiting copy waits for, as last said (said again only when it changes).
    let mut said: std::collections::HashMap<String, String> = Default::default();
    loop {
        let nodes: Vec<NodeView> = client.get("/v1/nodes").unwrap_or_default();
        for copy in &volume.copies {
            let syncing = volume
                .syncs
                .iter()
                .any(|sync| sync.node == copy.node && sync.phase != "done");
            let waiting = match copy.state.as_str() {
                "in-sync" => None,
                _ if syncing => None,
                _ if copy.role == "master" => Some(format!(
                    "master {} does not serve (its node is {}); waiting for it or for a failover",
                    copy.node,
                    node_state(&nodes, &copy.node)
                )),
                _ if node_state(&nodes, &copy.node) == "down" => Some(format!(
                    "copy on {} is {}: its node is down; waiting for it to come back, or for the registry to replace it (--replace-after)",
                    copy.node, copy.state
                )),
                _ => Some(format!(
                    "copy on {} is {}: waiting for the master to start its Delta Sync",
                    copy.node, copy.state
                )),
            };
            match waiting {
                Some(line) if said.get(&copy.node) != Some(&line) => {
                    if bars.is_hidden() {
                        eprintln!("{line}");
                    } else {
                        let _ = bars.println(&line);
                    }
                    said.insert(copy.node.clone(), line);
                }
                Some(_) => {}
                None => {
                    said.remove(&copy.node);
                }
            }
        }
        for sync in &volume.syncs {
            let bar = by_node.entry(sync.node.clone()).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(sync.node.clone());
                bar
            });
            bar.set_length(sync.chunks_differing.max(1));
            bar.set_position(sync.chunks_copied);
            bar.set_message(format!(
                "{} ({} copied, {}/s, ETA {} s)",
                sync.phase,
                format_size(sync.bytes_copied),
                format_size(sync.bytes_per_sec),
                sync.eta_seconds
            ));
        }
        if volume.copies.iter().all(|copy| copy.state == "in-sync") {
            for bar in by_node.values() {
                bar.finish();
            }
            println!(
                "volume {}: all {} copies in sync at epoch {}",
                volume.name,
                volume.copies.len(),
                volume.epoch
            );
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        volume = client.get(&format!("/v1/volumes/{}", volume.name))?;
    }
}

/// "up", "down", or "unknown" for a node of `nodes`.
fn node_state<'a>(nodes: &'a [NodeView], name: &str) -> &'a str {
    nodes
        .iter()
        .find(|node| node.name == name)
        .map_or("unknown", |node| node.state.as_str())
}

fn print_volume_row(volume: &VolumeView) {
    let in_sync = volume
        .copies
        .iter()
        .filter(|copy| copy.state == "in-sync")
        .count();
    let attached: Vec<&str> = volume
        .attachments
        .iter()
        .map(|attachment| attachment.uri.as_str())
        .collect();
    println!(
        "{:<20} {:>10} {:>10} {:<10} {:<12} {:<8} {}",
        volume.name,
        format_size(volume.size_bytes),
        format_size(volume.allocated_bytes),
        volume.master,
        volume.state,
        format!("{in_sync}/{}", volume.copies.len()),
        if attached.is_empty() {
            "-".to_string()
        } else {
            attached.join(",")
        }
    );
}

fn run_dev(cli: &Cli, command: &DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Up {
            nodes,
            embedded,
            capacity,
            no_hash_upkeep,
            replace_after,
            cert_lifetime,
            etcd_members,
            overprovision,
            gateways,
            satellites,
            dr,
            netns,
        } => {
            anyhow::ensure!(*nodes >= 1, "--nodes must be at least 1");
            anyhow::ensure!(
                !(*dr && *embedded),
                "--dr needs etcd mode: the DR peer is a cluster with its own etcd"
            );
            anyhow::ensure!(
                (1..=7).contains(etcd_members),
                "--etcd-members must be between 1 and 7"
            );
            if let Some(lifetime) = cert_lifetime {
                tether_common::size::parse_duration(lifetime)
                    .map_err(|err| anyhow::anyhow!("--cert-lifetime: {err}"))?;
            }
            if let Some(capacity) = capacity {
                parse_size(capacity)?;
            }
            if let Some(replace_after) = replace_after {
                tether_common::size::parse_duration(replace_after)
                    .map_err(|err| anyhow::anyhow!("--replace-after: {err}"))?;
            }
            let federation = dev::up(dev::UpOptions {
                dir: cli.dir.clone(),
                nodes: *nodes,
                embedded: *embedded,
                capacity: capacity.clone(),
                hash_upkeep: !no_hash_upkeep,
                replace_after: replace_after.clone(),
                cert_lifetime: cert_lifetime.clone(),
                etcd_members: *etcd_members,
                overprovision: overprovision.clone(),
                gateways: *gateways,
                satellites: *satellites,
                cluster: "central".into(),
                dr: *dr,
                netns: *netns,
            })?;
            if cli.output == Output::Json {
                return print_json(&federation);
            }
            let cluster = &federation.clusters[0];
            println!(
                "Tether dev federation is up ({} mode): cluster {}, {} nodes",
                federation.mode,
                cluster.name,
                cluster.nodes.len()
            );
            println!("  admin API: {}", federation.admin);
            for peer in &federation.peers {
                if let Some(peer_federation) = Federation::load(&peer.dir)? {
                    println!(
                        "  DR peer:   cluster {}, {} nodes, admin API {} (tether --dir {} …)",
                        peer.name,
                        peer_federation
                            .clusters
                            .first()
                            .map_or(0, |cluster| cluster.nodes.len()),
                        peer_federation.admin,
                        peer.dir.display()
                    );
                }
            }
            println!(
                "  state:     {}",
                Federation::path(&std::fs::canonicalize(&cli.dir)?).display()
            );
            println!(
                "  logs:      {}",
                std::fs::canonicalize(&cli.dir)?.join("logs").display()
            );
            let mut metrics: Vec<(String, String)> = cluster
                .nodes
                .iter()
                .map(|node| (node.name.clone(), node.metrics.clone()))
                .collect();
            if let Some(registry) = &cluster.registry.metrics {
                metrics.push(("registry".into(), registry.clone()));
            }
            for satellite in &federation.satellites {
                println!(
                    "  satellite: {} (log {})",
                    satellite.name,
                    satellite.log.display()
                );
            }
            for gateway in &cluster.gateways {
                println!("  gateway:   {} ({}, QUIC)", gateway.endpoint, gateway.name);
                if let Some(addr) = &gateway.metrics {
                    metrics.push((gateway.name.clone(), addr.clone()));
                }
            }
            metrics.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
            metrics.dedup_by(|a, b| {
                // One process serves several (embedded mode): name them together.
                if a.1 == b.1 {
                    b.0 = format!("{}, {}", b.0, a.0);
                    true
                } else {
                    false
                }
            });
            metrics.sort();
            for (daemons, addr) in metrics {
                println!("  metrics:   http://{addr}/metrics ({daemons})");
            }
            println!("Next: tether volume create vol1 --size 1GiB && tether volume attach vol1 --nbd unix:/tmp/vol1.sock");
            Ok(())
        }
        DevCommand::Down => {
            let stopped = dev::down(&cli.dir)?;
            println!(
                "stopped {stopped} processes; data kept in {} (`tether dev up` brings it back)",
                cli.dir.display()
            );
            Ok(())
        }
        DevCommand::Serve {
            admin_listen,
            metrics_addr,
            node_names,
            capacity,
            no_hash_upkeep,
            replace_after,
            cert_lifetime,
            gateways,
            satellite_names,
        } => {
            telemetry::init_logging(cli.log_format);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(dev::serve(dev::ServeOptions {
                dir: std::fs::canonicalize(&cli.dir)
                    .with_context(|| format!("resolving {}", cli.dir.display()))?,
                admin_listen: *admin_listen,
                metrics_addr: *metrics_addr,
                node_names: node_names.clone(),
                capacity: capacity.clone(),
                hash_upkeep: !no_hash_upkeep,
                replace_after: *replace_after,
                cert_lifetime: *cert_lifetime,
                gateways: gateways.clone(),
                satellites: satellite_names.clone(),
            }))
        }
    }
}

async fn scrub(data_dir: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    use storage_node::engine::{IoEngine, Pool, VolumeOptions};
    let pool = Pool::open(
        data_dir,
        u64::MAX,
        IoEngine::start(true),
        VolumeOptions::default(),
    )?;
    let mut report = Vec::new();
    for volume in pool.list() {
        let from_data = volume.compute_hashes_from_data().await?;
        let tree = volume.hash_tree();
        let mismatched = tree
            .leaves()
            .iter()
            .zip(&from_data)
            .filter(|(kept, computed)| kept != computed)
            .count();
        report.push(serde_json::json!({
            "volume": volume.name(),
            "chunks": from_data.len(),
            "mismatched_chunks": mismatched,
            "recovered_extents": volume.recovered_extents(),
            "root": tree.root().iter().map(|byte| format!("{byte:02x}")).collect::<String>(),
        }));
    }
    Ok(report)
}

fn run_daemon(command: &DaemonCommand, log_format: LogFormat) -> anyhow::Result<()> {
    telemetry::init_logging(log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    match command {
        DaemonCommand::Scrub { data_dir } => {
            let report = runtime.block_on(scrub(data_dir))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            let mismatched: u64 = report
                .iter()
                .map(|volume| volume["mismatched_chunks"].as_u64().unwrap_or(0))
                .sum();
            anyhow::ensure!(
                mismatched == 0,
                "{mismatched} chunks have hashes that do not match their data"
            );
        }
        DaemonCommand::Node(args) => {
            let config = storage_node::NodeConfig::from_args(args.as_ref().clone())?;
            if let Some(addr) = config.metrics_addr {
                telemetry::serve_metrics(addr)?;
            }
            runtime.block_on(storage_node::run(config, tether_common::shutdown_signal()))?;
        }
        DaemonCommand::Satellite(args) => {
            let result = runtime.block_on(satellite_csi::daemon::run(
                args.as_ref().clone(),
                tether_common::shutdown_signal(),
            ));
            // A long poll to the registry may still hold a blocking thread:
            // do not wait for it to stop.
            runtime.shutdown_background();
            result?;
            return Ok(());
        }
        DaemonCommand::Gateway { args, ready_file } => {
            if let Some(addr) = args.metrics_addr {
                telemetry::serve_metrics(addr)?;
            }
            let config = federation_gateway::GatewayConfig::from_args(args.as_ref().clone());
            let ready = |addr: std::net::SocketAddr| {
                if let Some(file) = ready_file {
                    if let Err(err) = std::fs::write(file, addr.to_string()) {
                        tracing::error!(file = %file.display(), error = %err, "cannot write the ready file");
                    }
                }
            };
            runtime.block_on(federation_gateway::run(
                config,
                ready,
                tether_common::shutdown_signal(),
            ))?;
        }
        DaemonCommand::Registry(args) => {
            if let Some(addr) = args.metrics_addr {
                telemetry::serve_metrics(addr)?;
            }
            runtime.block_on(cluster_registry::run(
                args.config(),
                |_| {},
                tether_common::shutdown_signal(),
            ))?;
        }
    }
    Ok(())
}
