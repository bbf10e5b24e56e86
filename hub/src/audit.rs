//! The audit log: append-only, in the hub store, queryable by operator, server, action and time.
//!
//! Architecture invariant: every action request and job cancel is written here, durably, before anything
//! is dispatched, and so is every refusal of one (role, arguments, selector, deadline, confirmation).
//! Results are appended as records of their own; no record is ever rewritten. Join tokens and revocations
//! are recorded once they are done.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::store::{Op, Store, StoreError, Tree};

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An action accepted and about to be dispatched.
    #[default]
    Requested,
    /// A request refused before dispatch (role, arguments, selector, confirmation, ...).
    Refused,
    /// One target's outcome.
    Result,
    Cancel,
    Token,
    Revoke,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requested => "requested",
            Kind::Refused => "refused",
            Kind::Result => "result",
            Kind::Cancel => "cancel",
            Kind::Token => "token",
            Kind::Revoke => "revoke",
        }
    }
}

/// How an audited request or command ended.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A request, a cancel, a token: no outcome.
    #[default]
    None,
    Succeeded,
    Failed,
    Refused,
    Cancelled,
    TimedOut,
    Interrupted,
    Expired,
    Skipped,
}

impl Outcome {
    /// From `outpost.v1.Outcome`'s number (unknown numbers are `None`).
    pub fn from_wire(n: i32) -> Outcome {
        use outpost_proto::v1::Outcome as W;
        match W::try_from(n).unwrap_or_default() {
            W::Unspecified => Outcome::None,
            W::Succeeded => Outcome::Succeeded,
            W::Failed => Outcome::Failed,
            W::Refused => Outcome::Refused,
            W::Cancelled => Outcome::Cancelled,
            W::TimedOut => Outcome::TimedOut,
            W::Interrupted => Outcome::Interrupted,
            W::Expired => Outcome::Expired,
            W::Skipped => Outcome::Skipped,
        }
    }

    /// `outpost.v1.Outcome`'s number.
    pub fn to_wire(self) -> i32 {
        use outpost_proto::v1::Outcome as W;
        (match self {
            Outcome::None => W::Unspecified,
            Outcome::Succeeded => W::Succeeded,
            Outcome::Failed => W::Failed,
            Outcome::Refused => W::Refused,
            Outcome::Cancelled => W::Cancelled,
            Outcome::TimedOut => W::TimedOut,
            Outcome::Interrupted => W::Interrupted,
            Outcome::Expired => W::Expired,
            Outcome::Skipped => W::Skipped,
        }) as i32
    }
}

/// Reads an outcome stored as a word, or as the wire number that records written before 2026-11-30 hold.
fn outcome_compat<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Outcome, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Number(i32),
        Word(Outcome),
    }
    Ok(match Stored::deserialize(d)? {
        Stored::Number(n) => Outcome::from_wire(n),
        Stored::Word(o) => o,
    })
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuditEntry {
    pub id: u64,
    pub at_ms: i64,
    pub operator: String,
    pub role: String,
    pub kind: Kind,
    pub action: String,
    /// Redacted (see `outpost_common::actions::redacted`).
    pub args: BTreeMap<String, String>,
    pub selector: String,
    pub servers: Vec<String>,
    pub job_id: String,
    pub command_id: String,
    /// How a request or command ended (`none` for requests). Stored as a word: the wire enum's numbering
    /// is not stored data (records written before this change hold the number and still read back).
    #[serde(deserialize_with = "outcome_compat")]
    pub outcome: Outcome,
    pub message: String,
}

#[derive(Clone, Debug, Default)]
pub struct Query {
    pub operator: String,
    pub server: String,
    pub action: String,
    pub since_ms: i64,
    pub until_ms: i64,
    pub limit: usize,
}

/// Records looked at per query at most (newest first), so one query cannot walk an unbounded log.
const SCAN_MAX: usize = 200_000;

pub struct Audit {
    store: Store,
    next: AtomicU64,
}

impl Audit {
    pub fn open(store: Store) -> Result<Audit, StoreError> {
        let last = store
            .last_key(Tree::Audit)?
            .and_then(|k| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        Ok(Audit { store, next: AtomicU64::new(last + 1) })
    }

    /// Writes `e` (with a fresh id and time) and returns its id once it is on disk.
    pub async fn append(&self, e: AuditEntry) -> Result<u64, StoreError> {
        self.append_with(e, Vec::new()).await
    }

    /// Appends `e` and applies `also` in the same durable write.
    pub async fn append_with(&self, mut e: AuditEntry, also: Vec<Op>) -> Result<u64, StoreError> {
        e.id = self.next.fetch_add(1, Ordering::Relaxed);
        e.at_ms = outpost_common::now_ms();
        let id = e.id;
        if e.kind == Kind::Refused {
            tracing::info!(operator = %e.operator, action = %e.action, message = %e.message, "request refused (audited)");
        }
        let mut ops = vec![Op::put_json(Tree::Audit, id.to_be_bytes().to_vec(), &e)];
        ops.extend(also);
        self.store.commit(ops).await?;
        Ok(id)
    }

    /// Deletes records taken before `cutoff_ms` (oldest first, so it stops at the first newer one). The
    /// newest record always stays: ids continue from it after a restart, so they are never reused.
    /// Returns how many went.
    pub async fn trim(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let Some(newest) = self.store.last_key(Tree::Audit)? else { return Ok(0) };
        let mut n = 0;
        loop {
            let mut ops = Vec::new();
            for item in self.store.iter_from_start(Tree::Audit).take(1000) {
                let (k, v) = item?;
                let at = serde_json::from_slice::<AuditEntry>(&v).map(|e| e.at_ms).unwrap_or(0);
                if at >= cutoff_ms || k == newest {
                    break;
                }
                ops.push(Op::Del(Tree::Audit, k.to_vec()));
            }
            if ops.is_empty() {
                return Ok(n);
            }
            n += ops.len();
            self.store.commit(ops).await?;
        }
    }

    /// Newest first.
    pub fn query(&self, q: &Query) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.store.iter_rev(Tree::Audit).take(SCAN_MAX) {
            let (k, v) = item?;
            let e: AuditEntry = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                tree: "audit",
                key: format!("{k:?}"),
                error: e.to_string(),
            })?;
            if q.since_ms > 0 && e.at_ms < q.since_ms {
                break; // ids grow with time: everything further is older
            }
            let keep = (q.until_ms == 0 || e.at_ms <= q.until_ms)
                && (q.operator.is_empty() || e.operator == q.operator)
                && (q.action.is_empty() || e.action == q.action)
                && (q.server.is_empty() || e.servers.contains(&q.server));
            if keep {
                out.push(e);
                if out.len() >= q.limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written by the hub at 6e40fb5 (outcomes stored as wire numbers) opens, and its records read
    /// back with the same meaning; new records store the outcome as a word.
    #[tokio::test]
    async fn a_store_written_before_outcomes_were_words_reads_back() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-6e40fb5");
        let dir = tempfile::tempdir().unwrap();
        for f in ["conf", "db"] {
            std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        let audit = Audit::open(store.clone()).unwrap();
        let all = audit.query(&Query { limit: 100, ..Default::default() }).unwrap();
        let seen: Vec<(u64, Kind, Outcome)> = all.iter().map(|e| (e.id, e.kind, e.outcome)).collect();
        assert_eq!(
            seen,
            vec![
                (5, Kind::Result, Outcome::Succeeded),
                (4, Kind::Requested, Outcome::None),
                (3, Kind::Result, Outcome::Failed),
                (2, Kind::Requested, Outcome::None),
                (1, Kind::Token, Outcome::None),
            ]
        );
        assert_eq!(all[2].message, "sh: exited with status 3");
        let servers: Vec<(String, crate::store::ServerRecord)> = store.all_json(Tree::Servers).unwrap();
        let (name, record) = &servers[0];
        assert_eq!((name.as_str(), record.customer.as_str(), record.plan.as_str()), ("old-1", "acme", "pro"));
        assert!(!record.agent_id.is_empty() && record.prev_serial.is_empty() && record.revoked_ms == 0);
        // A new record stores the word.
        let id = audit.append(AuditEntry { outcome: Outcome::TimedOut, ..Default::default() }).await.unwrap();
        let raw = store.get_raw(Tree::Audit, &id.to_be_bytes()).unwrap().unwrap();
        assert!(String::from_utf8_lossy(&raw).contains("\"outcome\":\"timed_out\""), "{raw:?}");
        assert_eq!(id, 6, "ids continue after the old ones");
    }

    #[tokio::test]
    async fn append_then_query_by_each_field_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        let audit = Audit::open(store.clone()).unwrap();
        let entry = |op: &str, action: &str, server: &str| AuditEntry {
            operator: op.into(),
            action: action.into(),
            servers: vec![server.into()],
            ..Default::default()
        };
        audit.append(entry("ann", "reboot", "a")).await.unwrap();
        audit.append(entry("bob", "exec", "b")).await.unwrap();
        let third = audit.append(entry("ann", "exec", "a")).await.unwrap();
        let q = |f: fn(&mut Query)| {
            let mut q = Query { limit: 10, ..Default::default() };
            f(&mut q);
            audit.query(&q).unwrap().iter().map(|e| e.id).collect::<Vec<_>>()
        };
        assert_eq!(q(|_| {}), [3, 2, 1]);
        assert_eq!(q(|q| q.operator = "ann".into()), [3, 1]);
        assert_eq!(q(|q| q.action = "exec".into()), [3, 2]);
        assert_eq!(q(|q| q.server = "b".into()), [2]);
        assert_eq!(q(|q| q.limit = 1), [3]);
        assert_eq!(q(|q| q.since_ms = i64::MAX), Vec::<u64>::new());
        assert_eq!(audit.trim(0).await.unwrap(), 0);
        assert_eq!(audit.trim(i64::MAX).await.unwrap(), 2, "retention removes old records, but not the newest");
        assert_eq!(q(|_| {}), [3]);
        drop(audit);
        let reopened = Audit::open(store).unwrap();
        assert_eq!(reopened.next.load(Ordering::Relaxed), third + 1, "ids continue after a restart");
    }
}
