---------------------------- MODULE VolumeGroup ----------------------------
(***************************************************************************)
(* Tether's volume-group protocol: a lock and epoch in etcd, an in-sync   *)
(* replica set (ISR), synchronous replication, failover and Delta Sync.   *)
(* The Rust model in tla/model checks the same protocol with the storage  *)
(* node's own decision functions; README.md maps one onto the other.     *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets

CONSTANTS Nodes, Writes, MaxEpoch, MaxFaults, NoNode
ASSUME NoNode \notin Nodes

VARIABLES
    up,          \* node process running
    leaseValid,  \* the node's own view: its lease deadline has not passed
    leaseAlive,  \* the store's view: the node's lease exists
    lock,        \* the node holding the volume's lock, or NoNode
    epoch,       \* the group record's epoch
    isr,         \* the group record's in-sync replica set
    masterEpoch, \* epoch a node serves as master at (0: not master)
    deposed,     \* a master that saw a newer epoch
    newest,      \* newest epoch each copy has seen (persisted)
    isrView,     \* the ISR each master last committed
    data,        \* writes durably on each copy
    net,         \* messages in flight
    inFlight,    \* write -> [epoch, master, acks]
    acked,       \* writes acknowledged to the client
    ackers,      \* <<epoch, node>> pairs that acknowledged a write
    promotions,  \* <<node, wasInIsr>> of every promotion
    staleRead,   \* a read missed an acknowledged write
    faults

vars == <<up, leaseValid, leaseAlive, lock, epoch, isr, masterEpoch, deposed,
          newest, isrView, data, net, inFlight, acked, ackers, promotions,
          staleRead, faults>>

NoWrite == [epoch |-> 0, master |-> NoNode, acks |-> {}]

Init ==
    /\ up = [n \in Nodes |-> TRUE]
    /\ leaseValid = [n \in Nodes |-> TRUE]
    /\ leaseAlive = [n \in Nodes |-> TRUE]
    /\ lock = NoNode
    /\ epoch = 0
    /\ isr = Nodes                         \* a new group: every copy is empty, so in sync
    /\ masterEpoch = [n \in Nodes |-> 0]
    /\ deposed = [n \in Nodes |-> FALSE]
    /\ newest = [n \in Nodes |-> 0]
    /\ isrView = [n \in Nodes |-> {}]
    /\ data = [n \in Nodes |-> {}]
    /\ net = {}
    /\ inFlight = [w \in Writes |-> NoWrite]
    /\ acked = {}
    /\ ackers = {}
    /\ promotions = {}
    /\ staleRead = FALSE
    /\ faults = 0

Acting(n) == up[n] /\ leaseValid[n] /\ ~deposed[n] /\ masterEpoch[n] > 0
CasHolds(n) == lock = n /\ epoch = masterEpoch[n]
Admits(seen, e) == e >= seen               \* proto::group::replica_admits

(* GroupRecord::promote: only an ISR member; epoch + 1; the ISR restarts as *)
(* the new master alone (rule 4) unless the group never served.           *)
TakeLock(n) ==
    /\ up[n] /\ leaseValid[n] /\ leaseAlive[n] /\ lock = NoNode
    /\ epoch < MaxEpoch
    /\ n \in isr
    /\ lock' = n
    /\ epoch' = epoch + 1
    /\ isr' = IF epoch = 0 THEN isr ELSE {n}
    /\ masterEpoch' = [masterEpoch EXCEPT ![n] = epoch + 1]
    /\ deposed' = [deposed EXCEPT ![n] = FALSE]
    /\ newest' = [newest EXCEPT ![n] = epoch + 1]
    /\ isrView' = [isrView EXCEPT ![n] = IF epoch = 0 THEN isr ELSE {n}]
    /\ promotions' = promotions \cup {<<n, n \in isr>>}
    /\ UNCHANGED <<up, leaseValid, leaseAlive, data, net, inFlight, acked,
                   ackers, staleRead, faults>>

ClientWrite(n, w) ==
    /\ Acting(n) /\ inFlight[w] = NoWrite
    /\ data' = [data EXCEPT ![n] = @ \cup {w}]
    /\ net' = net \cup {[type |-> "write", from |-> n, to |-> m,
                         epoch |-> masterEpoch[n], w |-> w] : m \in isrView[n] \ {n}}
    /\ inFlight' = [inFlight EXCEPT ![w] = [epoch |-> masterEpoch[n], master |-> n, acks |-> {n}]]
    /\ UNCHANGED <<up, leaseValid, leaseAlive, lock, epoch, isr, masterEpoch,
                   deposed, newest, isrView, acked, ackers, promotions, staleRead, faults>>

DeliverWrite(m) ==
    /\ m \in net /\ m.type = "write"
    /\ IF up[m.to] /\ Admits(newest[m.to], m.epoch)
       THEN /\ data' = [data EXCEPT ![m.to] = @ \cup {m.w}]
            /\ newest' = [newest EXCEPT ![m.to] = m.epoch]
            /\ net' = (net \ {m}) \cup {[type |-> "ack", from |-> m.to, to |-> m.from,
                                         epoch |-> m.epoch, w |-> m.w]}
       ELSE /\ net' = (net \ {m}) \cup
                   (IF up[m.to] THEN {[type |-> "stale", to |-> m.from, newest |-> newest[m.to]]}
                    ELSE {})
            /\ UNCHANGED <<data, newest>>
    /\ UNCHANGED <<up, leaseValid, leaseAlive, lock, epoch, isr, masterEpoch,
                   deposed, isrView, inFlight, acked, ackers, promotions, staleRead, faults>>

DeliverAck(m) ==
    /\ m \in net /\ m.type = "ack"
    /\ net' = net \ {m}
    /\ inFlight' = IF inFlight[m.w].epoch = m.epoch /\ inFlight[m.w].master = m.to
                   THEN [inFlight EXCEPT ![m.w].acks = @ \cup {m.from}]
                   ELSE inFlight
    /\ UNCHANGED <<up, leaseValid, leaseAlive, lock, epoch, isr, masterEpoch,
                   deposed, newest, isrView, data, acked, ackers, promotions, staleRead, faults>>

DeliverStale(m) ==
    /\ m \in net /\ m.type = "stale"
    /\ net' = net \ {m}
    /\ deposed' = IF masterEpoch[m.to] > 0 /\ masterEpoch[m.to] < m.newest
                  THEN [deposed EXCEPT ![m.to] = TRUE] ELSE deposed
    /\ UNCHANGED <<up, leaseValid, leaseAlive, lock, epoch, isr, masterEpoch,
                   newest, isrView, data, inFlight, acked, ackers, promotions, staleRead, faults>>

Lose(m) ==
    /\ m \in net /\ faults < MaxFaults
    /\ net' = net \ {m}
    /\ faults' = faults + 1
    /\ UNCHANGED <<up, leaseValid, leaseAlive, lock, epoch, isr, masterEpoch, deposed,
                   newest, isrView, data, inFlight, acked, ackers, promotions, staleRead>>

(* Rule 2: shrinking the ISR is a CAS on the current epoch, committed      *)
(* before the first acknowledgement without the member.                    *)
LeaveIsr(n, r) ==
    /\ Acting(n) /\ r \in isrView[n] /\ r # n
    /\ IF CasHolds(n)
       THEN /\ isr' = isr \ {r}
            /\ isrView' = [isrView EXCEPT ![n] = isr \ {r}]
            /\ UNCHANGED deposed
       ELSE /\ deposed' = [deposed EXCEPT ![n] = TRUE]
            /\ UNCHANGED <<isr, isrView>>
    /\ UNCHANGED <<up, leaseValid, leaseAlive, lock, epoch, masterEpoch, newest,
                   data, net, inFlight, acked, ackers, promotions, staleRead, faults>>

AckClient(n, w) ==
    /\ Acting(n)
    /\ inFlight[w].master = n /\ inFlight[w].epoch = masterEpoch[n]
    /\ isrView[n] \subseteq inFlight[w].acks
    /\ acked' = acked \cup {w}
    /\ ackers' = ackers \cup {<<masterEpoch[n], n>>}
    /\ UNCHANGED <<up, leaseValid, leaseAlive, lock, epoch, isr, masterEpoch, deposed,
                   newest, isrView, data, net, inFlight, promotions, staleRead, faults>>

(* Rule 3: a master answers reads only while surely master. *)
Read(n) ==
    /\ Acting(n) /\ acked # {}
    /\ staleRead' = (staleRead \/ ~(acked \subseteq data[n]))
    /\ UNCHANGED <<up, leaseValid, leaseAlive, lock, epoch, isr, masterEpoch, deposed,
                   newest, isrView, data, net, inFlight, acked, ackers, promotions, faults>>

(* Delta Sync, idealised as one step: the copy takes the master's data     *)
(* (live writes reach a syncing copy), then joins the ISR by CAS.          *)
DeltaSync(n, r) ==
    /\ Acting(n) /\ r # n /\ up[r] /\ r \notin isrView[n]
    /\ IF CasHolds(n)
       THEN /\ Admits(newest[r], masterEpoch[n])
            /\ data' = [data EXCEPT ![r] = data[n]]
            /\ newest' = [newest EXCEPT ![r] = masterEpoch[n]]
            /\ isr' = isr \cup {r}
            /\ isrView' = [isrView EXCEPT ![n] = isr \cup {r}]
            /\ inFlight' = [w \in Writes |->
                              IF inFlight[w].master = n /\ inFlight[w].epoch = masterEpoch[n]
                              THEN [inFlight[w] EXCEPT !.acks = @ \cup {r}]
                              ELSE inFlight[w]]
            /\ UNCHANGED deposed
       ELSE /\ deposed' = [deposed EXCEPT ![n] = TRUE]
            /\ UNCHANGED <<data, newest, isr, isrView, inFlight>>
    /\ UNCHANGED <<up, leaseValid, leaseAlive, lock, epoch, masterEpoch, net,
                   acked, ackers, promotions, staleRead, faults>>

Crash(n) ==
    /\ up[n] /\ faults < MaxFaults
    /\ up' = [up EXCEPT ![n] = FALSE]
    /\ leaseValid' = [leaseValid EXCEPT ![n] = FALSE]
    /\ masterEpoch' = [masterEpoch EXCEPT ![n] = 0]
    /\ faults' = faults + 1
    /\ UNCHANGED <<leaseAlive, lock, epoch, isr, deposed, newest, isrView, data,
                   net, inFlight, acked, ackers, promotions, staleRead>>

Restart(n) ==
    /\ ~up[n]
    /\ up' = [up EXCEPT ![n] = TRUE]
    /\ deposed' = [deposed EXCEPT ![n] = FALSE]
    /\ leaseValid' = [leaseValid EXCEPT ![n] = leaseAlive[n]]
    /\ UNCHANGED <<leaseAlive, lock, epoch, isr, masterEpoch, newest, isrView,
                   data, net, inFlight, acked, ackers, promotions, staleRead, faults>>

(* Partition from etcd or a pause: the node's own deadline (keep-alive send *)
(* time + TTL - margin) passes before etcd expires the lease and the lock.  *)
ExpireLease(n) ==
    /\ leaseAlive[n] /\ faults < MaxFaults
    /\ leaseAlive' = [leaseAlive EXCEPT ![n] = FALSE]
    /\ leaseValid' = [leaseValid EXCEPT ![n] = FALSE]
    /\ lock' = IF lock = n THEN NoNode ELSE lock
    /\ faults' = faults + 1
    /\ UNCHANGED <<up, epoch, isr, masterEpoch, deposed, newest, isrView, data,
                   net, inFlight, acked, ackers, promotions, staleRead>>

(* A new lease is not the lock's lease: mastership does not survive it. *)
RenewLease(n) ==
    /\ ~leaseAlive[n] /\ up[n] /\ ~leaseValid[n]
    /\ leaseAlive' = [leaseAlive EXCEPT ![n] = TRUE]
    /\ leaseValid' = [leaseValid EXCEPT ![n] = TRUE]
    /\ masterEpoch' = [masterEpoch EXCEPT ![n] = 0]
    /\ UNCHANGED <<up, lock, epoch, isr, deposed, newest, isrView, data, net,
                   inFlight, acked, ackers, promotions, staleRead, faults>>

Next ==
    \/ \E n \in Nodes : TakeLock(n) \/ Read(n) \/ Crash(n) \/ Restart(n)
                        \/ ExpireLease(n) \/ RenewLease(n)
    \/ \E n \in Nodes, w \in Writes : ClientWrite(n, w) \/ AckClient(n, w)
    \/ \E n, r \in Nodes : LeaveIsr(n, r) \/ DeltaSync(n, r)
    \/ \E m \in net : DeliverWrite(m) \/ DeliverAck(m) \/ DeliverStale(m) \/ Lose(m)

Spec == Init /\ [][Next]_vars

(***************************************************************************)
(* The invariants ARCHITECTURE.md names.                                  *)
(***************************************************************************)
NoAcknowledgedWriteLost == \A w \in acked : \A m \in isr : w \in data[m]
AtMostOneMasterAcksPerEpoch ==
    \A a, b \in ackers : a[1] = b[1] => a[2] = b[2]
OnlyIsrMembersPromoted == \A p \in promotions : p[2]
ReadsSeeAcknowledgedWrites == ~staleRead

=============================================================================
