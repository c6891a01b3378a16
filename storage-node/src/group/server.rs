//! The node's block server: one TCP listener taking block-frame streams,
//! each over mutual TLS from a node of this cluster whose certificate names
//! the node its Hello claims to be.
//!
//! - A *replication* stream (`Hello` with the master's epoch) writes into
//!   this node's copy. It is admitted only when the store names the sender
//!   as the holder of the volume's lock at exactly that epoch: a node's
//!   certificate alone lets nobody claim an epoch (a claimed 2^64 − 1 would
//!   fence every real master for good). Only such a confirmed epoch is
//!   recorded as the newest seen, and only it deposes this node's own
//!   master. Every frame from an epoch older than the newest this copy has
//!   seen is refused with `StaleEpoch` (rule 3).
//! - A *client* stream (`Hello` with epoch 0) comes from a presenting node:
//!   its requests run on this node's master of the volume, or are answered
//!   `StaleEpoch` when this node is not (or no longer) the master.
//!
//! Requests on a stream run concurrently and are answered out of order.
//!
//! What one peer can make the node hold is bounded (`crate::limits`): each
//! frame is charged its bytes (its payload, and what its answer will carry)
//! before it runs, against its stream's budget and one shared by all block
//! streams; the `Hello` must arrive within [`HANDSHAKE_TIMEOUT`], a frame
//! that stops arriving midway closes the stream after [`STALL_TIMEOUT`],
//! and the listener takes at most [`MAX_STREAMS`] streams.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tether_proto::keys::Kind;

use bytes::{Bytes, BytesMut};
use tether_proto::block::{decode_frame, encode_frame, Frame, DR_APPLY_SUFFIX};
use tether_proto::group::GroupRecord;
use tether_tls::TlsContext;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{BlockOp, GroupContext};
use crate::dr::Origin;
use crate::engine::{Pool, Volume};
use crate::error::{NodeError, Result};
use crate::hashlist::HashTree;
use crate::limits::{AcceptBackoff, Budget, Charge, ConnectionCap};

const READ_BUFFER: usize = 256 * 1024;
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Bytes one stream may have in flight (payloads and answers).
const STREAM_BYTES: u32 = 128 << 20;
/// Frames one stream may have in flight.
const STREAM_FRAMES: u32 = 1024;
/// Bytes all block streams of the node may have in flight together.
const NODE_BYTES: u32 = 1 << 30;
/// Streams the block listener takes at once.
const MAX_STREAMS: usize = 1024;
const EPERM: u32 = 1;
const ENOENT: u32 = 2;
const EIO: u32 = 5;
const EINVAL: u32 = 22;

/// Binds `addr` and serves until the runtime stops; returns the bound address.
pub async fn listen(addr: &str, ctx: Arc<GroupContext>, pool: Arc<Pool>) -> Result<SocketAddr> {
    let (listener, local) = crate::bind(addr, "block streams").await?;
    let shared = Arc::new(tokio::sync::Semaphore::new(NODE_BYTES as usize));
    let cap = ConnectionCap::new(
        MAX_STREAMS
            .min(crate::limits::open_files_limit() / 2)
            .max(1),
    );
    tokio::spawn(
        async move {
            let mut backoff = AcceptBackoff::new("block");
            let mut refusals = 0u64;
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        backoff.succeeded();
                        let Some(slot) = cap.try_admit() else {
                            refusals += 1;
                            if refusals.is_power_of_two() {
                                tracing::warn!(%peer, limit = cap.limit(), refused = refusals, "refused a block stream: the listener has as many as it takes");
                            }
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let span = tracing::info_span!("block", peer = %peer);
                        let (ctx, pool, shared) = (ctx.clone(), pool.clone(), shared.clone());
                        tokio::spawn(
                            async move {
                                let _slot = slot;
                                accept_stream(stream, ctx, pool, shared).await
                            }
                            .instrument(span),
                        );
                    }
                    Err(err) => backoff.failed(&err).await,
                }
            }
        }
        .in_current_span(),
    );
    Ok(local)
}

enum Role {
    Client {
        origin: Origin,
    },
    Replica {
        volume: Arc<Volume>,
        fence: Arc<super::EpochFence>,
        /// The tree a Delta Sync is comparing against, taken (after settling)
        /// when the master asks for the root.
        tree: Arc<Mutex<Option<Arc<HashTree>>>>,
    },
}

/// Opens mutual TLS (unless the node runs `--insecure-plaintext-block`) and
/// admits only nodes of this cluster; anything else is logged and closed.
async fn accept_stream(
    stream: TcpStream,
    ctx: Arc<GroupContext>,
    pool: Arc<Pool>,
    shared: Arc<tokio::sync::Semaphore>,
) {
    let Some(tls) = ctx.tls.clone() else {
        return serve_stream(stream, None, ctx, pool, shared).await;
    };
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsContext::accept(tls.server.clone(), stream),
    );
    match handshake.await {
        Ok(Ok((stream, Some(identity))))
            if matches!(
                identity.role,
                tether_tls::Role::Node | tether_tls::Role::Gateway
            ) && identity.cluster == tls.context.identity().cluster =>
        {
            let peer = Peer {
                name: identity.name,
                gateway: identity.role == tether_tls::Role::Gateway,
            };
            serve_stream(stream, Some(peer), ctx, pool, shared).await
        }
        Ok(Ok((_, identity))) => {
            tracing::warn!(identity = ?identity.map(|identity| identity.uri()), "refused a block stream: only nodes and gateways of this cluster may open one");
        }
        Ok(Err(reason)) => {
            metrics::counter!("tether_tls_refused_total", "endpoint" => "block").increment(1);
            let reason = tether_tls::http::explain(reason);
            tracing::warn!(%reason, "refused a block stream: TLS handshake failed")
        }
        Err(_) => tracing::warn!("refused a block stream: no TLS handshake within 10 s"),
    }
}

/// Who opened a block stream, by its certificate.
struct Peer {
    name: String,
    /// A gateway may open client streams (I/O to the master) only.
    gateway: bool,
}

async fn serve_stream<S>(
    stream: S,
    peer: Option<Peer>,
    ctx: Arc<GroupContext>,
    pool: Arc<Pool>,
    shared: Arc<tokio::sync::Semaphore>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut input = BytesMut::with_capacity(READ_BUFFER);
    let read_hello = async {
        loop {
            match decode_frame(&mut input) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "malformed block frame; closing the stream");
                    return None;
                }
            }
            match reader.read_buf(&mut input).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    };
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_hello).await {
        Ok(Some(hello)) => hello,
        Ok(None) => return,
        Err(_) => {
            tracing::warn!("block stream sent no Hello within 10 s; closing it");
            return;
        }
    };
    let Frame::Hello {
        volume: name,
        node: from,
        epoch,
    } = hello
    else {
        tracing::warn!("block stream did not open with Hello; closing it");
        return;
    };
    // A gateway's DR receiver names itself `GATEWAY+dr`: its writes are
    // batches applied to a secondary, which no other client may write.
    let dr_apply = peer.as_ref().is_some_and(|peer| {
        peer.gateway && epoch == 0 && from.strip_suffix(DR_APPLY_SUFFIX) == Some(peer.name.as_str())
    });
    if let Some(peer) = &peer {
        if peer.name != from && !dr_apply {
            tracing::warn!(volume = %name, claimed = %from, certificate = %peer.name, "refused a block stream: Hello names another node than the certificate");
            return;
        }
        if peer.gateway && epoch != 0 {
            tracing::warn!(volume = %name, gateway = %peer.name, epoch, "refused a block stream: a gateway may not open a replication stream");
            return;
        }
    }
    let (answer, role) = if epoch == 0 {
        let origin = if dr_apply {
            Origin::DrApply
        } else {
            Origin::Client
        };
        (
            Frame::Ack { seq: 0, error: 0 },
            Some(Role::Client { origin }),
        )
    } else {
        match pool.get(&name) {
            None => (
                Frame::Ack {
                    seq: 0,
                    error: ENOENT,
                },
                None,
            ),
            Some(volume) => {
                let _one_at_a_time = ctx.admissions.lock().await;
                match admit_master(&ctx, &name, &from, epoch).await {
                    Admission::Refused(answer) => (answer, None),
                    Admission::Admitted => {
                        let fence = ctx.fence(&name, volume.dir());
                        // Waits for this copy's writes of older epochs (its
                        // own old master's among them) before any of the new.
                        if let Err(err) = fence.confirm(epoch).await {
                            tracing::error!(volume = %name, error = %err, "recording the epoch failed");
                            (Frame::Ack { seq: 0, error: EIO }, None)
                        } else {
                            if let Some(master) = ctx.master(&name) {
                                if master.epoch < epoch {
                                    master.depose();
                                }
                            }
                            tracing::info!(volume = %name, master = %from, epoch, "replicating from master");
                            (
                                Frame::Ack { seq: 0, error: 0 },
                                Some(Role::Replica {
                                    volume,
                                    fence,
                                    tree: Arc::new(Mutex::new(None)),
                                }),
                            )
                        }
                    }
                }
            }
        }
    };
    let mut out = BytesMut::new();
    encode_frame(&answer, &mut out);
    if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
        return;
    }
    let Some(role) = role else { return };
    let role = Arc::new(role);
    let budget = Budget::new(STREAM_BYTES, STREAM_FRAMES, shared, NODE_BYTES);
    // Entries are bounded by STREAM_FRAMES (each holds a charge), bytes by the budgets.
    let (replies, mut reply_rx) = mpsc::channel::<(Frame, Charge)>(STREAM_FRAMES as usize);
    let mut writer_task = tokio::spawn(async move {
        let mut out = BytesMut::with_capacity(READ_BUFFER);
        let mut written = Vec::new();
        while let Some((first, charge)) = reply_rx.recv().await {
            encode_frame(&first, &mut out);
            written.push(charge);
            while out.len() < READ_BUFFER {
                match reply_rx.try_recv() {
                    Ok((next, charge)) => {
                        encode_frame(&next, &mut out);
                        written.push(charge);
                    }
                    Err(_) => break,
                }
            }
            let flushed = tokio::time::timeout(STALL_TIMEOUT, async {
                writer.write_all(&out).await?;
                writer.flush().await
            });
            if !matches!(flushed.await, Ok(Ok(()))) {
                tracing::warn!("peer does not read its answers; closing the stream");
                return;
            }
            out.clear();
            written.clear();
        }
    });
    'read: loop {
        loop {
            match decode_frame(&mut input) {
                Ok(Some(frame)) => {
                    let charge = tokio::select! {
                        charge = budget.charge(frame.held_bytes()) => charge,
                        _ = &mut writer_task => break 'read,
                    };
                    let (ctx, role, replies, name) =
                        (ctx.clone(), role.clone(), replies.clone(), name.clone());
                    tokio::spawn(
                        async move {
                            let answer = match role.as_ref() {
                                Role::Client { origin } => {
                                    client_request(&ctx, &name, *origin, frame).await
                                }
                                Role::Replica {
                                    volume,
                                    fence,
                                    tree,
                                } => replica_request(volume, fence, tree, frame).await,
                            };
                            let _ = replies.send((answer, charge)).await;
                        }
                        .in_current_span(),
                    );
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(volume = %name, error = %err, "malformed block frame; closing the stream");
                    break 'read;
                }
            }
        }
        if input.capacity() - input.len() < READ_BUFFER / 4 {
            input.reserve(READ_BUFFER);
        }
        let read = async {
            if input.is_empty() {
                Ok(reader.read_buf(&mut input).await)
            } else {
                // Midway through a frame: a peer that stops sending is cut off.
                tokio::time::timeout(STALL_TIMEOUT, reader.read_buf(&mut input)).await
            }
        };
        tokio::select! {
            read = read => match read {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::warn!(volume = %name, "peer stalled midway through a frame; closing the stream");
                    break;
                }
            },
            _ = &mut writer_task => break,
        }
    }
    drop(replies);
    if !writer_task.is_finished() {
        let _ = writer_task.await;
    }
}

enum Admission {
    Admitted,
    Refused(Frame),
}

/// Admits a replication stream from `from` at `epoch` only if the store
/// names `from` as the holder of the volume's lock and `epoch` as the
/// group's current epoch. The mirror answers first; when it disagrees (it
/// may lag a takeover by a moment) the store itself is read.
async fn admit_master(ctx: &GroupContext, name: &str, from: &str, epoch: u64) -> Admission {
    let confirms = |lock: Option<&str>, group: Option<&GroupRecord>| {
        lock == Some(from)
            && group.is_some_and(|group| group.epoch == epoch && group.master == from)
    };
    let mirrored = ctx.mirror.lock(name).map(|lock| lock.node);
    if confirms(
        mirrored.as_deref(),
        ctx.mirror.group(name).map(|(group, _)| group).as_ref(),
    ) {
        return Admission::Admitted;
    }
    let read = async {
        let lock = ctx.store.get(&ctx.key(Kind::Locks, name)).await?;
        let group = ctx.store.get(&ctx.key(Kind::Groups, name)).await?;
        Ok::<_, coord_store::StoreError>((lock, group))
    };
    let (lock, group) = match read.await {
        Ok(found) => found,
        Err(err) => {
            tracing::warn!(volume = %name, from, epoch, error = %err, "refused a replication stream: cannot check it against the store");
            return Admission::Refused(Frame::Ack { seq: 0, error: EIO });
        }
    };
    let holder = lock.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    let group = group.and_then(|kv| serde_json::from_slice::<GroupRecord>(&kv.value).ok());
    if confirms(holder.as_deref(), group.as_ref()) {
        return Admission::Admitted;
    }
    let current = group.as_ref().map_or(0, |group| group.epoch);
    tracing::warn!(volume = %name, from, epoch, store_epoch = current, lock_holder = ?holder, "refused a replication stream: the store does not name this node master at this epoch");
    if current > epoch {
        // A deposed master: tell it the epoch the store really has.
        return Admission::Refused(Frame::StaleEpoch {
            seq: 0,
            newest_epoch: current,
        });
    }
    Admission::Refused(Frame::Ack {
        seq: 0,
        error: EPERM,
    })
}

/// A presenting node's request, run on this node's master of the volume.
async fn client_request(ctx: &GroupContext, name: &str, origin: Origin, frame: Frame) -> Frame {
    let seq = frame.seq();
    let op = match frame {
        Frame::Read { offset, length, .. } => BlockOp::Read { offset, length },
        Frame::Write {
            offset, data, fua, ..
        } => BlockOp::Write { offset, data, fua },
        Frame::WriteZeroes {
            offset,
            length,
            punch,
            fua,
            ..
        } => BlockOp::WriteZeroes {
            offset,
            length,
            punch,
            fua,
        },
        Frame::Flush { .. } => BlockOp::Flush,
        Frame::HashRequest { first, count, .. } => BlockOp::Hashes { first, count },
        _ => return Frame::Ack { seq, error: EINVAL },
    };
    let writes = op.writes();
    let Some(master) = ctx.master(name) else {
        return Frame::StaleEpoch {
            seq,
            newest_epoch: 0,
        };
    };
    let hashes = matches!(op, BlockOp::Hashes { .. });
    match master.execute_from(op, origin).await {
        Ok(Some(data)) if hashes => Frame::TreeResponse {
            seq,
            hashes: data
                .chunks_exact(32)
                .map(|hash| hash.try_into().expect("32-byte hashes"))
                .collect(),
        },
        Ok(Some(data)) => Frame::ReadData {
            seq,
            data: Bytes::from(data),
        },
        Ok(None) => Frame::Ack { seq, error: 0 },
        Err(NodeError::NotMaster { epoch, .. }) => Frame::StaleEpoch {
            seq,
            newest_epoch: epoch,
        },
        Err(err) => {
            tracing::warn!(volume = name, error = %err, "request failed");
            Frame::Ack {
                seq,
                error: err.errno(writes),
            }
        }
    }
}

/// A master's frame, applied to this node's copy.
async fn replica_request(
    volume: &Volume,
    fence: &super::EpochFence,
    tree: &Mutex<Option<Arc<HashTree>>>,
    frame: Frame,
) -> Frame {
    let seq = frame.seq();
    let epoch = match &frame {
        Frame::Write { epoch, .. }
        | Frame::WriteZeroes { epoch, .. }
        | Frame::Flush { epoch, .. }
        | Frame::TreeRequest { epoch, .. }
        | Frame::ChunkData { epoch, .. } => *epoch,
        _ => return Frame::Ack { seq, error: EINVAL },
    };
    // Held until the frame is applied: a newer master's Delta Sync begins
    // only after it.
    let _admitted = match fence.admit(epoch).await {
        Ok(admitted) => admitted,
        Err(newest_epoch) => return Frame::StaleEpoch { seq, newest_epoch },
    };
    let done = |result: Result<()>, writes: bool| match result {
        Ok(()) => Frame::Ack { seq, error: 0 },
        Err(err) => {
            tracing::warn!(volume = volume.name(), error = %err, "replicated request failed");
            Frame::Ack {
                seq,
                error: err.errno(writes),
            }
        }
    };
    match frame {
        Frame::Write {
            offset, data, fua, ..
        } => done(volume.write(offset, data, fua).await, true),
        Frame::WriteZeroes {
            offset,
            length,
            punch,
            fua,
            ..
        } => done(volume.write_zeroes(offset, length, punch, fua).await, true),
        Frame::Flush { .. } => done(volume.flush().await, false),
        Frame::ChunkData {
            chunk_idx, data, ..
        } => {
            let offset = chunk_idx * volume.chunk_size();
            done(volume.write(offset, data, false).await, true)
        }
        Frame::TreeRequest { level, indices, .. } => {
            let snapshot = {
                let guard = tree.lock().unwrap();
                guard
                    .clone()
                    .filter(|tree| (level as usize) < tree.depth() - 1)
            };
            let snapshot = match snapshot {
                Some(snapshot) => snapshot,
                None => {
                    // The root: a new comparison. Rule 1: settle dirty chunks first.
                    if let Err(err) = volume.settle().await {
                        return done(Err(err), false);
                    }
                    let fresh = volume.hash_tree();
                    *tree.lock().unwrap() = Some(fresh.clone());
                    fresh
                }
            };
            let hashes = indices
                .iter()
                .map(|index| snapshot.node(level as usize, *index).unwrap_or([0; 32]))
                .collect();
            Frame::TreeResponse { seq, hashes }
        }
        _ => Frame::Ack { seq, error: EINVAL },
    }
}
