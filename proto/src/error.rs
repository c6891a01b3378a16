use thiserror::Error;

/// A protocol violation by the peer, in NBD or in Tether's block frames
/// (every such variant ends the connection: the stream is no longer in a
/// state both sides agree on), or a damaged on-disk file.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("client did not set the fixed-newstyle flag (client flags {client_flags:#x})")]
    NotFixedNewstyle { client_flags: u32 },
    #[error("unknown client flags {client_flags:#x}")]
    UnknownClientFlags { client_flags: u32 },
    #[error("option magic {found:#x} is not IHAVEOPT")]
    BadOptionMagic { found: u64 },
    #[error("option {option} has length {length}, over the limit of {max}")]
    OptionTooLarge { option: u32, length: u32, max: u32 },
    #[error("request magic {found:#x} is not NBD_REQUEST_MAGIC")]
    BadRequestMagic { found: u32 },
    #[error("request {cookie:#x} asks for {length} bytes, over the limit of {max}")]
    RequestTooLarge { cookie: u64, length: u32, max: u32 },
    #[error("handshake input after the handshake finished")]
    HandshakeFinished,
    /// Bytes sent after STARTTLS but before the TLS handshake would be
    /// taken as if they came under TLS (the STARTTLS injection attack).
    #[error("{bytes} plaintext bytes followed STARTTLS before the TLS handshake")]
    PlaintextAfterStartTls { bytes: usize },
    #[error("link frame magic {found:#x} is not TFED")]
    BadLinkMagic { found: u32 },
    #[error("DR frame magic {found:#x} is not TDRL")]
    BadDrMagic { found: u32 },
    #[error("block frame magic {found:#x} is not TBLK")]
    BadFrameMagic { found: u32 },
    #[error("block frame version {version} is not supported (this build speaks {supported})")]
    UnsupportedFrameVersion { version: u8, supported: u8 },
    #[error("block frame kind {kind} is unknown")]
    UnknownFrameKind { kind: u8 },
    #[error("block frame {seq} carries {length} payload bytes, over the limit of {max}")]
    FrameTooLarge { seq: u64, length: u32, max: u32 },
    /// An on-disk file the node cannot trust: the copy is quarantined.
    #[error("{file}: {field} {reason}")]
    BadOnDisk {
        file: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("block frame {seq} (kind {kind}) is malformed: {reason}")]
    MalformedFrame {
        seq: u64,
        kind: u8,
        reason: &'static str,
    },
}

impl ProtoError {
    /// A damaged on-disk `file`, its `field` and what is wrong with it.
    pub fn on_disk(file: &'static str, field: &'static str, reason: String) -> Self {
        ProtoError::BadOnDisk {
            file,
            field,
            reason,
        }
    }
}
