//! One volume stream: `Hello`, the grant check, `Welcome`, then that
//! volume's requests, pipelined and answered out of order.
//!
//! Each request is charged its bytes against the stream's budget and the
//! gateway's before it runs; a stream over budget is not read from, so QUIC
//! flow control pushes back on the satellite. A protocol violation (a bad
//! frame, a second Hello, an answer frame from the satellite, an id already
//! in flight, a block that does not decompress) ends the whole session.
//! Requests run on the volume's current master through the shared
//! follower, which resends what a failed master did not answer.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use master_follower::{BlockOp, VolumeFollower};
use tether_common::limits::{Budget, Charge};
use tether_proto::link::{
    self, decode_link_frame, encode_link_frame, refusal, LinkFrame, Welcome, FEATURE_ZSTD,
    VOLUME_READ_ONLY,
};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::access::{self, Access};
use crate::session::CLOSE_PROTOCOL;
use crate::Gateway;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers the satellite does not take for this long end the session.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
const READ_BUFFER: usize = 256 * 1024;

const EINVAL: u32 = 22;
const EPERM: u32 = 1;
const ENOSPC: u32 = 28;
/// Cipher sector of encrypted volumes: their I/O must be aligned to it.
const ENCRYPTED_BLOCK: u32 = 512;

/// Why a stream ended early.
enum End {
    /// The satellite broke the protocol: the session ends.
    Protocol(String),
    /// The stream or connection went away.
    Gone,
    /// Its grant was removed: the stream ends, the session goes on.
    Revoked(String),
}

impl From<tether_proto::ProtoError> for End {
    fn from(err: tether_proto::ProtoError) -> Self {
        End::Protocol(err.to_string())
    }
}

pub async fn serve(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    gateway: Arc<Gateway>,
    satellite: String,
    connection: quinn::Connection,
) {
    if let Err(End::Protocol(reason)) = run(send, recv, &gateway, &satellite).await {
        tracing::warn!(%satellite, %reason, "protocol violation; ending the session");
        metrics::counter!("tether_gateway_protocol_errors_total", "satellite" => satellite.clone())
            .increment(1);
        connection.close(CLOSE_PROTOCOL, reason.as_bytes());
    }
}

/// Reads until one frame is whole.
async fn next_frame(
    recv: &mut quinn::RecvStream,
    input: &mut BytesMut,
) -> Result<Option<LinkFrame>, End> {
    loop {
        if let Some(frame) = decode_link_frame(input)? {
            return Ok(Some(frame));
        }
        if input.capacity() - input.len() < READ_BUFFER / 4 {
            input.reserve(READ_BUFFER);
        }
        match recv.read_buf(input).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(_) => return Err(End::Gone),
        }
    }
}

async fn write_frame(send: &mut quinn::SendStream, frame: &LinkFrame) -> Result<(), End> {
    let mut out = BytesMut::new();
    encode_link_frame(frame, &mut out);
    send.write_all(&out).await.map_err(|_| End::Gone)
}

async fn run(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    gateway: &Arc<Gateway>,
    satellite: &str,
) -> Result<(), End> {
    let mut input = BytesMut::with_capacity(READ_BUFFER);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_frame(&mut recv, &mut input)).await {
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(end)) => return Err(end),
        Err(_) => return Err(End::Protocol("no Hello within 10 s".into())),
    };
    let LinkFrame::Hello {
        min_version,
        max_version,
        features,
        volume,
    } = hello
    else {
        return Err(End::Protocol("the stream did not open with Hello".into()));
    };
    let refuse = |code: u32, reason: String| LinkFrame::Refused { code, reason };
    let Some(version) = link::negotiate_version(min_version, max_version) else {
        let reason = format!(
            "no common link version: the satellite speaks {min_version}-{max_version}, this gateway {}-{}",
            link::LINK_VERSION_MIN,
            link::LINK_VERSION_MAX
        );
        write_frame(&mut send, &refuse(refusal::VERSION, reason)).await?;
        let _ = send.finish();
        return Ok(());
    };
    let spec = gateway.mirror.spec(&volume);
    let access = match access::open(
        satellite,
        &volume,
        &gateway.mirror.grants(satellite),
        spec.as_ref(),
    ) {
        Ok(access) => access,
        Err(denied) => {
            tracing::warn!(%satellite, %volume, reason = %denied.reason, "refused a volume open");
            metrics::counter!("tether_gateway_refused_total", "reason" => "grant").increment(1);
            write_frame(&mut send, &refuse(denied.code, denied.reason)).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    let spec = spec.expect("open() refuses a missing volume");
    let encrypted = spec.encryption.is_some();
    // Ciphertext does not compress: never spend CPU trying.
    let zstd = features & FEATURE_ZSTD != 0 && !encrypted;
    let limits = gateway.limits;
    let welcome = Welcome {
        version,
        features: if zstd { FEATURE_ZSTD } else { 0 },
        size_bytes: spec.size_bytes,
        volume_flags: (if access.read_only {
            VOLUME_READ_ONLY
        } else {
            0
        }) | (if encrypted { link::VOLUME_ENCRYPTED } else { 0 }),
        max_request_bytes: link::MAX_IO_BYTES,
        min_block_bytes: if encrypted { ENCRYPTED_BLOCK } else { 1 },
        max_in_flight: limits.max_in_flight,
        max_in_flight_bytes: limits.stream_bytes,
    };
    write_frame(&mut send, &LinkFrame::Welcome(welcome.clone())).await?;
    tracing::info!(%satellite, %volume, read_only = access.read_only, zstd, "volume opened");
    let opened = Opened {
        volume: volume.clone(),
        satellite: satellite.to_string(),
        access,
        welcome,
        zstd: zstd.then(Default::default),
        follower: gateway.follower(&volume),
        in_flight: Mutex::new(HashSet::new()),
        op_metrics: OpMetrics::new(satellite),
    };
    let opened = Arc::new(opened);
    let (replies, reply_rx) = mpsc::channel::<(LinkFrame, Charge)>(limits.max_in_flight as usize);
    // Answers go out from their own task; `reset` tells it to end the
    // stream at once (its grant is gone).
    let (reset, reset_rx) = tokio::sync::oneshot::channel();
    let mut writer = tokio::spawn(send_replies(reply_rx, send, reset_rx));
    let budget = Budget::new(
        limits.stream_bytes,
        limits.max_in_flight,
        gateway.shared_bytes.clone(),
        limits.gateway_bytes,
    );
    let mut changes = gateway.mirror.subscribe();
    let result = loop {
        tokio::select! {
            frame = next_frame(&mut recv, &mut input) => match frame {
                Ok(Some(frame)) => {
                    if let Err(end) = take(frame, &opened, &budget, &replies).await {
                        break Err(end);
                    }
                }
                Ok(None) => break Ok(()),
                Err(end) => break Err(end),
            },
            changed = changes.changed() => {
                if changed.is_err() {
                    break Err(End::Gone);
                }
                let still = access::open(satellite, &volume, &gateway.mirror.grants(satellite), gateway.mirror.spec(&volume).as_ref());
                if let Err(denied) = still {
                    break Err(End::Revoked(denied.reason));
                }
            }
            _ = &mut writer => break Err(End::Protocol("the satellite stopped taking answers".into())),
        }
    };
    drop(replies);
    match result {
        Err(End::Revoked(reason)) => {
            tracing::warn!(%satellite, %volume, %reason, "ending a volume stream: its grant is gone");
            metrics::counter!("tether_gateway_streams_revoked_total").increment(1);
            let _ = reset.send(refusal::NOT_GRANTED);
            let _ = recv.stop(quinn::VarInt::from_u32(refusal::NOT_GRANTED));
            Ok(())
        }
        Ok(()) => {
            // The satellite finished sending: let the answers in flight go out.
            if !writer.is_finished() {
                let _ = writer.await;
            }
            Ok(())
        }
        other => other,
    }
}

/// What a stream serves, fixed at Welcome.
struct Opened {
    volume: String,
    satellite: String,
    access: Access,
    welcome: Welcome,
    /// zstd for this stream's answers, when negotiated.
    zstd: Option<tether_common::block_zstd::Adaptive>,
    follower: Arc<VolumeFollower>,
    /// Ids of requests not answered yet: an id is used once at a time.
    in_flight: Mutex<HashSet<u64>>,
    op_metrics: OpMetrics,
}

/// This stream's request counters and latency histograms, by operation,
/// registered once at open: a request then touches no label or registry.
struct OpMetrics {
    by_op: Vec<(&'static str, metrics::Counter, metrics::Histogram)>,
}

impl OpMetrics {
    const OPS: [&'static str; 5] = ["read", "write", "trim", "write_zeroes", "flush"];

    fn new(satellite: &str) -> Self {
        let by_op = Self::OPS
            .iter()
            .map(|op| {
                let labels = [("satellite", satellite.to_string()), ("op", op.to_string())];
                (
                    *op,
                    metrics::counter!("tether_gateway_ops_total", &labels),
                    metrics::histogram!("tether_gateway_op_seconds", &labels),
                )
            })
            .collect();
        OpMetrics { by_op }
    }

    fn of(&self, op: &str) -> (&metrics::Counter, &metrics::Histogram) {
        let (_, count, seconds) = self
            .by_op
            .iter()
            .find(|(name, _, _)| *name == op)
            .unwrap_or(&self.by_op[0]);
        (count, seconds)
    }
}

/// Checks one frame from the satellite and starts it.
async fn take(
    frame: LinkFrame,
    opened: &Arc<Opened>,
    budget: &Budget,
    replies: &mpsc::Sender<(LinkFrame, Charge)>,
) -> Result<(), End> {
    if !frame.is_request() {
        return Err(End::Protocol(format!(
            "a {} frame after Welcome",
            kind_name(&frame)
        )));
    }
    let id = frame.id();
    if !opened.in_flight.lock().unwrap().insert(id) {
        return Err(End::Protocol(format!(
            "request id {id} is already in flight"
        )));
    }
    let charge = budget.charge(frame.held_bytes()).await;
    let (op, early) = match request(frame, opened) {
        Ok(request) => request,
        Err(reason) => return Err(End::Protocol(reason)),
    };
    let (opened, replies) = (opened.clone(), replies.clone());
    tokio::spawn(async move {
        let started = Instant::now();
        let label = op_label(&op);
        let answer = match early {
            Some(errno) => LinkFrame::Done { id, error: errno },
            None => match opened
                .follower
                .execute::<master_follower::FollowError, _, std::future::Ready<_>>(&op, |_, _| None)
                .await
            {
                Ok(Some(data)) => LinkFrame::Data {
                    id,
                    data: tether_common::block_zstd::pack(
                        bytes::Bytes::from(data),
                        opened.zstd.as_ref(),
                    ),
                },
                Ok(None) => LinkFrame::Done { id, error: 0 },
                Err(err) => {
                    tracing::warn!(satellite = %opened.satellite, volume = %opened.volume, error = %err, "request failed");
                    LinkFrame::Done {
                        id,
                        error: err.errno(),
                    }
                }
            },
        };
        let (count, seconds) = opened.op_metrics.of(label);
        count.increment(1);
        seconds.record(started.elapsed().as_secs_f64());
        opened.in_flight.lock().unwrap().remove(&id);
        let _ = replies.send((answer, charge)).await;
    });
    Ok(())
}

fn kind_name(frame: &LinkFrame) -> &'static str {
    match frame {
        LinkFrame::Hello { .. } => "Hello",
        LinkFrame::Welcome(_) => "Welcome",
        LinkFrame::Refused { .. } => "Refused",
        LinkFrame::Done { .. } => "Done",
        LinkFrame::Data { .. } => "Data",
        _ => "request",
    }
}

fn op_label(op: &BlockOp) -> &'static str {
    match op {
        BlockOp::Read { .. } => "read",
        BlockOp::Write { .. } => "write",
        BlockOp::WriteZeroes { punch: true, .. } => "trim",
        BlockOp::WriteZeroes { .. } => "write_zeroes",
        BlockOp::Flush => "flush",
        BlockOp::Hashes { .. } => "hashes",
    }
}

/// The block operation a request asks for, or the errno it is answered
/// with at once (out of range, misaligned, a write through a read-only
/// grant). `Err`: a protocol violation.
fn request(frame: LinkFrame, opened: &Opened) -> Result<(BlockOp, Option<u32>), String> {
    let size = opened.welcome.size_bytes;
    let block = opened.welcome.min_block_bytes as u64;
    let checked = |offset: u64, length: u64, writes: bool| -> Option<u32> {
        if writes && opened.access.read_only {
            return Some(EPERM);
        }
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Some(if writes { ENOSPC } else { EINVAL });
        }
        if !offset.is_multiple_of(block) || !length.is_multiple_of(block) {
            return Some(EINVAL);
        }
        None
    };
    let wire = frame_wire_bytes(&frame);
    metrics::counter!("tether_gateway_wire_bytes_total", "direction" => "in").increment(wire);
    Ok(match frame {
        LinkFrame::Read { offset, length, .. } => (
            BlockOp::Read { offset, length },
            checked(offset, length as u64, false),
        ),
        LinkFrame::Write {
            offset, fua, data, ..
        } => {
            let data = tether_common::block_zstd::unpack(data)?;
            metrics::counter!("tether_gateway_data_bytes_total", "direction" => "in")
                .increment(data.len() as u64);
            let early = checked(offset, data.len() as u64, true);
            (BlockOp::Write { offset, data, fua }, early)
        }
        LinkFrame::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
            ..
        } => (
            BlockOp::WriteZeroes {
                offset,
                length,
                punch: !no_hole,
                fua,
            },
            checked(offset, length, true),
        ),
        LinkFrame::Trim {
            offset,
            length,
            fua,
            ..
        } => (
            BlockOp::WriteZeroes {
                offset,
                length,
                punch: true,
                fua,
            },
            checked(offset, length, true),
        ),
        LinkFrame::Flush { .. } => (BlockOp::Flush, None),
        _ => return Err("not a request".into()),
    })
}

fn frame_wire_bytes(frame: &LinkFrame) -> u64 {
    let payload = match frame {
        LinkFrame::Write { data, .. } | LinkFrame::Data { data, .. } => data.wire_len(),
        _ => 0,
    };
    (link::LINK_HEADER_LEN + payload) as u64
}

/// Writes answers as they come, batching what is ready; an answer the
/// satellite does not take for [`STALL_TIMEOUT`] ends the stream (the
/// reading side sees this task end).
async fn send_replies(
    mut replies: mpsc::Receiver<(LinkFrame, Charge)>,
    mut send: quinn::SendStream,
    mut reset: tokio::sync::oneshot::Receiver<u32>,
) {
    let mut out = BytesMut::with_capacity(READ_BUFFER);
    let mut held: Vec<Charge> = Vec::new();
    loop {
        let (first, charge) = tokio::select! {
            next = replies.recv() => match next {
                Some(next) => next,
                None => break,
            },
            code = &mut reset => {
                if let Ok(code) = code {
                    let _ = send.reset(quinn::VarInt::from_u32(code));
                }
                return;
            }
        };
        let mut next = Some((first, charge));
        while let Some((frame, charge)) = next.take() {
            if let LinkFrame::Data { data, .. } = &frame {
                metrics::counter!("tether_gateway_wire_bytes_total", "direction" => "out")
                    .increment((link::LINK_HEADER_LEN + data.wire_len()) as u64);
                metrics::counter!("tether_gateway_data_bytes_total", "direction" => "out")
                    .increment(data.raw_len() as u64);
            }
            encode_link_frame(&frame, &mut out);
            held.push(charge);
            if out.len() < READ_BUFFER {
                next = replies.try_recv().ok();
            }
        }
        match tokio::time::timeout(STALL_TIMEOUT, send.write_all(&out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        out.clear();
        held.clear();
    }
    let _ = send.finish();
}
