//! zstd per block on the link: a block is sent compressed only when that
//! saves at least an eighth of it, and a compressed block is expanded to
//! exactly the raw length its frame declares (bounded by the codec), so a
//! peer cannot make the gateway allocate more than it was charged.

use bytes::Bytes;
use tether_proto::link::Payload;

/// Fast: the link is usually faster than a stronger level would compress.
const LEVEL: i32 = 1;
/// Smaller blocks are not worth a compressor call.
const MIN_BLOCK: usize = 4096;

/// `data` as it should travel: compressed if that pays.
pub fn pack(data: Bytes, enabled: bool) -> Payload {
    if !enabled || data.len() < MIN_BLOCK {
        return Payload::Raw(data);
    }
    match zstd::bulk::compress(&data, LEVEL) {
        Ok(packed) if packed.len() <= data.len() - data.len() / 8 => Payload::Compressed {
            raw_len: data.len() as u32,
            data: Bytes::from(packed),
        },
        _ => Payload::Raw(data),
    }
}

/// The raw block; an error if it does not expand to its declared length.
pub fn unpack(payload: Payload) -> Result<Bytes, String> {
    match payload {
        Payload::Raw(data) => Ok(data),
        Payload::Compressed { raw_len, data } => {
            let raw = zstd::bulk::decompress(&data, raw_len as usize)
                .map_err(|err| format!("a compressed block does not decompress: {err}"))?;
            if raw.len() != raw_len as usize {
                return Err(format!(
                    "a compressed block expands to {} bytes, not the {raw_len} it declares",
                    raw.len()
                ));
            }
            Ok(Bytes::from(raw))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_blocks_shrink_and_come_back_whole() {
        let block = Bytes::from(vec![7u8; 65536]);
        let packed = pack(block.clone(), true);
        assert!(matches!(packed, Payload::Compressed { .. }));
        assert!(packed.wire_len() < 1024);
        assert_eq!(unpack(packed).unwrap(), block);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..65536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        assert!(matches!(pack(Bytes::from(random), true), Payload::Raw(_)));
        assert!(matches!(pack(block, false), Payload::Raw(_)));
    }

    #[test]
    fn a_block_that_lies_about_its_length_is_refused() {
        let packed = zstd::bulk::compress(&[1u8; 10000], 1).unwrap();
        let short = Payload::Compressed {
            raw_len: 100,
            data: Bytes::from(packed.clone()),
        };
        assert!(unpack(short).is_err());
        let long = Payload::Compressed {
            raw_len: 20000,
            data: Bytes::from(packed),
        };
        assert!(unpack(long).is_err());
        let garbage = Payload::Compressed {
            raw_len: 10,
            data: Bytes::from_static(b"not zstd"),
        };
        assert!(unpack(garbage).is_err());
    }
}
