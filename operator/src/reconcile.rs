//! What each resource means for the registry, decided and done over its
//! gRPC admin API, and the status to write back. No Kubernetes here: the
//! controller ([`crate::controller`]) reads the resources and writes what
//! these functions return, so the logic runs (and is tested) against a
//! real registry with no API server.

use admin_grpc::{pb, Client};
use tonic::Code;

use crate::crd::{
    DrLinkSpec, DrLinkStatus, SatelliteClusterSpec, SatelliteClusterStatus, VolumeGrantSpec,
    VolumeGrantStatus,
};
use crate::OperatorError;

/// The `Ready` condition a reconcile reached: whether, why (a CamelCase
/// reason) and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Ready {
    fn yes(reason: &'static str, message: impl Into<String>) -> Self {
        Ready {
            ready: true,
            reason,
            message: message.into(),
        }
    }
    fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Ready {
            ready: false,
            reason,
            message: message.into(),
        }
    }
}

fn rpc(call: &'static str) -> impl Fn(tonic::Status) -> OperatorError {
    move |status| OperatorError::Registry {
        call,
        code: status.code(),
        message: status.message().to_string(),
    }
}

/// A satellite's outcome: its status, and a new join token to put in the
/// token Secret when one was minted.
#[derive(Debug, Clone, PartialEq)]
pub struct SatelliteOutcome {
    pub status: SatelliteClusterStatus,
    pub ready: Ready,
    pub new_token: Option<String>,
}

/// Adds the satellite if the registry does not know it; mints it a new
/// token while it has not joined and its token Secret is gone (`pending`
/// satellites may be given a new token; joined and removed ones not).
pub async fn satellite(
    admin: &mut Client,
    name: &str,
    spec: &SatelliteClusterSpec,
    token_secret: &str,
    token_secret_exists: bool,
) -> Result<SatelliteOutcome, OperatorError> {
    let clusters = admin
        .list_clusters(pb::Empty {})
        .await
        .map_err(rpc("ListClusters"))?
        .into_inner()
        .clusters;
    let known = clusters.into_iter().find(|cluster| cluster.name == name);
    let mint = match &known {
        None => true,
        Some(cluster) => cluster.state == "pending" && !token_secret_exists,
    };
    let mut new_token = None;
    let (state, last_seen) = if mint {
        let added = admin
            .add_satellite(pb::AddSatelliteRequest {
                name: name.to_string(),
                ttl_seconds: spec.token_ttl_seconds,
            })
            .await
            .map_err(rpc("AddSatellite"))?
            .into_inner();
        new_token = Some(added.token);
        ("pending".to_string(), None)
    } else {
        let cluster = known.expect("known when not minting");
        (cluster.state, cluster.last_seen_unix_ms)
    };
    let ready = match state.as_str() {
        "joined" => Ready::yes("Joined", format!("satellite {name} joined and holds a certificate")),
        "revoked" => Ready::no(
            "Revoked",
            format!("satellite {name} was removed; a removed name is never issued again"),
        ),
        _ => Ready::no(
            "AwaitingJoin",
            format!("satellite {name} has not joined: its join token is in Secret {token_secret} (key token)"),
        ),
    };
    Ok(SatelliteOutcome {
        status: SatelliteClusterStatus {
            state: Some(state),
            token_secret: Some(token_secret.to_string()),
            last_seen_unix_ms: last_seen,
            conditions: Vec::new(),
        },
        ready,
        new_token,
    })
}

/// Removes (revokes) the satellite; one the registry does not know is gone already.
pub async fn remove_satellite(admin: &mut Client, name: &str) -> Result<(), OperatorError> {
    match admin
        .remove_satellite(pb::ClusterName {
            name: name.to_string(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(rpc("RemoveSatellite")(status)),
    }
}

/// The grant a spec asks for, as the registry's message, or why it is not one.
pub fn wanted_grant(spec: &VolumeGrantSpec) -> Result<pb::Grant, String> {
    match (&spec.volume, &spec.prefix) {
        (Some(volume), None) => {
            if spec.capacity.is_some() || spec.count.is_some() {
                return Err("capacity and count apply to a prefix grant, not a volume's".into());
            }
            Ok(pb::Grant {
                satellite: spec.satellite.clone(),
                kind: "volume".into(),
                volume: volume.clone(),
                read_only: spec.read_only,
                ..Default::default()
            })
        }
        (None, Some(prefix)) => {
            let capacity = spec
                .capacity
                .as_deref()
                .ok_or("a prefix grant needs a capacity")?;
            let capacity_bytes = tether_common::size::parse_size(capacity)
                .map_err(|err| format!("capacity {capacity:?}: {err}"))?;
            let count = spec.count.ok_or("a prefix grant needs a count")?;
            if spec.read_only {
                return Err("readOnly applies to a volume grant, not a prefix's".into());
            }
            Ok(pb::Grant {
                satellite: spec.satellite.clone(),
                kind: "prefix".into(),
                prefix: prefix.clone(),
                capacity_bytes,
                count,
                ..Default::default()
            })
        }
        _ => Err("name exactly one of volume and prefix".into()),
    }
}

/// The registry's id of a grant: `volume:NAME` or `prefix:P`.
pub fn grant_id(grant: &pb::Grant) -> String {
    match grant.kind.as_str() {
        "volume" => format!("volume:{}", grant.volume),
        _ => format!("prefix:{}", grant.prefix),
    }
}

fn same_grant(a: &pb::Grant, b: &pb::Grant) -> bool {
    (
        &a.kind,
        &a.volume,
        a.read_only,
        &a.prefix,
        a.capacity_bytes,
        a.count,
    ) == (
        &b.kind,
        &b.volume,
        b.read_only,
        &b.prefix,
        b.capacity_bytes,
        b.count,
    )
}

/// Makes the registry hold the grant the spec asks for (adding it, or
/// replacing one of the same id that differs); a spec that asks for
/// nothing valid, or that the registry refuses, is reported, not retried
/// blindly.
pub async fn grant(
    admin: &mut Client,
    spec: &VolumeGrantSpec,
) -> Result<(VolumeGrantStatus, Ready), OperatorError> {
    let wanted = match wanted_grant(spec) {
        Ok(wanted) => wanted,
        Err(reason) => return Ok((VolumeGrantStatus::default(), Ready::no("Invalid", reason))),
    };
    let id = grant_id(&wanted);
    let listed = admin
        .list_grants(pb::ListGrantsRequest {
            satellite: Some(spec.satellite.clone()),
        })
        .await
        .map_err(rpc("ListGrants"))?
        .into_inner()
        .grants;
    let existing = listed.into_iter().find(|grant| grant_id(grant) == id);
    let held = match existing {
        Some(grant) if same_grant(&grant, &wanted) => grant,
        _ => match admin.add_grant(wanted).await {
            Ok(added) => added.into_inner(),
            Err(status)
                if status.code() == Code::Internal || status.code() == Code::Unavailable =>
            {
                return Err(rpc("AddGrant")(status))
            }
            Err(status) => {
                return Ok((
                    VolumeGrantStatus {
                        grant_id: Some(id),
                        ..Default::default()
                    },
                    Ready::no("Refused", status.message().to_string()),
                ))
            }
        },
    };
    Ok((
        VolumeGrantStatus {
            grant_id: Some(id.clone()),
            used_count: held.used_count,
            used_bytes: held.used_bytes,
            conditions: Vec::new(),
        },
        Ready::yes(
            "Granted",
            format!("satellite {} holds grant {id}", spec.satellite),
        ),
    ))
}

/// Removes the spec's grant; one that is not there is gone already.
pub async fn remove_grant(admin: &mut Client, spec: &VolumeGrantSpec) -> Result<(), OperatorError> {
    let Ok(wanted) = wanted_grant(spec) else {
        return Ok(());
    };
    match admin
        .remove_grant(pb::RemoveGrantRequest {
            satellite: spec.satellite.clone(),
            id: grant_id(&wanted),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(rpc("RemoveGrant")(status)),
    }
}

/// Links the volume if it is not linked, and reports the link.
pub async fn dr_link(
    admin: &mut Client,
    spec: &DrLinkSpec,
) -> Result<(DrLinkStatus, Ready), OperatorError> {
    let view = match admin
        .get_dr_status(pb::VolumeName {
            name: spec.volume.clone(),
        })
        .await
    {
        Ok(view) => view.into_inner(),
        Err(status) if status.code() == Code::NotFound => {
            let linked = admin
                .link_dr(pb::DrLinkRequest {
                    volume: spec.volume.clone(),
                    to: spec.to.clone(),
                    rpo_secs: spec.rpo_seconds.unwrap_or(30),
                    replicas: spec.replicas.unwrap_or(1),
                })
                .await;
            match linked {
                Ok(view) => view.into_inner(),
                Err(status) if status.code() == Code::Unavailable => {
                    return Err(rpc("LinkDr")(status))
                }
                Err(status) => {
                    return Ok((
                        DrLinkStatus::default(),
                        Ready::no("Refused", status.message().to_string()),
                    ))
                }
            }
        }
        Err(status) => return Err(rpc("GetDrStatus")(status)),
    };
    let status = DrLinkStatus {
        role: Some(view.role.clone()),
        link_state: Some(view.link_state.clone()),
        last_point: Some(view.last_point),
        lag_seconds: Some(view.lag_seconds),
        rpo_met: Some(view.rpo_met),
        conditions: Vec::new(),
    };
    let ready = if view.peer != spec.to {
        Ready::no(
            "LinkedElsewhere",
            format!(
                "volume {} is linked to {}, not {}",
                spec.volume, view.peer, spec.to
            ),
        )
    } else if let Some(error) = &view.error {
        Ready::no("LinkError", error.clone())
    } else if !view.rpo_met {
        Ready::no(
            "RpoMissed",
            format!(
                "{:.1} s behind, over the RPO of {} s",
                view.lag_seconds, view.rpo_secs
            ),
        )
    } else {
        Ready::yes(
            "Replicating",
            format!(
                "{} of volume {}, {:.1} s behind",
                view.role, spec.volume, view.lag_seconds
            ),
        )
    };
    Ok((status, ready))
}
