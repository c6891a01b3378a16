//! The server side of the newstyle fixed handshake, as a state machine.
//!
//! ```text
//! S: NBDMAGIC (u64) IHAVEOPT (u64) handshake flags (u16)
//! C: client flags (u32)
//! C: IHAVEOPT (u64) option (u32) length (u32) data[length]      (repeated)
//! S: OPTION_REPLY_MAGIC (u64) option (u32) reply type (u32) length (u32) data[length]
//! ```
//! The haggling ends with EXPORT_NAME or a successful GO (transmission
//! begins), or with ABORT.
//!
//! TLS is negotiated in-band: STARTTLS is acknowledged, the caller runs the
//! TLS handshake on the socket, and haggling resumes with input read
//! through TLS. In
//! [`TlsMode::Required`] (the protocol's FORCEDTLS) every option but
//! STARTTLS and ABORT is refused with `NBD_REP_ERR_TLS_REQD` until then.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::consts::*;
use crate::error::ProtoError;

/// What the handshake needs to know about one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The canonical export name (the volume name).
    pub name: String,
    pub size_bytes: u64,
    /// NBD transmission flags (`TFLAG_*`); `TFLAG_HAS_FLAGS` is added for you.
    pub transmission_flags: u16,
    /// Largest request the server accepts; advertised as the maximum block size.
    pub max_request_bytes: u32,
    /// Smallest I/O unit (1, or an encrypted volume's cipher sector);
    /// advertised as the minimum block size.
    pub min_block_bytes: u32,
}

/// The exports a listener serves. Pure lookup: no I/O, so the state machine
/// stays testable without sockets.
pub trait ExportCatalog {
    fn lookup(&self, name: &str) -> Option<ExportInfo>;
    fn names(&self) -> Vec<String>;
}

/// Whether this listener speaks TLS, and whether it insists on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS (Unix sockets): STARTTLS is answered `NBD_REP_ERR_UNSUP`.
    Off,
    /// A client may upgrade with STARTTLS, or carry on in plaintext.
    Optional,
    /// Nothing but STARTTLS or ABORT until TLS is up (FORCEDTLS).
    Required,
}

/// How the handshake ended, or paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Transmission begins on this export.
    Transmission(ExportInfo),
    /// STARTTLS was acknowledged: send what `poll_transmit` holds, run the
    /// TLS handshake on the socket, and go on feeding input read through
    /// TLS. Not an end: the handshake continues.
    StartTls,
    /// The client aborted, or asked for an export we do not have with
    /// EXPORT_NAME (where the protocol's only answer is to close).
    Closed { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitClientFlags,
    AwaitOption,
    Finished,
}

/// Server handshake: call [`ServerHandshake::handle_input`] with the bytes
/// received so far and send what [`ServerHandshake::poll_transmit`] returns.
#[derive(Debug)]
pub struct ServerHandshake {
    state: State,
    no_zeroes: bool,
    tls_mode: TlsMode,
    /// STARTTLS acknowledged (the TLS handshake is the caller's to run).
    tls_acknowledged: bool,
    out: BytesMut,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    /// A handshake without TLS.
    pub fn new() -> Self {
        Self::with_tls(TlsMode::Off)
    }

    pub fn with_tls(tls_mode: TlsMode) -> Self {
        let mut out = BytesMut::with_capacity(18);
        out.put_u64(NBDMAGIC);
        out.put_u64(IHAVEOPT);
        out.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        Self {
            state: State::AwaitClientFlags,
            no_zeroes: false,
            tls_mode,
            tls_acknowledged: false,
            out,
        }
    }

    /// Whether option haggling is (from now on) under TLS.
    pub fn under_tls(&self) -> bool {
        self.tls_acknowledged
    }

    /// Bytes to send to the client, if any are pending.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// Consumes every complete message in `input`. Returns the outcome once
    /// the handshake is over (send what `poll_transmit` holds first); bytes
    /// after the end of the handshake are left in `input` for the
    /// transmission phase.
    pub fn handle_input(
        &mut self,
        input: &mut BytesMut,
        catalog: &dyn ExportCatalog,
    ) -> Result<Option<HandshakeOutcome>, ProtoError> {
        loop {
            match self.state {
                State::Finished => return Err(ProtoError::HandshakeFinished),
                State::AwaitClientFlags => {
                    if input.len() < 4 {
                        return Ok(None);
                    }
                    let client_flags = input.get_u32();
                    if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
                        return Err(ProtoError::NotFixedNewstyle { client_flags });
                    }
                    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
                        return Err(ProtoError::UnknownClientFlags { client_flags });
                    }
                    self.no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
                    self.state = State::AwaitOption;
                }
                State::AwaitOption => {
                    if input.len() < 16 {
                        return Ok(None);
                    }
                    let magic = u64::from_be_bytes(input[0..8].try_into().unwrap());
                    if magic != IHAVEOPT {
                        return Err(ProtoError::BadOptionMagic { found: magic });
                    }
                    let option = u32::from_be_bytes(input[8..12].try_into().unwrap());
                    let length = u32::from_be_bytes(input[12..16].try_into().unwrap());
                    if length > MAX_OPTION_LEN {
                        return Err(ProtoError::OptionTooLarge {
                            option,
                            length,
                            max: MAX_OPTION_LEN,
                        });
                    }
                    if input.len() < 16 + length as usize {
                        return Ok(None);
                    }
                    input.advance(16);
                    let data = input.split_to(length as usize).freeze();
                    match self.handle_option(option, data, catalog) {
                        None => {}
                        Some(HandshakeOutcome::StartTls) => {
                            // Whatever the client sent after STARTTLS arrived
                            // in plaintext; it must not pass as TLS input.
                            if !input.is_empty() {
                                return Err(ProtoError::PlaintextAfterStartTls {
                                    bytes: input.len(),
                                });
                            }
                            return Ok(Some(HandshakeOutcome::StartTls));
                        }
                        Some(outcome) => {
                            self.state = State::Finished;
                            return Ok(Some(outcome));
                        }
                    }
                }
            }
        }
    }

    fn handle_option(
        &mut self,
        option: u32,
        data: Bytes,
        catalog: &dyn ExportCatalog,
    ) -> Option<HandshakeOutcome> {
        let tls_missing = self.tls_mode == TlsMode::Required && !self.tls_acknowledged;
        match option {
            OPT_STARTTLS => return self.handle_starttls(&data),
            OPT_ABORT => {}
            // EXPORT_NAME cannot be refused: the protocol's answer is to close.
            OPT_EXPORT_NAME if tls_missing => {
                return Some(HandshakeOutcome::Closed {
                    reason: "EXPORT_NAME before STARTTLS on a listener that requires TLS".into(),
                })
            }
            _ if tls_missing => {
                self.reply(
                    option,
                    REP_ERR_TLS_REQD,
                    b"this export requires TLS: send STARTTLS first",
                );
                return None;
            }
            _ => {}
        }
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                match catalog.lookup(&name) {
                    Some(export) => {
                        self.out.put_u64(export.size_bytes);
                        self.out.put_u16(transmission_flags(&export));
                        if !self.no_zeroes {
                            self.out.put_bytes(0, 124);
                        }
                        Some(HandshakeOutcome::Transmission(export))
                    }
                    None => Some(HandshakeOutcome::Closed {
                        reason: format!("unknown export {name:?} requested with EXPORT_NAME"),
                    }),
                }
            }
            OPT_ABORT => {
                self.reply(option, REP_ACK, &[]);
                Some(HandshakeOutcome::Closed {
                    reason: "client aborted the handshake".into(),
                })
            }
            OPT_LIST => {
                if !data.is_empty() {
                    self.reply(option, REP_ERR_INVALID, b"LIST takes no data");
                    return None;
                }
                for name in catalog.names() {
                    let mut entry = BytesMut::with_capacity(4 + name.len());
                    entry.put_u32(name.len() as u32);
                    entry.put_slice(name.as_bytes());
                    self.reply(option, REP_SERVER, &entry);
                }
                self.reply(option, REP_ACK, &[]);
                None
            }
            OPT_INFO | OPT_GO => self.handle_info_or_go(option, data, catalog),
            OPT_STRUCTURED_REPLY => {
                self.reply(option, REP_ERR_UNSUP, b"not supported by this server");
                None
            }
            _ => {
                self.reply(option, REP_ERR_UNSUP, b"unknown option");
                None
            }
        }
    }

    fn handle_starttls(&mut self, data: &[u8]) -> Option<HandshakeOutcome> {
        if self.tls_mode == TlsMode::Off {
            self.reply(
                OPT_STARTTLS,
                REP_ERR_UNSUP,
                b"TLS is not offered on this listener",
            );
        } else if self.tls_acknowledged {
            self.reply(OPT_STARTTLS, REP_ERR_INVALID, b"TLS is already in use");
        } else if !data.is_empty() {
            self.reply(OPT_STARTTLS, REP_ERR_INVALID, b"STARTTLS takes no data");
        } else {
            self.reply(OPT_STARTTLS, REP_ACK, &[]);
            self.tls_acknowledged = true;
            return Some(HandshakeOutcome::StartTls);
        }
        None
    }

    fn handle_info_or_go(
        &mut self,
        option: u32,
        mut data: Bytes,
        catalog: &dyn ExportCatalog,
    ) -> Option<HandshakeOutcome> {
        // C: name length (u32), name, number of info requests (u16), requests (u16 each)
        let parsed = (|| {
            if data.remaining() < 4 {
                return None;
            }
            let name_len = data.get_u32() as usize;
            if data.remaining() < name_len + 2 {
                return None;
            }
            let name = String::from_utf8_lossy(&data.split_to(name_len)).into_owned();
            let n_requests = data.get_u16() as usize;
            if data.remaining() != n_requests * 2 {
                return None;
            }
            let requests: Vec<u16> = (0..n_requests).map(|_| data.get_u16()).collect();
            Some((name, requests))
        })();
        let Some((name, requests)) = parsed else {
            self.reply(option, REP_ERR_INVALID, b"malformed INFO/GO request");
            return None;
        };
        let Some(export) = catalog.lookup(&name) else {
            let message = format!("unknown export {name:?}");
            self.reply(option, REP_ERR_UNKNOWN, message.as_bytes());
            return None;
        };

        let mut info = BytesMut::with_capacity(12);
        info.put_u16(INFO_EXPORT);
        info.put_u64(export.size_bytes);
        info.put_u16(transmission_flags(&export));
        self.reply(option, REP_INFO, &info);

        // Block sizes are sent whether asked for or not (the protocol allows it),
        // so clients learn the 32 MiB request ceiling up front.
        let mut block = BytesMut::with_capacity(14);
        block.put_u16(INFO_BLOCK_SIZE);
        block.put_u32(export.min_block_bytes.max(MIN_BLOCK_SIZE));
        block.put_u32(PREFERRED_BLOCK_SIZE);
        block.put_u32(export.max_request_bytes);
        self.reply(option, REP_INFO, &block);

        if requests.contains(&INFO_NAME) {
            let mut named = BytesMut::with_capacity(2 + export.name.len());
            named.put_u16(INFO_NAME);
            named.put_slice(export.name.as_bytes());
            self.reply(option, REP_INFO, &named);
        }
        self.reply(option, REP_ACK, &[]);
        (option == OPT_GO).then_some(HandshakeOutcome::Transmission(export))
    }

    fn reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        self.out.put_u64(OPTION_REPLY_MAGIC);
        self.out.put_u32(option);
        self.out.put_u32(reply_type);
        self.out.put_u32(data.len() as u32);
        self.out.put_slice(data);
    }
}

fn transmission_flags(export: &ExportInfo) -> u16 {
    export.transmission_flags | TFLAG_HAS_FLAGS
}
