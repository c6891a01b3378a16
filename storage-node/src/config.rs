//! The storage node's configuration: flags (shared by `tether-node` and
//! `tether daemon node`) resolved into a [`NodeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coord_store::CoordStore;
use tether_common::size::parse_size;

use crate::error::{NodeError, Result};
use crate::security::NodeSecurityConfig;

/// Where the coordination store is.
#[derive(Clone)]
pub enum StoreConfig {
    /// etcd endpoints, `https://host:port` (mutual TLS) or `http://host:port`.
    Etcd(Vec<String>),
    /// A store this process already holds (the one-process dev federation).
    Shared(Arc<dyn CoordStore>),
}

/// Flags of the storage-node daemon.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Cluster this node belongs to.
    #[arg(long, default_value = "central")]
    pub cluster: String,
    /// This node's name, unique in the cluster.
    #[arg(long)]
    pub name: String,
    /// Directory of this node's pool (created if missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// etcd endpoints, comma-separated (https://... for mutual TLS with this node's certificate).
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// Pool capacity (e.g. 100GiB); default: the size of the filesystem holding --data-dir.
    #[arg(long)]
    pub capacity: Option<String>,
    /// How much thin volumes may promise, as a percentage of the capacity:
    /// 100 (the default) promises only what the disk holds; 200 lets the
    /// volumes' sizes add up to twice the capacity (writes then fail with
    /// ENOSPC if they all fill up).
    #[arg(long, default_value = "100%", value_parser = parse_percent)]
    pub overprovision: u32,
    /// Serve Prometheus metrics here (http://ADDR/metrics).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Use the portable thread-pool I/O backend instead of io_uring.
    #[arg(long)]
    pub no_io_uring: bool,
    /// A label for placement, key=value (repeatable), e.g. --label zone=eu-1a.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Do not keep hash lists current during I/O (only to measure what upkeep costs).
    #[arg(long, hide = true)]
    pub no_hash_upkeep: bool,
    /// Where to take node-to-node block streams (replication, Delta Sync, presenting nodes).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub block_listen: String,
    /// TTL of the node's liveness lease, whole seconds (etcd's unit); a dead
    /// master's volumes fail over about this long after it dies.
    #[arg(long, default_value = "2s", value_parser = parse_lease_ttl)]
    pub lease_ttl: Duration,
    /// A replica that does not answer a write this long leaves the in-sync set.
    #[arg(long, default_value = "2s", value_parser = tether_common::size::parse_duration)]
    pub replica_timeout: Duration,
    /// Copy rate limit of each Delta Sync (per sync, not per node), e.g.
    /// 100MiB (per second); default: none.
    #[arg(long)]
    pub sync_rate_limit: Option<String>,
    /// The block address other nodes are told to use (default: the bound
    /// --block-listen address), for NAT or a proxy in front of the node.
    #[arg(long)]
    pub block_advertise: Option<String>,
    /// Where to serve the node's control RPCs (mutual TLS; the registry calls them).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub control_listen: String,
    /// Where this node keeps its certificate and key (default: DATA_DIR/tls).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// The node's `dr-peer` certificate (`tether ca issue --role dr-peer`),
    /// for shipping DR batches to a paired cluster's gateways (default:
    /// DATA_DIR/dr-tls, used when it exists).
    #[arg(long)]
    pub dr_tls_dir: Option<PathBuf>,
    /// The registry's admin API (https://host:port): where the node joins and renews its certificate.
    #[arg(long)]
    pub registry: Option<String>,
    /// File holding the cluster's join token (needed for the first start only).
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// The cluster CA's certificate, to check the registry's when joining.
    #[arg(long)]
    pub trust_ca: Option<PathBuf>,
    /// A host name or IP the node's certificate should also name, so NBD
    /// clients using TLS can verify the node by the address they dial
    /// (repeatable; the host of --block-advertise or --block-listen is
    /// added unless it is a wildcard address).
    #[arg(long = "tls-san", value_name = "HOST")]
    pub tls_sans: Vec<String>,
    /// Block streams without TLS. Insecure: only to measure what TLS costs.
    #[arg(long, hide = true)]
    pub insecure_plaintext_block: bool,
}

/// Everything a storage node needs to run.
#[derive(Clone)]
pub struct NodeConfig {
    pub cluster: String,
    pub node: String,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub capacity_bytes: u64,
    /// Thin volumes may promise this percentage of `capacity_bytes`.
    pub overprovision_percent: u32,
    pub metrics_addr: Option<SocketAddr>,
    pub io_uring: bool,
    pub hash_upkeep: bool,
    /// TTL of the node's liveness lease.
    pub lease_ttl: Duration,
    /// Placement labels (`zone` is the failure domain).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Address of the block server (port 0 picks one).
    pub block_listen: String,
    pub replica_timeout: Duration,
    /// Delta Sync bytes per second per volume (0: unlimited).
    pub sync_rate_limit: u64,
    /// Address of the control RPCs (port 0 picks one).
    pub control_listen: String,
    /// The block address registered for other nodes (default: the bound one).
    pub block_advertise: Option<String>,
    pub security: NodeSecurityConfig,
}

/// Default TTL of the node lease: a dead node's registration, and the locks
/// of the volumes it mastered, vanish this long after its last keep-alive.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);
/// Default time a replica may take to answer before it leaves the in-sync set.
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_secs(2);

impl NodeConfig {
    pub fn from_args(args: NodeArgs) -> Result<Self> {
        let capacity_bytes = match &args.capacity {
            Some(capacity) => parse_size(capacity).map_err(|err| NodeError::Config {
                reason: err.to_string(),
            })?,
            None => {
                std::fs::create_dir_all(&args.data_dir).map_err(|err| NodeError::Config {
                    reason: format!("creating {}: {err}", args.data_dir.display()),
                })?;
                filesystem_size(&args.data_dir)?
            }
        };
        let read = |path: &Option<PathBuf>, what: &str| -> Result<Option<String>> {
            path.as_ref()
                .map(|path| {
                    std::fs::read_to_string(path).map_err(|err| NodeError::Config {
                        reason: format!("{what} {}: {err}", path.display()),
                    })
                })
                .transpose()
        };
        let security = NodeSecurityConfig {
            tls_dir: args
                .tls_dir
                .clone()
                .unwrap_or_else(|| args.data_dir.join("tls")),
            registry: args.registry.clone(),
            join_token: read(&args.join_token_file, "--join-token-file")?,
            trust_pem: read(&args.trust_ca, "--trust-ca")?,
            plaintext_block: args.insecure_plaintext_block,
            dr_tls_dir: Some(
                args.dr_tls_dir
                    .clone()
                    .unwrap_or_else(|| args.data_dir.join("dr-tls")),
            ),
            addresses: certificate_addresses(
                &args.tls_sans,
                args.block_advertise
                    .as_deref()
                    .unwrap_or(&args.block_listen),
            ),
        };
        Ok(Self {
            security,
            control_listen: args.control_listen,
            block_advertise: args.block_advertise,
            cluster: args.cluster,
            node: args.name,
            data_dir: args.data_dir,
            store: StoreConfig::Etcd(args.etcd),
            capacity_bytes,
            overprovision_percent: args.overprovision,
            metrics_addr: args.metrics_addr,
            io_uring: !args.no_io_uring,
            hash_upkeep: !args.no_hash_upkeep,
            lease_ttl: args.lease_ttl,
            labels: args.labels.into_iter().collect(),
            block_listen: args.block_listen,
            replica_timeout: args.replica_timeout,
            sync_rate_limit: match &args.sync_rate_limit {
                Some(limit) => parse_size(limit).map_err(|err| NodeError::Config {
                    reason: format!("--sync-rate-limit: {err}"),
                })?,
                None => 0,
            },
        })
    }
}

/// The addresses the node's certificate names: `--tls-san`s, and the host
/// NBD and block clients most likely dial (that of the block address),
/// unless it is a wildcard that names no host.
fn certificate_addresses(sans: &[String], block_addr: &str) -> Vec<String> {
    let mut addresses = sans.to_vec();
    let host = block_addr
        .rsplit_once(':')
        .map_or(block_addr, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let wildcard = host.is_empty()
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
    if !wildcard && !addresses.iter().any(|address| address == host) {
        addresses.push(host.to_string());
    }
    addresses
}

/// Parses `key=value` (labels and placement constraints).
pub fn parse_label(input: &str) -> std::result::Result<(String, String), String> {
    match input.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok((key.to_string(), value.to_string()))
        }
        _ => Err(format!("{input:?}: expected key=value")),
    }
}

/// Total size of the filesystem holding `path`.
pub fn filesystem_size(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| NodeError::Config {
            reason: format!("{} contains NUL", path.display()),
        })?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(NodeError::Config {
            reason: format!(
                "statvfs {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(stat.f_blocks as u64 * stat.f_frsize as u64)
}

/// `150%` or `150`: a percentage of at least 10.
fn parse_percent(text: &str) -> std::result::Result<u32, String> {
    let number = text.trim().trim_end_matches('%');
    match number.parse::<u32>() {
        Ok(percent) if (10..=10_000).contains(&percent) => Ok(percent),
        _ => Err(format!("{text}: a percentage between 10% and 10000%")),
    }
}

/// A lease TTL etcd can grant as asked: whole seconds, at least one.
fn parse_lease_ttl(text: &str) -> std::result::Result<Duration, String> {
    let ttl = tether_common::size::parse_duration(text).map_err(|err| err.to_string())?;
    coord_store::check_lease_ttl(ttl).map_err(|_| {
        format!(
            "{text}: a lease TTL is a whole number of seconds, at least 1s (etcd grants no other)"
        )
    })?;
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lease_ttls_etcd_cannot_grant_are_refused() {
        assert!(super::parse_lease_ttl("3.9s")
            .unwrap_err()
            .contains("whole number of seconds"));
        assert!(super::parse_lease_ttl("500ms").is_err());
        assert_eq!(
            super::parse_lease_ttl("3s").unwrap(),
            std::time::Duration::from_secs(3)
        );
    }
}
