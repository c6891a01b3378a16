//! The presenting side of a volume: what the NBD front end runs requests
//! on. It finds the current master in the store mirror (this node's own
//! master directly, another node's over a client block stream) and follows
//! failover: a request the master did not answer is sent again, the same
//! data to the same offset (rule 6), to whoever is master next. The NBD
//! client sees a pause, not an error.

use std::sync::Arc;

use master_follower::VolumeFollower;
use volume_crypto::SectorCipher;

use super::{BlockOp, GroupContext};
use crate::engine::Pool;
use crate::error::{NodeError, Result};

pub struct Presenter {
    ctx: Arc<GroupContext>,
    pool: Arc<Pool>,
    name: String,
    /// Finds the master and follows it; this node's own master runs
    /// requests directly (see `execute_on_master`).
    follower: VolumeFollower,
    /// Encrypted at rest: data is encrypted here, before it leaves this
    /// node, and decrypted here; masters and replicas see ciphertext only.
    encrypted: bool,
}

impl Presenter {
    pub fn new(ctx: Arc<GroupContext>, pool: Arc<Pool>, name: &str, encrypted: bool) -> Arc<Self> {
        let follower = VolumeFollower::new(
            name,
            &ctx.node,
            ctx.mirror.clone(),
            ctx.tls.clone(),
            ctx.replica_timeout,
        );
        Arc::new(Self {
            ctx,
            pool,
            name: name.to_string(),
            follower,
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
            // Hashes are of ciphertext: what the copies hold.
            BlockOp::Hashes { .. } => self.execute_on_master(op).await,
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

    /// Runs one request on the current master, waiting out a failover:
    /// here if this node is the master at that epoch, over a block stream
    /// otherwise.
    async fn execute_on_master(&self, op: BlockOp) -> Result<Option<Vec<u8>>> {
        let local = |master: &str, epoch: u64| {
            (master == self.ctx.node).then(|| {
                let op = op.clone();
                async move {
                    match self
                        .ctx
                        .master(&self.name)
                        .filter(|local| local.epoch == epoch && !local.is_deposed())
                    {
                        Some(local) => local.execute(op).await,
                        None => Err(NodeError::NotMaster {
                            volume: self.name.clone(),
                            epoch,
                        }),
                    }
                }
            })
        };
        self.follower.execute(&op, local).await
    }
}

/// What the NBD server runs requests on.
impl nbd_export::Export for Presenter {
    fn name(&self) -> &str {
        Presenter::name(self)
    }

    fn size_bytes(&self) -> u64 {
        Presenter::size_bytes(self)
    }

    fn min_block_bytes(&self) -> u32 {
        Presenter::min_block_bytes(self)
    }

    async fn execute(
        &self,
        op: BlockOp,
    ) -> std::result::Result<Option<Vec<u8>>, nbd_export::Failure> {
        Presenter::execute(self, op)
            .await
            .map_err(|err| nbd_export::Failure {
                errno: err.errno(true),
                out_of_range: matches!(err, NodeError::OutOfRange { .. }),
                message: err.to_string(),
            })
    }
}
