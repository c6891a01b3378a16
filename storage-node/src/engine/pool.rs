//! A pool: a directory of volumes on one node, with a capacity that
//! provisioned sizes may not exceed (thin provisioning: space is used only
//! where data is written, but a volume's full size is promised).
//!
//! Opening a pool never deletes anything: an entry that cannot be opened
//! (no readable `volume.json`, EACCES, EIO, a newer format) is
//! *quarantined*: left exactly as it is, reported, and neither served,
//! re-created nor deleted until an operator has looked at it. One bad
//! volume does not stop the node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tether_proto::admin::valid_volume_name;

use super::io::IoEngine;
use super::meta::VolumeMeta;
use super::volume::{Volume, VolumeOptions};
use crate::error::{NodeError, Result};

/// Where a volume is built before it is renamed into place (not a valid volume name).
const CREATING_PREFIX: &str = ".creating-";

pub struct Pool {
    dir: PathBuf,
    capacity_bytes: u64,
    /// What the volumes' sizes may add up to (thin provisioning's promise).
    provisionable_bytes: u64,
    io: IoEngine,
    options: VolumeOptions,
    volumes: Mutex<BTreeMap<String, Arc<Volume>>>,
    /// Entries that could not be opened, by directory name: why.
    quarantined: BTreeMap<String, String>,
}

impl Pool {
    /// Opens (or creates) the pool at `dir`, opening every volume in it and
    /// recovering their hash lists. Blocking.
    pub fn open(
        dir: &Path,
        capacity_bytes: u64,
        io: IoEngine,
        options: VolumeOptions,
    ) -> Result<Self> {
        let volumes_dir = dir.join("volumes");
        std::fs::create_dir_all(&volumes_dir).map_err(|source| NodeError::Io {
            volume: String::new(),
            op: "create pool",
            path: volumes_dir.display().to_string(),
            source,
        })?;
        tether_common::protected::mark(dir, "a Tether storage pool").map_err(|source| {
            NodeError::Io {
                volume: String::new(),
                op: "mark pool",
                path: dir.display().to_string(),
                source,
            }
        })?;
        let mut volumes = BTreeMap::new();
        let mut quarantined = BTreeMap::new();
        let entries = std::fs::read_dir(&volumes_dir).map_err(|source| NodeError::Io {
            volume: String::new(),
            op: "list pool",
            path: volumes_dir.display().to_string(),
            source,
        })?;
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    tracing::error!(pool = %volumes_dir.display(), error = %err, "cannot read a pool entry; skipping it");
                    continue;
                }
            };
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(CREATING_PREFIX) {
                // A create that did not finish: this node's own scratch,
                // never a volume (a create counts once renamed into place).
                tracing::warn!(path = %path.display(), "removing an unfinished volume create");
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if !path.is_dir() {
                tracing::warn!(path = %path.display(), "not a volume directory; leaving it alone");
                continue;
            }
            match Volume::open(&path, io.clone(), options) {
                Ok(volume) => {
                    volumes.insert(volume.name().to_string(), volume);
                }
                Err(err) => {
                    tracing::error!(volume = %name, path = %path.display(), error = %err, "cannot open this copy; quarantined (kept as it is, not served, not deleted)");
                    quarantined.insert(name, err.to_string());
                }
            }
        }
        tracing::info!(pool = %dir.display(), volumes = volumes.len(), capacity_bytes, "pool opened");
        Ok(Self {
            dir: dir.to_path_buf(),
            capacity_bytes,
            provisionable_bytes: capacity_bytes,
            io,
            options,
            volumes: Mutex::new(volumes),
            quarantined,
        })
    }

    /// Copies that could not be opened at start, by name, with why.
    pub fn quarantined(&self) -> &BTreeMap<String, String> {
        &self.quarantined
    }

    /// The error to report for a quarantined copy of `name`, if it is one.
    pub fn quarantine_error(&self, name: &str) -> Option<NodeError> {
        self.quarantined
            .get(name)
            .map(|reason| NodeError::Quarantined {
                volume: name.to_string(),
                path: self.dir.join("volumes").join(name).display().to_string(),
                reason: reason.clone(),
            })
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Lets the volumes' sizes add up to `percent` of the capacity (100:
    /// no more than the disk holds).
    pub fn set_overprovision(&mut self, percent: u32) {
        self.provisionable_bytes = self.capacity_bytes / 100 * percent as u64
            + self.capacity_bytes % 100 * percent as u64 / 100;
    }

    pub fn provisionable_bytes(&self) -> u64 {
        self.provisionable_bytes
    }

    /// Bytes the pool's data files hold on disk (thin: only what was written).
    pub fn allocated_bytes(&self) -> u64 {
        self.list()
            .iter()
            .map(|volume| volume.stats().allocated_bytes)
            .sum()
    }

    pub fn io_backend(&self) -> &IoEngine {
        &self.io
    }

    pub fn provisioned_bytes(&self) -> u64 {
        self.volumes
            .lock()
            .unwrap()
            .values()
            .map(|volume| volume.size_bytes())
            .sum()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Volume>> {
        self.volumes.lock().unwrap().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Volume>> {
        self.volumes.lock().unwrap().values().cloned().collect()
    }

    fn check_room(&self, extra: u64) -> Result<()> {
        let provisioned = self.provisioned_bytes();
        if provisioned.saturating_add(extra) > self.provisionable_bytes {
            return Err(NodeError::PoolFull {
                pool: self.dir.display().to_string(),
                requested: extra,
                free: self.provisionable_bytes.saturating_sub(provisioned),
                capacity: self.provisionable_bytes,
            });
        }
        Ok(())
    }

    pub async fn create(&self, name: &str, size_bytes: u64) -> Result<Arc<Volume>> {
        if !valid_volume_name(name) {
            return Err(NodeError::BadMetadata {
                volume: name.to_string(),
                path: String::new(),
                reason: "invalid volume name".into(),
            });
        }
        if self.get(name).is_some() {
            return Err(NodeError::VolumeExists {
                volume: name.to_string(),
            });
        }
        if let Some(err) = self.quarantine_error(name) {
            return Err(err);
        }
        self.check_room(size_bytes)?;
        let volumes_dir = self.dir.join("volumes");
        let dir = volumes_dir.join(name);
        let scratch = volumes_dir.join(format!("{CREATING_PREFIX}{name}"));
        let meta = VolumeMeta::new(name, size_bytes);
        let (io, options, volume_name) = (self.io.clone(), self.options, name.to_string());
        let volume = tokio::task::spawn_blocking(move || {
            // Built aside and renamed into place: a crash leaves either no
            // volume or a whole one, never a directory that looks like a
            // damaged volume.
            let io_err = |op: &'static str, path: &Path| {
                let (volume, path) = (volume_name.clone(), path.display().to_string());
                move |source| NodeError::Io {
                    volume,
                    op,
                    path,
                    source,
                }
            };
            if dir.exists() {
                return Err(NodeError::VolumeExists {
                    volume: volume_name.clone(),
                });
            }
            let _ = std::fs::remove_dir_all(&scratch);
            Volume::initialize(&scratch, meta)?;
            std::fs::rename(&scratch, &dir).map_err(io_err("rename into place", &dir))?;
            std::fs::File::open(&volumes_dir)
                .and_then(|handle| handle.sync_all())
                .map_err(io_err("sync pool directory", &volumes_dir))?;
            Volume::open(&dir, io, options)
        })
        .await
        .expect("volume create does not panic")?;
        self.volumes
            .lock()
            .unwrap()
            .insert(name.to_string(), volume.clone());
        tracing::info!(volume = name, size_bytes, "volume created");
        Ok(volume)
    }

    pub async fn resize(&self, name: &str, size_bytes: u64) -> Result<()> {
        let volume = self.get(name).ok_or_else(|| NodeError::VolumeNotFound {
            volume: name.to_string(),
        })?;
        let current = volume.size_bytes();
        if size_bytes > current {
            self.check_room(size_bytes - current)?;
        }
        volume.resize(size_bytes).await
    }

    /// Removes a volume and its data. Callers stop serving it first.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let volume =
            self.volumes
                .lock()
                .unwrap()
                .remove(name)
                .ok_or_else(|| NodeError::VolumeNotFound {
                    volume: name.to_string(),
                })?;
        let dir = volume.dir().to_path_buf();
        drop(volume);
        tokio::task::spawn_blocking(move || {
            std::fs::remove_dir_all(&dir).map_err(|source| (dir, source))
        })
        .await
        .expect("remove does not panic")
        .map_err(|(dir, source)| NodeError::Io {
            volume: name.to_string(),
            op: "delete",
            path: dir.display().to_string(),
            source,
        })?;
        tracing::info!(volume = name, "volume deleted");
        Ok(())
    }

    /// Rehashes and checkpoints every volume (clean shutdown).
    pub async fn settle_all(&self) {
        for volume in self.list() {
            if let Err(err) = volume.settle().await {
                tracing::error!(volume = volume.name(), error = %err, "could not settle the hash list");
            }
        }
    }
}
