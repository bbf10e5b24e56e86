//! The embedded store: one key-value layout and one group-commit writer over an [`Engine`] (redb, the
//! default; sled, the older one).
//!
//! Every change goes through one writer task that applies whatever batches are waiting and makes them
//! durable once for all of them, so durability costs one sync per group, not per report; a method returns
//! after it. Each batch is ordered such that any prefix of it is safe (a report's history point before the
//! server record with the high-water mark; an audit record before the removal of the pending command it
//! ends): an engine that recovers a prefix of what it applied (sled) is safe, one that commits the group
//! atomically (redb) is too.
//!
//! One process owns an embedded store, so what must be atomic across callers (burning a token, one
//! outstanding token per server) is serialised by the writer or a lock here; ids come from counters loaded
//! at open.

mod log;

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::{
    AlertRecord, AuditEntry, AuditLog, AuditQuery, BurnedToken, Commands, OperatorRevocation, OperatorStore,
    PendingRecord, PlanRecord, PlanUpdate, Queue, QueuedJob, Reports, Resolution, Result, Revocations, Revoked,
    ServerRecord, Servers, SilenceRecord, Silences, StoreError, Submitted, TokenRecord, TokenState, Tokens, Usage,
    UsageBucket, UsageCursor,
};

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

fn put_json<T: Serialize>(tree: Tree, key: impl Into<Vec<u8>>, value: &T) -> Op {
    Op::Put(tree, key.into(), serde_json::to_vec(value).expect("store records serialise"))
}

struct Batch {
    ops: Vec<Op>,
    done: oneshot::Sender<Result<()>>,
}

/// A key-value engine under [`KvStore`]: ordered trees of byte keys, and group writes.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, t: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The values of `keys` in `t`, as one read (one snapshot).
    fn get_many(&self, t: Tree, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(t, k)).collect()
    }
    /// Calls `visit` with every pair of `t` whose key is in the range, in key order (reversed with `rev`),
    /// until it returns false.
    fn scan(
        &self,
        t: Tree,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        rev: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
    /// Applies the batches of a group in order and makes them durable; one result per batch, each `Ok`
    /// only once the batch is durable. A batch that fails may leave a prefix of its ops (batches are
    /// ordered so any prefix is safe). Blocking.
    fn apply(&self, group: &[Vec<Op>]) -> Vec<Result<()>>;
    /// Called once, after the last group, when the store closes.
    fn close(&self) {}
}

/// Walks `iter` forwards (backwards with `rev`) until `each` says stop: an engine's `scan`.
pub(crate) fn walk<I: DoubleEndedIterator>(
    mut iter: I,
    rev: bool,
    mut each: impl FnMut(I::Item) -> Result<bool>,
) -> Result<()> {
    while let Some(item) = if rev { iter.next_back() } else { iter.next() } {
        if !each(item)? {
            break;
        }
    }
    Ok(())
}

/// The conflict of a [`Op::TakeToken`] whose token is not live any more.
pub(crate) fn token_taken() -> StoreError {
    StoreError::Conflict("this join token was used or replaced a moment ago; it is single-use: create a new one".into())
}

/// The least time between the starts of two group commits while batches arrive together, by default
/// (`[store] commit_gap_ms`).
pub const COMMIT_GAP_MS: u64 = 8;
/// How many batches one group commit may cover at most.
const GROUP_MAX: usize = 1024;
/// Audit records looked at per query at most (newest first), so one query cannot walk an unbounded log.
const SCAN_MAX: usize = 200_000;

pub struct KvStore<E: Engine> {
    engine: Arc<E>,
    writer: mpsc::Sender<Batch>,
    /// Reports, apps states and usage: the bulk of the writes. Everything else (enrollment, tokens, audit,
    /// commands, jobs) goes through `writer`, which the writer task serves first, so a saturated report
    /// load never makes an enrollment wait behind thousands of queued reports.
    bulk: mpsc::Sender<Batch>,
    /// The writer task; it ends (after closing the engine) when the store is dropped.
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    audit_next: AtomicU64,
    /// Serialises queue writes (submit, claim, update): claims are atomic, updates check the lease.
    queue: tokio::sync::Mutex<()>,
    queue_next: AtomicU64,
    /// Serialises alert writes (an acknowledgement is kept across them).
    alerts: tokio::sync::Mutex<()>,
    /// Per server, a hash of its record as last written whole, without its progress fields: a report whose
    /// record differs only in those writes 40 bytes of progress, not the record.
    written: Mutex<std::collections::HashMap<String, u64>>,
    /// Leases, in memory: one process owns an embedded store, so they only order this hub's own tasks.
    leases: Mutex<std::collections::HashMap<String, (String, i64)>>,
    /// What the report log holds that is not folded yet.
    log: Arc<Mutex<log::Unfolded>>,
    /// Held exclusively by a fold's commit, shared by every other write of a server's progress (which
    /// reads it first): neither takes the other's progress back, and those writes still share commits
    /// (10,000 agents reconnecting at once each write their server).
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Wakes the fold task (once the log holds `fold_at` entries); cancelled when the store is dropped.
    fold_wake: Arc<tokio::sync::Notify>,
    fold_stop: tokio_util::sync::CancellationToken,
    fold_at: Arc<AtomicUsize>,
    /// Milliseconds between the starts of two group commits while batches arrive together.
    commit_gap: Arc<AtomicU64>,
    /// Folds finished so far (what a test awaits).
    #[cfg(test)]
    folds: tokio::sync::watch::Receiver<u64>,
}

impl<E: Engine> Drop for KvStore<E> {
    fn drop(&mut self) {
        self.fold_stop.cancel();
    }
}

/// What the fold task holds: no engine and no writer between folds, so the store's drop ends the writer
/// (which waits for this task before it closes the engine).
struct Folder<E: Engine> {
    engine: std::sync::Weak<E>,
    writer: mpsc::WeakSender<Batch>,
    log: Arc<Mutex<log::Unfolded>>,
    gate: Arc<tokio::sync::RwLock<()>>,
    fold_at: Arc<AtomicUsize>,
    folds: tokio::sync::watch::Sender<u64>,
}

impl<E: Engine> Folder<E> {
    fn unfolded(&self) -> std::sync::MutexGuard<'_, log::Unfolded> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn commit(&self, ops: Vec<Op>) -> Result<()> {
        let writer = self.writer.upgrade().ok_or(StoreError::Closed)?;
        let (done, wait) = oneshot::channel();
        writer.send(Batch { ops, done }).await.map_err(|_| StoreError::Closed)?;
        drop(writer);
        wait.await.map_err(|_| StoreError::Closed)?
    }

    /// The writes that fold `servers`' entries below `cut`.
    fn chunk(&self, servers: &[String], cut: u64) -> Result<(Vec<Op>, usize)> {
        let engine = self.engine.upgrade().ok_or(StoreError::Closed)?;
        let taken = self.unfolded().take(servers, cut);
        let (mut ops, mut n) = (Vec::new(), 0);
        for (name, agent_id, progress, ids) in taken {
            n += ids.len();
            let keys: Vec<Vec<u8>> = ids.iter().map(|id| log::key(*id)).collect();
            let mut entries = Vec::with_capacity(ids.len());
            for (id, v) in ids.iter().zip(engine.get_many(Tree::Log, &keys)?) {
                entries.extend(v.map(|v| log::Entry::decode(*id, &v)).transpose()?);
            }
            ops.extend(fold_server(&*engine, &name, &agent_id, &progress, entries)?);
        }
        Ok((ops, n))
    }

    /// Folds every settled log entry into the history and progress trees, a chunk per commit, then deletes
    /// them from the log.
    async fn fold(&self) -> Result<()> {
        let cut = self.unfolded().settled();
        let chunks = self.unfolded().chunks(cut);
        let t = std::time::Instant::now();
        let mut n = 0;
        for servers in &chunks {
            let _gate = self.gate.write().await;
            let (ops, folded) = self.chunk(servers, cut)?;
            n += folded;
            self.commit(ops).await?;
            self.unfolded().folded(servers, cut);
        }
        self.commit(vec![Op::DelRange(Tree::Log, log::key(0), log::key(cut))]).await?;
        tracing::debug!(entries = n, chunks = chunks.len(), ms = t.elapsed().as_millis() as u64, "report log folded");
        self.folds.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The fold task: a fold each time the log is long enough, until the store is dropped.
    async fn run(self, wake: Arc<tokio::sync::Notify>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = wake.notified() => {}
            }
            if self.unfolded().len() < self.fold_at.load(Ordering::Relaxed) {
                continue;
            }
            if let Err(error) = self.fold().await {
                if stop.is_cancelled() {
                    break;
                }
                // The reports are durable in the log; the next report that finds it long retries.
                tracing::error!(%error, "folding the report log failed; it is retried");
            }
        }
    }
}

fn decode<T: DeserializeOwned>(tree: Tree, key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        table: tree.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        error: e.to_string(),
    })
}

const ALL_KEYS: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Unbounded, Bound::Unbounded);

impl<E: Engine> KvStore<E> {
    /// A store over `engine`, with its writer started (on the current tokio runtime).
    pub fn new(engine: E) -> Result<KvStore<E>> {
        let engine = Arc::new(engine);
        let last_id = |t: Tree| -> Result<u64> {
            let mut last = 0;
            engine.scan(t, ALL_KEYS, true, &mut |k, _| {
                last = <[u8; 8]>::try_from(k).map_or(0, u64::from_be_bytes);
                false
            })?;
            Ok(last)
        };
        let (last_audit, last_job) = (last_id(Tree::Audit)?, last_id(Tree::Queue)?);
        // The token index (stores written before it had none): rebuilt from the unused tokens.
        let mut index = Vec::new();
        let mut indexed = false;
        engine.scan(Tree::TokenOf, ALL_KEYS, false, &mut |_, _| {
            indexed = true;
            false
        })?;
        if !indexed {
            engine.scan(Tree::Tokens, ALL_KEYS, false, &mut |hash, v| {
                if let Ok(t) = serde_json::from_slice::<TokenRecord>(v) {
                    index.push(Op::Put(Tree::TokenOf, t.server.into_bytes(), hash.to_vec()));
                }
                true
            })?;
        }
        if !index.is_empty() {
            engine.apply(&[index]).pop().expect("one batch, one result")?;
        }
        let next_log = recover_log(&*engine)?;
        let (tx, rx) = mpsc::channel(1024);
        let (bulk_tx, bulk_rx) = mpsc::channel(4096);
        let log = Arc::new(Mutex::new(log::Unfolded::starting_at(next_log)));
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let fold_at = Arc::new(AtomicUsize::new(log::FOLD_AT));
        let commit_gap = Arc::new(AtomicU64::new(COMMIT_GAP_MS));
        let (fold_wake, fold_stop) = (Arc::new(tokio::sync::Notify::new()), tokio_util::sync::CancellationToken::new());
        let folds_tx = tokio::sync::watch::Sender::new(0);
        #[cfg(test)]
        let folds = folds_tx.subscribe();
        let folder = Folder {
            engine: Arc::downgrade(&engine),
            writer: tx.downgrade(),
            log: log.clone(),
            gate: gate.clone(),
            fold_at: fold_at.clone(),
            folds: folds_tx,
        };
        let fold_task = tokio::spawn(folder.run(fold_wake.clone(), fold_stop.clone()));
        let task = tokio::spawn(writer(engine.clone(), (rx, bulk_rx), fold_task, commit_gap.clone()));
        Ok(KvStore {
            engine,
            writer: tx,
            bulk: bulk_tx,
            writer_task: Mutex::new(Some(task)),
            audit_next: AtomicU64::new(last_audit + 1),
            queue: tokio::sync::Mutex::new(()),
            queue_next: AtomicU64::new(last_job + 1),
            alerts: tokio::sync::Mutex::new(()),
            written: Mutex::default(),
            leases: Mutex::default(),
            log,
            gate,
            fold_wake,
            fold_stop,
            fold_at,
            commit_gap,
            #[cfg(test)]
            folds,
        })
    }

    /// Group commits start at most every `ms` milliseconds while batches arrive together (more reports per
    /// sync, each acknowledged later).
    pub fn with_commit_gap(self, ms: u64) -> Self {
        self.commit_gap.store(ms, Ordering::Relaxed);
        self
    }

    /// Folds the report log once it holds `n` entries (tests: a few).
    #[cfg(test)]
    pub(crate) fn fold_at(self, n: usize) -> Self {
        self.fold_at.store(n, Ordering::Relaxed);
        self
    }

    /// How many folds have finished, as they finish.
    #[cfg(test)]
    pub(crate) fn folds(&self) -> tokio::sync::watch::Receiver<u64> {
        self.folds.clone()
    }

    fn unfolded(&self) -> std::sync::MutexGuard<'_, log::Unfolded> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `ops` of a report of `server` with its log entry, then folds the log when it is long enough.
    async fn append(&self, server: &ServerRecord, mut ops: Vec<Op>, point: Option<(u64, u32, Vec<u8>)>) -> Result<()> {
        let progress = progress_bytes(server);
        let entry = log::Entry { server: server.name.clone(), agent_id: server.agent_id.clone(), progress, point };
        ops.extend(self.static_ops(server));
        let id = self.unfolded().begin();
        ops.push(Op::Put(Tree::Log, log::key(id), entry.encode()));
        // Ends the id whatever happens to this future: an id left open would hold every fold's cut.
        let mut ending = Guard(Some(|| self.unfolded().end(id, None)));
        let r = self.commit_server(&server.name, ops, true).await;
        ending.disarm();
        let long = {
            let mut u = self.unfolded();
            u.end(id, r.is_ok().then_some(&entry));
            u.len() >= self.fold_at.load(Ordering::Relaxed)
        };
        if long {
            self.fold_wake.notify_one();
        }
        r
    }

    /// The writer task, once: after the store is dropped it closes the engine and ends (shutdown waits
    /// for it).
    pub fn writer_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.writer_task.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    #[cfg(test)]
    pub(crate) fn engine(&self) -> &E {
        &self.engine
    }

    /// Applies `ops` in order and returns once they are durable.
    async fn commit(&self, ops: Vec<Op>) -> Result<()> {
        self.send(&self.writer, ops).await
    }

    /// As [`KvStore::commit`], for the bulk of the writes (reports), served after the others.
    async fn commit_bulk(&self, ops: Vec<Op>) -> Result<()> {
        self.send(&self.bulk, ops).await
    }

    async fn send(&self, to: &mpsc::Sender<Batch>, ops: Vec<Op>) -> Result<()> {
        let (done, wait) = oneshot::channel();
        to.send(Batch { ops, done }).await.map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    fn get(&self, t: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.engine.get(t, key)
    }

    pub(crate) fn get_json<T: DeserializeOwned>(&self, t: Tree, key: &[u8]) -> Result<Option<T>> {
        match self.get(t, key)? {
            None => Ok(None),
            Some(v) => decode(t, key, &v).map(Some),
        }
    }

    /// Every pair of `t` in `range`, in key order (reversed with `rev`), at most `limit`.
    fn pairs(
        &self,
        t: Tree,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if limit > 0 {
            self.engine.scan(t, range, rev, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    fn all_json<T: DeserializeOwned>(&self, t: Tree) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        let mut bad = None;
        self.engine.scan(t, ALL_KEYS, false, &mut |k, v| match decode(t, k, v) {
            Ok(r) => {
                out.push((String::from_utf8_lossy(k).into_owned(), r));
                true
            }
            Err(e) => {
                bad = Some(e);
                false
            }
        })?;
        bad.map_or(Ok(out), Err)
    }

    /// Every record of `t`, each decoded on its own (an unreadable one does not hide the others).
    fn each_json<T: DeserializeOwned>(&self, t: Tree) -> Result<Vec<(String, Result<T, String>)>> {
        let mut out = Vec::new();
        self.engine.scan(t, ALL_KEYS, false, &mut |k, v| {
            out.push((String::from_utf8_lossy(k).into_owned(), serde_json::from_slice(v).map_err(|e| e.to_string())));
            true
        })?;
        Ok(out)
    }

    /// Whether `server` has an unused token now.
    fn has_token(&self, server: &str) -> Result<bool> {
        Ok(self.get(Tree::TokenOf, server.as_bytes())?.is_some())
    }

    fn audit_record(&self, mut entry: AuditEntry) -> (u64, Op) {
        entry.id = self.audit_next.fetch_add(1, Ordering::Relaxed);
        entry.at_ms = outpost_common::now_ms();
        (entry.id, put_json(Tree::Audit, entry.id.to_be_bytes().to_vec(), &entry))
    }
}

/// Runs its closure when dropped, unless disarmed.
struct Guard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Guard<F> {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The writes that fold `entries` (one server's, oldest first) into its history and progress, against its
/// stored record and progress.
fn fold_server<E: Engine>(
    engine: &E,
    name: &str,
    agent_id: &str,
    progress: &[u8],
    entries: Vec<log::Entry>,
) -> Result<Vec<Op>> {
    let record = engine
        .get(Tree::Servers, name.as_bytes())?
        .map(|v| decode::<ServerRecord>(Tree::Servers, name.as_bytes(), &v))
        .transpose()?;
    let stored = engine.get(Tree::Progress, name.as_bytes())?;
    Ok(log::fold_ops(name, agent_id, progress, entries, record.as_ref().map(|r| (r, stored))))
}

/// Replays the report log at open: folds every entry into the history and progress trees, empties the
/// log, and returns the next log id. Blocking; before the writer starts.
fn recover_log<E: Engine>(engine: &E) -> Result<u64> {
    let mut last = 0;
    let mut by_server: std::collections::BTreeMap<String, Vec<log::Entry>> = Default::default();
    let mut bad = None;
    engine.scan(Tree::Log, ALL_KEYS, false, &mut |k, v| {
        last = <[u8; 8]>::try_from(k).map_or(last, u64::from_be_bytes);
        match log::Entry::decode(last, v) {
            Ok(e) => by_server.entry(e.server.clone()).or_default().push(e),
            Err(e) => bad = Some(e),
        }
        bad.is_none()
    })?;
    if let Some(e) = bad {
        return Err(e);
    }
    if last == 0 {
        return Ok(1);
    }
    let n: usize = by_server.values().map(Vec::len).sum();
    let mut ops = Vec::new();
    for (name, entries) in by_server {
        // The newest identity's progress (an older identity's points still go to the history).
        let agent_id = entries.last().map(|e| e.agent_id.clone()).unwrap_or_default();
        let progress =
            entries.iter().filter(|e| e.agent_id == agent_id).fold(Vec::new(), |p, e| log::forward(&p, &e.progress));
        ops.extend(fold_server(engine, &name, &agent_id, &progress, entries)?);
    }
    ops.push(Op::DelRange(Tree::Log, log::key(0), log::key(last + 1)));
    engine.apply(&[ops]).pop().expect("one batch, one result")?;
    tracing::info!(entries = n, "report log replayed into the store");
    Ok(last + 1)
}

/// A record's progress fields, as stored in [`Tree::Progress`].
fn progress_bytes(r: &ServerRecord) -> Vec<u8> {
    [r.last_seq, r.reports_received, r.last_seen_ms as u64, r.last_report_ms as u64, r.first_seen_ms as u64]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// Puts stored progress into `r` (the newest values: progress is written with every record write).
fn apply_progress(r: &mut ServerRecord, v: &[u8]) {
    let f: Vec<u64> = v.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();
    if let [seq, received, seen, report, first] = f[..] {
        (r.last_seq, r.reports_received) = (seq, received);
        (r.last_seen_ms, r.last_report_ms, r.first_seen_ms) = (seen as i64, report as i64, first as i64);
    }
}

impl<E: Engine> KvStore<E> {
    /// The writes that store `r`: the whole record when more than its progress changed since it was last
    /// written whole (or `whole`), then its progress (last: it carries the high-water mark).
    fn server_ops(&self, r: &ServerRecord, whole: bool) -> Vec<Op> {
        let mut ops = if whole { self.whole(r) } else { self.static_ops(r).into_iter().collect() };
        ops.push(Op::Put(Tree::Progress, r.name.as_bytes().to_vec(), progress_bytes(r)));
        ops
    }

    /// The write of `r` whole, when more than its progress changed since it was last written whole.
    fn static_ops(&self, r: &ServerRecord) -> Option<Op> {
        let h = r.static_hash();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        (written.get(&r.name) != Some(&h)).then(|| {
            written.insert(r.name.clone(), h);
            put_json(Tree::Servers, r.name.clone(), r)
        })
    }

    fn whole(&self, r: &ServerRecord) -> Vec<Op> {
        self.written.lock().unwrap_or_else(|p| p.into_inner()).insert(r.name.clone(), r.static_hash());
        vec![put_json(Tree::Servers, r.name.clone(), r)]
    }

    /// Audits `entry` and deletes record `id` of `t` (a pending command or a plan) in one write, unless a
    /// hub other than `hub` holds it now (`holder` says which).
    async fn finish_held<T: DeserializeOwned>(
        &self,
        t: Tree,
        id: &str,
        hub: &str,
        holder: impl FnOnce(T) -> String,
        entry: AuditEntry,
    ) -> Result<u64> {
        // Under the lock claims take: the holder checked is the holder when the write lands.
        let _queue = self.queue.lock().await;
        if let Some(Ok(r)) = self.get(t, id.as_bytes())?.map(|v| serde_json::from_slice::<T>(&v))
            && let held = holder(r)
            && held != hub
        {
            let what = if t == Tree::Plans { format!("the plan of job {id}") } else { format!("command {id}") };
            return Err(super::taken_over(&what, hub, &held));
        }
        let (audit_id, op) = self.audit_record(entry);
        self.commit(vec![op, Op::Del(t, id.as_bytes().to_vec())]).await?;
        Ok(audit_id)
    }

    /// `r` with its progress never behind the stored one under the same identity (a writer with an older
    /// view does not take a server's high-water mark or counters back; a new identity starts its own).
    async fn forward(&self, r: &ServerRecord) -> Result<ServerRecord> {
        let mut r = r.clone();
        if let Some(s) = self.server(&r.name).await?.filter(|s| s.agent_id == r.agent_id) {
            r.last_seq = r.last_seq.max(s.last_seq);
            r.reports_received = r.reports_received.max(s.reports_received);
            r.last_seen_ms = r.last_seen_ms.max(s.last_seen_ms);
            r.last_report_ms = r.last_report_ms.max(s.last_report_ms);
            if s.first_seen_ms != 0 {
                r.first_seen_ms = s.first_seen_ms;
            }
        }
        Ok(r)
    }

    /// Commits `ops` that include a write of `server`; a failed write forgets what was written of it, so
    /// the next write stores it whole.
    async fn commit_server(&self, server: &str, ops: Vec<Op>, bulk: bool) -> Result<()> {
        let r = if bulk { self.commit_bulk(ops).await } else { self.commit(ops).await };
        if r.is_err() {
            self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(server);
        }
        r
    }
}

#[async_trait]
impl<E: Engine> Servers for KvStore<E> {
    async fn servers(&self) -> Result<Vec<ServerRecord>> {
        let mut out = Vec::new();
        for (name, mut r) in self.all_json::<ServerRecord>(Tree::Servers)? {
            if let Some(p) = self.get(Tree::Progress, name.as_bytes())? {
                apply_progress(&mut r, &p);
            }
            out.push(r);
        }
        let log = self.unfolded();
        out.iter_mut().for_each(|r| log.merge(r));
        Ok(out)
    }

    async fn server(&self, name: &str) -> Result<Option<ServerRecord>> {
        let Some(mut r) = self.get_json::<ServerRecord>(Tree::Servers, name.as_bytes())? else { return Ok(None) };
        if let Some(p) = self.get(Tree::Progress, name.as_bytes())? {
            apply_progress(&mut r, &p);
        }
        self.unfolded().merge(&mut r);
        Ok(Some(r))
    }

    async fn server_of_agent(&self, agent_id: &str) -> Result<Option<ServerRecord>> {
        // A scan: one hub owns a sled store, and its fleet view already maps every agent; this is for
        // completeness, not a path that runs.
        Ok(self.servers().await?.into_iter().find(|r| !agent_id.is_empty() && r.agent_id == agent_id))
    }

    async fn put_server(&self, record: &ServerRecord) -> Result<()> {
        let _gate = self.gate.read().await;
        let record = self.forward(record).await?;
        self.commit_server(&record.name, self.server_ops(&record, true), false).await
    }

    async fn remove_server(&self, name: &str) -> Result<()> {
        let _gate = self.gate.read().await;
        let mut ops = vec![Op::DropTokenOf(name.to_string())];
        // Its reports in the log go too (a fold that has not reached them yet skips a removed server).
        ops.extend(self.unfolded().ids(name).into_iter().map(|id| Op::Del(Tree::Log, log::key(id))));
        let (from, to) = (history_key(name, 0), history_key(name, u64::MAX));
        ops.push(Op::DelRange(Tree::History, from, to));
        ops.push(Op::Del(Tree::Apps, name.as_bytes().to_vec()));
        // Its usage buckets stay (they carry the customer); the counters' cursor goes with the server.
        ops.push(Op::Del(Tree::Usage, cursor_key(name)));
        ops.push(Op::Del(Tree::Progress, name.as_bytes().to_vec()));
        ops.push(Op::Del(Tree::Servers, name.as_bytes().to_vec()));
        self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.commit(ops).await?;
        self.unfolded().forget(name);
        Ok(())
    }
}

#[async_trait]
impl<E: Engine> Tokens for KvStore<E> {
    async fn token(&self, hash: &str) -> Result<TokenState> {
        if let Some(t) = self.get_json(Tree::Tokens, hash.as_bytes())? {
            return Ok(TokenState::Live(t));
        }
        Ok(self.get_json(Tree::Burned, hash.as_bytes())?.map_or(TokenState::Unknown, TokenState::Burned))
    }

    async fn issue_token(&self, hash: &str, token: &TokenRecord, server: &ServerRecord) -> Result<usize> {
        // Found through the index, replaced by the writer: no scan of the tokens, no lock held across the
        // commit (thousands of servers enrolling at once must not queue behind each other's writes).
        let older = usize::from(self.has_token(&token.server)?);
        let token_json = serde_json::to_vec(token).expect("store records serialise");
        let mut ops =
            vec![Op::ReplaceToken { server: token.server.clone(), hash: hash.to_string(), token: token_json }];
        ops.extend(self.server_ops(server, true));
        let _gate = self.gate.read().await;
        self.commit_server(&server.name, ops, false).await?;
        Ok(older)
    }

    async fn enroll(
        &self,
        hash: &str,
        burned: &BurnedToken,
        server: &ServerRecord,
        takeover: Option<AuditEntry>,
    ) -> Result<()> {
        // Burning the token comes first and fails the whole batch when it is not live any more: single use
        // is the writer's, with no lock held across the commit. Then the takeover's audit record, before
        // the enrollment it records.
        let mut ops = vec![Op::TakeToken { server: burned.server.clone(), hash: hash.to_string() }];
        ops.extend(takeover.map(|e| self.audit_record(e).1));
        ops.push(put_json(Tree::Burned, hash, burned));
        ops.extend(self.server_ops(server, true));
        let _gate = self.gate.read().await;
        self.commit_server(&server.name, ops, false).await
    }

    async fn drop_tokens(&self, server: &str) -> Result<usize> {
        let n = usize::from(self.has_token(server)?);
        self.commit(vec![Op::DropTokenOf(server.to_string())]).await?;
        Ok(n)
    }
}

#[async_trait]
impl<E: Engine> Revocations for KvStore<E> {
    async fn revoked_serials(&self) -> Result<Vec<String>> {
        Ok(self.all_json::<Revoked>(Tree::Revoked)?.into_iter().map(|(k, _)| k).collect())
    }

    async fn revoke_identity(&self, server: &ServerRecord, serials: &[String], by: &Revoked) -> Result<()> {
        let mut ops: Vec<Op> = serials.iter().map(|s| put_json(Tree::Revoked, s.clone(), by)).collect();
        let _gate = self.gate.read().await;
        ops.extend(self.server_ops(&self.forward(server).await?, true));
        self.commit_server(&server.name, ops, false).await
    }
}

/// Key of one history point: `name`, a 0 byte, the seq big-endian (so keys sort by seq within a server).
fn history_key(server: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(server.len() + 9);
    k.extend_from_slice(server.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

#[async_trait]
impl<E: Engine> Reports for KvStore<E> {
    async fn record_report(&self, server: &ServerRecord, seq: u64, point: Vec<u8>, keep: u32) -> Result<()> {
        // Into the report log, folded into the history and progress later (see `log`).
        self.append(server, Vec::new(), Some((seq, keep, point))).await
    }

    async fn record_apps(&self, server: &ServerRecord, _seq: u64, apps: Vec<u8>) -> Result<()> {
        // The state first, the high-water mark last: any recovered prefix is safe.
        self.append(server, vec![Op::Put(Tree::Apps, server.name.as_bytes().to_vec(), apps)], None).await
    }

    async fn apps(&self, server: &str) -> Result<Option<Vec<u8>>> {
        self.get(Tree::Apps, server.as_bytes())
    }

    async fn report(&self, server: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        let (in_log, floor) = {
            let log = self.unfolded();
            (log.point(server, seq), log.floor(server))
        };
        if seq < floor {
            return Ok(None); // trimmed (or about to be, by the next fold)
        }
        if let Some(id) = in_log
            && let Some(v) = self.get(Tree::Log, &log::key(id))?
        {
            return Ok(log::Entry::decode(id, &v)?.point.map(|(_, _, p)| p));
        }
        self.get(Tree::History, &history_key(server, seq))
    }

    async fn history(&self, server: &str, n: usize) -> Result<Vec<Vec<u8>>> {
        let (from, to) = (history_key(server, 0), history_key(server, u64::MAX));
        let range = (Bound::Included(from.as_slice()), Bound::Included(to.as_slice()));
        // The log's newest points first: the history has the rest (and, while a fold lands, some of them).
        let (in_log, floor) = {
            let log = self.unfolded();
            (log.points(server, n), log.floor(server))
        };
        let keys: Vec<Vec<u8>> = in_log.iter().map(|(id, _)| log::key(*id)).collect();
        let mut points = std::collections::BTreeMap::new();
        for ((id, seq), v) in in_log.iter().zip(self.engine.get_many(Tree::Log, &keys)?) {
            if let Some((_, _, p)) = v.map(|v| log::Entry::decode(*id, &v)).transpose()?.and_then(|e| e.point) {
                points.insert(*seq, p);
            }
        }
        for (k, v) in self.pairs(Tree::History, range, true, n)? {
            let seq = k.len().checked_sub(8).map_or(0, |i| u64::from_be_bytes(k[i..].try_into().expect("8 bytes")));
            points.entry(seq).or_insert(v);
        }
        points.retain(|seq, _| *seq >= floor);
        let skip = points.len().saturating_sub(n);
        Ok(points.into_values().skip(skip).collect())
    }
}

#[async_trait]
impl<E: Engine> AuditLog for KvStore<E> {
    async fn append_audit(&self, entry: AuditEntry) -> Result<u64> {
        let (id, op) = self.audit_record(entry);
        self.commit(vec![op]).await?;
        Ok(id)
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        let (mut seen, mut bad) = (0, None);
        self.engine.scan(Tree::Audit, ALL_KEYS, true, &mut |k, v| {
            seen += 1;
            let e: AuditEntry = match decode(Tree::Audit, k, v) {
                Ok(e) => e,
                Err(e) => {
                    bad = Some(e);
                    return false;
                }
            };
            if q.since_ms > 0 && e.at_ms < q.since_ms {
                return false; // ids grow with time: everything further is older
            }
            if q.matches(&e) {
                out.push(e);
            }
            out.len() < q.limit && seen < SCAN_MAX
        })?;
        bad.map_or(Ok(out), Err)
    }

    async fn trim_audit(&self, cutoff_ms: i64) -> Result<usize> {
        let Some((newest, _)) = self.pairs(Tree::Audit, ALL_KEYS, true, 1)?.pop() else { return Ok(0) };
        let mut n = 0;
        loop {
            let mut ops = Vec::new();
            for (k, v) in self.pairs(Tree::Audit, ALL_KEYS, false, 1000)? {
                let at = serde_json::from_slice::<AuditEntry>(&v).map(|e| e.at_ms).unwrap_or(0);
                if at >= cutoff_ms || k == newest {
                    break;
                }
                ops.push(Op::Del(Tree::Audit, k));
            }
            if ops.is_empty() {
                return Ok(n);
            }
            n += ops.len();
            self.commit(ops).await?;
        }
    }
}

#[async_trait]
impl<E: Engine> Commands for KvStore<E> {
    async fn dispatch_batch(&self, job_id: &str, batch: &[(String, PendingRecord)], plan: PlanUpdate) -> Result<()> {
        let mut ops: Vec<Op> = batch.iter().map(|(id, r)| put_json(Tree::Pending, id.as_bytes(), r)).collect();
        ops.push(match &plan {
            PlanUpdate::Remaining(p) => put_json(Tree::Plans, job_id, p),
            PlanUpdate::Done => Op::Del(Tree::Plans, job_id.as_bytes().to_vec()),
        });
        self.commit(ops).await
    }

    async fn finish_command(&self, command_id: &str, hub: &str, result: AuditEntry) -> Result<u64> {
        let holder = |r: PendingRecord| r.hub;
        self.finish_held(Tree::Pending, command_id, hub, holder, result).await
    }

    async fn finish_job(&self, job_id: &str, hub: &str, skipped: AuditEntry) -> Result<u64> {
        let holder = |p: PlanRecord| p.hub;
        self.finish_held(Tree::Plans, job_id, hub, holder, skipped).await
    }

    async fn pending_commands(&self) -> Result<Vec<(String, Result<PendingRecord, String>)>> {
        self.each_json(Tree::Pending)
    }

    async fn claim_commands(&self, from: &str, to: &str) -> Result<super::Claimed> {
        // One process owns a sled store; the claim is still what the trait says (for the suite).
        let _queue = self.queue.lock().await;
        let mut ops = Vec::new();
        let mut commands = Vec::new();
        for (id, r) in self.all_json::<PendingRecord>(Tree::Pending)? {
            if r.hub == from {
                let r = PendingRecord { hub: to.to_string(), ..r };
                ops.push(put_json(Tree::Pending, id.as_bytes(), &r));
                commands.push((id, r));
            }
        }
        let mut plans = Vec::new();
        for (id, p) in self.all_json::<PlanRecord>(Tree::Plans)? {
            if p.hub == from {
                let p = PlanRecord { hub: to.to_string(), ..p };
                ops.push(put_json(Tree::Plans, id.as_bytes(), &p));
                plans.push((id, p));
            }
        }
        if !ops.is_empty() {
            self.commit(ops).await?;
        }
        Ok((commands, plans))
    }

    async fn plans(&self) -> Result<Vec<(String, Result<PlanRecord, String>)>> {
        self.each_json(Tree::Plans)
    }
}

#[async_trait]
impl<E: Engine> OperatorStore for KvStore<E> {
    async fn operator_revocations(&self) -> Result<Vec<(String, OperatorRevocation)>> {
        self.all_json(Tree::Operators)
    }

    async fn revoke_operator(&self, name: &str, revocation: &OperatorRevocation) -> Result<()> {
        self.commit(vec![put_json(Tree::Operators, name, revocation)]).await
    }
}

#[async_trait]
impl<E: Engine> Silences for KvStore<E> {
    async fn put_silence(&self, id: &str, silence: &SilenceRecord, audit: AuditEntry) -> Result<()> {
        let (_, audit_op) = self.audit_record(audit);
        self.commit(vec![audit_op, put_json(Tree::Silences, id, silence)]).await
    }

    async fn silences(&self) -> Result<Vec<(String, SilenceRecord)>> {
        self.all_json(Tree::Silences)
    }

    async fn put_alert(&self, key: &str, alert: Option<&AlertRecord>) -> Result<()> {
        // Under a lock, so the acknowledgement read is the one the write replaces.
        let _alerts = self.alerts.lock().await;
        let op = match alert {
            Some(a) if a.acked_by.is_empty() => match self.get_json::<AlertRecord>(Tree::Alerts, key.as_bytes()) {
                Ok(Some(stored)) if !stored.acked_by.is_empty() => {
                    put_json(Tree::Alerts, key, &AlertRecord { acked_by: stored.acked_by, ..a.clone() })
                }
                _ => put_json(Tree::Alerts, key, a),
            },
            Some(a) => put_json(Tree::Alerts, key, a),
            None => Op::Del(Tree::Alerts, key.as_bytes().to_vec()),
        };
        self.commit(vec![op]).await
    }

    async fn firing_alerts(&self) -> Result<Vec<(String, AlertRecord)>> {
        self.all_json(Tree::Alerts)
    }
}

#[async_trait]
impl<E: Engine> super::Leases for KvStore<E> {
    async fn hold_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let held = leases.get(name).is_some_and(|(h, until)| h != holder && *until >= now_ms);
        if !held {
            leases.insert(name.to_string(), (holder.to_string(), now_ms + ttl_ms));
        }
        Ok(!held)
    }
}

/// The ops that store `job` and keep the open index right.
fn job_ops(job: &QueuedJob) -> Vec<Op> {
    let key = job.id.to_be_bytes().to_vec();
    let index = if job.state.is_final() {
        Op::Del(Tree::QueueOpen, key.clone())
    } else {
        Op::Put(Tree::QueueOpen, key.clone(), Vec::new())
    };
    vec![put_json(Tree::Queue, key, job), index]
}

#[async_trait]
impl<E: Engine> Queue for KvStore<E> {
    async fn submit_job(&self, mut job: QueuedJob, mut audit: AuditEntry) -> Result<Submitted> {
        let _queue = self.queue.lock().await;
        if !job.idempotency_key.is_empty()
            && let Some(id) = self.get(Tree::QueueKeys, job.idempotency_key.as_bytes())?
        {
            let id = <[u8; 8]>::try_from(id.as_slice()).map(u64::from_be_bytes).unwrap_or_default();
            let Some(existing) = self.job(id).await? else {
                return Err(StoreError::Corrupt {
                    table: "queue_keys",
                    key: job.idempotency_key.clone(),
                    error: format!("names job {id}, which does not exist"),
                });
            };
            return super::queue_rules::reused_key(existing, &job);
        }
        job.id = self.queue_next.fetch_add(1, Ordering::Relaxed);
        job.state = super::JobState::Pending;
        audit.job_id = job.id.to_string();
        let (_, audit_op) = self.audit_record(audit);
        let mut ops = vec![audit_op];
        ops.extend(job_ops(&job));
        if !job.idempotency_key.is_empty() {
            ops.push(Op::Put(Tree::QueueKeys, job.idempotency_key.clone().into_bytes(), job.id.to_be_bytes().to_vec()));
        }
        self.commit(ops).await?;
        Ok(Submitted::New(job))
    }

    async fn claim_job(&self, owner: &str, now_ms: i64, lease_ms: i64) -> Result<Option<QueuedJob>> {
        let _queue = self.queue.lock().await;
        let mut open = Vec::new();
        for (key, _) in self.pairs(Tree::QueueOpen, ALL_KEYS, false, usize::MAX)? {
            open.extend(self.get_json::<QueuedJob>(Tree::Queue, &key)?);
        }
        let Some(job) = super::queue_rules::claim(open, owner, now_ms, lease_ms) else { return Ok(None) };
        self.commit(job_ops(&job)).await?;
        Ok(Some(job))
    }

    async fn update_job(&self, job: &QueuedJob, owner: &str, audit: Option<AuditEntry>) -> Result<()> {
        let _queue = self.queue.lock().await;
        let job = super::queue_rules::update(self.job(job.id).await?, job, owner)?;
        let mut ops = Vec::new();
        if let Some(audit) = audit {
            ops.push(self.audit_record(audit).1);
        }
        ops.extend(job_ops(&job));
        self.commit(ops).await
    }

    async fn cancel_job(&self, id: u64, audit: AuditEntry) -> Result<Option<QueuedJob>> {
        let _queue = self.queue.lock().await;
        let Some(mut job) = self.job(id).await? else { return Ok(None) };
        if !super::queue_rules::cancel(&mut job, outpost_common::now_ms()) {
            return Ok(Some(job));
        }
        let mut ops = vec![self.audit_record(audit).1];
        ops.extend(job_ops(&job));
        self.commit(ops).await?;
        Ok(Some(job))
    }

    async fn job(&self, id: u64) -> Result<Option<QueuedJob>> {
        self.get_json(Tree::Queue, &id.to_be_bytes())
    }

    async fn trim_jobs(&self, cutoff_ms: i64) -> Result<usize> {
        let _queue = self.queue.lock().await;
        let mut ops = Vec::new();
        for (k, v) in self.pairs(Tree::Queue, ALL_KEYS, false, usize::MAX)? {
            let job: QueuedJob = decode(Tree::Queue, &k, &v)?;
            if job.state.is_final() && job.finished_ms < cutoff_ms {
                ops.push(Op::Del(Tree::Queue, k));
                if !job.idempotency_key.is_empty() {
                    ops.push(Op::Del(Tree::QueueKeys, job.idempotency_key.into_bytes()));
                }
            }
        }
        let n = ops.iter().filter(|o| matches!(o, Op::Del(Tree::Queue, _))).count();
        if n > 0 {
            self.commit(ops).await?;
        }
        Ok(n)
    }

    async fn jobs(&self, limit: usize) -> Result<Vec<QueuedJob>> {
        let mut out = Vec::new();
        let limit = if limit == 0 { usize::MAX } else { limit };
        for (k, v) in self.pairs(Tree::Queue, ALL_KEYS, true, limit)? {
            out.push(decode(Tree::Queue, &k, &v)?);
        }
        Ok(out)
    }
}

fn usage_key(res: Resolution, start_ms: i64, customer: &str, server: &str) -> Vec<u8> {
    let mut k = vec![usage_prefix(res)];
    k.extend_from_slice(&(start_ms.max(0) as u64).to_be_bytes());
    k.extend_from_slice(customer.as_bytes());
    k.push(0);
    k.extend_from_slice(server.as_bytes());
    k
}

fn usage_prefix(res: Resolution) -> u8 {
    match res {
        Resolution::Hour => b'h',
        Resolution::Day => b'd',
    }
}

fn usage_time_key(res: Resolution, ms: i64) -> Vec<u8> {
    let mut k = vec![usage_prefix(res)];
    k.extend_from_slice(&(ms.max(0) as u64).to_be_bytes());
    k
}

fn cursor_key(server: &str) -> Vec<u8> {
    let mut k = b"c".to_vec();
    k.extend_from_slice(server.as_bytes());
    k
}

#[async_trait]
impl<E: Engine> Usage for KvStore<E> {
    async fn usage_cursor(&self, server: &str) -> Result<Option<UsageCursor>> {
        self.get_json(Tree::Usage, &cursor_key(server))
    }

    async fn usage_bucket(
        &self,
        res: Resolution,
        start_ms: i64,
        customer: &str,
        server: &str,
    ) -> Result<Option<UsageBucket>> {
        let key = usage_key(res, start_ms, customer, server);
        match self.get(Tree::Usage, &key)? {
            None => Ok(None),
            Some(v) => decode_bucket(&key, &v).map(Some),
        }
    }

    async fn record_usage(
        &self,
        server: &ServerRecord,
        cursor: &UsageCursor,
        buckets: &[(Resolution, i64, UsageBucket)],
    ) -> Result<()> {
        use prost::Message as _;
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = buckets
            .iter()
            .map(|(res, start, b)| (usage_key(*res, *start, &b.customer, &server.name), b.encode_to_vec()))
            .collect();
        pairs.push((cursor_key(&server.name), serde_json::to_vec(cursor).expect("store records serialise")));
        // The usage in one atomic batch, then the high-water mark: a crash between the two replays the
        // report, and the cursor's seq says it was counted already.
        self.append(server, vec![Op::Atomic(Tree::Usage, pairs)], None).await
    }

    async fn usage_between(
        &self,
        res: Resolution,
        from_ms: i64,
        to_ms: i64,
        customer: Option<&str>,
    ) -> Result<Vec<(i64, String, UsageBucket)>> {
        let mut out = Vec::new();
        let (from, to) = (usage_time_key(res, from_ms), usage_time_key(res, to_ms));
        for (k, v) in self.pairs(Tree::Usage, (Bound::Included(&from), Bound::Excluded(&to)), false, usize::MAX)? {
            let Some(rest) = k.get(9..) else { continue };
            let Some(zero) = rest.iter().position(|b| *b == 0) else { continue };
            if customer.is_some_and(|c| c.as_bytes() != &rest[..zero]) {
                continue;
            }
            let start = u64::from_be_bytes(k[1..9].try_into().expect("9 bytes checked")) as i64;
            let server = String::from_utf8_lossy(&rest[zero + 1..]).into_owned();
            out.push((start, server, decode_bucket(&k, &v)?));
        }
        Ok(out)
    }

    async fn trim_usage(&self, res: Resolution, cutoff_ms: i64) -> Result<usize> {
        let (from, to) = (usage_time_key(res, 0), usage_time_key(res, cutoff_ms));
        let mut n = 0;
        self.engine.scan(Tree::Usage, (Bound::Included(&from), Bound::Excluded(&to)), false, &mut |_, _| {
            n += 1;
            true
        })?;
        if n > 0 {
            self.commit(vec![Op::DelRange(Tree::Usage, from, to)]).await?;
        }
        Ok(n)
    }
}

fn decode_bucket(key: &[u8], v: &[u8]) -> Result<UsageBucket> {
    use prost::Message as _;
    UsageBucket::decode(v).map_err(|e| StoreError::Corrupt {
        table: Tree::Usage.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        error: e.to_string(),
    })
}

async fn writer<E: Engine>(
    engine: Arc<E>,
    (mut first, mut bulk): (mpsc::Receiver<Batch>, mpsc::Receiver<Batch>),
    fold_task: tokio::task::JoinHandle<()>,
    commit_gap: Arc<AtomicU64>,
) {
    let mut group = Vec::with_capacity(GROUP_MAX);
    let (mut first_open, mut bulk_open) = (true, true);
    let (mut last_commit, mut last_len) = (tokio::time::Instant::now(), 0);
    loop {
        // The non-bulk writes first; then whatever else is waiting, up to a group.
        let got = tokio::select! {
            biased;
            b = first.recv(), if first_open => {
                first_open = b.is_some();
                b
            }
            b = bulk.recv(), if bulk_open => {
                bulk_open = b.is_some();
                b
            }
            else => break,
        };
        group.extend(got);
        // At most one commit per commit gap: what arrives meanwhile joins this group. A sync costs the same
        // for one report as for a hundred, and under load they came a few at a time (10,000 reports/s made
        // ~1,000 syncs/s, an eighth of hubd's CPU). One writer at a time (the last group was one batch)
        // does not wait.
        if last_len > 1 {
            let gap = std::time::Duration::from_millis(commit_gap.load(Ordering::Relaxed));
            tokio::time::sleep_until(last_commit + gap).await;
        }
        last_commit = tokio::time::Instant::now();
        while group.len() < GROUP_MAX {
            match first.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        while group.len() < GROUP_MAX {
            match bulk.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        last_len = group.len();
        let (ops, done): (Vec<Vec<Op>>, Vec<_>) = group.drain(..).map(|b| (b.ops, b.done)).unzip();
        let e = engine.clone();
        let results = match tokio::task::spawn_blocking(move || e.apply(&ops)).await {
            Ok(results) => results,
            Err(e) => done.iter().map(|_| Err(StoreError::Write(format!("the store writer failed: {e}")))).collect(),
        };
        for (done, result) in done.into_iter().zip(results) {
            if let Err(error) = &result {
                tracing::error!(%error, "store write failed");
            }
            let _ = done.send(result);
        }
    }
    // The fold task ends once the store is dropped; it must not read the engine after it is closed.
    let _ = fold_task.await;
    let _ = tokio::task::spawn_blocking(move || engine.close()).await;
    tracing::debug!("store writer stopped");
}

#[cfg(test)]
mod tests {
    use super::Tree;

    #[test]
    fn trees_are_listed_in_declaration_order() {
        for (i, t) in Tree::ALL.iter().enumerate() {
            assert_eq!(t.index(), i, "{t:?}");
        }
    }
}
