//! The presenting side of a volume: what the NBD front end runs requests
//! on. It finds the current master in the store mirror (this node's own
//! master directly, another node's over a client block stream) and follows
//! failover: a request the master did not answer is sent again, the same
//! data to the same offset (rule 6), to whoever is master next. The NBD
//! client sees a pause, not an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_proto::block::Frame;
use volume_crypto::SectorCipher;

use super::master::MasterState;
use super::transport::BlockConn;
use super::{BlockOp, GroupContext};
use crate::engine::Pool;
use crate::error::{NodeError, Result};

/// How long a request waits for a master before it fails with EIO.
const PATIENCE: Duration = Duration::from_secs(60);
/// A master that has not answered in this long is asked again (or the next one is).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Clone)]
enum Route {
    Local(Arc<MasterState>),
    Remote { conn: Arc<BlockConn>, epoch: u64 },
}

pub struct Presenter {
    ctx: Arc<GroupContext>,
    pool: Arc<Pool>,
    name: String,
    remote: tokio::sync::Mutex<Option<(String, u64, Arc<BlockConn>)>>,
    /// The route last resolved and the mirror revision it was resolved at:
    /// requests reuse it until the store changes or it fails, so the I/O
    /// path does not look up the group for every request.
    resolved: std::sync::Mutex<Option<(i64, Route)>>,
    /// Encrypted at rest: data is encrypted here, before it leaves this
    /// node, and decrypted here; masters and replicas see ciphertext only.
    encrypted: bool,
}

impl Presenter {
    pub fn new(ctx: Arc<GroupContext>, pool: Arc<Pool>, name: &str, encrypted: bool) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            pool,
            name: name.to_string(),
            remote: tokio::sync::Mutex::new(None),
            resolved: std::sync::Mutex::new(None),
            encrypted,
        })
    }

    /// The smallest I/O unit clients must use: a cipher sector when encrypted.
    pub fn min_block_bytes(&self) -> u32 {
        if self.encrypted {
            volume_crypto::SECTOR_BYTES as u32
        } else {
            1
        }
    }

    /// Runs one request, encrypting what it writes and decrypting what it
    /// reads when the volume is encrypted.
    pub async fn execute(&self, op: BlockOp) -> Result<Option<Vec<u8>>> {
        if !self.encrypted {
            return self.execute_on_master(op).await;
        }
        let cipher = self
            .ctx
            .keys
            .get(&self.name)
            .ok_or_else(|| NodeError::KeyNotLoaded {
                volume: self.name.clone(),
            })?;
        let misaligned = |err: volume_crypto::CryptoError| NodeError::Misaligned {
            volume: self.name.clone(),
            reason: err.to_string(),
        };
        match op {
            BlockOp::Read { offset, length } => {
                SectorCipher::check_aligned(offset, length as u64).map_err(misaligned)?;
                let mut data = self
                    .execute_on_master(BlockOp::Read { offset, length })
                    .await?
                    .unwrap_or_default();
                cipher.decrypt(offset, &mut data).map_err(misaligned)?;
                Ok(Some(data))
            }
            BlockOp::Write { offset, data, fua } => {
                let mut sealed = data.to_vec();
                cipher.encrypt(offset, &mut sealed).map_err(misaligned)?;
                self.execute_on_master(BlockOp::Write {
                    offset,
                    data: sealed.into(),
                    fua,
                })
                .await
            }
            BlockOp::WriteZeroes {
                offset,
                length,
                punch,
                fua,
            } => {
                // Zero ciphertext sectors read back as zeros (see volume_crypto).
                SectorCipher::check_aligned(offset, length).map_err(misaligned)?;
                self.execute_on_master(BlockOp::WriteZeroes {
                    offset,
                    length,
                    punch,
                    fua,
                })
                .await
            }
            BlockOp::Flush => self.execute_on_master(BlockOp::Flush).await,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size clients are offered: the local copy's when this node has
    /// one (it follows resizes first), the spec's otherwise.
    pub fn size_bytes(&self) -> u64 {
        if let Some(volume) = self.pool.get(&self.name) {
            return volume.size_bytes();
        }
        self.ctx
            .mirror
            .spec(&self.name)
            .map_or(0, |spec| spec.size_bytes)
    }

    /// Runs one request on the current master, waiting out a failover.
    async fn execute_on_master(&self, op: BlockOp) -> Result<Option<Vec<u8>>> {
        let started = Instant::now();
        let mut changes = None;
        let mut waited = false;
        loop {
            let result = match self.cached_route().await {
                Some(Route::Local(master)) => master.execute(op.clone()).await,
                Some(Route::Remote { conn, epoch }) => self.remote(&conn, epoch, &op).await,
                None => Err(NodeError::NotMaster {
                    volume: self.name.clone(),
                    epoch: 0,
                }),
            };
            match result {
                Err(err) if err.is_retryable() => {
                    self.resolved.lock().unwrap().take();
                    if !waited {
                        tracing::debug!(volume = %self.name, error = %err, "waiting for the volume's master");
                        waited = true;
                    }
                }
                other => {
                    if waited {
                        metrics::histogram!("tether_presenter_pause_seconds", "volume" => self.name.clone())
                            .record(started.elapsed().as_secs_f64());
                    }
                    return other;
                }
            }
            if started.elapsed() > PATIENCE {
                return Err(NodeError::NoMaster {
                    volume: self.name.clone(),
                    waited_secs: PATIENCE.as_secs(),
                });
            }
            let changes = changes.get_or_insert_with(|| self.ctx.mirror.subscribe());
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
            }
        }
    }

    /// The last route while the store has not changed since it was resolved.
    async fn cached_route(&self) -> Option<Route> {
        let revision = self.ctx.mirror.revision();
        if let Some((at, route)) = self.resolved.lock().unwrap().as_ref() {
            if *at == revision {
                return Some(route.clone());
            }
        }
        let route = self.route().await?;
        *self.resolved.lock().unwrap() = Some((revision, route.clone()));
        Some(route)
    }

    /// The current master, if the store names one whose lock is held.
    async fn route(&self) -> Option<Route> {
        let (group, _) = self.ctx.mirror.group(&self.name)?;
        let lock = self.ctx.mirror.lock(&self.name)?;
        if lock.node != group.master {
            return None;
        }
        if group.master == self.ctx.node {
            return self
                .ctx
                .master(&self.name)
                .filter(|master| master.epoch == group.epoch && !master.is_deposed())
                .map(Route::Local);
        }
        let mut cached = self.remote.lock().await;
        if let Some((master, epoch, conn)) = cached.as_ref() {
            if *master == group.master && *epoch == group.epoch && !conn.is_dead() {
                return Some(Route::Remote {
                    conn: conn.clone(),
                    epoch: *epoch,
                });
            }
        }
        let addr = self.ctx.mirror.node(&group.master)?.block_addr?;
        let hello = Frame::Hello {
            volume: self.name.clone(),
            node: self.ctx.node.clone(),
            epoch: 0,
        };
        match BlockConn::connect(
            &addr,
            &group.master,
            hello,
            self.ctx.replica_timeout,
            self.ctx.tls.as_ref(),
        )
        .await
        {
            Ok(conn) => {
                tracing::info!(volume = %self.name, master = %group.master, epoch = group.epoch, "presenting from master");
                *cached = Some((group.master.clone(), group.epoch, conn.clone()));
                Some(Route::Remote {
                    conn,
                    epoch: group.epoch,
                })
            }
            Err(err) => {
                tracing::debug!(volume = %self.name, master = %group.master, error = %err, "master not reachable");
                None
            }
        }
    }

    async fn remote(&self, conn: &BlockConn, epoch: u64, op: &BlockOp) -> Result<Option<Vec<u8>>> {
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
        };
        let not_master = || NodeError::NotMaster {
            volume: self.name.clone(),
            epoch,
        };
        // A new epoch means the old master will never answer validly: move on at once.
        let answer = tokio::select! {
            answer = conn.request(frame, REQUEST_TIMEOUT) => answer?,
            _ = self.epoch_moves_past(epoch) => return Err(not_master()),
        };
        match answer {
            Frame::ReadData { data, .. } => Ok(Some(data.to_vec())),
            Frame::Ack { error: 0, .. } => Ok(None),
            Frame::Ack { error, .. } => Err(NodeError::Remote {
                volume: self.name.clone(),
                errno: error,
            }),
            _ => Err(not_master()),
        }
    }

    async fn epoch_moves_past(&self, epoch: u64) {
        let mut changes = self.ctx.mirror.subscribe();
        loop {
            if self
                .ctx
                .mirror
                .group(&self.name)
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
