//! The cluster's trust, held by the control plane: the CA (made on first
//! start in the state directory, or the operator's), the join tokens nodes
//! present with their first CSR (`join_tokens`: one-time, expiring, stored
//! as hashes), the registry's own certificate (renewed in memory), and who
//! may call what on the admin API:
//!
//! | operation (JSON path; gRPC method) | caller ([`Access`]) |
//! | --- | --- |
//! | `POST /v1/join`, `POST /v1/satellites/join` (`JoinSatellite`), `GET /v1/openapi.json` | anyone: a join brings its unused token instead of a certificate |
//! | `POST /v1/renew` (`Renew`) | a node or satellite of this cluster (its current certificate) |
//! | volumes but verify, a satellite's own attachments and presenting | an admin, or a satellite within its grants |
//! | everything else | an admin of this cluster |
//!
//! Every certificate issued is logged with its holder, the peer that asked
//! and its expiry.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_proto::admin::{CertificateResponse, JoinRequest, RenewRequest};
use tether_tls::http::Peer;
use tether_tls::{CertificateAuthority, Identity, Role, TlsContext};

use crate::RegistryError;

pub const CA_DIR: &str = "ca";

/// Where the control plane's trust comes from.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Holds `ca/` (when no operator CA is given).
    pub state_dir: PathBuf,
    /// An operator's CA instead: issuing cert, its key, and the chain above it.
    pub operator_ca: Option<OperatorCa>,
    /// Names (DNS or IP) clients reach the admin API by.
    pub admin_names: Vec<String>,
    /// Lifetime of the certificates the CA issues.
    pub cert_lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct OperatorCa {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub chain: Option<PathBuf>,
}

pub struct Security {
    pub cluster: String,
    pub ca: CertificateAuthority,
    /// The registry's own certificate: the admin API's server side, and
    /// its client side towards etcd and the nodes.
    pub tls: Arc<TlsContext>,
    config: SecurityConfig,
}

/// Loads the CA (making one on first start) and the join token (making one
/// too), and issues the registry its certificate.
pub fn open(cluster: &str, config: SecurityConfig) -> Result<Arc<Security>, RegistryError> {
    tether_common::protected::mark(&config.state_dir, "the Tether registry's state").map_err(
        |source| RegistryError::State {
            path: config.state_dir.clone(),
            source,
        },
    )?;
    let ca = match &config.operator_ca {
        Some(operator) => CertificateAuthority::from_files(
            &operator.cert,
            &operator.key,
            operator.chain.as_deref(),
        )?,
        None => CertificateAuthority::load_or_create(&config.state_dir.join(CA_DIR), cluster)?,
    };
    let credentials = ca.issue_credentials(
        &registry_identity(cluster),
        &config.admin_names,
        config.cert_lifetime,
    )?;
    Ok(Arc::new(Security {
        cluster: cluster.to_string(),
        tls: TlsContext::new(&credentials)?,
        ca,
        config,
    }))
}

pub fn registry_identity(cluster: &str) -> Identity {
    Identity::new(cluster, Role::Registry, "registry")
}

impl Security {
    /// Renews the registry's own certificate (in memory) after two thirds
    /// of its lifetime, for as long as the registry runs.
    pub async fn renew_own_certificate(self: Arc<Self>) {
        loop {
            let now = SystemTime::now();
            let not_after = self.tls.not_after();
            let left = not_after.duration_since(now).unwrap_or(Duration::ZERO);
            tokio::time::sleep((left * 2 / 3).max(Duration::from_secs(1))).await;
            let renewed = self.ca.issue_credentials(
                &registry_identity(&self.cluster),
                &self.config.admin_names,
                self.config.cert_lifetime,
            );
            match renewed.map(|credentials| self.tls.replace(&credentials)) {
                Ok(Ok(())) => tracing::info!("renewed the registry's certificate"),
                Ok(Err(err)) => {
                    tracing::error!(error = %err, "renewing the registry's certificate failed")
                }
                Err(err) => {
                    tracing::error!(error = %err, "renewing the registry's certificate failed")
                }
            }
        }
    }

    /// Signs a CSR's key for `identity`: the answer to join and renew.
    fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        addresses: &[String],
    ) -> Result<CertificateResponse, RegistryError> {
        let addresses =
            tether_tls::certificate_addresses(addresses).map_err(|err| RegistryError::Invalid {
                field: "addresses",
                reason: err.to_string(),
            })?;
        let chain_pem =
            self.ca
                .sign_request(csr_pem, identity, &addresses, self.config.cert_lifetime)?;
        Ok(CertificateResponse {
            chain_pem,
            trust_pem: self.ca.trust_pem().to_string(),
        })
    }

    /// Refuses a caller that is not one of `roles` of this cluster, with a
    /// log line naming who it was and what it asked for.
    pub fn require(
        &self,
        peer: &Peer,
        roles: &[Role],
        what: &str,
    ) -> Result<Identity, RegistryError> {
        let refused = match &peer.identity {
            None => RegistryError::Unauthenticated { what: what.into() },
            Some(identity) if identity.cluster != self.cluster => RegistryError::Forbidden {
                identity: identity.to_string(),
                what: what.into(),
            },
            Some(identity) if !roles.contains(&identity.role) => RegistryError::Forbidden {
                identity: identity.to_string(),
                what: what.into(),
            },
            Some(identity) => return Ok(identity.clone()),
        };
        tracing::warn!(peer = %peer.addr, identity = ?peer.identity.as_ref().map(Identity::uri), request = what, reason = %refused, "refused an admin API request");
        Err(refused)
    }
}

/// Who may call an operation; both front ends (JSON and gRPC) name one
/// per operation and admit the caller with [`admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No certificate needed: a join or a DR peer's accept (its token
    /// stands in for the certificate the caller has yet to get), the
    /// OpenAPI document, the CA certificate.
    Open,
    /// Renewal: a node or satellite of this cluster.
    Holder,
    /// Volumes (not verify) and a satellite's own attachments: an admin,
    /// or a satellite within its grants.
    AdminOrSatellite,
    /// A gateway of this cluster: creating a DR secondary.
    Gateway,
    /// Everything else.
    Admin,
}

impl Access {
    fn roles(self) -> &'static [Role] {
        match self {
            Access::Open => &[],
            Access::Holder => &[Role::Node, Role::Satellite],
            Access::AdminOrSatellite => &[Role::Admin, Role::Satellite],
            Access::Gateway => &[Role::Gateway],
            Access::Admin => &[Role::Admin],
        }
    }

    /// The access a JSON API path needs.
    pub fn of_path(path: &str) -> Access {
        let volumes = (path == "/v1/volumes" || path.starts_with("/v1/volumes/"))
            && !path.ends_with("/verify");
        match path {
            "/v1/join"
            | "/v1/satellites/join"
            | "/v1/openapi.json"
            | "/v1/ca"
            | "/v1/peers/accept" => Access::Open,
            "/v1/renew" => Access::Holder,
            "/v1/dr/secondaries" => Access::Gateway,
            _ if volumes || path.starts_with("/v1/satellites/") => Access::AdminOrSatellite,
            _ => Access::Admin,
        }
    }
}

/// Admits `peer` to an operation needing `access` (`what` names it in log
/// lines and errors): the caller's role, and for a satellite, that it is
/// not removed and what its grants are (the [`Caller`](crate::grants::Caller)
/// the operations scope their answers by). A token operation admits anyone,
/// with no caller: it checks its token itself.
pub async fn admit(
    state: &crate::api::AppState,
    peer: &Peer,
    access: Access,
    what: &str,
) -> Result<Option<crate::grants::Caller>, RegistryError> {
    if access == Access::Open {
        return Ok(None);
    }
    let identity = state.security.require(peer, access.roles(), what)?;
    match identity.role {
        Role::Satellite => satellite_caller(state, &identity.name)
            .await
            .map(Some)
            .inspect_err(|refused| {
                tracing::warn!(peer = %peer.addr, identity = %identity.uri(), request = %what, reason = %refused, "refused an admin API request");
            }),
        _ => Ok(Some(crate::grants::Caller::Admin)),
    }
}

/// Middleware of the JSON API: admits the caller to the path's [`Access`].
pub async fn authorize(
    axum::extract::State(state): axum::extract::State<crate::api::AppState>,
    axum::Extension(peer): axum::Extension<Peer>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = request.uri().path().to_string();
    let what = format!("{} {path}", request.method());
    match admit(&state, &peer, Access::of_path(&path), &what).await {
        Ok(caller) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.run(request).await
        }
        Err(refused) => refused.into_response(),
    }
}

/// A satellite's standing: joined (not removed), and its grants now.
pub(crate) async fn satellite_caller(
    state: &crate::api::AppState,
    name: &str,
) -> Result<crate::grants::Caller, RegistryError> {
    let store = state.store.as_ref();
    let Some((record, revision)) = crate::federation::record(store, &state.cluster, name).await?
    else {
        return Err(RegistryError::ClusterNotFound { name: name.into() });
    };
    if record.state == tether_proto::federation::ClusterState::Revoked {
        return Err(RegistryError::SatelliteRevoked { name: name.into() });
    }
    crate::federation::seen(store, &state.cluster, &record, revision).await;
    Ok(crate::grants::Caller::Satellite {
        name: name.into(),
        grants: crate::grants::list(store, &state.cluster, Some(name)).await?,
    })
}

/// `POST /v1/join`: checks the token, signs the CSR for `node`.
pub async fn join(
    state: crate::api::AppState,
    peer: Peer,
    request: JoinRequest,
) -> Result<CertificateResponse, RegistryError> {
    let security = &state.security;
    let valid = !request.node.is_empty()
        && request.node.len() <= 63
        && request
            .node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !request.node.starts_with('-');
    if !valid {
        return Err(RegistryError::Invalid {
            field: "node",
            reason: format!(
                "{:?} is not a valid node name (lowercase letters, digits and -)",
                request.node
            ),
        });
    }
    // A live node's name is never issued again: a token holder must not
    // become a second node-1 while node-1 serves.
    let node_key = tether_proto::keys::ClusterKeys::new(&security.cluster)
        .key(tether_proto::keys::Kind::Nodes, &request.node);
    if state.store.get(&node_key).await?.is_some() {
        tracing::warn!(peer = %peer.addr, node = %request.node, "refused a join: that node is up");
        return Err(RegistryError::NodeNameInUse { node: request.node });
    }
    if let Err(err) = crate::join_tokens::redeem(
        state.store.as_ref(),
        &security.cluster,
        &request.token,
        &request.node,
    )
    .await
    {
        tracing::warn!(peer = %peer.addr, node = %request.node, error = %err, "refused a join");
        return Err(err);
    }
    let identity = Identity::new(&security.cluster, Role::Node, &request.node);
    let answer = security.sign(&request.csr_pem, &identity, &request.addresses)?;
    tracing::info!(peer = %peer.addr, identity = %identity.uri(), addresses = ?request.addresses, lifetime_secs = security.config.cert_lifetime.as_secs(), "node joined: issued a certificate");
    Ok(answer)
}

/// `POST /v1/renew`: a new certificate for the caller's own identity.
pub async fn renew(
    state: crate::api::AppState,
    peer: Peer,
    request: RenewRequest,
) -> Result<CertificateResponse, RegistryError> {
    let security = &state.security;
    let identity = security.require(&peer, &[Role::Node, Role::Satellite], "POST /v1/renew")?;
    if identity.role == Role::Satellite {
        // Addresses are for nodes NBD clients dial; a satellite asks for none.
        let answer = security.sign(&request.csr_pem, &identity, &[])?;
        crate::federation::joined(
            state.store.as_ref(),
            &security.cluster,
            &identity.name,
            not_after_unix_ms(&answer.chain_pem),
        )
        .await?;
        tracing::info!(peer = %peer.addr, identity = %identity.uri(), "renewed a satellite's certificate: issued a certificate");
        metrics::counter!("tether_certificates_renewed_total", "role" => "satellite").increment(1);
        return Ok(answer);
    }
    let answer = security.sign(&request.csr_pem, &identity, &request.addresses)?;
    tracing::info!(peer = %peer.addr, identity = %identity.uri(), addresses = ?request.addresses, lifetime_secs = security.config.cert_lifetime.as_secs(), "renewed a node's certificate: issued a certificate");
    metrics::counter!("tether_certificates_renewed_total", "role" => "node").increment(1);
    Ok(answer)
}

/// `POST /v1/satellites/join`: checks the satellite's token, signs its CSR.
pub async fn join_satellite(
    state: crate::api::AppState,
    peer: Peer,
    request: tether_proto::federation::SatelliteJoinRequest,
) -> Result<CertificateResponse, RegistryError> {
    let security = &state.security;
    crate::federation::check_name(&request.name)?;
    let store = state.store.as_ref();
    if let Err(err) =
        crate::federation::redeem_join(store, &security.cluster, &request.name, &request.token)
            .await
    {
        tracing::warn!(peer = %peer.addr, satellite = %request.name, error = %err, "refused a satellite join");
        return Err(err);
    }
    let identity = Identity::new(&security.cluster, Role::Satellite, &request.name);
    let answer = security.sign(&request.csr_pem, &identity, &[])?;
    crate::federation::joined(
        store,
        &security.cluster,
        &request.name,
        not_after_unix_ms(&answer.chain_pem),
    )
    .await?;
    tracing::info!(peer = %peer.addr, identity = %identity.uri(), lifetime_secs = security.config.cert_lifetime.as_secs(), "satellite joined: issued a certificate");
    Ok(answer)
}

/// When the leaf of `chain_pem` expires (0 if it cannot be read: the
/// record is then only informational).
fn not_after_unix_ms(chain_pem: &str) -> u64 {
    tether_tls::leaf_validity(chain_pem)
        .ok()
        .and_then(|(_, not_after)| not_after.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_millis() as u64)
}
