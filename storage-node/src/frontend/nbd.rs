//! The NBD server: one listener per attachment endpoint, any number of
//! connections per listener, pipelined requests answered out of order.
//!
//! The protocol itself (handshake state machine, request codec) lives in
//! `tether_proto::nbd`; this module owns the sockets. A protocol violation
//! closes that one connection with a log line naming the peer and volume;
//! every other connection carries on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tether_proto::nbd::{
    self, Command, ExportCatalog, ExportInfo, HandshakeOutcome, Request, ServerHandshake,
};
use tether_proto::ProtoError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::Instrument;

use crate::error::{NodeError, Result};
use crate::group::{BlockOp, Presenter};

/// Requests one connection may have in flight; more wait in the socket.
const MAX_IN_FLIGHT: usize = 128;
const READ_BUFFER: usize = 256 * 1024;
/// Read payloads larger than this are written straight from their buffer.
const LARGE_PAYLOAD: usize = 64 * 1024;

/// Where to serve: `unix:PATH` or `tcp:HOST:PORT` (port 0 picks one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    pub fn parse(input: &str) -> Result<Self> {
        let bad = |reason: &str| NodeError::BadEndpoint {
            endpoint: input.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = input.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("unix: needs a socket path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(path)))
        } else if let Some(addr) = input.strip_prefix("tcp:") {
            match addr.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(Endpoint::Tcp(addr.to_string()))
                }
                _ => Err(bad("tcp: needs HOST:PORT")),
            }
        } else {
            Err(bad("expected unix:PATH or tcp:HOST:PORT"))
        }
    }
}

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

/// Device and inode of `path` if it is a Unix socket (not following links).
fn socket_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
}

/// Checks a client-chosen socket path before anything is created there: it
/// must not lie inside a pool or state directory, and must not exist unless
/// it is a socket nobody serves (left over from a crash), which is removed.
fn claim_socket_path(endpoint_spec: &str, path: &std::path::Path) -> Result<()> {
    let bad = |reason: String| NodeError::BadEndpoint {
        endpoint: endpoint_spec.to_string(),
        reason,
    };
    if let Some(dir) = tether_common::protected::protected_ancestor(path) {
        return Err(bad(format!(
            "{} is inside a pool or state directory ({}); choose a path outside it",
            path.display(),
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(bad(format!("cannot check {}: {err}", path.display()))),
        Ok(_) if socket_identity(path).is_none() => Err(bad(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ))),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(bad("another server is listening there".into()));
            }
            // A socket nobody answers on is left over from a crash: replace it.
            std::fs::remove_file(path)
                .map_err(|err| bad(format!("cannot replace the stale socket: {err}")))
        }
    }
}

struct VolumeCatalog(Arc<Presenter>);

impl ExportCatalog for VolumeCatalog {
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
pub async fn serve(endpoint_spec: &str, volume: Arc<Presenter>) -> Result<NbdServer> {
    let endpoint = Endpoint::parse(endpoint_spec)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let bind_err = |source: std::io::Error| NodeError::BadEndpoint {
        endpoint: endpoint_spec.to_string(),
        reason: format!("cannot listen: {source}"),
    };
    let name = volume.name().to_string();
    match endpoint {
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(bind_err)?;
            let local = listener.local_addr().map_err(bind_err)?;
            let uri = format!("nbd://{local}/{name}");
            tokio::spawn(accept_loop_tcp(listener, volume, shutdown_rx).in_current_span());
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
            let (dev, ino) = socket_identity(&path).ok_or_else(|| NodeError::BadEndpoint {
                endpoint: endpoint_spec.to_string(),
                reason: "the socket vanished as it was made".into(),
            })?;
            let uri = format!("nbd+unix:///{name}?socket={}", path.display());
            tokio::spawn(accept_loop_unix(listener, volume, shutdown_rx).in_current_span());
            Ok(NbdServer {
                endpoint: endpoint_spec.to_string(),
                uri,
                shutdown,
                unix_socket: Some((path, dev, ino)),
            })
        }
    }
}

async fn accept_loop_tcp(
    listener: tokio::net::TcpListener,
    volume: Arc<Presenter>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    spawn_connection(stream, peer.to_string(), volume.clone(), shutdown.clone());
                }
                Err(err) => tracing::warn!(volume = volume.name(), error = %err, "accept failed"),
            }
        }
    }
}

async fn accept_loop_unix(
    listener: tokio::net::UnixListener,
    volume: Arc<Presenter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut n_accepted = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    n_accepted += 1;
                    spawn_connection(stream, format!("unix#{n_accepted}"), volume.clone(), shutdown.clone());
                }
                Err(err) => tracing::warn!(volume = volume.name(), error = %err, "accept failed"),
            }
        }
    }
}

fn spawn_connection<S>(
    stream: S,
    peer: String,
    volume: Arc<Presenter>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let span = tracing::info_span!("nbd", volume = %volume.name(), peer = %peer);
    tokio::spawn(
        async move {
            metrics::gauge!("tether_nbd_connections", "volume" => volume.name().to_string())
                .increment(1.0);
            match handle_connection(stream, volume.clone(), shutdown).await {
                Ok(()) => tracing::debug!("connection closed"),
                Err(ConnectionError::Protocol(err)) => {
                    tracing::warn!(error = %err, "protocol violation; closing this connection")
                }
                Err(ConnectionError::Io(err)) => tracing::debug!(error = %err, "connection ended"),
            }
            metrics::gauge!("tether_nbd_connections", "volume" => volume.name().to_string())
                .decrement(1.0);
        }
        .instrument(span),
    );
}

enum ConnectionError {
    Protocol(ProtoError),
    Io(std::io::Error),
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

/// A finished request, ready to frame.
struct Reply {
    cookie: u64,
    error: u32,
    data: Option<Vec<u8>>,
}

async fn handle_connection<S>(
    stream: S,
    volume: Arc<Presenter>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let catalog = VolumeCatalog(volume.clone());
    let mut handshake = ServerHandshake::new();
    let mut input = BytesMut::with_capacity(READ_BUFFER);
    if let Some(out) = handshake.poll_transmit() {
        writer.write_all(&out).await?;
    }
    let export = loop {
        if reader.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        let outcome = handshake.handle_input(&mut input, &catalog)?;
        if let Some(out) = handshake.poll_transmit() {
            writer.write_all(&out).await?;
        }
        match outcome {
            Some(HandshakeOutcome::Transmission(export)) => break export,
            Some(HandshakeOutcome::Closed { reason }) => {
                tracing::info!(%reason, "handshake ended without transmission");
                return Ok(());
            }
            None => {}
        }
    };
    tracing::debug!(size_bytes = export.size_bytes, "transmission started");

    let volume_metrics = Arc::new(VolumeMetrics::new(volume.name()));
    let (reply_sender, reply_receiver) = mpsc::channel::<Reply>(MAX_IN_FLIGHT * 2);
    let writer_task = tokio::spawn(write_replies(writer, reply_receiver));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let result: Result<(), ConnectionError> = async {
        loop {
            while let Some(request) = nbd::decode_request(&mut input, nbd::MAX_REQUEST_LEN)? {
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
                    let reply = execute(&volume, &volume_metrics, request).await;
                    let _ = replies.send(reply).await;
                    drop(permit);
                });
            }
            if input.capacity() - input.len() < READ_BUFFER / 4 {
                input.reserve(READ_BUFFER);
            }
            tokio::select! {
                read = reader.read_buf(&mut input) => {
                    if read? == 0 {
                        return Ok(());
                    }
                }
                _ = shutdown.changed() => {
                    tracing::info!("volume detached; closing connection");
                    return Ok(());
                }
            }
        }
    }
    .await;
    // Let requests already taken finish and their replies go out.
    drop(reply_sender);
    let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
    let _ = writer_task.await;
    result
}

async fn write_replies<W: AsyncWrite + Unpin>(mut writer: W, mut replies: mpsc::Receiver<Reply>) {
    let mut out = BytesMut::with_capacity(READ_BUFFER);
    while let Some(first) = replies.recv().await {
        let mut next = Some(first);
        // Batch whatever else is ready into one write; large read payloads
        // go out from their own buffer rather than being copied into the batch.
        while let Some(reply) = next.take() {
            match reply.data.as_deref() {
                Some(payload) if payload.len() > LARGE_PAYLOAD => {
                    nbd::encode_simple_reply(reply.cookie, reply.error, None, &mut out);
                    if writer.write_all(&out).await.is_err()
                        || writer.write_all(payload).await.is_err()
                    {
                        return;
                    }
                    out.clear();
                }
                payload => nbd::encode_simple_reply(reply.cookie, reply.error, payload, &mut out),
            }
            if out.len() < READ_BUFFER {
                next = replies.try_recv().ok();
            }
        }
        if !out.is_empty() {
            if writer.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
    let _ = writer.shutdown().await;
}

/// Runs one request on the volume's master and maps the outcome to an NBD error number.
async fn execute(volume: &Presenter, volume_metrics: &VolumeMetrics, request: Request) -> Reply {
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
            }
        }
        Command::Unknown { command_type } => {
            tracing::info!(command_type, "unknown command; answered EINVAL");
            return Reply {
                cookie,
                error: nbd::EINVAL,
                data: None,
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
            }
        }
        Err(err) => {
            op_metrics.errors.increment(1);
            tracing::warn!(error = %err, "request failed");
            Reply {
                cookie,
                error: err.errno(writes),
                data: None,
            }
        }
    }
}
