//! The transmission phase: requests in, simple replies out.
//!
//! ```text
//! request: REQUEST_MAGIC (u32) command flags (u16) type (u16) cookie (u64)
//!          offset (u64) length (u32)            then length bytes for WRITE
//! reply:   SIMPLE_REPLY_MAGIC (u32) error (u32) cookie (u64)
//!          then length bytes for a successful READ
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::consts::*;
use crate::error::ProtoError;

/// Length of a request header on the wire.
pub const REQUEST_HEADER_LEN: usize = 28;

/// One transmission-phase command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Read {
        offset: u64,
        length: u32,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        length: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        length: u32,
        fua: bool,
        no_hole: bool,
    },
    Disconnect,
    /// A command type this server does not implement; answered with EINVAL.
    Unknown {
        command_type: u16,
    },
}

/// A request as received: the cookie (handle) echoes back in the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub cookie: u64,
    pub command: Command,
}

/// Decodes one request from the front of `input`. `Ok(None)` means more bytes
/// are needed (nothing is consumed). Requests whose payload would exceed
/// `max_request_bytes` are a protocol error: the connection can't be kept in
/// sync without reading the payload, and reading 4 GiB on a client's say-so
/// is how servers fall over.
pub fn decode_request(
    input: &mut BytesMut,
    max_request_bytes: u32,
) -> Result<Option<Request>, ProtoError> {
    if input.len() < REQUEST_HEADER_LEN {
        return Ok(None);
    }
    let mut header = &input[..REQUEST_HEADER_LEN];
    let magic = header.get_u32();
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadRequestMagic { found: magic });
    }
    let flags = header.get_u16();
    let command_type = header.get_u16();
    let cookie = header.get_u64();
    let offset = header.get_u64();
    let length = header.get_u32();
    let fua = flags & CMD_FLAG_FUA != 0;

    let has_payload = command_type == CMD_WRITE;
    if (has_payload || command_type == CMD_READ) && length > max_request_bytes {
        return Err(ProtoError::RequestTooLarge {
            cookie,
            length,
            max: max_request_bytes,
        });
    }
    let payload_len = if has_payload { length as usize } else { 0 };
    if input.len() < REQUEST_HEADER_LEN + payload_len {
        input.reserve(REQUEST_HEADER_LEN + payload_len - input.len());
        return Ok(None);
    }
    input.advance(REQUEST_HEADER_LEN);
    let command = match command_type {
        CMD_READ => Command::Read { offset, length },
        CMD_WRITE => Command::Write {
            offset,
            data: input.split_to(payload_len).freeze(),
            fua,
        },
        CMD_DISC => Command::Disconnect,
        CMD_FLUSH => Command::Flush,
        CMD_TRIM => Command::Trim {
            offset,
            length,
            fua,
        },
        CMD_WRITE_ZEROES => Command::WriteZeroes {
            offset,
            length,
            fua,
            no_hole: flags & CMD_FLAG_NO_HOLE != 0,
        },
        other => Command::Unknown {
            command_type: other,
        },
    };
    Ok(Some(Request { cookie, command }))
}

/// The bytes the request at the front of `input` will make a server hold
/// (a WRITE's payload, a READ's reply data), read from its header alone;
/// `None` until the whole header is there. A server charges this against
/// its budget *before* it buffers the payload or runs the request, so a
/// client cannot make it hold more than the budget.
pub fn request_bytes(input: &[u8]) -> Option<u64> {
    if input.len() < REQUEST_HEADER_LEN {
        return None;
    }
    let command_type = u16::from_be_bytes([input[6], input[7]]);
    let length = u32::from_be_bytes([input[24], input[25], input[26], input[27]]);
    Some(match command_type {
        CMD_WRITE | CMD_READ => length as u64,
        _ => 0,
    })
}

/// Frames a simple reply; `data` is the READ payload (only on success).
pub fn encode_simple_reply(cookie: u64, error: u32, data: Option<&[u8]>, out: &mut BytesMut) {
    out.reserve(16 + data.map_or(0, |d| d.len()));
    out.put_u32(SIMPLE_REPLY_MAGIC);
    out.put_u32(error);
    out.put_u64(cookie);
    if let Some(data) = data {
        out.put_slice(data);
    }
}
