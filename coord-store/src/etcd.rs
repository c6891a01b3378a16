//! The etcd v3 store, over gRPC stubs generated from a trimmed copy of
//! etcd's protos (`protos/etcd/`) by protox: the build needs no `protoc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_tls::TlsContext;

use crate::etcd_api::etcdserverpb as pb;
use crate::etcd_api::mvccpb;
use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::{
    Compare, CoordStore, KeyValue, Lease, LeaseId, Result, StoreError, Txn, TxnOp, TxnResponse,
    WatchEvent, WatchStream,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one etcd cluster, over every member it was given: requests
/// go to one member, and a request that finds it unreachable (refused,
/// reset, timed out, or "no leader") is sent again to the next, which then
/// serves the following requests. Cheap to clone.
///
/// Retrying is safe for every request Tether makes: gets, keep-alives and
/// watches are reads; puts and deletes are idempotent; transactions compare
/// first, and callers resolve one whose answer was lost by reading back.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Members>,
}

struct Members {
    members: Vec<Member>,
    /// The member requests go to first.
    current: AtomicUsize,
    /// Granted TTLs, so a keep-alive times out in time to try another member
    /// before the lease lapses.
    lease_ttls: Mutex<HashMap<LeaseId, Duration>>,
}

#[derive(Clone)]
struct Member {
    endpoint: String,
    kv: pb::kv_client::KvClient<Channel>,
    lease: pb::lease_client::LeaseClient<Channel>,
    watch: pb::watch_client::WatchClient<Channel>,
}

/// Whether a failed request should be tried on another member.
fn member_unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) || (status.code() == tonic::Code::Unknown && status.message().contains("transport"))
}

impl EtcdStore {
    /// Connects to the members at `endpoints`: `http://host:port`, or
    /// `https://host:port` with mutual TLS as the holder of `tls` (whose
    /// renewed certificate later reconnects use). Channels connect lazily;
    /// this returns once one member answers.
    pub async fn connect(endpoints: &[String], tls: Option<Arc<TlsContext>>) -> Result<Self> {
        let mut members = Vec::new();
        for endpoint in endpoints {
            let built =
                Endpoint::from_shared(endpoint.clone()).map_err(|source| StoreError::Connect {
                    endpoints: endpoint.clone(),
                    source,
                })?;
            let built = built
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .tcp_nodelay(true);
            let channel = if endpoint.starts_with("https://") {
                let Some(tls) = tls.clone() else {
                    return Err(StoreError::EtcdProcess {
                        reason: format!("{endpoint} needs TLS and no certificate was given"),
                    });
                };
                built.connect_with_connector_lazy(tether_tls::h2::connector(tls, 2379))
            } else {
                built.connect_lazy()
            };
            members.push(Member {
                endpoint: endpoint.clone(),
                kv: pb::kv_client::KvClient::new(channel.clone()),
                lease: pb::lease_client::LeaseClient::new(channel.clone()),
                watch: pb::watch_client::WatchClient::new(channel),
            });
        }
        if members.is_empty() {
            return Err(StoreError::EtcdProcess {
                reason: "no etcd endpoints given".into(),
            });
        }
        let store = Self {
            inner: Arc::new(Members {
                members,
                current: AtomicUsize::new(0),
                lease_ttls: Mutex::new(HashMap::new()),
            }),
        };
        // One member must answer now: a wrong address or certificate is an
        // error at start, not a hang later.
        let probe = store
            .call("range", "", CONNECT_TIMEOUT, |member| async move {
                member
                    .kv
                    .clone()
                    .range(pb::RangeRequest {
                        key: b"/tether/connect-probe".to_vec(),
                        ..Default::default()
                    })
                    .await
            })
            .await;
        match probe {
            Ok(_) => Ok(store),
            Err(status) => Err(StoreError::Unreachable {
                endpoints: endpoints.join(","),
                reason: status.message().to_string(),
            }),
        }
    }

    /// Sends a request to the current member, and on to the others in turn
    /// while they are unreachable; the member that answers becomes current.
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        timeout: Duration,
        request: F,
    ) -> std::result::Result<T, tonic::Status>
    where
        F: Fn(Member) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let members = &self.inner.members;
        let first = self.inner.current.load(Ordering::Acquire) % members.len();
        let mut last = None;
        for attempt in 0..members.len() {
            let index = (first + attempt) % members.len();
            let member = members[index].clone();
            let answer = match tokio::time::timeout(timeout, request(member)).await {
                Ok(answer) => answer,
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer within {timeout:?}"
                ))),
            };
            match answer {
                Ok(response) => {
                    if attempt > 0 {
                        self.inner.current.store(index, Ordering::Release);
                        tracing::warn!(
                            op,
                            key,
                            from = %members[first].endpoint,
                            to = %members[index].endpoint,
                            "etcd member unreachable; switched to another"
                        );
                    }
                    return Ok(response.into_inner());
                }
                Err(status) if member_unreachable(&status) && members.len() > 1 => {
                    tracing::debug!(op, key, endpoint = %members[index].endpoint, error = %status, "etcd member unreachable");
                    last = Some(status);
                }
                Err(status) => return Err(status),
            }
        }
        Err(last.unwrap_or_else(|| tonic::Status::unavailable("no etcd member answered")))
    }

    /// How long a keep-alive of `lease` may take before another member is
    /// tried: a quarter of its TTL (at least 250 ms), so several members can
    /// be tried before it lapses.
    fn keep_alive_timeout(&self, lease: LeaseId) -> Duration {
        let ttl = self.inner.lease_ttls.lock().unwrap().get(&lease).copied();
        ttl.map_or(REQUEST_TIMEOUT, |ttl| {
            (ttl / 4).max(Duration::from_millis(250))
        })
    }
}

/// The key just past every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn rpc_error(op: &'static str, key: &str, status: tonic::Status) -> StoreError {
    StoreError::Rpc {
        op,
        key: key.to_string(),
        source: status,
    }
}

fn lease_error(
    op: &'static str,
    key: &str,
    lease: Option<LeaseId>,
    status: tonic::Status,
) -> StoreError {
    match lease {
        Some(lease) if status.message().contains("lease not found") => {
            StoreError::LeaseExpired { lease }
        }
        _ => rpc_error(op, key, status),
    }
}

fn from_pb(kv: mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: (kv.lease != 0).then_some(kv.lease),
    }
}

fn revision_of(header: Option<pb::ResponseHeader>) -> i64 {
    header.map_or(0, |header| header.revision)
}

fn op_to_pb(op: TxnOp) -> pb::RequestOp {
    use pb::request_op::Request;
    let request = match op {
        TxnOp::Put { key, value, lease } => Request::RequestPut(pb::PutRequest {
            key: key.into_bytes(),
            value,
            lease: lease.unwrap_or(0),
            ..Default::default()
        }),
        TxnOp::Delete { key } => Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.into_bytes(),
            ..Default::default()
        }),
        TxnOp::Get { key } => Request::RequestRange(pb::RangeRequest {
            key: key.into_bytes(),
            ..Default::default()
        }),
    };
    pb::RequestOp {
        request: Some(request),
    }
}

fn compare_to_pb(compare: Compare) -> pb::Compare {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let (key, target, union) = match compare {
        Compare::ModRevision { key, revision } => {
            (key, CompareTarget::Mod, TargetUnion::ModRevision(revision))
        }
        Compare::Value { key, value } => (key, CompareTarget::Value, TargetUnion::Value(value)),
        Compare::Lease { key, lease } => (key, CompareTarget::Lease, TargetUnion::Lease(lease)),
    };
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: key.into_bytes(),
        range_end: Vec::new(),
        target_union: Some(union),
    }
}

#[async_trait]
impl CoordStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let request = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let response = self
            .call("range", key, REQUEST_TIMEOUT, |member| {
                let request = request.clone();
                async move { member.kv.clone().range(request).await }
            })
            .await
            .map_err(|status| rpc_error("range", key, status))?;
        Ok(response.kvs.into_iter().next().map(from_pb))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let request = pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        let response = self
            .call("range", prefix, REQUEST_TIMEOUT, |member| {
                let request = request.clone();
                async move { member.kv.clone().range(request).await }
            })
            .await
            .map_err(|status| rpc_error("range", prefix, status))?;
        let revision = revision_of(response.header);
        Ok((response.kvs.into_iter().map(from_pb).collect(), revision))
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64> {
        let request = pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease: lease.unwrap_or(0),
            ..Default::default()
        };
        let response = self
            .call("put", key, REQUEST_TIMEOUT, |member| {
                let request = request.clone();
                async move { member.kv.clone().put(request).await }
            })
            .await
            .map_err(|status| lease_error("put", key, lease, status))?;
        Ok(revision_of(response.header))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let request = pb::DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let response = self
            .call("delete", key, REQUEST_TIMEOUT, |member| {
                let request = request.clone();
                async move { member.kv.clone().delete_range(request).await }
            })
            .await
            .map_err(|status| rpc_error("delete", key, status))?;
        Ok(response.deleted > 0)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let first_key = txn
            .compares
            .first()
            .map(|compare| compare.key().to_string())
            .unwrap_or_default();
        let first_lease = txn
            .success
            .iter()
            .chain(&txn.failure)
            .find_map(|op| match op {
                TxnOp::Put { lease, .. } => *lease,
                _ => None,
            });
        let request = pb::TxnRequest {
            compare: txn.compares.into_iter().map(compare_to_pb).collect(),
            success: txn.success.into_iter().map(op_to_pb).collect(),
            failure: txn.failure.into_iter().map(op_to_pb).collect(),
        };
        let response = self
            .call("txn", &first_key, REQUEST_TIMEOUT, |member| {
                let request = request.clone();
                async move { member.kv.clone().txn(request).await }
            })
            .await
            .map_err(|status| lease_error("txn", &first_key, first_lease, status))?;
        let gets = response
            .responses
            .into_iter()
            .filter_map(|op| match op.response {
                Some(pb::response_op::Response::ResponseRange(range)) => {
                    Some(range.kvs.into_iter().next().map(from_pb))
                }
                _ => None,
            })
            .collect();
        Ok(TxnResponse {
            succeeded: response.succeeded,
            revision: revision_of(response.header),
            gets,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        let seconds = crate::check_lease_ttl(ttl)?;
        let request = pb::LeaseGrantRequest {
            ttl: seconds,
            id: 0,
        };
        let response = self
            .call("lease grant", "", REQUEST_TIMEOUT, |member| async move {
                member.lease.clone().lease_grant(request).await
            })
            .await
            .map_err(|status| rpc_error("lease grant", "", status))?;
        if !response.error.is_empty() {
            return Err(StoreError::EtcdProcess {
                reason: format!("lease grant: {}", response.error),
            });
        }
        let granted = Duration::from_secs(response.ttl.max(0) as u64);
        self.inner
            .lease_ttls
            .lock()
            .unwrap()
            .insert(response.id, granted);
        Ok(Lease {
            id: response.id,
            ttl: granted,
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let timeout = self.keep_alive_timeout(lease);
        let response = self
            .call("lease keep-alive", "", timeout, |member| async move {
                let (sender, receiver) = mpsc::channel(1);
                sender
                    .send(pb::LeaseKeepAliveRequest { id: lease })
                    .await
                    .expect("receiver is alive");
                let mut responses = member
                    .lease
                    .clone()
                    .lease_keep_alive(ReceiverStream::new(receiver))
                    .await?
                    .into_inner();
                let response = responses.message().await?;
                Ok(tonic::Response::new(response))
            })
            .await
            .map_err(|status| rpc_error("lease keep-alive", "", status))?
            .ok_or(StoreError::LeaseExpired { lease })?;
        if response.ttl <= 0 {
            self.inner.lease_ttls.lock().unwrap().remove(&lease);
            return Err(StoreError::LeaseExpired { lease });
        }
        Ok(Duration::from_secs(response.ttl as u64))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.inner.lease_ttls.lock().unwrap().remove(&lease);
        let request = pb::LeaseRevokeRequest { id: lease };
        self.call("lease revoke", "", REQUEST_TIMEOUT, |member| async move {
            member.lease.clone().lease_revoke(request).await
        })
        .await
        .map_err(|status| lease_error("lease revoke", "", Some(lease), status))?;
        Ok(())
    }

    async fn watch_prefix(&self, prefix: &str, start_revision: i64) -> Result<WatchStream> {
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision,
                    ..Default::default()
                },
            )),
        };
        // The watch is made on one member; if that member goes, the stream
        // breaks and the watcher re-lists and watches again (on another).
        let (request_sender, mut responses, first) = self
            .call("watch", prefix, REQUEST_TIMEOUT, |member| {
                let create = create.clone();
                async move {
                    let (request_sender, request_receiver) = mpsc::channel(1);
                    request_sender
                        .send(create)
                        .await
                        .expect("receiver is alive");
                    let mut responses = member
                        .watch
                        .clone()
                        .watch(ReceiverStream::new(request_receiver))
                        .await?
                        .into_inner();
                    // Wait for the watch to exist, so a change made after we return is seen.
                    let first = responses.message().await?;
                    Ok(tonic::Response::new((request_sender, responses, first)))
                }
            })
            .await
            .map_err(|status| rpc_error("watch", prefix, status))?;
        let first = first.ok_or_else(|| StoreError::WatchBroken {
            prefix: prefix.into(),
            reason: "stream closed".into(),
        })?;
        if first.compact_revision > 0 {
            return Err(StoreError::Compacted {
                prefix: prefix.into(),
                revision: start_revision,
            });
        }
        let (sender, receiver) = mpsc::channel(1024);
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let _keep_request_stream_open = request_sender;
            let mut pending = Some(first);
            loop {
                let response = match pending.take() {
                    Some(response) => response,
                    None => match responses.message().await {
                        Ok(Some(response)) => response,
                        Ok(None) => {
                            let reason = "stream closed by etcd".to_string();
                            let _ = sender
                                .send(Err(StoreError::WatchBroken { prefix, reason }))
                                .await;
                            return;
                        }
                        Err(status) => {
                            let _ = sender.send(Err(rpc_error("watch", &prefix, status))).await;
                            return;
                        }
                    },
                };
                if response.compact_revision > 0 {
                    let revision = response.compact_revision;
                    let _ = sender
                        .send(Err(StoreError::Compacted { prefix, revision }))
                        .await;
                    return;
                }
                if response.canceled {
                    let reason = response.cancel_reason;
                    let _ = sender
                        .send(Err(StoreError::WatchBroken { prefix, reason }))
                        .await;
                    return;
                }
                for event in response.events {
                    let Some(kv) = event.kv else { continue };
                    let mapped = if event.r#type == mvccpb::event::EventType::Delete as i32 {
                        WatchEvent::Delete {
                            key: String::from_utf8_lossy(&kv.key).into_owned(),
                            mod_revision: kv.mod_revision,
                        }
                    } else {
                        WatchEvent::Put(from_pb(kv))
                    };
                    if sender.send(Ok(mapped)).await.is_err() {
                        return; // the watcher went away; dropping the stream cancels the watch
                    }
                }
            }
        });
        Ok(receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
