//! The node's certificate: made by joining (its own key, a CSR and the
//! cluster's join token sent to the registry; the key never leaves the
//! node), kept in `--tls-dir`, and renewed after two thirds of its lifetime
//! by asking the registry with the current certificate. A renewal swaps the
//! certificate under every TLS endpoint of the node without closing a
//! connection, so I/O never notices.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_proto::admin::{CertificateResponse, JoinRequest, RenewRequest};
use tether_tls::{Credentials, Identity, KeyAndRequest, Role, TlsContext};

use crate::error::{NodeError, Result};

/// How long a node keeps trying to reach the registry to join.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);
const RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct NodeSecurityConfig {
    /// Holds `tls.crt`, `tls.key` (0600) and `ca.crt`.
    pub tls_dir: PathBuf,
    /// The registry's admin API (`https://host:port`), for joining and renewing.
    pub registry: Option<String>,
    /// The join token (needed only when the node has no certificate yet).
    pub join_token: Option<String>,
    /// The CA certificate the registry's must chain to (PEM), for joining.
    pub trust_pem: Option<String>,
    /// Block streams without TLS: only to measure what TLS costs.
    pub plaintext_block: bool,
    /// Holds the node's `dr-peer` credential, if it ships DR batches.
    pub dr_tls_dir: Option<PathBuf>,
    /// Host names and IPs the certificate should name besides the node's
    /// identity: the addresses NBD clients dial to reach this node.
    pub addresses: Vec<String>,
}

impl NodeSecurityConfig {
    /// The asked-for addresses `credentials` does not name yet.
    fn missing_addresses(&self, credentials: &Credentials) -> Vec<String> {
        let named = credentials.alternative_names().unwrap_or_default();
        self.addresses
            .iter()
            .filter(|address| !named.iter().any(|name| name.eq_ignore_ascii_case(address)))
            .cloned()
            .collect()
    }
}

/// The node's `dr-peer` credential from `dr_tls_dir`, if there is one
/// naming this node of this cluster.
pub fn dr_credentials(
    cluster: &str,
    node: &str,
    config: &NodeSecurityConfig,
) -> Result<Option<Arc<TlsContext>>> {
    let Some(dir) = &config.dr_tls_dir else {
        return Ok(None);
    };
    if !dir.join("tls.crt").exists() {
        return Ok(None);
    }
    let credentials = Credentials::load(dir)?;
    let wanted = Identity::new(cluster, Role::DrPeer, node);
    if credentials.identity != wanted {
        return Err(NodeError::Config {
            reason: format!(
                "{} holds the certificate of {}, not of {wanted}",
                dir.display(),
                credentials.identity
            ),
        });
    }
    tracing::info!(dr_tls_dir = %dir.display(), "DR shipping credential loaded");
    Ok(Some(TlsContext::new(&credentials)?))
}

/// The node's credentials: from `tls_dir` when they name this node and are
/// valid, otherwise by joining through the registry.
pub async fn establish(
    cluster: &str,
    node: &str,
    config: &NodeSecurityConfig,
) -> Result<Arc<TlsContext>> {
    let identity = Identity::new(cluster, Role::Node, node);
    match Credentials::load(&config.tls_dir) {
        Ok(credentials)
            if credentials.identity == identity
                && config
                    .trust_pem
                    .as_ref()
                    .is_some_and(|trust| trust.trim() != credentials.trust_pem.trim()) =>
        {
            tracing::warn!(
                "this node's certificate is from another CA than --trust-ca names; joining again"
            );
        }
        Ok(credentials) if credentials.identity == identity => {
            let (_, not_after) = credentials.validity()?;
            if not_after > SystemTime::now() {
                tracing::info!(tls_dir = %config.tls_dir.display(), "using this node's certificate");
                return Ok(TlsContext::new(&credentials)?);
            }
            tracing::warn!("this node's certificate has expired; joining again");
        }
        Ok(credentials) => {
            return Err(NodeError::Config {
                reason: format!(
                    "{} holds the certificate of {}, not of {identity}",
                    config.tls_dir.display(),
                    credentials.identity
                ),
            })
        }
        Err(_) => {}
    }
    let credentials = join(&identity, config).await?;
    credentials.save(&config.tls_dir)?;
    Ok(TlsContext::new(&credentials)?)
}

async fn join(identity: &Identity, config: &NodeSecurityConfig) -> Result<Credentials> {
    let missing = |what: &str| NodeError::Config {
        reason: format!(
            "this node has no certificate in {} and cannot join without {what}",
            config.tls_dir.display()
        ),
    };
    let registry = config
        .registry
        .clone()
        .ok_or_else(|| missing("--registry"))?;
    let token = config
        .join_token
        .clone()
        .ok_or_else(|| missing("--join-token-file"))?;
    let trust_pem = config
        .trust_pem
        .clone()
        .ok_or_else(|| missing("--trust-ca"))?;
    let request = KeyAndRequest::new(identity)?;
    let client = tether_tls::anonymous_client_config(&trust_pem)?;
    let body = JoinRequest {
        node: identity.name.clone(),
        token,
        csr_pem: request.csr_pem,
        addresses: config.addresses.clone(),
    };
    let started = std::time::Instant::now();
    let answer: CertificateResponse = loop {
        match tether_tls::client::post_json(&registry, "/v1/join", client.clone(), &body).await {
            Ok(answer) => break answer,
            // The registry may still be starting: keep trying a while, unless it refused us.
            Err(tether_tls::client::CallError::Unreachable(reason))
                if started.elapsed() < JOIN_PATIENCE =>
            {
                tracing::debug!(%reason, "registry not reachable yet");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(err) => {
                return Err(NodeError::Config {
                    reason: format!("joining the cluster through {registry}: {err}"),
                })
            }
        }
    };
    tracing::info!(registry = %registry, "joined the cluster; got this node's certificate");
    Ok(Credentials {
        identity: identity.clone(),
        chain_pem: answer.chain_pem,
        key_pem: request.key_pem,
        trust_pem: answer.trust_pem,
    })
}

/// Renews the certificate after two thirds of its lifetime, for as long as
/// the node runs; a failed attempt is retried, logged, until it expires.
pub async fn renew_loop(tls: Arc<TlsContext>, config: NodeSecurityConfig) {
    let Some(registry) = config.registry.clone() else {
        tracing::warn!("no --registry: this node's certificate will not be renewed");
        return;
    };
    let due = || {
        Credentials::load(&config.tls_dir).and_then(|credentials| {
            let missing = config.missing_addresses(&credentials);
            if missing.is_empty() {
                credentials.renew_at()
            } else {
                // Asked to be valid for more addresses (a new --tls-san):
                // renew now rather than at two thirds of the lifetime.
                tracing::info!(?missing, "this node's certificate does not name every address asked for; renewing it now");
                Ok(SystemTime::now())
            }
        })
        .map_err(|err| err.to_string())
    };
    let renew = || {
        let (tls, config, registry) = (tls.clone(), config.clone(), registry.clone());
        async move {
            renew_once(&tls, &config, &registry)
                .await
                .map_err(|err| err.to_string())
        }
    };
    tether_tls::renewal::keep_renewed(tls.clone(), "node", due, renew).await;
}

async fn renew_once(
    tls: &Arc<TlsContext>,
    config: &NodeSecurityConfig,
    registry: &str,
) -> Result<()> {
    let identity = tls.identity().clone();
    let request = KeyAndRequest::new(&identity)?;
    let body = RenewRequest {
        csr_pem: request.csr_pem,
        addresses: config.addresses.clone(),
    };
    let answer: CertificateResponse =
        tether_tls::client::post_json(registry, "/v1/renew", tls.client_config(), &body)
            .await
            .map_err(|err| NodeError::Config {
                reason: format!("renewing through {registry}: {err}"),
            })?;
    let credentials = Credentials {
        identity,
        chain_pem: answer.chain_pem,
        key_pem: request.key_pem,
        trust_pem: answer.trust_pem,
    };
    // On disk first: a node restarted after this uses the new certificate.
    credentials.save(&config.tls_dir)?;
    tls.replace(&credentials)?;
    Ok(())
}
