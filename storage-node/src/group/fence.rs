//! A local copy's epoch fence: the newest epoch the copy has seen (rule 3),
//! and a gate that orders every write to the copy against changes of it.
//!
//! A write is admitted under the gate's shared side and holds it until the
//! write is done; raising the epoch takes the exclusive side, so it waits
//! for every write admitted under the old epoch, and no write of an older
//! epoch is admitted after it. Checking the epoch and then writing without
//! the gate would let a write admitted before a takeover (queued behind an
//! overlapping one, or in a process paused past its lease) land after the
//! new master's Delta Sync compared the chunk, and the copy, back in sync,
//! would differ silently.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tether_proto::group::replica_admits;
use tokio::sync::{RwLock, RwLockReadGuard};

pub struct EpochFence {
    newest: AtomicU64,
    gate: RwLock<()>,
    /// The copy's directory, where the epoch is kept (`epoch`).
    dir: PathBuf,
}

/// A write admitted at its epoch; the epoch cannot change until it drops.
pub struct Admitted<'a> {
    _gate: RwLockReadGuard<'a, ()>,
}

impl EpochFence {
    /// The fence of the copy in `dir`, at the epoch last recorded there.
    pub fn load(dir: &Path) -> Self {
        let stored = std::fs::read_to_string(dir.join("epoch"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        Self {
            newest: AtomicU64::new(stored),
            gate: RwLock::new(()),
            dir: dir.to_path_buf(),
        }
    }

    pub fn newest(&self) -> u64 {
        self.newest.load(Ordering::Acquire)
    }

    /// Admits a write of `epoch` unless a newer epoch has been seen; hold
    /// the answer until the write is done. `Err` carries the newest epoch.
    pub async fn admit(&self, epoch: u64) -> Result<Admitted<'_>, u64> {
        let gate = self.gate.read().await;
        let newest = self.newest();
        if replica_admits(newest, epoch) {
            Ok(Admitted { _gate: gate })
        } else {
            Err(newest)
        }
    }

    /// Raises the newest epoch to `epoch` (never lowers it), once every
    /// write admitted before has finished; durable before it returns.
    pub async fn raise(&self, epoch: u64) -> std::io::Result<()> {
        let _drained = self.gate.write().await;
        if self.newest.fetch_max(epoch, Ordering::AcqRel) >= epoch {
            return Ok(());
        }
        persist_epoch(&self.dir, epoch).await
    }

    /// Sets the newest epoch to `epoch`, which the store confirmed is the
    /// volume's current one, once every write admitted before has finished:
    /// raises it, or lowers a newer one no store ever held (written by an
    /// older version that believed a peer).
    pub async fn confirm(&self, epoch: u64) -> std::io::Result<()> {
        let _drained = self.gate.write().await;
        if self.newest.swap(epoch, Ordering::AcqRel) == epoch {
            return Ok(());
        }
        persist_epoch(&self.dir, epoch).await
    }
}

/// Writes a copy's `epoch` file durably (temporary file, fdatasync, rename,
/// directory fsync).
async fn persist_epoch(dir: &Path, epoch: u64) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let temp = dir.join("epoch.tmp");
        let mut file = std::fs::File::create(&temp)?;
        writeln!(file, "{epoch}")?;
        file.sync_data()?;
        std::fs::rename(&temp, dir.join("epoch"))?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .expect("epoch write does not panic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn raising_the_epoch_waits_for_admitted_writes_and_refuses_older_ones_after() {
        let dir = tempfile::tempdir().unwrap();
        let fence = Arc::new(EpochFence::load(dir.path()));
        fence.raise(3).await.unwrap();
        let admitted = fence.admit(3).await.unwrap();
        let mut raising = tokio::spawn({
            let fence = fence.clone();
            async move { fence.raise(4).await }
        });
        let early = tokio::time::timeout(Duration::from_millis(50), &mut raising).await;
        assert!(early.is_err(), "raised while a write of epoch 3 ran");
        assert_eq!(fence.newest(), 3);
        drop(admitted);
        raising.await.unwrap().unwrap();
        assert_eq!(fence.admit(3).await.err(), Some(4));
        assert!(fence.admit(4).await.is_ok());
        assert_eq!(EpochFence::load(dir.path()).newest(), 4, "kept on disk");
        fence.confirm(2).await.unwrap();
        assert_eq!(EpochFence::load(dir.path()).newest(), 2);
    }
}
