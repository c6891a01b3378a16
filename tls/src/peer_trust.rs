//! Trust of DR peers' CAs, for their `dr-peer` certificates only. A server
//! (a gateway) verifies a client certificate against its own CA first;
//! only a certificate that fails that, names role `dr-peer` and a cluster
//! this one is linked with, is verified against that cluster's CA. So a
//! peer's CA can vouch for nothing but its own DR gateways: not for a
//! satellite, an admin, or anything claiming to be of this cluster.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::{Identity, Role, TlsError};

/// The linked peers' CAs, by cluster name; replaced whole when the links
/// change, and read at every handshake.
#[derive(Default)]
pub struct PeerTrust {
    peers: RwLock<HashMap<String, Arc<dyn ClientCertVerifier>>>,
}

impl std::fmt::Debug for PeerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.peers.read().unwrap().keys().cloned().collect();
        write!(f, "PeerTrust({names:?})")
    }
}

impl PeerTrust {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Trusts exactly these peers from now on: (cluster, CA certificate PEM).
    pub fn set(&self, peers: &[(String, String)]) -> Result<(), TlsError> {
        let mut verifiers: HashMap<String, Arc<dyn ClientCertVerifier>> = HashMap::new();
        for (cluster, ca_pem) in peers {
            let mut roots = RootCertStore::empty();
            for block in pem::parse_many(ca_pem).map_err(|_| TlsError::BadPem {
                path: format!("DR peer {cluster}'s CA").into(),
                what: "a PEM certificate",
            })? {
                roots
                    .add(CertificateDer::from(block.contents().to_vec()))
                    .map_err(|err| TlsError::Config {
                        identity: format!("DR peer {cluster}"),
                        reason: format!("its CA: {err}"),
                    })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider())
                    .build()
                    .map_err(|err| TlsError::Config {
                        identity: format!("DR peer {cluster}"),
                        reason: format!("its CA: {err}"),
                    })?;
            verifiers.insert(cluster.clone(), verifier);
        }
        *self.peers.write().unwrap() = verifiers;
        Ok(())
    }

    fn verifier(&self, cluster: &str) -> Option<Arc<dyn ClientCertVerifier>> {
        self.peers.read().unwrap().get(cluster).cloned()
    }
}

/// A client verifier: this cluster's CA, then a linked peer's for its
/// `dr-peer` certificates.
#[derive(Debug)]
pub(crate) struct WithPeers {
    pub(crate) own: Arc<dyn ClientCertVerifier>,
    pub(crate) peers: Arc<PeerTrust>,
}

impl ClientCertVerifier for WithPeers {
    fn offer_client_auth(&self) -> bool {
        self.own.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.own.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.own.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let own = match self.own.verify_client_cert(end_entity, intermediates, now) {
            Ok(verified) => return Ok(verified),
            Err(err) => err,
        };
        let Ok(identity) = Identity::from_certificate(end_entity.as_ref()) else {
            return Err(own);
        };
        if identity.role != Role::DrPeer {
            return Err(own);
        }
        match self.peers.verifier(&identity.cluster) {
            Some(peer) => peer.verify_client_cert(end_entity, intermediates, now),
            None => Err(own),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.own.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.own.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.own.supported_verify_schemes()
    }
}
