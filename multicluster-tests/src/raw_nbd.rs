//! A client speaking NBD over a raw socket, for tests that must send what a
//! well-behaved client never would (bad requests, floods, stalls).

use std::io::{Read, Write};
use std::net::TcpStream;

use tether_proto::nbd::*;

/// Connects over TCP and negotiates with GO; returns the stream ready for transmission.
pub fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    negotiate(stream)
}

/// Negotiates the default export with GO on a connected stream.
pub fn negotiate<S: Read + Write>(mut stream: S) -> S {
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], &NBDMAGIC.to_be_bytes());
    let mut out = Vec::new();
    out.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&OPT_GO.to_be_bytes());
    out.extend_from_slice(&6u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // default export
    out.extend_from_slice(&0u16.to_be_bytes());
    stream.write_all(&out).unwrap();
    loop {
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).unwrap();
        let reply_type = u32::from_be_bytes(header[12..16].try_into().unwrap());
        let length = u32::from_be_bytes(header[16..20].try_into().unwrap());
        let mut data = vec![0u8; length as usize];
        stream.read_exact(&mut data).unwrap();
        if reply_type == REP_ACK {
            return stream;
        }
        assert_eq!(reply_type, REP_INFO);
    }
}

/// Sends one request: its header, then `payload` (a write's, or nothing).
pub fn send_request<S: Write>(
    stream: &mut S,
    command_type: u16,
    cookie: u64,
    offset: u64,
    length: u32,
    payload: &[u8],
) {
    let mut out = Vec::new();
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&command_type.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(payload);
    stream.write_all(&out).unwrap();
}

/// Reads one simple reply: (error, cookie).
pub fn read_reply<S: Read>(stream: &mut S) -> (u32, u64) {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).unwrap();
    assert_eq!(
        u32::from_be_bytes(header[..4].try_into().unwrap()),
        SIMPLE_REPLY_MAGIC
    );
    (
        u32::from_be_bytes(header[4..8].try_into().unwrap()),
        u64::from_be_bytes(header[8..16].try_into().unwrap()),
    )
}
