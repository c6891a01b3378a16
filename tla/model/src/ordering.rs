//! Copies agree: overlapping writes in flight, Delta Sync's copy of the same
//! chunk (rule 5) and a presenting node's resend of an unanswered write
//! (rule 6), over every interleaving of one master and two replicas.
//!
//! One block. The client's writes all overlap; write `v` stores the value
//! `v`. The master applies a write to its own copy and sends it to both
//! replicas; a replica applies frames in whatever order they arrive (the
//! network is a set, as a stream's frames run concurrently on a replica).
//! Replica 0 is in the ISR; replica 1 is under Delta Sync: it receives every
//! live write, and once the master copies the block to it (reading its own
//! value, sending it on).
//!
//! The rule under check is storage-node's `WriteOrder`: a write, a resend
//! or a chunk copy is issued only when no earlier overlapping one is still
//! unanswered by a copy. The broken variant issues at once; the checker must
//! find copies that disagree in it, which shows the property can fail.

use std::collections::{BTreeMap, BTreeSet};

use stateright::{Model, Property};

const REPLICAS: usize = 2;
/// The replica Delta Sync brings back (it also receives live writes).
const SYNCING: usize = 1;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Frame {
    pub to: usize,
    /// Which issue (write, resend or copy) the answer completes.
    pub issue: u8,
    pub value: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct OrderState {
    pub master: u8,
    pub replicas: [u8; REPLICAS],
    pub network: BTreeSet<Frame>,
    /// Issues not yet answered by every copy they were sent to.
    pub unanswered: BTreeMap<u8, BTreeSet<usize>>,
    pub next_issue: u8,
    /// Client writes issued (each value once), and those resent once.
    pub written: BTreeSet<u8>,
    pub resent: BTreeSet<u8>,
    pub copied: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum OrderAction {
    Write(u8),
    /// A presenting node sends an unanswered write again (same value).
    Resend(u8),
    /// Delta Sync copies the block to the syncing replica.
    CopyChunk,
    Deliver(Frame),
}

pub struct WriteOrderModel {
    /// Client writes, values 1..=writes.
    pub writes: u8,
    /// The broken variant: issue without waiting for earlier overlapping ones.
    pub without_write_order: bool,
}

impl WriteOrderModel {
    fn may_issue(&self, state: &OrderState) -> bool {
        self.without_write_order || state.unanswered.is_empty()
    }

    fn issue(state: &mut OrderState, value: u8, to: &[usize]) {
        let issue = state.next_issue;
        state.next_issue += 1;
        for &replica in to {
            state.network.insert(Frame {
                to: replica,
                issue,
                value,
            });
        }
        state.unanswered.insert(issue, to.iter().copied().collect());
    }
}

impl Model for WriteOrderModel {
    type State = OrderState;
    type Action = OrderAction;

    fn init_states(&self) -> Vec<OrderState> {
        vec![OrderState {
            master: 0,
            replicas: [0; REPLICAS],
            network: BTreeSet::new(),
            unanswered: BTreeMap::new(),
            next_issue: 0,
            written: BTreeSet::new(),
            resent: BTreeSet::new(),
            copied: false,
        }]
    }

    fn actions(&self, state: &OrderState, actions: &mut Vec<OrderAction>) {
        for frame in &state.network {
            actions.push(OrderAction::Deliver(frame.clone()));
        }
        if !self.may_issue(state) {
            return;
        }
        for value in 1..=self.writes {
            if !state.written.contains(&value) {
                actions.push(OrderAction::Write(value));
            } else if !state.resent.contains(&value) {
                actions.push(OrderAction::Resend(value));
            }
        }
        if !state.copied {
            actions.push(OrderAction::CopyChunk);
        }
    }

    fn next_state(&self, last: &OrderState, action: OrderAction) -> Option<OrderState> {
        let mut state = last.clone();
        match action {
            OrderAction::Write(value) | OrderAction::Resend(value) => {
                if state.written.contains(&value) {
                    state.resent.insert(value);
                } else {
                    state.written.insert(value);
                }
                state.master = value;
                Self::issue(&mut state, value, &[0, SYNCING]);
            }
            OrderAction::CopyChunk => {
                state.copied = true;
                let value = state.master;
                Self::issue(&mut state, value, &[SYNCING]);
            }
            OrderAction::Deliver(frame) => {
                state.network.remove(&frame);
                state.replicas[frame.to] = frame.value;
                if let Some(waiting) = state.unanswered.get_mut(&frame.issue) {
                    waiting.remove(&frame.to);
                    if waiting.is_empty() {
                        state.unanswered.remove(&frame.issue);
                    }
                }
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "copies agree once nothing is in flight",
                |_, state: &OrderState| {
                    !(state.network.is_empty() && state.unanswered.is_empty())
                        || state.replicas.iter().all(|value| *value == state.master)
                },
            ),
            Property::sometimes(
                "every write, resend and copy happens",
                |model: &Self, state: &OrderState| {
                    state.written.len() == model.writes as usize
                        && state.resent.len() == model.writes as usize
                        && state.copied
                        && state.network.is_empty()
                },
            ),
        ]
    }
}
