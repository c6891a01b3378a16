//! Who may open what, decided from the store's records as the gateway's
//! mirror holds them: a satellite must be joined (not removed), and a grant
//! of it must cover the volume. Pure functions over records, checked at
//! every open and again whenever the records change.

use tether_proto::admin::VolumeSpec;
use tether_proto::federation::{ClusterRecord, ClusterState, GrantRecord};
use tether_proto::link::refusal;

/// What an open stream may do with its volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub read_only: bool,
}

/// A refusal: the code sent in `Refused`, and the reason (sent and logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub code: u32,
    pub reason: String,
}

/// Whether satellite `name` (its record, if any) may hold a session.
pub fn standing(name: &str, record: Option<&ClusterRecord>) -> Result<(), Denied> {
    match record {
        Some(record) if record.state == ClusterState::Joined => Ok(()),
        Some(record) if record.state == ClusterState::Revoked => Err(Denied {
            code: refusal::REVOKED,
            reason: format!("satellite {name} was removed"),
        }),
        _ => Err(Denied {
            code: refusal::REVOKED,
            reason: format!("satellite {name} is not a joined member of this cluster"),
        }),
    }
}

/// Whether `grants` let satellite `name` open `volume` (which must exist:
/// a missing volume is refused like an ungranted one, so names cannot be
/// probed). Several grants may cover it: any writable one makes it writable.
pub fn open(
    name: &str,
    volume: &str,
    grants: &[GrantRecord],
    spec: Option<&VolumeSpec>,
) -> Result<Access, Denied> {
    let covering: Vec<&GrantRecord> = grants
        .iter()
        .filter(|grant| grant.scope.covers(volume))
        .collect();
    if covering.is_empty() || spec.is_none() {
        return Err(Denied {
            code: refusal::NOT_GRANTED,
            reason: format!("satellite {name} has no grant for volume {volume}"),
        });
    }
    Ok(Access {
        read_only: !covering.iter().any(|grant| grant.scope.writable()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::federation::{ClusterRole, GrantScope};

    fn grant(scope: GrantScope) -> GrantRecord {
        GrantRecord {
            satellite: "edge".into(),
            scope,
            created_unix_ms: 0,
        }
    }

    fn spec(name: &str) -> VolumeSpec {
        serde_json::from_value(serde_json::json!({
            "version": 1, "name": name, "size_bytes": 4096, "replicas": 1,
            "master": "node-1", "epoch": 1, "attachments": []
        }))
        .unwrap()
    }

    #[test]
    fn opens_need_a_covering_grant_and_an_existing_volume() {
        let grants = vec![
            grant(GrantScope::Volume {
                volume: "db".into(),
                read_only: true,
            }),
            grant(GrantScope::Prefix {
                prefix: "edge-".into(),
                capacity_bytes: 1,
                count: 1,
            }),
        ];
        assert_eq!(
            open("edge", "db", &grants, Some(&spec("db"))),
            Ok(Access { read_only: true })
        );
        assert_eq!(
            open("edge", "edge-1", &grants, Some(&spec("edge-1"))),
            Ok(Access { read_only: false })
        );
        let refused = open("edge", "other", &grants, Some(&spec("other"))).unwrap_err();
        assert_eq!(refused.code, refusal::NOT_GRANTED);
        let missing = open("edge", "edge-2", &grants, None).unwrap_err();
        assert_eq!(
            missing,
            Denied {
                code: refusal::NOT_GRANTED,
                reason: "satellite edge has no grant for volume edge-2".into()
            }
        );
    }

    #[test]
    fn only_joined_satellites_stand() {
        let mut record = ClusterRecord {
            name: "edge".into(),
            role: ClusterRole::Satellite,
            state: ClusterState::Joined,
            added_unix_ms: 0,
            joined_unix_ms: None,
            certificate_not_after_unix_ms: None,
            last_seen_unix_ms: None,
            revoked_unix_ms: None,
            join_token_hash: None,
        };
        assert!(standing("edge", Some(&record)).is_ok());
        record.state = ClusterState::Revoked;
        assert!(standing("edge", Some(&record))
            .unwrap_err()
            .reason
            .contains("was removed"));
        assert!(standing("edge", None).is_err());
    }
}
