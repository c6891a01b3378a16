//! DR test tools: the write-order checker (a writer of sequenced blocks
//! through a real NBD client, and the check that an image is the state
//! after some prefix of its acknowledged writes), and a cut of the link
//! between the datacentres (iptables on the peer gateways' UDP ports).

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::harness::DevFederation;

pub const SEQ_BLOCK: usize = 4096;

/// `scripts/sequenced_writes.py` on a volume: write i puts i in block
/// i mod `blocks`, each acknowledged before the next.
pub struct SequencedWriter {
    child: Child,
    acked: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl SequencedWriter {
    pub fn start(uri: &str, blocks: u64, count: u64) -> anyhow::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sequenced_writes.py");
        // Debian's python3 has libnbd's module (the one on PATH may not).
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([uri, &blocks.to_string(), &count.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the sequenced writer")?;
        let stdout = child.stdout.take().expect("piped");
        let acked = Arc::new(AtomicU64::new(0));
        let seen = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(seq) = line.trim().parse::<u64>() {
                    seen.store(seq, Ordering::Release);
                }
            }
        });
        Ok(Self {
            child,
            acked,
            reader: Some(reader),
        })
    }

    /// Whether the writer still runs (it stops at a refused write).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The counter [`Self::acked`] reads, for a sampler on another thread.
    pub fn acked_counter(&self) -> Arc<AtomicU64> {
        self.acked.clone()
    }

    /// The last write the server acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Waits until the writer stops (a refused write, or its count); the
    /// last acknowledged write and its stderr.
    pub fn wait(mut self) -> anyhow::Result<(u64, String)> {
        let output = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("true runs"),
        )
        .wait_with_output()?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        Ok((
            self.acked(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}

impl Drop for SequencedWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sequence number in each of the first `blocks` blocks of `image`;
/// an error for a torn block (two numbers in one).
pub fn block_sequences(image: &[u8], blocks: u64) -> anyhow::Result<Vec<u64>> {
    let mut seqs = Vec::with_capacity(blocks as usize);
    for (index, block) in image
        .chunks_exact(SEQ_BLOCK)
        .take(blocks as usize)
        .enumerate()
    {
        let first = u64::from_be_bytes(block[..8].try_into().unwrap());
        if block
            .chunks_exact(8)
            .any(|word| u64::from_be_bytes(word.try_into().unwrap()) != first)
        {
            bail!("block {index} is torn: it holds more than one write");
        }
        seqs.push(first);
    }
    Ok(seqs)
}

/// The `k` such that `seqs` is exactly the state after writes 1..=k (a
/// prefix of the writer's stream), or an error naming the first block that
/// is not.
pub fn prefix_point(seqs: &[u64], blocks: u64) -> anyhow::Result<u64> {
    let k = seqs.iter().copied().max().unwrap_or(0);
    for (block, seq) in seqs.iter().enumerate() {
        let block = block as u64;
        // The last write i ≤ k with i mod blocks == block, if any.
        let back = (k + blocks - block) % blocks;
        let expected = if k >= back && k - back >= 1 {
            k - back
        } else {
            0
        };
        if *seq != expected {
            bail!(
                "not a prefix of the writes: after write {k}, block {block} would hold {expected}, it holds {seq}"
            );
        }
    }
    Ok(k)
}

/// Drops UDP to `ports` on loopback while it lives: the DC-to-DC link cut.
pub struct LinkCut {
    ports: Vec<u16>,
}

fn iptables(action: &str, port: u16) -> anyhow::Result<()> {
    let output = Command::new("iptables")
        .args([
            action,
            "INPUT",
            "-i",
            "lo",
            "-p",
            "udp",
            "--dport",
            &port.to_string(),
            "-j",
            "DROP",
        ])
        .output()
        .context("running iptables")?;
    if !output.status.success() {
        bail!(
            "iptables {action} for port {port}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl LinkCut {
    pub fn new(endpoints: &[String]) -> anyhow::Result<Self> {
        let mut cut = LinkCut { ports: Vec::new() };
        for endpoint in endpoints {
            let port: u16 = endpoint
                .rsplit_once(':')
                .context("an endpoint has a port")?
                .1
                .parse()?;
            iptables("-I", port)?;
            cut.ports.push(port);
        }
        Ok(cut)
    }

    /// Joins the datacentres again.
    pub fn restore(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        for port in self.ports.drain(..) {
            let _ = iptables("-D", port);
        }
    }
}

impl Drop for LinkCut {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The DR peer's `federation.json` (`dev up --dr` puts it in DIR/dr).
pub fn peer_info(federation: &DevFederation) -> anyhow::Result<Value> {
    let path = federation.dir().join("dr/federation.json");
    Ok(serde_json::from_slice(
        &std::fs::read(&path).with_context(|| path.display().to_string())?,
    )?)
}

/// Pairs `central` with `dr`: `add-peer` there, `cluster link` here (with
/// `peer_gateways` instead of what the peer's gateways advertise, if any).
pub fn pair(federation: &DevFederation, peer_gateways: &[String]) -> anyhow::Result<String> {
    let peer_admin = peer_info(federation)?["admin"]
        .as_str()
        .context("the peer's admin address")?
        .to_string();
    let added = federation.tether_peer("dr", &["cluster", "add-peer", "central"]);
    if !added.status.success() {
        bail!("add-peer: {}", String::from_utf8_lossy(&added.stderr));
    }
    let token = String::from_utf8(added.stdout)?.trim().to_string();
    let gateways = peer_gateways.join(",");
    let mut args = vec![
        "cluster",
        "link",
        "dr",
        "--endpoint",
        &peer_admin,
        "--token",
        &token,
    ];
    if !gateways.is_empty() {
        args.extend(["--peer-gateway", &gateways]);
    }
    federation.tether_ok(&args)
}

/// `tether dr status VOLUME -o json`, here or (`peer`) in the DR cluster.
pub fn dr_status(
    federation: &DevFederation,
    peer: Option<&str>,
    volume: &str,
) -> anyhow::Result<Value> {
    let args = ["-o", "json", "dr", "status", volume];
    let output = match peer {
        Some(peer) => federation.tether_peer(peer, &args),
        None => federation.tether(&args),
    };
    if !output.status.success() {
        bail!(
            "dr status {volume}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Polls the status of `volume` (here, or in `peer`) until `done` holds,
/// for at most `patience`.
pub fn wait_dr(
    federation: &DevFederation,
    peer: Option<&str>,
    volume: &str,
    patience: std::time::Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let started = std::time::Instant::now();
    loop {
        let status = dr_status(federation, peer, volume)?;
        if done(&status) {
            return Ok(status);
        }
        if started.elapsed() > patience {
            bail!("{what}: not within {patience:?}: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Waits until the primary's acknowledged point was cut after this call
/// began with nothing left to ship: every write acknowledged before the
/// call is on the secondary. That status.
pub fn wait_caught_up(
    federation: &DevFederation,
    volume: &str,
    patience: std::time::Duration,
) -> anyhow::Result<Value> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    wait_dr(
        federation,
        None,
        volume,
        patience,
        "the link catches up",
        |status| {
            status["last_point"].as_u64().unwrap_or(0) > 0
                && status["last_point_unix_ms"].as_u64().unwrap_or(0) >= since
                && status["lag_bytes"] == 0
        },
    )
}

/// Attaches `volume` in the DR cluster on a Unix socket in the federation's
/// directory; its NBD URI.
pub fn attach_in_dr(federation: &DevFederation, volume: &str) -> String {
    let socket = federation.dir().join(format!("{volume}-dr.sock"));
    let attached = federation.tether_peer(
        "dr",
        &[
            "volume",
            "attach",
            volume,
            "--nbd",
            &format!("unix:{}", socket.display()),
        ],
    );
    assert!(attached.status.success(), "{attached:?}");
    String::from_utf8(attached.stdout)
        .expect("a URI")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_takes_prefixes_and_nothing_else() {
        // 4 blocks, writes 1..=6: blocks hold 4, 5, 6, 3.
        assert_eq!(prefix_point(&[4, 5, 6, 3], 4).unwrap(), 6);
        assert_eq!(prefix_point(&[0, 1, 2, 0], 4).unwrap(), 2);
        assert_eq!(prefix_point(&[0, 0, 0, 0], 4).unwrap(), 0);
        // Write 6 in without write 5: a mix, not a prefix.
        assert!(prefix_point(&[4, 1, 6, 3], 4).is_err());
        let mut image = vec![0u8; 2 * SEQ_BLOCK];
        image[..8].copy_from_slice(&7u64.to_be_bytes());
        assert!(block_sequences(&image, 2).is_err());
        for word in image[..SEQ_BLOCK].chunks_exact_mut(8) {
            word.copy_from_slice(&7u64.to_be_bytes());
        }
        assert_eq!(block_sequences(&image, 2).unwrap(), vec![7, 0]);
    }
}
