//! The audit log in the store: `audit/{seq}` entries chained by hash
//! (`tether_proto::audit`) and `audit-head/head`, the newest entry's seq and
//! hash, written together in one transaction so concurrent registries
//! cannot fork the chain. The oldest entries past
//! [`RETAINED_ENTRIES`](tether_proto::audit::RETAINED_ENTRIES) are deleted
//! in the same transaction; every entry also goes to the registry's JSON log
//! with its hash.

use coord_store::{Compare, CoordStore, Txn, TxnOp};
use tether_proto::audit::{
    self, AuditDraft, AuditEntry, AuditHead, AuditList, MAX_LISTED, RETAINED_ENTRIES,
};
use tether_proto::keys::{ClusterKeys, Kind};

use crate::api::decode;
use crate::RegistryError;

/// Appends one entry after the current head.
pub async fn append(
    store: &dyn CoordStore,
    cluster: &str,
    draft: AuditDraft,
) -> Result<AuditEntry, RegistryError> {
    let keys = ClusterKeys::new(cluster);
    let head_key = keys.audit_head();
    loop {
        let (head, revision) = match store.get(&head_key).await? {
            Some(kv) => (
                Some(decode::<AuditHead>(&head_key, &kv.value)?),
                kv.mod_revision,
            ),
            None => (None, 0),
        };
        let entry = audit::chain(head.as_ref(), draft.clone());
        let new_head = AuditHead {
            seq: entry.seq,
            hash: entry.hash.clone(),
        };
        let mut success = vec![
            TxnOp::Put {
                key: keys.audit_entry(entry.seq),
                value: serde_json::to_vec(&entry).expect("entry serializes"),
                lease: None,
            },
            TxnOp::Put {
                key: head_key.clone(),
                value: serde_json::to_vec(&new_head).expect("head serializes"),
                lease: None,
            },
        ];
        if entry.seq > RETAINED_ENTRIES {
            success.push(TxnOp::Delete {
                key: keys.audit_entry(entry.seq - RETAINED_ENTRIES),
            });
        }
        let txn = Txn {
            compares: vec![Compare::ModRevision {
                key: head_key.clone(),
                revision,
            }],
            success,
            failure: vec![],
        };
        if store.txn(txn).await?.succeeded {
            return Ok(entry);
        }
    }
}

/// The retained entries at or after `since_unix_ms`, oldest first, with
/// the whole retained chain checked.
pub async fn list(
    store: &dyn CoordStore,
    cluster: &str,
    since_unix_ms: u64,
) -> Result<AuditList, RegistryError> {
    let keys = ClusterKeys::new(cluster);
    let head_key = keys.audit_head();
    // The entries and the head as of one revision: a head newer than the
    // entries read means an append came between the reads (which would look
    // like a broken chain), so read again.
    let (entries, head) = loop {
        let (kvs, revision) = store.get_prefix(&keys.kind_prefix(Kind::Audit)).await?;
        let head = match store.get(&head_key).await? {
            Some(kv) if kv.mod_revision > revision => continue,
            Some(kv) => Some(decode::<AuditHead>(&head_key, &kv.value)?),
            None => None,
        };
        let entries = kvs
            .iter()
            .map(|kv| decode::<AuditEntry>(&kv.key, &kv.value))
            .collect::<Result<Vec<_>, _>>()?;
        break (entries, head);
    };
    let checked = audit::verify(&entries, head.as_ref());
    let mut matching: Vec<AuditEntry> = entries
        .into_iter()
        .filter(|entry| entry.record.at_unix_ms >= since_unix_ms)
        .collect();
    let omitted = matching.len().saturating_sub(MAX_LISTED);
    matching.drain(..omitted);
    Ok(AuditList {
        entries: matching,
        intact: checked.is_ok(),
        broken: checked.err(),
        omitted: omitted as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coord_store::EmbeddedStore;

    /// Past the retention, the oldest entries go and the rest still
    /// verifies (the oldest kept anchors it); an answer lists at most
    /// MAX_LISTED, the newest, and says how many it left out.
    #[tokio::test]
    async fn the_log_prunes_to_its_retention_and_answers_are_bounded() {
        let store = EmbeddedStore::in_memory();
        for i in 0..(RETAINED_ENTRIES + 5) {
            let draft = AuditDraft {
                at_unix_ms: 1_000 + i,
                identity: "tether://c/admin/ops".into(),
                action: format!("POST /v1/volumes/v{i}/resize"),
                outcome: "ok".into(),
                status: 200,
                ..Default::default()
            };
            append(&store, "c", draft).await.unwrap();
        }
        let listed = list(&store, "c", 0).await.unwrap();
        assert!(listed.intact, "{:?}", listed.broken);
        assert_eq!(listed.entries.len(), MAX_LISTED);
        assert_eq!(listed.omitted, RETAINED_ENTRIES - MAX_LISTED as u64);
        assert_eq!(listed.entries.last().unwrap().seq, RETAINED_ENTRIES + 5);
        let (kept, _) = store
            .get_prefix(&ClusterKeys::new("c").kind_prefix(Kind::Audit))
            .await
            .unwrap();
        assert_eq!(kept.len() as u64, RETAINED_ENTRIES);
        let recent = list(&store, "c", 1_000 + RETAINED_ENTRIES).await.unwrap();
        assert_eq!((recent.entries.len(), recent.omitted), (5, 0));
    }
}
