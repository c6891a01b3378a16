//! zstd per block on the federation link, shared by both ends: a block
//! travels compressed only when that saves at least an eighth of it, and a
//! compressed block must expand to exactly the length its frame declares
//! (so a peer cannot make the receiver allocate more than it was charged).
//!
//! Cheap when data does not compress, which is most of what a block device
//! carries (already compressed, encrypted, random): each thread keeps its
//! zstd contexts (making one per block cost more than compressing), and a
//! large block is compressed only when its first 4 KiB shrinks.

use std::cell::RefCell;

/// Fast: the link is usually faster than a stronger level would compress.
const LEVEL: i32 = 1;
/// Smaller blocks are not worth a compressor call.
pub const MIN_BLOCK: usize = 4096;
/// What is tried first on larger blocks.
const SAMPLE: usize = 4096;

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn saves_enough(packed: usize, raw: usize) -> bool {
    packed <= raw - raw / 8
}

fn compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        cell.as_mut()?.compress(data).ok()
    })
}

/// Blocks skipped, at most, after a run of blocks that did not compress.
const MAX_SKIP: u32 = 64;

/// Compression for one stream of blocks (a volume on the link), which
/// stops trying while its blocks do not compress: after `n` misses in a
/// row it skips the next `2^n` blocks (at most [`MAX_SKIP`]), then tries
/// again, so a volume of incompressible data pays for about one attempt in
/// 64, and one that compresses pays for every block it saves on.
#[derive(Debug, Default)]
pub struct Adaptive {
    misses: std::sync::atomic::AtomicU32,
    skip: std::sync::atomic::AtomicU32,
}

impl Adaptive {
    /// `data` compressed, when that pays and this stream's recent blocks
    /// suggest it might; `None`: send it as it is.
    pub fn compress(&self, data: &[u8]) -> Option<Vec<u8>> {
        use std::sync::atomic::Ordering::Relaxed;
        if data.len() < MIN_BLOCK {
            return None;
        }
        let skipping = self
            .skip
            .fetch_update(Relaxed, Relaxed, |skip| skip.checked_sub(1))
            .is_ok();
        if skipping {
            return None;
        }
        let packed = compress_if_it_pays(data);
        if packed.is_some() {
            self.misses.store(0, Relaxed);
        } else {
            let misses = self.misses.fetch_add(1, Relaxed).saturating_add(1);
            self.skip.store(
                1u32.checked_shl(misses).unwrap_or(MAX_SKIP).min(MAX_SKIP),
                Relaxed,
            );
        }
        packed
    }
}

/// `data` compressed, when that pays; `None`: send it as it is.
pub fn compress_if_it_pays(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < MIN_BLOCK {
        return None;
    }
    if data.len() > 2 * SAMPLE {
        let sample = compress(&data[..SAMPLE])?;
        if !saves_enough(sample.len(), SAMPLE) {
            return None;
        }
    }
    compress(data).filter(|packed| saves_enough(packed.len(), data.len()))
}

/// The block `data` compresses, which must be exactly `raw_len` bytes.
pub fn decompress_exact(data: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    let raw = DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(
                zstd::bulk::Decompressor::new()
                    .map_err(|err| format!("cannot make a zstd context: {err}"))?,
            );
        }
        cell.as_mut()
            .expect("made above")
            .decompress(data, raw_len)
            .map_err(|err| format!("a compressed block does not decompress: {err}"))
    })?;
    if raw.len() != raw_len {
        return Err(format!(
            "a compressed block expands to {} bytes, not the {raw_len} it declares",
            raw.len()
        ));
    }
    Ok(raw)
}

/// `data` as it travels on a stream with `zstd` negotiated (or not):
/// compressed when that pays.
pub fn pack(data: bytes::Bytes, zstd: Option<&Adaptive>) -> tether_proto::link::Payload {
    use tether_proto::link::Payload;
    match zstd.and_then(|zstd| zstd.compress(&data)) {
        Some(packed) => Payload::Compressed {
            raw_len: data.len() as u32,
            data: bytes::Bytes::from(packed),
        },
        None => Payload::Raw(data),
    }
}

/// The block a payload carries; an error if a compressed one does not
/// expand to exactly its declared length.
pub fn unpack(payload: tether_proto::link::Payload) -> Result<bytes::Bytes, String> {
    use tether_proto::link::Payload;
    match payload {
        Payload::Raw(data) => Ok(data),
        Payload::Compressed { raw_len, data } => {
            decompress_exact(&data, raw_len as usize).map(bytes::Bytes::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn compressible_blocks_shrink_and_come_back_whole() {
        for len in [4096, 65536, 1 << 20] {
            let block = vec![7u8; len];
            let packed = compress_if_it_pays(&block).expect("compresses");
            assert!(packed.len() < len / 8);
            assert_eq!(decompress_exact(&packed, len).unwrap(), block);
        }
        // Half compressible, as fio's buffer_compress_percentage=50 writes.
        let mut half = random(1 << 20, 3);
        for chunk in half.chunks_mut(4096) {
            chunk[2048..].fill(0);
        }
        let packed = compress_if_it_pays(&half).expect("half compresses");
        assert!(packed.len() < (1 << 20) * 6 / 10, "{}", packed.len());
        assert_eq!(decompress_exact(&packed, 1 << 20).unwrap(), half);
    }

    #[test]
    fn random_and_small_blocks_travel_as_they_are() {
        assert!(compress_if_it_pays(&random(4096, 1)).is_none());
        assert!(compress_if_it_pays(&random(1 << 20, 2)).is_none());
        assert!(compress_if_it_pays(&[0u8; 512]).is_none());
    }

    #[test]
    fn a_stream_of_incompressible_blocks_stops_paying_for_attempts_and_resumes() {
        let adaptive = Adaptive::default();
        let noise = random(8192, 9);
        for _ in 0..1000 {
            assert!(adaptive.compress(&noise).is_none());
        }
        // Each attempt is a miss: 2, 4, ... 64 skipped after each, so about
        // 20 attempts in 1000 blocks.
        let attempts = adaptive.misses.load(std::sync::atomic::Ordering::Relaxed);
        assert!((15..=25).contains(&attempts), "{attempts} attempts");
        // Compressible data again: compressed within the next 65 blocks, then every block.
        let zeros = vec![0u8; 8192];
        let first = (0..=MAX_SKIP).position(|_| adaptive.compress(&zeros).is_some());
        assert!(first.is_some());
        for _ in 0..100 {
            assert!(adaptive.compress(&zeros).is_some());
        }
    }

    #[test]
    fn payloads_compress_only_when_negotiated_and_expand_whole() {
        use tether_proto::link::Payload;
        let block = bytes::Bytes::from(vec![3u8; 65536]);
        let packed = pack(block.clone(), Some(&Adaptive::default()));
        assert!(matches!(packed, Payload::Compressed { raw_len: 65536, .. }));
        assert_eq!(unpack(packed).unwrap(), block);
        assert_eq!(pack(block.clone(), None), Payload::Raw(block.clone()));
        let lying = Payload::Compressed {
            raw_len: 10,
            data: bytes::Bytes::from(compress_if_it_pays(&block).unwrap()),
        };
        assert!(unpack(lying).is_err());
    }

    #[test]
    fn a_block_that_lies_about_its_length_is_refused() {
        let packed = compress_if_it_pays(&[1u8; 10000]).unwrap();
        assert!(decompress_exact(&packed, 100).is_err());
        assert!(decompress_exact(&packed, 20000).is_err());
        assert!(decompress_exact(b"not zstd", 100).is_err());
        assert_eq!(decompress_exact(&packed, 10000).unwrap(), vec![1u8; 10000]);
    }
}
