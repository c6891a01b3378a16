//! The NBD server: one listener per attachment endpoint, up to
//! [`MAX_CONNECTIONS_PER_EXPORT`] connections per listener, pipelined
//! requests answered out of order.
//!
//! What one client can make the node hold is bounded (`crate::limits`):
//! each request is charged its bytes (a write's payload, a read's reply)
//! before its payload is buffered, against its connection's budget and one
//! shared by every NBD connection of the node; a handshake must finish in
//! [`HANDSHAKE_TIMEOUT`], and a payload that stops arriving or a reply
//! nobody reads for [`STALL_TIMEOUT`] closes the connection.
//!
//! The protocol itself (handshake state machine, request codec) lives in
//! `tether_proto::nbd`; this module owns the sockets. A protocol violation
//! closes that one connection with a log line naming the peer and volume;
//! every other connection carries on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tether_proto::nbd::{self, Command, ExportCatalog, ExportInfo, Request, TlsMode};
use tether_proto::ProtoError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::Instrument;

use crate::endpoint::{claim_socket_path, socket_identity, tcp_tls_mode, Endpoint};
use crate::negotiate::{negotiate, NbdTls, Negotiated};
use crate::{BlockOp, Export, ExportError, Result};
use tether_common::limits::{AcceptBackoff, Budget, Charge, ConnectionCap};

/// Requests one connection may have in flight; more wait in the socket.
const MAX_IN_FLIGHT: u32 = 128;
/// Bytes one connection may have in flight (write payloads, read replies).
const CONNECTION_BYTES: u32 = 64 << 20;
/// Bytes every NBD connection of a node may have in flight together.
pub const NODE_BYTES: u32 = 1 << 30;
/// Connections one export takes at once; more are closed at accept.
pub const MAX_CONNECTIONS_PER_EXPORT: usize = 256;
/// A client has this long to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A payload that stops arriving, or a reply the client does not read, for
/// this long closes the connection (and gives back what it was charged, so
/// stalled clients hold up others for at most this long).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What every NBD listener of a node shares: the node-wide byte budget and
/// the TLS configuration.
#[derive(Clone)]
pub struct NbdContext {
    shared_bytes: Arc<Semaphore>,
    tls: Arc<NbdTls>,
}

impl NbdContext {
    pub fn new(tls: &Arc<tether_tls::TlsContext>) -> Self {
        Self {
            shared_bytes: Arc::new(Semaphore::new(NODE_BYTES as usize)),
            tls: Arc::new(NbdTls::new(tls)),
        }
    }
}
const READ_BUFFER: usize = 256 * 1024;
/// Read payloads larger than this are written straight from their buffer.
const LARGE_PAYLOAD: usize = 64 * 1024;

/// A running listener. Dropping it stops accepting and closes its connections.
pub struct NbdServer {
    pub endpoint: String,
    pub uri: String,
    shutdown: watch::Sender<bool>,
    /// The socket this server made: path, device and inode.
    unix_socket: Option<(PathBuf, u64, u64)>,
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some((path, dev, ino)) = &self.unix_socket {
            // Only the socket this server made: if something else has taken
            // the path since, it is not ours to remove.
            if socket_identity(path) == Some((*dev, *ino)) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

struct VolumeCatalog<E>(Arc<E>);

impl<E: Export> ExportCatalog for VolumeCatalog<E> {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        (name.is_empty() || name == self.0.name()).then(|| ExportInfo {
            name: self.0.name().to_string(),
            size_bytes: self.0.size_bytes(),
            transmission_flags: nbd::TFLAG_SEND_FLUSH
                | nbd::TFLAG_SEND_FUA
                | nbd::TFLAG_SEND_TRIM
                | nbd::TFLAG_SEND_WRITE_ZEROES
                | nbd::TFLAG_CAN_MULTI_CONN,
            max_request_bytes: nbd::MAX_REQUEST_LEN,
            min_block_bytes: self.0.min_block_bytes(),
        })
    }
    fn names(&self) -> Vec<String> {
        vec![self.0.name().to_string()]
    }
}

/// Starts serving `volume` on `endpoint`.
pub async fn serve<E: Export>(
    endpoint_spec: &str,
    volume: Arc<E>,
    limits: NbdContext,
) -> Result<NbdServer> {
    let endpoint = Endpoint::parse(endpoint_spec)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let bind_err = |source: std::io::Error| ExportError::BadEndpoint {
        endpoint: endpoint_spec.to_string(),
        reason: format!("cannot listen: {source}"),
    };
    let name = volume.name().to_string();
    match endpoint {
        Endpoint::Tcp { addr, require_tls } => {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(bind_err)?;
            let local = listener.local_addr().map_err(bind_err)?;
            let tls_mode = tcp_tls_mode(local, require_tls);
            let uri = match tls_mode {
                TlsMode::Required => format!("nbds://{local}/{name}"),
                _ => format!("nbd://{local}/{name}"),
            };
            let accept = accept_loop_tcp(
                listener,
                Connections::new(volume, limits, tls_mode),
                shutdown_rx,
            );
            tokio::spawn(accept.in_current_span());
            Ok(NbdServer {
                endpoint: endpoint_spec.to_string(),
                uri,
                shutdown,
                unix_socket: None,
            })
        }
        Endpoint::Unix(path) => {
            claim_socket_path(endpoint_spec, &path)?;
            let listener = tokio::net::UnixListener::bind(&path).map_err(bind_err)?;
            let (dev, ino) = socket_identity(&path).ok_or_else(|| ExportError::BadEndpoint {
                endpoint: endpoint_spec.to_string(),
                reason: "the socket vanished as it was made".into(),
            })?;
            let uri = format!("nbd+unix:///{name}?socket={}", path.display());
            let accept = accept_loop_unix(
                listener,
                Connections::new(volume, limits, TlsMode::Off),
                shutdown_rx,
            );
            tokio::spawn(accept.in_current_span());
            Ok(NbdServer {
                endpoint: endpoint_spec.to_string(),
                uri,
                shutdown,
                unix_socket: Some((path, dev, ino)),
            })
        }
    }
}

/// What an accept loop hands each connection, and how many it has.
struct Connections<E> {
    volume: Arc<E>,
    limits: NbdContext,
    tls_mode: TlsMode,
    cap: ConnectionCap,
}

// Not derived: a derive would ask `E: Clone`, and only the Arc is cloned.
impl<E> Clone for Connections<E> {
    fn clone(&self) -> Self {
        Self {
            volume: self.volume.clone(),
            limits: self.limits.clone(),
            tls_mode: self.tls_mode,
            cap: self.cap.clone(),
        }
    }
}

impl<E: Export> Connections<E> {
    fn new(volume: Arc<E>, limits: NbdContext, tls_mode: TlsMode) -> Self {
        // Never more than half the descriptors this process may open, so
        // the cap refuses before accept() starts failing with EMFILE.
        let limit = MAX_CONNECTIONS_PER_EXPORT.min(tether_common::limits::open_files_limit() / 2);
        Self {
            volume,
            limits,
            tls_mode,
            cap: ConnectionCap::new(limit.max(1)),
        }
    }

    /// Serves `stream` if the export has room; closes it otherwise.
    fn admit<S>(&self, stream: S, peer: String, shutdown: watch::Receiver<bool>, refusals: &mut u64)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match self.cap.try_admit() {
            Some(slot) => spawn_connection(stream, peer, self.clone(), slot, shutdown),
            None => {
                *refusals += 1;
                if refusals.is_power_of_two() {
                    tracing::warn!(
                        volume = self.volume.name(),
                        limit = self.cap.limit(),
                        refused = *refusals,
                        "refused an NBD connection: the export has as many as it takes"
                    );
                }
                metrics::counter!("tether_nbd_connections_refused_total", "volume" => self.volume.name().to_string()).increment(1);
            }
        }
    }
}

async fn accept_loop_tcp<E: Export>(
    listener: tokio::net::TcpListener,
    connections: Connections<E>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = AcceptBackoff::new("nbd");
    let mut refusals = 0;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    let _ = stream.set_nodelay(true);
                    connections.admit(stream, peer.to_string(), shutdown.clone(), &mut refusals);
                }
                Err(err) => backoff.failed(&err).await,
            }
        }
    }
}

async fn accept_loop_unix<E: Export>(
    listener: tokio::net::UnixListener,
    connections: Connections<E>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = AcceptBackoff::new("nbd");
    let (mut n_accepted, mut refusals) = (0u64, 0);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    n_accepted += 1;
                    connections.admit(stream, format!("unix#{n_accepted}"), shutdown.clone(), &mut refusals);
                }
                Err(err) => backoff.failed(&err).await,
            }
        }
    }
}

fn spawn_connection<S, E: Export>(
    stream: S,
    peer: String,
    connections: Connections<E>,
    slot: tokio::sync::OwnedSemaphorePermit,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let volume = connections.volume.clone();
    let span = tracing::info_span!("nbd", volume = %volume.name(), peer = %peer);
    tokio::spawn(
        async move {
            let _slot = slot;
            metrics::gauge!("tether_nbd_connections", "volume" => volume.name().to_string())
                .increment(1.0);
            match handle_connection(stream, volume.clone(), &connections, shutdown).await {
                Ok(()) => tracing::debug!("connection closed"),
                Err(ConnectionError::Protocol(err)) => {
                    tracing::warn!(error = %err, "protocol violation; closing this connection")
                }
                Err(ConnectionError::Io(err)) => tracing::debug!(error = %err, "connection ended"),
                Err(ConnectionError::Stalled(what)) => {
                    tracing::warn!(what, "client stalled; closing this connection")
                }
                Err(ConnectionError::Refused(reason)) => {
                    tracing::warn!(%reason, "refused an NBD client over TLS")
                }
            }
            metrics::gauge!("tether_nbd_connections", "volume" => volume.name().to_string())
                .decrement(1.0);
        }
        .instrument(span),
    );
}

pub(super) enum ConnectionError {
    Protocol(ProtoError),
    Io(std::io::Error),
    /// The client stopped halfway: what it did not finish.
    Stalled(&'static str),
    /// TLS failed, or the certificate is not a client's of this cluster.
    Refused(String),
}

impl From<std::io::Error> for ConnectionError {
    fn from(err: std::io::Error) -> Self {
        ConnectionError::Io(err)
    }
}

impl From<ProtoError> for ConnectionError {
    fn from(err: ProtoError) -> Self {
        ConnectionError::Protocol(err)
    }
}

/// Metric handles of one volume, resolved once per connection rather than
/// per request (label lookup is not free on the I/O path).
struct OpMetrics {
    ops: metrics::Counter,
    bytes: metrics::Counter,
    errors: metrics::Counter,
    seconds: metrics::Histogram,
}

struct VolumeMetrics {
    read: OpMetrics,
    write: OpMetrics,
    flush: OpMetrics,
    trim: OpMetrics,
    write_zeroes: OpMetrics,
}

impl VolumeMetrics {
    fn new(volume: &str) -> Self {
        let op = |op: &'static str| {
            let labels = [("volume", volume.to_string()), ("op", op.to_string())];
            OpMetrics {
                ops: metrics::counter!("tether_volume_ops_total", &labels),
                bytes: metrics::counter!("tether_volume_bytes_total", &labels),
                errors: metrics::counter!("tether_volume_errors_total", &labels),
                seconds: metrics::histogram!("tether_volume_op_seconds", &labels),
            }
        };
        Self {
            read: op("read"),
            write: op("write"),
            flush: op("flush"),
            trim: op("trim"),
            write_zeroes: op("write_zeroes"),
        }
    }
}

/// A finished request, ready to frame, with its hold on the budgets.
struct Reply {
    cookie: u64,
    error: u32,
    data: Option<Vec<u8>>,
    charge: Charge,
}

/// Reads into `input`: `Ok(false)` at end of stream. Mid-request (some bytes
/// of it are there), a client that sends nothing for [`STALL_TIMEOUT`] is cut off.
async fn read_more<R: AsyncRead + Unpin>(
    reader: &mut R,
    input: &mut BytesMut,
) -> Result<bool, ConnectionError> {
    if input.capacity() - input.len() < READ_BUFFER / 4 {
        input.reserve(READ_BUFFER);
    }
    let read = if input.is_empty() {
        reader.read_buf(input).await?
    } else {
        tokio::time::timeout(STALL_TIMEOUT, reader.read_buf(input))
            .await
            .map_err(|_| ConnectionError::Stalled("a request's payload"))??
    };
    Ok(read > 0)
}

async fn handle_connection<S, E: Export>(
    stream: S,
    volume: Arc<E>,
    connections: &Connections<E>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let catalog = VolumeCatalog(volume.clone());
    let mut input = BytesMut::with_capacity(READ_BUFFER);
    let tls = &connections.limits.tls;
    let handshake = negotiate(stream, &catalog, connections.tls_mode, tls, &mut input);
    let negotiated = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(Some(negotiated))) => negotiated,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(err)) => return Err(err),
        Err(_) => return Err(ConnectionError::Stalled("the handshake")),
    };
    let limits = &connections.limits;
    match negotiated {
        (Negotiated::Plain(stream), export) => {
            transmit(stream, export, input, volume, limits, shutdown).await
        }
        (Negotiated::Tls { stream, client }, export) => {
            let span = tracing::info_span!("tls", client = %client);
            transmit(*stream, export, input, volume, limits, shutdown)
                .instrument(span)
                .await
        }
    }
}

/// The transmission phase: requests in, replies out, until the client
/// disconnects, stalls, or the volume is detached.
async fn transmit<S, E: Export>(
    stream: S,
    export: ExportInfo,
    mut input: BytesMut,
    volume: Arc<E>,
    limits: &NbdContext,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    tracing::debug!(size_bytes = export.size_bytes, "transmission started");

    let budget = Budget::new(
        CONNECTION_BYTES,
        MAX_IN_FLIGHT,
        limits.shared_bytes.clone(),
        NODE_BYTES,
    );
    let volume_metrics = Arc::new(VolumeMetrics::new(volume.name()));
    // Entries are bounded by MAX_IN_FLIGHT (each holds a charge), bytes by the budgets.
    let (reply_sender, reply_receiver) = mpsc::channel::<Reply>(MAX_IN_FLIGHT as usize);
    let mut writer_task = tokio::spawn(write_replies(writer, reply_receiver));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));
    let result: Result<(), ConnectionError> = async {
        // The charge of the request at the front of `input`, taken once its
        // header is there and before its payload is buffered.
        let mut charge: Option<Charge> = None;
        loop {
            loop {
                if charge.is_none() {
                    let Some(bytes) = nbd::request_bytes(&input) else {
                        break;
                    };
                    tokio::select! {
                        taken = budget.charge(bytes) => charge = Some(taken),
                        _ = shutdown.changed() => return Ok(()),
                        _ = &mut writer_task => return Err(ConnectionError::Stalled("reading replies")),
                    }
                }
                let Some(request) = nbd::decode_request(&mut input, nbd::MAX_REQUEST_LEN)? else {
                    break;
                };
                let charge = charge.take().expect("charged above");
                if request.command == Command::Disconnect {
                    return Ok(());
                }
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore is never closed");
                let volume = volume.clone();
                let replies = reply_sender.clone();
                let volume_metrics = volume_metrics.clone();
                tokio::spawn(async move {
                    let reply = execute(volume.as_ref(), &volume_metrics, request, charge).await;
                    let _ = replies.send(reply).await;
                    drop(permit);
                });
            }
            tokio::select! {
                more = read_more(&mut reader, &mut input) => {
                    if !more? {
                        return Ok(());
                    }
                }
                _ = shutdown.changed() => {
                    tracing::info!("volume detached; closing connection");
                    return Ok(());
                }
                _ = &mut writer_task => return Err(ConnectionError::Stalled("reading replies")),
            }
        }
    }
    .await;
    // Let requests already taken finish and their replies go out.
    drop(reply_sender);
    let _ = in_flight.acquire_many(MAX_IN_FLIGHT).await;
    if !writer_task.is_finished() {
        let _ = writer_task.await;
    }
    result
}

/// Writes replies as they come; a reply the client does not take within
/// [`STALL_TIMEOUT`] ends the connection (the reader sees this task end).
async fn write_replies<W: AsyncWrite + Unpin>(mut writer: W, mut replies: mpsc::Receiver<Reply>) {
    // Flushed every time: a TLS stream may keep what it accepted in its
    // buffer until told to flush (a plain socket's flush does nothing).
    async fn write<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> bool {
        let written = async {
            writer.write_all(bytes).await?;
            writer.flush().await
        };
        matches!(
            tokio::time::timeout(STALL_TIMEOUT, written).await,
            Ok(Ok(()))
        )
    }
    let mut out = BytesMut::with_capacity(READ_BUFFER);
    // Charges of replies framed into `out`, released once it is written.
    let mut written: Vec<Charge> = Vec::new();
    while let Some(first) = replies.recv().await {
        let mut next = Some(first);
        // Batch whatever else is ready into one write; large read payloads
        // go out from their own buffer rather than being copied into the batch.
        while let Some(reply) = next.take() {
            match reply.data.as_deref() {
                Some(payload) if payload.len() > LARGE_PAYLOAD => {
                    nbd::encode_simple_reply(reply.cookie, reply.error, None, &mut out);
                    if !write(&mut writer, &out).await || !write(&mut writer, payload).await {
                        return;
                    }
                    out.clear();
                    written.clear();
                }
                payload => nbd::encode_simple_reply(reply.cookie, reply.error, payload, &mut out),
            }
            written.push(reply.charge);
            if out.len() < READ_BUFFER {
                next = replies.try_recv().ok();
            }
        }
        if !out.is_empty() {
            if !write(&mut writer, &out).await {
                return;
            }
            out.clear();
        }
        written.clear();
    }
    let _ = writer.shutdown().await;
}

/// Runs one request on the volume's master and maps the outcome to an NBD error number.
async fn execute<E: Export>(
    volume: &E,
    volume_metrics: &VolumeMetrics,
    request: Request,
    charge: Charge,
) -> Reply {
    let started = Instant::now();
    let Request { cookie, command } = request;
    let trims = matches!(command, Command::Trim { .. });
    let (op_metrics, bytes, op) = match command {
        Command::Read { offset, length } => (
            &volume_metrics.read,
            length as u64,
            BlockOp::Read { offset, length },
        ),
        Command::Write { offset, data, fua } => (
            &volume_metrics.write,
            data.len() as u64,
            BlockOp::Write { offset, data, fua },
        ),
        Command::Flush => (&volume_metrics.flush, 0, BlockOp::Flush),
        Command::Trim {
            offset,
            length,
            fua,
        } => (
            &volume_metrics.trim,
            length as u64,
            BlockOp::WriteZeroes {
                offset,
                length: length as u64,
                punch: true,
                fua,
            },
        ),
        Command::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
        } => (
            &volume_metrics.write_zeroes,
            length as u64,
            BlockOp::WriteZeroes {
                offset,
                length: length as u64,
                punch: !no_hole,
                fua,
            },
        ),
        Command::Disconnect => {
            return Reply {
                cookie,
                error: 0,
                data: None,
                charge,
            }
        }
        Command::Unknown { command_type } => {
            tracing::info!(command_type, "unknown command; answered EINVAL");
            return Reply {
                cookie,
                error: nbd::EINVAL,
                data: None,
                charge,
            };
        }
    };
    // Out of range is ENOSPC for what writes (there is no space there), EINVAL otherwise.
    let writes = op.writes() && !trims;
    let result = volume.execute(op).await;
    op_metrics.seconds.record(started.elapsed().as_secs_f64());
    match result {
        Ok(data) => {
            op_metrics.ops.increment(1);
            op_metrics.bytes.increment(bytes);
            Reply {
                cookie,
                error: 0,
                data,
                charge,
            }
        }
        Err(failure) => {
            op_metrics.errors.increment(1);
            tracing::warn!(error = %failure.message, errno = failure.errno, "request failed");
            Reply {
                cookie,
                error: if failure.out_of_range {
                    if writes {
                        nbd::ENOSPC
                    } else {
                        nbd::EINVAL
                    }
                } else {
                    failure.errno
                },
                data: None,
                charge,
            }
        }
    }
}
