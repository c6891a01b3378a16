//! Where a new volume goes: the live node with the most unprovisioned
//! capacity that fits it. (Replica placement across failure domains comes
//! with volume groups.)

use tether_proto::admin::{NodeRecord, VolumeSpec};

use crate::RegistryError;

/// Provisioned bytes of `node`: the sizes of the volumes whose master it is.
pub fn provisioned_on(node: &str, specs: &[VolumeSpec]) -> u64 {
    specs
        .iter()
        .filter(|spec| spec.master == node)
        .map(|spec| spec.size_bytes)
        .sum()
}

/// Picks the node for a new volume of `size_bytes`.
pub fn place(
    size_bytes: u64,
    nodes: &[NodeRecord],
    specs: &[VolumeSpec],
) -> Result<String, RegistryError> {
    if nodes.is_empty() {
        return Err(RegistryError::Unavailable {
            reason: "no storage node is up in this cluster".into(),
        });
    }
    let mut free: Vec<(u64, &str)> = nodes
        .iter()
        .map(|node| {
            (
                node.capacity_bytes
                    .saturating_sub(provisioned_on(&node.name, specs)),
                node.name.as_str(),
            )
        })
        .collect();
    // Most free first; ties by name so placement is deterministic.
    free.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    match free.first() {
        Some((largest, node)) if *largest >= size_bytes => Ok(node.to_string()),
        Some((largest, _)) => Err(RegistryError::PoolFull {
            requested: size_bytes,
            largest_free: *largest,
        }),
        None => unreachable!("nodes is not empty"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, capacity_bytes: u64) -> NodeRecord {
        NodeRecord {
            version: 1,
            name: name.into(),
            capacity_bytes,
            io_backend: "io_uring".into(),
            metrics_addr: None,
            pid: 1,
        }
    }

    fn spec(name: &str, master: &str, size_bytes: u64) -> VolumeSpec {
        VolumeSpec {
            version: 1,
            name: name.into(),
            size_bytes,
            replicas: 1,
            master: master.into(),
            epoch: 1,
            attachments: vec![],
        }
    }

    #[test]
    fn most_free_node_wins_and_full_pools_are_refused() {
        let nodes = [node("a", 100), node("b", 100), node("c", 50)];
        let specs = [spec("v1", "a", 60)];
        assert_eq!(place(10, &nodes, &specs).unwrap(), "b");
        assert_eq!(place(100, &nodes, &specs).unwrap(), "b");
        assert!(matches!(
            place(101, &nodes, &specs),
            Err(RegistryError::PoolFull {
                requested: 101,
                largest_free: 100
            })
        ));
        assert!(matches!(
            place(1, &[], &[]),
            Err(RegistryError::Unavailable { .. })
        ));
    }
}
