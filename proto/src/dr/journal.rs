//! The secondary's staging journal: a volume of the secondary's cluster
//! (`{volume}-drj`, replicated like any other) where a batch is written in
//! full before any of it touches the secondary. Sans I/O: layout, header
//! and index codecs; the gateway's receiver does the I/O.
//!
//! ```text
//! 0                 header (4 KiB): magic "TDRJ" (u32), version (u8), state (u8),
//!                   chunk size (u32), point (u64), cut time (u64), entries (u64),
//!                   BLAKE3 of the bytes before it (32)
//! 4 KiB             index: entries × (chunk (u64), raw length (u32), flags (u32: ZERO))
//! data offset       entry i's data at data offset + i × chunk size
//! ```
//! States: `Clean` (the secondary is at `point`; nothing staged counts),
//! `Committed` (the batch of `point` is whole in the journal: apply it,
//! again if need be, then write `Clean`), `Seeding` (no point yet: chunks
//! go straight to the secondary, which is at no consistent point).
//! Writes in order: entries and index, flush, header `Committed`, flush,
//! apply to the secondary, flush, header `Clean`, flush. A crash before the
//! first header write leaves the old point; after it, the batch is applied
//! again (same bytes to the same chunks) before anything else.

pub const JOURNAL_MAGIC: u32 = 0x5444_524a;
pub const JOURNAL_VERSION: u8 = 1;
pub const HEADER_BYTES: u64 = 4096;
pub const INDEX_ENTRY_BYTES: u64 = 16;
/// A batch holds this many chunks at most (1 GiB of 256 KiB chunks).
pub const MAX_JOURNAL_ENTRIES: u64 = 4096;
pub const ENTRY_ZERO: u32 = 1;
/// The storage engine's chunk size, for a journal made before any batch
/// names one (a failback's).
pub const ENGINE_CHUNK_BYTES: u64 = 256 << 10;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry {
    pub chunk: u64,
    pub raw_len: u32,
    pub zero: bool,
}

/// Where things are in a journal for chunks of `chunk_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLayout {
    pub chunk_size: u64,
    pub max_entries: u64,
}

impl JournalLayout {
    /// The layout for a secondary of `n_chunks` chunks.
    pub fn for_volume(n_chunks: u64, chunk_size: u64) -> Self {
        Self {
            chunk_size,
            max_entries: n_chunks.clamp(1, MAX_JOURNAL_ENTRIES),
        }
    }

    pub fn index_offset(&self) -> u64 {
        HEADER_BYTES
    }

    pub fn data_offset(&self) -> u64 {
        let index = self.max_entries * INDEX_ENTRY_BYTES;
        HEADER_BYTES + index.div_ceil(4096) * 4096
    }

    pub fn entry_offset(&self, entry: u64) -> u64 {
        self.data_offset() + entry * self.chunk_size
    }

    /// The journal volume's size.
    pub fn size_bytes(&self) -> u64 {
        self.data_offset() + self.max_entries * self.chunk_size
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
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out.resize(HEADER_BYTES as usize, 0);
        out
    }

    /// The header in `block`; `Ok(None)` for a journal never written (all
    /// zeros), an error for anything else that is not a whole header.
    pub fn decode(block: &[u8]) -> Result<Option<Self>, &'static str> {
        if block.len() < 66 {
            return Err("short journal header");
        }
        if block[..66].iter().all(|byte| *byte == 0) {
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
        if blake3::hash(&block[..34]).as_bytes() != &block[34..66] {
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
        }))
    }
}

pub fn encode_index(entries: &[JournalEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * INDEX_ENTRY_BYTES as usize);
    for entry in entries {
        out.extend_from_slice(&entry.chunk.to_be_bytes());
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
            chunk: u64::from_be_bytes(entry[..8].try_into().unwrap()),
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
        };
        let mut block = header.encode();
        assert_eq!(JournalHeader::decode(&block), Ok(Some(header)));
        assert_eq!(JournalHeader::decode(&vec![0; 4096]), Ok(None));
        block[12] ^= 1;
        assert!(JournalHeader::decode(&block).is_err());
        let entries = vec![
            JournalEntry {
                chunk: 7,
                raw_len: 4096,
                zero: false,
            },
            JournalEntry {
                chunk: 9,
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
    fn the_layout_keeps_index_and_data_apart() {
        let layout = JournalLayout::for_volume(40960, 256 << 10);
        assert_eq!(layout.max_entries, MAX_JOURNAL_ENTRIES);
        assert_eq!(layout.data_offset(), 4096 + (64 << 10));
        assert!(layout.entry_offset(0) >= layout.index_offset() + 4096 * 16);
        assert_eq!(layout.size_bytes() % 4096, 0);
        let small = JournalLayout::for_volume(4, 256 << 10);
        assert_eq!(small.max_entries, 4);
        assert_eq!(small.data_offset(), 8192);
    }
}
