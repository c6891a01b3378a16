//! What a master knows for DR: which 4 KiB blocks changed since the last
//! batch was cut (so a 4 KiB write ships 4 KiB, not its 256 KiB chunk) (memory only: a new master starts from a hash comparison with
//! the secondary, see ARCHITECTURE.md "DR"), the barrier a cut takes, and
//! whether the volume's DR role lets a client in.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

use tokio::sync::{Notify, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{NodeError, Result};

/// Who sends a request to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A consumer: a presenting node, a gateway for a satellite.
    Client,
    /// A DR receiver applying batches to this secondary.
    DrApply,
}

/// What the volume's DR role admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Gate {
    /// Not DR-linked, or the primary: every client.
    Open = 0,
    /// A secondary: only the DR receiver (its content moves batch by batch).
    Secondary = 1,
    /// Fenced (a newer generation exists elsewhere): nobody.
    Fenced = 2,
}

/// The tracking unit: what one changed bit stands for.
pub const DR_BLOCK: u64 = 4096;
/// The longest extent `take` hands out (one read, one frame).
pub const MAX_EXTENT: u64 = 256 << 10;

/// A byte range of the volume: (offset, length).
pub type Extent = (u64, u64);

#[derive(Default)]
struct Dirty {
    bits: Vec<u64>,
    count: u64,
}

impl Dirty {
    fn set(&mut self, chunk: u64) {
        let (word, bit) = ((chunk / 64) as usize, chunk % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & (1 << bit) == 0 {
            self.bits[word] |= 1 << bit;
            self.count += 1;
        }
    }
}

pub struct DrTracker {
    /// Writes hold it shared from before they run to after they are
    /// marked; a cut holds it exclusively, so every write is wholly before
    /// the cut (applied and marked) or wholly after.
    barrier: RwLock<()>,
    dirty: Mutex<Dirty>,
    /// Marks are kept only while the volume ships (no cost otherwise).
    tracking: AtomicBool,
    wrote: Notify,
    gate: AtomicU8,
}

impl Default for DrTracker {
    fn default() -> Self {
        Self {
            barrier: RwLock::new(()),
            dirty: Mutex::default(),
            tracking: AtomicBool::new(false),
            wrote: Notify::new(),
            gate: AtomicU8::new(Gate::Open as u8),
        }
    }
}

impl DrTracker {
    pub fn gate(&self) -> Gate {
        match self.gate.load(Ordering::Acquire) {
            0 => Gate::Open,
            1 => Gate::Secondary,
            _ => Gate::Fenced,
        }
    }

    pub fn set_gate(&self, gate: Gate) {
        self.gate.store(gate as u8, Ordering::Release);
    }

    /// Refuses a request the volume's DR role does not admit.
    pub fn admit(&self, volume: &str, origin: Origin) -> Result<()> {
        // A receiver also writes its journal, a volume of no DR link.
        let admitted = matches!(
            (self.gate(), origin),
            (Gate::Open, _) | (Gate::Secondary, Origin::DrApply)
        );
        if admitted {
            return Ok(());
        }
        Err(NodeError::DrRefused {
            volume: volume.to_string(),
            reason: match self.gate() {
                Gate::Open => unreachable!("an open gate admits everyone"),
                Gate::Secondary => {
                    "it is a DR secondary: its clients attach to the primary (or promote it)".into()
                }
                Gate::Fenced => "it is fenced: a newer DR generation was promoted in the peer; fail back to serve it again".into(),
            },
        })
    }

    /// Held across one write.
    pub async fn hold(&self) -> RwLockReadGuard<'_, ()> {
        self.barrier.read().await
    }

    /// Held while a batch is cut: no write runs.
    pub async fn cut(&self) -> RwLockWriteGuard<'_, ()> {
        self.barrier.write().await
    }

    /// Starts keeping marks, from the empty set: the caller compares the
    /// two sides next, which finds everything written before. Taken under
    /// the cut barrier, so no write is between its check and its mark.
    pub async fn start_tracking(&self) {
        let _held = self.cut().await;
        self.tracking.store(true, Ordering::Release);
        *self.dirty.lock().unwrap() = Dirty::default();
    }

    /// Marks the blocks of `offset .. offset + length` changed (while
    /// tracking; the caller holds [`hold`](Self::hold)).
    pub fn mark(&self, offset: u64, length: u64) {
        if length == 0 || !self.tracking.load(Ordering::Acquire) {
            return;
        }
        let (first, last) = (
            offset / DR_BLOCK,
            offset.saturating_add(length - 1) / DR_BLOCK,
        );
        let mut dirty = self.dirty.lock().unwrap();
        for block in first..=last {
            dirty.set(block);
        }
        drop(dirty);
        self.wrote.notify_one();
    }

    /// The changed blocks as extents in order (runs of blocks, at most
    /// [`MAX_EXTENT`] each), and forgets them.
    pub fn take(&self) -> Vec<Extent> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap());
        let mut extents: Vec<Extent> = Vec::new();
        for (word, bits) in dirty.bits.iter().enumerate() {
            let mut bits = *bits;
            while bits != 0 {
                let bit = bits.trailing_zeros() as u64;
                let offset = (word as u64 * 64 + bit) * DR_BLOCK;
                match extents.last_mut() {
                    Some((start, length)) if *start + *length == offset && *length < MAX_EXTENT => {
                        *length += DR_BLOCK
                    }
                    _ => extents.push((offset, DR_BLOCK)),
                }
                bits &= bits - 1;
            }
        }
        extents
    }

    /// Marks `extents` changed again (a batch that did not reach the peer).
    pub fn restore(&self, extents: &[Extent]) {
        for (offset, length) in extents {
            self.mark(*offset, *length);
        }
    }

    /// How many blocks changed since the last take.
    pub fn pending(&self) -> u64 {
        self.dirty.lock().unwrap().count
    }

    /// Resolves at the next write (or at once if one came since the last call).
    pub async fn written(&self) {
        self.wrote.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_come_back_as_extents_in_order_once() {
        let tracker = DrTracker::default();
        // Not tracking: nothing kept.
        tracker.mark(0, 1);
        assert_eq!(tracker.pending(), 0);
        tracker.start_tracking().await;
        tracker.mark(0, 1);
        tracker.mark(4096 * 70 - 1, 2);
        tracker.mark(10, 10);
        assert_eq!(tracker.pending(), 3);
        assert_eq!(tracker.take(), vec![(0, 4096), (69 * 4096, 8192)]);
        assert!(tracker.take().is_empty());
        tracker.restore(&[(5 * 4096, 4096), (3 * 4096, 4096)]);
        assert_eq!(tracker.take(), vec![(3 * 4096, 4096), (5 * 4096, 4096)]);
        // A long run is cut into extents of at most MAX_EXTENT.
        tracker.mark(0, MAX_EXTENT * 2 + 4096);
        assert_eq!(
            tracker.take(),
            vec![
                (0, MAX_EXTENT),
                (MAX_EXTENT, MAX_EXTENT),
                (2 * MAX_EXTENT, 4096)
            ]
        );
    }

    #[test]
    fn gates_admit_by_role_and_origin() {
        let tracker = DrTracker::default();
        assert!(tracker.admit("v", Origin::Client).is_ok());
        assert!(tracker.admit("v", Origin::DrApply).is_ok());
        tracker.set_gate(Gate::Secondary);
        assert!(tracker.admit("v", Origin::Client).is_err());
        assert!(tracker.admit("v", Origin::DrApply).is_ok());
        tracker.set_gate(Gate::Fenced);
        assert!(tracker.admit("v", Origin::Client).is_err());
        assert!(tracker.admit("v", Origin::DrApply).is_err());
    }
}
