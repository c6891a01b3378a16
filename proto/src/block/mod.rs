//! Tether's node-to-node block frames: how a master ships writes to its
//! replicas, and how two copies run Delta Sync. Sans I/O: bytes in, frames
//! out, so the codec is fuzzable and testable without sockets; the transport
//! (TCP now, mutual TLS and QUIC later) owns the stream.
//!
//! Every frame has the same 28-byte header:
//! ```text
//! magic "TBLK" (u32) | version (u8) | kind (u8) | flags (u16) |
//! seq (u64) | epoch (u64) | payload length (u32)        then the payload
//! ```
//! All integers are big-endian. `seq` pairs a request with its answer;
//! `epoch` is the fencing token: a replica refuses (with [`Frame::StaleEpoch`])
//! any frame whose epoch is older than the newest it has seen.
//!
//! Payloads by kind:
//! ```text
//! 1 Hello         volume len (u16) volume, node len (u16) node
//! 2 Write         offset (u64), data                       flags: FUA
//! 3 WriteZeroes   offset (u64), length (u64)               flags: FUA, PUNCH
//! 4 Flush         (empty)
//! 5 Ack           error (u32, 0 = done; an errno otherwise)
//! 6 StaleEpoch    (empty; the header's epoch is the newest the replica has seen)
//! 7 TreeRequest   level (u8), count (u32), count × node index (u64)
//! 8 TreeResponse  count (u32), count × hash (32 bytes)
//! 9 ChunkRequest  chunk index (u64)
//! 10 ChunkData    chunk index (u64), data
//! 11 Read         offset (u64), length (u32)
//! 12 ReadData     data
//! 13 HashRequest  first chunk (u64), count (u32)           answered by TreeResponse
//! ```
//!
//! A `Hello` with epoch 0 opens a *client* stream: a presenting node sends
//! its consumers' requests to the volume's master (Read/Write/WriteZeroes/
//! Flush, answered by ReadData/Ack, or StaleEpoch when the receiver is not
//! the master). A `Hello` with a non-zero epoch opens a *replication* stream
//! from a master to one of its replicas.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtoError;

mod op;
pub use op::BlockOp;

pub const FRAME_MAGIC: u32 = 0x5442_4c4b;
pub const FRAME_VERSION: u8 = 1;
pub const FRAME_HEADER_LEN: usize = 28;
/// Largest payload: a 32 MiB write or chunk, with room to spare.
pub const MAX_FRAME_PAYLOAD: u32 = 64 * 1024 * 1024;
/// Largest `Read` a frame may ask for: what NBD allows a request, so a peer
/// cannot make a node allocate more for one answer.
pub const MAX_READ_BYTES: u32 = 32 * 1024 * 1024;
/// Most hash-tree nodes one `TreeRequest` may ask for (a 2 MiB answer).
pub const MAX_TREE_INDICES: usize = 65_536;

/// A gateway's DR receiver opens its client streams as `GATEWAY` plus
/// this: the master admits its writes to a secondary, and no one else's.
pub const DR_APPLY_SUFFIX: &str = "+dr";

pub const FLAG_FUA: u16 = 1 << 0;
pub const FLAG_PUNCH: u16 = 1 << 1;

const KIND_HELLO: u8 = 1;
const KIND_WRITE: u8 = 2;
const KIND_WRITE_ZEROES: u8 = 3;
const KIND_FLUSH: u8 = 4;
const KIND_ACK: u8 = 5;
const KIND_STALE_EPOCH: u8 = 6;
const KIND_TREE_REQUEST: u8 = 7;
const KIND_TREE_RESPONSE: u8 = 8;
const KIND_CHUNK_REQUEST: u8 = 9;
const KIND_CHUNK_DATA: u8 = 10;
const KIND_READ: u8 = 11;
const KIND_READ_DATA: u8 = 12;
const KIND_HASH_REQUEST: u8 = 13;

/// One block frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream: which volume, from which node, at which epoch.
    Hello {
        volume: String,
        node: String,
        epoch: u64,
    },
    Write {
        seq: u64,
        epoch: u64,
        offset: u64,
        fua: bool,
        data: Bytes,
    },
    WriteZeroes {
        seq: u64,
        epoch: u64,
        offset: u64,
        length: u64,
        punch: bool,
        fua: bool,
    },
    /// A barrier: acknowledged once everything acknowledged before it is durable.
    Flush {
        seq: u64,
        epoch: u64,
    },
    Ack {
        seq: u64,
        error: u32,
    },
    /// The refusal of a frame from an older epoch.
    StaleEpoch {
        seq: u64,
        newest_epoch: u64,
    },
    /// Delta Sync: the hashes of these nodes of one hash-tree level, please.
    TreeRequest {
        seq: u64,
        epoch: u64,
        level: u8,
        indices: Vec<u64>,
    },
    TreeResponse {
        seq: u64,
        hashes: Vec<[u8; 32]>,
    },
    ChunkRequest {
        seq: u64,
        epoch: u64,
        chunk_idx: u64,
    },
    ChunkData {
        seq: u64,
        epoch: u64,
        chunk_idx: u64,
        data: Bytes,
    },
    /// A presenting node's read, sent to the master.
    Read {
        seq: u64,
        offset: u64,
        length: u32,
    },
    /// The data of a successful read (a failed one is answered by an Ack with its errno).
    ReadData {
        seq: u64,
        data: Bytes,
    },
    /// A client's request for the master's settled chunk hashes `first ..
    /// first + count` (a DR comparison), answered by `TreeResponse`.
    HashRequest {
        seq: u64,
        first: u64,
        count: u32,
    },
}

impl Frame {
    /// The bytes taking this frame makes its receiver hold: its payload,
    /// and what its answer will carry (a read's data, a tree answer's hashes).
    /// Receivers charge it against their budgets before running the frame.
    pub fn held_bytes(&self) -> u64 {
        match self {
            Frame::Write { data, .. } | Frame::ChunkData { data, .. } => data.len() as u64,
            Frame::Read { length, .. } => *length as u64,
            Frame::TreeRequest { indices, .. } => indices.len() as u64 * (8 + 32),
            Frame::HashRequest { count, .. } => *count as u64 * 32,
            _ => 0,
        }
    }

    /// The sequence number pairing a request with its answer (0 for Hello).
    pub fn seq(&self) -> u64 {
        match self {
            Frame::Hello { .. } => 0,
            Frame::Write { seq, .. }
            | Frame::WriteZeroes { seq, .. }
            | Frame::Flush { seq, .. }
            | Frame::Ack { seq, .. }
            | Frame::StaleEpoch { seq, .. }
            | Frame::TreeRequest { seq, .. }
            | Frame::TreeResponse { seq, .. }
            | Frame::ChunkRequest { seq, .. }
            | Frame::ChunkData { seq, .. }
            | Frame::Read { seq, .. }
            | Frame::ReadData { seq, .. }
            | Frame::HashRequest { seq, .. } => *seq,
        }
    }

    /// The same frame under another sequence number (a transport numbers
    /// requests as it sends them).
    pub fn with_seq(mut self, new_seq: u64) -> Frame {
        match &mut self {
            Frame::Hello { .. } => {}
            Frame::Write { seq, .. }
            | Frame::WriteZeroes { seq, .. }
            | Frame::Flush { seq, .. }
            | Frame::Ack { seq, .. }
            | Frame::StaleEpoch { seq, .. }
            | Frame::TreeRequest { seq, .. }
            | Frame::TreeResponse { seq, .. }
            | Frame::ChunkRequest { seq, .. }
            | Frame::ChunkData { seq, .. }
            | Frame::Read { seq, .. }
            | Frame::ReadData { seq, .. }
            | Frame::HashRequest { seq, .. } => *seq = new_seq,
        }
        self
    }
}

/// Appends one frame to `out`.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) {
    let mut payload = BytesMut::new();
    let (kind, flags, seq, epoch) = match frame {
        Frame::Hello {
            volume,
            node,
            epoch,
        } => {
            put_string(&mut payload, volume);
            put_string(&mut payload, node);
            (KIND_HELLO, 0, 0, *epoch)
        }
        Frame::Write {
            seq,
            epoch,
            offset,
            fua,
            data,
        } => {
            payload.put_u64(*offset);
            payload.put_slice(data);
            (KIND_WRITE, if *fua { FLAG_FUA } else { 0 }, *seq, *epoch)
        }
        Frame::WriteZeroes {
            seq,
            epoch,
            offset,
            length,
            punch,
            fua,
        } => {
            payload.put_u64(*offset);
            payload.put_u64(*length);
            let flags = if *fua { FLAG_FUA } else { 0 } | if *punch { FLAG_PUNCH } else { 0 };
            (KIND_WRITE_ZEROES, flags, *seq, *epoch)
        }
        Frame::Flush { seq, epoch } => (KIND_FLUSH, 0, *seq, *epoch),
        Frame::Ack { seq, error } => {
            payload.put_u32(*error);
            (KIND_ACK, 0, *seq, 0)
        }
        Frame::StaleEpoch { seq, newest_epoch } => (KIND_STALE_EPOCH, 0, *seq, *newest_epoch),
        Frame::TreeRequest {
            seq,
            epoch,
            level,
            indices,
        } => {
            payload.put_u8(*level);
            payload.put_u32(indices.len() as u32);
            indices.iter().for_each(|index| payload.put_u64(*index));
            (KIND_TREE_REQUEST, 0, *seq, *epoch)
        }
        Frame::TreeResponse { seq, hashes } => {
            payload.put_u32(hashes.len() as u32);
            hashes.iter().for_each(|hash| payload.put_slice(hash));
            (KIND_TREE_RESPONSE, 0, *seq, 0)
        }
        Frame::ChunkRequest {
            seq,
            epoch,
            chunk_idx,
        } => {
            payload.put_u64(*chunk_idx);
            (KIND_CHUNK_REQUEST, 0, *seq, *epoch)
        }
        Frame::ChunkData {
            seq,
            epoch,
            chunk_idx,
            data,
        } => {
            payload.put_u64(*chunk_idx);
            payload.put_slice(data);
            (KIND_CHUNK_DATA, 0, *seq, *epoch)
        }
        Frame::Read {
            seq,
            offset,
            length,
        } => {
            payload.put_u64(*offset);
            payload.put_u32(*length);
            (KIND_READ, 0, *seq, 0)
        }
        Frame::ReadData { seq, data } => {
            payload.put_slice(data);
            (KIND_READ_DATA, 0, *seq, 0)
        }
        Frame::HashRequest { seq, first, count } => {
            payload.put_u64(*first);
            payload.put_u32(*count);
            (KIND_HASH_REQUEST, 0, *seq, 0)
        }
    };
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.put_u32(FRAME_MAGIC);
    out.put_u8(FRAME_VERSION);
    out.put_u8(kind);
    out.put_u16(flags);
    out.put_u64(seq);
    out.put_u64(epoch);
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
}

fn put_string(out: &mut BytesMut, value: &str) {
    out.put_u16(value.len() as u16);
    out.put_slice(value.as_bytes());
}

/// Decodes one frame from the front of `input`. `Ok(None)`: more bytes are
/// needed and nothing was consumed. A header that is wrong in any way is an
/// error before its payload is waited for, so a garbled stream fails fast.
pub fn decode_frame(input: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
    if input.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let mut header = &input[..FRAME_HEADER_LEN];
    let magic = header.get_u32();
    let version = header.get_u8();
    let kind = header.get_u8();
    let flags = header.get_u16();
    let seq = header.get_u64();
    let epoch = header.get_u64();
    let length = header.get_u32();
    if magic != FRAME_MAGIC {
        return Err(ProtoError::BadFrameMagic { found: magic });
    }
    if version != FRAME_VERSION {
        return Err(ProtoError::UnsupportedFrameVersion {
            version,
            supported: FRAME_VERSION,
        });
    }
    if !(KIND_HELLO..=KIND_HASH_REQUEST).contains(&kind) {
        return Err(ProtoError::UnknownFrameKind { kind });
    }
    if length > MAX_FRAME_PAYLOAD {
        return Err(ProtoError::FrameTooLarge {
            seq,
            length,
            max: MAX_FRAME_PAYLOAD,
        });
    }
    if input.len() < FRAME_HEADER_LEN + length as usize {
        input.reserve(FRAME_HEADER_LEN + length as usize - input.len());
        return Ok(None);
    }
    input.advance(FRAME_HEADER_LEN);
    let mut payload = input.split_to(length as usize).freeze();
    let malformed = |reason| ProtoError::MalformedFrame { seq, kind, reason };
    let need = |payload: &Bytes, bytes: usize, reason| {
        if payload.remaining() < bytes {
            Err(malformed(reason))
        } else {
            Ok(())
        }
    };
    let fua = flags & FLAG_FUA != 0;
    let frame = match kind {
        KIND_HELLO => {
            let volume = get_string(&mut payload).ok_or_else(|| malformed("bad volume name"))?;
            let node = get_string(&mut payload).ok_or_else(|| malformed("bad node name"))?;
            Frame::Hello {
                volume,
                node,
                epoch,
            }
        }
        KIND_WRITE => {
            need(&payload, 8, "write without an offset")?;
            let offset = payload.get_u64();
            Frame::Write {
                seq,
                epoch,
                offset,
                fua,
                data: payload.split_off(0),
            }
        }
        KIND_WRITE_ZEROES => {
            need(&payload, 16, "write-zeroes without offset and length")?;
            let (offset, length) = (payload.get_u64(), payload.get_u64());
            Frame::WriteZeroes {
                seq,
                epoch,
                offset,
                length,
                punch: flags & FLAG_PUNCH != 0,
                fua,
            }
        }
        KIND_FLUSH => Frame::Flush { seq, epoch },
        KIND_ACK => {
            need(&payload, 4, "ack without an error code")?;
            Frame::Ack {
                seq,
                error: payload.get_u32(),
            }
        }
        KIND_STALE_EPOCH => Frame::StaleEpoch {
            seq,
            newest_epoch: epoch,
        },
        KIND_TREE_REQUEST => {
            need(&payload, 5, "tree request without level and count")?;
            let level = payload.get_u8();
            let count = payload.get_u32() as usize;
            if count > MAX_TREE_INDICES {
                return Err(malformed(
                    "tree request for more nodes than one answer may hold",
                ));
            }
            need(
                &payload,
                count.saturating_mul(8),
                "tree request shorter than its count",
            )?;
            let indices = (0..count).map(|_| payload.get_u64()).collect();
            Frame::TreeRequest {
                seq,
                epoch,
                level,
                indices,
            }
        }
        KIND_TREE_RESPONSE => {
            need(&payload, 4, "tree response without a count")?;
            let count = payload.get_u32() as usize;
            need(
                &payload,
                count.saturating_mul(32),
                "tree response shorter than its count",
            )?;
            let hashes = (0..count)
                .map(|_| {
                    let mut hash = [0u8; 32];
                    payload.copy_to_slice(&mut hash);
                    hash
                })
                .collect();
            Frame::TreeResponse { seq, hashes }
        }
        KIND_CHUNK_REQUEST => {
            need(&payload, 8, "chunk request without an index")?;
            Frame::ChunkRequest {
                seq,
                epoch,
                chunk_idx: payload.get_u64(),
            }
        }
        KIND_CHUNK_DATA => {
            need(&payload, 8, "chunk data without an index")?;
            let chunk_idx = payload.get_u64();
            Frame::ChunkData {
                seq,
                epoch,
                chunk_idx,
                data: payload.split_off(0),
            }
        }
        KIND_READ => {
            need(&payload, 12, "read without offset and length")?;
            let offset = payload.get_u64();
            let length = payload.get_u32();
            if length > MAX_READ_BYTES {
                return Err(ProtoError::FrameTooLarge {
                    seq,
                    length,
                    max: MAX_READ_BYTES,
                });
            }
            Frame::Read {
                seq,
                offset,
                length,
            }
        }
        KIND_READ_DATA => Frame::ReadData {
            seq,
            data: payload.split_off(0),
        },
        KIND_HASH_REQUEST => {
            need(&payload, 12, "hash request without first and count")?;
            let first = payload.get_u64();
            let count = payload.get_u32();
            if count as usize > MAX_TREE_INDICES {
                return Err(malformed("hash request for too many hashes"));
            }
            Frame::HashRequest { seq, first, count }
        }
        _ => unreachable!("kind range checked above"),
    };
    if payload.has_remaining()
        && !matches!(
            frame,
            Frame::Write { .. } | Frame::ChunkData { .. } | Frame::ReadData { .. }
        )
    {
        return Err(malformed("trailing bytes"));
    }
    Ok(Some(frame))
}

fn get_string(payload: &mut Bytes) -> Option<String> {
    if payload.remaining() < 2 {
        return None;
    }
    let length = payload.get_u16() as usize;
    if payload.remaining() < length {
        return None;
    }
    String::from_utf8(payload.split_to(length).to_vec()).ok()
}

#[cfg(test)]
mod tests;
