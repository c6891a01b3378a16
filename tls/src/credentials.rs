//! A holder's certificate chain and private key, on disk in a directory:
//! `tls.crt` (leaf first, then intermediates), `tls.key` (mode 0600) and
//! `ca.crt` (what to trust). The key is made where it is used: a node makes
//! its key and a CSR, and only the CSR leaves the node.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Identity, TlsError};

pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";
pub const TRUST_FILE: &str = "ca.crt";

/// The file names GnuTLS-based NBD clients read from one directory: qemu's
/// `--object tls-creds-x509,dir=DIR,endpoint=client` and libnbd's
/// `tls-certificates=DIR` (nbdinfo, nbdcopy, `nbds://` URIs).
pub const NBD_CLIENT_FILES: [&str; 3] = ["ca-cert.pem", "client-cert.pem", "client-key.pem"];

#[derive(Clone)]
pub struct Credentials {
    pub identity: Identity,
    /// Leaf certificate first, then any intermediates.
    pub chain_pem: String,
    pub key_pem: String,
    /// The CA certificate(s) peers must chain to.
    pub trust_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A fresh key pair and a CSR for it; the key stays with the caller.
pub struct KeyAndRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

impl KeyAndRequest {
    pub fn new(identity: &Identity) -> Result<Self, TlsError> {
        let generate = |source| TlsError::Generate {
            subject: identity.uri(),
            source,
        };
        let key = rcgen::KeyPair::generate().map_err(generate)?;
        let mut params =
            rcgen::CertificateParams::new(vec![identity.dns_name()]).map_err(generate)?;
        params.distinguished_name = crate::ca::subject(identity);
        let csr = params.serialize_request(&key).map_err(generate)?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            csr_pem: csr.pem().map_err(generate)?,
        })
    }
}

impl Credentials {
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        Self::load_files(
            &dir.join(CERT_FILE),
            &dir.join(KEY_FILE),
            &dir.join(TRUST_FILE),
        )
    }

    /// Reads what [`Credentials::save_for_nbd_client`] wrote.
    pub fn load_nbd_client(dir: &Path) -> Result<Self, TlsError> {
        let [trust, cert, key] = NBD_CLIENT_FILES;
        Self::load_files(&dir.join(cert), &dir.join(key), &dir.join(trust))
    }

    fn load_files(cert: &Path, key: &Path, trust: &Path) -> Result<Self, TlsError> {
        let chain_pem = read(cert)?;
        let key_pem = read(key)?;
        let trust_pem = read(trust)?;
        let leaf = leaf_der(&chain_pem, cert)?;
        let identity = Identity::from_certificate(&leaf)?;
        Ok(Self {
            identity,
            chain_pem,
            key_pem,
            trust_pem,
        })
    }

    /// Writes the three files, each replaced atomically; the key file is
    /// created 0600 and the directory 0700.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        write_private(&dir.join(KEY_FILE), self.key_pem.as_bytes())?;
        write_private(&dir.join(CERT_FILE), self.chain_pem.as_bytes())?;
        write_private(&dir.join(TRUST_FILE), self.trust_pem.as_bytes())?;
        Ok(())
    }

    /// Writes the credential in the layout NBD clients read
    /// ([`NBD_CLIENT_FILES`]), all 0600 in a 0700 directory.
    pub fn save_for_nbd_client(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let [trust, cert, key] = NBD_CLIENT_FILES;
        write_private(&dir.join(key), self.key_pem.as_bytes())?;
        write_private(&dir.join(cert), self.chain_pem.as_bytes())?;
        write_private(&dir.join(trust), self.trust_pem.as_bytes())?;
        Ok(())
    }

    /// The DNS names and IP addresses the leaf certificate is valid for
    /// (besides its `tether://` identity).
    pub fn alternative_names(&self) -> Result<Vec<String>, TlsError> {
        let leaf = leaf_der(&self.chain_pem, Path::new(CERT_FILE))?;
        alternative_names(&leaf)
    }

    pub fn certificate_chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        certificates(&self.chain_pem, Path::new(CERT_FILE))
    }

    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|_| TlsError::BadPem {
            path: PathBuf::from(KEY_FILE),
            what: "private key",
        })
    }

    pub fn trust_anchors(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        certificates(&self.trust_pem, Path::new(TRUST_FILE))
    }

    /// The leaf certificate's validity period.
    pub fn validity(&self) -> Result<(SystemTime, SystemTime), TlsError> {
        let leaf = leaf_der(&self.chain_pem, Path::new(CERT_FILE))?;
        validity(&leaf)
    }

    /// True once less than a third of the certificate's lifetime is left
    /// (or it is already past): time to ask for a new one.
    pub fn renewal_due(&self, now: SystemTime) -> Result<bool, TlsError> {
        Ok(now >= self.renew_at()?)
    }

    /// When two thirds of the lifetime have passed, counted from issuance
    /// (certificates start [`crate::ca::CLOCK_SKEW`] before they are issued).
    pub fn renew_at(&self) -> Result<SystemTime, TlsError> {
        let (not_before, not_after) = self.validity()?;
        let issued = (not_before + crate::ca::CLOCK_SKEW).min(not_after);
        let lifetime = not_after.duration_since(issued).unwrap_or(Duration::ZERO);
        Ok(issued + lifetime * 2 / 3)
    }
}

/// The validity period of the first certificate in `chain_pem`.
pub fn leaf_validity(chain_pem: &str) -> Result<(SystemTime, SystemTime), TlsError> {
    validity(&leaf_der(chain_pem, Path::new(CERT_FILE))?)
}

pub(crate) fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|err| TlsError::NoIdentity {
            reason: format!("unparseable certificate: {err}"),
        })?;
    let at = |time: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(time.timestamp().max(0) as u64)
    };
    Ok((
        at(cert.validity().not_before),
        at(cert.validity().not_after),
    ))
}

fn alternative_names(der: &[u8]) -> Result<Vec<String>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let bad = |reason: String| TlsError::NoIdentity { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| bad(format!("unparseable certificate: {err}")))?;
    let Some(sans) = cert
        .subject_alternative_name()
        .map_err(|err| bad(err.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(sans
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
                16 => {
                    Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string())
                }
                _ => None,
            },
            _ => None,
        })
        .collect())
}

pub(crate) fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn certificates(
    pem: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::BadPem {
            path: path.to_path_buf(),
            what: "certificate",
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn leaf_der(pem: &str, path: &Path) -> Result<CertificateDer<'static>, TlsError> {
    Ok(certificates(pem, path)?.remove(0))
}

/// Writes `bytes` to `path` through a 0600 temporary file and a rename, so a
/// reader sees the old file or the new one, and nobody else can read either.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let failed = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)?;
    Ok(())
}
