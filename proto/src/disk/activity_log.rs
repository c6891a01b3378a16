//! Activity-log slots. The log file holds two slots of [`SLOT_LEN`] bytes,
//! written alternately so a torn write of one leaves the other intact:
//! ```text
//! magic "TTHALOG1" (8) | sequence (u64 LE) | n_extents (u64 LE) |
//! BLAKE3 of the bitmap (32) | bitmap (n_extents bits, LSB first)
//! ```
//! The valid slot with the highest sequence wins.

const MAGIC: &[u8; 8] = b"TTHALOG1";
pub const HEADER_LEN: usize = 8 + 8 + 8 + 32;
/// Room for (64 KiB - header) × 8 extents: about 8 PiB of volume at 16 MiB per extent.
pub const SLOT_LEN: u64 = 64 * 1024;

/// One slot's bytes for `bits` (one u64 word per 64 extents) covering
/// `n_extents`; `None` when the bitmap would not fit a slot.
pub fn encode_slot(sequence: u64, bits: &[u64], n_extents: u64) -> Option<Vec<u8>> {
    let bitmap: Vec<u8> = bits.iter().flat_map(|word| word.to_le_bytes()).collect();
    let bitmap = &bitmap[..(n_extents.div_ceil(8) as usize).min(bitmap.len())];
    if HEADER_LEN + bitmap.len() > SLOT_LEN as usize {
        return None;
    }
    let mut slot = Vec::with_capacity(HEADER_LEN + bitmap.len());
    slot.extend_from_slice(MAGIC);
    slot.extend_from_slice(&sequence.to_le_bytes());
    slot.extend_from_slice(&n_extents.to_le_bytes());
    slot.extend_from_slice(blake3::hash(bitmap).as_bytes());
    slot.extend_from_slice(bitmap);
    Some(slot)
}

/// A slot's sequence and marked extents, or `None` for a slot that is torn,
/// empty or not a slot at all.
pub fn decode_slot(buf: &[u8]) -> Option<(u64, Vec<u64>)> {
    if buf.len() < HEADER_LEN || &buf[..8] != MAGIC {
        return None;
    }
    let sequence = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let n_extents = u64::from_le_bytes(buf[16..24].try_into().ok()?);
    let bitmap_len = usize::try_from(n_extents.div_ceil(8)).ok()?;
    if bitmap_len > buf.len() - HEADER_LEN {
        return None;
    }
    let bitmap = &buf[HEADER_LEN..HEADER_LEN + bitmap_len];
    if blake3::hash(bitmap).as_bytes() != &buf[24..56] {
        return None;
    }
    let marked = (0..n_extents)
        .filter(|extent| bitmap[(extent / 8) as usize] & (1 << (extent % 8)) != 0)
        .collect();
    Some((sequence, marked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_damage_is_not_a_slot() {
        let slot = encode_slot(7, &[0b1010_0001], 8).unwrap();
        assert_eq!(decode_slot(&slot), Some((7, vec![0, 5, 7])));
        let mut torn = slot.clone();
        *torn.last_mut().unwrap() ^= 1;
        assert_eq!(decode_slot(&torn), None);
        assert_eq!(decode_slot(&slot[..20]), None);
        assert!(encode_slot(1, &vec![u64::MAX; 9000], 9000 * 64).is_none());
    }
}
