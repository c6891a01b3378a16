//! Trust on first use, pinned: a DR peer's CA is fetched before anything
//! of that peer is trusted, over TLS that checks nothing, and then taken
//! only if its hash is the one the operator's token carries. A man in the
//! middle could answer the fetch, but not with a CA of that hash.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::TlsError;

/// BLAKE3 (hex) of the first certificate in `pem`, as DER.
pub fn ca_hash(pem: &str) -> Result<String, TlsError> {
    let parsed = pem::parse_many(pem).map_err(|_| TlsError::BadPem {
        path: "CA certificate".into(),
        what: "a PEM certificate",
    })?;
    let first = parsed
        .iter()
        .find(|block| block.tag() == "CERTIFICATE")
        .ok_or(TlsError::BadPem {
            path: "CA certificate".into(),
            what: "a certificate",
        })?;
    Ok(blake3::hash(first.contents()).to_hex().to_string())
}

/// Accepts any server certificate: for fetching a document whose
/// integrity is checked by hash afterwards, never for anything else.
#[derive(Debug)]
struct UncheckedServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for UncheckedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Fetches the CA certificate the registry at `base` publishes (`GET
/// /v1/ca`) and returns it only if its [`ca_hash`] is `expected`.
pub async fn fetch_pinned_ca(
    base: &str,
    expected: &str,
) -> Result<String, crate::client::CallError> {
    use crate::client::CallError;
    let provider = crate::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| CallError::Refused(err.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UncheckedServer(provider)))
        .with_no_client_auth();
    #[derive(serde::Deserialize)]
    struct Answer {
        ca_pem: String,
    }
    let answer: Answer = crate::client::get_json(
        base,
        "/v1/ca",
        Arc::new(config),
        std::time::Duration::from_secs(30),
    )
    .await?;
    let hash = ca_hash(&answer.ca_pem).map_err(|err| CallError::Refused(err.to_string()))?;
    if !hash.eq_ignore_ascii_case(expected) {
        return Err(CallError::Refused(format!(
            "{base} presents a CA whose hash is {hash}, not the {expected} the token names: not the cluster that minted it"
        )));
    }
    Ok(answer.ca_pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_hash_is_of_its_certificate_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::CertificateAuthority::load_or_create(dir.path(), "central").unwrap();
        let hash = ca_hash(ca.trust_pem()).unwrap();
        assert_eq!(hash.len(), 64);
        assert_eq!(ca_hash(ca.trust_pem()).unwrap(), hash);
        let other = tempfile::tempdir().unwrap();
        let other = crate::CertificateAuthority::load_or_create(other.path(), "dr").unwrap();
        assert_ne!(ca_hash(other.trust_pem()).unwrap(), hash);
        assert!(ca_hash("not pem").is_err());
    }
}
