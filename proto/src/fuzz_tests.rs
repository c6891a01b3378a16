//! Garbage in, error out: random bytes and bit-flipped valid frames fed to
//! every decoder must give a frame or an error — never a panic, never a hang.
//! (Deterministic seeds, so a failure reproduces.)

use bytes::{BufMut, BytesMut};

use crate::block::{decode_frame, encode_frame, Frame};
use crate::dr::journal::{decode_index, JournalHeader};
use crate::dr::wire::{self as dr_wire, DrFrame};
use crate::link::{self, LinkFrame};
use crate::nbd::{self, ExportCatalog, ExportInfo, ServerHandshake};

/// xorshift64*: enough randomness for input generation, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

struct AnyExport;

impl ExportCatalog for AnyExport {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        Some(ExportInfo {
            name: name.to_string(),
            size_bytes: 1 << 20,
            transmission_flags: 0,
            max_request_bytes: nbd::MAX_REQUEST_LEN,
            min_block_bytes: 1,
        })
    }
    fn names(&self) -> Vec<String> {
        vec!["x".into()]
    }
}

/// Decodes until the decoder wants more bytes or errs; a successful decode must consume input.
fn drain_frames(mut input: BytesMut) {
    loop {
        let before = input.len();
        match decode_frame(&mut input) {
            Ok(Some(_)) => assert!(input.len() < before, "a decoded frame consumed nothing"),
            Ok(None) | Err(_) => return,
        }
    }
}

fn drain_link_frames(mut input: BytesMut) {
    loop {
        let before = input.len();
        match link::decode_link_frame(&mut input) {
            Ok(Some(_)) => assert!(
                input.len() < before,
                "a decoded link frame consumed nothing"
            ),
            Ok(None) | Err(_) => return,
        }
    }
}

fn drain_dr_frames(mut input: BytesMut) {
    loop {
        let before = input.len();
        match dr_wire::decode_dr_frame(&mut input) {
            Ok(Some(_)) => assert!(input.len() < before, "a decoded DR frame consumed nothing"),
            Ok(None) | Err(_) => return,
        }
    }
}

/// The journal's header and index parsers, on what a damaged journal
/// volume could hold.
fn parse_journal(input: &[u8]) {
    let _ = JournalHeader::decode(input);
    let _ = decode_index(input, (input.len() / 16) as u64);
    let _ = decode_index(input, u64::MAX);
}

fn drain_requests(mut input: BytesMut) {
    loop {
        let before = input.len();
        match nbd::decode_request(&mut input, nbd::MAX_REQUEST_LEN) {
            Ok(Some(_)) => assert!(input.len() < before, "a decoded request consumed nothing"),
            Ok(None) | Err(_) => return,
        }
    }
}

#[test]
fn random_bytes_never_panic_any_decoder() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = (rng.next() % 300) as usize;
        let garbage = rng.bytes(len);
        drain_frames(BytesMut::from(&garbage[..]));
        drain_link_frames(BytesMut::from(&garbage[..]));
        drain_requests(BytesMut::from(&garbage[..]));
        drain_dr_frames(BytesMut::from(&garbage[..]));
        parse_journal(&garbage);
        let mut handshake = ServerHandshake::new();
        let _ = handshake.handle_input(&mut BytesMut::from(&garbage[..]), &AnyExport);
    }
}

#[test]
fn bit_flipped_valid_input_never_panics() {
    let mut rng = Rng(42);
    let mut frames = BytesMut::new();
    encode_frame(
        &Frame::TreeRequest {
            seq: 1,
            epoch: 2,
            level: 3,
            indices: vec![4, 5],
        },
        &mut frames,
    );
    encode_frame(
        &Frame::Hello {
            volume: "v".into(),
            node: "n".into(),
            epoch: 1,
        },
        &mut frames,
    );
    encode_frame(
        &Frame::TreeResponse {
            seq: 1,
            hashes: vec![[7; 32]],
        },
        &mut frames,
    );
    let mut links = BytesMut::new();
    for frame in [
        LinkFrame::Hello {
            min_version: 1,
            max_version: 1,
            features: link::FEATURE_ZSTD,
            volume: "db".into(),
        },
        LinkFrame::Write {
            id: 9,
            offset: 4096,
            fua: true,
            data: link::Payload::Compressed {
                raw_len: 4096,
                data: bytes::Bytes::from_static(b"abc"),
            },
        },
        LinkFrame::Refused {
            code: 1,
            reason: "no".into(),
        },
    ] {
        link::encode_link_frame(&frame, &mut links);
    }
    let mut drs = BytesMut::new();
    for frame in [
        DrFrame::Hello(dr_wire::Hello {
            volume: "db".into(),
            generation: 2,
            size_bytes: 1 << 30,
            chunk_size: 256 << 10,
            replicas: 1,
            rpo_secs: 30,
            encrypted: false,
            zstd: true,
            encryption: None,
        }),
        DrFrame::Stage {
            point: 3,
            offset: 8192,
            raw_len: 4096,
            compressed: true,
            zero: false,
            data: bytes::Bytes::from_static(b"zstd?"),
        },
        DrFrame::HashRequest { first: 0, count: 9 },
        DrFrame::Commit {
            point: 3,
            cut_unix_ms: 1,
            chunks: 1,
            final_point: false,
        },
    ] {
        dr_wire::encode_dr_frame(&frame, &mut drs);
    }
    let journal = BytesMut::from(
        &crate::dr::journal::JournalHeader {
            state: crate::dr::journal::JournalState::Committed,
            chunk_size: 4096,
            point: 7,
            cut_unix_ms: 9,
            entries: 2,
            batch_sum: [3; 32],
        }
        .encode()[..],
    );
    let mut handshake = BytesMut::new();
    handshake.put_u32(nbd::FLAG_C_FIXED_NEWSTYLE);
    for option in [nbd::OPT_LIST, nbd::OPT_INFO, nbd::OPT_GO] {
        handshake.put_u64(nbd::IHAVEOPT);
        handshake.put_u32(option);
        handshake.put_u32(7);
        handshake.put_slice(&[0, 0, 0, 1, b'x', 0, 0]);
    }
    for _ in 0..20_000 {
        for valid in [&frames, &links, &drs, &journal, &handshake] {
            let mut mutated = valid.clone();
            for _ in 0..=(rng.next() % 4) {
                let at = (rng.next() as usize) % mutated.len();
                mutated[at] ^= 1 << (rng.next() % 8);
            }
            drain_frames(mutated.clone());
            drain_link_frames(mutated.clone());
            drain_requests(mutated.clone());
            drain_dr_frames(mutated.clone());
            parse_journal(&mutated);
            let _ = ServerHandshake::new().handle_input(&mut mutated, &AnyExport);
        }
    }
}
