//! A userspace UDP relay that shapes a DC-to-DC link as netem would (this
//! machine has no netem): a one-way delay, a rate limit with a bounded
//! queue (tail drop, as `tc tbf`), and a switch that cuts the link. QUIC
//! between a shipper and a peer gateway goes through it unchanged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How the link behaves, each way.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub delay: Duration,
    pub bytes_per_sec: u64,
    /// Bytes queued at most (more are dropped).
    pub queue_bytes: u64,
}

pub struct LinkShaper {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bytes relayed towards the upstream (the shipper's side to the peer).
    pub forwarded: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl LinkShaper {
    /// Relays datagrams sent to [`Self::addr`] to `upstream` and back.
    pub fn start(upstream: SocketAddr, shape: Shape) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(UdpSocket::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        runtime.spawn(relay(
            Arc::new(listener),
            upstream,
            shape,
            cut.clone(),
            forwarded.clone(),
            dropped.clone(),
        ));
        Ok(Self {
            addr,
            cut,
            forwarded,
            dropped,
            _runtime: runtime,
        })
    }

    /// Drops everything both ways while `cut` is true.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Release);
    }
}

/// One direction: packets leave in order, each no earlier than its arrival
/// plus the delay, and no faster than the rate.
struct Pipe {
    queue: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    next_free: Instant,
    shape: Shape,
}

impl Pipe {
    fn new(shape: Shape, send: impl Fn(Vec<u8>) + Send + 'static) -> Self {
        let (queue, mut packets) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        tokio::spawn(async move {
            while let Some((due, packet)) = packets.recv().await {
                tokio::time::sleep_until(due).await;
                send(packet);
            }
        });
        Self {
            queue,
            next_free: Instant::now(),
            shape,
        }
    }

    /// Queues `packet`; false if the queue is full (dropped).
    fn push(&mut self, packet: Vec<u8>) -> bool {
        let now = Instant::now();
        let serialise =
            Duration::from_secs_f64(packet.len() as f64 / self.shape.bytes_per_sec as f64);
        let start = self.next_free.max(now);
        let backlog = start - now;
        let limit = Duration::from_secs_f64(
            self.shape.queue_bytes as f64 / self.shape.bytes_per_sec as f64,
        );
        if backlog > limit {
            return false;
        }
        self.next_free = start + serialise;
        let _ = self.queue.send((self.next_free + self.shape.delay, packet));
        true
    }
}

async fn relay(
    listener: Arc<UdpSocket>,
    upstream: SocketAddr,
    shape: Shape,
    cut: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
) {
    let mut clients: HashMap<SocketAddr, Pipe> = HashMap::new();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let Ok((length, client)) = listener.recv_from(&mut buffer).await else {
            return;
        };
        if cut.load(Ordering::Acquire) {
            dropped.fetch_add(length as u64, Ordering::Relaxed);
            continue;
        }
        let pipe = match clients.get_mut(&client) {
            Some(pipe) => pipe,
            None => {
                let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if socket.connect(upstream).await.is_err() {
                    continue;
                }
                let socket = Arc::new(socket);
                // The way back: upstream's answers to this client.
                let (back_listener, back_cut, back_dropped) =
                    (listener.clone(), cut.clone(), dropped.clone());
                let back_socket = socket.clone();
                tokio::spawn(async move {
                    let mut back = Pipe::new(shape, move |packet| {
                        let _ = back_listener.try_send_to(&packet, client);
                    });
                    let mut buffer = vec![0u8; 65_536];
                    while let Ok(length) = back_socket.recv(&mut buffer).await {
                        if back_cut.load(Ordering::Acquire) || !back.push(buffer[..length].to_vec())
                        {
                            back_dropped.fetch_add(length as u64, Ordering::Relaxed);
                        }
                    }
                });
                let out = socket.clone();
                clients.insert(
                    client,
                    Pipe::new(shape, move |packet| {
                        let _ = out.try_send(&packet);
                    }),
                );
                clients.get_mut(&client).expect("just inserted")
            }
        };
        if pipe.push(buffer[..length].to_vec()) {
            forwarded.fetch_add(length as u64, Ordering::Relaxed);
        } else {
            dropped.fetch_add(length as u64, Ordering::Relaxed);
        }
    }
}
