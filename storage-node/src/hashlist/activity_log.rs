//! The activity log: a durable bitmap of extents whose chunk hashes may be
//! stale. An extent's bit is set durably *before* any write into it is
//! issued, and cleared only after the data and the hashes of the extent are
//! durable (see `Volume::checkpoint`). After a crash, only the marked extents
//! are rehashed. Most writes land in an already-marked extent and cost no
//! metadata I/O, as with DRBD's activity log.
//!
//! File layout: two slots, written alternately so a torn write of one leaves
//! the other intact; the slot format is `tether_proto::disk::activity_log`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

pub use tether_proto::disk::activity_log::SLOT_LEN;
use tether_proto::disk::activity_log::{decode_slot, encode_slot};

/// The on-disk side of the activity log.
pub struct ActivityLog {
    file: Arc<File>,
    next_sequence: std::sync::atomic::AtomicU64,
}

impl ActivityLog {
    /// Creates an empty log (no extent marked).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        file.set_len(2 * SLOT_LEN)?;
        let log = Self {
            file: Arc::new(file),
            next_sequence: 1.into(),
        };
        log.write(&[], 0)?;
        Ok(log)
    }

    /// Opens a log and returns the marked extents of its newest valid slot.
    pub fn open(path: &Path) -> std::io::Result<(Self, Vec<u64>)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let mut best: Option<(u64, Vec<u64>)> = None;
        for slot in 0..2 {
            let mut buf = vec![0u8; SLOT_LEN as usize];
            file.read_exact_at(&mut buf, slot * SLOT_LEN)?;
            if let Some((sequence, marked)) = decode_slot(&buf) {
                if best
                    .as_ref()
                    .is_none_or(|(best_sequence, _)| sequence > *best_sequence)
                {
                    best = Some((sequence, marked));
                }
            }
        }
        let (sequence, marked) = best.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "activity log has no valid slot",
            )
        })?;
        Ok((
            Self {
                file: Arc::new(file),
                next_sequence: (sequence + 1).into(),
            },
            marked,
        ))
    }

    /// Durably records `bits` (one u64 word per 64 extents) covering `n_extents`.
    /// Blocking: call from a blocking context.
    pub fn write(&self, bits: &[u64], n_extents: u64) -> std::io::Result<()> {
        let sequence = self
            .next_sequence
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let slot = encode_slot(sequence, bits, n_extents).expect("activity log slot overflow");
        self.file.write_all_at(&slot, (sequence % 2) * SLOT_LEN)?;
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_valid_slot_wins_and_a_torn_slot_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("al");
        let log = ActivityLog::create(&path).unwrap();
        log.write(&[0b101], 3).unwrap(); // sequence 2 → slot 0
        log.write(&[0b110], 3).unwrap(); // sequence 3 → slot 1
        drop(log);
        assert_eq!(ActivityLog::open(&path).unwrap().1, vec![1, 2]);

        // Tear slot 1 (the newest): the older slot 0 is used.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff; 4], SLOT_LEN + 30).unwrap();
        let (log, marked) = ActivityLog::open(&path).unwrap();
        assert_eq!(marked, vec![0, 2]);
        // Writing continues after the newest sequence seen.
        log.write(&[0], 3).unwrap();
        assert_eq!(ActivityLog::open(&path).unwrap().1, Vec::<u64>::new());
    }
}
