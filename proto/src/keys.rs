//! Every coordination-store key Tether uses, in one place. All live under
//! one prefix per cluster, `/tether/v1/{cluster}/`, as `{kind}/{name}`:
//!
//! | kind | name | record |
//! | --- | --- | --- |
//! | `volumes` | volume | `admin::VolumeSpec` |
//! | `groups` | volume | `group::GroupRecord` |
//! | `locks` | volume | the master's node name |
//! | `status` | volume | `admin::VolumeStatus` |
//! | `presenting` | `volume/node` | `admin::PresentingStatus` |
//! | `nodes` | node | `admin::NodeRecord` |
//! | `verify` | volume | `admin::VerifyRequestRecord` |
//! | `join-tokens` | BLAKE3 of the token | the registry's token record |
//! | `clusters` | satellite | `federation::ClusterRecord` |
//! | `peers` | DR peer cluster | `dr::PeerRecord` |
//! | `grants` | `satellite/grant id` | `federation::GrantRecord` |
//! | `dr-links` | volume | `dr::DrLinkRecord` |
//! | `dr-status` | volume | `dr::DrStatusRecord` (the shipper's) |
//! | `dr-received` | volume | `dr::DrStatusRecord` (the receiver's) |
//! | `dr-receivers` | volume | the gateway receiving its batches (leased) |
//! | `gateways` | gateway | `dr::GatewayRecord` (leased) |
//! | `audit` | sequence, 20 digits | `audit::AuditEntry` |
//! | `audit-head` | `head` | `audit::AuditHead` (the newest entry) |

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Volumes,
    Groups,
    Locks,
    Status,
    Presenting,
    Nodes,
    Verify,
    JoinTokens,
    Clusters,
    Grants,
    Peers,
    DrLinks,
    DrStatus,
    DrReceived,
    DrReceivers,
    Gateways,
    Audit,
    AuditHead,
}

impl Kind {
    const ALL: [Kind; 18] = [
        Kind::Volumes,
        Kind::Groups,
        Kind::Locks,
        Kind::Status,
        Kind::Presenting,
        Kind::Nodes,
        Kind::Verify,
        Kind::JoinTokens,
        Kind::Clusters,
        Kind::Grants,
        Kind::Peers,
        Kind::DrLinks,
        Kind::DrStatus,
        Kind::DrReceived,
        Kind::DrReceivers,
        Kind::Gateways,
        Kind::Audit,
        Kind::AuditHead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Volumes => "volumes",
            Kind::Groups => "groups",
            Kind::Locks => "locks",
            Kind::Status => "status",
            Kind::Presenting => "presenting",
            Kind::Nodes => "nodes",
            Kind::Verify => "verify",
            Kind::JoinTokens => "join-tokens",
            Kind::Clusters => "clusters",
            Kind::Grants => "grants",
            Kind::Peers => "peers",
            Kind::DrLinks => "dr-links",
            Kind::DrStatus => "dr-status",
            Kind::DrReceived => "dr-received",
            Kind::DrReceivers => "dr-receivers",
            Kind::Gateways => "gateways",
            Kind::Audit => "audit",
            Kind::AuditHead => "audit-head",
        }
    }
}

/// The keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterKeys {
    prefix: String,
}

impl ClusterKeys {
    pub fn new(cluster: &str) -> Self {
        Self {
            prefix: format!("/tether/v1/{cluster}/"),
        }
    }

    /// Every key of the cluster starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every key of one kind starts with this.
    pub fn kind_prefix(&self, kind: Kind) -> String {
        format!("{}{}/", self.prefix, kind.as_str())
    }

    pub fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}{}/{name}", self.prefix, kind.as_str())
    }

    /// `presenting/{volume}/{node}`.
    pub fn presenting(&self, volume: &str, node: &str) -> String {
        self.key(Kind::Presenting, &format!("{volume}/{node}"))
    }

    /// Every presenting record of one volume starts with this.
    pub fn presenting_prefix(&self, volume: &str) -> String {
        format!("{}{volume}/", self.kind_prefix(Kind::Presenting))
    }

    /// `grants/{satellite}/{id}`.
    pub fn grant(&self, satellite: &str, id: &str) -> String {
        self.key(Kind::Grants, &format!("{satellite}/{id}"))
    }

    /// Every grant of one satellite starts with this.
    pub fn grants_prefix(&self, satellite: &str) -> String {
        format!("{}{satellite}/", self.kind_prefix(Kind::Grants))
    }

    /// `audit/{seq}`, zero-padded so keys sort in log order.
    pub fn audit_entry(&self, seq: u64) -> String {
        self.key(Kind::Audit, &format!("{seq:020}"))
    }

    /// `audit-head/head`.
    pub fn audit_head(&self) -> String {
        self.key(Kind::AuditHead, "head")
    }

    /// A key of this cluster as its kind and name.
    pub fn parse<'a>(&self, key: &'a str) -> Option<(Kind, &'a str)> {
        let (kind, name) = key.strip_prefix(&self.prefix)?.split_once('/')?;
        let kind = Kind::ALL.into_iter().find(|known| known.as_str() == kind)?;
        Some((kind, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_parse() {
        let keys = ClusterKeys::new("central");
        assert_eq!(keys.key(Kind::Locks, "db"), "/tether/v1/central/locks/db");
        assert_eq!(
            keys.presenting("db", "node-2"),
            "/tether/v1/central/presenting/db/node-2"
        );
        assert_eq!(
            keys.parse(&keys.key(Kind::Groups, "db")),
            Some((Kind::Groups, "db"))
        );
        assert_eq!(keys.parse("/tether/v1/central/unknown/x"), None);
        assert_eq!(keys.parse("/tether/v1/other/locks/x"), None);
        assert!(keys
            .presenting("db", "n")
            .starts_with(&keys.presenting_prefix("db")));
    }
}
