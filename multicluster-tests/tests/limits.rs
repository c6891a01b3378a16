//! What one client or one peer can make a node hold is bounded: requests
//! whose replies are never read, writes that stall midway, handshakes that
//! never finish, more connections than a listener takes, a process out of
//! file descriptors, and oversized block frames from a certified node.
//! Every case is observed from outside: the node's resident memory, its CPU
//! time, its log, and another client that still gets served.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use multicluster_tests::clients::qemu_io;
use multicluster_tests::harness::{tls_connect, DevFederation};
use multicluster_tests::raw_nbd::{connect, send_request};
use tether_proto::nbd::{CMD_READ, CMD_WRITE};
use tether_tls::{Identity, Role};

const MIB: u64 = 1 << 20;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// The most the node holds over `window` (sampled); fails at once past `limit`.
fn peak_rss_within(pid: u32, window: Duration, limit: u64, what: &str) -> u64 {
    let deadline = Instant::now() + window;
    let mut peak = 0;
    while Instant::now() < deadline {
        let rss = rss_bytes(pid);
        peak = peak.max(rss);
        assert!(
            rss <= limit,
            "{what}: the node holds {} MiB (limit {} MiB)",
            rss / MIB,
            limit / MIB
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    peak
}

/// One node, one 64 MiB volume attached over TCP; returns (address, uri, pid).
fn one_volume(federation: &DevFederation) -> (String, String, u32) {
    federation
        .tether_ok(&["volume", "create", "flood", "--size", "64MiB"])
        .unwrap();
    let uri = federation
        .tether_ok(&["volume", "attach", "flood", "--nbd", "tcp:127.0.0.1:0"])
        .unwrap()
        .trim()
        .to_string();
    qemu_io(&uri, &["write -P 0x3a 0 64M", "flush"]).unwrap();
    let addr = uri
        .trim_start_matches("nbd://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    (addr, uri, federation.node_pid("node-1"))
}

#[test]
fn replies_nobody_reads_and_stalled_writes_are_bounded_in_bytes() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let (addr, uri, pid) = one_volume(&federation);
    let base = rss_bytes(pid);

    // 1,000 reads of 32 MiB whose replies are never read (32 GiB asked for).
    let mut reader = connect(&addr);
    for cookie in 0..1000u64 {
        send_request(&mut reader, CMD_READ, cookie, 0, 32 << 20, &[]);
    }
    let peak = peak_rss_within(
        pid,
        Duration::from_secs(5),
        base + 512 * MIB,
        "unread replies",
    );
    println!(
        "unread 32 MiB replies: node RSS {} -> {} MiB",
        base / MIB,
        peak / MIB
    );
    // Another client is still served meanwhile.
    qemu_io(&uri, &["read -P 0x3a 0 1M"]).unwrap();
    drop(reader);

    // 100 connections each stalled midway through a 32 MiB write.
    let mut stalled = Vec::new();
    for cookie in 0..100u64 {
        let mut stream = connect(&addr);
        let mut request = Vec::new();
        send_request(
            &mut request,
            CMD_WRITE,
            cookie,
            0,
            32 << 20,
            &vec![0x77; MIB as usize],
        );
        stream.write_all(&request).unwrap();
        stalled.push(stream);
    }
    let peak = peak_rss_within(
        pid,
        Duration::from_secs(5),
        base + 1536 * MIB,
        "stalled writes",
    );
    println!(
        "100 stalled 32 MiB writes: node RSS {} -> {} MiB",
        base / MIB,
        peak / MIB
    );
    qemu_io(&uri, &["read -P 0x3a 0 1M"]).unwrap();
    drop(stalled);
}

#[test]
fn handshakes_time_out_and_listeners_cap_their_connections() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "capped", "--size", "64MiB"])
        .unwrap();
    let socket = federation.dir().join("capped.sock");
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "capped",
            "--nbd",
            &format!("unix:{}", socket.display()),
        ])
        .unwrap()
        .trim()
        .to_string();

    // A client that connects and says nothing is closed after the handshake timeout.
    let mut silent = UnixStream::connect(&socket).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut greeting = [0u8; 18];
    silent.read_exact(&mut greeting).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(20),
        "a silent handshake was kept {waited:?}"
    );

    // The export takes 256 connections at once; the rest are closed at accept.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut stream = UnixStream::connect(&socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut greeting = [0u8; 18];
        match stream.read_exact(&mut greeting) {
            Ok(()) => held.push(stream),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(held.len(), 256, "connections held");
    assert_eq!(refused, 44);
    drop(held);
    qemu_io(&uri, &["write -P 0x21 0 64k", "read -P 0x21 0 64k"]).unwrap();
}

#[test]
fn out_of_file_descriptors_the_node_backs_off_instead_of_spinning() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "fds", "--size", "64MiB"])
        .unwrap();
    let socket = federation.dir().join("fds.sock");
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "fds",
            "--nbd",
            &format!("unix:{}", socket.display()),
        ])
        .unwrap()
        .trim()
        .to_string();
    let pid = federation.node_pid("node-1");
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    // Leave the node 40 more descriptors, then knock 200 times.
    let limit = open_fds + 40;
    let original = soft_open_files_limit(pid);
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .status()
        .unwrap();
    assert!(status.success());
    let cpu_before = cpu_seconds(pid);
    let log_before = federation.node_log("node-1").len();
    let mut clients = Vec::new();
    for _ in 0..200 {
        if let Ok(stream) = UnixStream::connect(&socket) {
            clients.push(stream);
        }
    }
    // Watch the node for 3 s while the backlog of connections waits.
    std::thread::sleep(Duration::from_secs(3));
    let cpu = cpu_seconds(pid) - cpu_before;
    let log = federation.node_log("node-1")[log_before..].to_string();
    let accept_lines = log
        .lines()
        .filter(|line| line.contains("accept failed"))
        .count();
    println!("3 s out of descriptors: {cpu:.2} s of CPU, {accept_lines} accept-failure lines");
    assert!(cpu < 1.0, "the node spun: {cpu:.2} s of CPU in 3 s");
    assert!(
        accept_lines <= 10,
        "{accept_lines} accept-failure lines in 3 s"
    );
    drop(clients);
    // With descriptors back, it serves again.
    let restore = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={original}:")])
        .status()
        .unwrap();
    assert!(restore.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while qemu_io(&uri, &["write -P 0x11 0 4k", "read -P 0x11 0 4k"]).is_err() {
        assert!(Instant::now() < deadline, "the node did not serve again");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn soft_open_files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_string()
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the ')'.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn oversized_and_unread_block_frames_from_a_node_are_bounded() {
    use tether_proto::block::{encode_frame, Frame};
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let (_, uri, pid) = one_volume(&federation);
    let nodes = federation.tether_json(&["node", "list"]).unwrap();
    let addr = nodes[0]["block_addr"].as_str().unwrap().to_string();
    let rogue = federation.issue(&Identity::new("central", Role::Node, "node-9"), None);
    let trust = std::fs::read_to_string(rogue.join("ca.crt")).unwrap();
    let server = Identity::new("central", Role::Node, "node-1").dns_name();
    let base = rss_bytes(pid);
    let mut streams = Vec::new();
    for oversized in [false, true, true, true] {
        let mut stream = tls_connect(&addr, Some(&rogue), &trust, &server).unwrap();
        let mut out = bytes::BytesMut::new();
        encode_frame(
            &Frame::Hello {
                volume: "flood".into(),
                node: "node-9".into(),
                epoch: 0,
            },
            &mut out,
        );
        // A presenting node's reads, never read back: 1 GiB at once, or
        // 300 of 32 MiB (the largest allowed).
        let reads: Vec<u32> = if oversized {
            vec![1 << 30]
        } else {
            vec![32 << 20; 300]
        };
        for (seq, length) in reads.into_iter().enumerate() {
            encode_frame(
                &Frame::Read {
                    seq: seq as u64 + 1,
                    offset: 0,
                    length,
                },
                &mut out,
            );
        }
        stream.write_all(&out).unwrap();
        streams.push(stream);
    }
    let peak = peak_rss_within(pid, Duration::from_secs(5), base + 512 * MIB, "block reads");
    println!(
        "block-port read flood: node RSS {} -> {} MiB",
        base / MIB,
        peak / MIB
    );
    qemu_io(&uri, &["read -P 0x3a 0 1M"]).unwrap();
    drop(streams);
    assert!(federation
        .node_log("node-1")
        .contains("over the limit of 33554432"));
}
