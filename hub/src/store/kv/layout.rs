//! The embedded store's key layout: its trees, the operations a batch is made of, how every key and
//! the server's progress are encoded. A leaf: the store (`super`), its repositories and the report log use it.

use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::error::{Result, StoreError};
use crate::store::records::{QueuedJob, Resolution, ServerRecord, UsageBucket};

/// Trees of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    /// server name → [`ServerRecord`] (JSON)
    Servers,
    /// sha256(secret) → [`TokenRecord`] (JSON); removed when burned
    Tokens,
    /// sha256(secret) → [`BurnedToken`] (JSON); kept so a reused token gets a precise error
    Burned,
    /// certificate serial → [`Revoked`] (JSON)
    Revoked,
    /// server name, 0, seq (u64 BE) → `HistoryPoint` (protobuf)
    History,
    /// id (u64 BE) → [`AuditEntry`] (JSON); append-only
    Audit,
    /// command id → [`PendingRecord`] (JSON): dispatched, no result audited yet
    Pending,
    /// operator name → [`OperatorRevocation`] (JSON)
    Operators,
    /// job id → [`PlanRecord`] (JSON): the batches of a fan-out not dispatched yet
    Plans,
    /// server name → the latest `AppsState` (protobuf)
    Apps,
    /// job id (u64 BE) → [`QueuedJob`] (JSON)
    Queue,
    /// job id (u64 BE) → empty: the jobs not final yet (what a claim looks at)
    QueueOpen,
    /// idempotency key → job id (u64 BE)
    QueueKeys,
    /// silence id → [`SilenceRecord`] (JSON)
    Silences,
    /// alert key → [`AlertRecord`] (JSON): the alerts firing now
    Alerts,
    /// server name → the SHA-256 of its unused join token (at most one: the index that finds it without a
    /// scan of every token)
    TokenOf,
    /// server name → the fields every report changes (`last_seq`, `reports_received`, `last_seen_ms`,
    /// `last_report_ms`, `first_seen_ms`; 5 × u64 BE), so a report does not rewrite the whole record
    Progress,
    /// `c` server → [`UsageCursor`] (JSON); `h`|`d`, start (u64 BE), customer, 0, server → [`UsageBucket`]
    /// (protobuf)
    Usage,
    /// id (u64 BE) → a report's point and progress, not folded into `History` and `Progress` yet
    /// ([`log`])
    Log,
}

impl Tree {
    /// In declaration order: `ALL[t.index()] == t`.
    pub const ALL: [Tree; 19] = [
        Tree::Servers,
        Tree::Tokens,
        Tree::Burned,
        Tree::Revoked,
        Tree::History,
        Tree::Audit,
        Tree::Pending,
        Tree::Operators,
        Tree::Plans,
        Tree::Apps,
        Tree::Queue,
        Tree::QueueOpen,
        Tree::QueueKeys,
        Tree::Silences,
        Tree::Alerts,
        Tree::TokenOf,
        Tree::Progress,
        Tree::Usage,
        Tree::Log,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Servers => "servers",
            Tree::Tokens => "tokens",
            Tree::Burned => "burned",
            Tree::Revoked => "revoked",
            Tree::History => "history",
            Tree::Audit => "audit",
            Tree::Pending => "pending",
            Tree::Operators => "operators",
            Tree::Plans => "plans",
            Tree::Apps => "apps",
            Tree::Queue => "queue",
            Tree::QueueOpen => "queue_open",
            Tree::QueueKeys => "queue_keys",
            Tree::Silences => "silences",
            Tree::Usage => "usage",
            Tree::Alerts => "alerts",
            Tree::Progress => "progress",
            Tree::TokenOf => "token_of",
            Tree::Log => "report_log",
        }
    }

    /// Its place in [`Tree::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One change, as the writer applies it.
#[derive(Debug)]
pub enum Op {
    Put(Tree, Vec<u8>, Vec<u8>),
    Del(Tree, Vec<u8>),
    /// Deletes every key of the tree in `[from, to)`.
    DelRange(Tree, Vec<u8>, Vec<u8>),
    /// Puts every pair at once: after a crash, all of them or none.
    Atomic(Tree, Vec<(Vec<u8>, Vec<u8>)>),
    /// Stores join token (hash, record JSON) as `server`'s only unused token: its older one is deleted.
    /// Applied by the single writer, so concurrent issues for one server cannot leave two.
    ReplaceToken {
        server: String,
        hash: String,
        token: Vec<u8>,
    },
    /// Deletes `server`'s unused token, if any.
    DropTokenOf(String),
    /// Burns token `hash` of `server`: the batch fails with a conflict, writing nothing, when the token is
    /// not live any more. Must be a batch's first op.
    TakeToken {
        server: String,
        hash: String,
    },
}

pub(super) fn put_json<T: Serialize>(tree: Tree, key: impl Into<Vec<u8>>, value: &T) -> Op {
    Op::Put(tree, key.into(), serde_json::to_vec(value).expect("store records serialise"))
}

pub(super) fn decode<T: DeserializeOwned>(tree: Tree, key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        table: tree.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        error: e.to_string(),
    })
}

/// A range of keys in a tree (what `Engine::scan` walks).
pub type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

pub(super) const ALL_KEYS: KeyRange<'static> = (Bound::Unbounded, Bound::Unbounded);

/// A record's progress fields, as stored in [`Tree::Progress`].
pub(super) fn progress_bytes(r: &ServerRecord) -> Vec<u8> {
    [r.last_seq, r.reports_received, r.last_seen_ms as u64, r.last_report_ms as u64, r.first_seen_ms as u64]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// Puts stored progress into `r` (the newest values: progress is written with every record write).
pub(super) fn apply_progress(r: &mut ServerRecord, v: &[u8]) {
    let f: Vec<u64> = v.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();
    if let [seq, received, seen, report, first] = f[..] {
        (r.last_seq, r.reports_received) = (seq, received);
        (r.last_seen_ms, r.last_report_ms, r.first_seen_ms) = (seen as i64, report as i64, first as i64);
    }
}

/// Key of one history point: `name`, a 0 byte, the seq big-endian (so keys sort by seq within a server).
pub(super) fn history_key(server: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(server.len() + 9);
    k.extend_from_slice(server.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The ops that store `job` and keep the open index right.
pub(super) fn job_ops(job: &QueuedJob) -> Vec<Op> {
    let key = job.id.to_be_bytes().to_vec();
    let index = if job.state.is_final() {
        Op::Del(Tree::QueueOpen, key.clone())
    } else {
        Op::Put(Tree::QueueOpen, key.clone(), Vec::new())
    };
    vec![put_json(Tree::Queue, key, job), index]
}

pub(super) fn usage_key(res: Resolution, start_ms: i64, customer: &str, server: &str) -> Vec<u8> {
    let mut k = vec![usage_prefix(res)];
    k.extend_from_slice(&(start_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(customer.as_bytes());
    k.push(0);
    k.extend_from_slice(server.as_bytes());
    k
}

pub(super) fn usage_prefix(res: Resolution) -> u8 {
    match res {
        Resolution::Hour => b'h',
        Resolution::Day => b'd',
    }
}

pub(super) fn usage_time_key(res: Resolution, ms: i64) -> Vec<u8> {
    let mut k = vec![usage_prefix(res)];
    k.extend_from_slice(&(ms.max(0) as u64).to_be_bytes());
    k
}

pub(super) fn cursor_key(server: &str) -> Vec<u8> {
    let mut k = b"c".to_vec();
    k.extend_from_slice(server.as_bytes());
    k
}

pub(super) fn decode_bucket(key: &[u8], v: &[u8]) -> Result<UsageBucket> {
    use prost::Message as _;
    UsageBucket::decode(v).map_err(|e| StoreError::Corrupt {
        table: Tree::Usage.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        error: e.to_string(),
    })
}
