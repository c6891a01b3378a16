//! A pool: a directory of volumes on one node, with a capacity that
//! provisioned sizes may not exceed (thin provisioning: space is used only
//! where data is written, but a volume's full size is promised).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tether_proto::admin::valid_volume_name;

use super::io::IoEngine;
use super::meta::VolumeMeta;
use super::volume::{Volume, VolumeOptions};
use crate::error::{NodeError, Result};

pub struct Pool {
    dir: PathBuf,
    capacity_bytes: u64,
    io: IoEngine,
    options: VolumeOptions,
    volumes: Mutex<BTreeMap<String, Arc<Volume>>>,
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
        let mut volumes = BTreeMap::new();
        let entries = std::fs::read_dir(&volumes_dir).map_err(|source| NodeError::Io {
            volume: String::new(),
            op: "list pool",
            path: volumes_dir.display().to_string(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.join("volume.json").exists() {
                tracing::warn!(path = %path.display(), "removing an unfinished volume create");
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            let volume = Volume::open(&path, io.clone(), options)?;
            volumes.insert(volume.name().to_string(), volume);
        }
        tracing::info!(pool = %dir.display(), volumes = volumes.len(), capacity_bytes, "pool opened");
        Ok(Self {
            dir: dir.to_path_buf(),
            capacity_bytes,
            io,
            options,
            volumes: Mutex::new(volumes),
        })
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
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
        if provisioned.saturating_add(extra) > self.capacity_bytes {
            return Err(NodeError::PoolFull {
                pool: self.dir.display().to_string(),
                requested: extra,
                free: self.capacity_bytes.saturating_sub(provisioned),
                capacity: self.capacity_bytes,
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
        self.check_room(size_bytes)?;
        let dir = self.dir.join("volumes").join(name);
        let meta = VolumeMeta::new(name, size_bytes);
        let (io, options) = (self.io.clone(), self.options);
        let volume = tokio::task::spawn_blocking(move || Volume::create(&dir, meta, io, options))
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
