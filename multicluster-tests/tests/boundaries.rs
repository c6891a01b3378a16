//! The crate boundaries ARCHITECTURE.md promises, checked on the resolved
//! dependency graph (`cargo metadata`): `proto` and the model checker know
//! nothing of tokio, etcd clients, HTTP or TLS.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Every package `package` pulls in through normal (not dev or build) dependencies.
fn normal_dependencies(metadata: &Value, package: &str) -> BTreeSet<String> {
    let name_of: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pkg| (pkg["id"].as_str().unwrap(), pkg["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| (node["id"].as_str().unwrap(), node))
        .collect();
    let root = name_of
        .iter()
        .find(|(_, name)| **name == package)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("no package {package}"));
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|kind| kind["kind"].is_null());
            let dep_id = dep["pkg"].as_str().unwrap();
            if normal && seen.insert(name_of[dep_id].to_string()) {
                stack.push(dep_id);
            }
        }
    }
    seen
}

#[test]
fn proto_and_the_model_know_nothing_of_tokio_etcd_or_tls() {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    for package in ["tether-proto", "tether-model"] {
        let deps = normal_dependencies(&metadata, package);
        let forbidden: Vec<&String> = deps
            .iter()
            .filter(|dep| {
                [
                    "tokio",
                    "hyper",
                    "tonic",
                    "rustls",
                    "mio",
                    "etcd-client",
                    "h2",
                ]
                .contains(&dep.as_str())
            })
            .collect();
        assert!(
            forbidden.is_empty(),
            "{package} depends on {forbidden:?} (all: {deps:?})"
        );
    }
}
