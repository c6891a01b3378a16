//! The audit log: every admin action (who, what, when, outcome), each entry
//! hashing the one before it, so an entry edited or removed in the store
//! breaks the chain where it was changed. The registry appends; this module
//! computes and checks the chain.

use serde::{Deserialize, Serialize};

/// What the registry keeps (older entries are pruned; the registry's log
/// lines carry every entry with its hash).
pub const RETAINED_ENTRIES: u64 = 4096;
/// Longest `target` or `outcome` text kept in an entry.
pub const MAX_TEXT: usize = 512;
/// Longest `identity`, `peer` or `action` kept (a path is the caller's to choose).
pub const MAX_NAME: usize = 256;
/// Most entries one answer carries (the newest that match): an answer stays
/// well under gRPC's 4 MiB message limit.
pub const MAX_LISTED: usize = 1000;
/// The `prev_hash` of the first entry ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One admin action, as it is stored: the action, chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Position in the log: 1 for the first entry, then one more each time.
    pub seq: u64,
    #[serde(flatten)]
    pub record: AuditDraft,
    pub prev_hash: String,
    /// BLAKE3 of the previous hash, `seq` and every field of `record`.
    pub hash: String,
}

/// The newest entry's position and hash, stored beside the entries so that
/// removing the newest entries is noticed too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// What an entry records: who, from where, what, when, and the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditDraft {
    pub at_unix_ms: u64,
    /// The caller's certificate identity (`tether://CLUSTER/ROLE/NAME`), or
    /// `anonymous` for token calls made without one.
    pub identity: String,
    /// The caller's address.
    pub peer: String,
    /// `POST /v1/volumes/db/resize`, or `gRPC ResizeVolume`.
    pub action: String,
    /// The names the request body gave (`name=db size_bytes=…`), for
    /// actions whose path does not say.
    pub target: String,
    /// `ok`, or the error the caller got.
    pub outcome: String,
    /// HTTP status (gRPC calls: the HTTP status of the gRPC response).
    pub status: u16,
}

/// `tether audit list`'s answer: the entries asked for, and whether the
/// retained chain checks out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
    /// True when every retained entry hashes to its `hash`, links to the one
    /// before it, and the newest matches the head.
    pub intact: bool,
    /// Where the chain breaks, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
    /// Older matching entries left out (at most [`MAX_LISTED`] are listed):
    /// ask again with a later `since`.
    #[serde(default)]
    pub omitted: u64,
}

fn entry_hash(seq: u64, draft: &AuditDraft, prev_hash: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tether-audit-v1\0");
    hasher.update(prev_hash.as_bytes());
    hasher.update(&seq.to_le_bytes());
    hasher.update(&draft.at_unix_ms.to_le_bytes());
    for text in [
        &draft.identity,
        &draft.peer,
        &draft.action,
        &draft.target,
        &draft.outcome,
    ] {
        // Length-prefixed, so moving bytes between fields changes the hash.
        hasher.update(&(text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());
    }
    hasher.update(&draft.status.to_le_bytes());
    hasher.finalize().to_hex().to_string()
}

fn clip(text: String) -> String {
    clip_to(text, MAX_TEXT)
}

fn clip_to(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The entry that follows `head` (none: the first entry).
pub fn chain(head: Option<&AuditHead>, draft: AuditDraft) -> AuditEntry {
    let draft = AuditDraft {
        identity: clip_to(draft.identity, MAX_NAME),
        peer: clip_to(draft.peer, MAX_NAME),
        action: clip_to(draft.action, MAX_NAME),
        target: clip(draft.target),
        outcome: clip(draft.outcome),
        ..draft
    };
    let (seq, prev_hash) = match head {
        Some(head) => (head.seq + 1, head.hash.clone()),
        None => (1, GENESIS.to_string()),
    };
    let hash = entry_hash(seq, &draft, &prev_hash);
    AuditEntry {
        seq,
        record: draft,
        prev_hash,
        hash,
    }
}

fn recompute(entry: &AuditEntry) -> String {
    entry_hash(entry.seq, &entry.record, &entry.prev_hash)
}

/// Checks the retained entries (oldest first) against each other and the
/// head: `Err` says where the chain breaks. The oldest retained entry is
/// trusted as the anchor (older ones were pruned), unless it is the first
/// entry ever, whose `prev_hash` must be [`GENESIS`].
pub fn verify(entries: &[AuditEntry], head: Option<&AuditHead>) -> Result<(), String> {
    let mut previous: Option<&AuditEntry> = None;
    for entry in entries {
        if recompute(entry) != entry.hash {
            return Err(format!("entry {} does not hash to its hash", entry.seq));
        }
        match previous {
            None if entry.seq == 1 && entry.prev_hash != GENESIS => {
                return Err("entry 1 does not start from the genesis hash".into())
            }
            None => {}
            Some(before) if entry.seq != before.seq + 1 => {
                return Err(format!(
                    "entries {} to {} are missing",
                    before.seq + 1,
                    entry.seq - 1
                ))
            }
            Some(before) if entry.prev_hash != before.hash => {
                return Err(format!(
                    "entry {} does not link to entry {}",
                    entry.seq, before.seq
                ))
            }
            Some(_) => {}
        }
        previous = Some(entry);
    }
    match (previous, head) {
        (None, None) => Ok(()),
        (Some(last), Some(head)) if last.seq == head.seq && last.hash == head.hash => Ok(()),
        (last, Some(head)) => Err(format!(
            "the head names entry {} but the newest entry is {}",
            head.seq,
            last.map_or(0, |entry| entry.seq)
        )),
        (Some(last), None) => Err(format!(
            "entries up to {} exist but the head is missing",
            last.seq
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> (Vec<AuditEntry>, AuditHead) {
        let mut entries: Vec<AuditEntry> = Vec::new();
        for i in 0..n {
            let head = entries.last().map(|last| AuditHead {
                seq: last.seq,
                hash: last.hash.clone(),
            });
            entries.push(chain(
                head.as_ref(),
                AuditDraft {
                    at_unix_ms: 1000 + i,
                    identity: "tether://c/admin/ops".into(),
                    action: format!("POST /v1/volumes/v{i}/resize"),
                    outcome: "ok".into(),
                    status: 200,
                    ..Default::default()
                },
            ));
        }
        let last = entries.last().unwrap();
        let head = AuditHead {
            seq: last.seq,
            hash: last.hash.clone(),
        };
        (entries, head)
    }

    #[test]
    fn an_untouched_chain_verifies_and_any_edit_removal_or_truncation_breaks_it() {
        let (entries, head) = log(5);
        verify(&entries, Some(&head)).unwrap();
        // Pruned from the front: still intact.
        verify(&entries[2..], Some(&head)).unwrap();

        let mut edited = entries.clone();
        edited[2].record.outcome = "refused".into();
        assert!(verify(&edited, Some(&head))
            .unwrap_err()
            .contains("entry 3"));

        let mut rehashed = edited.clone();
        rehashed[2].hash = recompute(&rehashed[2]);
        assert!(verify(&rehashed, Some(&head))
            .unwrap_err()
            .contains("entry 4 does not link"));

        let mut removed = entries.clone();
        removed.remove(1);
        assert!(verify(&removed, Some(&head))
            .unwrap_err()
            .contains("missing"));

        assert!(verify(&entries[..4], Some(&head))
            .unwrap_err()
            .contains("head"));
        assert!(verify(&entries, None).is_err());
    }

    #[test]
    fn long_texts_are_clipped_on_a_character_boundary() {
        let entry = chain(
            None,
            AuditDraft {
                target: "é".repeat(MAX_TEXT),
                action: format!("POST /{}", "a".repeat(100_000)),
                ..Default::default()
            },
        );
        assert!(entry.record.target.len() <= MAX_TEXT);
        assert!(entry.record.action.len() <= MAX_NAME);
        assert_eq!(recompute(&entry), entry.hash);
    }
}
