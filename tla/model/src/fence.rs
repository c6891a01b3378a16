//! A deposed master's late write (`storage-node`'s `group/fence.rs`): a
//! master admits a write, then waits to issue it on its own copy (behind an
//! overlapping write, or paused past its lease). Meanwhile a replica takes
//! over at the next epoch, clients write through it, and its Delta Sync
//! brings the old master's copy back into the ISR. The property: **a copy
//! in the ISR holds what the master holds once nothing is in flight**.
//!
//! One block; write `v` stores `v`. Node 0 is the old master (epoch 1) with
//! its one queued write (value 1); node 1 takes over at epoch 2 and writes
//! values 2..=writes. Every write to a copy passes the copy's fence: the
//! check is `tether_proto::group::replica_admits(newest seen, epoch)`, made
//! when the write is issued and held until it landed, and raising the
//! newest epoch waits for writes in flight (modelled by issuing and landing
//! in one step). The broken variant checks only when the write is admitted,
//! as the code did before the fence; the checker must find the old master's
//! write landing on its copy after the sync took the copy back.

use stateright::{Model, Property};
use tether_proto::group::replica_admits;

const OLD: usize = 0;
const NEW: usize = 1;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct FenceState {
    /// Each copy's block.
    pub block: [u8; 2],
    /// Each copy's newest epoch seen (its fence).
    pub newest: [u64; 2],
    /// The old master's write: admitted at epoch 1, not yet on its copy.
    pub queued: bool,
    /// Node 1 holds the lock at epoch 2.
    pub took_over: bool,
    /// The old master's copy is in node 1's ISR (after Delta Sync).
    pub old_in_isr: bool,
    /// Node 1's writes so far (values 2..).
    pub written: u8,
    /// The old master's queued write was refused by its copy's fence.
    pub refused: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum FenceAction {
    /// The old master issues its queued write on its own copy.
    IssueQueued,
    /// Node 1 takes the lock at epoch 2 (the old master's lease is gone).
    TakeOver,
    /// A client write through node 1, to every ISR copy.
    Write(u8),
    /// Node 1's Delta Sync of the old master's copy: its stream raises the
    /// copy's fence to epoch 2, copies the block, the copy joins the ISR.
    SyncOld,
}

pub struct FenceModel {
    /// Values node 1 writes: 2..=writes.
    pub writes: u8,
    /// The broken variant: the epoch checked when the write was admitted
    /// only, not by the copy's fence when it is issued.
    pub without_fence: bool,
}

impl Model for FenceModel {
    type State = FenceState;
    type Action = FenceAction;

    fn init_states(&self) -> Vec<FenceState> {
        vec![FenceState {
            block: [0; 2],
            newest: [1; 2],
            queued: true,
            took_over: false,
            old_in_isr: false,
            written: 1,
            refused: false,
        }]
    }

    fn actions(&self, state: &FenceState, actions: &mut Vec<FenceAction>) {
        if state.queued {
            actions.push(FenceAction::IssueQueued);
        }
        if !state.took_over {
            actions.push(FenceAction::TakeOver);
            return;
        }
        if state.written < self.writes {
            actions.push(FenceAction::Write(state.written + 1));
        }
        if !state.old_in_isr {
            actions.push(FenceAction::SyncOld);
        }
    }

    fn next_state(&self, last: &FenceState, action: FenceAction) -> Option<FenceState> {
        let mut state = last.clone();
        match action {
            FenceAction::IssueQueued => {
                state.queued = false;
                if self.without_fence || replica_admits(state.newest[OLD], 1) {
                    state.block[OLD] = 1;
                } else {
                    state.refused = true;
                }
            }
            FenceAction::TakeOver => {
                // The new master's own fence first (`take_over`), then the lock.
                state.newest[NEW] = 2;
                state.took_over = true;
            }
            FenceAction::Write(value) => {
                state.written = value;
                state.block[NEW] = value;
                if state.old_in_isr && replica_admits(state.newest[OLD], 2) {
                    state.block[OLD] = value;
                }
            }
            FenceAction::SyncOld => {
                state.newest[OLD] = 2;
                state.block[OLD] = state.block[NEW];
                state.old_in_isr = true;
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "an ISR copy holds the master's block once nothing is in flight",
                |_, state: &FenceState| {
                    state.queued || !state.old_in_isr || state.block[OLD] == state.block[NEW]
                },
            ),
            Property::sometimes(
                "the old master's write is refused after the takeover",
                |_, state: &FenceState| state.refused && state.old_in_isr,
            ),
        ]
    }
}
