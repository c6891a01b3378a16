//! The client end of a block-frame stream (mutual TLS over TCP, checking
//! the server is the node meant): pipelined requests, each answered by the frame with
//! its sequence number. A master holds one per replica; a presenting node
//! holds one to the master.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tether_proto::block::{decode_frame, encode_frame, Frame};
use tether_tls::{Identity, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::BlockTls;
use crate::FollowError;

type Result<T, E = FollowError> = std::result::Result<T, E>;

const READ_BUFFER: usize = 256 * 1024;
/// Bytes of requests (payloads and expected answers) one connection keeps
/// in flight; more wait here rather than queue without bound.
const IN_FLIGHT_BYTES: u32 = 128 << 20;

/// One connection to a peer's block server.
pub struct BlockConn {
    volume: String,
    pub peer: String,
    next_seq: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    /// Bounded in bytes by `in_flight`: a request is queued only once charged.
    outgoing: mpsc::UnboundedSender<BytesMut>,
    in_flight: Arc<tokio::sync::Semaphore>,
    dead: AtomicBool,
    /// Tells both socket tasks to stop (they hold the connection too).
    closed: watch::Sender<bool>,
}

impl BlockConn {
    /// Connects and says hello; the peer's answer to the hello (an Ack, or
    /// StaleEpoch from a replica that has seen a newer master) is checked
    /// before the connection is handed out.
    pub async fn connect(
        addr: &str,
        peer_node: &str,
        hello: Frame,
        timeout: Duration,
        tls: Option<&BlockTls>,
    ) -> Result<Arc<Self>> {
        let Frame::Hello { volume, .. } = &hello else {
            panic!("a block stream opens with Hello");
        };
        let volume = volume.clone();
        let peer_err = |reason: String| FollowError::Peer {
            volume: volume.clone(),
            peer: addr.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| peer_err("connect timed out".into()))?
            .map_err(|err| peer_err(format!("connect: {err}")))?;
        let _ = stream.set_nodelay(true);
        let (reader, writer): (BoxedReader, BoxedWriter) = match tls {
            None => {
                let (reader, writer) = stream.into_split();
                (Box::new(reader), Box::new(writer))
            }
            Some(tls) => {
                // The server must hold the certificate of the node we mean to reach.
                let server = Identity::new(&tls.context.identity().cluster, Role::Node, peer_node);
                let name = ServerName::try_from(server.dns_name())
                    .map_err(|err| peer_err(format!("node name: {err}")))?;
                let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
                let stream = tokio::time::timeout(timeout, connector.connect(name, stream))
                    .await
                    .map_err(|_| peer_err("TLS handshake timed out".into()))?
                    .map_err(|err| peer_err(format!("TLS handshake: {err}")))?;
                let (reader, writer) = tokio::io::split(stream);
                (Box::new(reader), Box::new(writer))
            }
        };
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let conn = Arc::new(BlockConn {
            volume: volume.clone(),
            peer: addr.to_string(),
            next_seq: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            outgoing,
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_BYTES as usize)),
            dead: AtomicBool::new(false),
            closed: watch::channel(false).0,
        });
        let (hello_tx, hello_rx) = oneshot::channel();
        conn.pending.lock().unwrap().insert(0, hello_tx);
        tokio::spawn(write_loop(writer, outgoing_rx, conn.clone()).in_current_span());
        tokio::spawn(read_loop(reader, conn.clone()).in_current_span());
        let mut out = BytesMut::new();
        encode_frame(&hello, &mut out);
        let _ = conn.outgoing.send(out);
        match tokio::time::timeout(timeout, hello_rx).await {
            Ok(Ok(Frame::Ack { error: 0, .. })) => Ok(conn),
            Ok(Ok(Frame::StaleEpoch { newest_epoch, .. })) => {
                conn.close();
                Err(FollowError::NotMaster {
                    volume,
                    epoch: newest_epoch,
                })
            }
            Ok(Ok(Frame::Ack { error, .. })) => {
                conn.close();
                Err(peer_err(format!("refused the stream with errno {error}")))
            }
            Ok(Ok(other)) => {
                conn.close();
                Err(peer_err(format!("answered hello with {other:?}")))
            }
            Ok(Err(_)) => Err(peer_err("closed the connection during hello".into())),
            Err(_) => {
                conn.close();
                Err(peer_err("no answer to hello".into()))
            }
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Closes the stream; every pending request fails.
    pub fn close(&self) {
        self.dead.store(true, Ordering::Release);
        self.pending.lock().unwrap().clear();
        let _ = self.closed.send(true);
    }

    /// Sends `frame` (renumbered) and waits for its answer, at most `timeout`.
    /// A timeout closes the connection: a peer that stops answering is gone.
    pub async fn request(&self, frame: Frame, timeout: Duration) -> Result<Frame> {
        let peer_err = |reason: &str| FollowError::Peer {
            volume: self.volume.clone(),
            peer: self.peer.clone(),
            reason: reason.to_string(),
        };
        if self.is_dead() {
            return Err(peer_err("connection closed"));
        }
        let bytes = frame.held_bytes();
        let _charge = tokio::time::timeout(
            timeout,
            self.in_flight
                .clone()
                .acquire_many_owned(bytes.min(IN_FLIGHT_BYTES as u64) as u32),
        )
        .await
        .map_err(|_| peer_err("no room in flight in time"))?
        .expect("the semaphore is never closed");
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(seq, tx);
        let mut out = BytesMut::new();
        encode_frame(&frame.with_seq(seq), &mut out);
        if self.outgoing.send(out).is_err() {
            self.pending.lock().unwrap().remove(&seq);
            return Err(peer_err("connection closed"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(peer_err("connection closed")),
            Err(_) => {
                self.close();
                Err(peer_err("no answer in time"))
            }
        }
    }
}

type BoxedReader = Box<dyn AsyncRead + Send + Unpin>;
type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

async fn write_loop(
    mut writer: BoxedWriter,
    mut outgoing: mpsc::UnboundedReceiver<BytesMut>,
    conn: Arc<BlockConn>,
) {
    let mut batch = BytesMut::new();
    let mut closed = conn.closed.subscribe();
    loop {
        let first = tokio::select! {
            next = outgoing.recv() => match next {
                Some(first) => first,
                None => break,
            },
            _ = closed.wait_for(|closed| *closed) => break,
        };
        batch.unsplit(first);
        while batch.len() < READ_BUFFER {
            match outgoing.try_recv() {
                Ok(more) => batch.unsplit(more),
                Err(_) => break,
            }
        }
        if conn.is_dead()
            || writer.write_all(&batch).await.is_err()
            || writer.flush().await.is_err()
        {
            break;
        }
        batch.clear();
    }
    conn.close();
    let _ = writer.shutdown().await;
}

async fn read_loop(mut reader: BoxedReader, conn: Arc<BlockConn>) {
    let mut input = BytesMut::with_capacity(READ_BUFFER);
    let mut closed = conn.closed.subscribe();
    'read: loop {
        tokio::select! {
            read = reader.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = closed.wait_for(|closed| *closed) => break,
        }
        loop {
            match decode_frame(&mut input) {
                Ok(Some(frame)) => {
                    let waiter = conn.pending.lock().unwrap().remove(&frame.seq());
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(frame);
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(peer = %conn.peer, error = %err, "malformed block frame; closing the stream");
                    break 'read;
                }
            }
        }
        if input.capacity() - input.len() < READ_BUFFER / 4 {
            input.reserve(READ_BUFFER);
        }
    }
    conn.close();
}
