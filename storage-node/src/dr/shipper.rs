//! The primary's shipper: one task per mastered volume with a DR link. It
//! keeps the master's DR gate true to the link's role and, while primary,
//! ships batches to a gateway of the peer cluster:
//!
//! 1. a new session starts with a **comparison**: the changed-block set is
//!    emptied, both sides' settled chunk hashes are compared, and the
//!    chunks that differ are the batch (so a new master, a restarted node
//!    or a long outage needs no durable change log: what differs is
//!    recomputed);
//! 2. after that each batch is the 4 KiB blocks written since the last one,
//!    as extents;
//! 3. a small batch is read whole at the **cut** (writes held off while it
//!    is read from the local copy); a large one is first read and staged
//!    while writes go on (fuzzy), then at the cut the extents written
//!    meanwhile are read and staged too. Either way every extent staged
//!    last holds its content at the cut instant;
//! 4. `Commit` asks the secondary to apply it atomically; `Applied` makes
//!    it the acknowledged point. A batch that fails is marked changed
//!    again and the next session compares anyway.

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tether_common::dr_stream::DrStream;
use tether_proto::dr::wire::{refused, DrFrame, Hello, DR_ALPN, MAX_HASHES};
use tether_proto::dr::{DrLinkRecord, DrRole, DrStatusRecord};
use tether_proto::keys::Kind;
use tether_tls::{Role, TlsContext};
use tracing::Instrument;

use super::{Extent, Gate, DR_BLOCK};
use crate::error::{NodeError, Result};
use crate::group::master::MasterState;

type Stream = DrStream<quinn::RecvStream, quinn::SendStream>;

/// Shipping runs this often at least when writes keep coming (so a batch
/// stays small), and the status is refreshed this often when idle.
const TICK: Duration = Duration::from_millis(50);
const IDLE_STATUS: Duration = Duration::from_secs(1);
/// Pauses between failed sessions: doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read into memory under the cut barrier at most; more go fuzzy
/// first, and what is still more after the fuzzy rounds is staged
/// straight from the copy under the barrier.
const CUT_BYTES: u64 = 32 << 20;
/// Fuzzy rounds before a cut holds writes for whatever is left.
const FUZZY_ROUNDS: usize = 3;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The gate the link's role sets, before the master serves anything.
pub fn initial_gate(master: &MasterState) {
    let gate = gate_of(
        master
            .ctx
            .mirror
            .dr_link(master.name())
            .map(|(link, _)| link),
    );
    master.dr.set_gate(gate);
}

fn gate_of(link: Option<DrLinkRecord>) -> Gate {
    match link {
        None => Gate::Open,
        Some(link)
            if tether_proto::dr::may_serve(link.role, link.generation, link.generation, false) =>
        {
            Gate::Open
        }
        Some(link) if link.role == DrRole::Secondary => Gate::Secondary,
        Some(_) => Gate::Fenced,
    }
}

/// Follows the volume's DR link for as long as `master` is its master.
pub fn spawn(master: Arc<MasterState>) {
    let span = tracing::info_span!("dr", volume = %master.name());
    tokio::spawn(run(master).instrument(span));
}

/// What the lag gauges need, shared with a ticker that keeps them current
/// while a batch hangs on a cut link (the shipper itself is stuck then).
#[derive(Default)]
struct LagClock {
    /// Primary and shipping: the gauges mean something.
    active: AtomicBool,
    point: AtomicU64,
    point_unix_ms: AtomicU64,
    started_ms: AtomicU64,
    shipping_writes: AtomicBool,
    rpo_secs: AtomicU64,
}

impl LagClock {
    /// Behind since the last point's cut if any write came after it (the
    /// writes a disaster would lose), or since shipping began without one.
    fn behind_since(&self, pending: u64) -> Option<u64> {
        let point_ms = self.point_unix_ms.load(Ordering::Acquire);
        (pending > 0 || self.shipping_writes.load(Ordering::Acquire)).then_some(if point_ms > 0 {
            point_ms
        } else {
            self.started_ms.load(Ordering::Acquire)
        })
    }

    fn lag_seconds(&self, pending: u64, now: u64) -> f64 {
        self.behind_since(pending)
            .map_or(0.0, |since| now.saturating_sub(since) as f64 / 1000.0)
    }

    fn set_gauges(&self, volume: &str, pending: u64) {
        let lag = self.lag_seconds(pending, now_ms());
        let labels = [("volume", volume.to_string())];
        metrics::gauge!("tether_dr_lag_seconds", &labels).set(lag);
        metrics::gauge!("tether_dr_lag_bytes", &labels).set((pending * DR_BLOCK) as f64);
        let missed = self.point.load(Ordering::Acquire) == 0
            || lag > self.rpo_secs.load(Ordering::Acquire) as f64;
        metrics::gauge!("tether_dr_rpo_missed", &labels).set(if missed { 1.0 } else { 0.0 });
        metrics::gauge!("tether_dr_last_point", &labels)
            .set(self.point.load(Ordering::Acquire) as f64);
    }
}

/// Keeps the gauges of `master`'s link current every half second.
async fn tick_gauges(master: Arc<MasterState>, clock: Arc<LagClock>) {
    while !master.is_deposed() {
        if clock.active.load(Ordering::Acquire) {
            clock.set_gauges(master.name(), master.dr.pending());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run(master: Arc<MasterState>) {
    let mut changes = master.ctx.mirror.subscribe();
    let mut stats = Stats::default();
    tokio::spawn(tick_gauges(master.clone(), stats.clock.clone()).in_current_span());
    let mut pause = RETRY_FIRST;
    loop {
        if master.is_deposed() {
            return;
        }
        let link = master.ctx.mirror.dr_link(master.name());
        master
            .dr
            .set_gate(gate_of(link.as_ref().map(|(link, _)| link.clone())));
        stats.clock.active.store(
            link.as_ref()
                .is_some_and(|(link, _)| link.role == DrRole::Primary),
            Ordering::Release,
        );
        if let Some((link, revision)) = link.filter(|(link, _)| link.role == DrRole::Primary) {
            if stats.generation != link.generation {
                // A new primacy (a promote, a failback): its own counts.
                let clock = stats.clock.clone();
                clock.point.store(0, Ordering::Release);
                clock.point_unix_ms.store(0, Ordering::Release);
                clock.started_ms.store(now_ms(), Ordering::Release);
                stats = Stats {
                    generation: link.generation,
                    clock,
                    ..Stats::default()
                };
            }
            stats.clock.rpo_secs.store(link.rpo_secs, Ordering::Release);
            let batches = stats.batches;
            let result = ship(&master, &link, revision, &mut stats).await;
            if stats.batches > batches {
                pause = RETRY_FIRST;
            }
            match result {
                Ok(()) => continue,
                Err(err) => {
                    tracing::warn!(peer = %link.peer, error = %err, retry_in_ms = pause.as_millis() as u64, "DR shipping stopped; retrying");
                    stats.error = Some(err.to_string());
                    publish(&master, &link, "down", &stats).await;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                    continue;
                }
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// What `dr status` shows of this link, kept across sessions.
#[derive(Default)]
struct Stats {
    generation: u64,
    /// Since a comparison in this master's life the changed set holds
    /// every write the secondary lacks beyond `point`.
    tracking: bool,
    point: u64,
    point_unix_ms: u64,
    batches: u64,
    chunks_compared: u64,
    extents_shipped: u64,
    bytes_raw: u64,
    bytes_wire: u64,
    /// (when, raw bytes) of recent batches, for the throughput.
    recent: std::collections::VecDeque<(Instant, u64)>,
    clock: Arc<LagClock>,
    last_batch_extents: u64,
    error: Option<String>,
}

async fn publish(master: &MasterState, link: &DrLinkRecord, state: &str, stats: &Stats) {
    let now = now_ms();
    let pending = master.dr.pending();
    let behind_since_ms = stats.clock.behind_since(pending);
    let lag_seconds = stats.clock.lag_seconds(pending, now);
    let window: u64 = stats.recent.iter().map(|(_, bytes)| bytes).sum();
    let span = stats
        .recent
        .front()
        .map_or(1.0, |(at, _)| at.elapsed().as_secs_f64().max(1.0));
    let status = DrStatusRecord {
        generation: link.generation,
        link_state: state.into(),
        last_point: stats.point,
        last_point_unix_ms: stats.point_unix_ms,
        lag_bytes: pending * DR_BLOCK,
        lag_seconds,
        behind_since_unix_ms: behind_since_ms,
        batches: stats.batches,
        chunks_compared: stats.chunks_compared,
        extents_shipped: stats.extents_shipped,
        bytes_raw: stats.bytes_raw,
        bytes_wire: stats.bytes_wire,
        bytes_per_sec: (window as f64 / span) as u64,
        applying: false,
        error: stats.error.clone(),
        updated_unix_ms: now,
    };
    stats.clock.set_gauges(master.name(), pending);
    let key = master.ctx.key(Kind::DrStatus, master.name());
    if let Ok(value) = serde_json::to_vec(&status) {
        if let Err(err) = master.ctx.store.put(&key, value, None).await {
            tracing::debug!(error = %err, "writing the DR status failed");
        }
    }
}

fn link_error(master: &MasterState, link: &DrLinkRecord, reason: impl Into<String>) -> NodeError {
    NodeError::DrLink {
        volume: master.name().to_string(),
        peer: link.peer.clone(),
        reason: reason.into(),
    }
}

/// One session: connect, compare, then batch after batch until something
/// fails or the role changes.
async fn ship(
    master: &Arc<MasterState>,
    link: &DrLinkRecord,
    revision: i64,
    stats: &mut Stats,
) -> Result<()> {
    let fail = |reason: String| link_error(master, link, reason);
    let tls = master
        .ctx
        .dr_tls
        .clone()
        .ok_or_else(|| fail("this node has no dr-peer certificate (--dr-tls-dir)".into()))?;
    let peer = master
        .ctx
        .mirror
        .peers()
        .into_iter()
        .find(|peer| peer.name == link.peer)
        .ok_or_else(|| fail("the peer cluster is not paired".into()))?;
    let ca_pem = peer
        .ca_pem
        .clone()
        .ok_or_else(|| fail("the pairing holds no CA of the peer".into()))?;
    if peer.gateways.is_empty() {
        return Err(fail("the peer has no gateways on record".into()));
    }
    publish(master, link, "connecting", stats).await;
    let connection = connect(&tls, &ca_pem, &link.peer, &peer.gateways)
        .await
        .map_err(fail)?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|err| fail(format!("opening a stream: {err}")))?;
    let mut stream = Stream::new(recv, send);
    let spec = master.ctx.mirror.spec(master.name());
    let encryption = spec.as_ref().and_then(|spec| spec.encryption.clone());
    let encrypted = encryption.is_some();
    stream
        .send(&DrFrame::Hello(Hello {
            volume: master.name().to_string(),
            generation: link.generation,
            size_bytes: master.volume.size_bytes(),
            chunk_size: master.volume.chunk_size() as u32,
            replicas: link.replicas,
            rpo_secs: link.rpo_secs,
            encrypted,
            // Ciphertext does not shrink: encrypted volumes ship as they are.
            zstd: !encrypted,
            encryption: encryption.and_then(|spec| serde_json::to_string(&spec).ok()),
        }))
        .await
        .map_err(|err| fail(err.to_string()))?;
    stream.flush().await.map_err(|err| fail(err.to_string()))?;
    let applied = match stream.recv().await.map_err(|err| fail(err.to_string()))? {
        DrFrame::Welcome { applied_point, .. } => applied_point,
        DrFrame::Refused {
            code: refused::NEWER_GENERATION,
            generation,
            reason,
        } => {
            fence(master, link, revision, generation).await?;
            return Err(fail(format!(
                "fenced: the peer holds generation {generation} ({reason})"
            )));
        }
        DrFrame::Refused { code, reason, .. } => {
            return Err(fail(format!("refused (code {code}): {reason}")))
        }
        other => return Err(fail(format!("answered the hello with {other:?}"))),
    };
    // The secondary is at the point this master last shipped, and the
    // changed set holds everything since (a failed batch puts its extents
    // back): resume from there. Otherwise (a new master, a secondary at
    // another point) compare.
    let resume = stats.tracking && applied == stats.point;
    if stats.point < applied {
        stats.point = applied;
        stats.clock.point.store(applied, Ordering::Release);
    }
    stats.error = None;
    let mut first = if resume {
        tracing::info!(peer = %link.peer, applied, pending_blocks = master.dr.pending(), "DR session open; resuming from the last acknowledged point");
        None
    } else {
        tracing::info!(peer = %link.peer, applied, "DR session open; comparing with the secondary");
        publish(master, link, "comparing", stats).await;
        // The comparison finds everything written before it; writes from
        // now on are in the changed set.
        master.dr.start_tracking().await;
        master.volume.settle().await?;
        let differing = compare(master, &mut stream, stats)
            .await
            .map_err(|err| fail(err.to_string()))?;
        stats.tracking = true;
        Some(differing)
    };
    let mut last_status = Instant::now();
    loop {
        if master.is_deposed() {
            return Ok(());
        }
        let current = master.ctx.mirror.dr_link(master.name());
        if current.as_ref().map(|(link, _)| link.role) != Some(DrRole::Primary)
            || current.as_ref().map(|(link, _)| link.generation) != Some(link.generation)
        {
            return Ok(());
        }
        let batch = match first.take() {
            Some(differing) => differing,
            None => {
                if master.dr.pending() == 0 && last_status.elapsed() < IDLE_STATUS {
                    tokio::select! {
                        _ = master.dr.written() => {}
                        _ = tokio::time::sleep(IDLE_STATUS - last_status.elapsed()) => {}
                    }
                    continue;
                }
                // Idle, an empty batch each second: the point's time stays
                // now, and the answer can ask for a handover.
                master.dr.take()
            }
        };
        if !batch.is_empty() {
            stats.clock.shipping_writes.store(true, Ordering::Release);
            publish(master, link, "shipping", stats).await;
        }
        let outcome = batch_once(master, &mut stream, stats, batch, false).await;
        stats.clock.shipping_writes.store(false, Ordering::Release);
        match outcome {
            Ok(handover) => {
                let state = if stats.last_batch_extents == 0 {
                    "idle"
                } else {
                    "shipping"
                };
                publish(master, link, state, stats).await;
                last_status = Instant::now();
                if handover {
                    return hand_over(master, link, &mut stream, stats).await;
                }
            }
            Err(err) => return Err(fail(err)),
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Dials the peer's gateways in turn; the server must be a gateway of `peer`.
async fn connect(
    tls: &Arc<TlsContext>,
    ca_pem: &str,
    peer: &str,
    gateways: &[String],
) -> std::result::Result<quinn::Connection, String> {
    let rustls = tls
        .client_config_trusting(ca_pem, vec![DR_ALPN.to_vec()])
        .map_err(|err| err.to_string())?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(rustls).map_err(|err| err.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_millis(500)))
        .max_idle_timeout(Some(
            Duration::from_secs(10)
                .try_into()
                .expect("a valid idle timeout"),
        ))
        .stream_receive_window((8u32 << 20).into())
        .send_window(64 << 20);
    config.transport_config(Arc::new(transport));
    let socket = tether_common::udp::bind_for_quic("0.0.0.0:0".parse().expect("an address"))
        .map_err(|err| format!("cannot open a UDP socket: {err}"))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|err| format!("cannot open a QUIC endpoint: {err}"))?;
    let mut last = String::from("no gateway answered");
    for gateway in gateways {
        let attempt = async {
            let addr = gateway
                .to_socket_addrs()
                .map_err(|err| format!("{gateway}: cannot resolve: {err}"))?
                .next()
                .ok_or_else(|| format!("{gateway}: resolves to nothing"))?;
            let host = gateway
                .rsplit_once(':')
                .map_or(gateway.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let connecting = endpoint
                .connect_with(config.clone(), addr, host)
                .map_err(|err| format!("{gateway}: {err}"))?;
            let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .map_err(|_| format!("{gateway}: no handshake in time"))?
                .map_err(|err| format!("{gateway}: {err}"))?;
            let certificates = connection.peer_identity().and_then(|any| {
                any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            });
            match tether_tls::peer_identity(certificates.as_deref().map(|c| c.as_slice())) {
                Ok(Some(identity))
                    if identity.role == Role::Gateway && identity.cluster == peer =>
                {
                    Ok(connection)
                }
                other => {
                    connection.close(0u32.into(), b"not a gateway of the peer");
                    Err(format!(
                        "{gateway}: the server is {:?}, not a gateway of {peer}",
                        other.ok().flatten().map(|identity| identity.uri())
                    ))
                }
            }
        };
        match attempt.await {
            Ok(connection) => return Ok(connection),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// The chunks whose settled hashes differ between the two sides, as extents.
async fn compare(
    master: &MasterState,
    stream: &mut Stream,
    stats: &mut Stats,
) -> std::result::Result<Vec<Extent>, String> {
    let tree = master.volume.hash_tree();
    let leaves = tree.leaves();
    let mut differing = Vec::new();
    let mut first = 0u64;
    while (first as usize) < leaves.len() {
        let count = (leaves.len() as u64 - first).min(MAX_HASHES as u64) as u32;
        stream
            .send(&DrFrame::HashRequest { first, count })
            .await
            .map_err(|err| err.to_string())?;
        stream.flush().await.map_err(|err| err.to_string())?;
        match stream.recv().await.map_err(|err| err.to_string())? {
            DrFrame::Hashes { first: at, hashes }
                if at == first && hashes.len() == count as usize =>
            {
                for (offset, hash) in hashes.iter().enumerate() {
                    let chunk = first + offset as u64;
                    if leaves[chunk as usize] != *hash {
                        let (chunk_size, size) =
                            (master.volume.chunk_size(), master.volume.size_bytes());
                        let at = chunk * chunk_size;
                        differing.push((at, chunk_size.min(size.saturating_sub(at))));
                    }
                }
            }
            DrFrame::Refused { reason, .. } => return Err(format!("comparison refused: {reason}")),
            other => return Err(format!("answered a hash request with {other:?}")),
        }
        first += count as u64;
    }
    stats.chunks_compared += leaves.len() as u64;
    tracing::info!(
        chunks = leaves.len(),
        differing = differing.len(),
        "compared with the secondary"
    );
    Ok(differing)
}

/// Stages one extent as it is now.
async fn stage(
    master: &MasterState,
    stream: &mut Stream,
    stats: &mut Stats,
    point: u64,
    offset: u64,
    data: Vec<u8>,
) -> std::result::Result<(), String> {
    let raw_len = data.len() as u32;
    let frame = if data.iter().all(|byte| *byte == 0) {
        DrFrame::Stage {
            point,
            offset,
            raw_len,
            compressed: false,
            zero: true,
            data: Bytes::new(),
        }
    } else {
        let encrypted = master
            .ctx
            .mirror
            .spec(master.name())
            .is_some_and(|spec| spec.encryption.is_some());
        match (!encrypted)
            .then(|| tether_common::block_zstd::compress_if_it_pays(&data))
            .flatten()
        {
            Some(packed) => DrFrame::Stage {
                point,
                offset,
                raw_len,
                compressed: true,
                zero: false,
                data: packed.into(),
            },
            None => DrFrame::Stage {
                point,
                offset,
                raw_len,
                compressed: false,
                zero: false,
                data: data.into(),
            },
        }
    };
    if let DrFrame::Stage { data, .. } = &frame {
        stats.bytes_wire += data.len() as u64;
    }
    stats.bytes_raw += raw_len as u64;
    stats.extents_shipped += 1;
    stream.send(&frame).await.map_err(|err| err.to_string())
}

async fn read_extent(master: &MasterState, (offset, length): Extent) -> Result<Vec<u8>> {
    let length = length.min(master.volume.size_bytes().saturating_sub(offset));
    master.volume.read(offset, length as u32).await
}

fn bytes_of(extents: &[Extent]) -> u64 {
    extents.iter().map(|(_, length)| length).sum()
}

/// Ships `fuzzy` and what is written meanwhile as one crash-consistent
/// batch; true if the secondary asks for a handover. `final_point`: a
/// planned promote's last batch, cut while writes are held (the caller
/// holds the barrier, so no cut is taken here).
async fn batch_once(
    master: &MasterState,
    stream: &mut Stream,
    stats: &mut Stats,
    fuzzy: Vec<Extent>,
    final_point: bool,
) -> std::result::Result<bool, String> {
    let point = stats.point + 1;
    let mut staged: Vec<Extent> = Vec::new();
    let result = async {
        let mut pending = fuzzy;
        let cut_unix_ms;
        let mut round = 0;
        loop {
            // A small batch is read whole at the cut (each extent ships
            // once); a large one is read while writes go on first.
            let small = bytes_of(&pending) <= CUT_BYTES;
            if final_point || !small {
                for extent in &pending {
                    let data = read_extent(master, *extent)
                        .await
                        .map_err(|err| err.to_string())?;
                    stage(master, stream, stats, point, extent.0, data).await?;
                    staged.push(*extent);
                }
                pending.clear();
            }
            if final_point {
                cut_unix_ms = now_ms();
                break;
            }
            // The cut: writes wait while the extents written since are read.
            let held = master.dr.cut().await;
            let mut written = master.dr.take();
            if !pending.is_empty() {
                // Extents of a comparison are whole chunks; the tracker's
                // may overlap them: both go, the tracker's after (newer
                // or equal bytes), as the receiver applies in order.
                pending.append(&mut written);
                written = pending.split_off(0);
            }
            round += 1;
            if bytes_of(&written) > CUT_BYTES && round < FUZZY_ROUNDS {
                drop(held);
                pending = written;
                continue;
            }
            if bytes_of(&written) > CUT_BYTES {
                // Still more than memory should hold after the fuzzy
                // rounds: stage it straight from the copy while writes
                // wait (bounded memory, a longer pause).
                for extent in &written {
                    let data = read_extent(master, *extent)
                        .await
                        .map_err(|err| err.to_string())?;
                    stage(master, stream, stats, point, extent.0, data).await?;
                    staged.push(*extent);
                }
                cut_unix_ms = now_ms();
                drop(held);
                break;
            }
            let mut cut = Vec::with_capacity(written.len());
            for extent in &written {
                cut.push(
                    read_extent(master, *extent)
                        .await
                        .map_err(|err| err.to_string())?,
                );
            }
            cut_unix_ms = now_ms();
            drop(held);
            for (extent, data) in written.iter().zip(cut) {
                stage(master, stream, stats, point, extent.0, data).await?;
                staged.push(*extent);
            }
            break;
        }
        stream
            .send(&DrFrame::Commit {
                point,
                cut_unix_ms,
                chunks: staged.len() as u64,
                final_point,
            })
            .await
            .map_err(|err| err.to_string())?;
        stream.flush().await.map_err(|err| err.to_string())?;
        match stream.recv().await.map_err(|err| err.to_string())? {
            DrFrame::Applied {
                point: applied,
                handover,
                ..
            } if applied == point => Ok((cut_unix_ms, handover)),
            DrFrame::Refused { reason, .. } => Err(format!("batch {point} refused: {reason}")),
            other => Err(format!("answered batch {point} with {other:?}")),
        }
    }
    .await;
    match result {
        Ok((cut_unix_ms, handover)) => {
            stats.point = point;
            stats.point_unix_ms = cut_unix_ms;
            stats.clock.point.store(point, Ordering::Release);
            stats
                .clock
                .point_unix_ms
                .store(cut_unix_ms, Ordering::Release);
            stats.batches += 1;
            stats.last_batch_extents = staged.len() as u64;
            let raw = bytes_of(&staged);
            stats.recent.push_back((Instant::now(), raw));
            while stats
                .recent
                .front()
                .is_some_and(|(at, _)| at.elapsed() > Duration::from_secs(10))
            {
                stats.recent.pop_front();
            }
            tracing::debug!(
                point,
                chunks = staged.len(),
                "batch applied on the secondary"
            );
            Ok(handover)
        }
        Err(err) => {
            master.dr.restore(&staged);
            Err(err)
        }
    }
}

/// A planned promote: hold writes, ship the last point, and once the
/// secondary is primary at the next generation become its secondary.
async fn hand_over(
    master: &Arc<MasterState>,
    link: &DrLinkRecord,
    stream: &mut Stream,
    stats: &mut Stats,
) -> Result<()> {
    let fail = |reason: String| link_error(master, link, reason);
    tracing::info!(peer = %link.peer, "planned promote: draining writes for the last point");
    let held = master.dr.cut().await;
    let written = master.dr.take();
    let result = batch_once(master, stream, stats, written, true).await;
    if let Err(err) = result {
        drop(held);
        return Err(fail(format!(
            "the last point did not reach the peer: {err}"
        )));
    }
    let drained = stats.point;
    if !tether_proto::dr::may_complete_planned_promote(stats.point, drained) {
        drop(held);
        return Err(fail("the last point was not acknowledged".into()));
    }
    let Some((current, revision)) = master.ctx.mirror.dr_link(master.name()) else {
        return Err(fail("the DR link vanished during the handover".into()));
    };
    let mut secondary = current.clone();
    secondary.role = DrRole::Secondary;
    secondary.generation = link.generation + 1;
    secondary.handover_requested = false;
    master.dr.set_gate(Gate::Secondary);
    cas_link(master, &secondary, revision).await?;
    drop(held);
    tracing::info!(peer = %link.peer, generation = secondary.generation, point = stats.point, "handed over: this side is the secondary now");
    publish(master, &secondary, "handed-over", stats).await;
    Ok(())
}

/// This side learnt of a newer generation: it refuses I/O until failback.
async fn fence(master: &MasterState, link: &DrLinkRecord, revision: i64, newer: u64) -> Result<()> {
    let role = tether_proto::dr::on_newer_generation(link.role, link.generation, newer);
    if role == link.role {
        return Ok(());
    }
    master.dr.set_gate(Gate::Fenced);
    let mut fenced = link.clone();
    fenced.role = role;
    tracing::error!(peer = %link.peer, generation = link.generation, newer, "fenced: the peer promoted a newer generation; refusing I/O until failback");
    cas_link(master, &fenced, revision).await
}

async fn cas_link(master: &MasterState, link: &DrLinkRecord, revision: i64) -> Result<()> {
    let key = master.ctx.key(Kind::DrLinks, master.name());
    let value = serde_json::to_vec(link).expect("a link record serializes");
    if coord_store::put_if_revision(master.ctx.store.as_ref(), &key, value, revision)
        .await?
        .is_none()
    {
        return Err(link_error(
            master,
            link,
            "the link record changed meanwhile; reading it again",
        ));
    }
    Ok(())
}
