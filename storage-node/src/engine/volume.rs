//! One volume: a sparse data file, its hash list and its activity log.
//!
//! Directory layout:
//! ```text
//! volume.json    metadata (see meta.rs)
//! data           the volume's bytes, sparse
//! hashes         4096-byte header ("TTHASHL1", chunk size LE) then 32 bytes per chunk
//! activity.log   extents whose hashes may be stale (see hashlist/activity_log.rs)
//! ```
//!
//! **Write ordering** (what keeps "hashes never lie" true across `kill -9`
//! and power loss):
//! 1. a write first marks its chunks dirty in memory and, if its extent is
//!    not yet marked durably, marks it in the activity log and fdatasyncs
//!    that — before the data write is issued;
//! 2. the data write is issued; FUA or a later FLUSH fdatasyncs the data file
//!    before the reply;
//! 3. the rehasher recomputes dirty chunks once no write is in flight on
//!    them (a per-chunk generation discards a hash that raced a write);
//! 4. a checkpoint fdatasyncs the data file, then writes the clean extents'
//!    hashes and fdatasyncs them, and only then clears those extents in the
//!    activity log — unless a write touched them meanwhile.
//!
//! After a crash, opening the volume rehashes exactly the extents the log
//! marks, so the hash list again describes the data on disk.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::io::{zero_range, IoEngine};
use super::meta::{self, VolumeMeta};
use crate::error::{NodeError, Result};
use crate::hashlist::{chunk_hash, ActivityLog, ChunkHash, HashTree};

use tether_proto::disk::hashes::{self, HEADER_LEN as HASHES_HEADER_LEN};
use tether_proto::disk::meta::MAX_VOLUME_BYTES;

/// Behaviour switches for one volume.
#[derive(Debug, Clone, Copy)]
pub struct VolumeOptions {
    /// Keep the hash list current during I/O. Off only to measure what upkeep
    /// costs; a volume opened with it off is fully rehashed the next time it
    /// is opened with it on.
    pub hash_upkeep: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        Self { hash_upkeep: true }
    }
}

/// Per-chunk bookkeeping for chunks whose hash is not current.
#[derive(Debug, Clone, Copy)]
struct DirtyChunk {
    /// Writes issued and not yet completed.
    in_flight: u32,
    /// Bumped by every write; a rehash whose generation changed is discarded.
    generation: u64,
    /// When the chunk became dirty: bounds how stale its hash may get.
    first_dirtied: Instant,
    /// The latest write: a chunk still being written is not worth hashing yet.
    last_write: Instant,
}

/// The activity log's in-memory side.
struct ActivityState {
    /// One bit per extent: marked (hashes may be stale on disk).
    marked: Vec<u64>,
    /// Version at which each extent's bit was last set.
    marked_at: Vec<u64>,
    /// Bumped by every write into the extent; checkpoints clear only unchanged extents.
    write_generation: Vec<u64>,
    /// Bumped on every change of `marked`.
    version: u64,
    /// The newest `version` known to be on disk.
    durable_version: u64,
}

impl ActivityState {
    fn new(n_extents: u64) -> Self {
        let words = n_extents.div_ceil(64) as usize;
        Self {
            marked: vec![0; words],
            marked_at: vec![0; n_extents as usize],
            write_generation: vec![0; n_extents as usize],
            version: 0,
            durable_version: 0,
        }
    }
    fn is_marked(&self, extent: u64) -> bool {
        self.marked[(extent / 64) as usize] & (1 << (extent % 64)) != 0
    }
    fn set(&mut self, extent: u64, on: bool) {
        let word = &mut self.marked[(extent / 64) as usize];
        if on {
            *word |= 1 << (extent % 64);
        } else {
            *word &= !(1 << (extent % 64));
        }
    }
    fn grow(&mut self, n_extents: u64) {
        self.marked.resize(n_extents.div_ceil(64) as usize, 0);
        self.marked_at.resize(n_extents as usize, 0);
        self.write_generation.resize(n_extents as usize, 0);
    }
    fn marked_extents(&self) -> Vec<u64> {
        (0..self.marked_at.len() as u64)
            .filter(|extent| self.is_marked(*extent))
            .collect()
    }
}

struct HashState {
    /// Shared with snapshots (Delta Sync, scrub): taking one is O(1); the
    /// rehasher copies the tree at most once per snapshot, when it next
    /// changes a leaf, so the write path never copies it.
    tree: Arc<HashTree>,
    dirty: HashMap<u64, DirtyChunk>,
    activity: ActivityState,
    n_extents: u64,
}

/// An extent and its write generation when a checkpoint looked at it.
type ExtentGeneration = (u64, u64);
/// Leaves to persist, starting at a chunk index.
type LeafRun = (u64, Vec<ChunkHash>);

/// Counters a volume reports (API and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeStats {
    pub size_bytes: u64,
    pub chunk_size_bytes: u64,
    pub allocated_bytes: u64,
    pub dirty_chunks: u64,
    pub marked_extents: u64,
}

pub struct Volume {
    name: String,
    dir: PathBuf,
    data: Arc<File>,
    hashes: Arc<File>,
    activity_log: Arc<ActivityLog>,
    io: IoEngine,
    meta: Mutex<VolumeMeta>,
    size_bytes: AtomicU64,
    chunk_size: u64,
    extent_chunks: u64,
    zero_chunk_hash: ChunkHash,
    state: Mutex<HashState>,
    /// Serialises activity-log writes (group commit: one write covers every waiter).
    activity_persist: tokio::sync::Mutex<()>,
    /// One checkpoint or resize at a time.
    maintenance: tokio::sync::Mutex<()>,
    rehash_wanted: tokio::sync::Notify,
    options: VolumeOptions,
    /// Extents rehashed by crash recovery when this volume was opened.
    recovered_extents: AtomicU64,
    /// Bytes read from the data file to rehash chunks (Delta Sync reports its share).
    bytes_rehashed: AtomicU64,
}

fn io_err(volume: &str, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NodeError {
    let volume = volume.to_string();
    let path = path.display().to_string();
    move |source| NodeError::Io {
        volume,
        op,
        path,
        source,
    }
}

impl Volume {
    /// Creates a volume directory; the metadata file is written last, so a
    /// directory without one is an unfinished create (no data in it was
    /// ever acknowledged) and the pool removes it.
    pub fn create(
        dir: &Path,
        meta: VolumeMeta,
        io: IoEngine,
        options: VolumeOptions,
    ) -> Result<Arc<Self>> {
        Self::initialize(dir, meta)?;
        Self::open(dir, io, options)
    }

    /// Writes a new volume's files into `dir`, `volume.json` last, each
    /// fsynced. Blocking.
    pub fn initialize(dir: &Path, meta: VolumeMeta) -> Result<()> {
        let name = meta.name.clone();
        if meta.size_bytes == 0
            || !meta.size_bytes.is_multiple_of(512)
            || meta.size_bytes > MAX_VOLUME_BYTES
        {
            return Err(NodeError::BadSize {
                volume: name,
                size_bytes: meta.size_bytes,
            });
        }
        std::fs::create_dir_all(dir).map_err(io_err(&name, "create dir", dir))?;
        let data_path = dir.join("data");
        let data = File::create(&data_path).map_err(io_err(&name, "create data", &data_path))?;
        data.set_len(meta.size_bytes)
            .map_err(io_err(&name, "size data", &data_path))?;
        data.sync_all()
            .map_err(io_err(&name, "sync data", &data_path))?;

        let zero = chunk_hash(&vec![0u8; meta.chunk_size_bytes as usize]);
        let hashes_path = dir.join("hashes");
        let hashes =
            File::create(&hashes_path).map_err(io_err(&name, "create hashes", &hashes_path))?;
        hashes
            .write_all_at(&hashes::encode_header(meta.chunk_size_bytes), 0)
            .map_err(io_err(&name, "write hashes", &hashes_path))?;
        write_leaves(&hashes, 0, &vec![zero; meta.n_chunks() as usize])
            .and_then(|_| hashes.sync_all())
            .map_err(io_err(&name, "write hashes", &hashes_path))?;

        let log_path = dir.join("activity.log");
        let _ = std::fs::remove_file(&log_path);
        ActivityLog::create(&log_path).map_err(io_err(&name, "create activity log", &log_path))?;
        meta::store(&meta, &dir.join("volume.json"))
    }

    /// Opens a volume, rehashing the extents its activity log marks.
    pub fn open(dir: &Path, io: IoEngine, options: VolumeOptions) -> Result<Arc<Self>> {
        let meta_path = dir.join("volume.json");
        let dir_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = meta::load(&dir_name, &meta_path)?;
        let name = meta.name.clone();
        let open_rw = |path: &Path, op| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_err(&name, op, path))
        };
        let data_path = dir.join("data");
        let data = open_rw(&data_path, "open data")?;
        let hashes_path = dir.join("hashes");
        let hashes = open_rw(&hashes_path, "open hashes")?;
        let n_chunks = meta.n_chunks();
        let bad_hashes = |err: tether_proto::ProtoError| NodeError::BadMetadata {
            volume: name.clone(),
            path: hashes_path.display().to_string(),
            reason: err.to_string(),
        };
        let mut header = vec![0u8; HASHES_HEADER_LEN as usize];
        hashes
            .read_exact_at(&mut header, 0)
            .map_err(io_err(&name, "read hashes", &hashes_path))?;
        hashes::check_header(&header, meta.chunk_size_bytes).map_err(bad_hashes)?;
        let hashes_len = hashes
            .metadata()
            .map_err(io_err(&name, "read hashes", &hashes_path))?
            .len();
        hashes::check_len(hashes_len, n_chunks).map_err(bad_hashes)?;
        let mut leaf_bytes = vec![0u8; (n_chunks * 32) as usize];
        hashes
            .read_exact_at(&mut leaf_bytes, HASHES_HEADER_LEN)
            .map_err(io_err(&name, "read hashes", &hashes_path))?;
        let leaves: Vec<ChunkHash> = leaf_bytes
            .chunks_exact(32)
            .map(|leaf| leaf.try_into().unwrap())
            .collect();
        let log_path = dir.join("activity.log");
        let (activity_log, marked) =
            ActivityLog::open(&log_path).map_err(io_err(&name, "open activity log", &log_path))?;

        let n_extents = meta.n_extents();
        let mut activity = ActivityState::new(n_extents);
        let mut to_rehash: Vec<u64> = marked
            .into_iter()
            .filter(|extent| *extent < n_extents)
            .collect();
        if !options.hash_upkeep {
            // Without upkeep the list will go stale: mark everything now so the
            // next open with upkeep rehashes it all.
            to_rehash = (0..n_extents).collect();
        }
        for extent in &to_rehash {
            activity.set(*extent, true);
        }
        let volume = Arc::new(Self {
            name: name.clone(),
            dir: dir.to_path_buf(),
            data: Arc::new(data),
            hashes: Arc::new(hashes),
            activity_log: Arc::new(activity_log),
            io,
            size_bytes: AtomicU64::new(meta.size_bytes),
            chunk_size: meta.chunk_size_bytes,
            extent_chunks: meta.extent_chunks,
            zero_chunk_hash: chunk_hash(&vec![0u8; meta.chunk_size_bytes as usize]),
            meta: Mutex::new(meta),
            state: Mutex::new(HashState {
                tree: Arc::new(HashTree::from_leaves(leaves)),
                dirty: HashMap::new(),
                activity,
                n_extents,
            }),
            activity_persist: tokio::sync::Mutex::new(()),
            maintenance: tokio::sync::Mutex::new(()),
            rehash_wanted: tokio::sync::Notify::new(),
            options,
            recovered_extents: AtomicU64::new(0),
            bytes_rehashed: AtomicU64::new(0),
        });
        if options.hash_upkeep && !to_rehash.is_empty() {
            volume.recover(&to_rehash)?;
        } else if !options.hash_upkeep {
            let state = volume.state.lock().unwrap();
            volume
                .activity_log
                .write(&state.activity.marked, n_extents)
                .map_err(io_err(&name, "write activity log", &log_path))?;
        }
        Ok(volume)
    }

    /// Crash recovery: rehash every chunk of the marked extents from the data
    /// on disk, persist those hashes, then clear the log. Blocking.
    fn recover(&self, extents: &[u64]) -> Result<()> {
        let started = Instant::now();
        let n_chunks = self.n_chunks();
        let mut buf = vec![0u8; self.chunk_size as usize];
        let mut state = self.state.lock().unwrap();
        let data_path = self.dir.join("data");
        for extent in extents {
            let first = extent * self.extent_chunks;
            let last = ((extent + 1) * self.extent_chunks).min(n_chunks);
            for chunk_idx in first..last {
                read_chunk(&self.data, chunk_idx, self.chunk_size, &mut buf)
                    .map_err(io_err(&self.name, "rehash", &data_path))?;
                Arc::make_mut(&mut state.tree).set_leaf(chunk_idx, chunk_hash(&buf));
            }
            write_leaves(
                &self.hashes,
                first,
                &state.tree.leaves()[first as usize..last as usize],
            )
            .map_err(io_err(&self.name, "write hashes", &self.dir.join("hashes")))?;
        }
        self.hashes.sync_data().map_err(io_err(
            &self.name,
            "sync hashes",
            &self.dir.join("hashes"),
        ))?;
        for extent in extents {
            state.activity.set(*extent, false);
        }
        self.activity_log
            .write(&state.activity.marked, state.n_extents)
            .map_err(io_err(
                &self.name,
                "write activity log",
                &self.dir.join("activity.log"),
            ))?;
        self.recovered_extents
            .store(extents.len() as u64, Ordering::Release);
        tracing::info!(
            volume = %self.name,
            extents = extents.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rehashed extents the activity log marked"
        );
        metrics::counter!("tether_hashlist_recovered_extents_total", "volume" => self.name.clone())
            .increment(extents.len() as u64);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn n_chunks(&self) -> u64 {
        self.size_bytes().div_ceil(self.chunk_size).max(1)
    }

    /// Extents crash recovery rehashed when the volume was opened (0 after a clean shutdown).
    /// Bytes read so far to rehash dirty chunks.
    pub fn bytes_rehashed(&self) -> u64 {
        self.bytes_rehashed.load(Ordering::Relaxed)
    }

    pub fn recovered_extents(&self) -> u64 {
        self.recovered_extents.load(Ordering::Acquire)
    }

    pub fn options(&self) -> VolumeOptions {
        self.options
    }

    pub fn check_range(&self, op: &'static str, offset: u64, length: u64) -> Result<()> {
        let size = self.size_bytes();
        match offset.checked_add(length) {
            Some(end) if end <= size => Ok(()),
            _ => Err(NodeError::OutOfRange {
                volume: self.name.clone(),
                op,
                offset,
                length,
                size,
            }),
        }
    }

    fn data_err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> NodeError {
        io_err(&self.name, op, &self.dir.join("data"))
    }

    pub async fn read(&self, offset: u64, length: u32) -> Result<Vec<u8>> {
        self.check_range("read", offset, length as u64)?;
        self.io
            .read_at(&self.data, offset, length as usize)
            .await
            .map_err(self.data_err("read"))
    }

    pub async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<()> {
        let length = data.len() as u64;
        self.check_range("write", offset, length)?;
        let chunks = self.begin_write(offset, length).await?;
        let result = self
            .io
            .write_at(&self.data, offset, data)
            .await
            .map_err(self.data_err("write"));
        self.end_write(chunks);
        result?;
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    /// Zeroes a range. With `may_punch` the space is released (TRIM,
    /// WRITE_ZEROES without NO_HOLE); otherwise it stays allocated.
    pub async fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        may_punch: bool,
        fua: bool,
    ) -> Result<()> {
        self.check_range("write zeroes", offset, length)?;
        if length == 0 {
            return Ok(());
        }
        let chunks = self.begin_write(offset, length).await?;
        let result = zero_range(&self.data, offset, length, may_punch)
            .await
            .map_err(self.data_err("zero range"));
        self.end_write(chunks);
        result?;
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    pub async fn flush(&self) -> Result<()> {
        let started = Instant::now();
        self.io
            .fdatasync(&self.data)
            .await
            .map_err(self.data_err("fdatasync"))?;
        metrics::histogram!("tether_volume_flush_seconds", "volume" => self.name.clone())
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Step 1 of the write ordering: mark chunks dirty, and their extents in
    /// the activity log durably, before the data write is issued.
    async fn begin_write(&self, offset: u64, length: u64) -> Result<Option<(u64, u64)>> {
        if !self.options.hash_upkeep || length == 0 {
            return Ok(None);
        }
        let first = offset / self.chunk_size;
        let last = (offset + length - 1) / self.chunk_size;
        let needed_version = {
            let now = Instant::now();
            let mut state = self.state.lock().unwrap();
            for chunk_idx in first..=last {
                let dirty = state.dirty.entry(chunk_idx).or_insert(DirtyChunk {
                    in_flight: 0,
                    generation: 0,
                    first_dirtied: now,
                    last_write: now,
                });
                dirty.in_flight += 1;
                dirty.generation += 1;
                dirty.last_write = now;
            }
            let mut needed = 0;
            for extent in first / self.extent_chunks..=last / self.extent_chunks {
                let activity = &mut state.activity;
                activity.write_generation[extent as usize] += 1;
                if !activity.is_marked(extent) {
                    activity.set(extent, true);
                    activity.version += 1;
                    activity.marked_at[extent as usize] = activity.version;
                }
                needed = needed.max(activity.marked_at[extent as usize]);
            }
            (needed > state.activity.durable_version).then_some(needed)
        };
        if let Some(version) = needed_version {
            if let Err(err) = self.persist_activity(version).await {
                self.end_write(Some((first, last)));
                return Err(err);
            }
        }
        Ok(Some((first, last)))
    }

    fn end_write(&self, chunks: Option<(u64, u64)>) {
        let Some((first, last)) = chunks else { return };
        {
            let mut state = self.state.lock().unwrap();
            for chunk_idx in first..=last {
                if let Some(dirty) = state.dirty.get_mut(&chunk_idx) {
                    dirty.in_flight -= 1;
                }
            }
        }
        self.rehash_wanted.notify_one();
    }

    /// Writes the activity log until the version on disk is at least `version`.
    async fn persist_activity(&self, version: u64) -> Result<()> {
        let _guard = self.activity_persist.lock().await;
        let (bits, n_extents, snapshot_version) = {
            let state = self.state.lock().unwrap();
            if state.activity.durable_version >= version {
                return Ok(());
            }
            (
                state.activity.marked.clone(),
                state.n_extents,
                state.activity.version,
            )
        };
        let log = self.activity_log.clone();
        tokio::task::spawn_blocking(move || log.write(&bits, n_extents))
            .await
            .expect("activity log write does not panic")
            .map_err(io_err(
                &self.name,
                "write activity log",
                &self.dir.join("activity.log"),
            ))?;
        let mut state = self.state.lock().unwrap();
        state.activity.durable_version = state.activity.durable_version.max(snapshot_version);
        metrics::counter!("tether_hashlist_activity_log_writes_total", "volume" => self.name.clone()).increment(1);
        Ok(())
    }

    /// Waits until a write asks for rehashing.
    pub async fn rehash_wanted(&self) {
        self.rehash_wanted.notified().await
    }

    /// Step 3: recomputes the hash of every dirty chunk with no write in
    /// flight. Returns how many chunks became clean.
    pub async fn rehash_dirty(&self) -> Result<u64> {
        self.rehash_due(Duration::ZERO, Duration::ZERO).await
    }

    /// Recomputes the hashes of dirty chunks that have had no write for
    /// `quiet`, or have been dirty for `max_staleness`. Hashing a chunk that
    /// is still being written is wasted work (the next write dirties it
    /// again), so under a write storm hashing waits, for at most `max_staleness`.
    pub async fn rehash_due(&self, quiet: Duration, max_staleness: Duration) -> Result<u64> {
        let now = Instant::now();
        let candidates: Vec<(u64, u64)> = {
            let state = self.state.lock().unwrap();
            state
                .dirty
                .iter()
                .filter(|(_, dirty)| {
                    dirty.in_flight == 0
                        && (now.duration_since(dirty.last_write) >= quiet
                            || now.duration_since(dirty.first_dirtied) >= max_staleness)
                })
                .map(|(chunk_idx, dirty)| (*chunk_idx, dirty.generation))
                .collect()
        };
        let mut cleaned = 0;
        for (chunk_idx, generation) in candidates {
            let hash = self.hash_chunk_on_disk(chunk_idx, "rehash read").await?;
            self.bytes_rehashed
                .fetch_add(self.chunk_size, Ordering::Relaxed);
            let mut state = self.state.lock().unwrap();
            let unchanged = state
                .dirty
                .get(&chunk_idx)
                .is_some_and(|dirty| dirty.generation == generation && dirty.in_flight == 0);
            if unchanged && chunk_idx < state.tree.n_chunks() {
                Arc::make_mut(&mut state.tree).set_leaf(chunk_idx, hash);
                state.dirty.remove(&chunk_idx);
                cleaned += 1;
            }
        }
        if cleaned > 0 {
            metrics::counter!("tether_hashlist_chunks_rehashed_total", "volume" => self.name.clone()).increment(cleaned);
            metrics::counter!("tether_hashlist_bytes_hashed_total", "volume" => self.name.clone())
                .increment(cleaned * self.chunk_size);
        }
        Ok(cleaned)
    }

    /// Step 4: persists the hashes of clean, marked extents and unmarks them.
    /// Returns how many extents were unmarked.
    pub async fn checkpoint(&self) -> Result<u64> {
        if !self.options.hash_upkeep {
            return Ok(0);
        }
        let _maintenance = self.maintenance.lock().await;
        // Clean, marked extents: their write generations (to clear them only
        // if untouched meanwhile) and their leaves as of now (to persist).
        let (generations, leaf_writes): (Vec<ExtentGeneration>, Vec<LeafRun>) = {
            let state = self.state.lock().unwrap();
            let busy: std::collections::HashSet<u64> = state
                .dirty
                .keys()
                .map(|chunk_idx| chunk_idx / self.extent_chunks)
                .collect();
            let n_chunks = state.tree.n_chunks();
            state
                .activity
                .marked_extents()
                .into_iter()
                .filter(|extent| !busy.contains(extent))
                .map(|extent| {
                    let first = extent * self.extent_chunks;
                    let last = ((extent + 1) * self.extent_chunks).min(n_chunks);
                    let leaves = state.tree.leaves()[first as usize..last as usize].to_vec();
                    (
                        (extent, state.activity.write_generation[extent as usize]),
                        (first, leaves),
                    )
                })
                .unzip()
        };
        if generations.is_empty() {
            return Ok(0);
        }
        self.io
            .fdatasync(&self.data)
            .await
            .map_err(self.data_err("checkpoint fdatasync"))?;
        let hashes = self.hashes.clone();
        tokio::task::spawn_blocking(move || {
            for (first, leaves) in leaf_writes {
                write_leaves(&hashes, first, &leaves)?;
            }
            hashes.sync_data()
        })
        .await
        .expect("hash write does not panic")
        .map_err(io_err(
            &self.name,
            "checkpoint hashes",
            &self.dir.join("hashes"),
        ))?;
        let (version, cleared) = {
            let mut state = self.state.lock().unwrap();
            let mut cleared = 0;
            for (extent, generation) in &generations {
                if state.activity.write_generation[*extent as usize] == *generation {
                    state.activity.set(*extent, false);
                    cleared += 1;
                }
            }
            if cleared == 0 {
                return Ok(0);
            }
            state.activity.version += 1;
            (state.activity.version, cleared)
        };
        self.persist_activity(version).await?;
        Ok(cleared)
    }

    /// Rehashes and checkpoints until nothing is dirty or marked (clean shutdown, and before comparisons).
    pub async fn settle(&self) -> Result<()> {
        if !self.options.hash_upkeep {
            return Ok(());
        }
        for _ in 0..1000 {
            self.rehash_dirty().await?;
            self.checkpoint().await?;
            let settled = {
                let state = self.state.lock().unwrap();
                state.dirty.is_empty() && state.activity.marked_extents().is_empty()
            };
            if settled {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Grows the volume. Clients see the new size when they reconnect.
    pub async fn resize(&self, new_size: u64) -> Result<()> {
        let _maintenance = self.maintenance.lock().await;
        let current = self.size_bytes();
        if new_size == current {
            return Ok(());
        }
        if new_size < current {
            return Err(NodeError::ShrinkRefused {
                volume: self.name.clone(),
                current,
                requested: new_size,
            });
        }
        if !new_size.is_multiple_of(512) || new_size > MAX_VOLUME_BYTES {
            return Err(NodeError::BadSize {
                volume: self.name.clone(),
                size_bytes: new_size,
            });
        }
        let mut meta = self.meta.lock().unwrap().clone();
        let old_chunks = meta.n_chunks();
        meta.size_bytes = new_size;
        let new_chunks = meta.n_chunks();
        // Data file first, then zero hashes for the new chunks, then the
        // metadata that makes the new size real.
        self.data
            .set_len(new_size)
            .and_then(|_| self.data.sync_all())
            .map_err(self.data_err("grow data"))?;
        write_leaves(
            &self.hashes,
            old_chunks,
            &vec![self.zero_chunk_hash; (new_chunks - old_chunks) as usize],
        )
        .and_then(|_| self.hashes.sync_data())
        .map_err(io_err(&self.name, "grow hashes", &self.dir.join("hashes")))?;
        meta::store(&meta, &self.dir.join("volume.json"))?;
        {
            let mut state = self.state.lock().unwrap();
            Arc::make_mut(&mut state.tree).grow(new_chunks, self.zero_chunk_hash);
            state.n_extents = meta.n_extents();
            let n_extents = state.n_extents;
            state.activity.grow(n_extents);
        }
        *self.meta.lock().unwrap() = meta;
        self.size_bytes.store(new_size, Ordering::Release);
        tracing::info!(volume = %self.name, from = current, to = new_size, "volume resized");
        Ok(())
    }

    /// Chunks whose hash awaits recomputation.
    pub fn dirty_chunks(&self) -> u64 {
        self.state.lock().unwrap().dirty.len() as u64
    }

    pub fn stats(&self) -> VolumeStats {
        let allocated_bytes = self
            .data
            .metadata()
            .map(|meta| meta.blocks() * 512)
            .unwrap_or(0);
        let state = self.state.lock().unwrap();
        VolumeStats {
            size_bytes: self.size_bytes(),
            chunk_size_bytes: self.chunk_size,
            allocated_bytes,
            dirty_chunks: state.dirty.len() as u64,
            marked_extents: state.activity.marked_extents().len() as u64,
        }
    }

    /// A snapshot of the hash tree (its leaves may be stale for dirty
    /// chunks; call [`Volume::settle`] first when comparing). O(1).
    pub fn hash_tree(&self) -> Arc<HashTree> {
        self.state.lock().unwrap().tree.clone()
    }

    /// The hash of one chunk as it is in the data file (zero-padded past the end).
    async fn hash_chunk_on_disk(&self, chunk_idx: u64, op: &'static str) -> Result<ChunkHash> {
        let offset = chunk_idx * self.chunk_size;
        let buf = self
            .io
            .read_at(&self.data, offset, self.chunk_size as usize)
            .await
            .map_err(self.data_err(op))?;
        Ok(chunk_hash(&buf))
    }

    /// Recomputes every chunk hash from the data on disk (scrub, tests).
    pub async fn compute_hashes_from_data(&self) -> Result<Vec<ChunkHash>> {
        let n_chunks = self.n_chunks();
        let mut leaves = Vec::with_capacity(n_chunks as usize);
        for chunk_idx in 0..n_chunks {
            leaves.push(self.hash_chunk_on_disk(chunk_idx, "scrub read").await?);
        }
        Ok(leaves)
    }
}

/// Reads one whole chunk into `buf`, zero-filling past the end of the file.
fn read_chunk(file: &File, chunk_idx: u64, chunk_size: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], chunk_idx * chunk_size + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    buf[done..].fill(0);
    Ok(())
}

fn write_leaves(file: &File, first_chunk: u64, leaves: &[ChunkHash]) -> std::io::Result<()> {
    let bytes: Vec<u8> = leaves.iter().flatten().copied().collect();
    file.write_all_at(&bytes, HASHES_HEADER_LEN + first_chunk * 32)
}
