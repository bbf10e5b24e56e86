//! The hub store: sled, with a group-commit writer.
//!
//! Architecture invariant: every write that the hub reports as done (an Ack, a token, a revocation) went
//! through [`Store::commit`], which returns only after sled has flushed it to disk. One writer task applies
//! whatever batches are waiting and flushes once for all of them, so durability costs one fsync per group,
//! not per report.
//!
//! Crash consistency: sled recovers a prefix of the operations applied to it, across trees. Each batch is
//! ordered so that any prefix is safe (for a report: the history point first, the server record with the
//! high-water mark last), so a crash can at worst make the hub ask for a report again, never count it twice.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Trees of the hub store.
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
    /// id (u64 BE) → [`crate::audit::AuditEntry`] (JSON); append-only
    Audit,
    /// command id → [`crate::jobs::PendingRecord`] (JSON): dispatched, no result audited yet
    Pending,
    /// operator name → [`crate::operators::OperatorRevocation`] (JSON)
    Operators,
    /// job id → [`crate::jobs::PlanRecord`] (JSON): the batches of a fan-out not dispatched yet
    Plans,
}

impl Tree {
    const ALL: [Tree; 9] = [
        Tree::Servers,
        Tree::Tokens,
        Tree::Burned,
        Tree::Revoked,
        Tree::History,
        Tree::Audit,
        Tree::Pending,
        Tree::Operators,
        Tree::Plans,
    ];

    fn name(self) -> &'static str {
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
        }
    }
}

#[derive(Debug)]
pub enum Op {
    Put(Tree, Vec<u8>, Vec<u8>),
    Del(Tree, Vec<u8>),
    /// Deletes every key of `tree` in `[from, to)`.
    DelRange(Tree, Vec<u8>, Vec<u8>),
}

impl Op {
    pub fn put_json<T: Serialize>(tree: Tree, key: impl Into<Vec<u8>>, value: &T) -> Op {
        Op::Put(tree, key.into(), serde_json::to_vec(value).expect("store records serialise"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {path}: {error}; is another hubd running on this data_dir?")]
    Open { path: String, error: sled::Error },
    #[error("store write failed: {0}")]
    Write(String),
    #[error("store record {key:?} in {tree} is corrupt: {error}")]
    Corrupt { tree: &'static str, key: String, error: String },
    #[error("the store writer has stopped (the hub is shutting down)")]
    Closed,
}

/// A server as the registry persists it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerRecord {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub customer: String,
    pub plan: String,
    pub agent_id: String,
    /// The identity's current certificate (the newest issued).
    pub cert_serial: String,
    pub cert_not_after: i64,
    /// The certificate a renewal replaced, still accepted until the agent first connects with the new one
    /// (it may not have received or stored it). Every other serial this identity ever held is refused.
    pub prev_serial: String,
    /// When the identity was revoked (0: not revoked). Nothing connects or renews until a new enrollment.
    pub revoked_ms: i64,
    pub agent_version: String,
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub created_ms: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// When the agent took its latest stored report (its clock).
    pub last_report_ms: i64,
    /// Highest seq durably stored (the ack high-water mark).
    pub last_seq: u64,
    pub reports_received: u64,
    pub connections: u64,
    pub dropped_reports: u64,
    /// Reports the hub refused as invalid, as the agent counts them (Hello).
    pub refused_reports: u64,
    /// Files the agent lets `logs` read (Hello).
    pub log_files: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub server: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub created_by: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BurnedToken {
    pub server: String,
    pub burned_ms: i64,
    pub agent_id: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Revoked {
    pub server: String,
    pub revoked_ms: i64,
    pub by: String,
}

struct Batch {
    ops: Vec<Op>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Clone)]
pub struct Store {
    trees: std::sync::Arc<[sled::Tree; Tree::ALL.len()]>,
    writer: mpsc::Sender<Batch>,
    /// The writer task; it ends (after a final flush) when the last `Store` clone is dropped.
    writer_task: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// How many batches one flush may cover at most.
const GROUP_MAX: usize = 1024;

impl Store {
    /// Opens (or creates) the store and starts its writer. The writer stops, after a final flush, when every
    /// `Store` clone is dropped; [`Store::writer_task`] lets shutdown wait for that.
    pub fn open(dir: &Path, cache_mib: u64) -> Result<Store, StoreError> {
        let open_err = |error| StoreError::Open { path: dir.display().to_string(), error };
        let db = sled::Config::new().path(dir).cache_capacity(cache_mib * 1024 * 1024).open().map_err(open_err)?;
        let mut trees = Vec::new();
        for t in Tree::ALL {
            trees.push(db.open_tree(t.name()).map_err(open_err)?);
        }
        let trees: std::sync::Arc<[sled::Tree; Tree::ALL.len()]> =
            std::sync::Arc::new(trees.try_into().unwrap_or_else(|_| unreachable!("every tree opened")));
        let (tx, rx) = mpsc::channel(4096);
        let task = tokio::spawn(writer(db.clone(), trees.clone(), rx));
        Ok(Store { trees, writer: tx, writer_task: std::sync::Arc::new(std::sync::Mutex::new(Some(task))) })
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[Tree::ALL.iter().position(|x| *x == t).expect("every tree is opened")]
    }

    /// Applies `ops` in order and returns once they are on disk.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.writer.send(Batch { ops, done }).await.map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    pub fn get_raw(&self, t: Tree, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.tree(t).get(key).map_err(|e| StoreError::Write(e.to_string()))
    }

    pub fn get_json<T: DeserializeOwned>(&self, t: Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.tree(t).get(key).map_err(|e| StoreError::Write(e.to_string()))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| StoreError::Corrupt {
                tree: t.name(),
                key: String::from_utf8_lossy(key).into_owned(),
                error: e.to_string(),
            }),
        }
    }

    /// Every record of a JSON tree.
    pub fn all_json<T: DeserializeOwned>(&self, t: Tree) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(t).iter() {
            let (k, v) = item.map_err(|e| StoreError::Write(e.to_string()))?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                tree: t.name(),
                key: key.clone(),
                error: e.to_string(),
            })?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Values of `t` whose keys start with `prefix`, in key order; at most the last `last` of them.
    pub fn scan_prefix_last(&self, t: Tree, prefix: &[u8], last: usize) -> Result<Vec<sled::IVec>, StoreError> {
        let mut out = std::collections::VecDeque::with_capacity(last.min(4096));
        if last == 0 {
            return Ok(Vec::new());
        }
        for item in self.tree(t).scan_prefix(prefix).rev() {
            let (_, v) = item.map_err(|e| StoreError::Write(e.to_string()))?;
            out.push_front(v);
            if out.len() == last {
                break;
            }
        }
        Ok(out.into())
    }

    /// Key-value pairs of `t`, last key first (the audit log is read newest first).
    pub fn iter_rev(&self, t: Tree) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>> + '_ {
        self.tree(t).iter().rev().map(|r| r.map_err(|e| StoreError::Write(e.to_string())))
    }

    /// Key-value pairs of `t`, first key first.
    pub fn iter_from_start(&self, t: Tree) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), StoreError>> + '_ {
        self.tree(t).iter().map(|r| r.map_err(|e| StoreError::Write(e.to_string())))
    }

    /// The last key of `t`, if any.
    pub fn last_key(&self, t: Tree) -> Result<Option<sled::IVec>, StoreError> {
        self.tree(t).last().map(|o| o.map(|(k, _)| k)).map_err(|e| StoreError::Write(e.to_string()))
    }

    /// The writer task, once (for shutdown: drop every `Store`, then await it).
    pub fn writer_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.writer_task.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

async fn writer(db: sled::Db, trees: std::sync::Arc<[sled::Tree; Tree::ALL.len()]>, mut rx: mpsc::Receiver<Batch>) {
    let tree = |t: Tree| &trees[Tree::ALL.iter().position(|x| *x == t).expect("every tree is opened")];
    let mut group = Vec::with_capacity(GROUP_MAX);
    while rx.recv_many(&mut group, GROUP_MAX).await > 0 {
        let mut results = Vec::with_capacity(group.len());
        for batch in &group {
            let mut result = Ok(());
            for op in &batch.ops {
                let r = match op {
                    Op::Put(t, k, v) => tree(*t).insert(k.as_slice(), v.as_slice()).map(drop),
                    Op::Del(t, k) => tree(*t).remove(k.as_slice()).map(drop),
                    Op::DelRange(t, from, to) => {
                        let mut r = Ok(());
                        for k in tree(*t).range(from.as_slice()..to.as_slice()).keys() {
                            r = k.and_then(|k| tree(*t).remove(k).map(drop));
                            if r.is_err() {
                                break;
                            }
                        }
                        r
                    }
                };
                if let Err(e) = r {
                    result = Err(StoreError::Write(e.to_string()));
                    break;
                }
            }
            results.push(result);
        }
        let flushed = db.flush_async().await.map(drop).map_err(|e| StoreError::Write(format!("flush: {e}")));
        for (batch, result) in group.drain(..).zip(results) {
            let result = match (&flushed, result) {
                (Err(e), _) => Err(StoreError::Write(e.to_string())),
                (Ok(()), r) => r,
            };
            if let Err(error) = &result {
                tracing::error!(%error, "store write failed");
            }
            let _ = batch.done.send(result);
        }
    }
    let _ = db.flush();
    tracing::debug!("store writer stopped");
}

/// Key of one history point: `name`, a 0 byte, the seq big-endian (so keys sort by seq within a server).
pub fn history_key(server: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(server.len() + 9);
    k.extend_from_slice(server.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn history_prefix(server: &str) -> Vec<u8> {
    let mut k = server.as_bytes().to_vec();
    k.push(0);
    k
}

pub use outpost_common::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commits_are_durable_and_readable_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let writer = {
            let store = Store::open(dir.path(), 8).unwrap();
            let rec = ServerRecord { name: "a".into(), last_seq: 7, ..Default::default() };
            store.commit(vec![Op::put_json(Tree::Servers, "a", &rec)]).await.unwrap();
            let many: Vec<_> = (0..50)
                .map(|i| {
                    let s = store.clone();
                    tokio::spawn(
                        async move { s.commit(vec![Op::Put(Tree::History, history_key("a", i), vec![1])]).await },
                    )
                })
                .collect();
            for h in many {
                h.await.unwrap().unwrap();
            }
            store.writer_task().unwrap()
        };
        writer.await.unwrap(); // every clone dropped: the writer flushed and stopped
        // sled's background flusher lets go of the file lock shortly after the last handle is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(dir.path(), 8) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let rec: ServerRecord = store.get_json(Tree::Servers, b"a").unwrap().unwrap();
        assert_eq!(rec.last_seq, 7);
        assert_eq!(store.scan_prefix_last(Tree::History, &history_prefix("a"), 1000).unwrap().len(), 50);
        assert_eq!(store.scan_prefix_last(Tree::History, &history_prefix("a"), 3).unwrap().len(), 3);
    }
}
