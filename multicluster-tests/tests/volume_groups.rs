//! Volume groups with real processes, a real etcd and real NBD clients:
//! failover under a verifying workload, Delta Sync that copies only what
//! changed, fencing of a paused master, and a loop of random faults.
//!
//! The NBD client always attaches through a node that holds no copy (the
//! "presenting" node), so killing any copy's node is a pause for the client,
//! not a broken connection.

use std::time::{Duration, Instant};

use multicluster_tests::clients::{finish, fio_verify, qemu_img_convert, qemu_io};
use multicluster_tests::harness::{
    closed_with_at_most_an_alert, copies_of, refused, replicas_of, tls_connect, DevFederation,
};
use serde_json::Value;
use tether_tls::{Identity, Role};

const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until the master reports a finished Delta Sync of `node`'s copy
/// that started after `since_ms`; returns it.
fn finished_sync(federation: &DevFederation, name: &str, node: &str, since_ms: u64) -> Value {
    let this = |sync: &Value| {
        sync["node"] == node && sync["started_unix_ms"].as_u64().unwrap_or(0) >= since_ms
    };
    let view = federation.wait_volume(name, SYNC_TIMEOUT, "Delta Sync reported done", |view| {
        view["syncs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|sync| this(sync) && sync["phase"] == "done")
    });
    view["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sync| this(sync))
        .unwrap()
        .clone()
}

fn metric(federation: &DevFederation, node: &str, name: &str) -> f64 {
    let addr = federation.node(node)["metrics"]
        .as_str()
        .unwrap()
        .to_string();
    let text = multicluster_tests::clients::http_get(&addr, "/metrics").unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn kill_9_of_the_master_under_verifying_writes_fails_over_without_losing_a_write() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let (view, uri, presenter) = federation.create_presented("ha", "256MiB", 2);
    let master = view["master"].as_str().unwrap().to_string();
    let replica = replicas_of(&view)[0].clone();
    let epoch = view["epoch"].as_u64().unwrap();
    // Acknowledged and flushed before the fault, outside fio's range.
    qemu_io(&uri, &["write -P 0x5a 0 32M", "flush"]).unwrap();

    let mut fio = fio_verify(&uri, "64M", "128M", 7);
    // Let the workload run, then kill the master under it.
    federation.wait_volume("ha", Duration::from_secs(30), "writes under way", |view| {
        view["allocated_bytes"].as_u64().unwrap_or(0) > (32 << 20) + (16 << 20)
    });
    let killed_at = Instant::now();
    federation.kill_node(&master);
    assert!(
        fio.try_wait().unwrap().is_none(),
        "the workload was still running at the kill"
    );
    let after = federation.wait_volume("ha", Duration::from_secs(30), "failover", |view| {
        view["master"] == replica.as_str()
            && view["copies"]
                .as_array()
                .unwrap()
                .iter()
                .any(|copy| copy["node"] == replica.as_str() && copy["state"] == "in-sync")
    });
    let failover = killed_at.elapsed();
    println!("failover: {replica} is master {failover:?} after kill -9 of {master}");
    assert!(after["epoch"].as_u64().unwrap() > epoch, "{after}");
    // fio writes every block once, then reads every one back and checks it:
    // success means no acknowledged write was lost and the client saw no error.
    finish(fio, "fio verify across the failover");
    qemu_io(&uri, &["read -P 0x5a 0 32M"]).unwrap();
    let paused = metric(
        &federation,
        &presenter,
        "tether_presenter_pause_seconds_count",
    );
    assert!(paused >= 1.0, "the presenter waited out the failover");
    federation.assert_copies_identical("ha");
}

#[test]
fn a_replica_that_comes_back_copies_only_the_chunks_that_changed() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let (view, uri, _) = federation.create_presented("catchup", "256MiB", 2);
    let master = view["master"].as_str().unwrap().to_string();
    let replica = replicas_of(&view)[0].clone();
    qemu_io(&uri, &["write -P 0x11 0 48M", "flush"]).unwrap();
    federation.wait_in_sync("catchup", SYNC_TIMEOUT);

    let cmdline = federation.kill_node(&replica);
    // Five writes in five different 256 KiB chunks while the replica is away
    // (the first waits out the replica timeout, then the replica leaves the ISR).
    let changed = ["0", "3M", "10M", "100M", "255M"];
    let writes: Vec<String> = changed
        .iter()
        .map(|offset| format!("write -P 0x77 {offset} 4k"))
        .chain(["flush".to_string()])
        .collect();
    let write_refs: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(&uri, &write_refs).unwrap();
    let degraded = federation
        .tether_json(&["volume", "get", "catchup"])
        .unwrap();
    let copy_state = |view: &Value, node: &str| {
        view["copies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|copy| copy["node"] == node)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(copy_state(&degraded, &replica), "faulted", "{degraded}");

    let restarted = now_ms();
    federation.start_node(&replica, &cmdline);
    // The CLI follows the sync with a progress bar and returns once all copies are in sync.
    let watched = federation
        .tether_ok(&["volume", "get", "catchup", "--watch"])
        .unwrap();
    assert!(watched.contains("all 2 copies in sync"), "{watched}");
    federation.wait_in_sync("catchup", SYNC_TIMEOUT);
    let sync = finished_sync(&federation, "catchup", &replica, restarted);
    println!("delta sync: {sync}");
    assert_eq!(sync["phase"], "done");
    assert_eq!(sync["chunks_total"], 1024);
    assert_eq!(sync["chunks_differing"], changed.len(), "{sync}");
    assert_eq!(sync["chunks_copied"], changed.len(), "{sync}");
    assert_eq!(sync["bytes_copied"], changed.len() as u64 * 256 * 1024);
    // The tree walk fetched a few hashes per changed chunk, not the whole list.
    assert!(sync["hashes_fetched"].as_u64().unwrap() < 200, "{sync}");

    // The replica now has everything: make it the master and read through it.
    federation.kill_node(&master);
    federation.wait_volume("catchup", Duration::from_secs(30), "failover", |view| {
        view["master"] == replica.as_str()
    });
    let mut reads = vec!["read -P 0x11 8M 2M".to_string()];
    reads.extend(
        changed
            .iter()
            .map(|offset| format!("read -P 0x77 {offset} 4k")),
    );
    let read_refs: Vec<&str> = reads.iter().map(String::as_str).collect();
    qemu_io(&uri, &read_refs).unwrap();
    federation.assert_copies_identical("catchup");
}

#[test]
fn a_paused_master_is_fenced_and_its_late_writes_do_not_win() {
    let federation = DevFederation::builder().nodes(3).start().unwrap();
    let (view, uri, _) = federation.create_presented("fence", "64MiB", 2);
    let master = view["master"].as_str().unwrap().to_string();
    let replica = replicas_of(&view)[0].clone();
    qemu_io(&uri, &["write -P 0x11 0 1M", "flush"]).unwrap();

    federation.pause_node(&master);
    // This write reaches the paused master's socket first; the presenter
    // sends it again to the new master once the old one's lease is gone.
    qemu_io(&uri, &["write -P 0x22 0 1M", "flush"]).unwrap();
    let view = federation.wait_volume("fence", Duration::from_secs(30), "failover", |view| {
        view["master"] == replica.as_str()
    });
    qemu_io(&uri, &["write -P 0x33 0 1M", "flush"]).unwrap();
    federation.resume_node(&master);
    // The old master wakes with queued frames from its old epoch: the
    // replica refuses them and the old master steps down.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !federation.node_log(&master).contains("no longer master") {
        assert!(Instant::now() < deadline, "old master never stepped down");
        std::thread::sleep(Duration::from_millis(100));
    }
    qemu_io(&uri, &["read -P 0x33 0 1M"]).unwrap();
    // The old master's copy is reconciled against the new truth (rule 4) ...
    let synced = federation.wait_in_sync("fence", SYNC_TIMEOUT);
    assert!(synced["epoch"].as_u64() > view["epoch"].as_u64().map(|e| e - 1));
    // ... so once it is master again, the client still reads the newest data.
    federation.kill_node(&replica);
    federation.wait_volume("fence", Duration::from_secs(30), "failback", |view| {
        view["master"] == master.as_str()
    });
    qemu_io(&uri, &["read -P 0x33 0 1M"]).unwrap();
    federation.assert_copies_identical("fence");
}

/// The first 64 KiB of `node`'s copy of `volume`, read from its data file.
fn head_of_copy(federation: &DevFederation, node: &str, volume: &str) -> Vec<u8> {
    use std::io::Read;
    let data = std::path::Path::new(federation.node(node)["data_dir"].as_str().unwrap())
        .join("volumes")
        .join(volume)
        .join("data");
    let mut head = vec![0; 64 << 10];
    std::fs::File::open(data)
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    head
}

/// The byte `head` is filled with, if it is one pattern.
fn pattern_of(head: &[u8]) -> Option<u8> {
    head.iter().all(|byte| *byte == head[0]).then_some(head[0])
}

/// A master admits a write, then must wait to issue it (an overlapping
/// write ahead of it waits for a replica that does not answer) and loses
/// its lease meanwhile. Its successor brings the old master's copy back
/// with Delta Sync. The queued write must never land on that copy
/// afterwards: the copy is in sync again and would silently differ.
#[test]
fn a_write_the_old_master_admitted_never_lands_after_its_successor_took_over() {
    use multicluster_tests::faults::{cut_tcp_from, port_of, Isolated};
    let federation = DevFederation::builder().nodes(4).start().unwrap();
    let (view, uri, _) = federation.create_presented("late", "64MiB", 3);
    // The old master waits this long for the replica that does not answer:
    // long enough for the takeover and the Delta Sync to finish first.
    let old = view["master"].as_str().unwrap().to_string();
    let mut cmdline = federation.kill_node_gracefully(&old);
    cmdline.extend(["--replica-timeout".into(), "20s".into()]);
    federation.start_node(&old, &cmdline);
    federation.wait_in_sync("late", SYNC_TIMEOUT);
    // Make it master again: stop the others one by one, so it is the only
    // copy left. A new master's ISR is itself alone until its Delta Sync
    // takes the others back (rule 4), so each stop waits for that first.
    let others: Vec<String> = copies_of(&view)
        .into_iter()
        .filter(|copy| *copy != old)
        .collect();
    let mut stopped: Vec<Vec<String>> = Vec::new();
    for node in &others {
        stopped.push(federation.kill_node_gracefully(node));
        let gone = &others[..stopped.len()];
        federation.wait_volume("late", Duration::from_secs(30), "a live master", |view| {
            let master = view["master"].as_str().unwrap_or_default();
            let in_sync = |node: &str| {
                view["copies"].as_array().is_some_and(|copies| {
                    copies
                        .iter()
                        .any(|copy| copy["node"] == node && copy["state"] == "in-sync")
                })
            };
            !master.is_empty()
                && !gone.iter().any(|node| node == master)
                && in_sync(master)
                && in_sync(&old)
        });
    }
    assert_eq!(
        federation.tether_json(&["volume", "get", "late"]).unwrap()["master"],
        old.as_str()
    );
    for (node, cmdline) in others.iter().zip(&stopped) {
        federation.start_node(node, cmdline);
    }
    federation.wait_in_sync("late", SYNC_TIMEOUT);
    qemu_io(&uri, &["write -P 0x11 0 64k", "flush"]).unwrap();

    let (silent, witness) = (others[0].clone(), others[1].clone());
    let isolated = Isolated::new("old-master", federation.node_pid(&old)).unwrap();
    let to_silent =
        cut_tcp_from(&isolated, port_of(&federation.block_addr(&silent)).unwrap()).unwrap();
    // Two overlapping writes: the first waits for the silent replica, the
    // second is admitted and queued behind it.
    let writes = {
        let uri = uri.clone();
        std::thread::spawn(move || {
            qemu_io(
                &uri,
                &[
                    "aio_write -P 0x22 0 64k",
                    "aio_write -P 0x33 0 64k",
                    "aio_flush",
                ],
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while head_of_copy(&federation, &witness, "late")[0] == 0x11 {
        assert!(
            Instant::now() < deadline,
            "the first write never reached {witness}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The old master loses its lease; a replica takes over and the
    // presenter sends both writes again to it.
    let etcd_port = port_of(
        federation.info["clusters"][0]["etcd"]["endpoints"][0]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let from_etcd = cut_tcp_from(&isolated, etcd_port).unwrap();
    writes.join().unwrap().unwrap();
    let successor = federation.tether_json(&["volume", "get", "late"]).unwrap()["master"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(successor, old);
    qemu_io(&uri, &["write -P 0x44 0 64k", "flush"]).unwrap();
    // The old master's copy comes back by Delta Sync while its queued write
    // still waits for the silent replica.
    drop(from_etcd);
    federation.wait_in_sync("late", SYNC_TIMEOUT);
    let gave_up = |federation: &DevFederation| {
        federation
            .node_log(&old)
            .lines()
            .filter(|line| line.contains("replica did not take a write") && line.contains(&silent))
            .count()
    };
    assert_eq!(
        gave_up(&federation),
        0,
        "the old master gave up on {silent} before the sync finished: the test proves nothing"
    );
    assert_eq!(
        pattern_of(&head_of_copy(&federation, &old, "late")),
        Some(0x44)
    );
    // The first write gives up on the silent replica; the queued one runs
    // (and gives up on it too, another 20 s later).
    let deadline = Instant::now() + Duration::from_secs(90);
    while gave_up(&federation) < 2 {
        assert!(
            Instant::now() < deadline,
            "the old master's writes never finished"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(to_silent);
    drop(isolated);
    assert_eq!(
        pattern_of(&head_of_copy(&federation, &old, "late")),
        Some(0x44),
        "the old master's queued write landed on its copy after the takeover"
    );
    qemu_io(&uri, &["read -P 0x44 0 64k"]).unwrap();
    federation.assert_copies_identical("late");
}

#[test]
fn random_faults_under_load_leave_every_copy_identical() {
    let federation = DevFederation::builder().nodes(4).start().unwrap();
    let (view, uri, _) = federation.create_presented("chaos", "64MiB", 3);
    let copies = copies_of(&view);
    // Verifying writers, one after another, until the faults are over.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = {
        let (uri, stop) = (uri.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                finish(
                    fio_verify(&uri, "0", "64M", 11 + runs),
                    "fio verify across the faults",
                );
                runs += 1;
            }
            runs
        })
    };
    // A fixed seed keeps the fault sequence reproducible.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..5 {
        let node = &copies[(next() % copies.len() as u64) as usize];
        match next() % 3 {
            0 => {
                println!("round {round}: kill -9 {node}, restart");
                let cmdline = federation.kill_node(node);
                std::thread::sleep(Duration::from_millis(500 + next() % 2000));
                federation.start_node(node, &cmdline);
            }
            1 => {
                println!("round {round}: SIGSTOP {node} past its lease, SIGCONT");
                federation.pause_node(node);
                std::thread::sleep(Duration::from_millis(2500 + next() % 1500));
                federation.resume_node(node);
            }
            _ => {
                println!("round {round}: restart {node} (SIGTERM)");
                let cmdline = federation.kill_node_gracefully(node);
                federation.start_node(node, &cmdline);
            }
        }
        federation.wait_in_sync("chaos", SYNC_TIMEOUT);
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let runs = writers.join().expect("every verifying writer succeeded");
    println!("{runs} verified write passes over the faults");
    assert!(runs >= 2);
    // Full-volume check: every copy holds the same bytes as the client reads.
    federation.wait_in_sync("chaos", SYNC_TIMEOUT);
    let image = federation.dir().join("chaos.img");
    qemu_img_convert(&uri, &image).unwrap();
    let client_view = blake3::hash(&std::fs::read(&image).unwrap());
    for node in &copies {
        let data = std::path::Path::new(federation.node(node)["data_dir"].as_str().unwrap())
            .join("volumes/chaos/data");
        let bytes = std::fs::read(&data).unwrap();
        assert_eq!(bytes.len(), 64 << 20);
        assert_eq!(blake3::hash(&bytes), client_view, "copy on {node} differs");
    }
    federation.assert_copies_identical("chaos");
}

#[test]
fn a_copy_gone_too_long_is_replaced_and_seeded_with_written_chunks_only() {
    let federation = DevFederation::builder()
        .nodes(3)
        .replace_after("3s")
        .start()
        .unwrap();
    federation
        .tether_ok(&[
            "volume",
            "create",
            "thin",
            "--size",
            "1GiB",
            "--replicas",
            "2",
        ])
        .unwrap();
    let view = federation.wait_in_sync("thin", SYNC_TIMEOUT);
    let master = view["master"].as_str().unwrap().to_string();
    let lost = replicas_of(&view)[0].clone();
    let socket = federation.dir().join("thin.sock");
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "thin",
            "--nbd",
            &format!("unix:{}", socket.display()),
        ])
        .unwrap()
        .trim()
        .to_string();
    // 8 MiB written in a 1 GiB volume: 32 of 4096 chunks.
    qemu_io(&uri, &["write -P 0x42 64M 8M", "flush"]).unwrap();
    let lost_at = now_ms();
    federation.kill_node(&lost);
    let replaced = federation.wait_volume("thin", SYNC_TIMEOUT, "replacement in sync", |view| {
        let copies = view["copies"].as_array().unwrap();
        !copies.iter().any(|copy| copy["node"] == lost.as_str())
            && copies.iter().all(|copy| copy["state"] == "in-sync")
    });
    let newcomer = replicas_of(&replaced)[0].clone();
    assert_ne!(newcomer, master);
    let sync = finished_sync(&federation, "thin", &newcomer, lost_at);
    println!("seeding a new copy: {sync}");
    assert_eq!(sync["chunks_copied"], 32, "{sync}");
    assert_eq!(sync["bytes_copied"], 8u64 << 20);
    let data = std::path::Path::new(federation.node(&newcomer)["data_dir"].as_str().unwrap())
        .join("volumes/thin/data");
    let bytes = std::fs::read(&data).unwrap();
    assert!(bytes[64 << 20..72 << 20].iter().all(|byte| *byte == 0x42));
    assert!(bytes[..64 << 20].iter().all(|byte| *byte == 0));
    let allocated = std::fs::metadata(&data).map(|meta| {
        use std::os::unix::fs::MetadataExt;
        meta.blocks() * 512
    });
    assert!(allocated.unwrap() <= 9 << 20, "the new copy stays thin");
    federation.assert_copies_identical("thin");
}

#[test]
fn the_block_port_refuses_garbage_unknown_volumes_and_writes_to_a_non_master() {
    use std::io::Write;
    use tether_proto::block::Frame;

    let federation = DevFederation::builder().nodes(2).start().unwrap();
    federation
        .tether_ok(&[
            "volume",
            "create",
            "guard",
            "--size",
            "64MiB",
            "--replicas",
            "2",
        ])
        .unwrap();
    let view = federation.wait_in_sync("guard", SYNC_TIMEOUT);
    let replica = replicas_of(&view)[0].clone();
    let socket = federation.dir().join("guard.sock");
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "guard",
            "--nbd",
            &format!("unix:{}", socket.display()),
        ])
        .unwrap()
        .trim()
        .to_string();
    qemu_io(&uri, &["write -P 0x6b 0 1M", "flush"]).unwrap();
    let addr = federation.block_addr(&replica);
    // A node of this cluster (certified by its CA) that holds no copy.
    let rogue = federation.issue(&Identity::new("central", Role::Node, "node-9"), None);
    let trust = std::fs::read_to_string(rogue.join("ca.crt")).unwrap();
    let server = Identity::new("central", Role::Node, &replica).dns_name();
    let open = || tls_connect(&addr, Some(&rogue), &trust, &server).unwrap();
    let exchange = multicluster_tests::harness::block_exchange;

    // Plaintext garbage: the stream is closed, nothing else happens.
    let mut stranger = std::net::TcpStream::connect(&addr).unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stranger
        .write_all(b"GET / HTTP/1.1\r\nHost: tether\r\n\r\n")
        .unwrap();
    assert!(
        closed_with_at_most_an_alert(&mut stranger),
        "plaintext garbage gets no answer but a TLS alert"
    );
    // Garbage inside TLS from a certified node: closed as well.
    let mut garbage = open();
    garbage.write_all(&[0xff; 64]).unwrap();
    garbage.flush().unwrap();
    assert!(refused(&mut garbage), "a malformed frame closes the stream");

    // A replication stream for a volume this node does not hold: ENOENT.
    let mut unknown = open();
    let hello = Frame::Hello {
        volume: "nope".into(),
        node: "node-9".into(),
        epoch: 1,
    };
    assert_eq!(
        exchange(&mut unknown, hello),
        Frame::Ack { seq: 0, error: 2 }
    );

    // A certified node may not claim an epoch: the store names the lock
    // holder and the epoch, and neither is node-9's. Not even the current
    // epoch, nor 2^64 - 1 (which would fence every real master for good).
    let epoch = view["epoch"].as_u64().unwrap();
    for claimed in [u64::MAX, epoch + 1, epoch] {
        let mut claimant = open();
        let hello = Frame::Hello {
            volume: "guard".into(),
            node: "node-9".into(),
            epoch: claimed,
        };
        assert_eq!(
            exchange(&mut claimant, hello),
            Frame::Ack { seq: 0, error: 1 },
            "a replication stream at epoch {claimed} from a node the store does not name is refused"
        );
    }
    let replica_dir = federation.node(&replica)["data_dir"]
        .as_str()
        .unwrap()
        .to_string();
    let recorded: u64 = std::fs::read_to_string(format!("{replica_dir}/volumes/guard/epoch"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        recorded, epoch,
        "the replica records only the store's epoch"
    );
    assert!(federation
        .node_log(&replica)
        .contains("the store does not name this node master at this epoch"));
    // The real master still writes to the replica, and both stay in sync.
    qemu_io(&uri, &["write -P 0x6c 1M 1M", "flush"]).unwrap();
    let after = federation.wait_in_sync("guard", SYNC_TIMEOUT);
    assert_eq!(after["epoch"].as_u64().unwrap(), epoch, "{after}");

    // A client write sent to a replica is refused (StaleEpoch), not applied.
    let mut client = open();
    let hello = Frame::Hello {
        volume: "guard".into(),
        node: "node-9".into(),
        epoch: 0,
    };
    assert_eq!(
        exchange(&mut client, hello),
        Frame::Ack { seq: 0, error: 0 }
    );
    let write = Frame::Write {
        seq: 1,
        epoch: 0,
        offset: 0,
        fua: false,
        data: bytes::Bytes::from(vec![0u8; 4096]),
    };
    assert!(
        matches!(
            exchange(&mut client, write),
            Frame::StaleEpoch { seq: 1, .. }
        ),
        "a replica does not take client writes"
    );

    // The volume is untouched and both copies still in sync.
    qemu_io(&uri, &["read -P 0x6b 0 1M", "read -P 0x6c 1M 1M"]).unwrap();
    federation.wait_in_sync("guard", SYNC_TIMEOUT);
    federation.assert_copies_identical("guard");
}
