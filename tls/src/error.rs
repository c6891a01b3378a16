use std::path::PathBuf;

/// Everything that can go wrong with certificates and TLS set-up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {what}")]
    BadPem { path: PathBuf, what: &'static str },
    #[error("certificate generation for {subject} failed: {source}")]
    Generate {
        subject: String,
        source: rcgen::Error,
    },
    #[error("the certificate signing request is not valid: {reason}")]
    BadRequest { reason: String },
    #[error("the certificate does not name a Tether identity: {reason}")]
    NoIdentity { reason: String },
    #[error("TLS configuration for {identity} failed: {reason}")]
    Config { identity: String, reason: String },
    #[error("a certificate cannot name {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("the CA key {path} is readable by others (mode {mode:o}); it must be 0600")]
    KeyExposed { path: PathBuf, mode: u32 },
}
