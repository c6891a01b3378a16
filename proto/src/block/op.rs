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
}

impl BlockOp {
    pub fn writes(&self) -> bool {
        matches!(self, BlockOp::Write { .. } | BlockOp::WriteZeroes { .. })
    }
}
