//! `volume.json`: a volume's versioned metadata.
//!
//! ```text
//! {"format_version": 1, "name": "vol1", "size_bytes": 10737418240,
//!  "chunk_size_bytes": 262144, "extent_chunks": 64}
//! ```
//! Decoding refuses a newer `format_version` rather than guess at it, lifts
//! older ones, and checks every field's range: the node divides by the chunk
//! size and sizes its hash list by the chunk count.

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// The hash-list granularity: a 4k write dirties one chunk of this size.
pub const DEFAULT_CHUNK_SIZE: u64 = 256 * 1024;
/// Chunks per activity-log extent (16 MiB with the default chunk size).
pub const DEFAULT_EXTENT_CHUNKS: u64 = 64;
/// The largest volume Tether creates or opens: 1 PiB.
pub const MAX_VOLUME_BYTES: u64 = 1 << 50;
const MIN_CHUNK_SIZE: u64 = 4096;
const MAX_CHUNK_SIZE: u64 = 16 << 20;
const MAX_EXTENT_CHUNKS: u64 = 1 << 16;

pub const FORMAT_VERSION: u32 = 1;

const FILE: &str = "volume.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub format_version: u32,
    pub name: String,
    pub size_bytes: u64,
    pub chunk_size_bytes: u64,
    pub extent_chunks: u64,
}

impl VolumeMeta {
    pub fn new(name: &str, size_bytes: u64) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            name: name.to_string(),
            size_bytes,
            chunk_size_bytes: DEFAULT_CHUNK_SIZE,
            extent_chunks: DEFAULT_EXTENT_CHUNKS,
        }
    }

    pub fn n_chunks(&self) -> u64 {
        self.size_bytes.div_ceil(self.chunk_size_bytes).max(1)
    }

    pub fn n_extents(&self) -> u64 {
        self.n_chunks().div_ceil(self.extent_chunks)
    }

    /// Parses and checks `volume.json`.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|err| bad("(document)", err.to_string()))?;
        let version = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if version > FORMAT_VERSION as u64 {
            return Err(bad(
                "format_version",
                format!("format version {version} is newer than this build understands ({FORMAT_VERSION}); upgrade the node"),
            ));
        }
        let meta = Self::migrate(value)?;
        meta.check()?;
        Ok(meta)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("metadata serializes")
    }

    /// Lifts metadata of an older format to the current one.
    fn migrate(value: serde_json::Value) -> Result<Self, ProtoError> {
        // Version 1 is the first; later versions add arms here.
        serde_json::from_value(value).map_err(|err| bad("(document)", err.to_string()))
    }

    /// The ranges every field must be in before anything computes with it.
    pub fn check(&self) -> Result<(), ProtoError> {
        if self.name.is_empty() {
            return Err(bad("name", "is empty".into()));
        }
        if !self.chunk_size_bytes.is_power_of_two()
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size_bytes)
        {
            return Err(bad(
                "chunk_size_bytes",
                format!(
                    "{} is not a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}",
                    self.chunk_size_bytes
                ),
            ));
        }
        if !(1..=MAX_EXTENT_CHUNKS).contains(&self.extent_chunks) {
            return Err(bad(
                "extent_chunks",
                format!(
                    "{} is not from 1 to {MAX_EXTENT_CHUNKS}",
                    self.extent_chunks
                ),
            ));
        }
        if self.size_bytes == 0
            || !self.size_bytes.is_multiple_of(512)
            || self.size_bytes > MAX_VOLUME_BYTES
        {
            return Err(bad(
                "size_bytes",
                format!(
                    "{} is not a non-zero multiple of 512 of at most {MAX_VOLUME_BYTES}",
                    self.size_bytes
                ),
            ));
        }
        Ok(())
    }
}

fn bad(field: &'static str, reason: String) -> ProtoError {
    ProtoError::on_disk(FILE, field, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_newer_versions_and_fields_out_of_range() {
        let meta = VolumeMeta::new("vol1", 10 << 30);
        assert_eq!(VolumeMeta::decode(&meta.encode()).unwrap(), meta);
        assert_eq!(meta.n_chunks(), (10 << 30) / DEFAULT_CHUNK_SIZE);

        let with = |field: &str, value: serde_json::Value| {
            let mut edited = serde_json::to_value(&meta).unwrap();
            edited[field] = value;
            VolumeMeta::decode(&serde_json::to_vec(&edited).unwrap()).unwrap_err()
        };
        let err = with("format_version", 99.into()).to_string();
        assert!(err.contains("newer"), "{err}");
        for (field, value) in [
            ("chunk_size_bytes", 0u64),
            ("chunk_size_bytes", 3 << 12),
            ("extent_chunks", 0),
            ("size_bytes", 0),
            ("size_bytes", 513),
            ("size_bytes", MAX_VOLUME_BYTES + 512),
        ] {
            match with(field, value.into()) {
                ProtoError::BadOnDisk { field: named, .. } => assert_eq!(named, field),
                other => panic!("{field}={value}: {other}"),
            }
        }
    }
}
