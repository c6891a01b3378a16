//! One volume's DR stream on the secondary's side: who may send it (the
//! link's peer, at the link's generation or a newer one for a failback),
//! one receiver at a time (a leased key), and each batch staged in the
//! journal, then applied atomically (`tether_proto::dr::journal`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use master_follower::{BlockOp, VolumeFollower};
use tether_common::dr_stream::DrStream;
use tether_proto::dr::journal::{
    batch_sum, encode_index, JournalEntry, JournalHeader, JournalLayout, JournalState,
};
use tether_proto::dr::wire::{refused, DrFrame, Hello};
use tether_proto::dr::{
    admit_batch, journal_volume_name, BatchVerdict, DrLinkRecord, DrRole, DrSecondaryRequest,
    DrStatusRecord,
};
use tether_proto::keys::Kind;

use super::journal::{run, Journal};
use super::waves::Waves;
use crate::Gateway;

type Stream = DrStream<quinn::RecvStream, quinn::SendStream>;

const RECEIVER_TTL: Duration = Duration::from_secs(5);
/// Writes a receiver has in flight at once (journal, or secondary).
const IN_FLIGHT: usize = 32;
/// A batch's data kept in memory to apply from, at most.
const CACHE_BYTES: u64 = 64 << 20;
/// How long a new secondary may take to be created and get its masters.
const CREATE_PATIENCE: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

struct Refusal {
    code: u32,
    generation: u64,
    reason: String,
}

fn refusal(code: u32, generation: u64, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        generation,
        reason: reason.into(),
    }
}

pub(super) async fn receive(
    gateway: Arc<Gateway>,
    peer: String,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let mut stream = Stream::new(recv, send);
    let hello = match tokio::time::timeout(Duration::from_secs(10), stream.recv()).await {
        Ok(Ok(DrFrame::Hello(hello))) => hello,
        other => {
            tracing::warn!(%peer, answer = ?other.map(|frame| frame.map(|_| ())), "DR stream did not open with a hello");
            return;
        }
    };
    let volume = hello.volume.clone();
    let span = tracing::info_span!("dr_receive", %peer, %volume);
    let _entered = span.enter();
    drop(_entered);
    let outcome = async {
        let mut receiver = match Receiver::open(&gateway, &peer, &hello).await {
            Ok(receiver) => receiver,
            Err(refused) => {
                metrics::counter!("tether_gateway_dr_refused_total").increment(1);
                tracing::warn!(code = refused.code, reason = %refused.reason, "refused a DR stream");
                stream.queue(&DrFrame::Refused {
                    code: refused.code,
                    generation: refused.generation,
                    reason: refused.reason,
                });
                let _ = stream.finish().await;
                return;
            }
        };
        let result = receiver.serve(&mut stream).await;
        receiver.release().await;
        match result {
            Ok(()) => tracing::info!("DR stream ended"),
            Err(err) => {
                tracing::warn!(error = %err, "DR stream stopped");
                stream.queue(&DrFrame::Refused {
                    code: refused::FAILED,
                    generation: receiver.link.generation,
                    reason: err,
                });
                let _ = stream.finish().await;
            }
        }
    };
    tracing::Instrument::instrument(outcome, span).await;
}

struct Receiver {
    gateway: Arc<Gateway>,
    link: DrLinkRecord,
    data: Arc<VolumeFollower>,
    journal: Journal,
    chunk_size: u64,
    size_bytes: u64,
    lease: i64,
    keep_alive: tokio::task::JoinHandle<()>,
    header: JournalHeader,
    status: DrStatusRecord,
}

impl Receiver {
    async fn open(gateway: &Arc<Gateway>, peer: &str, hello: &Hello) -> Result<Self, Refusal> {
        let volume = &hello.volume;
        let link = secondary_link(gateway, peer, hello).await?;
        let key = gateway.key(Kind::DrReceivers, volume);
        let lease =
            match super::take_leased(&gateway.store, &key, &gateway.name, RECEIVER_TTL).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    return Err(refusal(
                        refused::BUSY,
                        link.generation,
                        format!("another gateway receives {volume} now"),
                    ))
                }
                Err(err) => return Err(refusal(refused::FAILED, link.generation, err.to_string())),
            };
        let spec = gateway.mirror.spec(volume);
        let size_bytes = spec.map_or(hello.size_bytes, |spec| spec.size_bytes);
        let mut receiver = Receiver::new(gateway, link, lease, hello.chunk_size as u64, size_bytes);
        if size_bytes != hello.size_bytes {
            let generation = receiver.link.generation;
            receiver.release().await;
            return Err(refusal(
                refused::INVALID,
                generation,
                format!(
                    "the secondary {volume} is {size_bytes} bytes, the primary {}",
                    hello.size_bytes
                ),
            ));
        }
        // Counts go on across streams of one generation.
        if let Ok(Some(kv)) = gateway
            .store
            .get(&gateway.key(Kind::DrReceived, volume))
            .await
        {
            if let Ok(previous) = serde_json::from_slice::<DrStatusRecord>(&kv.value) {
                if previous.generation == receiver.link.generation {
                    receiver.status = previous;
                    receiver.status.error = None;
                }
            }
        }
        if let Err(err) = receiver.recover().await {
            let generation = receiver.link.generation;
            receiver.release().await;
            return Err(refusal(refused::FAILED, generation, err));
        }
        Ok(receiver)
    }

    fn new(
        gateway: &Arc<Gateway>,
        link: DrLinkRecord,
        lease: i64,
        chunk_size: u64,
        size_bytes: u64,
    ) -> Self {
        let store = gateway.store.clone();
        let keep_alive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECEIVER_TTL / 3).await;
                if store.keep_alive(lease).await.is_err() {
                    return;
                }
            }
        });
        let journal_name = link
            .journal_volume
            .clone()
            .unwrap_or_else(|| journal_volume_name(&link.volume));
        let layout = JournalLayout::for_volume(size_bytes);
        Receiver {
            gateway: gateway.clone(),
            data: gateway.dr_follower(&link.volume),
            journal: Journal {
                volume: gateway.dr_follower(&journal_name),
                layout,
            },
            link,
            chunk_size,
            size_bytes,
            lease,
            keep_alive,
            header: JournalHeader {
                state: JournalState::Seeding,
                chunk_size: chunk_size as u32,
                point: 0,
                cut_unix_ms: 0,
                entries: 0,
                batch_sum: [0; 32],
            },
            status: DrStatusRecord::default(),
        }
    }

    /// Finishes a committed batch, so the secondary is at a point.
    async fn recover(&mut self) -> Result<(), String> {
        match self.journal.header().await? {
            None => {
                self.header.state = JournalState::Seeding;
                self.journal.set_header(&self.header).await?;
            }
            Some(header) if header.chunk_size as u64 != self.chunk_size => {
                return Err(format!(
                    "the journal is of {} byte chunks, the primary's {}",
                    header.chunk_size, self.chunk_size
                ))
            }
            Some(header) => {
                self.header = header;
                if header.state == JournalState::Committed {
                    tracing::warn!(
                        point = header.point,
                        entries = header.entries,
                        "a committed batch was not applied wholly; applying it again"
                    );
                    self.apply().await?;
                }
            }
        }
        self.status.last_point = self.header.point;
        self.status.last_point_unix_ms = self.header.cut_unix_ms;
        Ok(())
    }

    async fn release(&mut self) {
        self.keep_alive.abort();
        let _ = self.gateway.store.revoke_lease(self.lease).await;
    }

    async fn serve(&mut self, stream: &mut Stream) -> Result<(), String> {
        let applied_point = match self.header.state {
            JournalState::Seeding => 0,
            _ => self.header.point,
        };
        stream.queue(&DrFrame::Welcome {
            generation: self.link.generation,
            applied_point,
            gateways: self.gateway.mirror.gateway_endpoints(),
        });
        stream.flush().await.map_err(|err| err.to_string())?;
        tracing::info!(
            applied_point,
            generation = self.link.generation,
            "receiving DR batches"
        );
        self.publish("receiving").await;
        let mut entries: Vec<JournalEntry> = Vec::new();
        // Journal data bytes the staged entries take.
        let mut used = 0u64;
        // The staged entries' data, while it fits in memory (applied from
        // here; the journal is read back only for what did not fit, and
        // after a crash).
        let mut cached: Vec<Option<Bytes>> = Vec::new();
        let mut cached_bytes = 0u64;
        let mut cache_permits: Vec<tokio::sync::OwnedSemaphorePermit> = Vec::new();
        let mut journal_writes = Waves::new(IN_FLIGHT);
        // Over the staged entries' data, in order: the batch sum's part.
        let mut data_hasher = blake3::Hasher::new();
        let mut direct_writes = Waves::new(IN_FLIGHT);
        let mut batch: Option<u64> = None;
        // The batch being staged overflowed the journal: it goes straight
        // to the secondary, which is at no point until it commits.
        let mut direct = self.header.state == JournalState::Seeding;
        loop {
            let frame = match stream.recv().await {
                Ok(frame) => frame,
                Err(tether_common::dr_stream::DrStreamError::Closed) => return Ok(()),
                Err(err) => return Err(err.to_string()),
            };
            match frame {
                DrFrame::HashRequest { first, count } => {
                    let hashes = run(&self.data, BlockOp::Hashes { first, count })
                        .await
                        .map_err(|err| err.to_string())?
                        .unwrap_or_default();
                    stream.queue(&DrFrame::Hashes {
                        first,
                        hashes: hashes
                            .chunks_exact(32)
                            .map(|hash| hash.try_into().expect("32-byte hashes"))
                            .collect(),
                    });
                    stream.flush().await.map_err(|err| err.to_string())?;
                }
                DrFrame::Stage {
                    point,
                    offset,
                    raw_len,
                    compressed,
                    zero,
                    data,
                } => {
                    if point <= self.header.point && !direct {
                        return Err(format!(
                            "batch {point} is not after point {}",
                            self.header.point
                        ));
                    }
                    if batch.is_some_and(|batch| batch != point) {
                        return Err(format!("batch {point} began before the last was committed"));
                    }
                    batch = Some(point);
                    if offset % 512 != 0
                        || offset
                            .checked_add(raw_len as u64)
                            .is_none_or(|end| end > self.size_bytes)
                    {
                        return Err(format!(
                            "extent at {offset} of {raw_len} bytes is not within the secondary ({} bytes)",
                            self.size_bytes
                        ));
                    }
                    let data = if compressed {
                        Bytes::from(
                            tether_common::block_zstd::decompress_exact(&data, raw_len as usize)
                                .map_err(|err| format!("extent at {offset}: {err}"))?,
                        )
                    } else {
                        data
                    };
                    let entry = JournalEntry {
                        offset,
                        raw_len,
                        zero,
                    };
                    if !direct && !self.journal.layout.fits(entries.len() as u64, used, &entry) {
                        tracing::warn!(point, entries = entries.len(), bytes = used, "the batch is larger than the journal: applying it directly; the secondary is at no consistent point until it commits");
                        journal_writes.finish().await?;
                        self.header.state = JournalState::Seeding;
                        self.journal.set_header(&self.header).await?;
                        self.apply_entries(&entries, &cached).await?;
                        entries.clear();
                        cached.clear();
                        cache_permits.clear();
                        cached_bytes = 0;
                        used = 0;
                        data_hasher = blake3::Hasher::new();
                        direct = true;
                    }
                    if direct {
                        direct_writes
                            .push(
                                (entry.offset, entry.raw_len as u64),
                                apply_extent(self.data.clone(), entry, data),
                            )
                            .await?;
                    } else {
                        if !zero {
                            data_hasher.update(&data);
                            let journal = self.journal.clone();
                            let (at, bytes) = (used, data.clone());
                            journal_writes
                                .push((at, entry.journal_bytes()), async move {
                                    journal.write_entry(at, bytes).await
                                })
                                .await?;
                        }
                        used += entry.journal_bytes();
                        entries.push(entry);
                        // Held against the gateway's byte budget too: many
                        // streams cannot make it hold more than it would for
                        // satellites.
                        let permit = (cached_bytes + data.len() as u64 <= CACHE_BYTES)
                            .then(|| {
                                self.gateway
                                    .shared_bytes
                                    .clone()
                                    .try_acquire_many_owned(data.len() as u32)
                                    .ok()
                            })
                            .flatten();
                        match permit {
                            Some(permit) => {
                                cached_bytes += data.len() as u64;
                                cached.push(Some(data));
                                cache_permits.push(permit);
                            }
                            None => cached.push(None),
                        }
                    }
                    self.status.extents_shipped += 1;
                    self.status.bytes_raw += raw_len as u64;
                }
                DrFrame::Commit {
                    point,
                    cut_unix_ms,
                    chunks,
                    final_point,
                } => {
                    if batch.is_some_and(|batch| batch != point) || point <= self.header.point {
                        return Err(format!(
                            "commit of batch {point} does not follow point {}",
                            self.header.point
                        ));
                    }
                    if self.force_requested() {
                        return Err(
                            "a forced promote was asked for on this side; the batch is dropped"
                                .into(),
                        );
                    }
                    match admit_batch(
                        self.link.role,
                        self.link.generation,
                        self.header.point,
                        self.link.generation,
                        point,
                    ) {
                        BatchVerdict::Apply => {}
                        BatchVerdict::Duplicate => {
                            return Err(format!(
                                "batch {point} is applied already (point {})",
                                self.header.point
                            ));
                        }
                        BatchVerdict::Stale => {
                            return Err(format!(
                                "batch {point} is stale: this side is {:?} at generation {}",
                                self.link.role, self.link.generation
                            ));
                        }
                    }
                    let started = Instant::now();
                    if chunks == 0 && entries.is_empty() && !direct {
                        // An empty batch: the point moves, nothing to apply.
                    } else if direct {
                        direct_writes.finish().await?;
                        run(&self.data, BlockOp::Flush)
                            .await
                            .map_err(|err| err.to_string())?;
                    } else {
                        journal_writes.finish().await?;
                        if entries.len() as u64 != chunks {
                            return Err(format!(
                                "batch {point} commits {chunks} extents; {} were staged",
                                entries.len()
                            ));
                        }
                        // Index and header go with the data under one flush:
                        // the header's sum tells a whole batch from a torn one.
                        let index = encode_index(&entries);
                        self.journal.write_index(&entries).await?;
                        let data_hash = *std::mem::take(&mut data_hasher).finalize().as_bytes();
                        self.header = JournalHeader {
                            state: JournalState::Committed,
                            chunk_size: self.chunk_size as u32,
                            point,
                            cut_unix_ms,
                            entries: entries.len() as u64,
                            batch_sum: batch_sum(&data_hash, &index),
                        };
                        self.journal.set_header(&self.header).await?;
                        self.status.applying = true;
                        self.apply_entries(&entries, &cached).await?;
                        run(&self.data, BlockOp::Flush)
                            .await
                            .map_err(|err| err.to_string())?;
                        self.status.applying = false;
                    }
                    self.header = JournalHeader {
                        state: JournalState::Clean,
                        chunk_size: self.chunk_size as u32,
                        point,
                        cut_unix_ms,
                        entries: 0,
                        batch_sum: [0; 32],
                    };
                    data_hasher = blake3::Hasher::new();
                    self.journal.set_header(&self.header).await?;
                    direct = false;
                    entries.clear();
                    cached.clear();
                    cache_permits.clear();
                    cached_bytes = 0;
                    used = 0;
                    batch = None;
                    self.status.batches += 1;
                    self.status.last_point = point;
                    self.status.last_point_unix_ms = cut_unix_ms;
                    metrics::histogram!("tether_gateway_dr_apply_seconds")
                        .record(started.elapsed().as_secs_f64());
                    let generation = if final_point {
                        self.become_primary().await?
                    } else {
                        self.link.generation
                    };
                    let handover = self
                        .gateway
                        .mirror
                        .dr_link(&self.link.volume)
                        .is_some_and(|(link, _)| link.handover_requested);
                    stream.queue(&DrFrame::Applied {
                        point,
                        generation,
                        handover: handover && !final_point,
                    });
                    stream.flush().await.map_err(|err| err.to_string())?;
                    self.publish(if final_point { "promoted" } else { "receiving" })
                        .await;
                    if final_point {
                        tracing::info!(
                            point,
                            generation,
                            "planned promote: this side is the primary now"
                        );
                        return Ok(());
                    }
                }
                other => return Err(format!("unexpected {other:?}")),
            }
        }
    }

    fn force_requested(&self) -> bool {
        self.gateway
            .mirror
            .dr_link(&self.link.volume)
            .is_some_and(|(link, _)| link.force_requested)
    }

    /// Writes `entries` (staged in the journal, in order) to the secondary,
    /// from `cached` where it holds their data, else from the journal.
    async fn apply_entries(
        &self,
        entries: &[JournalEntry],
        cached: &[Option<Bytes>],
    ) -> Result<(), String> {
        let mut writes = Waves::new(IN_FLIGHT);
        let mut at = 0u64;
        for (index, entry) in entries.iter().enumerate() {
            let (entry, position) = (*entry, at);
            at += entry.journal_bytes();
            let (data, journal) = (self.data.clone(), self.journal.clone());
            let known = cached.get(index).cloned().flatten();
            writes
                .push((entry.offset, entry.raw_len as u64), async move {
                    let bytes = match known {
                        _ if entry.zero => Bytes::new(),
                        Some(bytes) => bytes,
                        None => Bytes::from(journal.read_entry(position, entry.raw_len).await?),
                    };
                    apply_extent(data, entry, bytes).await
                })
                .await?;
        }
        writes.finish().await
    }

    /// Applies the committed batch in the journal to the secondary (after
    /// a crash: its data is read back from the journal).
    async fn apply(&mut self) -> Result<(), String> {
        let entries = self.journal.index(self.header.entries).await?;
        let mut data_hash = blake3::Hasher::new();
        let mut at = 0u64;
        for entry in &entries {
            if !entry.zero {
                data_hash.update(&self.journal.read_entry(at, entry.raw_len).await?);
            }
            at += entry.journal_bytes();
        }
        let sum = batch_sum(data_hash.finalize().as_bytes(), &encode_index(&entries));
        if sum != self.header.batch_sum {
            // Its flush never finished: nothing of it reached the secondary.
            tracing::warn!(point = self.header.point, "the committed batch is not whole in the journal; the secondary is at the point before it");
            self.header = JournalHeader {
                state: JournalState::Clean,
                point: self.header.point.saturating_sub(1),
                cut_unix_ms: 0,
                entries: 0,
                batch_sum: [0; 32],
                ..self.header
            };
            return self.journal.set_header(&self.header).await;
        }
        self.status.applying = true;
        self.publish("applying").await;
        self.apply_entries(&entries, &[]).await?;
        run(&self.data, BlockOp::Flush)
            .await
            .map_err(|err| err.to_string())?;
        self.status.applying = false;
        Ok(())
    }

    /// A planned promote's last point is applied: this side is the primary
    /// at the next generation.
    async fn become_primary(&mut self) -> Result<u64, String> {
        let Some((current, revision)) = self.gateway.mirror.dr_link(&self.link.volume) else {
            return Err("the DR link record vanished".into());
        };
        let mut primary = current;
        primary.role = DrRole::Primary;
        primary.generation = self.link.generation + 1;
        primary.handover_requested = false;
        cas_link(&self.gateway, &primary, revision).await?;
        self.link = primary;
        Ok(self.link.generation)
    }

    async fn publish(&mut self, state: &str) {
        self.status.link_state = state.into();
        self.status.updated_unix_ms = now_ms();
        self.status.generation = self.link.generation;
        let key = self.gateway.key(Kind::DrReceived, &self.link.volume);
        if let Ok(value) = serde_json::to_vec(&self.status) {
            let _ = self.gateway.store.put(&key, value, None).await;
        }
    }
}

/// Writes one extent to the secondary.
async fn apply_extent(
    data: Arc<VolumeFollower>,
    entry: JournalEntry,
    bytes: Bytes,
) -> Result<(), String> {
    let op = if entry.zero {
        BlockOp::WriteZeroes {
            offset: entry.offset,
            length: entry.raw_len as u64,
            punch: true,
            fua: false,
        }
    } else {
        BlockOp::Write {
            offset: entry.offset,
            data: bytes,
            fua: false,
        }
    };
    run(&data, op)
        .await
        .map(|_| ())
        .map_err(|err| err.to_string())
}

async fn cas_link(gateway: &Gateway, link: &DrLinkRecord, revision: i64) -> Result<(), String> {
    let key = gateway.key(Kind::DrLinks, &link.volume);
    let value = serde_json::to_vec(link).expect("a link record serializes");
    let Some(written) = coord_store::put_if_revision(gateway.store.as_ref(), &key, value, revision)
        .await
        .map_err(|err| err.to_string())?
    else {
        return Err(format!(
            "the DR link record of {} changed meanwhile",
            link.volume
        ));
    };
    // Later checks read the mirror: wait until it has the change.
    let mut changes = gateway.mirror.subscribe();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        changes.wait_for(|revision| *revision >= written),
    )
    .await;
    Ok(())
}

/// The volume's link on this side, as a secondary that may take `hello`'s
/// batches: created on the first stream, moved to a newer generation for a
/// failback, refused otherwise.
async fn secondary_link(
    gateway: &Arc<Gateway>,
    peer: &str,
    hello: &Hello,
) -> Result<DrLinkRecord, Refusal> {
    let volume = &hello.volume;
    if gateway.mirror.dr_link(volume).is_none() {
        if gateway.mirror.spec(volume).is_some() {
            return Err(refusal(
                refused::INVALID,
                0,
                format!("a volume named {volume} exists here and is not a DR secondary"),
            ));
        }
        create_secondary(gateway, peer, hello).await?;
    }
    let Some((link, revision)) = gateway.mirror.dr_link(volume) else {
        return Err(refusal(
            refused::FAILED,
            0,
            "the secondary's link record is gone",
        ));
    };
    if link.peer != peer {
        return Err(refusal(
            refused::NOT_SECONDARY,
            link.generation,
            format!("{volume} is linked with {}, not {peer}", link.peer),
        ));
    }
    if hello.generation < link.generation {
        return Err(refusal(
            refused::NEWER_GENERATION,
            link.generation,
            format!(
                "{volume} is at DR generation {} here; the sender's {} is older",
                link.generation, hello.generation
            ),
        ));
    }
    match link.role {
        DrRole::Secondary if hello.generation == link.generation => Ok(link),
        DrRole::Secondary => {
            let mut newer = link.clone();
            newer.generation = hello.generation;
            cas_link(gateway, &newer, revision)
                .await
                .map_err(|reason| refusal(refused::FAILED, link.generation, reason))?;
            Ok(newer)
        }
        DrRole::Fenced if link.failback_requested && hello.generation > link.generation => {
            let mut secondary = link.clone();
            secondary.role = DrRole::Secondary;
            secondary.generation = hello.generation;
            secondary.failback_requested = false;
            // Switch back once the chunks that differ are here: the first
            // batch is the comparison's, and its answer asks for the handover.
            secondary.handover_requested = true;
            cas_link(gateway, &secondary, revision)
                .await
                .map_err(|reason| refusal(refused::FAILED, link.generation, reason))?;
            tracing::info!(
                generation = hello.generation,
                "failback: this side takes the peer's batches as its secondary"
            );
            Ok(secondary)
        }
        DrRole::Fenced => Err(refusal(
            refused::NOT_SECONDARY,
            link.generation,
            format!(
                "{volume} is fenced here; `tether dr failback {volume}` makes it the secondary"
            ),
        )),
        DrRole::Primary if hello.generation > link.generation => {
            // The peer was promoted past this side: it must not serve.
            let mut fenced = link.clone();
            fenced.role = DrRole::Fenced;
            cas_link(gateway, &fenced, revision)
                .await
                .map_err(|reason| refusal(refused::FAILED, link.generation, reason))?;
            tracing::error!(generation = link.generation, newer = hello.generation, "fenced: the peer was promoted to a newer generation; this side refuses I/O until failback");
            Err(refusal(
                refused::NOT_SECONDARY,
                link.generation,
                format!("{volume} was the primary here and is fenced now; `tether dr failback {volume}` here makes it the secondary"),
            ))
        }
        DrRole::Primary => Err(refusal(
            refused::NEWER_GENERATION,
            link.generation,
            format!(
                "{volume} is the primary here at generation {}",
                link.generation
            ),
        )),
    }
}

/// Asks this cluster's registry to create the secondary (its own
/// placement) and waits until its masters serve.
async fn create_secondary(
    gateway: &Arc<Gateway>,
    peer: &str,
    hello: &Hello,
) -> Result<(), Refusal> {
    let failed = |reason: String| refusal(refused::FAILED, hello.generation, reason);
    let registry = gateway.registry.clone().ok_or_else(|| {
        failed("this gateway has no --registry to create secondaries with".into())
    })?;
    let request = DrSecondaryRequest {
        volume: hello.volume.clone(),
        peer: peer.to_string(),
        size_bytes: hello.size_bytes,
        replicas: hello.replicas,
        rpo_secs: hello.rpo_secs,
        generation: hello.generation,
        chunk_size: hello.chunk_size,
        encryption: hello
            .encryption
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|err| {
                refusal(
                    refused::INVALID,
                    hello.generation,
                    format!("encryption spec: {err}"),
                )
            })?,
    };
    tracing::info!(
        size = hello.size_bytes,
        replicas = hello.replicas,
        "creating the DR secondary"
    );
    let _: serde_json::Value = tether_tls::client::post_json(
        &registry,
        "/v1/dr/secondaries",
        gateway.tls.client_config(),
        &request,
    )
    .await
    .map_err(|err| failed(format!("creating the secondary: {err}")))?;
    let journal = journal_volume_name(&hello.volume);
    let started = Instant::now();
    let mut changes = gateway.mirror.subscribe();
    loop {
        let ready = |volume: &str| {
            gateway
                .mirror
                .group(volume)
                .is_some_and(|(group, _)| group.epoch > 0)
                && gateway.mirror.lock(volume).is_some()
        };
        if gateway.mirror.dr_link(&hello.volume).is_some()
            && ready(&hello.volume)
            && ready(&journal)
        {
            return Ok(());
        }
        if started.elapsed() > CREATE_PATIENCE {
            return Err(failed(format!(
                "the secondary {} has no master after {} s",
                hello.volume,
                CREATE_PATIENCE.as_secs()
            )));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Forced promotes asked for on this side: whichever gateway takes the
/// volume's receiver key finishes a committed batch, then makes the
/// secondary primary at the next generation (its last consistent point).
pub(crate) async fn watch_forced_promotes(gateway: Arc<Gateway>) {
    let mut changes = gateway.mirror.subscribe();
    loop {
        for link in gateway.mirror.dr_links() {
            if link.role == DrRole::Secondary && link.force_requested {
                if let Err(err) = force_promote(&gateway, link.clone()).await {
                    tracing::warn!(volume = %link.volume, error = %err, "forced promote did not finish; retrying");
                }
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn force_promote(gateway: &Arc<Gateway>, link: DrLinkRecord) -> Result<(), String> {
    let volume = link.volume.clone();
    let key = gateway.key(Kind::DrReceivers, &volume);
    // A stream still receiving ends at its next commit (it sees the request).
    let Some(lease) = super::take_leased(&gateway.store, &key, &gateway.name, RECEIVER_TTL)
        .await
        .map_err(|err| err.to_string())?
    else {
        return Ok(());
    };
    let size_bytes = gateway
        .mirror
        .spec(&volume)
        .map(|spec| spec.size_bytes)
        .ok_or_else(|| format!("the secondary {volume} has no volume record"))?;
    let journal_name = link
        .journal_volume
        .clone()
        .unwrap_or_else(|| journal_volume_name(&volume));
    let header = Journal {
        volume: gateway.dr_follower(&journal_name),
        layout: JournalLayout::for_volume(size_bytes),
    }
    .header()
    .await;
    let result = async {
        let header = header?;
        let Some(found) = header.filter(|header| header.state != JournalState::Seeding) else {
            return Err(format!(
                "{volume} has no consistent point yet (its seed has not finished): nothing to promote"
            ));
        };
        let mut receiver = Receiver::new(gateway, link.clone(), lease, found.chunk_size as u64, size_bytes);
        let recovered = receiver.recover().await;
        receiver.keep_alive.abort();
        recovered?;
        let Some((current, revision)) = gateway.mirror.dr_link(&volume) else {
            return Err("the DR link record vanished".into());
        };
        let mut primary = current;
        primary.role = DrRole::Primary;
        primary.generation = link.generation + 1;
        primary.force_requested = false;
        primary.handover_requested = false;
        cas_link(gateway, &primary, revision).await?;
        receiver.link = primary;
        receiver.publish("promoted").await;
        tracing::warn!(volume = %volume, point = receiver.header.point, generation = link.generation + 1, "forced promote: the secondary is the primary at its last consistent point");
        Ok(())
    }
    .await;
    if let Err(reason) = &result {
        // Not promotable: the request is withdrawn and the reason shown.
        if let Some((current, revision)) = gateway.mirror.dr_link(&volume) {
            if current.force_requested && reason.contains("no consistent point") {
                let mut withdrawn = current;
                withdrawn.force_requested = false;
                let _ = cas_link(gateway, &withdrawn, revision).await;
                let status = DrStatusRecord {
                    link_state: "refused-promote".into(),
                    error: Some(reason.clone()),
                    updated_unix_ms: now_ms(),
                    ..Default::default()
                };
                if let Ok(value) = serde_json::to_vec(&status) {
                    let _ = gateway
                        .store
                        .put(&gateway.key(Kind::DrReceived, &volume), value, None)
                        .await;
                }
            }
        }
    }
    let _ = gateway.store.revoke_lease(lease).await;
    result
}
