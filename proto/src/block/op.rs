use bytes::Bytes;

/// One request against a volume, wherever it is served.
#[derive(Debug, Clone)]
pub enum BlockOp {
    Read {
        offset: u64,
        length: u32,
    },
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        length: u64,
        punch: bool,
        fua: bool,
    },
    Flush,
    /// The settled hashes of chunks `first .. first + count`, as 32-byte
    /// hashes one after another (a DR comparison; served by the master).
    Hashes {
        first: u64,
        count: u32,
    },
}

impl BlockOp {
    pub fn writes(&self) -> bool {
        matches!(self, BlockOp::Write { .. } | BlockOp::WriteZeroes { .. })
    }
}
