//! Handshake and codec tests without sockets: a scripted client's bytes go in,
//! the server's bytes come out and are parsed back.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::*;
use crate::ProtoError;

struct OneExport;

impl ExportCatalog for OneExport {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        (name == "vol1" || name.is_empty()).then(|| ExportInfo {
            name: "vol1".into(),
            size_bytes: 1 << 30,
            transmission_flags: TFLAG_SEND_FLUSH | TFLAG_SEND_FUA,
            max_request_bytes: MAX_REQUEST_LEN,
            min_block_bytes: 1,
        })
    }
    fn names(&self) -> Vec<String> {
        vec!["vol1".into()]
    }
}

fn option(out: &mut BytesMut, option: u32, data: &[u8]) {
    out.put_u64(IHAVEOPT);
    out.put_u32(option);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
}

fn info_request(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut data = BytesMut::new();
    data.put_u32(name.len() as u32);
    data.put_slice(name.as_bytes());
    data.put_u16(requests.len() as u16);
    for request in requests {
        data.put_u16(*request);
    }
    data.to_vec()
}

/// Parses the option replies in `out`: (option, reply type, data).
fn replies(mut out: Bytes) -> Vec<(u32, u32, Bytes)> {
    let mut parsed = Vec::new();
    while out.has_remaining() {
        assert_eq!(out.get_u64(), OPTION_REPLY_MAGIC);
        let option = out.get_u32();
        let reply_type = out.get_u32();
        let length = out.get_u32() as usize;
        parsed.push((option, reply_type, out.split_to(length)));
    }
    parsed
}

fn started() -> ServerHandshake {
    let mut server = ServerHandshake::new();
    let greeting = server.poll_transmit().unwrap();
    assert_eq!(&greeting[..8], &NBDMAGIC.to_be_bytes());
    assert_eq!(&greeting[8..16], &IHAVEOPT.to_be_bytes());
    assert_eq!(
        u16::from_be_bytes([greeting[16], greeting[17]]),
        FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
    );
    server
}

#[test]
fn go_reports_size_flags_and_block_size_then_starts_transmission() {
    let mut server = started();
    let mut input = BytesMut::new();
    input.put_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    option(
        &mut input,
        OPT_GO,
        &info_request("vol1", &[INFO_BLOCK_SIZE, INFO_NAME]),
    );
    input.put_slice(b"extra"); // first bytes of the transmission phase stay put

    let outcome = server.handle_input(&mut input, &OneExport).unwrap();
    let Some(HandshakeOutcome::Transmission(export)) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(export.size_bytes, 1 << 30);
    assert_eq!(&input[..], b"extra");

    let parsed = replies(server.poll_transmit().unwrap());
    let types: Vec<u32> = parsed.iter().map(|r| r.1).collect();
    assert_eq!(types, vec![REP_INFO, REP_INFO, REP_INFO, REP_ACK]);
    let mut export_info = parsed[0].2.clone();
    assert_eq!(export_info.get_u16(), INFO_EXPORT);
    assert_eq!(export_info.get_u64(), 1 << 30);
    assert_eq!(
        export_info.get_u16(),
        TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA
    );
    let mut block = parsed[1].2.clone();
    assert_eq!(block.get_u16(), INFO_BLOCK_SIZE);
    assert_eq!(
        (block.get_u32(), block.get_u32(), block.get_u32()),
        (1, 4096, MAX_REQUEST_LEN)
    );
    assert_eq!(&parsed[2].2[2..], b"vol1");
}

#[test]
fn input_split_at_every_byte_gives_the_same_result() {
    let mut whole = BytesMut::new();
    whole.put_u32(FLAG_C_FIXED_NEWSTYLE);
    option(&mut whole, OPT_LIST, &[]);
    option(&mut whole, OPT_GO, &info_request("", &[]));
    let mut server = started();
    let mut input = BytesMut::new();
    let mut outcome = None;
    for byte in whole.iter() {
        input.put_u8(*byte);
        if let Some(done) = server.handle_input(&mut input, &OneExport).unwrap() {
            outcome = Some(done);
        }
    }
    assert!(matches!(outcome, Some(HandshakeOutcome::Transmission(_))));
    let parsed = replies(server.poll_transmit().unwrap());
    assert_eq!(parsed[0].1, REP_SERVER);
    assert_eq!(&parsed[0].2[4..], b"vol1");
    assert_eq!(parsed[1].1, REP_ACK);
}

#[test]
fn unknown_export_on_info_is_an_error_reply_and_haggling_continues() {
    let mut server = started();
    let mut input = BytesMut::new();
    input.put_u32(FLAG_C_FIXED_NEWSTYLE);
    option(&mut input, OPT_INFO, &info_request("nope", &[]));
    option(&mut input, OPT_STRUCTURED_REPLY, &[]);
    option(&mut input, 999, &[]);
    option(&mut input, OPT_INFO, &[0, 0]); // malformed
    assert_eq!(server.handle_input(&mut input, &OneExport).unwrap(), None);
    let types: Vec<u32> = replies(server.poll_transmit().unwrap())
        .iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(
        types,
        vec![
            REP_ERR_UNKNOWN,
            REP_ERR_UNSUP,
            REP_ERR_UNSUP,
            REP_ERR_INVALID
        ]
    );
}

#[test]
fn export_name_sends_size_and_flags_with_zero_padding() {
    let mut server = started();
    let mut input = BytesMut::new();
    input.put_u32(FLAG_C_FIXED_NEWSTYLE);
    option(&mut input, OPT_EXPORT_NAME, b"vol1");
    let outcome = server.handle_input(&mut input, &OneExport).unwrap();
    assert!(matches!(outcome, Some(HandshakeOutcome::Transmission(_))));
    let mut out = server.poll_transmit().unwrap();
    assert_eq!(out.len(), 8 + 2 + 124);
    assert_eq!(out.get_u64(), 1 << 30);
}

#[test]
fn export_name_for_an_unknown_export_closes() {
    let mut server = started();
    let mut input = BytesMut::new();
    input.put_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    option(&mut input, OPT_EXPORT_NAME, b"missing");
    let outcome = server.handle_input(&mut input, &OneExport).unwrap();
    assert!(matches!(outcome, Some(HandshakeOutcome::Closed { .. })));
}

#[test]
fn protocol_violations_are_errors() {
    let mut server = started();
    let mut input = BytesMut::new();
    input.put_u32(0);
    assert_eq!(
        server.handle_input(&mut input, &OneExport),
        Err(ProtoError::NotFixedNewstyle { client_flags: 0 })
    );

    let mut server = started();
    let mut input = BytesMut::new();
    input.put_u32(FLAG_C_FIXED_NEWSTYLE);
    input.put_u64(0xdead);
    input.put_u64(0);
    assert!(matches!(
        server.handle_input(&mut input, &OneExport),
        Err(ProtoError::BadOptionMagic { .. })
    ));

    let mut server = started();
    let mut input = BytesMut::new();
    input.put_u32(FLAG_C_FIXED_NEWSTYLE);
    input.put_u64(IHAVEOPT);
    input.put_u32(OPT_GO);
    input.put_u32(MAX_OPTION_LEN + 1);
    assert!(matches!(
        server.handle_input(&mut input, &OneExport),
        Err(ProtoError::OptionTooLarge { .. })
    ));
}

fn request(flags: u16, command_type: u16, cookie: u64, offset: u64, length: u32) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u32(REQUEST_MAGIC);
    out.put_u16(flags);
    out.put_u16(command_type);
    out.put_u64(cookie);
    out.put_u64(offset);
    out.put_u32(length);
    out
}

#[test]
fn requests_decode_and_wait_for_their_payload() {
    let mut input = request(CMD_FLAG_FUA, CMD_WRITE, 7, 4096, 4);
    assert_eq!(decode_request(&mut input, MAX_REQUEST_LEN).unwrap(), None);
    input.put_slice(b"abcd");
    input.put(request(0, CMD_READ, 8, 0, 512));
    input.put(request(0, CMD_FLUSH, 9, 0, 0));
    input.put(request(0, 42, 10, 0, 0));
    let decoded: Vec<Request> =
        std::iter::from_fn(|| decode_request(&mut input, MAX_REQUEST_LEN).unwrap()).collect();
    assert_eq!(
        decoded,
        vec![
            Request {
                cookie: 7,
                command: Command::Write {
                    offset: 4096,
                    data: Bytes::from_static(b"abcd"),
                    fua: true
                }
            },
            Request {
                cookie: 8,
                command: Command::Read {
                    offset: 0,
                    length: 512
                }
            },
            Request {
                cookie: 9,
                command: Command::Flush
            },
            Request {
                cookie: 10,
                command: Command::Unknown { command_type: 42 }
            },
        ]
    );
    assert!(input.is_empty());
}

#[test]
fn oversized_and_garbled_requests_are_errors() {
    let mut input = request(0, CMD_WRITE, 1, 0, MAX_REQUEST_LEN + 1);
    assert!(matches!(
        decode_request(&mut input, MAX_REQUEST_LEN),
        Err(ProtoError::RequestTooLarge { cookie: 1, .. })
    ));
    let mut input = request(0, CMD_READ, 2, 0, MAX_REQUEST_LEN + 1);
    assert!(decode_request(&mut input, MAX_REQUEST_LEN).is_err());
    let mut input = BytesMut::from(&[0u8; 28][..]);
    assert_eq!(
        decode_request(&mut input, MAX_REQUEST_LEN),
        Err(ProtoError::BadRequestMagic { found: 0 })
    );
}

#[test]
fn simple_reply_layout() {
    let mut out = BytesMut::new();
    encode_simple_reply(0x1122, EINVAL, None, &mut out);
    encode_simple_reply(0x3344, 0, Some(b"xy"), &mut out);
    let mut out = out.freeze();
    assert_eq!(out.get_u32(), SIMPLE_REPLY_MAGIC);
    assert_eq!(out.get_u32(), EINVAL);
    assert_eq!(out.get_u64(), 0x1122);
    assert_eq!(out.get_u32(), SIMPLE_REPLY_MAGIC);
    assert_eq!(out.get_u32(), 0);
    assert_eq!(out.get_u64(), 0x3344);
    assert_eq!(&out[..], b"xy");
}

#[test]
fn a_request_says_what_it_will_hold_from_its_header_alone() {
    let write = request(0, CMD_WRITE, 1, 0, 32 << 20);
    assert_eq!(request_bytes(&write[..27]), None, "header incomplete");
    assert_eq!(request_bytes(&write), Some(32 << 20), "a write's payload");
    assert_eq!(
        request_bytes(&request(0, CMD_READ, 2, 0, 1 << 20)),
        Some(1 << 20)
    );
    assert_eq!(request_bytes(&request(0, CMD_TRIM, 3, 0, 1 << 30)), Some(0));
    assert_eq!(request_bytes(&request(0, CMD_FLUSH, 4, 0, 0)), Some(0));
}

fn started_with(mode: TlsMode) -> (ServerHandshake, BytesMut) {
    let mut server = ServerHandshake::with_tls(mode);
    server.poll_transmit().unwrap();
    let mut input = BytesMut::new();
    input.put_u32(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    (server, input)
}

#[test]
fn required_tls_refuses_every_option_but_starttls_and_closes_on_export_name() {
    let (mut server, mut input) = started_with(TlsMode::Required);
    option(&mut input, OPT_LIST, &[]);
    option(&mut input, OPT_INFO, &info_request("vol1", &[]));
    option(&mut input, OPT_GO, &info_request("vol1", &[]));
    assert_eq!(server.handle_input(&mut input, &OneExport).unwrap(), None);
    let parsed = replies(server.poll_transmit().unwrap());
    let answers: Vec<(u32, u32)> = parsed.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        answers,
        vec![
            (OPT_LIST, REP_ERR_TLS_REQD),
            (OPT_INFO, REP_ERR_TLS_REQD),
            (OPT_GO, REP_ERR_TLS_REQD)
        ],
        "no export is listed or described, and transmission does not start, in plaintext"
    );
    option(&mut input, OPT_EXPORT_NAME, b"vol1");
    let outcome = server.handle_input(&mut input, &OneExport).unwrap();
    assert!(
        matches!(outcome, Some(HandshakeOutcome::Closed { .. })),
        "{outcome:?}"
    );
    assert!(
        server.poll_transmit().is_none(),
        "nothing about the export is sent"
    );
}

#[test]
fn starttls_is_acknowledged_then_haggling_resumes_under_tls() {
    let (mut server, mut input) = started_with(TlsMode::Required);
    option(&mut input, OPT_STARTTLS, &[]);
    assert_eq!(
        server.handle_input(&mut input, &OneExport).unwrap(),
        Some(HandshakeOutcome::StartTls)
    );
    let parsed = replies(server.poll_transmit().unwrap());
    assert_eq!(
        (parsed[0].0, parsed[0].1, parsed[0].2.len()),
        (OPT_STARTTLS, REP_ACK, 0)
    );
    assert!(server.under_tls());

    // (the caller runs the TLS handshake here; what follows came through it)
    option(&mut input, OPT_STARTTLS, &[]);
    option(&mut input, OPT_GO, &info_request("vol1", &[]));
    let outcome = server.handle_input(&mut input, &OneExport).unwrap();
    assert!(
        matches!(outcome, Some(HandshakeOutcome::Transmission(_))),
        "{outcome:?}"
    );
    let types: Vec<u32> = replies(server.poll_transmit().unwrap())
        .iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(
        types,
        vec![REP_ERR_INVALID, REP_INFO, REP_INFO, REP_ACK],
        "a second STARTTLS is invalid; GO proceeds under TLS"
    );
}

#[test]
fn plaintext_bytes_after_starttls_end_the_connection() {
    // An attacker on the path appends a plaintext GO after the client's
    // STARTTLS, hoping it is taken as sent under TLS.
    let (mut server, mut input) = started_with(TlsMode::Required);
    option(&mut input, OPT_STARTTLS, &[]);
    option(&mut input, OPT_GO, &info_request("vol1", &[]));
    assert!(matches!(
        server.handle_input(&mut input, &OneExport),
        Err(ProtoError::PlaintextAfterStartTls { .. })
    ));
}

#[test]
fn optional_tls_serves_plaintext_and_off_refuses_starttls() {
    let (mut server, mut input) = started_with(TlsMode::Optional);
    option(&mut input, OPT_GO, &info_request("vol1", &[]));
    let outcome = server.handle_input(&mut input, &OneExport).unwrap();
    assert!(matches!(outcome, Some(HandshakeOutcome::Transmission(_))));

    let (mut server, mut input) = started_with(TlsMode::Off);
    option(&mut input, OPT_STARTTLS, &[]);
    assert_eq!(server.handle_input(&mut input, &OneExport).unwrap(), None);
    let parsed = replies(server.poll_transmit().unwrap());
    assert_eq!((parsed[0].0, parsed[0].1), (OPT_STARTTLS, REP_ERR_UNSUP));
    assert!(!server.under_tls());
}
