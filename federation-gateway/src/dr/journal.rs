//! The secondary's journal volume, through its master: the I/O half of
//! `tether_proto::dr::journal`.

use std::sync::Arc;

use bytes::Bytes;
use master_follower::{BlockOp, FollowError, VolumeFollower};
use tether_proto::dr::journal::{
    decode_index, encode_index, JournalEntry, JournalHeader, JournalLayout, HEADER_BYTES,
};

/// Runs `op` on `volume`'s master, wherever it is.
pub(crate) async fn run(
    volume: &VolumeFollower,
    op: BlockOp,
) -> Result<Option<Vec<u8>>, FollowError> {
    volume
        .execute::<FollowError, _, std::future::Ready<_>>(&op, |_, _| None)
        .await
}

#[derive(Clone)]
pub(crate) struct Journal {
    pub volume: Arc<VolumeFollower>,
    pub layout: JournalLayout,
}

impl Journal {
    pub async fn header(&self) -> Result<Option<JournalHeader>, String> {
        let block = run(
            &self.volume,
            BlockOp::Read {
                offset: 0,
                length: HEADER_BYTES as u32,
            },
        )
        .await
        .map_err(|err| err.to_string())?
        .unwrap_or_default();
        JournalHeader::decode(&block)
            .map_err(|reason| format!("journal {}: {reason}", self.volume.volume()))
    }

    /// Writes the header and flushes: a state change is durable when this returns.
    pub async fn set_header(&self, header: &JournalHeader) -> Result<(), String> {
        run(
            &self.volume,
            BlockOp::Write {
                offset: 0,
                data: Bytes::from(header.encode()),
                fua: false,
            },
        )
        .await
        .map_err(|err| err.to_string())?;
        self.flush().await
    }

    pub async fn flush(&self) -> Result<(), String> {
        run(&self.volume, BlockOp::Flush)
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    /// Writes an entry's data `at` bytes into the data region.
    pub async fn write_entry(&self, at: u64, data: Bytes) -> Result<(), String> {
        run(
            &self.volume,
            BlockOp::Write {
                offset: self.layout.data_offset() + at,
                data,
                fua: false,
            },
        )
        .await
        .map(|_| ())
        .map_err(|err| err.to_string())
    }

    pub async fn read_entry(&self, at: u64, length: u32) -> Result<Vec<u8>, String> {
        run(
            &self.volume,
            BlockOp::Read {
                offset: self.layout.data_offset() + at,
                length,
            },
        )
        .await
        .map(Option::unwrap_or_default)
        .map_err(|err| err.to_string())
    }

    pub async fn write_index(&self, entries: &[JournalEntry]) -> Result<(), String> {
        run(
            &self.volume,
            BlockOp::Write {
                offset: self.layout.index_offset(),
                data: Bytes::from(encode_index(entries)),
                fua: false,
            },
        )
        .await
        .map(|_| ())
        .map_err(|err| err.to_string())
    }

    pub async fn index(&self, entries: u64) -> Result<Vec<JournalEntry>, String> {
        if entries > self.layout.max_entries {
            return Err(format!(
                "journal {} claims {entries} entries, over its {}",
                self.volume.volume(),
                self.layout.max_entries
            ));
        }
        let length = (entries * 16).div_ceil(4096).max(1) * 4096;
        let bytes = run(
            &self.volume,
            BlockOp::Read {
                offset: self.layout.index_offset(),
                length: length as u32,
            },
        )
        .await
        .map_err(|err| err.to_string())?
        .unwrap_or_default();
        decode_index(&bytes, entries).map_err(|reason| reason.to_string())
    }
}
