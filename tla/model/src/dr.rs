//! DR between two datacentres, modelled before it is built: one volume,
//! a primary side A and a secondary side B, each with its own generation
//! (recorded in its own registry). Clients write on the side that may
//! serve; the primary ships batches (each its whole content as of one cut,
//! a crash-consistent point) over a link that loses and reorders; the
//! secondary applies a batch atomically; promotes are planned (drain, last
//! batch, acknowledgement, then the new generation on both sides) or
//! forced (the secondary takes the next generation at its last point; the
//! old primary learns it when the link returns, and is fenced).
//!
//! The decisions are `tether_proto::dr`'s: `may_serve`, `admit_batch`,
//! `may_complete_planned_promote`, `on_newer_generation`. The broken
//! variant completes a planned promote without waiting for the last
//! acknowledgement; the checker must find a lost write in it.

use std::collections::BTreeSet;

use stateright::{Model, Property};
use tether_proto::dr::{
    admit_batch, may_complete_planned_promote, may_serve, on_newer_generation, BatchVerdict, DrRole,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Message {
    /// To the other side: a batch of `generation`, the sender's content.
    Batch {
        to: usize,
        generation: u64,
        content: Vec<u8>,
    },
    /// The secondary applied (or had) the first `point` writes.
    Ack {
        to: usize,
        generation: u64,
        point: u64,
    },
    /// Generation `generation` exists.
    Generation { to: usize, generation: u64 },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Side {
    pub role: DrRole,
    pub generation: u64,
    pub newest_known: u64,
    pub content: Vec<u8>,
    /// Draining for a planned promote: writes refused.
    pub draining: bool,
    /// The newest point the other side acknowledged, this generation.
    pub acknowledged: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct DrState {
    pub sides: [Side; 2],
    pub network: BTreeSet<Message>,
    pub written: u8,
    pub losses: u8,
    pub promoted: bool,
    /// Writes acknowledged to clients, by (generation, side).
    pub acknowledged: BTreeSet<(u64, usize, u8)>,
    /// Set when a planned promote left an acknowledged write behind.
    pub lost_in_planned_promote: bool,
    /// Set when a side answered I/O while another side of the same
    /// generation could too.
    pub two_writers: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum DrAction {
    Write(usize),
    Ship(usize),
    Deliver(Message),
    Lose(Message),
    StartPlannedPromote,
    CompletePlannedPromote,
    ForcedPromote,
}

pub struct DrModel {
    pub writes: u8,
    pub max_losses: u8,
    /// The broken variant: complete a planned promote without the last
    /// acknowledgement.
    pub without_final_ack: bool,
}

const A: usize = 0;
const B: usize = 1;

fn serves(side: &Side) -> bool {
    may_serve(side.role, side.generation, side.newest_known, side.draining)
}

impl Model for DrModel {
    type State = DrState;
    type Action = DrAction;

    fn init_states(&self) -> Vec<DrState> {
        let side = |role| Side {
            role,
            generation: 1,
            newest_known: 1,
            content: vec![],
            draining: false,
            acknowledged: 0,
        };
        vec![DrState {
            sides: [side(DrRole::Primary), side(DrRole::Secondary)],
            network: BTreeSet::new(),
            written: 0,
            losses: 0,
            promoted: false,
            acknowledged: BTreeSet::new(),
            lost_in_planned_promote: false,
            two_writers: false,
        }]
    }

    fn actions(&self, state: &DrState, actions: &mut Vec<DrAction>) {
        for index in [A, B] {
            let side = &state.sides[index];
            if serves(side) && state.written < self.writes {
                actions.push(DrAction::Write(index));
            }
            let shipped = state.network.iter().any(|message| {
                matches!(message, Message::Batch { content, .. } if *content == side.content)
            });
            if side.role == DrRole::Primary
                && !shipped
                && (side.content.len() as u64) > side.acknowledged
            {
                actions.push(DrAction::Ship(index));
            }
        }
        for message in &state.network {
            actions.push(DrAction::Deliver(message.clone()));
            if state.losses < self.max_losses {
                actions.push(DrAction::Lose(message.clone()));
            }
        }
        if !state.promoted {
            if !state.sides[A].draining && state.sides[A].role == DrRole::Primary {
                actions.push(DrAction::StartPlannedPromote);
            }
            if state.sides[A].draining {
                actions.push(DrAction::CompletePlannedPromote);
            }
            actions.push(DrAction::ForcedPromote);
        }
    }

    fn next_state(&self, last: &DrState, action: DrAction) -> Option<DrState> {
        let mut state = last.clone();
        match action {
            DrAction::Write(index) => {
                state.written += 1;
                let write = state.written;
                let side = &mut state.sides[index];
                side.content.push(write);
                let generation = side.generation;
                state.acknowledged.insert((generation, index, write));
                let other = &state.sides[1 - index];
                if serves(other) && other.generation == generation {
                    state.two_writers = true;
                }
            }
            DrAction::Ship(index) => {
                let side = &state.sides[index];
                state.network.insert(Message::Batch {
                    to: 1 - index,
                    generation: side.generation,
                    content: side.content.clone(),
                });
            }
            DrAction::Lose(message) => {
                state.network.remove(&message);
                state.losses += 1;
            }
            DrAction::Deliver(message) => {
                state.network.remove(&message);
                match message {
                    Message::Batch {
                        to,
                        generation,
                        content,
                    } => {
                        let side = &mut state.sides[to];
                        let verdict = admit_batch(
                            side.role,
                            side.generation,
                            side.content.len() as u64,
                            generation,
                            content.len() as u64,
                        );
                        match verdict {
                            BatchVerdict::Apply | BatchVerdict::Duplicate => {
                                if verdict == BatchVerdict::Apply {
                                    side.content = content;
                                }
                                let point = side.content.len() as u64;
                                state.network.insert(Message::Ack {
                                    to: 1 - to,
                                    generation,
                                    point,
                                });
                            }
                            BatchVerdict::Stale => {
                                let newest = side.generation.max(side.newest_known);
                                state.network.insert(Message::Generation {
                                    to: 1 - to,
                                    generation: newest,
                                });
                            }
                        }
                    }
                    Message::Ack {
                        to,
                        generation,
                        point,
                    } => {
                        let side = &mut state.sides[to];
                        if generation == side.generation {
                            side.acknowledged = side.acknowledged.max(point);
                        }
                    }
                    Message::Generation { to, generation } => {
                        let side = &mut state.sides[to];
                        side.role = on_newer_generation(side.role, side.generation, generation);
                        side.newest_known = side.newest_known.max(generation);
                    }
                }
            }
            DrAction::StartPlannedPromote => {
                state.sides[A].draining = true;
            }
            DrAction::CompletePlannedPromote => {
                let drained = state.sides[A].content.len() as u64;
                if !self.without_final_ack
                    && !may_complete_planned_promote(state.sides[A].acknowledged, drained)
                {
                    return None;
                }
                if state.sides[B].content != state.sides[A].content {
                    state.lost_in_planned_promote = true;
                }
                let next = state.sides[A].generation + 1;
                state.promoted = true;
                state.sides[B].role = DrRole::Primary;
                state.sides[B].generation = next;
                state.sides[B].newest_known = next;
                state.sides[B].acknowledged = 0;
                state.sides[A].role = DrRole::Secondary;
                state.sides[A].generation = next;
                state.sides[A].newest_known = next;
                state.sides[A].draining = false;
                state.sides[A].acknowledged = 0;
            }
            DrAction::ForcedPromote => {
                let next = state.sides[B].generation + 1;
                state.promoted = true;
                state.sides[B].role = DrRole::Primary;
                state.sides[B].generation = next;
                state.sides[B].newest_known = next;
                state.sides[B].acknowledged = 0;
                state.network.insert(Message::Generation {
                    to: A,
                    generation: next,
                });
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "at most one side serves per generation",
                |_, state: &DrState| !state.two_writers,
            ),
            Property::always(
                "the secondary is a prefix of the primary",
                |_, state: &DrState| {
                    let [a, b] = &state.sides;
                    let pairs = [(a, b), (b, a)];
                    pairs.iter().all(|(primary, secondary)| {
                        !(primary.role == DrRole::Primary
                            && secondary.role == DrRole::Secondary
                            && primary.generation == secondary.generation)
                            || primary.content.starts_with(&secondary.content)
                    })
                },
            ),
            Property::always(
                "a planned promote loses no acknowledged write",
                |_, state: &DrState| !state.lost_in_planned_promote,
            ),
            Property::always(
                "a fenced side learnt of a newer generation",
                |_, state: &DrState| {
                    state.sides.iter().all(|side| {
                        side.role != DrRole::Fenced || side.newest_known > side.generation
                    })
                },
            ),
            Property::sometimes(
                "a planned promote completes with every write",
                |model: &Self, state: &DrState| {
                    state.promoted
                        && state.sides[B].role == DrRole::Primary
                        && state.sides[A].role == DrRole::Secondary
                        && state.written == model.writes
                },
            ),
            Property::sometimes(
                "a forced promote fences the old primary",
                |_, state: &DrState| state.sides[A].role == DrRole::Fenced,
            ),
        ]
    }
}
