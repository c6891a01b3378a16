//! The in-process store: a revisioned key space behind a mutex, with leases
//! expired by a background task and, optionally, every change persisted to
//! one file (written to a temporary file, fsynced, renamed) so a dev
//! federation comes back with its volumes. Leased keys are not persisted:
//! their leases would have expired while the process was down anyway.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{
    Compare, CoordStore, KeyValue, Lease, LeaseId, Result, StoreError, Txn, TxnOp, TxnResponse,
    WatchEvent, WatchStream,
};

/// Events kept for watches that start at a past revision.
const HISTORY_LEN: usize = 10_000;
/// Buffer of each watch; a watcher that falls this far behind is cut off and re-lists.
const WATCH_BUFFER: usize = 4096;
/// Revisions reserved ahead in the file: a restart resumes past them, so a
/// revision handed out for a change that was not persisted (a leased key)
/// is never handed out again, and the file is written once per this many
/// such changes, not for each.
const REVISION_RESERVE: i64 = 10_000;
/// How often expired leases are collected.
const EXPIRY_TICK: Duration = Duration::from_millis(50);

/// The embedded coordination store. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Mutex<Inner>>,
}

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    sender: mpsc::Sender<Result<WatchEvent>>,
}

struct Inner {
    revision: i64,
    kvs: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, LeaseState>,
    next_lease: LeaseId,
    watchers: Vec<Watcher>,
    history: VecDeque<WatchEvent>,
    persist_path: Option<PathBuf>,
    /// An unleased (persisted) key changed since the file was last written.
    unpersisted_changes: bool,
    /// Revisions up to this one are reserved in the file.
    reserved: i64,
}

/// On-disk form: `{"format_version": 1, "revision": N, "reserved": R, "kvs": [...]}`;
/// a restart continues after `reserved` (absent in older files: `revision`).
#[derive(Serialize, Deserialize)]
struct PersistedState {
    format_version: u32,
    revision: i64,
    #[serde(default)]
    reserved: i64,
    kvs: Vec<PersistedKv>,
}

#[derive(Serialize, Deserialize)]
struct PersistedKv {
    key: String,
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
}

const FORMAT_VERSION: u32 = 1;

impl EmbeddedStore {
    /// A store that lives only in memory. Must be called inside a tokio runtime.
    pub fn in_memory() -> Self {
        Self::build(Inner::empty(None))
    }

    /// A store persisted to `path`, loading what is there.
    pub fn open(path: &Path) -> Result<Self> {
        let mut inner = Inner::empty(Some(path.to_path_buf()));
        match std::fs::read(path) {
            Ok(bytes) => {
                let state: PersistedState =
                    serde_json::from_slice(&bytes).map_err(|err| StoreError::Corrupt {
                        path: path.display().to_string(),
                        reason: err.to_string(),
                    })?;
                if state.format_version != FORMAT_VERSION {
                    return Err(StoreError::Corrupt {
                        path: path.display().to_string(),
                        reason: format!(
                            "format version {} is not {FORMAT_VERSION}",
                            state.format_version
                        ),
                    });
                }
                inner.revision = state.revision.max(state.reserved);
                inner.reserved = inner.revision;
                for kv in state.kvs {
                    inner.kvs.insert(
                        kv.key.clone(),
                        KeyValue {
                            key: kv.key,
                            value: kv.value,
                            create_revision: kv.create_revision,
                            mod_revision: kv.mod_revision,
                            version: kv.version,
                            lease: None,
                        },
                    );
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::Persist {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        Ok(Self::build(inner))
    }

    fn build(inner: Inner) -> Self {
        let inner = Arc::new(Mutex::new(inner));
        tokio::spawn(expire_leases(Arc::downgrade(&inner)));
        Self { inner }
    }
}

async fn expire_leases(inner: Weak<Mutex<Inner>>) {
    loop {
        tokio::time::sleep(EXPIRY_TICK).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut inner = inner.lock().unwrap();
        let now = Instant::now();
        let expired: Vec<LeaseId> = inner
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for lease in expired {
            // A failed persist here would be retried by the next change; the
            // keys are leased ones, which are never persisted anyway.
            let _ = inner.revoke(lease);
        }
        let _ = inner.persist();
    }
}

impl Inner {
    fn empty(persist_path: Option<PathBuf>) -> Self {
        Self {
            revision: 0,
            kvs: BTreeMap::new(),
            leases: HashMap::new(),
            next_lease: 1,
            watchers: Vec::new(),
            history: VecDeque::new(),
            persist_path,
            unpersisted_changes: false,
            reserved: 0,
        }
    }

    fn publish(&mut self, event: WatchEvent) {
        self.watchers.retain(|watcher| {
            !event.key().starts_with(&watcher.prefix)
                || watcher.sender.try_send(Ok(event.clone())).is_ok()
        });
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(event);
    }

    fn apply_put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
        revision: i64,
    ) -> Result<()> {
        if let Some(lease) = lease {
            let state = self
                .leases
                .get_mut(&lease)
                .ok_or(StoreError::LeaseExpired { lease })?;
            state.keys.insert(key.to_string());
        }
        let previous = self.kvs.get(key).cloned();
        if let Some(old_lease) = previous.as_ref().and_then(|kv| kv.lease) {
            if Some(old_lease) != lease {
                if let Some(state) = self.leases.get_mut(&old_lease) {
                    state.keys.remove(key);
                }
            }
        }
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision: previous.as_ref().map_or(revision, |kv| kv.create_revision),
            mod_revision: revision,
            version: previous.as_ref().map_or(1, |kv| kv.version + 1),
            lease,
        };
        // Leased keys die with their lease and are never persisted.
        if lease.is_none() || previous.is_some_and(|kv| kv.lease.is_none()) {
            self.unpersisted_changes = true;
        }
        self.kvs.insert(key.to_string(), kv.clone());
        self.publish(WatchEvent::Put(kv));
        Ok(())
    }

    fn apply_delete(&mut self, key: &str, revision: i64) -> bool {
        match self.kvs.remove(key) {
            Some(kv) => {
                match kv.lease.and_then(|lease| self.leases.get_mut(&lease)) {
                    Some(state) => {
                        state.keys.remove(key);
                    }
                    None => self.unpersisted_changes |= kv.lease.is_none(),
                }
                self.publish(WatchEvent::Delete {
                    key: key.to_string(),
                    mod_revision: revision,
                });
                true
            }
            None => false,
        }
    }

    fn revoke(&mut self, lease: LeaseId) -> Result<()> {
        let state = self
            .leases
            .remove(&lease)
            .ok_or(StoreError::LeaseExpired { lease })?;
        let live: Vec<String> = state
            .keys
            .into_iter()
            .filter(|key| self.kvs.contains_key(key))
            .collect();
        if !live.is_empty() {
            self.revision += 1;
            let revision = self.revision;
            for key in live {
                self.apply_delete(&key, revision);
            }
        }
        Ok(())
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::ModRevision { key, revision } => {
                self.kvs.get(key).map_or(0, |kv| kv.mod_revision) == *revision
            }
            Compare::Value { key, value } => self.kvs.get(key).is_some_and(|kv| &kv.value == value),
            Compare::Lease { key, lease } => {
                self.kvs.get(key).and_then(|kv| kv.lease).unwrap_or(0) == *lease
            }
        }
    }

    /// Writes the persisted (unleased) keys, if any changed.
    fn persist(&mut self) -> Result<()> {
        let Some(path) = &self.persist_path else {
            return Ok(());
        };
        if !self.unpersisted_changes && self.revision <= self.reserved {
            return Ok(());
        }
        let reserved = self.revision + REVISION_RESERVE;
        let state = PersistedState {
            format_version: FORMAT_VERSION,
            revision: self.revision,
            reserved,
            kvs: self
                .kvs
                .values()
                .filter(|kv| kv.lease.is_none())
                .map(|kv| PersistedKv {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&state).expect("store state serializes");
        write_atomically(path, &bytes).map_err(|source| StoreError::Persist {
            path: path.display().to_string(),
            source,
        })?;
        self.unpersisted_changes = false;
        self.reserved = reserved;
        Ok(())
    }
}

/// Temporary file, fsync, rename, fsync the directory: the file is the old
/// state or the new one after a crash, never half of each.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[async_trait]
impl CoordStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.inner.lock().unwrap().kvs.get(key).cloned())
    }

    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let inner = self.inner.lock().unwrap();
        let kvs = inner
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok((kvs, inner.revision))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64> {
        let mut inner = self.inner.lock().unwrap();
        if let Some(lease) = lease {
            if !inner.leases.contains_key(&lease) {
                return Err(StoreError::LeaseExpired { lease });
            }
        }
        inner.revision += 1;
        let revision = inner.revision;
        inner.apply_put(key, value, lease, revision)?;
        inner.persist()?;
        Ok(revision)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut inner = self.inner.lock().unwrap();
        if !inner.kvs.contains_key(key) {
            return Ok(false);
        }
        inner.revision += 1;
        let revision = inner.revision;
        inner.apply_delete(key, revision);
        inner.persist()?;
        Ok(true)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut inner = self.inner.lock().unwrap();
        let succeeded = txn
            .compares
            .iter()
            .all(|compare| inner.compare_holds(compare));
        let ops = if succeeded { txn.success } else { txn.failure };
        // Check leases first so a failing put leaves the transaction unapplied.
        for op in &ops {
            if let TxnOp::Put {
                lease: Some(lease), ..
            } = op
            {
                if !inner.leases.contains_key(lease) {
                    return Err(StoreError::LeaseExpired { lease: *lease });
                }
            }
        }
        let writes = ops.iter().any(|op| !matches!(op, TxnOp::Get { .. }));
        if writes {
            inner.revision += 1;
        }
        let revision = inner.revision;
        let mut gets = Vec::new();
        for op in ops {
            match op {
                TxnOp::Put { key, value, lease } => {
                    inner.apply_put(&key, value, lease, revision)?
                }
                TxnOp::Delete { key } => {
                    inner.apply_delete(&key, revision);
                }
                TxnOp::Get { key } => gets.push(inner.kvs.get(&key).cloned()),
            }
        }
        if writes {
            inner.persist()?;
        }
        Ok(TxnResponse {
            succeeded,
            revision,
            gets,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        crate::check_lease_ttl(ttl)?;
        let mut inner = self.inner.lock().unwrap();
        let lease = inner.next_lease;
        inner.next_lease += 1;
        inner.leases.insert(
            lease,
            LeaseState {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(Lease { id: lease, ttl })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let mut inner = self.inner.lock().unwrap();
        let state = inner
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseExpired { lease })?;
        state.deadline = Instant::now() + state.ttl;
        Ok(state.ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        let mut inner = self.inner.lock().unwrap();
        inner.revoke(lease)?;
        inner.persist()
    }

    async fn watch_prefix(&self, prefix: &str, start_revision: i64) -> Result<WatchStream> {
        let mut inner = self.inner.lock().unwrap();
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        if start_revision > 0 && start_revision <= inner.revision {
            let oldest = inner
                .history
                .front()
                .map_or(inner.revision + 1, |event| event.mod_revision());
            if start_revision < oldest {
                return Err(StoreError::Compacted {
                    prefix: prefix.to_string(),
                    revision: start_revision,
                });
            }
            for event in inner.history.iter().filter(|event| {
                event.mod_revision() >= start_revision && event.key().starts_with(prefix)
            }) {
                if sender.try_send(Ok(event.clone())).is_err() {
                    return Err(StoreError::WatchBroken {
                        prefix: prefix.to_string(),
                        reason: "too many events to replay".into(),
                    });
                }
            }
        }
        inner.watchers.push(Watcher {
            prefix: prefix.to_string(),
            sender,
        });
        Ok(receiver)
    }
}
