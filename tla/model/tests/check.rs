//! Exhaustive model check of the volume-group protocol (runs in CI with the
//! rest of `cargo test`).

use stateright::{Checker, Model};
use tether_model::VolumeGroupModel;

fn check(writes: u8, max_faults: u8) {
    let checker = VolumeGroupModel {
        nodes: 3,
        writes,
        max_epoch: 3,
        max_faults,
        without_lease_deadline: false,
    }
    .checker()
    .spawn_bfs()
    .join();
    println!(
        "model check, 3 nodes, {writes} writes, {max_faults} faults, epochs to 3: {} states ({} unique), max depth {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth()
    );
    checker.assert_properties();
}

#[test]
fn the_protocol_keeps_its_invariants_through_two_faults() {
    check(1, 2);
}

#[test]
fn the_protocol_keeps_its_invariants_with_two_writes_in_flight() {
    check(2, 1);
}

#[test]
fn without_the_lease_deadline_the_checker_finds_a_stale_read() {
    let checker = VolumeGroupModel {
        nodes: 3,
        writes: 1,
        max_epoch: 2,
        max_faults: 1,
        without_lease_deadline: true,
    }
    .checker()
    .spawn_bfs()
    .join();
    let discovery = checker.discovery("reads see every acknowledged write");
    assert!(
        discovery.is_some(),
        "a master acting past its lease must be able to answer a stale read"
    );
    println!("counterexample: {:?}", discovery.unwrap().into_actions());
}

#[test]
fn overlapping_writes_copies_and_resends_leave_every_copy_equal() {
    let checker = tether_model::ordering::WriteOrderModel {
        writes: 3,
        without_write_order: false,
    }
    .checker()
    .spawn_bfs()
    .join();
    println!(
        "write-order model, 3 overlapping writes, a resend each, a chunk copy: {} states ({} unique)",
        checker.state_count(),
        checker.unique_state_count()
    );
    checker.assert_properties();
}

#[test]
fn without_the_write_order_the_checker_finds_copies_that_disagree() {
    let checker = tether_model::ordering::WriteOrderModel {
        writes: 2,
        without_write_order: true,
    }
    .checker()
    .spawn_bfs()
    .join();
    let discovery = checker.discovery("copies agree once nothing is in flight");
    assert!(
        discovery.is_some(),
        "overlapping writes issued at once must be able to leave copies different"
    );
    println!("counterexample: {:?}", discovery.unwrap().into_actions());
}

#[test]
fn dr_promotes_keep_one_writer_per_generation_and_lose_nothing_when_planned() {
    let checker = tether_model::dr::DrModel {
        writes: 3,
        max_losses: 2,
        without_final_ack: false,
    }
    .checker()
    .spawn_bfs()
    .join();
    println!(
        "DR model, 3 writes, 2 lost messages, planned and forced promotes: {} states ({} unique)",
        checker.state_count(),
        checker.unique_state_count()
    );
    checker.assert_properties();
}

#[test]
fn without_the_final_acknowledgement_a_planned_promote_loses_a_write() {
    let checker = tether_model::dr::DrModel {
        writes: 2,
        max_losses: 0,
        without_final_ack: true,
    }
    .checker()
    .spawn_bfs()
    .join();
    let discovery = checker.discovery("a planned promote loses no acknowledged write");
    assert!(
        discovery.is_some(),
        "promoting before the last batch is acknowledged must be able to lose a write"
    );
    println!("counterexample: {:?}", discovery.unwrap().into_actions());
}

#[test]
fn a_write_the_old_master_admitted_is_refused_by_its_copys_fence_after_the_takeover() {
    let checker = tether_model::fence::FenceModel {
        writes: 3,
        without_fence: false,
    }
    .checker()
    .spawn_bfs()
    .join();
    println!(
        "fence model, a queued write of the old master, a takeover, 2 writes, a Delta Sync: {} states ({} unique)",
        checker.state_count(),
        checker.unique_state_count()
    );
    checker.assert_properties();
}

#[test]
fn without_the_fence_the_old_masters_queued_write_lands_on_a_copy_back_in_sync() {
    let checker = tether_model::fence::FenceModel {
        writes: 3,
        without_fence: true,
    }
    .checker()
    .spawn_bfs()
    .join();
    let discovery =
        checker.discovery("an ISR copy holds the master's block once nothing is in flight");
    assert!(
        discovery.is_some(),
        "a write checked only when admitted must be able to land after the sync"
    );
    println!("counterexample: {:?}", discovery.unwrap().into_actions());
}
