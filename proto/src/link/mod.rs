//! The federation link: frames between a satellite and a gateway, one QUIC
//! stream per opened volume. Sans I/O, like [`crate::block`].
//!
//! A stream opens with `Hello` (the volume, the versions and features the
//! satellite speaks) and is answered `Welcome` (the version and features
//! chosen, the volume's size and limits) or `Refused` (a code and a reason;
//! the stream then ends). After that the stream carries only requests about
//! that volume, each with an id the satellite picks, answered out of order
//! by `Done` or `Data` with the same id: a satellite cannot name another
//! volume mid-stream, because nothing after `Hello` names one.
//!
//! Every frame has the same 20-byte header:
//! ```text
//! magic "TFED" (u32) | version (u8) | kind (u8) | flags (u16) |
//! id (u64) | payload length (u32)                       then the payload
//! ```
//! Payloads by kind (integers big-endian):
//! ```text
//! 1 Hello        min version (u8), max version (u8), features (u32), volume len (u16) volume
//! 2 Welcome      version (u8), features (u32), size (u64), volume flags (u16),
//!                max request (u32), min block (u32), max in flight (u32), max in-flight bytes (u32)
//! 3 Refused      code (u32), reason len (u16) reason
//! 4 Read         offset (u64), length (u32)
//! 5 Write        offset (u64), [raw length (u32) if COMPRESSED], data      flags: FUA, COMPRESSED
//! 6 WriteZeroes  offset (u64), length (u64)                               flags: FUA, NO_HOLE
//! 7 Trim         offset (u64), length (u64)                               flags: FUA
//! 8 Flush        (empty)
//! 9 Done         error (u32: 0, or an errno as NBD carries them)
//! 10 Data        [raw length (u32) if COMPRESSED], data                   flags: COMPRESSED
//! ```
//! Sizes are bounded before anything is allocated: a payload over
//! [`MAX_LINK_PAYLOAD`], a read or (uncompressed) write over
//! [`MAX_IO_BYTES`], a volume name over 63 bytes is an error.
//! Compression (zstd, when both sides offer [`FEATURE_ZSTD`]) is per block
//! and optional: a block that would not shrink goes as it is. The codec
//! carries the flag and the raw length; the endpoints compress.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtoError;

pub const LINK_MAGIC: u32 = 0x5446_4544;
/// The ALPN both ends of a link speak (QUIC requires one).
pub const LINK_ALPN: &[u8] = b"tether-link/1";
/// The largest UDP payload path-MTU discovery tries on a link (jumbo
/// frames, common between datacentres); it settles on what the path carries.
/// Larger datagrams mean fewer packets to seal, send and acknowledge.
pub const LINK_MTU_UPPER_BOUND: u16 = 8952;
/// QUIC close codes a gateway ends a session with.
pub mod close {
    pub const SHUTDOWN: u32 = 0;
    /// Not a satellite of this cluster.
    pub const REFUSED: u32 = 1;
    /// The satellite was removed.
    pub const REVOKED: u32 = 2;
    /// The satellite broke the protocol.
    pub const PROTOCOL: u32 = 3;
}
/// The frame header's own version (the layout above).
pub const LINK_FRAME_VERSION: u8 = 1;
/// Link protocol versions this build speaks (negotiated in Hello/Welcome).
pub const LINK_VERSION_MIN: u8 = 1;
pub const LINK_VERSION_MAX: u8 = 1;
pub const LINK_HEADER_LEN: usize = 20;
/// Largest request or answer: what NBD allows one request.
pub const MAX_IO_BYTES: u32 = 32 * 1024 * 1024;
/// Largest payload: one I/O and its fields.
pub const MAX_LINK_PAYLOAD: u32 = MAX_IO_BYTES + 64;
/// Longest volume name (the admin API's limit) and refusal reason.
pub const MAX_NAME_LEN: usize = 63;
pub const MAX_REASON_LEN: usize = 1024;

/// Per-block zstd on Write and Data.
pub const FEATURE_ZSTD: u32 = 1 << 0;

pub const FLAG_FUA: u16 = 1 << 0;
pub const FLAG_COMPRESSED: u16 = 1 << 1;
pub const FLAG_NO_HOLE: u16 = 1 << 2;

/// Volume flags in Welcome.
pub const VOLUME_READ_ONLY: u16 = 1 << 0;
/// Encrypted at rest: the satellite must hold the data key to serve it.
pub const VOLUME_ENCRYPTED: u16 = 1 << 1;

/// Why a gateway refused a Hello.
pub mod refusal {
    /// The satellite's grants do not cover the volume (or it does not exist:
    /// the two are not told apart, so names cannot be probed).
    pub const NOT_GRANTED: u32 = 1;
    /// The satellite was removed.
    pub const REVOKED: u32 = 2;
    /// No protocol version in common.
    pub const VERSION: u32 = 3;
    /// The gateway is at its limit of sessions or streams; try another.
    pub const BUSY: u32 = 4;
    /// The volume has no master now (and did not get one in time).
    pub const UNAVAILABLE: u32 = 5;
}

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_REFUSED: u8 = 3;
const KIND_READ: u8 = 4;
const KIND_WRITE: u8 = 5;
const KIND_WRITE_ZEROES: u8 = 6;
const KIND_TRIM: u8 = 7;
const KIND_FLUSH: u8 = 8;
const KIND_DONE: u8 = 9;
const KIND_DATA: u8 = 10;

/// A block as it travels: as is, or zstd-compressed with its raw length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Raw(Bytes),
    Compressed { raw_len: u32, data: Bytes },
}

impl Payload {
    /// Bytes on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Payload::Raw(data) | Payload::Compressed { data, .. } => data.len(),
        }
    }

    /// Bytes once decompressed.
    pub fn raw_len(&self) -> usize {
        match self {
            Payload::Raw(data) => data.len(),
            Payload::Compressed { raw_len, .. } => *raw_len as usize,
        }
    }
}

/// What a Welcome tells the satellite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub version: u8,
    pub features: u32,
    pub size_bytes: u64,
    pub volume_flags: u16,
    pub max_request_bytes: u32,
    pub min_block_bytes: u32,
    /// Requests the satellite may have outstanding on this stream ...
    pub max_in_flight: u32,
    /// ... and bytes (write payloads and read answers) they may carry.
    pub max_in_flight_bytes: u32,
}

/// One link frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkFrame {
    Hello {
        min_version: u8,
        max_version: u8,
        features: u32,
        volume: String,
    },
    Welcome(Welcome),
    Refused {
        code: u32,
        reason: String,
    },
    Read {
        id: u64,
        offset: u64,
        length: u32,
    },
    Write {
        id: u64,
        offset: u64,
        fua: bool,
        data: Payload,
    },
    WriteZeroes {
        id: u64,
        offset: u64,
        length: u64,
        fua: bool,
        no_hole: bool,
    },
    Trim {
        id: u64,
        offset: u64,
        length: u64,
        fua: bool,
    },
    Flush {
        id: u64,
    },
    Done {
        id: u64,
        error: u32,
    },
    Data {
        id: u64,
        data: Payload,
    },
}

impl LinkFrame {
    /// The request id (0 for the opening frames).
    pub fn id(&self) -> u64 {
        match self {
            LinkFrame::Hello { .. } | LinkFrame::Welcome(_) | LinkFrame::Refused { .. } => 0,
            LinkFrame::Read { id, .. }
            | LinkFrame::Write { id, .. }
            | LinkFrame::WriteZeroes { id, .. }
            | LinkFrame::Trim { id, .. }
            | LinkFrame::Flush { id }
            | LinkFrame::Done { id, .. }
            | LinkFrame::Data { id, .. } => *id,
        }
    }

    /// What taking this request makes the gateway hold: the write's data
    /// (decompressed) or the read's answer. Charged before it runs.
    pub fn held_bytes(&self) -> u64 {
        match self {
            LinkFrame::Write { data, .. } => data.raw_len() as u64,
            LinkFrame::Read { length, .. } => *length as u64,
            _ => 0,
        }
    }

    /// Whether this is a request a satellite may send after Welcome.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            LinkFrame::Read { .. }
                | LinkFrame::Write { .. }
                | LinkFrame::WriteZeroes { .. }
                | LinkFrame::Trim { .. }
                | LinkFrame::Flush { .. }
        )
    }
}

/// Appends one frame to `out`.
pub fn encode_link_frame(frame: &LinkFrame, out: &mut BytesMut) {
    let mut payload = BytesMut::new();
    let put_payload = |payload: &mut BytesMut, data: &Payload| -> u16 {
        match data {
            Payload::Raw(data) => {
                payload.put_slice(data);
                0
            }
            Payload::Compressed { raw_len, data } => {
                payload.put_u32(*raw_len);
                payload.put_slice(data);
                FLAG_COMPRESSED
            }
        }
    };
    let fua_flag = |fua: bool| if fua { FLAG_FUA } else { 0 };
    let (kind, flags, id) = match frame {
        LinkFrame::Hello {
            min_version,
            max_version,
            features,
            volume,
        } => {
            payload.put_u8(*min_version);
            payload.put_u8(*max_version);
            payload.put_u32(*features);
            put_string(&mut payload, volume);
            (KIND_HELLO, 0, 0)
        }
        LinkFrame::Welcome(welcome) => {
            payload.put_u8(welcome.version);
            payload.put_u32(welcome.features);
            payload.put_u64(welcome.size_bytes);
            payload.put_u16(welcome.volume_flags);
            payload.put_u32(welcome.max_request_bytes);
            payload.put_u32(welcome.min_block_bytes);
            payload.put_u32(welcome.max_in_flight);
            payload.put_u32(welcome.max_in_flight_bytes);
            (KIND_WELCOME, 0, 0)
        }
        LinkFrame::Refused { code, reason } => {
            payload.put_u32(*code);
            put_string(&mut payload, reason);
            (KIND_REFUSED, 0, 0)
        }
        LinkFrame::Read { id, offset, length } => {
            payload.put_u64(*offset);
            payload.put_u32(*length);
            (KIND_READ, 0, *id)
        }
        LinkFrame::Write {
            id,
            offset,
            fua,
            data,
        } => {
            payload.put_u64(*offset);
            let compressed = put_payload(&mut payload, data);
            (KIND_WRITE, fua_flag(*fua) | compressed, *id)
        }
        LinkFrame::WriteZeroes {
            id,
            offset,
            length,
            fua,
            no_hole,
        } => {
            payload.put_u64(*offset);
            payload.put_u64(*length);
            let no_hole = if *no_hole { FLAG_NO_HOLE } else { 0 };
            (KIND_WRITE_ZEROES, fua_flag(*fua) | no_hole, *id)
        }
        LinkFrame::Trim {
            id,
            offset,
            length,
            fua,
        } => {
            payload.put_u64(*offset);
            payload.put_u64(*length);
            (KIND_TRIM, fua_flag(*fua), *id)
        }
        LinkFrame::Flush { id } => (KIND_FLUSH, 0, *id),
        LinkFrame::Done { id, error } => {
            payload.put_u32(*error);
            (KIND_DONE, 0, *id)
        }
        LinkFrame::Data { id, data } => {
            let compressed = put_payload(&mut payload, data);
            (KIND_DATA, compressed, *id)
        }
    };
    out.reserve(LINK_HEADER_LEN + payload.len());
    out.put_u32(LINK_MAGIC);
    out.put_u8(LINK_FRAME_VERSION);
    out.put_u8(kind);
    out.put_u16(flags);
    out.put_u64(id);
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
}

fn put_string(out: &mut BytesMut, value: &str) {
    let bytes = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}

/// Decodes one frame from the front of `input`; `Ok(None)`: more bytes are
/// needed and nothing was consumed. A bad header fails before its payload
/// is waited for.
pub fn decode_link_frame(input: &mut BytesMut) -> Result<Option<LinkFrame>, ProtoError> {
    if input.len() < LINK_HEADER_LEN {
        return Ok(None);
    }
    let mut header = &input[..LINK_HEADER_LEN];
    let magic = header.get_u32();
    let version = header.get_u8();
    let kind = header.get_u8();
    let flags = header.get_u16();
    let id = header.get_u64();
    let length = header.get_u32();
    if magic != LINK_MAGIC {
        return Err(ProtoError::BadLinkMagic { found: magic });
    }
    if version != LINK_FRAME_VERSION {
        return Err(ProtoError::UnsupportedFrameVersion {
            version,
            supported: LINK_FRAME_VERSION,
        });
    }
    if !(KIND_HELLO..=KIND_DATA).contains(&kind) {
        return Err(ProtoError::UnknownFrameKind { kind });
    }
    if length > MAX_LINK_PAYLOAD {
        return Err(ProtoError::FrameTooLarge {
            seq: id,
            length,
            max: MAX_LINK_PAYLOAD,
        });
    }
    if input.len() < LINK_HEADER_LEN + length as usize {
        return Ok(None);
    }
    input.advance(LINK_HEADER_LEN);
    let mut payload = input.split_to(length as usize).freeze();
    let malformed = |reason| ProtoError::MalformedFrame {
        seq: id,
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
    let too_large = |length: u64| ProtoError::FrameTooLarge {
        seq: id,
        length: length.min(u32::MAX as u64) as u32,
        max: MAX_IO_BYTES,
    };
    let fua = flags & FLAG_FUA != 0;
    let take_payload = |payload: &mut Bytes| -> Result<Payload, ProtoError> {
        if flags & FLAG_COMPRESSED == 0 {
            let data = payload.split_off(0);
            if data.len() > MAX_IO_BYTES as usize {
                return Err(too_large(data.len() as u64));
            }
            return Ok(Payload::Raw(data));
        }
        need(payload, 4, "compressed block without its raw length")?;
        let raw_len = payload.get_u32();
        if raw_len > MAX_IO_BYTES {
            return Err(too_large(raw_len as u64));
        }
        Ok(Payload::Compressed {
            raw_len,
            data: payload.split_off(0),
        })
    };
    let frame = match kind {
        KIND_HELLO => {
            need(&payload, 6, "hello without versions and features")?;
            let (min_version, max_version) = (payload.get_u8(), payload.get_u8());
            let features = payload.get_u32();
            let volume = get_string(&mut payload, MAX_NAME_LEN)
                .ok_or_else(|| malformed("bad volume name"))?;
            LinkFrame::Hello {
                min_version,
                max_version,
                features,
                volume,
            }
        }
        KIND_WELCOME => {
            need(&payload, 31, "welcome shorter than its fields")?;
            LinkFrame::Welcome(Welcome {
                version: payload.get_u8(),
                features: payload.get_u32(),
                size_bytes: payload.get_u64(),
                volume_flags: payload.get_u16(),
                max_request_bytes: payload.get_u32(),
                min_block_bytes: payload.get_u32(),
                max_in_flight: payload.get_u32(),
                max_in_flight_bytes: payload.get_u32(),
            })
        }
        KIND_REFUSED => {
            need(&payload, 4, "refusal without a code")?;
            let code = payload.get_u32();
            let reason = get_string(&mut payload, MAX_REASON_LEN)
                .ok_or_else(|| malformed("bad refusal reason"))?;
            LinkFrame::Refused { code, reason }
        }
        KIND_READ => {
            need(&payload, 12, "read without offset and length")?;
            let (offset, length) = (payload.get_u64(), payload.get_u32());
            if length > MAX_IO_BYTES {
                return Err(too_large(length as u64));
            }
            LinkFrame::Read { id, offset, length }
        }
        KIND_WRITE => {
            need(&payload, 8, "write without an offset")?;
            let offset = payload.get_u64();
            LinkFrame::Write {
                id,
                offset,
                fua,
                data: take_payload(&mut payload)?,
            }
        }
        KIND_WRITE_ZEROES | KIND_TRIM => {
            need(&payload, 16, "zeroing without offset and length")?;
            let (offset, length) = (payload.get_u64(), payload.get_u64());
            if kind == KIND_TRIM {
                LinkFrame::Trim {
                    id,
                    offset,
                    length,
                    fua,
                }
            } else {
                LinkFrame::WriteZeroes {
                    id,
                    offset,
                    length,
                    fua,
                    no_hole: flags & FLAG_NO_HOLE != 0,
                }
            }
        }
        KIND_FLUSH => LinkFrame::Flush { id },
        KIND_DONE => {
            need(&payload, 4, "done without an error code")?;
            LinkFrame::Done {
                id,
                error: payload.get_u32(),
            }
        }
        KIND_DATA => LinkFrame::Data {
            id,
            data: take_payload(&mut payload)?,
        },
        _ => unreachable!("kind range checked above"),
    };
    if payload.has_remaining() {
        return Err(malformed("trailing bytes"));
    }
    Ok(Some(frame))
}

fn get_string(payload: &mut Bytes, max: usize) -> Option<String> {
    if payload.remaining() < 2 {
        return None;
    }
    let length = payload.get_u16() as usize;
    if length > max || payload.remaining() < length {
        return None;
    }
    String::from_utf8(payload.split_to(length).to_vec()).ok()
}

/// The version both sides speak, if any: the highest in both ranges.
pub fn negotiate_version(min_version: u8, max_version: u8) -> Option<u8> {
    let high = max_version.min(LINK_VERSION_MAX);
    (high >= min_version.max(LINK_VERSION_MIN)).then_some(high)
}

#[cfg(test)]
mod tests;
