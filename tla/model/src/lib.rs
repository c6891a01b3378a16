//! The volume-group protocol as a stateright model, checked exhaustively
//! over 3 nodes with crashes, restarts, message loss and lease expiry.
//!
//! Every decision the storage node makes comes from `tether_proto::group`,
//! the same functions `storage-node` calls: [`GroupRecord::promote`] (who
//! may take the lock, the next epoch and ISR), [`GroupRecord::without`] /
//! [`GroupRecord::with`] (ISR changes), [`replica_admits`] (fencing). The
//! model adds only what the store and the network do: a lock bound to a
//! lease, compare-and-swap on the group record, messages that may be lost.
//!
//! Lease expiry is one step that both ends the node's lease in the store
//! (releasing its lock) and ends the node's own validity. That is the
//! fencing assumption the code implements with `lease_validity`: a master
//! stops answering at a deadline measured from when it *sent* its last
//! keep-alive, before the store can expire the lease (ARCHITECTURE.md, rule 3).
//! `tla/VolumeGroup.tla` states the same protocol in TLA+.

pub mod dr;
pub mod fence;
pub mod ordering;

use std::collections::{BTreeMap, BTreeSet};

use stateright::{Model, Property};
use tether_proto::group::{replica_admits, GroupRecord};

pub type Node = usize;
pub type WriteId = u8;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum Message {
    /// A replicated write from a master at `epoch`.
    Write {
        from: Node,
        to: Node,
        epoch: u64,
        write: WriteId,
    },
    /// A replica's acknowledgement.
    Ack {
        from: Node,
        to: Node,
        epoch: u64,
        write: WriteId,
    },
    /// A replica's refusal: it has seen a newer epoch.
    Stale { to: Node, newest: u64 },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct NodeState {
    pub up: bool,
    /// The node believes its lease alive (its deadline has not passed).
    pub lease_valid: bool,
    /// Serving as master at this epoch.
    pub master_epoch: Option<u64>,
    pub deposed: bool,
    /// Newest epoch seen (persisted, survives restarts).
    pub newest_epoch: u64,
    /// Writes durably on this copy.
    pub data: BTreeSet<WriteId>,
    /// As master: the ISR it last committed (its own view, not the store's).
    pub isr_view: Vec<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct State {
    pub nodes: Vec<NodeState>,
    /// The store: lease alive per node, the lock holder, the group record.
    pub lease_alive: Vec<bool>,
    pub lock: Option<Node>,
    pub group: GroupRecord,
    pub network: BTreeSet<Message>,
    /// Writes a master has sent: by write, its epoch, master and who has acknowledged.
    pub in_flight: BTreeMap<WriteId, (u64, Node, BTreeSet<Node>)>,
    /// Writes acknowledged to the client.
    pub acked: BTreeSet<WriteId>,
    /// (epoch, node) of every acknowledgement given.
    pub ackers: BTreeSet<(u64, Node)>,
    /// Every promotion, with whether the node was in the ISR when it took the lock.
    pub promotions: Vec<(Node, bool)>,
    /// A read was answered without a write already acknowledged.
    pub stale_read: bool,
    /// Crashes, lease expiries and lost messages so far (bounded to keep
    /// the state space finite and small).
    pub faults: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Action {
    TakeLock(Node),
    ClientWrite(Node, WriteId),
    Deliver(Message),
    Lose(Message),
    LeaveIsr(Node, Node),
    AckClient(Node, WriteId),
    Read(Node),
    DeltaSync(Node, Node),
    Crash(Node),
    Restart(Node),
    ExpireLease(Node),
    RenewLease(Node),
}

/// The model: `nodes` nodes, `writes` client writes, epochs up to `max_epoch`.
pub struct VolumeGroupModel {
    pub nodes: usize,
    pub writes: u8,
    pub max_epoch: u64,
    /// Most faults (crash, lease expiry, lost message) in one behaviour.
    pub max_faults: u8,
    /// A deliberately broken variant: a master keeps acting after its lease
    /// expired in the store (no deadline of its own). The checker must find
    /// a stale read in it, which shows the properties can fail.
    pub without_lease_deadline: bool,
}

fn name(node: Node) -> String {
    format!("n{node}")
}

fn index(name: &str) -> Node {
    name[1..].parse().expect("model node names are n<index>")
}

impl VolumeGroupModel {
    /// The epoch a node acts as master at, judged by what the node itself
    /// knows: up, its lease deadline not passed, not deposed.
    fn acting_master(&self, state: &State, node: Node) -> Option<u64> {
        let n = &state.nodes[node];
        let epoch = n.master_epoch?;
        (n.up && n.lease_valid && !n.deposed).then_some(epoch)
    }

    /// A compare-and-swap on the group record by `node` at `epoch`: holds
    /// only while the store still has its lock and that epoch.
    fn cas_holds(state: &State, node: Node, epoch: u64) -> bool {
        state.lock == Some(node) && state.group.epoch == epoch
    }
}

impl Model for VolumeGroupModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let copies: Vec<String> = (0..self.nodes).map(name).collect();
        vec![State {
            nodes: (0..self.nodes)
                .map(|_| NodeState {
                    up: true,
                    lease_valid: true,
                    master_epoch: None,
                    deposed: false,
                    newest_epoch: 0,
                    data: BTreeSet::new(),
                    isr_view: vec![],
                })
                .collect(),
            lease_alive: vec![true; self.nodes],
            lock: None,
            group: GroupRecord::new(&copies),
            network: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            acked: BTreeSet::new(),
            ackers: BTreeSet::new(),
            promotions: vec![],
            stale_read: false,
            faults: 0,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for node in 0..self.nodes {
            let n = &state.nodes[node];
            if n.up
                && n.lease_valid
                && state.lease_alive[node]
                && state.lock.is_none()
                && state.group.epoch < self.max_epoch
            {
                actions.push(Action::TakeLock(node));
            }
            if let Some(epoch) = self.acting_master(state, node) {
                if !state.acked.is_empty() {
                    actions.push(Action::Read(node));
                }
                for write in 0..self.writes {
                    if !state.in_flight.contains_key(&write) {
                        actions.push(Action::ClientWrite(node, write));
                    }
                }
                for (write, (write_epoch, master, acks)) in &state.in_flight {
                    if *master == node && *write_epoch == epoch && !state.acked.contains(write) {
                        actions.push(Action::AckClient(node, *write));
                        for member in &n.isr_view {
                            let member = index(member);
                            if !acks.contains(&member) {
                                actions.push(Action::LeaveIsr(node, member));
                            }
                        }
                    }
                }
                for other in 0..self.nodes {
                    if other != node && state.nodes[other].up && !n.isr_view.contains(&name(other))
                    {
                        actions.push(Action::DeltaSync(node, other));
                    }
                }
            }
            let may_fail = state.faults < self.max_faults;
            if n.up && may_fail {
                actions.push(Action::Crash(node));
            } else if !n.up {
                actions.push(Action::Restart(node));
            }
            if state.lease_alive[node] && may_fail {
                actions.push(Action::ExpireLease(node));
            } else if !state.lease_alive[node] && n.up {
                actions.push(Action::RenewLease(node));
            }
        }
        for message in &state.network {
            actions.push(Action::Deliver(message.clone()));
            if state.faults < self.max_faults {
                actions.push(Action::Lose(message.clone()));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::TakeLock(node) => {
                let candidate = name(node);
                let in_sync = state.group.in_sync(&candidate);
                // The code's decision: refused unless in the ISR.
                let next = state.group.promote(&candidate).ok()?;
                state.promotions.push((node, in_sync));
                state.lock = Some(node);
                let n = &mut state.nodes[node];
                n.master_epoch = Some(next.epoch);
                n.deposed = false;
                n.newest_epoch = n.newest_epoch.max(next.epoch);
                n.isr_view = next.isr.clone();
                state.group = next;
            }
            Action::ClientWrite(node, write) => {
                let epoch = self.acting_master(&state, node)?;
                state.nodes[node].data.insert(write);
                for member in state.nodes[node].isr_view.clone() {
                    let to = index(&member);
                    if to != node {
                        state.network.insert(Message::Write {
                            from: node,
                            to,
                            epoch,
                            write,
                        });
                    }
                }
                state
                    .in_flight
                    .insert(write, (epoch, node, [node].into_iter().collect()));
            }
            Action::Deliver(message) => {
                state.network.remove(&message);
                match message {
                    Message::Write {
                        from,
                        to,
                        epoch,
                        write,
                    } => {
                        let n = &mut state.nodes[to];
                        if !n.up {
                            return Some(state); // a down node loses it
                        }
                        if replica_admits(n.newest_epoch, epoch) {
                            n.newest_epoch = epoch;
                            n.data.insert(write);
                            state.network.insert(Message::Ack {
                                from: to,
                                to: from,
                                epoch,
                                write,
                            });
                        } else {
                            let newest = n.newest_epoch;
                            state.network.insert(Message::Stale { to: from, newest });
                        }
                    }
                    Message::Ack {
                        from,
                        to,
                        epoch,
                        write,
                    } => {
                        if let Some((write_epoch, master, acks)) = state.in_flight.get_mut(&write) {
                            if *write_epoch == epoch && *master == to {
                                acks.insert(from);
                            }
                        }
                    }
                    Message::Stale { to, newest } => {
                        let n = &mut state.nodes[to];
                        if n.master_epoch.is_some_and(|epoch| epoch < newest) {
                            n.deposed = true;
                        }
                    }
                }
            }
            Action::Lose(message) => {
                state.network.remove(&message);
                state.faults += 1;
            }
            Action::Read(node) => {
                self.acting_master(&state, node)?;
                // Rule 3: a master answers reads only while surely master.
                if !state.acked.is_subset(&state.nodes[node].data) {
                    state.stale_read = true;
                }
            }
            Action::LeaveIsr(node, member) => {
                let epoch = self.acting_master(&state, node)?;
                if member == node {
                    return None;
                }
                if !Self::cas_holds(&state, node, epoch) {
                    state.nodes[node].deposed = true;
                    return Some(state);
                }
                state.group = state.group.without(&name(member));
                state.nodes[node].isr_view = state.group.isr.clone();
            }
            Action::AckClient(node, write) => {
                let epoch = self.acting_master(&state, node)?;
                let (_, _, acks) = state.in_flight.get(&write)?;
                // Rule 2: every member of the ISR it committed has it.
                let all = state.nodes[node]
                    .isr_view
                    .iter()
                    .all(|m| acks.contains(&index(m)));
                if !all {
                    return None;
                }
                state.acked.insert(write);
                state.ackers.insert((epoch, node));
            }
            Action::DeltaSync(node, other) => {
                let epoch = self.acting_master(&state, node)?;
                if !Self::cas_holds(&state, node, epoch) {
                    state.nodes[node].deposed = true;
                    return Some(state);
                }
                let master_data = state.nodes[node].data.clone();
                let o = &mut state.nodes[other];
                if !replica_admits(o.newest_epoch, epoch) {
                    return None;
                }
                // Idealised Delta Sync: the copy becomes the master's data
                // (writes in flight included, as live writes reach a syncing
                // copy), then joins the ISR by CAS.
                o.newest_epoch = epoch;
                o.data = master_data;
                for (write_epoch, master, acks) in state.in_flight.values_mut() {
                    if *master == node && *write_epoch == epoch {
                        acks.insert(other);
                    }
                }
                state.group = state.group.with(&name(other));
                state.nodes[node].isr_view = state.group.isr.clone();
            }
            Action::Crash(node) => {
                state.faults += 1;
                let n = &mut state.nodes[node];
                n.up = false;
                n.master_epoch = None;
                n.lease_valid = false;
            }
            Action::Restart(node) => {
                let n = &mut state.nodes[node];
                n.up = true;
                n.deposed = false;
                n.lease_valid = state.lease_alive[node];
            }
            Action::ExpireLease(node) => {
                state.faults += 1;
                // The node's own deadline passed first (rule 3), then the store's.
                state.lease_alive[node] = false;
                if !self.without_lease_deadline {
                    state.nodes[node].lease_valid = false;
                }
                if state.lock == Some(node) {
                    state.lock = None;
                }
            }
            Action::RenewLease(node) => {
                if state.nodes[node].lease_valid {
                    return None;
                }
                state.lease_alive[node] = true;
                let n = &mut state.nodes[node];
                n.lease_valid = true;
                // A new lease is not the lock's lease: mastership does not survive it.
                n.master_epoch = None;
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            // Every acknowledged write is on every ISR member, so whoever is
            // promoted next (only ISR members are) has it.
            Property::always("no acknowledged write lost", |_, state: &State| {
                state.acked.iter().all(|write| {
                    state
                        .group
                        .isr
                        .iter()
                        .all(|member| state.nodes[index(member)].data.contains(write))
                })
            }),
            Property::always(
                "at most one master acknowledges per epoch",
                |_, state: &State| {
                    let epochs: Vec<u64> = state.ackers.iter().map(|(epoch, _)| *epoch).collect();
                    let unique: BTreeSet<u64> = epochs.iter().copied().collect();
                    unique.len() == epochs.len()
                },
            ),
            Property::always("only ISR members are promoted", |_, state: &State| {
                state.promotions.iter().all(|(_, in_sync)| *in_sync)
            }),
            Property::always("reads see every acknowledged write", |_, state: &State| {
                !state.stale_read
            }),
            // The model reaches failover: a write acknowledged after a promotion.
            Property::sometimes(
                "a write is acknowledged after failover",
                |_, state: &State| state.ackers.iter().any(|(epoch, _)| *epoch >= 2),
            ),
        ]
    }

    fn within_boundary(&self, state: &State) -> bool {
        state.group.epoch <= self.max_epoch
    }
}
