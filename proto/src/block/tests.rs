use bytes::{BufMut, Bytes, BytesMut};

use super::*;

fn every_frame() -> Vec<Frame> {
    vec![
        Frame::Hello {
            volume: "vol1".into(),
            node: "node-2".into(),
            epoch: 7,
        },
        Frame::Write {
            seq: 1,
            epoch: 7,
            offset: 4096,
            fua: true,
            data: Bytes::from_static(b"some data"),
        },
        Frame::Write {
            seq: 2,
            epoch: 7,
            offset: 0,
            fua: false,
            data: Bytes::new(),
        },
        Frame::WriteZeroes {
            seq: 3,
            epoch: 7,
            offset: 1 << 40,
            length: 1 << 20,
            punch: true,
            fua: false,
        },
        Frame::Flush { seq: 4, epoch: 7 },
        Frame::Ack { seq: 4, error: 0 },
        Frame::Ack { seq: 5, error: 28 },
        Frame::StaleEpoch {
            seq: 6,
            newest_epoch: 9,
        },
        Frame::TreeRequest {
            seq: 7,
            epoch: 7,
            level: 3,
            indices: vec![0, 1, 99],
        },
        Frame::TreeResponse {
            seq: 7,
            hashes: vec![[1; 32], [2; 32], [3; 32]],
        },
        Frame::ChunkRequest {
            seq: 8,
            epoch: 7,
            chunk_idx: 12,
        },
        Frame::ChunkData {
            seq: 8,
            epoch: 7,
            chunk_idx: 12,
            data: Bytes::from(vec![5u8; 1000]),
        },
        Frame::Read {
            seq: 9,
            offset: 1 << 30,
            length: 65536,
        },
        Frame::ReadData {
            seq: 9,
            data: Bytes::from(vec![6u8; 300]),
        },
    ]
}

#[test]
fn every_frame_round_trips_even_split_at_every_byte() {
    let frames = every_frame();
    let mut stream = BytesMut::new();
    for frame in &frames {
        encode_frame(frame, &mut stream);
    }
    let mut input = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in stream.iter() {
        input.put_u8(*byte);
        while let Some(frame) = decode_frame(&mut input).unwrap() {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, frames);
    assert!(input.is_empty());
}

fn header(kind: u8, length: u32) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u32(FRAME_MAGIC);
    out.put_u8(FRAME_VERSION);
    out.put_u8(kind);
    out.put_u16(0);
    out.put_u64(42);
    out.put_u64(1);
    out.put_u32(length);
    out
}

#[test]
fn bad_headers_fail_before_the_payload_arrives() {
    let mut input = header(2, 10);
    input[0] = 0;
    assert!(matches!(
        decode_frame(&mut input),
        Err(ProtoError::BadFrameMagic { .. })
    ));
    let mut input = header(2, 10);
    input[4] = 2;
    assert!(matches!(
        decode_frame(&mut input),
        Err(ProtoError::UnsupportedFrameVersion { version: 2, .. })
    ));
    let mut input = header(77, 0);
    assert!(matches!(
        decode_frame(&mut input),
        Err(ProtoError::UnknownFrameKind { kind: 77 })
    ));
    let mut input = header(2, MAX_FRAME_PAYLOAD + 1);
    assert!(matches!(
        decode_frame(&mut input),
        Err(ProtoError::FrameTooLarge { seq: 42, .. })
    ));
}

#[test]
fn payloads_that_lie_about_their_contents_are_malformed() {
    let cases: Vec<(u8, Vec<u8>)> = vec![
        (1, vec![0, 9, b'x']),          // hello: name longer than the payload
        (2, vec![0, 0, 0]),             // write: no offset
        (3, vec![0; 8]),                // write zeroes: no length
        (5, vec![]),                    // ack: no error code
        (5, vec![0, 0, 0, 0, 9]),       // ack: trailing byte
        (7, vec![0, 0, 0, 0, 3, 0, 0]), // tree request: 3 indices promised, none sent
        (8, vec![255, 255, 255, 255]),  // tree response: 4 billion hashes promised
        (9, vec![1, 2]),                // chunk request: short index
    ];
    for (kind, payload) in cases {
        let mut input = header(kind, payload.len() as u32);
        input.put_slice(&payload);
        assert!(
            matches!(
                decode_frame(&mut input),
                Err(ProtoError::MalformedFrame { seq: 42, .. })
            ),
            "kind {kind} payload {payload:?}"
        );
    }
}

#[test]
fn a_frame_cannot_ask_for_more_than_one_answer_may_hold() {
    let mut out = BytesMut::new();
    encode_frame(
        &Frame::Read {
            seq: 1,
            offset: 0,
            length: 1 << 30,
        },
        &mut out,
    );
    assert!(matches!(
        decode_frame(&mut out),
        Err(ProtoError::FrameTooLarge { seq: 1, .. })
    ));
    let mut out = BytesMut::new();
    encode_frame(
        &Frame::TreeRequest {
            seq: 2,
            epoch: 1,
            level: 0,
            indices: vec![0; MAX_TREE_INDICES + 1],
        },
        &mut out,
    );
    assert!(matches!(
        decode_frame(&mut out),
        Err(ProtoError::MalformedFrame { seq: 2, .. })
    ));
}
