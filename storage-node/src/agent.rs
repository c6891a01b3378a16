//! The node agent: keeps the node registered (one lease per node, so store
//! load grows with nodes, not volumes), acts on the volume specs assigned to
//! this node, and reports each volume's status.
//!
//! Keys (under `/tether/v1/{cluster}/`):
//! - `nodes/{node}`: [`NodeRecord`], bound to the node lease;
//! - `volumes/{name}`: [`VolumeSpec`], written by the registry;
//! - `status/{name}`: [`VolumeStatus`], written by the volume's master, bound to its lease;
//! - `presenting/{name}/{node}`: [`PresentingStatus`], written by each presenting node;
//! - `groups/{name}` and `locks/{name}`: the volume group (see [`crate::group`]).
//!
//! A local volume whose spec disappears while the node watches is deleted; a
//! local volume with no spec at start is kept and logged (a lost store must
//! not delete data).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_proto::keys::{ClusterKeys, Kind};

use coord_store::{CoordStore, EtcdStore, StoreError, WatchEvent};
use tether_proto::admin::{
    EndpointFailure, NodeRecord, PresentingStatus, ServingEndpoint, VolumeSpec, VolumeStatus,
};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::config::{NodeConfig, StoreConfig};
use crate::engine::{IoEngine, Pool, Volume, VolumeOptions};
use crate::error::Result;
use crate::group::{self, GroupContext, LeaseClock, Mirror, Presenter};
use nbd_export::{self as nbd, NbdServer};

/// A dirty chunk is rehashed once no write has touched it for this long...
const REHASH_QUIET: Duration = Duration::from_secs(1);
/// ...or once it has been dirty this long, whichever comes first.
const REHASH_MAX_STALENESS: Duration = Duration::from_secs(30);
/// Clean extents are unmarked in the activity log this often.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// Volume statuses are compared with what was last published this often;
/// only changes are written, so an idle node writes nothing, and a busy
/// volume's counters (allocation, dirty chunks, sync progress) are written
/// at most once per interval: store writes grow with busy volumes, at most
/// one per volume per interval, however busy.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// A change an operator or the registry waits on (a new epoch, an error, a
/// resize served, a sync starting or ending), published at once; counters
/// alone wait for the interval.
fn significant(before: &VolumeStatus, after: &VolumeStatus) -> bool {
    let phases = |status: &VolumeStatus| {
        status
            .syncs
            .iter()
            .map(|sync| (sync.node.clone(), sync.phase.clone()))
            .collect::<Vec<_>>()
    };
    before.epoch != after.epoch
        || before.errors != after.errors
        || before.size_bytes != after.size_bytes
        || before.node != after.node
        || phases(before) != phases(after)
        || before
            .verify
            .as_ref()
            .map(|report| (report.id, &report.state))
            != after
                .verify
                .as_ref()
                .map(|report| (report.id, &report.state))
}

/// A volume this node presents: its presenter and its NBD listeners by endpoint.
type Presented = (Arc<Presenter>, HashMap<String, NbdServer>);

struct Agent {
    config: NodeConfig,
    store: Arc<dyn CoordStore>,
    pool: Arc<Pool>,
    lease: Arc<AtomicI64>,
    group: Arc<GroupContext>,
    block_addr: String,
    control_addr: String,
    /// The group controller of each local copy.
    controllers: std::sync::Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// What this node presents: the presenter and its listeners by endpoint, per volume.
    servers: Mutex<HashMap<String, Presented>>,
    /// Last error acting on each volume's spec.
    errors: std::sync::Mutex<HashMap<String, Vec<String>>>,
    /// Endpoints that could not be served, per volume.
    presenting_errors: std::sync::Mutex<HashMap<String, Vec<EndpointFailure>>>,
    /// The byte budget every NBD connection of this node shares.
    nbd_limits: nbd::NbdContext,
    /// What was last written to each status key, and when.
    published: std::sync::Mutex<HashMap<String, (VolumeStatus, Instant)>>,
    published_presenting: std::sync::Mutex<HashMap<String, PresentingStatus>>,
}

/// Runs a storage node until `shutdown` resolves, then stops serving, settles
/// every hash list and deregisters.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    // Every log line of this node, and of the tasks it spawns, carries cluster and node.
    let span = tracing::info_span!("node", cluster = %config.cluster, node = %config.node);
    run_in_span(config, shutdown).instrument(span).await
}

async fn run_in_span(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let tls = crate::security::establish(&config.cluster, &config.node, &config.security).await?;
    let store: Arc<dyn CoordStore> = match &config.store {
        StoreConfig::Etcd(endpoints) => {
            Arc::new(EtcdStore::connect(endpoints, Some(tls.clone())).await?)
        }
        StoreConfig::Shared(store) => store.clone(),
    };
    let io = IoEngine::start(config.io_uring);
    let options = VolumeOptions {
        hash_upkeep: config.hash_upkeep,
    };
    let (data_dir, capacity) = (config.data_dir.clone(), config.capacity_bytes);
    let mut pool =
        tokio::task::spawn_blocking(move || Pool::open(&data_dir, capacity, io, options))
            .await
            .expect("pool open does not panic")?;
    pool.set_overprovision(config.overprovision_percent);
    let pool = Arc::new(pool);
    let lease = Arc::new(AtomicI64::new(0));
    let mirror = Mirror::new(&config.cluster);
    let group = Arc::new(GroupContext {
        cluster: config.cluster.clone(),
        node: config.node.clone(),
        store: store.clone(),
        mirror: mirror.clone(),
        lease_clock: Arc::new(LeaseClock::new()),
        lease: lease.clone(),
        replica_timeout: config.replica_timeout,
        sync_rate_limit: config.sync_rate_limit,
        masters: Default::default(),
        epochs: Default::default(),
        admissions: Default::default(),
        tls: (!config.security.plaintext_block).then(|| group::BlockTls::new(tls.clone())),
        keys: Default::default(),
        dr_tls: crate::security::dr_credentials(&config.cluster, &config.node, &config.security)?,
    });
    if config.security.plaintext_block {
        tracing::warn!(
            "block streams are NOT encrypted or authenticated (--insecure-plaintext-block)"
        );
    }
    let renewer = tokio::spawn(
        crate::security::renew_loop(tls.clone(), config.security.clone()).in_current_span(),
    );
    let block_addr =
        group::server::listen(&config.block_listen, group.clone(), pool.clone()).await?;
    let control_addr = crate::control::listen(
        &config.control_listen,
        tls.clone(),
        crate::control::ControlState {
            cluster: config.cluster.clone(),
            group: group.clone(),
        },
    )
    .await?;
    let advertised = config
        .block_advertise
        .clone()
        .unwrap_or_else(|| block_addr.to_string());
    let agent = Arc::new(Agent {
        config,
        store: store.clone(),
        pool,
        lease,
        group,
        block_addr: advertised,
        control_addr: control_addr.to_string(),
        controllers: Default::default(),
        servers: Mutex::new(HashMap::new()),
        errors: Default::default(),
        presenting_errors: Default::default(),
        published: Default::default(),
        published_presenting: Default::default(),
        nbd_limits: nbd::NbdContext::new(&tls),
    });
    for volume in agent.pool.list() {
        spawn_rehasher(volume);
    }
    agent.register().await?;
    let mirror_task = tokio::spawn(mirror.run(store).in_current_span());
    tracing::info!(
        cluster = %agent.config.cluster,
        node = %agent.config.node,
        io_backend = agent.pool.io_backend().kind().as_str(),
        block_addr = %agent.block_addr,
        "storage node up"
    );
    let keep_alive = tokio::spawn(agent.clone().keep_alive_loop().in_current_span());
    let reconcile = tokio::spawn(agent.clone().reconcile_loop().in_current_span());
    let (keys_loaded, loaded) = tokio::sync::mpsc::unbounded_channel();
    agent.group.keys.on_load(keys_loaded);
    let key_loop = tokio::spawn(agent.clone().key_loaded_loop(loaded).in_current_span());
    let status = tokio::spawn(agent.clone().status_loop().in_current_span());
    shutdown.await;
    tracing::info!(node = %agent.config.node, "shutting down");
    reconcile.abort();
    key_loop.abort();
    renewer.abort();
    status.abort();
    keep_alive.abort();
    mirror_task.abort();
    for (_, controller) in agent.controllers.lock().unwrap().drain() {
        controller.abort();
    }
    for (_, master) in agent.group.masters.write().unwrap().drain() {
        master.depose();
    }
    agent.servers.lock().await.clear();
    agent.pool.settle_all().await;
    let _ = agent
        .store
        .revoke_lease(agent.lease.load(Ordering::Acquire))
        .await;
    Ok(())
}

impl Agent {
    fn keys(&self) -> ClusterKeys {
        ClusterKeys::new(&self.config.cluster)
    }

    fn key(&self, kind: Kind, name: &str) -> String {
        self.keys().key(kind, name)
    }

    async fn register(&self) -> Result<()> {
        let sent = Instant::now();
        let granted = self.store.grant_lease(self.config.lease_ttl).await?;
        let lease = granted.id;
        if granted.ttl != self.config.lease_ttl {
            tracing::warn!(asked = ?self.config.lease_ttl, granted = ?granted.ttl, "the store granted another lease TTL; fencing counts from the granted one");
        }
        // The id first: a master bound to the old lease is invalid from here on.
        self.lease.store(lease, Ordering::Release);
        self.group.lease_clock.renewed(sent, granted.ttl);
        let record = NodeRecord {
            version: NodeRecord::VERSION,
            name: self.config.node.clone(),
            capacity_bytes: self.pool.capacity_bytes(),
            provisionable_bytes: self.pool.provisionable_bytes(),
            io_backend: self.pool.io_backend().kind().as_str().to_string(),
            metrics_addr: self.config.metrics_addr.map(|addr| addr.to_string()),
            pid: std::process::id(),
            labels: self.config.labels.clone(),
            block_addr: Some(self.block_addr.clone()),
            control_addr: Some(self.control_addr.clone()),
            quarantined: self.pool.quarantined().clone(),
        };
        let value = serde_json::to_vec(&record).expect("record serializes");
        self.store
            .put(
                &self.key(Kind::Nodes, &self.config.node),
                value,
                Some(lease),
            )
            .await?;
        Ok(())
    }

    /// Renews the node lease at a quarter of its TTL, moving the deadline
    /// masters answer by (from when each keep-alive was sent); if the lease
    /// was lost (the node was paused or cut off), registers again and
    /// republishes its statuses.
    async fn keep_alive_loop(self: Arc<Self>) {
        let interval = self.config.lease_ttl / 4;
        loop {
            tokio::time::sleep(interval).await;
            let lease = self.lease.load(Ordering::Acquire);
            let sent = Instant::now();
            match self.store.keep_alive(lease).await {
                Ok(ttl) => self.group.lease_clock.renewed(sent, ttl),
                Err(StoreError::LeaseExpired { .. }) => {
                    self.group.lease_clock.lost();
                    tracing::warn!(node = %self.config.node, "node lease expired; registering again");
                    if let Err(err) = self.register().await {
                        tracing::error!(error = %err, "re-registration failed");
                        continue;
                    }
                    self.published.lock().unwrap().clear();
                    self.published_presenting.lock().unwrap().clear();
                    self.publish_all().await;
                }
                Err(err) => tracing::warn!(error = %err, "lease keep-alive failed; retrying"),
            }
        }
    }

    /// Republishes the status of volumes whose numbers changed (allocation
    /// grows with writes, dirty chunks come and go).
    async fn status_loop(self: Arc<Self>) {
        // Also soon after any change in the store (a takeover, a new ISR), so
        // the admin API sees it without waiting a whole interval.
        let mut changes = self.group.mirror.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STATUS_INTERVAL) => {}
                _ = changes.changed() => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            self.publish_all().await;
        }
    }

    async fn publish_all(&self) {
        for volume in self.pool.list() {
            self.publish_status(&volume).await;
        }
        let presented: Vec<String> = self.servers.lock().await.keys().cloned().collect();
        for name in presented {
            self.publish_presenting(&name).await;
        }
    }

    /// Lists the specs, acts on them, then follows changes; re-lists when the watch breaks.
    async fn reconcile_loop(self: Arc<Self>) {
        let prefix = self.keys().kind_prefix(Kind::Volumes);
        loop {
            let (specs, revision) = match self.store.get_prefix(&prefix).await {
                Ok(listing) => listing,
                Err(err) => {
                    tracing::warn!(error = %err, "listing volume specs failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut known = std::collections::HashSet::new();
            for kv in specs {
                if let Some(spec) = self.decode_spec(&kv.key, &kv.value) {
                    known.insert(spec.name.clone());
                    self.apply(spec).await;
                }
            }
            for volume in self.pool.list() {
                if !known.contains(volume.name()) {
                    tracing::warn!(
                        volume = volume.name(),
                        "local volume has no spec; keeping its data"
                    );
                }
            }
            let mut events = match self.store.watch_prefix(&prefix, revision + 1).await {
                Ok(events) => events,
                Err(err) => {
                    tracing::warn!(error = %err, "watching volume specs failed; re-listing");
                    continue;
                }
            };
            while let Some(event) = events.recv().await {
                match event {
                    Ok(WatchEvent::Put(kv)) => {
                        if let Some(spec) = self.decode_spec(&kv.key, &kv.value) {
                            self.apply(spec).await;
                        }
                    }
                    Ok(WatchEvent::Delete { key, .. }) => {
                        let name = key.rsplit('/').next().unwrap_or_default().to_string();
                        self.remove(&name).await;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "volume watch broke; re-listing");
                        break;
                    }
                }
            }
        }
    }

    fn decode_spec(&self, key: &str, value: &[u8]) -> Option<VolumeSpec> {
        match serde_json::from_slice::<VolumeSpec>(value) {
            Ok(spec) if spec.version <= VolumeSpec::VERSION => Some(spec),
            Ok(spec) => {
                tracing::error!(
                    key,
                    version = spec.version,
                    "volume spec from a newer version; ignoring it"
                );
                None
            }
            Err(err) => {
                tracing::error!(key, error = %err, "unreadable volume spec; ignoring it");
                None
            }
        }
    }

    fn record_error(&self, volume: &str, error: String) {
        tracing::error!(volume, %error, "acting on the volume spec failed");
        self.errors
            .lock()
            .unwrap()
            .entry(volume.to_string())
            .or_default()
            .push(error);
    }

    /// Brings the local state of one volume in line with its spec: a copy
    /// (with its group controller) if this node holds one, and NBD
    /// listeners for the attachments this node presents.
    /// Presents what waited for a key that just arrived.
    async fn key_loaded_loop(
        self: Arc<Self>,
        mut loaded: tokio::sync::mpsc::UnboundedReceiver<crate::keys::KeyLoaded>,
    ) {
        while let Some((volume, done)) = loaded.recv().await {
            if let Some(spec) = self.group.mirror.spec(&volume) {
                self.apply_presenting(&spec).await;
            }
            let _ = done.send(());
        }
    }

    async fn apply(&self, spec: VolumeSpec) {
        if spec.copy_nodes().contains(&self.config.node) {
            self.apply_copy(&spec).await;
        } else if self.pool.get(&spec.name).is_some() {
            // Replaced while this node was away: stop acting on the copy,
            // keep its data for an operator (a lost store never deletes data).
            let controller = self.controllers.lock().unwrap().remove(&spec.name);
            let was_running = controller.is_some();
            if let Some(controller) = controller {
                controller.abort();
                self.group.forget(&spec.name);
            }
            if was_running || !self.published.lock().unwrap().contains_key(&spec.name) {
                tracing::warn!(volume = %spec.name, "this node's copy was replaced by another; keeping its data");
            }
        }
        self.apply_presenting(&spec).await;
    }

    async fn apply_copy(&self, spec: &VolumeSpec) {
        self.errors.lock().unwrap().remove(&spec.name);
        let volume = match self.pool.get(&spec.name) {
            Some(volume) => volume,
            None => match self.pool.create(&spec.name, spec.size_bytes).await {
                Ok(volume) => {
                    spawn_rehasher(volume.clone());
                    volume
                }
                Err(err) => {
                    self.record_error(&spec.name, err.to_string());
                    if spec.master == self.config.node {
                        self.publish_status_for(&spec.name, None).await;
                    }
                    return;
                }
            },
        };
        if spec.size_bytes != volume.size_bytes() {
            if let Err(err) = self.pool.resize(&spec.name, spec.size_bytes).await {
                self.record_error(&spec.name, err.to_string());
            }
        }
        {
            let mut controllers = self.controllers.lock().unwrap();
            if !controllers.contains_key(&spec.name) {
                controllers.insert(
                    spec.name.clone(),
                    group::controller::spawn(self.group.clone(), volume.clone()),
                );
            }
        }
        self.publish_status(&volume).await;
    }

    async fn apply_presenting(&self, spec: &VolumeSpec) {
        let wanted: Vec<&str> = spec
            .attachments
            .iter()
            // Attachments from a satellite are the satellite's to serve,
            // whatever its name.
            .filter(|attachment| {
                attachment.from == self.config.cluster
                    && attachment.presenter(spec) == self.config.node
            })
            .map(|attachment| attachment.endpoint.as_str())
            .collect();
        let mut servers = self.servers.lock().await;
        if wanted.is_empty() {
            let had_errors = self
                .presenting_errors
                .lock()
                .unwrap()
                .remove(&spec.name)
                .is_some_and(|errors| !errors.is_empty());
            if servers.remove(&spec.name).is_some() || had_errors {
                drop(servers);
                self.publish_presenting(&spec.name).await;
            }
            return;
        }
        let (presenter, serving) = servers.entry(spec.name.clone()).or_insert_with(|| {
            (
                Presenter::new(
                    self.group.clone(),
                    self.pool.clone(),
                    &spec.name,
                    spec.encryption.is_some(),
                ),
                HashMap::new(),
            )
        });
        serving.retain(|endpoint, _| wanted.contains(&endpoint.as_str()));
        let mut errors = Vec::new();
        for endpoint in wanted {
            if serving.contains_key(endpoint) {
                continue;
            }
            if spec.encryption.is_some() && self.group.keys.get(&spec.name).is_none() {
                // Never present an encrypted volume without its key: the
                // client would read ciphertext and write plaintext.
                let error = format!(
                    "volume {} is encrypted and its key is not loaded on node {} (attach again with --encrypt-key-file) for {endpoint}",
                    spec.name, self.config.node
                );
                tracing::warn!(volume = %spec.name, %endpoint, "not presenting: {error}");
                errors.push(EndpointFailure {
                    endpoint: endpoint.to_string(),
                    error,
                });
                continue;
            }
            match nbd::serve(endpoint, presenter.clone(), self.nbd_limits.clone()).await {
                Ok(server) => {
                    tracing::info!(volume = %spec.name, uri = %server.uri, "serving over NBD");
                    serving.insert(endpoint.to_string(), server);
                }
                Err(err) => {
                    tracing::error!(volume = %spec.name, error = %err, "cannot serve the attachment");
                    errors.push(EndpointFailure {
                        endpoint: endpoint.to_string(),
                        error: err.to_string(),
                    });
                }
            }
        }
        self.presenting_errors
            .lock()
            .unwrap()
            .insert(spec.name.clone(), errors);
        drop(servers);
        self.publish_presenting(&spec.name).await;
    }

    async fn remove(&self, name: &str) {
        if let Some(controller) = self.controllers.lock().unwrap().remove(name) {
            controller.abort();
        }
        let was_master = self.group.master(name).is_some();
        self.group.forget(name);
        self.group.keys.remove(name);
        self.servers.lock().await.remove(name);
        if self.pool.get(name).is_some() {
            if let Err(err) = self.pool.delete(name).await {
                tracing::error!(volume = name, error = %err, "deleting the volume failed");
            }
        }
        self.errors.lock().unwrap().remove(name);
        self.presenting_errors.lock().unwrap().remove(name);
        self.published_presenting.lock().unwrap().remove(name);
        let _ = self
            .store
            .delete(&self.keys().presenting(name, &self.config.node))
            .await;
        if self.published.lock().unwrap().remove(name).is_some() || was_master {
            let _ = self.store.delete(&self.key(Kind::Status, name)).await;
            let _ = self.store.delete(&self.key(Kind::Locks, name)).await;
            let _ = self.store.delete(&self.key(Kind::Groups, name)).await;
        }
    }

    /// Publishes which endpoints this node serves for `name` (only changes are written).
    async fn publish_presenting(&self, name: &str) {
        let serving: Vec<ServingEndpoint> = {
            let servers = self.servers.lock().await;
            servers
                .get(name)
                .map(|(_, by_endpoint)| {
                    by_endpoint
                        .values()
                        .map(|server| ServingEndpoint {
                            endpoint: server.endpoint.clone(),
                            uri: server.uri.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let failures = self
            .presenting_errors
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default();
        let status = PresentingStatus {
            version: 1,
            node: self.config.node.clone(),
            serving,
            errors: failures
                .iter()
                .map(|failure| failure.error.clone())
                .collect(),
            failures,
        };
        if self.published_presenting.lock().unwrap().get(name) == Some(&status) {
            return;
        }
        let key = self.keys().presenting(name, &self.config.node);
        let value = serde_json::to_vec(&status).expect("status serializes");
        let lease = self.lease.load(Ordering::Acquire);
        match self.store.put(&key, value, Some(lease)).await {
            Ok(_) => {
                self.published_presenting
                    .lock()
                    .unwrap()
                    .insert(name.to_string(), status);
            }
            Err(err) => {
                tracing::warn!(volume = name, error = %err, "publishing presenting status failed")
            }
        }
    }

    async fn publish_status(&self, volume: &Arc<Volume>) {
        self.publish_status_for(volume.name(), Some(volume)).await
    }

    /// Publishes the volume's status if this node is its master (or, before
    /// any master, the errors of the copy meant to be master).
    async fn publish_status_for(&self, name: &str, volume: Option<&Arc<Volume>>) {
        let master = self.group.master(name);
        let has_errors = self
            .errors
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|errors| !errors.is_empty());
        if master.is_none() && !has_errors {
            return;
        }
        let stats = volume.map(|volume| volume.stats()).unwrap_or_default();
        let (epoch, syncs, verify) = match &master {
            Some(master) => (
                master.epoch,
                master.syncs.lock().unwrap().values().cloned().collect(),
                master.verify.lock().unwrap().clone(),
            ),
            None => (0, vec![], None),
        };
        let status = VolumeStatus {
            version: 1,
            node: self.config.node.clone(),
            size_bytes: stats.size_bytes,
            chunk_size_bytes: stats.chunk_size_bytes,
            allocated_bytes: stats.allocated_bytes,
            dirty_chunks: stats.dirty_chunks,
            serving: vec![],
            epoch,
            syncs,
            verify,
            errors: self
                .errors
                .lock()
                .unwrap()
                .get(name)
                .cloned()
                .unwrap_or_default(),
        };
        if let Some((last, at)) = self.published.lock().unwrap().get(name) {
            if *last == status
                || (!significant(last, &status) && at.elapsed() < STATUS_INTERVAL * 9 / 10)
            {
                return;
            }
        }
        let value = serde_json::to_vec(&status).expect("status serializes");
        let lease = self.lease.load(Ordering::Acquire);
        match self
            .store
            .put(&self.key(Kind::Status, name), value, Some(lease))
            .await
        {
            Ok(_) => {
                metrics::counter!("tether_status_writes_total").increment(1);
                self.published
                    .lock()
                    .unwrap()
                    .insert(name.to_string(), (status, Instant::now()));
            }
            Err(err) => {
                tracing::warn!(volume = name, error = %err, "publishing volume status failed")
            }
        }
    }
}

/// Keeps one volume's hash list current: rehashes dirty chunks once they
/// are quiet for [`REHASH_QUIET`] (or dirty for [`REHASH_MAX_STALENESS`]),
/// and every [`CHECKPOINT_INTERVAL`] persists clean extents. Ends when the
/// volume is dropped by its pool.
fn spawn_rehasher(volume: Arc<Volume>) {
    if !volume.options().hash_upkeep {
        return;
    }
    let weak = Arc::downgrade(&volume);
    drop(volume);
    tokio::spawn(async move {
        let mut last_checkpoint = Instant::now();
        loop {
            let Some(volume) = weak.upgrade() else { return };
            if volume.dirty_chunks() == 0 {
                let _ = tokio::time::timeout(CHECKPOINT_INTERVAL, volume.rehash_wanted()).await;
            } else {
                tokio::time::sleep(REHASH_QUIET / 2).await;
            }
            if Arc::strong_count(&volume) == 1 {
                return; // deleted: only this task still holds it
            }
            if let Err(err) = volume.rehash_due(REHASH_QUIET, REHASH_MAX_STALENESS).await {
                tracing::error!(volume = volume.name(), error = %err, "rehash failed");
            }
            metrics::gauge!("tether_hashlist_dirty_chunks", "volume" => volume.name().to_string())
                .set(volume.dirty_chunks() as f64);
            if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                if let Err(err) = volume.checkpoint().await {
                    tracing::error!(volume = volume.name(), error = %err, "hash checkpoint failed");
                }
                last_checkpoint = Instant::now();
            }
        }
    }.in_current_span());
}
