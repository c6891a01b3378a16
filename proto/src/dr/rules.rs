//! The DR rules both sides and the model checker (`tla/model`) share.

use serde::{Deserialize, Serialize};

/// A side's part in one volume's DR link, as its registry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrRole {
    /// Serves the volume's clients and ships batches.
    Primary,
    /// Applies batches; serves no client I/O.
    Secondary,
    /// Was primary and learnt of a newer generation: refuses I/O until
    /// failback makes it the secondary.
    Fenced,
}

/// Whether a side may answer client I/O: it is the primary, not draining
/// for a planned promote, and no newer generation is known to it.
pub fn may_serve(role: DrRole, generation: u64, newest_known: u64, draining: bool) -> bool {
    role == DrRole::Primary && !draining && generation >= newest_known
}

/// What a side does with a batch (a crash-consistent point: the first
/// `point` writes of the primary's stream) of generation `batch_generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchVerdict {
    /// Apply it atomically and acknowledge its point.
    Apply,
    /// Already applied (a resend): acknowledge again.
    Duplicate,
    /// From an older generation, or this side is not a secondary: refuse,
    /// naming this side's generation, so the sender learns it is stale.
    Stale,
}

pub fn admit_batch(
    role: DrRole,
    generation: u64,
    applied_point: u64,
    batch_generation: u64,
    batch_point: u64,
) -> BatchVerdict {
    if role != DrRole::Secondary || batch_generation != generation {
        return BatchVerdict::Stale;
    }
    if batch_point <= applied_point {
        BatchVerdict::Duplicate
    } else {
        BatchVerdict::Apply
    }
}

/// A planned promote completes only once the secondary acknowledged the
/// drained primary's last point: every acknowledged write is on it.
pub fn may_complete_planned_promote(acknowledged_point: u64, drained_point: u64) -> bool {
    acknowledged_point == drained_point
}

/// What a side does when it learns generation `newer` exists (a peer says
/// so): a primary of an older generation is fenced.
pub fn on_newer_generation(role: DrRole, generation: u64, newer: u64) -> DrRole {
    if newer > generation && role == DrRole::Primary {
        DrRole::Fenced
    } else {
        role
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_apply_only_on_a_secondary_of_their_generation() {
        use BatchVerdict::*;
        assert_eq!(admit_batch(DrRole::Secondary, 2, 5, 2, 7), Apply);
        assert_eq!(admit_batch(DrRole::Secondary, 2, 7, 2, 7), Duplicate);
        assert_eq!(admit_batch(DrRole::Secondary, 2, 0, 1, 9), Stale);
        assert_eq!(admit_batch(DrRole::Primary, 2, 0, 2, 9), Stale);
        assert_eq!(admit_batch(DrRole::Fenced, 2, 0, 2, 9), Stale);
        assert!(may_serve(DrRole::Primary, 2, 2, false));
        assert!(!may_serve(DrRole::Primary, 2, 3, false));
        assert!(!may_serve(DrRole::Primary, 2, 2, true));
        assert_eq!(on_newer_generation(DrRole::Primary, 1, 2), DrRole::Fenced);
        assert_eq!(on_newer_generation(DrRole::Primary, 2, 2), DrRole::Primary);
        assert_eq!(
            on_newer_generation(DrRole::Secondary, 1, 2),
            DrRole::Secondary
        );
    }
}
