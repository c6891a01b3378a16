//! Where a volume's copies go: distinct live nodes that carry every label the
//! volume asks for (`--placement zone=eu-1a`) and have room for it, spread
//! across the values of the failure-domain label ([`FAILURE_DOMAIN_LABEL`])
//! as far as the nodes allow, most unprovisioned capacity first.
//!
//! Today every volume has one copy; volume groups place their replicas with
//! the same function.

use std::collections::{BTreeMap, BTreeSet};

use tether_proto::admin::{NodeRecord, VolumeSpec};

use crate::RegistryError;

/// The node label whose values are failure domains: copies of one volume
/// land in different ones when the nodes allow it.
pub const FAILURE_DOMAIN_LABEL: &str = "zone";

/// Provisioned bytes of `node`: the sizes of the volumes it holds a copy of.
pub fn provisioned_on(node: &str, specs: &[VolumeSpec]) -> u64 {
    specs
        .iter()
        .filter(|spec| spec.copy_nodes().iter().any(|copy| copy == node))
        .map(|spec| spec.size_bytes)
        .sum()
}

/// `key=value,key=value`, for messages.
pub fn format_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Picks `copies` distinct nodes for a volume of `size_bytes`; the first is the master.
pub fn place(
    size_bytes: u64,
    copies: usize,
    constraints: &BTreeMap<String, String>,
    nodes: &[NodeRecord],
    specs: &[VolumeSpec],
) -> Result<Vec<String>, RegistryError> {
    place_beside(size_bytes, copies, constraints, nodes, specs, &[])
}

/// Like [`place`], for copies joining existing ones (a replacement): the
/// failure domains of `existing` count as used, so the new copy lands in
/// another zone when one fits.
pub fn place_beside(
    size_bytes: u64,
    copies: usize,
    constraints: &BTreeMap<String, String>,
    nodes: &[NodeRecord],
    specs: &[VolumeSpec],
    existing: &[NodeRecord],
) -> Result<Vec<String>, RegistryError> {
    if nodes.is_empty() {
        return Err(RegistryError::Unavailable {
            reason: "no storage node is up in this cluster".into(),
        });
    }
    let eligible: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|node| {
            constraints
                .iter()
                .all(|(key, value)| node.labels.get(key) == Some(value))
        })
        .collect();
    if eligible.is_empty() {
        return Err(RegistryError::NoPlacement {
            reason: format!("no live node matches {}", format_labels(constraints)),
        });
    }
    let free = |node: &NodeRecord| {
        node.provisioning_limit()
            .saturating_sub(provisioned_on(&node.name, specs))
    };
    let mut fitting: Vec<&NodeRecord> = eligible
        .iter()
        .copied()
        .filter(|node| free(node) >= size_bytes)
        .collect();
    if fitting.is_empty() {
        let largest_free = eligible.iter().map(|node| free(node)).max().unwrap_or(0);
        return Err(RegistryError::PoolFull {
            requested: size_bytes,
            largest_free,
        });
    }
    if fitting.len() < copies {
        return Err(RegistryError::NoPlacement {
            reason: format!(
                "{copies} copies need {copies} distinct nodes with {size_bytes} bytes free{}; {} have it",
                if constraints.is_empty() { String::new() } else { format!(" and {}", format_labels(constraints)) },
                fitting.len()
            ),
        });
    }
    // Most free first; ties by name so placement is deterministic.
    fitting.sort_by(|a, b| free(b).cmp(&free(a)).then(a.name.cmp(&b.name)));
    let mut chosen: Vec<&NodeRecord> = Vec::with_capacity(copies);
    let mut domains_used: BTreeSet<Option<&String>> = existing
        .iter()
        .map(|node| node.labels.get(FAILURE_DOMAIN_LABEL))
        .collect();
    while chosen.len() < copies {
        let unchosen = fitting
            .iter()
            .copied()
            .filter(|node| !chosen.iter().any(|c| c.name == node.name));
        let mut candidates = unchosen.clone();
        // Prefer a failure domain no copy uses yet; fall back to any node.
        let pick = candidates
            .find(|node| !domains_used.contains(&node.labels.get(FAILURE_DOMAIN_LABEL)))
            .or_else(|| unchosen.clone().next())
            .expect("fitting has at least `copies` nodes");
        domains_used.insert(pick.labels.get(FAILURE_DOMAIN_LABEL));
        chosen.push(pick);
    }
    Ok(chosen.into_iter().map(|node| node.name.clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, capacity_bytes: u64, zone: &str) -> NodeRecord {
        NodeRecord {
            version: 1,
            name: name.into(),
            capacity_bytes,
            io_backend: "io_uring".into(),
            metrics_addr: None,
            pid: 1,
            labels: [("zone".to_string(), zone.to_string())].into(),
            block_addr: None,
            control_addr: None,
            quarantined: Default::default(),
            provisionable_bytes: 0,
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
            placement: BTreeMap::new(),
            copies: vec![],
            encryption: None,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn most_free_node_wins_and_full_pools_are_refused() {
        let nodes = [
            node("a", 100, "z1"),
            node("b", 100, "z2"),
            node("c", 50, "z3"),
        ];
        let specs = [spec("v1", "a", 60)];
        let none = BTreeMap::new();
        assert_eq!(place(10, 1, &none, &nodes, &specs).unwrap(), ["b"]);
        assert_eq!(place(100, 1, &none, &nodes, &specs).unwrap(), ["b"]);
        assert!(matches!(
            place(101, 1, &none, &nodes, &specs),
            Err(RegistryError::PoolFull {
                requested: 101,
                largest_free: 100
            })
        ));
        assert!(matches!(
            place(1, 1, &none, &[], &[]),
            Err(RegistryError::Unavailable { .. })
        ));
    }

    #[test]
    fn constraints_filter_nodes() {
        let nodes = [node("a", 100, "z1"), node("b", 500, "z2")];
        assert_eq!(
            place(10, 1, &labels(&[("zone", "z1")]), &nodes, &[]).unwrap(),
            ["a"]
        );
        let err = place(10, 1, &labels(&[("zone", "mars")]), &nodes, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no live node matches zone=mars"), "{err}");
        // Full within the constraint, though another node has room.
        assert!(matches!(
            place(200, 1, &labels(&[("zone", "z1")]), &nodes, &[]),
            Err(RegistryError::PoolFull {
                largest_free: 100,
                ..
            })
        ));
    }

    #[test]
    fn copies_land_on_distinct_nodes_across_failure_domains() {
        let nodes = [
            node("a1", 300, "a"),
            node("a2", 290, "a"),
            node("b1", 100, "b"),
            node("c1", 50, "c"),
        ];
        let none = BTreeMap::new();
        // Spread first (a, b, c), even though a2 has more room than b1 and c1.
        assert_eq!(
            place(10, 3, &none, &nodes, &[]).unwrap(),
            ["a1", "b1", "c1"]
        );
        // More copies than domains: the rest on distinct nodes anyway.
        assert_eq!(
            place(10, 4, &none, &nodes, &[]).unwrap(),
            ["a1", "b1", "c1", "a2"]
        );
        // Not enough nodes with room.
        let err = place(60, 4, &none, &nodes, &[]).unwrap_err().to_string();
        assert!(err.contains("4 copies need 4 distinct nodes"), "{err}");
    }

    #[test]
    fn a_replacement_avoids_the_zones_of_the_remaining_copies() {
        let nodes = [
            node("a", 100 << 30, "z1"),
            node("b", 90 << 30, "z2"),
            node("c", 80 << 30, "z1"),
            node("d", 10 << 30, "z3"),
        ];
        // The copy left is on "a" (z1): "c" has more room, but "d" is another zone.
        let chosen =
            place_beside(1 << 30, 1, &BTreeMap::new(), &nodes[1..], &[], &nodes[..1]).unwrap();
        assert_eq!(chosen, vec!["b".to_string()]);
        let chosen = place_beside(
            1 << 30,
            1,
            &BTreeMap::new(),
            &[nodes[2].clone(), nodes[3].clone()],
            &[],
            &nodes[..1],
        )
        .unwrap();
        assert_eq!(chosen, vec!["d".to_string()]);
    }
}
