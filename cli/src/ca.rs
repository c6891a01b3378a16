//! `tether ca …`: the cluster's CA, used where the control plane's state
//! is: make it before anything else exists (`init`), and issue credentials
//! from it (`issue`).

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum CaCommand {
    /// Make the cluster's CA in STATE_DIR/ca (or check the one there), as
    /// the registry does on its first start: for installs where the CA must
    /// exist before the registry does (etcd's certificate, a Kubernetes
    /// Secret for the chart). Prints where ca.crt and ca.key are.
    Init {
        #[arg(long)]
        state_dir: PathBuf,
        #[arg(long, default_value = "central")]
        cluster: String,
    },
    /// Issue a credential (tls.crt, tls.key at 0600, ca.crt) into --out,
    /// e.g. an admin's for `tether --credentials DIR`; a client's (for NBD
    /// over TLS) in the files qemu and libnbd read: ca-cert.pem,
    /// client-cert.pem, client-key.pem.
    Issue {
        /// The registry's --state-dir (its CA is in state-dir/ca) ...
        #[arg(long, required_unless_present = "ca_cert")]
        state_dir: Option<PathBuf>,
        /// ... or the operator's CA certificate and key.
        #[arg(long, requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        #[arg(long, requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        #[arg(long, requires = "ca_cert")]
        ca_chain: Option<PathBuf>,
        #[arg(long, default_value = "central")]
        cluster: String,
        /// admin, node, gateway, dr-peer, store (etcd's server certificate),
        /// or client (an NBD consumer).
        #[arg(long, default_value = "admin")]
        role: String,
        /// A host name or IP the certificate is also valid for (repeatable;
        /// what clients dial to reach a gateway or node).
        #[arg(long = "san", value_name = "HOST")]
        sans: Vec<String>,
        /// Who holds it (an operator's name, or a node's).
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "365d", value_parser = tether_common::size::parse_duration)]
        lifetime: std::time::Duration,
    },
}

pub fn run(command: &CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { state_dir, cluster } => {
            let dir = state_dir.join(cluster_registry::security::CA_DIR);
            tether_tls::CertificateAuthority::load_or_create(&dir, cluster)?;
            println!("CA of cluster {cluster}: {}", dir.join("ca.crt").display());
            println!("its key (keep it secret): {}", dir.join("ca.key").display());
            Ok(())
        }
        CaCommand::Issue {
            state_dir,
            ca_cert,
            ca_key,
            ca_chain,
            cluster,
            role,
            sans,
            name,
            out,
            lifetime,
        } => {
            use tether_tls::{CertificateAuthority, Identity, Role};
            let role = match role.as_str() {
                "admin" => Role::Admin,
                "node" => Role::Node,
                "client" => Role::Client,
                "gateway" => Role::Gateway,
                "dr-peer" => Role::DrPeer,
                "store" => Role::Store,
                other => anyhow::bail!(
                    "--role {other}: issue admin, node, gateway, dr-peer, store or client credentials"
                ),
            };
            let ca = match (ca_cert, ca_key, state_dir) {
                (Some(cert), Some(key), _) => {
                    CertificateAuthority::from_files(cert, key, ca_chain.as_deref())?
                }
                (_, _, Some(state_dir)) => {
                    let dir = state_dir.join(cluster_registry::security::CA_DIR);
                    anyhow::ensure!(
                        dir.join("ca.key").exists(),
                        "no CA in {} (is --state-dir the registry's?)",
                        dir.display()
                    );
                    CertificateAuthority::load_or_create(&dir, cluster)?
                }
                _ => anyhow::bail!("pass --state-dir, or --ca-cert and --ca-key"),
            };
            let identity = Identity::new(cluster, role, name);
            let sans = tether_tls::certificate_addresses(sans)?;
            let credentials = ca.issue_credentials(&identity, &sans, *lifetime)?;
            match role {
                Role::Client => credentials.save_for_nbd_client(out)?,
                _ => credentials.save(out)?,
            }
            println!(
                "issued {} to {} (valid {} days)",
                identity.uri(),
                out.display(),
                lifetime.as_secs() / 86400
            );
            Ok(())
        }
    }
}
