//! Tether's trust: the internal certificate authority (rcgen), the
//! certificates it issues — each names a cluster, a role and a name — and the
//! rustls configurations every endpoint uses, with a certificate that can be
//! replaced while connections stay up (renewal without interrupting I/O).
//!
//! Read first: [`Identity`] (what a certificate says), [`CertificateAuthority`]
//! (issuing from a CSR), [`TlsContext`] (client and server configs, the peer's
//! identity after a handshake).

mod addresses;
mod ca;
pub mod client;
mod context;
mod credentials;
mod error;
pub mod h2;
pub mod http;
mod identity;
pub mod peer_trust;
pub mod pinned;
pub mod renewal;

pub use addresses::{certificate_addresses, MAX_CERTIFICATE_ADDRESSES};
pub use ca::{CertificateAuthority, DEFAULT_CERT_LIFETIME};
pub use context::{anonymous_client_config, peer_identity, ClientAuth, TlsContext};
pub use credentials::{leaf_validity, Credentials, KeyAndRequest, NBD_CLIENT_FILES};
pub use error::TlsError;
pub use identity::{Identity, Role};
pub use peer_trust::PeerTrust;
pub use pinned::{ca_hash, fetch_pinned_ca};

/// The rustls crypto provider every config here uses (ring: no C toolchain
/// beyond cc), preferring AES-128-GCM: block streams carry every replicated
/// byte, and it is the fastest of the standard suites on AES-NI machines.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    std::sync::Arc::new(provider)
}
