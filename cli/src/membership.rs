//! `tether cluster …` and `tether grant …`: the federation's members (its
//! satellites, its DR peers) and what each satellite may reach.

use clap::Subcommand;
use tether_common::size::{format_size, parse_size};
use tether_proto::federation::{
    AddGrantRequest, AddSatelliteRequest, AddSatelliteResponse, ClusterView, GrantRecord,
    GrantScope, GrantView,
};

use tether_proto::dr::{AddPeerRequest, AddPeerResponse, LinkPeerRequest, PeerState, PeerView};

use crate::client::AdminClient;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// List clusters: this one and its satellites, with state and last seen.
    List,
    /// Add a satellite; prints its one-time join token (only its hash is kept).
    /// Again while it has not joined: a new token, and the earlier one stops working.
    AddSatellite {
        name: String,
        /// How long the token lives.
        #[arg(long, default_value = "1h", value_parser = tether_common::size::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Remove a satellite: its certificate is refused from then on and its
    /// grants are dropped. The name is never issued again.
    Remove { name: String },
    /// Add a DR peer cluster; prints the one-time token it links with
    /// (`SECRET.CAHASH`: the hash names this cluster's CA).
    AddPeer {
        name: String,
        #[arg(long, default_value = "1h", value_parser = tether_common::size::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Link with DR peer NAME, which added this cluster: its CA is fetched
    /// and taken only if it matches the token; then each side trusts the
    /// other's CA for `dr-peer` certificates.
    Link {
        name: String,
        /// The peer's admin API (https://host:port).
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        token: String,
        /// This cluster's admin API as the peer reaches it (default: the
        /// address this command calls).
        #[arg(long)]
        advertise: Option<String>,
        /// The peer's gateways as this cluster reaches them (`host:port`,
        /// comma-separated), if not the addresses they advertise (NAT, a
        /// WAN proxy): where this cluster's DR shippers dial.
        #[arg(long, value_delimiter = ',')]
        peer_gateway: Vec<String>,
    },
    /// List DR peers.
    Peers,
}

#[derive(Subcommand)]
pub enum GrantCommand {
    /// Let SATELLITE reach one volume, or create volumes under a prefix within a quota.
    Add {
        satellite: String,
        /// One existing volume ...
        #[arg(long, conflicts_with_all = ["prefix", "capacity", "count"], required_unless_present = "prefix")]
        volume: Option<String>,
        /// ... attached read-only.
        #[arg(long, requires = "volume")]
        read_only: bool,
        /// Or: volumes whose names start with this ...
        #[arg(long, requires_all = ["capacity", "count"])]
        prefix: Option<String>,
        /// ... provisioning at most this much in all (e.g. 100GiB) ...
        #[arg(long)]
        capacity: Option<String>,
        /// ... and at most this many volumes.
        #[arg(long)]
        count: Option<u32>,
    },
    /// List grants, with what each prefix uses.
    List {
        #[arg(long)]
        satellite: Option<String>,
    },
    /// Remove one grant of SATELLITE.
    Remove {
        satellite: String,
        #[arg(long, conflicts_with = "prefix", required_unless_present = "prefix")]
        volume: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
    },
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// "3m ago", "-" for never.
fn ago(unix_ms: Option<u64>) -> String {
    let Some(then) = unix_ms else {
        return "-".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let secs = now.saturating_sub(then) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

pub fn run_cluster(
    client: &AdminClient,
    command: &ClusterCommand,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        ClusterCommand::List => {
            let clusters: Vec<ClusterView> = client.get("/v1/clusters")?;
            if json {
                return print_json(&clusters);
            }
            println!(
                "{:<16} {:<10} {:<8} {:>8} {:<10}",
                "NAME", "ROLE", "STATE", "NODES-UP", "LAST-SEEN"
            );
            for cluster in clusters {
                println!(
                    "{:<16} {:<10} {:<8} {:>8} {:<10}",
                    cluster.name,
                    cluster.role,
                    cluster.state,
                    cluster.nodes_up,
                    if cluster.role == "central" {
                        "-".into()
                    } else {
                        ago(cluster.last_seen_unix_ms)
                    }
                );
            }
        }
        ClusterCommand::AddSatellite { name, ttl } => {
            let answer: AddSatelliteResponse = client.post(
                "/v1/clusters",
                &AddSatelliteRequest {
                    name: name.clone(),
                    ttl_seconds: Some(ttl.as_secs().max(1)),
                },
            )?;
            if json {
                return print_json(&answer);
            }
            eprintln!(
                "satellite {name} added; its join token (one use, shown once, expires in {}s):",
                ttl.as_secs()
            );
            println!("{}", answer.token);
        }
        ClusterCommand::AddPeer { name, ttl } => {
            let answer: AddPeerResponse = client.post(
                "/v1/peers",
                &AddPeerRequest {
                    name: name.clone(),
                    ttl_seconds: Some(ttl.as_secs().max(1)),
                },
            )?;
            if json {
                return print_json(&answer);
            }
            eprintln!(
                "DR peer {name} added; its link token (one use, shown once, expires in {}s):",
                ttl.as_secs()
            );
            println!("{}", answer.token);
        }
        ClusterCommand::Link {
            name,
            endpoint,
            token,
            advertise,
            peer_gateway,
        } => {
            let view: PeerView = client.post(
                &format!("/v1/peers/{name}/link"),
                &LinkPeerRequest {
                    endpoint: endpoint.clone(),
                    token: token.clone(),
                    own_endpoint: advertise
                        .clone()
                        .unwrap_or_else(|| client.base().to_string()),
                    peer_gateways: peer_gateway.clone(),
                },
            )?;
            if json {
                return print_json(&view);
            }
            println!(
                "linked with DR peer {name} at {endpoint} (its CA: {})",
                view.ca_hash.as_deref().unwrap_or("-")
            );
        }
        ClusterCommand::Peers => {
            let peers: Vec<PeerView> = client.get("/v1/peers")?;
            if json {
                return print_json(&peers);
            }
            println!(
                "{:<16} {:<8} {:<32} {:<10} CA",
                "NAME", "STATE", "ENDPOINT", "LINKED"
            );
            for peer in peers {
                println!(
                    "{:<16} {:<8} {:<32} {:<10} {}",
                    peer.name,
                    match peer.state {
                        PeerState::Pending => "pending",
                        PeerState::Linked => "linked",
                    },
                    peer.endpoint.as_deref().unwrap_or("-"),
                    ago(peer.linked_unix_ms),
                    peer.ca_hash.as_deref().map_or("-", |hash| &hash[..16])
                );
            }
        }
        ClusterCommand::Remove { name } => {
            client.delete(&format!("/v1/clusters/{name}"))?;
            if json {
                return print_json(&serde_json::json!({"removed": name}));
            }
            println!("satellite {name} removed: its certificate is refused from now on");
        }
    }
    Ok(())
}

pub fn run_grant(client: &AdminClient, command: &GrantCommand, json: bool) -> anyhow::Result<()> {
    match command {
        GrantCommand::Add {
            satellite,
            volume,
            read_only,
            prefix,
            capacity,
            count,
        } => {
            let scope = match (volume, prefix, capacity, count) {
                (Some(volume), ..) => GrantScope::Volume {
                    volume: volume.clone(),
                    read_only: *read_only,
                },
                (None, Some(prefix), Some(capacity), Some(count)) => GrantScope::Prefix {
                    prefix: prefix.clone(),
                    capacity_bytes: parse_size(capacity)?,
                    count: *count,
                },
                _ => anyhow::bail!("give --volume NAME, or --prefix P --capacity SIZE --count N"),
            };
            let grant: GrantRecord = client.post(
                "/v1/grants",
                &AddGrantRequest {
                    satellite: satellite.clone(),
                    scope,
                },
            )?;
            if json {
                return print_json(&grant);
            }
            println!("satellite {satellite}: {} added", grant.scope.describe());
        }
        GrantCommand::List { satellite } => {
            let path = match satellite {
                Some(satellite) => format!("/v1/grants?satellite={satellite}"),
                None => "/v1/grants".into(),
            };
            let grants: Vec<GrantView> = client.get(&path)?;
            if json {
                return print_json(&grants);
            }
            println!(
                "{:<16} {:<24} {:<10} {:>20} {:>10}",
                "SATELLITE", "GRANT", "ACCESS", "CAPACITY", "COUNT"
            );
            for view in grants {
                let (access, capacity, count) = match &view.grant.scope {
                    GrantScope::Volume { read_only, .. } => (
                        if *read_only {
                            "read-only"
                        } else {
                            "read-write"
                        },
                        "-".to_string(),
                        "-".to_string(),
                    ),
                    GrantScope::Prefix {
                        capacity_bytes,
                        count,
                        ..
                    } => (
                        "manage",
                        format!(
                            "{}/{}",
                            format_size(view.used_bytes.unwrap_or(0)),
                            format_size(*capacity_bytes)
                        ),
                        format!("{}/{count}", view.used_count.unwrap_or(0)),
                    ),
                };
                println!(
                    "{:<16} {:<24} {:<10} {:>20} {:>10}",
                    view.grant.satellite,
                    view.grant.scope.id(),
                    access,
                    capacity,
                    count
                );
            }
        }
        GrantCommand::Remove {
            satellite,
            volume,
            prefix,
        } => {
            let id = match (volume, prefix) {
                (Some(volume), _) => format!("volume:{volume}"),
                (None, Some(prefix)) => format!("prefix:{prefix}"),
                (None, None) => anyhow::bail!("give --volume NAME or --prefix P"),
            };
            client.delete(&format!("/v1/grants/{satellite}/{id}"))?;
            if json {
                return print_json(&serde_json::json!({"removed": id, "satellite": satellite}));
            }
            println!("satellite {satellite}: grant {id} removed");
        }
    }
    Ok(())
}
