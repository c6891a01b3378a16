//! The link client: one QUIC session to a gateway of the central cluster
//! (any one: they all serve every volume), one stream per opened volume.
//!
//! A request is sent with an id of its own and answered out of order. When
//! a gateway goes away (its session closes or times out, a stream breaks),
//! the volume is opened again through the next gateway in the list and every
//! request without an answer is sent again: the same bytes to the same
//! offset, so a write lands once in effect and no answer is ever invented.
//! A refusal (no grant, a removed satellite, a protocol error) is final:
//! every gateway reads the same records.

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_common::block_zstd;

use bytes::{Bytes, BytesMut};
use tether_proto::block::BlockOp;
use tether_proto::link::{
    self, close, decode_link_frame, encode_link_frame, refusal, LinkFrame, Welcome, FEATURE_ZSTD,
};
use tether_tls::{Role, TlsContext};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::LinkError;

/// How long a request waits for some gateway to answer before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// A gateway that does not complete a handshake in this long is skipped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A session with no traffic (keep-alives included) this long is dead:
/// how fast a killed gateway is noticed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const READ_BUFFER: usize = 256 * 1024;

/// A request's bytes held in flight: a write's payload, a read's answer.
fn held_bytes(request: &BlockOp) -> u32 {
    match request {
        BlockOp::Read { length, .. } => *length,
        BlockOp::Write { data, .. } => data.len() as u32,
        _ => 0,
    }
}

/// The link frame of `request` (a zeroing that may punch holes is sent as
/// such; the gateway maps it back the same way).
fn frame(request: &BlockOp, id: u64, zstd: Option<&block_zstd::Adaptive>) -> LinkFrame {
    match request.clone() {
        BlockOp::Read { offset, length } => LinkFrame::Read { id, offset, length },
        BlockOp::Write { offset, data, fua } => LinkFrame::Write {
            id,
            offset,
            fua,
            data: block_zstd::pack(data, zstd),
        },
        BlockOp::WriteZeroes {
            offset,
            length,
            punch,
            fua,
        } => LinkFrame::WriteZeroes {
            id,
            offset,
            length,
            fua,
            no_hole: !punch,
        },
        BlockOp::Flush => LinkFrame::Flush { id },
        BlockOp::Hashes { .. } => unreachable!("LinkClient::execute refuses hash requests"),
    }
}

/// The satellite's sessions to the gateways.
pub struct LinkClient {
    cluster: String,
    gateways: Vec<String>,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    current: tokio::sync::Mutex<Option<(String, quinn::Connection)>>,
    /// Where the next connection attempt starts in `gateways`.
    next: AtomicUsize,
    features: u32,
}

impl LinkClient {
    /// A client presenting `tls`'s certificate (a satellite's) to the
    /// gateways at `gateways` (`host:port`, tried in turn).
    pub fn new(tls: &Arc<TlsContext>, gateways: Vec<String>) -> Result<Arc<Self>, LinkError> {
        let rustls = tls.client_config_with_alpn(vec![link::LINK_ALPN.to_vec()]);
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls).map_err(|err| {
            LinkError::Config {
                reason: err.to_string(),
            }
        })?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(link::LINK_MTU_UPPER_BOUND);
        // Answers to reads in flight at once: as much as the gateway lets
        // one stream have in flight (its 64 MiB budget bounds it anyway).
        transport
            .keep_alive_interval(Some(Duration::from_millis(500)))
            .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("a valid idle timeout")))
            .stream_receive_window((8u32 << 20).into())
            .receive_window((64u32 << 20).into())
            .send_window(64 << 20)
            .mtu_discovery_config(Some(mtu));
        config.transport_config(Arc::new(transport));
        let cannot = |err: std::io::Error| LinkError::Config {
            reason: format!("cannot open a UDP socket: {err}"),
        };
        let socket = tether_common::udp::bind_for_quic("0.0.0.0:0".parse().expect("an address"))
            .map_err(cannot)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(cannot)?;
        Ok(Arc::new(Self {
            cluster: tls.identity().cluster.clone(),
            gateways,
            endpoint,
            config,
            current: tokio::sync::Mutex::new(None),
            next: AtomicUsize::new(0),
            features: FEATURE_ZSTD,
        }))
    }

    /// Offers no compression (to measure what it saves).
    pub fn without_compression(self: Arc<Self>) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut client) => {
                client.features &= !FEATURE_ZSTD;
                Arc::new(client)
            }
            Err(shared) => shared,
        }
    }

    /// The gateway a session is open to now (opening one if need be): what
    /// a readiness probe asks.
    pub async fn reachable(&self) -> Result<String, LinkError> {
        self.session(None).await.map(|(gateway, _)| gateway)
    }

    /// A live session: the current one unless it is `dead`, else a new one
    /// to the next gateway that answers.
    async fn session(
        &self,
        dead: Option<&quinn::Connection>,
    ) -> Result<(String, quinn::Connection), LinkError> {
        let mut current = self.current.lock().await;
        if let Some((gateway, connection)) = current.as_ref() {
            let stale = dead.is_some_and(|dead| dead.stable_id() == connection.stable_id());
            if connection.close_reason().is_none() && !stale {
                return Ok((gateway.clone(), connection.clone()));
            }
            self.next.fetch_add(1, Ordering::Relaxed);
        }
        *current = None;
        let mut last = None;
        for attempt in 0..self.gateways.len() {
            let index = (self.next.load(Ordering::Relaxed) + attempt) % self.gateways.len();
            let gateway = &self.gateways[index];
            match self.connect(gateway).await {
                Ok(connection) => {
                    self.next.store(index, Ordering::Relaxed);
                    tracing::info!(%gateway, "link session open");
                    *current = Some((gateway.clone(), connection.clone()));
                    return Ok((gateway.clone(), connection));
                }
                Err(err) => {
                    tracing::debug!(%gateway, error = %err, "gateway not reachable");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or(LinkError::Config {
            reason: "no gateway endpoints given".into(),
        }))
    }

    async fn connect(&self, gateway: &str) -> Result<quinn::Connection, LinkError> {
        let failed = |reason: String| LinkError::Gateway {
            gateway: gateway.to_string(),
            reason,
        };
        let addr = gateway
            .to_socket_addrs()
            .map_err(|err| failed(format!("cannot resolve: {err}")))?
            .next()
            .ok_or_else(|| failed("resolves to nothing".into()))?;
        let host = gateway.rsplit_once(':').map_or(gateway, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, host)
            .map_err(|err| failed(err.to_string()))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| failed("no handshake in time".into()))?
            .map_err(|err| failed(err.to_string()))?;
        // The certificate names the host; it must also be a gateway's of our
        // cluster (a node's certificate may name the same host).
        let certificates = connection.peer_identity().and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        let identity = tether_tls::peer_identity(certificates.as_deref().map(|c| c.as_slice()))
            .map_err(|err| failed(err.to_string()))?;
        match identity {
            Some(identity)
                if identity.role == Role::Gateway && identity.cluster == self.cluster =>
            {
                Ok(connection)
            }
            other => {
                connection.close(0u32.into(), b"not a gateway");
                Err(failed(format!(
                    "the server is {}, not a gateway of cluster {}",
                    other.map_or("anonymous".to_string(), |identity| identity.uri()),
                    self.cluster
                )))
            }
        }
    }

    /// Opens `volume` (its first stream is opened now, so a refusal shows here).
    pub async fn open(self: &Arc<Self>, volume: &str) -> Result<Arc<RemoteVolume>, LinkError> {
        let remote = Arc::new(RemoteVolume {
            client: self.clone(),
            volume: volume.to_string(),
            stream: tokio::sync::Mutex::new(None),
            welcome: Mutex::new(None),
        });
        remote.stream().await?;
        Ok(remote)
    }
}

/// A volume opened through the gateways.
pub struct RemoteVolume {
    client: Arc<LinkClient>,
    volume: String,
    stream: tokio::sync::Mutex<Option<Arc<OpenStream>>>,
    welcome: Mutex<Option<Welcome>>,
}

/// How a request on one stream ended without an answer.
enum Lost {
    /// The stream or session went away: try again elsewhere.
    Gone,
    /// The gateway ended it on purpose: final.
    Final(LinkError),
}

impl std::fmt::Debug for RemoteVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteVolume({})", self.volume)
    }
}

impl RemoteVolume {
    pub fn name(&self) -> &str {
        &self.volume
    }

    /// What the gateway said at the last open (size, limits, read-only).
    pub fn welcome(&self) -> Welcome {
        self.welcome.lock().unwrap().clone().expect("opened")
    }

    /// The gateway the volume's stream is on now.
    pub async fn gateway(&self) -> Option<String> {
        self.stream
            .lock()
            .await
            .as_ref()
            .map(|stream| stream.gateway.clone())
    }

    /// Runs one request, through whichever gateway answers; a gateway that
    /// goes away is a pause, not an error.
    pub async fn execute(&self, request: BlockOp) -> Result<Option<Bytes>, LinkError> {
        if let BlockOp::Hashes { .. } = request {
            return Err(LinkError::Io {
                volume: self.volume.clone(),
                errno: tether_proto::nbd::EINVAL,
            });
        }
        let started = Instant::now();
        loop {
            let attempt = match self.stream().await {
                Ok(stream) => match stream.request(&request).await {
                    Ok(answer) => return self.answer(answer, &request),
                    Err(Lost::Final(err)) => return Err(err),
                    Err(Lost::Gone) => {
                        self.forget(&stream).await;
                        None
                    }
                },
                Err(err @ LinkError::Refused { .. }) => return Err(err),
                Err(err) => Some(err),
            };
            if started.elapsed() > PATIENCE {
                tracing::warn!(volume = %self.volume, error = ?attempt, "no gateway answered");
                return Err(LinkError::NoGateway {
                    volume: self.volume.clone(),
                    waited_secs: PATIENCE.as_secs(),
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    fn answer(&self, answer: LinkFrame, request: &BlockOp) -> Result<Option<Bytes>, LinkError> {
        let protocol = |reason: String| LinkError::Protocol {
            volume: self.volume.clone(),
            reason,
        };
        match (answer, request) {
            (LinkFrame::Done { error: 0, .. }, BlockOp::Read { .. }) => {
                Err(protocol("a read answered without data".into()))
            }
            (LinkFrame::Done { error: 0, .. }, _) => Ok(None),
            (LinkFrame::Done { error, .. }, _) => Err(LinkError::Io {
                volume: self.volume.clone(),
                errno: error,
            }),
            (LinkFrame::Data { data, .. }, BlockOp::Read { length, .. }) => {
                let data = block_zstd::unpack(data).map_err(protocol)?;
                if data.len() != *length as usize {
                    return Err(protocol(format!(
                        "a read of {length} bytes answered with {}",
                        data.len()
                    )));
                }
                Ok(Some(data))
            }
            (other, _) => Err(protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Opens the volume's stream again to learn what changed since the last
    /// open (a new size after an expansion); requests already on the old
    /// stream finish there.
    pub async fn reopen(&self) -> Result<Welcome, LinkError> {
        let mut stream = self.stream.lock().await;
        let (gateway, connection) = self.client.session(None).await?;
        let open =
            OpenStream::open(&self.volume, &gateway, connection, self.client.features).await?;
        *self.welcome.lock().unwrap() = Some(open.welcome.clone());
        *stream = Some(open.clone());
        Ok(open.welcome.clone())
    }

    async fn forget(&self, dead: &Arc<OpenStream>) {
        let mut stream = self.stream.lock().await;
        if stream.as_ref().is_some_and(|now| Arc::ptr_eq(now, dead)) {
            *stream = None;
        }
    }

    /// The open stream, or a new one through a live session.
    async fn stream(&self) -> Result<Arc<OpenStream>, LinkError> {
        let mut stream = self.stream.lock().await;
        if let Some(open) = stream.as_ref() {
            if !open.dead.load(Ordering::Acquire) {
                return Ok(open.clone());
            }
        }
        let dead_connection = stream.as_ref().map(|open| open.connection.clone());
        *stream = None;
        let (gateway, connection) = self.client.session(dead_connection.as_ref()).await?;
        let open =
            OpenStream::open(&self.volume, &gateway, connection, self.client.features).await?;
        *self.welcome.lock().unwrap() = Some(open.welcome.clone());
        *stream = Some(open.clone());
        Ok(open)
    }
}

/// One volume stream on one session.
struct OpenStream {
    volume: String,
    gateway: String,
    connection: quinn::Connection,
    welcome: Welcome,
    /// zstd for this stream's writes, when negotiated.
    zstd: Option<block_zstd::Adaptive>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<LinkFrame>>>,
    outgoing: mpsc::UnboundedSender<BytesMut>,
    /// The gateway's limits, kept on this side so it never has to push back.
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    dead: AtomicBool,
    /// The code the gateway reset the stream with, if it did.
    reset: AtomicU32,
}

impl OpenStream {
    async fn open(
        volume: &str,
        gateway: &str,
        connection: quinn::Connection,
        features: u32,
    ) -> Result<Arc<Self>, LinkError> {
        let gone = |reason: String| LinkError::Gateway {
            gateway: gateway.to_string(),
            reason,
        };
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|err| final_or_gone(volume, gateway, &connection, err.to_string()))?;
        let mut out = BytesMut::new();
        encode_link_frame(
            &LinkFrame::Hello {
                min_version: link::LINK_VERSION_MIN,
                max_version: link::LINK_VERSION_MAX,
                features,
                volume: volume.to_string(),
            },
            &mut out,
        );
        send.write_all(&out)
            .await
            .map_err(|err| gone(format!("sending Hello: {err}")))?;
        let mut input = BytesMut::with_capacity(READ_BUFFER);
        let answer = tokio::time::timeout(CONNECT_TIMEOUT * 3, async {
            loop {
                match decode_link_frame(&mut input) {
                    Ok(Some(frame)) => return Ok(frame),
                    Ok(None) => {}
                    Err(err) => return Err(gone(err.to_string())),
                }
                match recv.read_buf(&mut input).await {
                    Ok(0) => return Err(gone("closed the stream during Hello".into())),
                    Ok(_) => {}
                    Err(err) => {
                        return Err(final_or_gone(volume, gateway, &connection, err.to_string()))
                    }
                }
            }
        })
        .await
        .map_err(|_| gone("no answer to Hello".into()))??;
        let welcome = match answer {
            LinkFrame::Welcome(welcome) => welcome,
            LinkFrame::Refused { code, reason } => {
                return Err(LinkError::Refused {
                    volume: volume.to_string(),
                    gateway: gateway.to_string(),
                    code,
                    reason,
                })
            }
            other => return Err(gone(format!("answered Hello with {other:?}"))),
        };
        let (outgoing, outgoing_rx) = mpsc::unbounded_channel();
        let open = Arc::new(OpenStream {
            volume: volume.to_string(),
            gateway: gateway.to_string(),
            connection,
            zstd: (welcome.features & FEATURE_ZSTD != 0).then(Default::default),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            outgoing,
            requests: Arc::new(Semaphore::new(welcome.max_in_flight.max(1) as usize)),
            bytes: Arc::new(Semaphore::new(welcome.max_in_flight_bytes.max(1) as usize)),
            dead: AtomicBool::new(false),
            reset: AtomicU32::new(0),
            welcome,
        });
        tokio::spawn(write_loop(send, outgoing_rx, open.clone()));
        tokio::spawn(read_loop(recv, input, open.clone()));
        Ok(open)
    }

    fn die(&self) {
        self.dead.store(true, Ordering::Release);
        self.pending.lock().unwrap().clear();
    }

    async fn request(&self, request: &BlockOp) -> Result<LinkFrame, Lost> {
        let bytes = held_bytes(request).min(self.welcome.max_in_flight_bytes.max(1));
        let _slot = self.requests.acquire().await.map_err(|_| Lost::Gone)?;
        let _bytes = self
            .bytes
            .acquire_many(bytes)
            .await
            .map_err(|_| Lost::Gone)?;
        if self.dead.load(Ordering::Acquire) {
            return Err(self.lost());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut out = BytesMut::new();
        encode_link_frame(&frame(request, id, self.zstd.as_ref()), &mut out);
        if self.outgoing.send(out).is_err() {
            self.pending.lock().unwrap().remove(&id);
            return Err(self.lost());
        }
        match rx.await {
            Ok(answer) => Ok(answer),
            Err(_) => Err(self.lost()),
        }
    }

    /// Why the stream is gone: for good (the gateway meant it) or not.
    fn lost(&self) -> Lost {
        let reset = self.reset.load(Ordering::Acquire);
        if reset == refusal::NOT_GRANTED {
            return Lost::Final(LinkError::Refused {
                volume: self.volume.clone(),
                gateway: self.gateway.clone(),
                code: reset,
                reason: "the grant for this volume was removed".into(),
            });
        }
        match final_or_gone(&self.volume, &self.gateway, &self.connection, String::new()) {
            err @ LinkError::Refused { .. } => Lost::Final(err),
            _ => Lost::Gone,
        }
    }
}

/// A session the gateway closed on purpose (revoked, protocol error) is a
/// final refusal; anything else is a gateway gone.
fn final_or_gone(
    volume: &str,
    gateway: &str,
    connection: &quinn::Connection,
    reason: String,
) -> LinkError {
    if let Some(quinn::ConnectionError::ApplicationClosed(closed)) = connection.close_reason() {
        let code = closed.error_code.into_inner() as u32;
        if code == close::REVOKED || code == close::PROTOCOL || code == close::REFUSED {
            return LinkError::Refused {
                volume: volume.to_string(),
                gateway: gateway.to_string(),
                code,
                reason: String::from_utf8_lossy(&closed.reason).into_owned(),
            };
        }
    }
    LinkError::Gateway {
        gateway: gateway.to_string(),
        reason,
    }
}

async fn write_loop(
    mut send: quinn::SendStream,
    mut outgoing: mpsc::UnboundedReceiver<BytesMut>,
    open: Arc<OpenStream>,
) {
    let mut batch = BytesMut::new();
    while let Some(first) = outgoing.recv().await {
        batch.unsplit(first);
        while batch.len() < READ_BUFFER {
            match outgoing.try_recv() {
                Ok(more) => batch.unsplit(more),
                Err(_) => break,
            }
        }
        if open.dead.load(Ordering::Acquire) || send.write_all(&batch).await.is_err() {
            break;
        }
        batch.clear();
    }
    open.die();
}

async fn read_loop(mut recv: quinn::RecvStream, mut input: BytesMut, open: Arc<OpenStream>) {
    'read: loop {
        loop {
            match decode_link_frame(&mut input) {
                Ok(Some(frame)) => {
                    let waiter = open.pending.lock().unwrap().remove(&frame.id());
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(frame);
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(gateway = %open.gateway, volume = %open.volume, error = %err, "malformed answer; dropping the stream");
                    break 'read;
                }
            }
        }
        match recv.read_chunk(READ_BUFFER, true).await {
            Ok(None) => break,
            Ok(Some(chunk)) => input.extend_from_slice(&chunk.bytes),
            Err(quinn::ReadError::Reset(code)) => {
                open.reset
                    .store(code.into_inner() as u32, Ordering::Release);
                break;
            }
            Err(_) => break,
        }
    }
    open.die();
}
