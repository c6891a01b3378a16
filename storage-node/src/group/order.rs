//! Overlapping writes on a master go to the copies one after another.
//!
//! NBD lets a client have overlapping writes in flight; which one lands last
//! is the client's business, but every copy must land them in the same
//! order, or in-sync copies silently differ (and after a failover the client
//! reads data it already overwrote). Copies apply the frames of one stream
//! concurrently, so the master makes sure no two writes in flight overlap: a
//! write that overlaps an earlier one waits until that one is done on every
//! copy (DRBD's conflicting-write detection does the same). Writes that do
//! not overlap run side by side, as before.
//!
//! Delta Sync's copy of a chunk takes the chunk's range the same way, so a
//! live write and the copy of its chunk never cross (rule 5).
//!
//! Entries are kept in arrival order and each waits only for earlier ones, so
//! the order is first come, first served and nobody starves. The number of
//! entries is bounded by the requests in flight on the master.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

/// Byte ranges being written, in arrival order.
#[derive(Default)]
pub struct WriteOrder {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// By ticket: the range and a semaphore closed when its write is done.
    active: BTreeMap<u64, Entry>,
}

struct Entry {
    start: u64,
    end: u64,
    /// Never has permits; closing it wakes every later overlapping entry.
    done: Arc<Semaphore>,
}

/// Holds a range until dropped; later overlapping entries wait for it.
pub struct OrderGuard<'a> {
    order: &'a WriteOrder,
    ticket: u64,
}

impl WriteOrder {
    /// Waits until every earlier entry overlapping `[offset, offset + length)`
    /// is done, then holds the range. Dropping the future while it waits
    /// gives up its place without holding anything up.
    pub async fn enter(&self, offset: u64, length: u64) -> OrderGuard<'_> {
        let end = offset.saturating_add(length);
        let (ticket, earlier) = {
            let mut state = self.state.lock().unwrap();
            let earlier: Vec<Arc<Semaphore>> = state
                .active
                .values()
                .filter(|entry| entry.start < end && offset < entry.end)
                .map(|entry| entry.done.clone())
                .collect();
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.active.insert(
                ticket,
                Entry {
                    start: offset,
                    end,
                    done: Arc::new(Semaphore::new(0)),
                },
            );
            (ticket, earlier)
        };
        let guard = OrderGuard {
            order: self,
            ticket,
        };
        for done in earlier {
            // Fails (with "closed") exactly when that entry is done.
            let _ = done.acquire().await;
        }
        guard
    }

    /// Entries held or waiting (for tests and metrics).
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for OrderGuard<'_> {
    fn drop(&mut self) {
        let entry = self.order.state.lock().unwrap().active.remove(&self.ticket);
        if let Some(entry) = entry {
            entry.done.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn overlapping_entries_wait_and_disjoint_ones_do_not() {
        let order = WriteOrder::default();
        let first = order.enter(0, 4096).await;
        // Disjoint: enters at once.
        let disjoint = order.enter(4096, 4096).await;
        // Overlapping the first: waits until it is dropped.
        let mut second = Box::pin(order.enter(1024, 1024));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut second)
                .await
                .is_err(),
            "an overlapping write must wait"
        );
        drop(first);
        let second = second.await;
        assert_eq!(order.len(), 2);
        drop((second, disjoint));
        assert!(order.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_holds_nobody_up() {
        let order = WriteOrder::default();
        let first = order.enter(0, 10).await;
        {
            let waiting = order.enter(5, 10);
            let _ = tokio::time::timeout(Duration::from_millis(5), waiting).await;
        }
        drop(first);
        assert!(order.is_empty());
        let _again = order.enter(0, 100).await;
    }

    #[tokio::test]
    async fn entries_are_served_in_arrival_order() {
        let order = Arc::new(WriteOrder::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = order.enter(0, 10).await;
        let mut tasks = Vec::new();
        for writer in 0..8u32 {
            let (task_order, log) = (order.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                let _held = task_order.enter(0, 10).await;
                log.lock().unwrap().push(writer);
                tokio::task::yield_now().await;
            }));
            // Let this writer take its ticket before the next one asks.
            while order.len() < writer as usize + 2 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), (0..8).collect::<Vec<_>>());
    }
}
