//! One volume's requests, sent to whoever is its master now.
//!
//! The master is the one the store's group record names while it holds the
//! volume's lock. A request the master did not answer (no connection, a
//! timeout, "not master", a new epoch) is sent again — the same data to the
//! same offset (rule 6) — to whoever is master next, until [`PATIENCE`]
//! runs out; the client sees a pause, not an error. A caller that may itself
//! hold the master (a storage node) runs the request locally through the
//! `local` hook of [`VolumeFollower::execute`]; the gateway has none.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether_proto::block::Frame;

use crate::{BlockConn, BlockOp, BlockTls, FollowError, Mirror};

/// How long a request waits for a master before it fails.
pub const PATIENCE: Duration = Duration::from_secs(60);
/// A master that has not answered in this long is asked again (or the next one is).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Errors the loop can tell apart: retry (no answer was received, the
/// request is idempotent) or give the answer to the client.
pub trait Retryable: From<FollowError> + std::fmt::Display {
    fn is_retryable(&self) -> bool;
}

impl Retryable for FollowError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            FollowError::NotMaster { .. } | FollowError::Peer { .. }
        )
    }
}

/// The master as last resolved, at a mirror revision: requests reuse it
/// until the store changes or it fails, so the I/O path does not look the
/// group up for every request.
#[derive(Clone)]
struct Resolved {
    revision: i64,
    /// `None`: no master holds the lock now.
    master: Option<(String, u64)>,
    conn: Option<Arc<BlockConn>>,
}

pub struct VolumeFollower {
    volume: String,
    /// Who this follower's streams say hello as (the node or gateway name
    /// its certificate carries).
    client: String,
    mirror: Arc<Mirror>,
    tls: Option<BlockTls>,
    connect_timeout: Duration,
    resolved: Mutex<Option<Resolved>>,
    /// Connecting is one at a time, so a burst of requests opens one stream.
    connecting: tokio::sync::Mutex<()>,
}

impl VolumeFollower {
    pub fn new(
        volume: &str,
        client: &str,
        mirror: Arc<Mirror>,
        tls: Option<BlockTls>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            volume: volume.to_string(),
            client: client.to_string(),
            mirror,
            tls,
            connect_timeout,
            resolved: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    pub fn volume(&self) -> &str {
        &self.volume
    }

    /// Runs `op` on the current master, waiting out a failover. `local`
    /// runs it in this process when the master (by name and epoch) is ours
    /// (`None`: the master is elsewhere).
    pub async fn execute<E, L, F>(&self, op: &BlockOp, local: L) -> Result<Option<Vec<u8>>, E>
    where
        E: Retryable,
        L: Fn(&str, u64) -> Option<F>,
        F: Future<Output = Result<Option<Vec<u8>>, E>>,
    {
        let started = Instant::now();
        let mut changes = None;
        let mut waited = false;
        loop {
            let resolved = self.resolve();
            let result: Result<Option<Vec<u8>>, E> = match &resolved.master {
                None => Err(self.not_master(0).into()),
                Some((master, epoch)) => match local(master, *epoch) {
                    Some(run) => run.await,
                    None => match self.connection(resolved.clone(), master, *epoch).await {
                        Some(conn) => self.remote(&conn, *epoch, op).await.map_err(E::from),
                        None => Err(self.not_master(*epoch).into()),
                    },
                },
            };
            match result {
                Err(err) if err.is_retryable() => {
                    self.resolved.lock().unwrap().take();
                    if !waited {
                        tracing::debug!(volume = %self.volume, error = %err, "waiting for the volume's master");
                        waited = true;
                    }
                }
                other => {
                    if waited {
                        metrics::histogram!("tether_presenter_pause_seconds", "volume" => self.volume.clone())
                            .record(started.elapsed().as_secs_f64());
                    }
                    return other;
                }
            }
            if started.elapsed() > PATIENCE {
                return Err(FollowError::NoMaster {
                    volume: self.volume.clone(),
                    waited_secs: PATIENCE.as_secs(),
                }
                .into());
            }
            let changes = changes.get_or_insert_with(|| self.mirror.subscribe());
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    fn not_master(&self, epoch: u64) -> FollowError {
        FollowError::NotMaster {
            volume: self.volume.clone(),
            epoch,
        }
    }

    /// The master the store names now (cached while the store is unchanged).
    fn resolve(&self) -> Resolved {
        let revision = self.mirror.revision();
        if let Some(resolved) = self.resolved.lock().unwrap().as_ref() {
            if resolved.revision == revision {
                return resolved.clone();
            }
        }
        let master = self.mirror.group(&self.volume).and_then(|(group, _)| {
            let lock = self.mirror.lock(&self.volume)?;
            (lock.node == group.master).then_some((group.master, group.epoch))
        });
        let resolved = Resolved {
            revision,
            master,
            conn: None,
        };
        *self.resolved.lock().unwrap() = Some(resolved.clone());
        resolved
    }

    /// A live stream to `master`: the cached one, or a new one.
    async fn connection(
        &self,
        resolved: Resolved,
        master: &str,
        epoch: u64,
    ) -> Option<Arc<BlockConn>> {
        if let Some(conn) = resolved.conn.filter(|conn| !conn.is_dead()) {
            return Some(conn);
        }
        let _one = self.connecting.lock().await;
        // Someone may have connected while we waited.
        if let Some(conn) = self
            .resolved
            .lock()
            .unwrap()
            .as_ref()
            .filter(|now| {
                now.master
                    .as_ref()
                    .is_some_and(|(m, e)| m == master && *e == epoch)
            })
            .and_then(|now| now.conn.clone())
            .filter(|conn| !conn.is_dead())
        {
            return Some(conn);
        }
        let addr = self.mirror.node(master)?.block_addr?;
        let hello = Frame::Hello {
            volume: self.volume.clone(),
            node: self.client.clone(),
            epoch: 0,
        };
        match BlockConn::connect(
            &addr,
            master,
            hello,
            self.connect_timeout,
            self.tls.as_ref(),
        )
        .await
        {
            Ok(conn) => {
                tracing::info!(volume = %self.volume, %master, epoch, "sending I/O to the master");
                if let Some(now) = self.resolved.lock().unwrap().as_mut() {
                    if now
                        .master
                        .as_ref()
                        .is_some_and(|(m, e)| m == master && *e == epoch)
                    {
                        now.conn = Some(conn.clone());
                    }
                }
                Some(conn)
            }
            Err(err) => {
                tracing::debug!(volume = %self.volume, %master, error = %err, "master not reachable");
                None
            }
        }
    }

    async fn remote(
        &self,
        conn: &BlockConn,
        epoch: u64,
        op: &BlockOp,
    ) -> Result<Option<Vec<u8>>, FollowError> {
        let frame = match op.clone() {
            BlockOp::Read { offset, length } => Frame::Read {
                seq: 0,
                offset,
                length,
            },
            BlockOp::Write { offset, data, fua } => Frame::Write {
                seq: 0,
                epoch: 0,
                offset,
                fua,
                data,
            },
            BlockOp::WriteZeroes {
                offset,
                length,
                punch,
                fua,
            } => Frame::WriteZeroes {
                seq: 0,
                epoch: 0,
                offset,
                length,
                punch,
                fua,
            },
            BlockOp::Flush => Frame::Flush { seq: 0, epoch: 0 },
            BlockOp::Hashes { first, count } => Frame::HashRequest {
                seq: 0,
                first,
                count,
            },
        };
        // A new epoch means the old master will never answer validly: move on at once.
        let answer = tokio::select! {
            answer = conn.request(frame, REQUEST_TIMEOUT) => answer?,
            _ = self.epoch_moves_past(epoch) => return Err(self.not_master(epoch)),
        };
        match answer {
            Frame::ReadData { data, .. } => Ok(Some(data.to_vec())),
            Frame::TreeResponse { hashes, .. } => Ok(Some(hashes.concat())),
            Frame::Ack { error: 0, .. } => Ok(None),
            Frame::Ack { error, .. } => Err(FollowError::Remote {
                volume: self.volume.clone(),
                errno: error,
            }),
            _ => Err(self.not_master(epoch)),
        }
    }

    async fn epoch_moves_past(&self, epoch: u64) {
        let mut changes = self.mirror.subscribe();
        loop {
            if self
                .mirror
                .group(&self.volume)
                .is_some_and(|(group, _)| group.epoch != epoch)
            {
                return;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}
