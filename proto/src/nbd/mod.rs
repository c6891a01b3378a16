//! The NBD protocol (newstyle, fixed handshake) without I/O.
//!
//! The handshake is a state machine ([`ServerHandshake`]): feed it the bytes
//! the client sent, take the bytes to send back, and it ends with a
//! [`HandshakeOutcome`]. The transmission phase is a codec:
//! [`decode_request`] parses one request (with its write payload) from a
//! buffer, [`encode_simple_reply`] frames one reply.
//!
//! Reference: the NBD protocol document (NetworkBlockDevice/nbd `doc/proto.md`).

mod consts;

mod handshake;
mod transmission;

pub use consts::*;

pub use handshake::{ExportCatalog, ExportInfo, HandshakeOutcome, ServerHandshake, TlsMode};
pub use transmission::{
    decode_request, encode_simple_reply, request_bytes, Command, Request, REQUEST_HEADER_LEN,
};

#[cfg(test)]
mod tests;
