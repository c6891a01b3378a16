//! The rustls side: one [`TlsContext`] per holder, giving server and client
//! configs that share a certificate slot. Renewal puts new credentials in
//! the slot; handshakes from then on use them, and connections already up
//! carry on untouched — I/O is never interrupted by a renewal.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::{Credentials, Identity, TlsError};

/// Whether a server demands a client certificate in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate, no connection (block streams, node RPCs).
    Required,
    /// A certificate is verified if sent; requests without one are refused
    /// per route by the application (the admin API's join endpoint takes a
    /// join token instead).
    Optional,
}

pub struct TlsContext {
    identity: Identity,
    roots: Arc<RootCertStore>,
    current: RwLock<Arc<CertifiedKey>>,
    not_after: RwLock<SystemTime>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsContext({})", self.identity.uri())
    }
}

fn certified_key(credentials: &Credentials) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = credentials.certificate_chain()?;
    let key = credentials.private_key()?;
    let signer = crate::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|err| TlsError::Config {
            identity: credentials.identity.uri(),
            reason: format!("private key: {err}"),
        })?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

impl TlsContext {
    pub fn new(credentials: &Credentials) -> Result<Arc<Self>, TlsError> {
        let mut roots = RootCertStore::empty();
        for anchor in credentials.trust_anchors()? {
            roots.add(anchor).map_err(|err| TlsError::Config {
                identity: credentials.identity.uri(),
                reason: format!("trust anchor: {err}"),
            })?;
        }
        let (_, not_after) = credentials.validity()?;
        Ok(Arc::new(Self {
            identity: credentials.identity.clone(),
            roots: Arc::new(roots),
            current: RwLock::new(certified_key(credentials)?),
            not_after: RwLock::new(not_after),
        }))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// When the certificate in use expires.
    pub fn not_after(&self) -> SystemTime {
        *self.not_after.read().unwrap()
    }

    /// Puts renewed credentials in use for every handshake from now on.
    pub fn replace(&self, credentials: &Credentials) -> Result<(), TlsError> {
        if credentials.identity != self.identity {
            return Err(TlsError::Config {
                identity: self.identity.uri(),
                reason: format!("renewal names {}", credentials.identity.uri()),
            });
        }
        let key = certified_key(credentials)?;
        let (_, not_after) = credentials.validity()?;
        *self.current.write().unwrap() = key;
        *self.not_after.write().unwrap() = not_after;
        Ok(())
    }

    fn resolver(self: &Arc<Self>) -> Arc<Resolver> {
        Arc::new(Resolver(self.clone()))
    }

    /// For the HTTP endpoints (admin API, control RPCs, block streams).
    pub fn server_config(self: &Arc<Self>, auth: ClientAuth) -> Arc<ServerConfig> {
        self.server_config_with_alpn(auth, vec![b"h2".to_vec(), b"http/1.1".to_vec()])
    }

    pub fn server_config_with_alpn(
        self: &Arc<Self>,
        auth: ClientAuth,
        alpn: Vec<Vec<u8>>,
    ) -> Arc<ServerConfig> {
        let builder =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crate::provider());
        let verifier = match auth {
            ClientAuth::Required => builder.build(),
            ClientAuth::Optional => builder.allow_unauthenticated().build(),
        }
        .expect("a non-empty root store makes a verifier");
        self.server_config_verified_by(verifier, alpn)
    }

    /// A server config presenting this holder's certificate, its clients
    /// checked by `verifier`.
    fn server_config_verified_by(
        self: &Arc<Self>,
        verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
        alpn: Vec<Vec<u8>>,
    ) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.resolver());
        config.alpn_protocols = alpn;
        Arc::new(config)
    }

    /// [`server_config_with_alpn`](Self::server_config_with_alpn) that also
    /// takes the `dr-peer` certificates of the peers in `peers` (a DR
    /// gateway's listener); a client certificate is required.
    pub fn server_config_with_peers(
        self: &Arc<Self>,
        alpn: Vec<Vec<u8>>,
        peers: Arc<crate::PeerTrust>,
    ) -> Arc<ServerConfig> {
        let own =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crate::provider())
                .build()
                .expect("a non-empty root store makes a verifier");
        let verifier = Arc::new(crate::peer_trust::WithPeers { own, peers });
        self.server_config_verified_by(verifier, alpn)
    }

    pub fn client_config(self: &Arc<Self>) -> Arc<ClientConfig> {
        Arc::new(self.client_config_with_alpn(vec![]))
    }

    pub fn client_config_with_alpn(self: &Arc<Self>, alpn: Vec<Vec<u8>>) -> ClientConfig {
        self.client_config_with_roots(self.roots.clone(), alpn)
    }

    /// A client config presenting this holder's certificate to servers
    /// that chain to `roots`.
    fn client_config_with_roots(
        self: &Arc<Self>,
        roots: Arc<RootCertStore>,
        alpn: Vec<Vec<u8>>,
    ) -> ClientConfig {
        let mut config = ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_client_cert_resolver(self.resolver());
        config.alpn_protocols = alpn;
        config
    }

    /// A client config presenting this holder's certificate to servers
    /// whose certificates chain to `server_ca_pem` instead of this
    /// cluster's CA: a DR shipper dialling the peer cluster's gateways.
    pub fn client_config_trusting(
        self: &Arc<Self>,
        server_ca_pem: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<ClientConfig, TlsError> {
        let mut roots = RootCertStore::empty();
        for anchor in crate::credentials::certificates(
            server_ca_pem,
            std::path::Path::new("the DR peer's CA"),
        )? {
            roots.add(anchor).map_err(|err| TlsError::Config {
                identity: self.identity.uri(),
                reason: format!("the DR peer's CA: {err}"),
            })?;
        }
        Ok(self.client_config_with_roots(Arc::new(roots), alpn))
    }

    /// Opens TLS over `stream` to the holder of `server`, checking the
    /// server's certificate names it (not just that our CA signed it).
    pub async fn connect(
        self: &Arc<Self>,
        stream: TcpStream,
        server: &Identity,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(server.dns_name())
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
        tokio_rustls::TlsConnector::from(self.client_config())
            .connect(name, stream)
            .await
    }

    /// Opens TLS to an address given as host or IP (the admin API, etcd).
    pub async fn connect_host(
        self: &Arc<Self>,
        stream: TcpStream,
        host: &str,
        alpn: Vec<Vec<u8>>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string())
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?,
        };
        tokio_rustls::TlsConnector::from(Arc::new(self.client_config_with_alpn(alpn)))
            .connect(name, stream)
            .await
    }

    /// Accepts TLS on `stream`; the peer's identity, if it sent a certificate.
    pub async fn accept(
        config: Arc<ServerConfig>,
        stream: TcpStream,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<Identity>), String> {
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await
            .map_err(|err| err.to_string())?;
        let identity =
            peer_identity(tls.get_ref().1.peer_certificates()).map_err(|err| err.to_string())?;
        Ok((tls, identity))
    }
}

/// A client config that trusts `trust_pem` and has no certificate of its
/// own: what a node uses to join, before it has one.
pub fn anonymous_client_config(trust_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for anchor in crate::credentials::certificates(trust_pem, std::path::Path::new("--trust-ca"))? {
        roots.add(anchor).map_err(|err| TlsError::Config {
            identity: "a joining node".into(),
            reason: format!("trust anchor: {err}"),
        })?;
    }
    Ok(Arc::new(
        ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The identity in the peer's (already verified) leaf certificate.
pub fn peer_identity(
    certificates: Option<&[CertificateDer<'static>]>,
) -> Result<Option<Identity>, TlsError> {
    match certificates.and_then(|certs| certs.first()) {
        None => Ok(None),
        Some(leaf) => Identity::from_certificate(leaf).map(Some),
    }
}

#[derive(Debug)]
struct Resolver(Arc<TlsContext>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.read().unwrap().clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.read().unwrap().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
