//! Where an attachment is served: the endpoint syntax clients give
//! (`unix:PATH`, `tcp:[HOST:]PORT`, `tls:[HOST:]PORT`), the TLS policy each
//! implies, and the checks that keep a client-chosen socket path from
//! replacing a file that is not ours.

use std::path::{Path, PathBuf};

use tether_proto::nbd::TlsMode;

use crate::{ExportError, Result};

/// A parsed endpoint. `tcp:PORT` and `tls:PORT` bind to loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp {
        addr: String,
        /// `tls:`: STARTTLS is required even on loopback.
        require_tls: bool,
    },
}

impl Endpoint {
    pub fn parse(input: &str) -> Result<Self> {
        let bad = |reason: &str| ExportError::BadEndpoint {
            endpoint: input.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = input.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("unix: needs a socket path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        let (addr, require_tls) = match (input.strip_prefix("tcp:"), input.strip_prefix("tls:")) {
            (Some(addr), _) => (addr, false),
            (_, Some(addr)) => (addr, true),
            _ => {
                return Err(bad(
                    "expected unix:PATH, tcp:[HOST:]PORT or tls:[HOST:]PORT",
                ))
            }
        };
        if addr.parse::<u16>().is_ok() {
            return Ok(Endpoint::Tcp {
                addr: format!("127.0.0.1:{addr}"),
                require_tls,
            });
        }
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Endpoint::Tcp {
                    addr: addr.to_string(),
                    require_tls,
                })
            }
            _ => Err(bad("needs PORT (loopback) or HOST:PORT")),
        }
    }
}

/// The TLS policy of a TCP listener bound to `local`: STARTTLS is offered
/// everywhere and required beyond loopback (and wherever `tls:` asked).
pub fn tcp_tls_mode(local: std::net::SocketAddr, require_tls: bool) -> TlsMode {
    if require_tls || !local.ip().is_loopback() {
        TlsMode::Required
    } else {
        TlsMode::Optional
    }
}

/// Device and inode of `path` if it is a Unix socket (not following links).
pub fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
}

/// Checks a client-chosen socket path before anything is created there: it
/// must not lie inside a pool or state directory, and must not exist unless
/// it is a socket nobody serves (left over from a crash), which is removed.
pub fn claim_socket_path(endpoint_spec: &str, path: &Path) -> Result<()> {
    let bad = |reason: String| ExportError::BadEndpoint {
        endpoint: endpoint_spec.to_string(),
        reason,
    };
    if let Some(dir) = tether_common::protected::protected_ancestor(path) {
        return Err(bad(format!(
            "{} is inside a pool or state directory ({}); choose a path outside it",
            path.display(),
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(bad(format!("cannot check {}: {err}", path.display()))),
        Ok(_) if socket_identity(path).is_none() => Err(bad(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ))),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(bad("another server is listening there".into()));
            }
            // A socket nobody answers on is left over from a crash: replace it.
            std::fs::remove_file(path)
                .map_err(|err| bad(format!("cannot replace the stale socket: {err}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_loopback_defaults_and_tls_policy() {
        let tcp = |addr: &str, require_tls| Endpoint::Tcp {
            addr: addr.into(),
            require_tls,
        };
        assert_eq!(
            Endpoint::parse("tcp:10809").unwrap(),
            tcp("127.0.0.1:10809", false)
        );
        assert_eq!(
            Endpoint::parse("tls:10809").unwrap(),
            tcp("127.0.0.1:10809", true)
        );
        assert_eq!(
            Endpoint::parse("tls:[::1]:7").unwrap(),
            tcp("[::1]:7", true)
        );
        assert_eq!(
            Endpoint::parse("unix:/run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        for bad in [
            "tcp:",
            "tls:host",
            "udp:1",
            "unix:",
            "tcp::80",
            "tcp:h:99999",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad} parsed");
        }
        let at = |addr: &str| addr.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(tcp_tls_mode(at("127.0.0.1:1"), false), TlsMode::Optional);
        assert_eq!(tcp_tls_mode(at("127.0.0.1:1"), true), TlsMode::Required);
        assert_eq!(
            tcp_tls_mode(at("0.0.0.0:1"), false),
            TlsMode::Required,
            "a plaintext export is never reachable beyond this host"
        );
        assert_eq!(tcp_tls_mode(at("10.1.2.3:1"), false), TlsMode::Required);
    }
}
