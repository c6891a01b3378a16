//! `dev up --netns`: each node and satellite of a dev cluster is a host of
//! its own: a network namespace with one veth on a bridge in the root
//! namespace. The bridge's address (`10.88.INDEX.1`) is the cluster's
//! control address, where its etcd, registry and gateways listen; node `k`
//! is `10.88.INDEX.(10+k)`, satellite `k` `10.88.INDEX.(100+k)`. Traffic
//! between two clusters' hosts goes to the other bridge's address, which is
//! the root namespace's own, so nothing is forwarded. A partition is then
//! an iptables rule inside one host (`ip netns exec NS iptables …`), which
//! cuts its open connections too.

use std::process::Command;

use anyhow::{bail, Context};

use crate::federation::{HostEntry, NetworkEntry};

/// Node `k`'s address ends in `NODE_BASE + k`.
const NODE_BASE: usize = 10;
/// Satellite `k`'s address ends in `SATELLITE_BASE + k`.
const SATELLITE_BASE: usize = 100;
/// Hosts per kind the /24 has room for.
const MAX_HOSTS: usize = 89;

/// Runs `ip ARGS`; the error carries what `ip` said.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2) for --netns")?;
    if !output.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn bridge_name(index: u8) -> String {
    format!("tbr{index}")
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Creates bridge `index` with its address; fails if it exists already.
fn add_bridge(index: u8) -> anyhow::Result<NetworkEntry> {
    let bridge = bridge_name(index);
    // Traffic between two hosts on the bridge is not the root namespace's
    // to filter (br_netfilter would run it through the root's FORWARD chain).
    ip(&[
        "link",
        "add",
        &bridge,
        "type",
        "bridge",
        "nf_call_iptables",
        "0",
    ])?;
    let network = NetworkEntry {
        bridge: bridge.clone(),
        index,
        address: format!("10.88.{index}.1"),
    };
    let configured = ip(&[
        "addr",
        "add",
        &format!("{}/24", network.address),
        "dev",
        &bridge,
    ])
    .and_then(|()| ip(&["link", "set", &bridge, "up"]));
    if let Err(err) = configured {
        let _ = ip(&["link", "del", &bridge]);
        return Err(err);
    }
    Ok(network)
}

/// The network a cluster had (made again if `dev down` took it down), or
/// a new one on the first free bridge index.
pub(super) fn network_for(previous: Option<&NetworkEntry>) -> anyhow::Result<NetworkEntry> {
    if let Some(previous) = previous {
        if link_exists(&previous.bridge) {
            return Ok(previous.clone());
        }
        return add_bridge(previous.index).with_context(|| {
            format!(
                "making the cluster's bridge {} ({}) again",
                previous.bridge, previous.address
            )
        });
    }
    let mut last = None;
    for index in 1..=250u8 {
        if link_exists(&bridge_name(index)) {
            continue;
        }
        // Two `dev up`s at once: the one whose `ip link add` loses goes on.
        match add_bridge(index) {
            Ok(network) => return Ok(network),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("every bridge tbr1..tbr250 is taken")))
        .context("finding a free bridge for --netns")
}

/// Which of a cluster's hosts: node `k` or satellite `k` (1-based).
#[derive(Clone, Copy)]
pub(super) enum HostKind {
    Node(usize),
    Satellite(usize),
}

/// Host `name` of `network`: its namespace, veth and address, made if missing.
pub(super) fn host(
    network: &NetworkEntry,
    name: &str,
    kind: HostKind,
) -> anyhow::Result<HostEntry> {
    let (offset, short) = match kind {
        HostKind::Node(k) => (k, format!("n{k}")),
        HostKind::Satellite(k) => (k, format!("s{k}")),
    };
    anyhow::ensure!(
        (1..=MAX_HOSTS).contains(&offset),
        "--netns has room for {MAX_HOSTS} nodes and {MAX_HOSTS} satellites per cluster"
    );
    let last_octet = match kind {
        HostKind::Node(k) => NODE_BASE + k,
        HostKind::Satellite(k) => SATELLITE_BASE + k,
    };
    let entry = HostEntry {
        netns: format!("tether{}-{name}", network.index),
        address: format!("10.88.{}.{last_octet}", network.index),
    };
    // The root end of the veth; the other end is `eth0` inside.
    let veth = format!("tv{}{short}", network.index);
    if netns_exists(&entry.netns) && link_exists(&veth) {
        return Ok(entry);
    }
    let _ = ip(&["netns", "del", &entry.netns]);
    let _ = ip(&["link", "del", &veth]);
    let made = (|| {
        ip(&["netns", "add", &entry.netns])?;
        ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &entry.netns,
        ])?;
        ip(&["link", "set", &veth, "master", &network.bridge, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", entry.netns.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&[
            "addr",
            "add",
            &format!("{}/24", entry.address),
            "dev",
            "eth0",
        ])?;
        inside(&["link", "set", "eth0", "up"])?;
        // Other clusters' bridges are the root namespace's addresses.
        inside(&["route", "add", "default", "via", &network.address])
    })();
    if let Err(err) = made {
        let _ = ip(&["netns", "del", &entry.netns]);
        let _ = ip(&["link", "del", &veth]);
        return Err(err).with_context(|| format!("making host {name}'s network namespace"));
    }
    Ok(entry)
}

/// Removes `hosts`' namespaces (their veths go with them) and the bridge.
pub(super) fn remove(network: &NetworkEntry, hosts: &[&HostEntry]) {
    for host in hosts {
        if netns_exists(&host.netns) {
            if let Err(err) = ip(&["netns", "del", &host.netns]) {
                eprintln!("removing network namespace {}: {err:#}", host.netns);
            }
        }
    }
    if link_exists(&network.bridge) {
        if let Err(err) = ip(&["link", "del", &network.bridge]) {
            eprintln!("removing bridge {}: {err:#}", network.bridge);
        }
    }
}
