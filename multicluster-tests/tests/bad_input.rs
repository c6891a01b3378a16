//! Bad input over a raw socket: each bad request gets a clear answer or
//! closes only its own connection; other clients carry on.

use std::io::{Read, Write};
use std::net::TcpStream;

use multicluster_tests::clients::qemu_io;
use multicluster_tests::harness::DevFederation;
use multicluster_tests::raw_nbd::{connect, read_reply, send_request};
use tether_proto::nbd::*;

const SIZE: u64 = 64 << 20;

fn assert_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection should be closed, got {other:?}"),
    }
}

#[test]
fn bad_requests_get_errors_and_harm_no_one_else() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "target", "--size", "64MiB"])
        .unwrap();
    let uri = federation
        .tether_ok(&["volume", "attach", "target", "--nbd", "tcp:127.0.0.1:0"])
        .unwrap();
    let uri = uri.trim().to_string();
    let addr = uri
        .trim_start_matches("nbd://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    qemu_io(&uri, &["write -P 0x42 0 1M"]).unwrap();

    let mut good = connect(&addr);
    let mut bad = connect(&addr);

    // Out of range: EINVAL for reads and trims, ENOSPC for writes; the connection stays usable.
    send_request(&mut bad, CMD_READ, 1, SIZE - 100, 4096, &[]);
    assert_eq!(read_reply(&mut bad), (EINVAL, 1));
    send_request(&mut bad, CMD_WRITE, 2, SIZE, 4, b"oops");
    assert_eq!(read_reply(&mut bad), (ENOSPC, 2));
    send_request(&mut bad, CMD_TRIM, 3, u64::MAX - 10, 4096, &[]);
    assert_eq!(read_reply(&mut bad), (EINVAL, 3));
    // Unknown command: EINVAL.
    send_request(&mut bad, 42, 4, 0, 0, &[]);
    assert_eq!(read_reply(&mut bad), (EINVAL, 4));
    send_request(&mut bad, CMD_READ, 5, 0, 512, &[]);
    assert_eq!(read_reply(&mut bad), (0, 5));
    let mut data = [0u8; 512];
    bad.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|b| *b == 0x42));

    // Over 32 MiB: the connection is closed.
    send_request(&mut bad, CMD_WRITE, 6, 0, (32 << 20) + 1, &[]);
    assert_closed(&mut bad);
    // A garbled frame: closed too.
    let mut garbled = connect(&addr);
    garbled.write_all(&[0xde; 28]).unwrap();
    assert_closed(&mut garbled);

    // The well-behaved connection and new clients carry on; nothing was written.
    send_request(&mut good, CMD_READ, 7, 0, 4096, &[]);
    assert_eq!(read_reply(&mut good), (0, 7));
    let mut data = vec![0u8; 4096];
    good.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|b| *b == 0x42));
    qemu_io(&uri, &["read -P 0x42 0 1M", "read -P 0 1M 1M"]).unwrap();

    let log = federation.node_log("node-1");
    let violation = log
        .lines()
        .find(|line| line.contains("protocol violation"))
        .expect("a log line for the violation");
    assert!(violation.contains("\"volume\":\"target\""), "{violation}");
    assert!(violation.contains("\"node\":\"node-1\""), "{violation}");
    assert!(violation.contains("\"cluster\":\"central\""), "{violation}");
    assert!(violation.contains("\"peer\":\"127.0.0.1:"), "{violation}");
    assert!(
        violation.contains("RequestTooLarge") || violation.contains("over the limit"),
        "{violation}"
    );
}
