//! DR batch frames: a primary's shipper (on the volume's master node) to a
//! gateway of the peer cluster, one QUIC stream per volume. Sans I/O.
//!
//! The stream opens with `Hello` (the volume, the shipper's DR generation,
//! what the secondary must be) and is answered `Welcome` (the secondary's
//! generation and last applied point, the peer's gateways) or `Refused`
//! (a code, the receiver's generation, a reason; the stream then ends).
//! Then, in order: `HashRequest` → `Hashes` (the secondary's chunk hashes,
//! for a comparison), any number of `Stage` (one extent of the batch, no
//! answer), and `Commit` → `Applied` once the secondary applied the batch
//! atomically. A `Commit` flagged FINAL is a planned promote's last point:
//! the secondary becomes primary at the generation `Applied` names.
//!
//! Every frame has the same 12-byte header:
//! ```text
//! magic "TDRL" (u32) | version (u8) | kind (u8) | flags (u16) | payload length (u32)
//! ```
//! Payloads by kind (integers big-endian):
//! ```text
//! 1 Hello        generation (u64), size (u64), chunk size (u32), replicas (u32),
//!                rpo seconds (u64), volume len (u16) volume,
//!                encryption len (u16) encryption (JSON, 0: none)  flags: ENCRYPTED, ZSTD
//! 2 Welcome      generation (u64), applied point (u64), count (u16) × (len (u16) gateway)
//! 3 Refused      code (u32), generation (u64), reason len (u16) reason
//! 4 HashRequest  first chunk (u64), count (u32)
//! 5 Hashes       first chunk (u64), count × hash (32 bytes)
//! 6 Stage        point (u64), offset (u64), raw length (u32), data flags: COMPRESSED, ZERO
//! 7 Commit       point (u64), cut time (u64, unix ms), extents (u64) flags: FINAL
//! 8 Applied      point (u64), generation (u64)                      flags: HANDOVER
//! ```
//! Every size is checked before anything is allocated: payloads over
//! [`MAX_DR_PAYLOAD`], extents over [`MAX_DR_CHUNK`], hash requests over
//! [`MAX_HASHES`], names over 63 bytes are errors.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtoError;

pub const DR_MAGIC: u32 = 0x5444_524c;
/// The ALPN of a DR stream's connection (the link's is `tether-link/1`).
pub const DR_ALPN: &[u8] = b"tether-dr/1";
pub const DR_FRAME_VERSION: u8 = 1;
pub const DR_HEADER_LEN: usize = 12;
/// Largest chunk a batch carries (the engine's chunks are 256 KiB).
pub const MAX_DR_CHUNK: u32 = 4 << 20;
/// Most hashes one request asks for.
pub const MAX_HASHES: u32 = 8192;
pub const MAX_DR_PAYLOAD: u32 = MAX_DR_CHUNK + 64;
const MAX_NAME_LEN: usize = 63;
const MAX_REASON_LEN: usize = 1024;
const MAX_GATEWAYS: usize = 64;

pub const FLAG_ENCRYPTED: u16 = 1 << 0;
pub const FLAG_ZSTD: u16 = 1 << 1;
pub const FLAG_COMPRESSED: u16 = 1 << 0;
pub const FLAG_ZERO: u16 = 1 << 1;
pub const FLAG_FINAL: u16 = 1 << 0;
pub const FLAG_HANDOVER: u16 = 1 << 0;

/// Why a receiver refused a stream.
pub mod refused {
    /// The receiver knows a newer generation: the sender is fenced.
    pub const NEWER_GENERATION: u32 = 1;
    /// The volume here is not a secondary of the sender (or is fenced).
    pub const NOT_SECONDARY: u32 = 2;
    /// Another stream is receiving this volume (retry shortly).
    pub const BUSY: u32 = 3;
    /// The request is malformed or does not match the secondary.
    pub const INVALID: u32 = 4;
    /// The receiver failed (store, volume): retry.
    pub const FAILED: u32 = 5;
}

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_REFUSED: u8 = 3;
const KIND_HASH_REQUEST: u8 = 4;
const KIND_HASHES: u8 = 5;
const KIND_STAGE: u8 = 6;
const KIND_COMMIT: u8 = 7;
const KIND_APPLIED: u8 = 8;

/// What the secondary must be, and who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub volume: String,
    pub generation: u64,
    pub size_bytes: u64,
    pub chunk_size: u32,
    pub replicas: u32,
    pub rpo_secs: u64,
    pub encrypted: bool,
    pub zstd: bool,
    /// The volume's `admin::EncryptionSpec` as JSON (the data key wrapped
    /// by the user's key; never the key): the secondary is created with it.
    pub encryption: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrFrame {
    Hello(Hello),
    Welcome {
        generation: u64,
        applied_point: u64,
        gateways: Vec<String>,
    },
    Refused {
        code: u32,
        generation: u64,
        reason: String,
    },
    HashRequest {
        first: u64,
        count: u32,
    },
    Hashes {
        first: u64,
        hashes: Vec<[u8; 32]>,
    },
    /// One extent of batch `point` (at byte `offset` of the volume):
    /// zstd-compressed (`compressed`), or all zeros (`zero`, no data), or
    /// as it is.
    Stage {
        point: u64,
        offset: u64,
        raw_len: u32,
        compressed: bool,
        zero: bool,
        data: Bytes,
    },
    Commit {
        point: u64,
        cut_unix_ms: u64,
        chunks: u64,
        final_point: bool,
    },
    Applied {
        point: u64,
        generation: u64,
        handover: bool,
    },
}

fn put_str(out: &mut BytesMut, value: &str, max: usize) {
    let bytes = &value.as_bytes()[..value.len().min(max)];
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

/// Appends one frame to `out`.
pub fn encode_dr_frame(frame: &DrFrame, out: &mut BytesMut) {
    let mut payload = BytesMut::new();
    let (kind, flags) = match frame {
        DrFrame::Hello(hello) => {
            payload.put_u64(hello.generation);
            payload.put_u64(hello.size_bytes);
            payload.put_u32(hello.chunk_size);
            payload.put_u32(hello.replicas);
            payload.put_u64(hello.rpo_secs);
            put_str(&mut payload, &hello.volume, MAX_NAME_LEN);
            put_str(
                &mut payload,
                hello.encryption.as_deref().unwrap_or(""),
                MAX_REASON_LEN,
            );
            let mut flags = 0;
            if hello.encrypted {
                flags |= FLAG_ENCRYPTED;
            }
            if hello.zstd {
                flags |= FLAG_ZSTD;
            }
            (KIND_HELLO, flags)
        }
        DrFrame::Welcome {
            generation,
            applied_point,
            gateways,
        } => {
            payload.put_u64(*generation);
            payload.put_u64(*applied_point);
            let gateways = &gateways[..gateways.len().min(MAX_GATEWAYS)];
            payload.put_u16(gateways.len() as u16);
            for gateway in gateways {
                put_str(&mut payload, gateway, 255);
            }
            (KIND_WELCOME, 0)
        }
        DrFrame::Refused {
            code,
            generation,
            reason,
        } => {
            payload.put_u32(*code);
            payload.put_u64(*generation);
            put_str(&mut payload, reason, MAX_REASON_LEN);
            (KIND_REFUSED, 0)
        }
        DrFrame::HashRequest { first, count } => {
            payload.put_u64(*first);
            payload.put_u32(*count);
            (KIND_HASH_REQUEST, 0)
        }
        DrFrame::Hashes { first, hashes } => {
            payload.put_u64(*first);
            for hash in hashes {
                payload.put_slice(hash);
            }
            (KIND_HASHES, 0)
        }
        DrFrame::Stage {
            point,
            offset,
            raw_len,
            compressed,
            zero,
            data,
        } => {
            payload.put_u64(*point);
            payload.put_u64(*offset);
            payload.put_u32(*raw_len);
            payload.put_slice(data);
            let mut flags = 0;
            if *compressed {
                flags |= FLAG_COMPRESSED;
            }
            if *zero {
                flags |= FLAG_ZERO;
            }
            (KIND_STAGE, flags)
        }
        DrFrame::Commit {
            point,
            cut_unix_ms,
            chunks,
            final_point,
        } => {
            payload.put_u64(*point);
            payload.put_u64(*cut_unix_ms);
            payload.put_u64(*chunks);
            (KIND_COMMIT, if *final_point { FLAG_FINAL } else { 0 })
        }
        DrFrame::Applied {
            point,
            generation,
            handover,
        } => {
            payload.put_u64(*point);
            payload.put_u64(*generation);
            (KIND_APPLIED, if *handover { FLAG_HANDOVER } else { 0 })
        }
    };
    out.reserve(DR_HEADER_LEN + payload.len());
    out.put_u32(DR_MAGIC);
    out.put_u8(DR_FRAME_VERSION);
    out.put_u8(kind);
    out.put_u16(flags);
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
}

/// Takes one frame off the front of `input`, if a whole one is there.
pub fn decode_dr_frame(input: &mut BytesMut) -> Result<Option<DrFrame>, ProtoError> {
    if input.len() < DR_HEADER_LEN {
        return Ok(None);
    }
    let mut header = &input[..DR_HEADER_LEN];
    let magic = header.get_u32();
    let version = header.get_u8();
    let kind = header.get_u8();
    let flags = header.get_u16();
    let length = header.get_u32();
    if magic != DR_MAGIC {
        return Err(ProtoError::BadDrMagic { found: magic });
    }
    if version != DR_FRAME_VERSION {
        return Err(ProtoError::UnsupportedFrameVersion {
            version,
            supported: DR_FRAME_VERSION,
        });
    }
    if !(KIND_HELLO..=KIND_APPLIED).contains(&kind) {
        return Err(ProtoError::UnknownFrameKind { kind });
    }
    if length > MAX_DR_PAYLOAD {
        return Err(ProtoError::FrameTooLarge {
            seq: 0,
            length,
            max: MAX_DR_PAYLOAD,
        });
    }
    if input.len() < DR_HEADER_LEN + length as usize {
        return Ok(None);
    }
    input.advance(DR_HEADER_LEN);
    let mut payload = input.split_to(length as usize).freeze();
    let malformed = |reason| ProtoError::MalformedFrame {
        seq: 0,
        kind,
        reason,
    };
    let need = |payload: &Bytes, bytes: usize, reason| {
        if payload.remaining() < bytes {
            Err(malformed(reason))
        } else {
            Ok(())
        }
    };
    let take_str = |payload: &mut Bytes, max: usize, reason| -> Result<String, ProtoError> {
        need(payload, 2, reason)?;
        let len = payload.get_u16() as usize;
        if len > max {
            return Err(malformed(reason));
        }
        need(payload, len, reason)?;
        String::from_utf8(payload.split_to(len).to_vec()).map_err(|_| malformed(reason))
    };
    let frame = match kind {
        KIND_HELLO => {
            need(&payload, 32, "hello without its fields")?;
            let generation = payload.get_u64();
            let size_bytes = payload.get_u64();
            let chunk_size = payload.get_u32();
            let replicas = payload.get_u32();
            let rpo_secs = payload.get_u64();
            let volume = take_str(&mut payload, MAX_NAME_LEN, "hello with a bad volume name")?;
            let encryption = take_str(
                &mut payload,
                MAX_REASON_LEN,
                "hello with a bad encryption spec",
            )?;
            if chunk_size == 0 || chunk_size > MAX_DR_CHUNK || volume.is_empty() {
                return Err(malformed("hello with a bad chunk size or no volume"));
            }
            DrFrame::Hello(Hello {
                volume,
                generation,
                size_bytes,
                chunk_size,
                replicas,
                rpo_secs,
                encrypted: flags & FLAG_ENCRYPTED != 0,
                zstd: flags & FLAG_ZSTD != 0,
                encryption: (!encryption.is_empty()).then_some(encryption),
            })
        }
        KIND_WELCOME => {
            need(&payload, 18, "welcome without its fields")?;
            let generation = payload.get_u64();
            let applied_point = payload.get_u64();
            let count = payload.get_u16() as usize;
            if count > MAX_GATEWAYS {
                return Err(malformed("welcome with too many gateways"));
            }
            let mut gateways = Vec::with_capacity(count);
            for _ in 0..count {
                gateways.push(take_str(&mut payload, 255, "welcome with a bad gateway")?);
            }
            DrFrame::Welcome {
                generation,
                applied_point,
                gateways,
            }
        }
        KIND_REFUSED => {
            need(&payload, 12, "refusal without its code")?;
            let code = payload.get_u32();
            let generation = payload.get_u64();
            let reason = take_str(&mut payload, MAX_REASON_LEN, "refusal with a bad reason")?;
            DrFrame::Refused {
                code,
                generation,
                reason,
            }
        }
        KIND_HASH_REQUEST => {
            need(&payload, 12, "hash request without its range")?;
            let first = payload.get_u64();
            let count = payload.get_u32();
            if count == 0 || count > MAX_HASHES {
                return Err(malformed("hash request for too many hashes"));
            }
            DrFrame::HashRequest { first, count }
        }
        KIND_HASHES => {
            need(&payload, 8, "hashes without their first chunk")?;
            let first = payload.get_u64();
            if !payload.remaining().is_multiple_of(32)
                || payload.remaining() / 32 > MAX_HASHES as usize
            {
                return Err(malformed("hashes not a whole number of 32-byte hashes"));
            }
            let hashes = payload
                .chunks_exact(32)
                .map(|hash| hash.try_into().expect("32-byte chunks"))
                .collect();
            DrFrame::Hashes { first, hashes }
        }
        KIND_STAGE => {
            need(&payload, 20, "stage without its extent")?;
            let point = payload.get_u64();
            let offset = payload.get_u64();
            let raw_len = payload.get_u32();
            let compressed = flags & FLAG_COMPRESSED != 0;
            let zero = flags & FLAG_ZERO != 0;
            if raw_len == 0 || raw_len > MAX_DR_CHUNK {
                return Err(malformed("stage with a bad extent length"));
            }
            if zero && payload.has_remaining() {
                return Err(malformed("a zero extent carries data"));
            }
            if !zero && !compressed && payload.remaining() != raw_len as usize {
                return Err(malformed("a raw extent's data is not its length"));
            }
            DrFrame::Stage {
                point,
                offset,
                raw_len,
                compressed,
                zero,
                data: payload.split_off(0),
            }
        }
        KIND_COMMIT => {
            need(&payload, 24, "commit without its point")?;
            DrFrame::Commit {
                point: payload.get_u64(),
                cut_unix_ms: payload.get_u64(),
                chunks: payload.get_u64(),
                final_point: flags & FLAG_FINAL != 0,
            }
        }
        KIND_APPLIED => {
            need(&payload, 16, "applied without its point")?;
            DrFrame::Applied {
                point: payload.get_u64(),
                generation: payload.get_u64(),
                handover: flags & FLAG_HANDOVER != 0,
            }
        }
        _ => unreachable!("kind range checked above"),
    };
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: DrFrame) {
        let mut out = BytesMut::new();
        encode_dr_frame(&frame, &mut out);
        let whole = out.clone();
        // Byte by byte: nothing decodes before the frame is whole.
        let mut partial = BytesMut::new();
        for byte in &whole[..whole.len() - 1] {
            partial.put_u8(*byte);
            assert_eq!(decode_dr_frame(&mut partial).unwrap(), None);
        }
        assert_eq!(decode_dr_frame(&mut out).unwrap(), Some(frame));
        assert!(out.is_empty());
    }

    #[test]
    fn every_frame_round_trips() {
        round_trip(DrFrame::Hello(Hello {
            volume: "db".into(),
            generation: 3,
            size_bytes: 1 << 30,
            chunk_size: 256 << 10,
            replicas: 2,
            rpo_secs: 30,
            encrypted: true,
            zstd: true,
            encryption: Some("{}".into()),
        }));
        round_trip(DrFrame::Welcome {
            generation: 3,
            applied_point: 9,
            gateways: vec!["127.0.0.1:7443".into(), "[::1]:7444".into()],
        });
        round_trip(DrFrame::Refused {
            code: refused::NEWER_GENERATION,
            generation: 4,
            reason: "fenced".into(),
        });
        round_trip(DrFrame::HashRequest {
            first: 10,
            count: 100,
        });
        round_trip(DrFrame::Hashes {
            first: 10,
            hashes: vec![[7; 32], [9; 32]],
        });
        round_trip(DrFrame::Stage {
            point: 5,
            offset: 77 << 12,
            raw_len: 4,
            compressed: false,
            zero: false,
            data: Bytes::from_static(b"abcd"),
        });
        round_trip(DrFrame::Stage {
            point: 5,
            offset: 78 << 12,
            raw_len: 4096,
            compressed: false,
            zero: true,
            data: Bytes::new(),
        });
        round_trip(DrFrame::Commit {
            point: 5,
            cut_unix_ms: 1234,
            chunks: 2,
            final_point: true,
        });
        round_trip(DrFrame::Applied {
            point: 5,
            generation: 3,
            handover: true,
        });
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused_before_allocation() {
        let mut out = BytesMut::new();
        out.put_u32(DR_MAGIC);
        out.put_u8(DR_FRAME_VERSION);
        out.put_u8(KIND_STAGE);
        out.put_u16(0);
        out.put_u32(MAX_DR_PAYLOAD + 1);
        assert!(matches!(
            decode_dr_frame(&mut out),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        let mut request = BytesMut::new();
        encode_dr_frame(
            &DrFrame::HashRequest {
                first: 0,
                count: MAX_HASHES + 1,
            },
            &mut request,
        );
        assert!(decode_dr_frame(&mut request).is_err());
        let mut stage = BytesMut::new();
        encode_dr_frame(
            &DrFrame::Stage {
                point: 1,
                offset: 4096,
                raw_len: 8,
                compressed: false,
                zero: false,
                data: Bytes::from_static(b"short"),
            },
            &mut stage,
        );
        assert!(decode_dr_frame(&mut stage).is_err());
        let mut bad_magic = BytesMut::from(&b"TFEDxxxxxxxxxxxx"[..]);
        assert!(matches!(
            decode_dr_frame(&mut bad_magic),
            Err(ProtoError::BadDrMagic { .. })
        ));
    }
}
