//! The cluster's certificate authority. A cluster makes its own on first
//! start (`ca.crt`, and `ca.key` at mode 0600, in the control plane's
//! state directory); an operator may bring theirs — a root, or an
//! intermediate plus the chain up to its root.
//!
//! The CA decides what a certificate says: a CSR contributes its public key
//! (and proves the requester holds the private key); the identity and the
//! names come from the caller, who has authenticated the requester.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use time::OffsetDateTime;

use crate::credentials::{certificates, read, write_private};
use crate::{Credentials, Identity, KeyAndRequest, TlsError};

/// How long an issued certificate lasts unless told otherwise; holders renew
/// after two thirds of it.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start a little in the past, so a peer whose clock is behind accepts them.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(300);

pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// Certificates sent after an issued leaf: the issuing certificate when
    /// it is an intermediate, and the intermediates above it.
    intermediates_pem: String,
    /// What peers trust: the root.
    trust_pem: String,
}

pub(crate) fn subject(identity: &Identity) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, identity.name.as_str());
    name.push(DnType::OrganizationName, identity.cluster.as_str());
    name.push(DnType::OrganizationalUnitName, identity.role.as_str());
    name
}

fn offset(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}

impl CertificateAuthority {
    /// Loads the CA in `dir`, or makes one there if it holds none.
    pub fn load_or_create(dir: &Path, cluster: &str) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            return Self::from_files(&cert_path, &key_path, None);
        }
        let generate = |source| TlsError::Generate {
            subject: format!("the CA of cluster {cluster}"),
            source,
        };
        let key = KeyPair::generate().map_err(generate)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("Tether CA {cluster}"));
        name.push(DnType::OrganizationName, cluster);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset(now - CLOCK_SKEW);
        params.not_after = offset(now + CA_LIFETIME);
        let cert = params.self_signed(&key).map_err(generate)?;
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, cert.pem().as_bytes())?;
        std::fs::set_permissions(&cert_path, std::fs::Permissions::from_mode(0o644)).map_err(
            |source| TlsError::Write {
                path: cert_path.clone(),
                source,
            },
        )?;
        Self::from_files(&cert_path, &key_path, None)
    }

    /// A CA from files: `cert` is the issuing certificate (a root, or an
    /// intermediate), `key` its private key (must be mode 0600), `chain`
    /// the certificates above an intermediate, ending with the root.
    pub fn from_files(cert: &Path, key: &Path, chain: Option<&Path>) -> Result<Self, TlsError> {
        let mode = std::fs::metadata(key)
            .map_err(|source| TlsError::Read {
                path: key.to_path_buf(),
                source,
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyExposed {
                path: key.to_path_buf(),
                mode,
            });
        }
        let cert_pem = read(cert)?;
        let key_pair = KeyPair::from_pem(&read(key)?).map_err(|_| TlsError::BadPem {
            path: key.to_path_buf(),
            what: "private key",
        })?;
        certificates(&cert_pem, cert)?;
        let issuer =
            Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|_| TlsError::BadPem {
                path: cert.to_path_buf(),
                what: "CA certificate",
            })?;
        let (intermediates_pem, trust_pem) = match chain {
            None => (String::new(), cert_pem),
            Some(chain) => {
                let chain_pem = read(chain)?;
                certificates(&chain_pem, chain)?;
                let above = pem::parse_many(&chain_pem).map_err(|_| TlsError::BadPem {
                    path: chain.to_path_buf(),
                    what: "certificate chain",
                })?;
                let (root, between) = above.split_last().expect("certificates() is never empty");
                let mut intermediates = cert_pem.trim_end().to_string() + "\n";
                for cert in between {
                    intermediates.push_str(&pem_lf(cert));
                }
                (intermediates, pem_lf(root))
            }
        };
        Ok(Self {
            issuer,
            intermediates_pem,
            trust_pem,
        })
    }

    /// What peers of this CA's holders trust (PEM).
    pub fn trust_pem(&self) -> &str {
        &self.trust_pem
    }

    /// Signs the public key of `csr_pem` for `identity`. The request's own
    /// names are ignored: the caller has decided who the requester is.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
        extra_names: &[String],
        lifetime: Duration,
    ) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|err| {
            TlsError::BadRequest {
                reason: err.to_string(),
            }
        })?;
        let now = SystemTime::now();
        self.issue(
            &csr.public_key,
            identity,
            extra_names,
            now - CLOCK_SKEW,
            now + lifetime,
        )
    }

    /// A key pair and certificate made here, for holders that live with the
    /// CA (the registry, the etcd server, the dev federation's admin).
    pub fn issue_credentials(
        &self,
        identity: &Identity,
        extra_names: &[String],
        lifetime: Duration,
    ) -> Result<Credentials, TlsError> {
        let now = SystemTime::now();
        self.issue_credentials_valid(identity, extra_names, now - CLOCK_SKEW, now + lifetime)
    }

    /// As [`Self::issue_credentials`], valid from `not_before` to `not_after`.
    pub fn issue_credentials_valid(
        &self,
        identity: &Identity,
        extra_names: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Credentials, TlsError> {
        let request = KeyAndRequest::new(identity)?;
        let key = KeyPair::from_pem(&request.key_pem).map_err(|source| TlsError::Generate {
            subject: identity.uri(),
            source,
        })?;
        let chain_pem = self.issue(&key, identity, extra_names, not_before, not_after)?;
        Ok(Credentials {
            identity: identity.clone(),
            chain_pem,
            key_pem: request.key_pem,
            trust_pem: self.trust_pem.clone(),
        })
    }

    fn issue(
        &self,
        public_key: &impl PublicKeyData,
        identity: &Identity,
        extra_names: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, TlsError> {
        let generate = |source| TlsError::Generate {
            subject: identity.uri(),
            source,
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(identity);
        let uri = identity.uri().try_into().map_err(generate)?;
        let dns = identity.dns_name().try_into().map_err(generate)?;
        params.subject_alt_names = vec![SanType::URI(uri), SanType::DnsName(dns)];
        for name in extra_names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(generate)?),
            });
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(generate)?;
        Ok(cert.pem() + &self.intermediates_pem)
    }
}

fn pem_lf(cert: &pem::Pem) -> String {
    pem::encode_config(
        cert,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
