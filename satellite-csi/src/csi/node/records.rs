//! What the node plugin has staged, kept in its state directory so a
//! restarted plugin (or one that failed half-way through a call) knows
//! every loop device, mount and volume host it made. One JSON file per
//! volume, replaced whole (written aside, fsynced, renamed); each volume's
//! directory (named by a hash of its id, so an id never names a path)
//! holds its host's FUSE mount point, control socket and log.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How the volume is consumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Access {
    Mount {
        fs_type: String,
        mount_flags: Vec<String>,
    },
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedVolume {
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub access: Access,
    pub read_only: bool,
    /// The loop device on the host's FUSE file, once made.
    #[serde(default)]
    pub loop_device: Option<String>,
    /// The volume host's process, once started.
    #[serde(default)]
    pub host_pid: Option<u32>,
    /// Published targets and whether each is read-only.
    #[serde(default)]
    pub published: BTreeMap<PathBuf, bool>,
}

/// The records under one state directory.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn new(state_dir: &Path) -> Self {
        Records {
            dir: state_dir.join("v"),
        }
    }

    fn key(volume_id: &str) -> String {
        blake3::hash(volume_id.as_bytes()).to_hex()[..16].to_string()
    }

    fn record_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{}.json", Self::key(volume_id)))
    }

    /// The volume's own directory (its host's files).
    pub fn volume_dir(&self, volume_id: &str) -> PathBuf {
        self.dir.join(Self::key(volume_id))
    }

    pub fn fuse_dir(&self, volume_id: &str) -> PathBuf {
        self.volume_dir(volume_id).join("fuse")
    }

    pub fn disk_file(&self, volume_id: &str) -> PathBuf {
        self.fuse_dir(volume_id).join(crate::volume_host::DISK_FILE)
    }

    pub fn socket(&self, volume_id: &str) -> PathBuf {
        self.volume_dir(volume_id).join("ctl")
    }

    pub fn host_log(&self, volume_id: &str) -> PathBuf {
        self.volume_dir(volume_id).join("host.log")
    }

    pub fn load(&self, volume_id: &str) -> std::io::Result<Option<StagedVolume>> {
        match std::fs::read(self.record_path(volume_id)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub fn save(&self, record: &StagedVolume) -> std::io::Result<()> {
        std::fs::create_dir_all(self.volume_dir(&record.volume_id))?;
        let path = self.record_path(&record.volume_id);
        let aside = path.with_extension("json.new");
        let mut file = std::fs::File::create(&aside)?;
        file.write_all(&serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&aside, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Forgets the volume: its record and its directory.
    pub fn remove(&self, volume_id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.record_path(volume_id)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        match std::fs::remove_dir_all(self.volume_dir(volume_id)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// Every staged volume.
    pub fn list(&self) -> std::io::Result<Vec<StagedVolume>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(err) => return Err(err),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                let bytes = std::fs::read(&path)?;
                records
                    .push(serde_json::from_slice(&bytes).map_err(|err| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, err)
                    })?);
            }
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reload_and_ids_never_name_paths() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        let record = StagedVolume {
            volume_id: "../../etc/passwd".into(),
            staging_path: "/staging".into(),
            access: Access::Mount {
                fs_type: "ext4".into(),
                mount_flags: vec!["noatime".into()],
            },
            read_only: false,
            loop_device: Some("/dev/loop7".into()),
            host_pid: Some(42),
            published: BTreeMap::from([(PathBuf::from("/target"), true)]),
        };
        records.save(&record).unwrap();
        assert!(records
            .volume_dir(&record.volume_id)
            .starts_with(dir.path()));
        assert_eq!(
            Records::new(dir.path()).load(&record.volume_id).unwrap(),
            Some(record.clone())
        );
        assert_eq!(records.list().unwrap(), vec![record.clone()]);
        records.remove(&record.volume_id).unwrap();
        assert_eq!(records.load(&record.volume_id).unwrap(), None);
        records.remove(&record.volume_id).unwrap();
    }
}
