//! A block as it travels on the link: zstd when that pays and the session
//! negotiated it ([`tether_common::block_zstd`], shared with the satellite).

use bytes::Bytes;
use tether_common::block_zstd;
use tether_proto::link::Payload;

/// `data` as it should travel: compressed if that pays.
pub fn pack(data: Bytes, zstd: Option<&block_zstd::Adaptive>) -> Payload {
    match zstd.and_then(|zstd| zstd.compress(&data)) {
        Some(packed) => Payload::Compressed {
            raw_len: data.len() as u32,
            data: Bytes::from(packed),
        },
        None => Payload::Raw(data),
    }
}

/// The raw block; an error if it does not expand to its declared length.
pub fn unpack(payload: Payload) -> Result<Bytes, String> {
    match payload {
        Payload::Raw(data) => Ok(data),
        Payload::Compressed { raw_len, data } => {
            block_zstd::decompress_exact(&data, raw_len as usize).map(Bytes::from)
        }
    }
}
