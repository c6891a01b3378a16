//! The volume-group protocol's decisions, with no I/O: who may become master,
//! how the epoch moves, how the in-sync replica set (ISR) shrinks and grows,
//! which frames a replica admits, and when a master must stop answering.
//! The storage node applies these to etcd and sockets; the model checker
//! (`tla/model`) explores them over crashes, message loss and lease expiry.
//! Each function names the ARCHITECTURE.md rule it keeps.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One volume group's state in the coordination store, changed only by
/// compare-and-swap on its mod revision. Key: `/tether/v1/{cluster}/groups/{volume}`.
///
/// The master's lock is a separate key, `locks/{volume}`, bound to the master
/// node's lease; `epoch` is bumped in the same transaction that takes the lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct GroupRecord {
    pub version: u32,
    /// The fencing token: every replicated write carries it.
    pub epoch: u64,
    /// The node that holds (or last held) the lock.
    pub master: String,
    /// In-sync replicas, the master included: each holds every acknowledged write.
    pub isr: Vec<String>,
}

/// Why a node may not take the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromotionRefused {
    /// Only an in-sync copy holds every acknowledged write.
    NotInSync,
}

impl GroupRecord {
    pub const VERSION: u32 = 1;

    /// A new group: every copy is empty, so every copy is in sync; the first
    /// copy is to take the lock first. Epoch 0 means no master has served yet.
    pub fn new(copies: &[String]) -> Self {
        Self {
            version: Self::VERSION,
            epoch: 0,
            master: copies.first().cloned().unwrap_or_default(),
            isr: copies.to_vec(),
        }
    }

    pub fn in_sync(&self, node: &str) -> bool {
        self.isr.iter().any(|member| member == node)
    }

    /// The record written in the transaction that gives `candidate` the lock.
    ///
    /// Rule "only ISR members are promoted": a copy outside the ISR may lack
    /// acknowledged writes. Rule 4 "new epoch, new truth": after a promotion
    /// the other copies may hold writes the old master never acknowledged,
    /// so the ISR restarts as the new master alone and each copy rejoins
    /// after Delta Sync. A group that never served (epoch 0) keeps its ISR:
    /// all copies are still empty.
    pub fn promote(&self, candidate: &str) -> Result<GroupRecord, PromotionRefused> {
        if !self.in_sync(candidate) {
            return Err(PromotionRefused::NotInSync);
        }
        let isr = if self.epoch == 0 {
            let mut isr = vec![candidate.to_string()];
            isr.extend(self.isr.iter().filter(|m| *m != candidate).cloned());
            isr
        } else {
            vec![candidate.to_string()]
        };
        Ok(GroupRecord {
            version: Self::VERSION,
            epoch: self.epoch + 1,
            master: candidate.to_string(),
            isr,
        })
    }

    /// Rule 2 "all-ISR ack": the record to commit *before* the first
    /// acknowledgement without `member`. Same epoch: only the master of this
    /// epoch may write it (the CAS on the mod revision enforces that).
    pub fn without(&self, member: &str) -> GroupRecord {
        GroupRecord {
            isr: self.isr.iter().filter(|m| *m != member).cloned().collect(),
            ..self.clone()
        }
    }

    /// The record a master commits when its own copy missed a write its
    /// replicas `successors` took (a local write error): it leaves the ISR,
    /// and the first successor is to take the lock next. Same epoch; the
    /// lock is released in the same transaction.
    pub fn abdicate(&self, successors: &[String]) -> GroupRecord {
        let isr: Vec<String> = self
            .isr
            .iter()
            .filter(|member| successors.contains(member) && **member != self.master)
            .cloned()
            .collect();
        GroupRecord {
            master: isr.first().cloned().unwrap_or_else(|| self.master.clone()),
            isr,
            ..self.clone()
        }
    }

    /// The record to commit once `member` has been reconciled by Delta Sync
    /// while receiving every live write.
    pub fn with(&self, member: &str) -> GroupRecord {
        let mut next = self.clone();
        if !next.in_sync(member) {
            next.isr.push(member.to_string());
        }
        next
    }
}

/// Rule 3 "fencing both ways", replica side: a frame from an epoch older than
/// the newest this copy has seen comes from a deposed master.
pub fn replica_admits(newest_seen: u64, frame_epoch: u64) -> bool {
    frame_epoch >= newest_seen
}

/// Rule 3, master side: how long after *sending* a successful keep-alive a
/// master may still answer I/O. etcd measures the TTL from when it received
/// the keep-alive, which is later, so the lock cannot pass to another node
/// before this deadline; the margin absorbs clock-rate differences and the
/// time between checking the deadline and the reply leaving.
pub fn lease_validity(ttl: Duration) -> Duration {
    let margin = (ttl / 5).max(Duration::from_millis(200));
    ttl.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn only_isr_members_are_promoted_and_the_epoch_grows() {
        let group = GroupRecord::new(&names(&["a", "b", "c"]));
        let first = group.promote("a").unwrap();
        assert_eq!(
            (first.epoch, first.isr.clone()),
            (1, names(&["a", "b", "c"]))
        );
        let shrunk = first.without("c");
        assert_eq!(shrunk.promote("c"), Err(PromotionRefused::NotInSync));
        let second = shrunk.promote("b").unwrap();
        assert_eq!(second.epoch, 2);
        assert_eq!(second.master, "b");
        assert_eq!(second.isr, names(&["b"]), "others resync after a promotion");
        assert_eq!(second.with("a").with("a").isr, names(&["b", "a"]));
    }

    #[test]
    fn a_master_that_missed_a_write_hands_over_to_the_replicas_that_took_it() {
        let group = GroupRecord::new(&names(&["a", "b", "c"]))
            .promote("a")
            .unwrap();
        let handed = group.abdicate(&names(&["c"]));
        assert_eq!(
            (handed.master.as_str(), handed.isr.clone()),
            ("c", names(&["c"]))
        );
        assert_eq!(handed.epoch, group.epoch);
        assert_eq!(handed.promote("a"), Err(PromotionRefused::NotInSync));
        assert_eq!(handed.promote("c").unwrap().epoch, group.epoch + 1);
    }

    #[test]
    fn replicas_refuse_older_epochs_and_masters_stop_early() {
        assert!(replica_admits(3, 3));
        assert!(replica_admits(3, 4));
        assert!(!replica_admits(3, 2));
        assert!(lease_validity(Duration::from_secs(2)) < Duration::from_secs(2));
        assert_eq!(lease_validity(Duration::from_millis(100)), Duration::ZERO);
    }
}
