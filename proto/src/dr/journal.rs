//! The secondary's staging journal: a volume of the secondary's cluster
//! (`{volume}-drj`, replicated like any other) where a batch is written in
//! full before any of it touches the secondary. Sans I/O: layout, header
//! and index codecs; the gateway's receiver does the I/O.
//!
//! ```text
//! 0                 header (4 KiB): magic "TDRJ" (u32), version (u8), state (u8),
//!                   chunk size (u32), point (u64), cut time (u64), entries (u64),
//!                   batch sum (32: [`batch_sum`] of the index and data),
//!                   BLAKE3 of the bytes before it (32)
//! 4 KiB             index: entries × (volume offset (u64), raw length (u32), flags (u32: ZERO))
//! data offset       the entries' data one after another, each from a 4 KiB boundary
//!                   (zero entries take none)
//! ```
//! States: `Clean` (the secondary is at `point`; nothing staged counts),
//! `Committed` (the batch of `point` is whole in the journal: apply it,
//! again if need be, then write `Clean`), `Seeding` (no point yet: chunks
//! go straight to the secondary, which is at no consistent point).
//! Writes in order: entries, index and header `Committed` (its batch sum
//! over the index and the entries' data), flush, apply to the secondary,
//! flush, header `Clean`, flush. After a crash a `Committed` header whose
//! sum matches what the journal holds is applied again (same bytes to the
//! same places) before anything else; one whose sum does not match never
//! became durable as a whole, and the secondary is still at the point
//! before it.

pub const JOURNAL_MAGIC: u32 = 0x5444_524a;
pub const JOURNAL_VERSION: u8 = 1;
pub const HEADER_BYTES: u64 = 4096;
pub const INDEX_ENTRY_BYTES: u64 = 16;
/// A batch holds this many extents at most ...
pub const MAX_JOURNAL_ENTRIES: u64 = 65_536;
/// ... and this many bytes (less for a smaller volume).
pub const MAX_JOURNAL_DATA: u64 = 1 << 30;
/// Entries' data start on this boundary.
pub const ENTRY_ALIGN: u64 = 4096;
pub const ENTRY_ZERO: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalState {
    Clean = 0,
    Committed = 1,
    Seeding = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    pub state: JournalState,
    pub chunk_size: u32,
    pub point: u64,
    pub cut_unix_ms: u64,
    pub entries: u64,
    /// [`batch_sum`] of the committed batch (zeros otherwise).
    pub batch_sum: [u8; 32],
}

/// What a committed header vouches for: BLAKE3 over the BLAKE3 of the
/// entries' data (non-zero entries, in order, each its raw length) and
/// the encoded index.
pub fn batch_sum(data_hash: &[u8; 32], index: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(data_hash);
    hasher.update(index);
    *hasher.finalize().as_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry {
    /// Where the extent goes in the secondary (bytes).
    pub offset: u64,
    pub raw_len: u32,
    pub zero: bool,
}

impl JournalEntry {
    /// The bytes its data takes in the journal.
    pub fn journal_bytes(&self) -> u64 {
        if self.zero {
            0
        } else {
            (self.raw_len as u64).div_ceil(ENTRY_ALIGN) * ENTRY_ALIGN
        }
    }
}

/// Where things are in the journal of a secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLayout {
    pub max_entries: u64,
    pub data_bytes: u64,
}

impl JournalLayout {
    /// The layout for a secondary of `volume_bytes`.
    pub fn for_volume(volume_bytes: u64) -> Self {
        Self {
            max_entries: MAX_JOURNAL_ENTRIES,
            data_bytes: volume_bytes
                .div_ceil(ENTRY_ALIGN)
                .saturating_mul(ENTRY_ALIGN)
                .clamp(ENTRY_ALIGN, MAX_JOURNAL_DATA),
        }
    }

    pub fn index_offset(&self) -> u64 {
        HEADER_BYTES
    }

    pub fn data_offset(&self) -> u64 {
        let index = self.max_entries * INDEX_ENTRY_BYTES;
        HEADER_BYTES + index.div_ceil(4096) * 4096
    }

    /// Whether one more `entry` fits after `entries` taking `used` bytes.
    pub fn fits(&self, entries: u64, used: u64, entry: &JournalEntry) -> bool {
        entries < self.max_entries && used + entry.journal_bytes() <= self.data_bytes
    }

    /// The journal volume's size.
    pub fn size_bytes(&self) -> u64 {
        self.data_offset() + self.data_bytes
    }
}

impl JournalHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES as usize);
        out.extend_from_slice(&JOURNAL_MAGIC.to_be_bytes());
        out.push(JOURNAL_VERSION);
        out.push(self.state as u8);
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.point.to_be_bytes());
        out.extend_from_slice(&self.cut_unix_ms.to_be_bytes());
        out.extend_from_slice(&self.entries.to_be_bytes());
        out.extend_from_slice(&self.batch_sum);
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out.resize(HEADER_BYTES as usize, 0);
        out
    }

    /// The header in `block`; `Ok(None)` for a journal never written (all
    /// zeros), an error for anything else that is not a whole header.
    pub fn decode(block: &[u8]) -> Result<Option<Self>, &'static str> {
        if block.len() < 98 {
            return Err("short journal header");
        }
        if block[..98].iter().all(|byte| *byte == 0) {
            return Ok(None);
        }
        let u32_at = |at: usize| u32::from_be_bytes(block[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_be_bytes(block[at..at + 8].try_into().unwrap());
        if u32_at(0) != JOURNAL_MAGIC {
            return Err("journal header magic is not TDRJ");
        }
        if block[4] != JOURNAL_VERSION {
            return Err("journal header version unknown");
        }
        if blake3::hash(&block[..66]).as_bytes() != &block[66..98] {
            return Err("journal header checksum does not match");
        }
        let state = match block[5] {
            0 => JournalState::Clean,
            1 => JournalState::Committed,
            2 => JournalState::Seeding,
            _ => return Err("journal header state unknown"),
        };
        Ok(Some(Self {
            state,
            chunk_size: u32_at(6),
            point: u64_at(10),
            cut_unix_ms: u64_at(18),
            entries: u64_at(26),
            batch_sum: block[34..66].try_into().unwrap(),
        }))
    }
}

pub fn encode_index(entries: &[JournalEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_BYTES as usize);
    for entry in entries {
        out.extend_from_slice(&entry.offset.to_be_bytes());
        out.extend_from_slice(&entry.raw_len.to_be_bytes());
        out.extend_from_slice(&(if entry.zero { ENTRY_ZERO } else { 0 }).to_be_bytes());
    }
    let padded = out.len().div_ceil(4096) * 4096;
    out.resize(padded.max(4096), 0);
    out
}

pub fn decode_index(bytes: &[u8], entries: u64) -> Result<Vec<JournalEntry>, &'static str> {
    let need = entries
        .checked_mul(INDEX_ENTRY_BYTES)
        .ok_or("journal index too long")?;
    if (bytes.len() as u64) < need {
        return Err("journal index shorter than its entries");
    }
    Ok(bytes[..need as usize]
        .chunks_exact(INDEX_ENTRY_BYTES as usize)
        .map(|entry| JournalEntry {
            offset: u64::from_be_bytes(entry[..8].try_into().unwrap()),
            raw_len: u32::from_be_bytes(entry[8..12].try_into().unwrap()),
            zero: u32::from_be_bytes(entry[12..16].try_into().unwrap()) & ENTRY_ZERO != 0,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_indexes_round_trip_and_damage_is_refused() {
        let header = JournalHeader {
            state: JournalState::Committed,
            chunk_size: 256 << 10,
            point: 42,
            cut_unix_ms: 1_700_000_000_000,
            entries: 3,
            batch_sum: [9; 32],
        };
        let mut block = header.encode();
        assert_eq!(JournalHeader::decode(&block), Ok(Some(header)));
        assert_eq!(JournalHeader::decode(&vec![0; 4096]), Ok(None));
        block[12] ^= 1;
        assert!(JournalHeader::decode(&block).is_err());
        let entries = vec![
            JournalEntry {
                offset: 7 << 12,
                raw_len: 4096,
                zero: false,
            },
            JournalEntry {
                offset: 9 << 12,
                raw_len: 4096,
                zero: true,
            },
        ];
        let index = encode_index(&entries);
        assert_eq!(index.len(), 4096);
        assert_eq!(decode_index(&index, 2).unwrap(), entries);
        assert!(decode_index(&index, 1 << 40).is_err());
    }

    #[test]
    fn the_layout_keeps_index_and_data_apart_and_bounds_both() {
        let layout = JournalLayout::for_volume(10 << 30);
        assert_eq!(layout.data_bytes, MAX_JOURNAL_DATA);
        assert_eq!(layout.data_offset(), 4096 + MAX_JOURNAL_ENTRIES * 16);
        assert_eq!(layout.size_bytes() % 4096, 0);
        let small = JournalLayout::for_volume(64 << 20);
        assert_eq!(small.data_bytes, 64 << 20);
        let extent = JournalEntry {
            offset: 0,
            raw_len: 5000,
            zero: false,
        };
        assert_eq!(extent.journal_bytes(), 8192);
        assert!(small.fits(0, (64 << 20) - 8192, &extent));
        assert!(!small.fits(0, (64 << 20) - 4096, &extent));
        assert!(!small.fits(MAX_JOURNAL_ENTRIES, 0, &extent));
        let zero = JournalEntry {
            zero: true,
            ..extent
        };
        assert!(small.fits(0, 64 << 20, &zero));
    }
}
