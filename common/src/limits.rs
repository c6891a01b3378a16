//! What one peer can make a node hold, bounded in bytes and in count.
//!
//! Every request a node takes from a socket (an NBD client's, or another
//! node's block frame) is *charged* before its payload is buffered or it
//! runs: its bytes (a write's payload, a read's reply) against its
//! connection's budget and against one budget shared by all connections of
//! that kind, and one slot against the connection's request count. The
//! charge travels with the reply and is released once the reply is written.
//! A connection over budget is simply not read from until replies drain, so
//! the kernel's socket buffers push back on the client.
//!
//! Accept loops back off on errors (`EMFILE` repeats at the accept rate and
//! must not spin a core or flood the log), and listeners cap their
//! connections so the cap refuses before the descriptors run out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One connection's budget, drawing also on a budget shared by its kind.
pub struct Budget {
    bytes: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    shared: Arc<Semaphore>,
    /// Largest single charge (a request larger than this is charged this).
    max_charge: u32,
}

/// A request's hold on the budgets; dropping it gives them back.
pub struct Charge {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    _shared: OwnedSemaphorePermit,
}

impl Budget {
    /// `bytes` and `requests` for this connection; `shared` by all of its kind,
    /// which holds `shared_bytes` permits in all.
    pub fn new(bytes: u32, requests: u32, shared: Arc<Semaphore>, shared_bytes: u32) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(bytes as usize)),
            requests: Arc::new(Semaphore::new(requests as usize)),
            shared,
            max_charge: bytes.min(shared_bytes),
        }
    }

    /// Waits until `bytes` more fit this connection's budget and the shared
    /// one, and one more request fits the connection's count.
    pub async fn charge(&self, bytes: u64) -> Charge {
        let bytes = bytes.min(self.max_charge as u64) as u32;
        let request = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .expect("budgets are never closed");
        let own = self
            .bytes
            .clone()
            .acquire_many_owned(bytes)
            .await
            .expect("budgets are never closed");
        let shared = self
            .shared
            .clone()
            .acquire_many_owned(bytes)
            .await
            .expect("budgets are never closed");
        Charge {
            _request: request,
            _bytes: own,
            _shared: shared,
        }
    }

    /// Bytes charged on this connection now (for tests and metrics).
    pub fn bytes_available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// Backs off an accept loop that keeps failing, and logs a repeated failure
/// once a second with how many were suppressed.
pub struct AcceptBackoff {
    what: &'static str,
    delay: Duration,
    last_logged: Option<Instant>,
    suppressed: u64,
}

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: FIRST_DELAY,
            last_logged: None,
            suppressed: 0,
        }
    }

    pub fn succeeded(&mut self) {
        self.delay = FIRST_DELAY;
    }

    /// Logs (at most once a second) and sleeps, doubling the pause up to 1 s.
    pub async fn failed(&mut self, err: &std::io::Error) {
        let due = self
            .last_logged
            .is_none_or(|logged| logged.elapsed() >= LOG_EVERY);
        if due {
            tracing::warn!(listener = self.what, error = %err, suppressed = self.suppressed, retry_in_ms = self.delay.as_millis() as u64, "accept failed; backing off");
            self.last_logged = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        metrics::counter!("tether_accept_errors_total", "listener" => self.what).increment(1);
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_DELAY);
    }
}

/// At most this many connections at once on one listener.
#[derive(Clone)]
pub struct ConnectionCap {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl ConnectionCap {
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A slot for a new connection, or `None` when the listener is full.
    pub fn try_admit(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Descriptors this process may open (the soft `RLIMIT_NOFILE`).
pub fn open_files_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur as usize
    } else {
        1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn charges_wait_for_room_in_both_budgets_and_come_back_on_drop() {
        let shared = Arc::new(Semaphore::new(100));
        let a = Budget::new(60, 10, shared.clone(), 100);
        let b = Budget::new(60, 10, shared.clone(), 100);
        let first = a.charge(50).await;
        // Over a's own budget: waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), a.charge(20))
                .await
                .is_err()
        );
        let second = b.charge(50).await;
        // Within b's own budget, over the shared one: waits too.
        assert!(tokio::time::timeout(Duration::from_millis(20), b.charge(5))
            .await
            .is_err());
        drop(first);
        let _third = b.charge(5).await;
        drop(second);
        assert_eq!(a.bytes_available(), 60);
        // A request larger than the budget is charged the whole budget, not refused.
        let _big = a.charge(1 << 40).await;
        assert_eq!(a.bytes_available(), 0);
    }

    #[tokio::test]
    async fn the_request_count_is_bounded_too() {
        let shared = Arc::new(Semaphore::new(100));
        let budget = Budget::new(100, 2, shared, 100);
        let _one = budget.charge(0).await;
        let _two = budget.charge(0).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), budget.charge(0))
                .await
                .is_err()
        );
    }
}
