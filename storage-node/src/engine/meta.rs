//! `volume.json` in the volume directory, read and replaced atomically
//! (temporary file, fsync, rename, fsync directory). The format itself and
//! its checks are `tether_proto::disk::meta`.

use std::io::Write;
use std::path::Path;

pub use tether_proto::disk::meta::{VolumeMeta, DEFAULT_CHUNK_SIZE};

use crate::error::{NodeError, Result};

/// Reads and checks a volume's metadata.
pub fn load(volume: &str, path: &Path) -> Result<VolumeMeta> {
    let bad = |reason: String| NodeError::BadMetadata {
        volume: volume.to_string(),
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|err| bad(err.to_string()))?;
    VolumeMeta::decode(&bytes).map_err(|err| bad(err.to_string()))
}

/// Replaces a volume's metadata durably.
pub fn store(meta: &VolumeMeta, path: &Path) -> Result<()> {
    let io_error = |source| NodeError::Io {
        volume: meta.name.clone(),
        op: "write metadata",
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp).map_err(io_error)?;
    file.write_all(&meta.encode()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    std::fs::rename(&tmp, path).map_err(io_error)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_on_disk_and_refuses_newer_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volume.json");
        let meta = VolumeMeta::new("vol1", 10 << 30);
        store(&meta, &path).unwrap();
        assert_eq!(load("vol1", &path).unwrap(), meta);

        let mut newer = serde_json::to_value(&meta).unwrap();
        newer["format_version"] = 99.into();
        std::fs::write(&path, serde_json::to_vec(&newer).unwrap()).unwrap();
        let err = load("vol1", &path).unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
    }
}
