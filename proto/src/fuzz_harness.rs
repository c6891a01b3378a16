//! One entry point per parser of untrusted bytes, shared by the `cargo fuzz`
//! targets in `fuzz/` and by this crate's own randomised tests, so both
//! check the same properties: any input gives a value or an error — never a
//! panic, a hang or an allocation the input did not pay for — and what
//! decodes re-encodes to bytes that decode to the same value.
//!
//! Built with the `fuzzing` feature (or in this crate's tests).

use bytes::BytesMut;

use crate::block::{decode_frame, encode_frame};
use crate::dr::journal::{decode_index, JournalHeader};
use crate::dr::wire::{decode_dr_frame, encode_dr_frame};
use crate::link::{decode_link_frame, encode_link_frame};
use crate::nbd::{self, ExportCatalog, ExportInfo, ServerHandshake, TlsMode};

/// A target's entry point: any bytes at all.
pub type EntryPoint = fn(&[u8]);

/// Every target, by the name its `fuzz/fuzz_targets/NAME.rs` and corpus use.
pub const TARGETS: &[(&str, EntryPoint)] = &[
    ("nbd_handshake", nbd_handshake),
    ("nbd_transmission", nbd_transmission),
    ("block_frame", block_frame),
    ("federation_frame", federation_frame),
    ("dr_frame", dr_frame),
    ("dr_journal", dr_journal),
    ("volume_meta", volume_meta),
    ("hashes_file", hashes_file),
    ("activity_log", activity_log),
    ("admin_request", admin_request),
];

/// Decodes frames until the decoder wants more bytes or errs. Each decoded
/// frame must consume input and survive a re-encode unchanged.
fn drain<F: PartialEq + std::fmt::Debug>(
    input: &[u8],
    decode: impl Fn(&mut BytesMut) -> Result<Option<F>, crate::ProtoError>,
    encode: impl Fn(&F, &mut BytesMut),
) {
    let mut input = BytesMut::from(input);
    loop {
        let before = input.len();
        match decode(&mut input) {
            Ok(Some(frame)) => {
                assert!(input.len() < before, "a decoded frame consumed nothing");
                let mut again = BytesMut::new();
                encode(&frame, &mut again);
                let reencoded = decode(&mut again)
                    .expect("a re-encoded frame decodes")
                    .expect("a re-encoded frame is whole");
                assert_eq!(reencoded, frame, "re-encoding changed the frame");
                assert!(again.is_empty(), "re-encoding left bytes over");
            }
            Ok(None) | Err(_) => return,
        }
    }
}

pub fn block_frame(input: &[u8]) {
    drain(input, decode_frame, encode_frame);
}

pub fn federation_frame(input: &[u8]) {
    drain(input, decode_link_frame, encode_link_frame);
}

pub fn dr_frame(input: &[u8]) {
    drain(input, decode_dr_frame, encode_dr_frame);
}

pub fn nbd_transmission(input: &[u8]) {
    let mut input = BytesMut::from(input);
    loop {
        let before = input.len();
        match nbd::decode_request(&mut input, nbd::MAX_REQUEST_LEN) {
            Ok(Some(request)) => {
                assert!(input.len() < before, "a decoded request consumed nothing");
                if let nbd::Command::Write { data, .. } = &request.command {
                    assert!(
                        data.len() <= nbd::MAX_REQUEST_LEN as usize,
                        "a write over the limit was accepted"
                    );
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

struct AnyExport;

impl ExportCatalog for AnyExport {
    fn lookup(&self, name: &str) -> Option<ExportInfo> {
        (name != "missing").then(|| ExportInfo {
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

/// The first byte picks the TLS mode and how the rest arrives (in pieces
/// of 1 to 64 bytes, as a slow client's reads would), so partial messages
/// and STARTTLS are both exercised.
pub fn nbd_handshake(input: &[u8]) {
    let Some((&control, input)) = input.split_first() else {
        return;
    };
    let mode = [TlsMode::Off, TlsMode::Optional, TlsMode::Required][control as usize % 3];
    let piece = 1 + (control as usize / 3) % 64;
    let mut handshake = ServerHandshake::with_tls(mode);
    let mut buffered = BytesMut::new();
    for chunk in input.chunks(piece) {
        buffered.extend_from_slice(chunk);
        match handshake.handle_input(&mut buffered, &AnyExport) {
            Ok(None) | Ok(Some(nbd::HandshakeOutcome::StartTls)) => {}
            Ok(Some(_)) | Err(_) => return,
        }
        while handshake.poll_transmit().is_some() {}
    }
}

/// A damaged DR journal: the header, then its index read with the entry
/// count it claims and with absurd ones.
pub fn dr_journal(input: &[u8]) {
    if let Ok(Some(header)) = JournalHeader::decode(input) {
        assert_eq!(
            JournalHeader::decode(&header.encode()),
            Ok(Some(header)),
            "a decoded journal header re-encodes unchanged"
        );
        let _ = decode_index(input, header.entries);
    }
    let _ = decode_index(input, (input.len() / 16) as u64);
    let _ = decode_index(input, u64::MAX);
}

/// A damaged `volume.json`: what decodes passes its range checks, so the
/// arithmetic the node does with it cannot panic.
pub fn volume_meta(input: &[u8]) {
    if let Ok(meta) = crate::disk::VolumeMeta::decode(input) {
        assert!(meta.n_chunks() >= 1);
        assert!(meta.n_extents() >= 1);
        assert_eq!(crate::disk::VolumeMeta::decode(&meta.encode()), Ok(meta));
    }
}

/// A damaged `hashes` header, against the chunk size and chunk count the
/// input's last 16 bytes claim.
pub fn hashes_file(input: &[u8]) {
    let Some(split) = input.len().checked_sub(16) else {
        return;
    };
    let (header, claims) = input.split_at(split);
    let chunk_size = u64::from_le_bytes(claims[..8].try_into().expect("8 bytes"));
    let n_chunks = u64::from_le_bytes(claims[8..].try_into().expect("8 bytes")) >> 24;
    let _ = crate::disk::hashes::check_header(header, chunk_size);
    if crate::disk::hashes::check_len(header.len() as u64, n_chunks).is_ok() {
        assert!(header.len() as u64 >= crate::disk::hashes::file_len(n_chunks));
    }
}

/// A damaged activity-log slot: what decodes re-encodes to the same slot
/// contents.
pub fn activity_log(input: &[u8]) {
    use crate::disk::activity_log::{decode_slot, encode_slot};
    if let Some((sequence, marked)) = decode_slot(input) {
        let n_extents = u64::from_le_bytes(input[16..24].try_into().expect("8 bytes"));
        let mut bits = vec![0u64; n_extents.div_ceil(64) as usize];
        for extent in &marked {
            assert!(*extent < n_extents, "a marked extent past the count");
            bits[(*extent / 64) as usize] |= 1 << (extent % 64);
        }
        let slot = encode_slot(sequence, &bits, n_extents).expect("a decoded slot fits");
        assert_eq!(decode_slot(&slot), Some((sequence, marked)));
    }
}

fn round_trip<T>(input: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(request) = serde_json::from_slice::<T>(input) {
        let again: T = serde_json::from_slice(&serde_json::to_vec(&request).expect("serializes"))
            .expect("a re-serialized request parses");
        assert_eq!(again, request, "a request body changed on a round trip");
    }
}

/// A JSON admin request body; the first byte picks which request type
/// (the body the admin API decodes for that route).
pub fn admin_request(input: &[u8]) {
    use crate::{admin, dr, federation};
    let Some((&kind, body)) = input.split_first() else {
        return;
    };
    let decoders: [fn(&[u8]); 16] = [
        round_trip::<admin::CreateVolumeRequest>,
        round_trip::<admin::ResizeVolumeRequest>,
        round_trip::<admin::AttachRequest>,
        round_trip::<admin::VerifyRequest>,
        round_trip::<admin::JoinRequest>,
        round_trip::<admin::JoinTokenRequest>,
        round_trip::<admin::RenewRequest>,
        round_trip::<federation::AddSatelliteRequest>,
        round_trip::<federation::SatelliteJoinRequest>,
        round_trip::<federation::AddGrantRequest>,
        round_trip::<dr::AddPeerRequest>,
        round_trip::<dr::LinkPeerRequest>,
        round_trip::<dr::AcceptPeerRequest>,
        round_trip::<dr::DrLinkRequest>,
        round_trip::<dr::DrPromoteRequest>,
        round_trip::<dr::DrSecondaryRequest>,
    ];
    decoders[kind as usize % decoders.len()](body);
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = admin::valid_volume_name(text);
        let _ = dr::split_token(text);
    }
}

/// Valid inputs for each target: the committed seed corpus
/// (`fuzz/seeds/TARGET/`) and the starting points of this crate's
/// bit-flipping test.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::block::Frame;
    use crate::dr::journal::JournalState;
    use crate::dr::wire::{self as dr_wire, DrFrame};
    use crate::link::{self, LinkFrame};
    use bytes::BufMut;

    let mut seeds = Vec::new();
    let mut frames = BytesMut::new();
    for frame in [
        Frame::TreeRequest {
            seq: 1,
            epoch: 2,
            level: 3,
            indices: vec![4, 5],
        },
        Frame::Hello {
            volume: "v".into(),
            node: "n".into(),
            epoch: 1,
        },
        Frame::TreeResponse {
            seq: 1,
            hashes: vec![[7; 32]],
        },
    ] {
        encode_frame(&frame, &mut frames);
    }
    seeds.push(("block_frame", frames.to_vec()));

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
        encode_link_frame(&frame, &mut links);
    }
    seeds.push(("federation_frame", links.to_vec()));

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
        encode_dr_frame(&frame, &mut drs);
    }
    seeds.push(("dr_frame", drs.to_vec()));

    let mut journal = JournalHeader {
        state: JournalState::Committed,
        chunk_size: 4096,
        point: 7,
        cut_unix_ms: 9,
        entries: 2,
        batch_sum: [3; 32],
    }
    .encode();
    journal.extend_from_slice(&[0; 32]);
    seeds.push(("dr_journal", journal));

    let mut handshake = vec![1u8]; // TLS optional, whole messages of 1 byte: control byte 1
    let mut options = BytesMut::new();
    options.put_u32(nbd::FLAG_C_FIXED_NEWSTYLE);
    for option in [nbd::OPT_LIST, nbd::OPT_INFO, nbd::OPT_GO] {
        options.put_u64(nbd::IHAVEOPT);
        options.put_u32(option);
        options.put_u32(7);
        options.put_slice(&[0, 0, 0, 1, b'x', 0, 0]);
    }
    handshake.extend_from_slice(&options);
    seeds.push(("nbd_handshake", handshake));

    let mut requests = BytesMut::new();
    for (command, length) in [
        (nbd::CMD_WRITE, 4u32),
        (nbd::CMD_READ, 4096),
        (nbd::CMD_FLUSH, 0),
    ] {
        requests.put_u32(nbd::REQUEST_MAGIC);
        requests.put_u16(0);
        requests.put_u16(command);
        requests.put_u64(7);
        requests.put_u64(4096);
        requests.put_u32(length);
        if command == nbd::CMD_WRITE {
            requests.put_slice(b"data");
        }
    }
    seeds.push(("nbd_transmission", requests.to_vec()));

    seeds.push((
        "volume_meta",
        crate::disk::VolumeMeta::new("vol1", 10 << 30).encode(),
    ));
    let mut hashes = crate::disk::hashes::encode_header(256 << 10);
    hashes.extend_from_slice(&(256u64 << 10).to_le_bytes());
    hashes.extend_from_slice(&0u64.to_le_bytes());
    seeds.push(("hashes_file", hashes));
    seeds.push((
        "activity_log",
        crate::disk::activity_log::encode_slot(3, &[0b1011], 4).expect("fits"),
    ));
    for (kind, body) in [
        (0u8, r#"{"name":"db","size_bytes":1073741824,"replicas":1}"#),
        (
            9,
            r#"{"satellite":"edge","kind":"prefix","prefix":"edge-","capacity_bytes":1073741824,"count":2}"#,
        ),
        (13, r#"{"volume":"db","to":"dc2","rpo_secs":30}"#),
    ] {
        let mut seed = vec![kind];
        seed.extend_from_slice(body.as_bytes());
        seeds.push(("admin_request", seed));
    }
    seeds
}
