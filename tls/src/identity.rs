//! What a Tether certificate says about its holder: a cluster, a role and a
//! name, carried as the URI SAN `tether://CLUSTER/ROLE/NAME` (and mirrored
//! in the subject for people reading certificates with openssl).

use std::fmt;
use std::str::FromStr;

use crate::TlsError;

const SCHEME: &str = "tether://";

/// Who may do what: the admin API wants `Admin`; block streams and node
/// control RPCs want a `Node` (or the `Registry`) of the same cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An operator or the CLI.
    Admin,
    /// A storage node.
    Node,
    /// The cluster's control plane (the registry, holding the CA).
    Registry,
    /// The coordination store's server (etcd).
    Store,
    /// A consumer of volumes over NBD with TLS (a hypervisor, qemu-img, a
    /// backup job): may read and write the exports it reaches, nothing else.
    Client,
    /// A satellite cluster: reaches the volumes its grants cover, through
    /// the admin API and the federation gateway.
    Satellite,
    /// A federation gateway: terminates satellites' QUIC sessions and opens
    /// client block streams to masters (never replication streams).
    Gateway,
    /// A DR peer cluster's gateway, as the other datacentre's gateways see
    /// it: the only role a peer's CA is trusted for.
    DrPeer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Node => "node",
            Role::Registry => "registry",
            Role::Store => "store",
            Role::Client => "client",
            Role::Satellite => "satellite",
            Role::Gateway => "gateway",
            Role::DrPeer => "dr-peer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TlsError;
    fn from_str(text: &str) -> Result<Self, TlsError> {
        match text {
            "admin" => Ok(Role::Admin),
            "node" => Ok(Role::Node),
            "registry" => Ok(Role::Registry),
            "store" => Ok(Role::Store),
            "client" => Ok(Role::Client),
            "satellite" => Ok(Role::Satellite),
            "gateway" => Ok(Role::Gateway),
            "dr-peer" => Ok(Role::DrPeer),
            other => Err(TlsError::NoIdentity {
                reason: format!("unknown role {other:?}"),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub cluster: String,
    pub role: Role,
    pub name: String,
}

impl Identity {
    pub fn new(cluster: &str, role: Role, name: &str) -> Self {
        Self {
            cluster: cluster.to_string(),
            role,
            name: name.to_string(),
        }
    }

    /// The URI SAN that carries the identity.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}/{}", self.cluster, self.role, self.name)
    }

    /// The DNS name a client verifies the server against: connecting to
    /// node-2's block port checks the certificate names node-2, not just
    /// that the CA signed it.
    pub fn dns_name(&self) -> String {
        format!("{}.{}.{}.tether", self.name, self.role, self.cluster)
    }

    pub fn from_uri(uri: &str) -> Result<Self, TlsError> {
        let bad = || TlsError::NoIdentity {
            reason: format!("{uri:?} is not tether://CLUSTER/ROLE/NAME"),
        };
        let rest = uri.strip_prefix(SCHEME).ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(cluster), Some(role), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if cluster.is_empty() || name.is_empty() {
            return Err(bad());
        }
        Ok(Self::new(cluster, role.parse()?, name))
    }

    /// The identity in a DER certificate (its `tether://` URI SAN).
    pub fn from_certificate(der: &[u8]) -> Result<Self, TlsError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|err| TlsError::NoIdentity {
                reason: format!("unparseable certificate: {err}"),
            })?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|err| TlsError::NoIdentity {
                reason: err.to_string(),
            })?
            .ok_or_else(|| TlsError::NoIdentity {
                reason: "no subject alternative names".into(),
            })?;
        sans.value
            .general_names
            .iter()
            .find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(SCHEME) => {
                    Some(Self::from_uri(uri))
                }
                _ => None,
            })
            .unwrap_or_else(|| {
                Err(TlsError::NoIdentity {
                    reason: "no tether:// URI".into(),
                })
            })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} of cluster {}", self.role, self.name, self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip_and_refusals() {
        let identity = Identity::new("central", Role::Node, "node-2");
        assert_eq!(identity.uri(), "tether://central/node/node-2");
        assert_eq!(Identity::from_uri(&identity.uri()).unwrap(), identity);
        assert_eq!(identity.dns_name(), "node-2.node.central.tether");
        for bad in [
            "https://central/node/x",
            "tether://central/node",
            "tether://central/node/x/y",
            "tether://central/king/x",
            "tether:///node/x",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
    }
}
