//! Versioned on-disk volume metadata: `volume.json` in the volume directory,
//! replaced atomically (temporary file, fsync, rename, fsync directory).
//!
//! ```text
//! {"format_version": 1, "name": "vol1", "size_bytes": 10737418240,
//!  "chunk_size_bytes": 262144, "extent_chunks": 64}
//! ```
//! Readers refuse a newer `format_version` rather than guess at it;
//! `migrate` lifts older ones.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{NodeError, Result};

/// The hash-list granularity: a 4k write dirties one chunk of this size.
pub const DEFAULT_CHUNK_SIZE: u64 = 256 * 1024;
/// Chunks per activity-log extent (16 MiB with the default chunk size).
pub const DEFAULT_EXTENT_CHUNKS: u64 = 64;

pub const FORMAT_VERSION: u32 = 1;

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

    pub fn load(volume: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| NodeError::BadMetadata {
            volume: volume.to_string(),
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|err| bad(err.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|err| bad(err.to_string()))?;
        let version = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if version > FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version} is newer than this build understands ({FORMAT_VERSION}); upgrade the node"
            )));
        }
        Self::migrate(value).map_err(bad)
    }

    /// Lifts metadata of an older format to the current one.
    fn migrate(value: serde_json::Value) -> std::result::Result<Self, String> {
        // Version 1 is the first; later versions add arms here.
        serde_json::from_value(value).map_err(|err| err.to_string())
    }

    pub fn store(&self, path: &Path) -> Result<()> {
        let io_error = |source| NodeError::Io {
            volume: self.name.clone(),
            op: "write metadata",
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io_error)?;
        file.write_all(&serde_json::to_vec_pretty(self).expect("metadata serializes"))
            .map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        std::fs::rename(&tmp, path).map_err(io_error)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_newer_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volume.json");
        let meta = VolumeMeta::new("vol1", 10 << 30);
        meta.store(&path).unwrap();
        assert_eq!(VolumeMeta::load("vol1", &path).unwrap(), meta);
        assert_eq!(meta.n_chunks(), (10 << 30) / DEFAULT_CHUNK_SIZE);

        let mut newer = serde_json::to_value(&meta).unwrap();
        newer["format_version"] = 99.into();
        std::fs::write(&path, serde_json::to_vec(&newer).unwrap()).unwrap();
        let err = VolumeMeta::load("vol1", &path).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
