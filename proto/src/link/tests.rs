use bytes::{BufMut, Bytes, BytesMut};

use super::*;

fn every_frame() -> Vec<LinkFrame> {
    vec![
        LinkFrame::Hello {
            min_version: 1,
            max_version: 3,
            features: FEATURE_ZSTD,
            volume: "db".into(),
        },
        LinkFrame::Welcome(Welcome {
            version: 1,
            features: FEATURE_ZSTD,
            size_bytes: 1 << 40,
            volume_flags: VOLUME_READ_ONLY,
            max_request_bytes: MAX_IO_BYTES,
            min_block_bytes: 512,
            max_in_flight: 128,
            max_in_flight_bytes: 64 << 20,
        }),
        LinkFrame::Refused {
            code: refusal::NOT_GRANTED,
            reason: "satellite edge has no grant for volume db".into(),
        },
        LinkFrame::Read {
            id: 1,
            offset: 4096,
            length: 1 << 20,
        },
        LinkFrame::Write {
            id: 2,
            offset: 0,
            fua: true,
            data: Payload::Raw(Bytes::from_static(b"plain")),
        },
        LinkFrame::Write {
            id: 3,
            offset: 512,
            fua: false,
            data: Payload::Compressed {
                raw_len: 65536,
                data: Bytes::from_static(b"zstd bytes"),
            },
        },
        LinkFrame::WriteZeroes {
            id: 4,
            offset: 1 << 30,
            length: 1 << 20,
            fua: false,
            no_hole: true,
        },
        LinkFrame::Trim {
            id: 5,
            offset: 0,
            length: 4096,
            fua: true,
        },
        LinkFrame::Flush { id: 6 },
        LinkFrame::Done { id: 6, error: 0 },
        LinkFrame::Done { id: 7, error: 5 },
        LinkFrame::Data {
            id: 1,
            data: Payload::Raw(Bytes::from(vec![7u8; 1000])),
        },
        LinkFrame::Data {
            id: 8,
            data: Payload::Compressed {
                raw_len: 4096,
                data: Bytes::from_static(b"small"),
            },
        },
    ]
}

#[test]
fn every_frame_round_trips_even_split_at_every_byte() {
    let mut stream = BytesMut::new();
    for frame in every_frame() {
        encode_link_frame(&frame, &mut stream);
    }
    let whole = stream.clone().freeze();
    let mut decoded = Vec::new();
    while let Some(frame) = decode_link_frame(&mut stream).unwrap() {
        decoded.push(frame);
    }
    assert_eq!(decoded, every_frame());
    assert!(stream.is_empty());

    let mut input = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in whole.iter() {
        input.put_u8(*byte);
        while let Some(frame) = decode_link_frame(&mut input).unwrap() {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, every_frame());
}

fn header(kind: u8, flags: u16, id: u64, length: u32) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u32(LINK_MAGIC);
    out.put_u8(LINK_FRAME_VERSION);
    out.put_u8(kind);
    out.put_u16(flags);
    out.put_u64(id);
    out.put_u32(length);
    out
}

#[test]
fn sizes_are_bounded_before_anything_is_held() {
    // A payload length over the limit fails on the header alone.
    let mut huge = header(KIND_WRITE, 0, 1, MAX_LINK_PAYLOAD + 1);
    assert!(matches!(
        decode_link_frame(&mut huge),
        Err(ProtoError::FrameTooLarge { .. })
    ));
    // A read asking for more than one request may carry.
    let mut read = header(KIND_READ, 0, 2, 12);
    read.put_u64(0);
    read.put_u32(MAX_IO_BYTES + 1);
    assert!(matches!(
        decode_link_frame(&mut read),
        Err(ProtoError::FrameTooLarge { .. })
    ));
    // A compressed block claiming to expand past the limit (a zip bomb).
    let mut bomb = header(KIND_WRITE, FLAG_COMPRESSED, 3, 8 + 4 + 3);
    bomb.put_u64(0);
    bomb.put_u32(MAX_IO_BYTES + 1);
    bomb.put_slice(b"abc");
    assert!(matches!(
        decode_link_frame(&mut bomb),
        Err(ProtoError::FrameTooLarge { .. })
    ));
    // A volume name longer than any volume's.
    let name = "v".repeat(MAX_NAME_LEN + 1);
    let mut hello = header(KIND_HELLO, 0, 0, 6 + 2 + name.len() as u32);
    hello.put_u8(1);
    hello.put_u8(1);
    hello.put_u32(0);
    hello.put_u16(name.len() as u16);
    hello.put_slice(name.as_bytes());
    assert!(matches!(
        decode_link_frame(&mut hello),
        Err(ProtoError::MalformedFrame { .. })
    ));
}

#[test]
fn garbled_headers_and_payloads_are_errors() {
    let mut magic = header(KIND_FLUSH, 0, 1, 0);
    magic[0] = b'X';
    assert!(matches!(
        decode_link_frame(&mut magic),
        Err(ProtoError::BadLinkMagic { .. })
    ));
    let mut kind = header(99, 0, 1, 0);
    assert!(matches!(
        decode_link_frame(&mut kind),
        Err(ProtoError::UnknownFrameKind { kind: 99 })
    ));
    let mut trailing = header(KIND_FLUSH, 0, 1, 1);
    trailing.put_u8(0);
    assert!(matches!(
        decode_link_frame(&mut trailing),
        Err(ProtoError::MalformedFrame { .. })
    ));
    let mut short = header(KIND_WRITE_ZEROES, 0, 1, 8);
    short.put_u64(0);
    assert!(matches!(
        decode_link_frame(&mut short),
        Err(ProtoError::MalformedFrame { .. })
    ));
}

#[test]
fn versions_meet_at_the_highest_common_one() {
    assert_eq!(negotiate_version(1, 1), Some(1));
    assert_eq!(negotiate_version(1, 9), Some(LINK_VERSION_MAX));
    assert_eq!(negotiate_version(LINK_VERSION_MAX + 1, 9), None);
    assert_eq!(negotiate_version(0, 0), None);
}
