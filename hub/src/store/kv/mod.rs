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

mod audit;
mod commands;
mod layout;
mod leases;
mod log;
mod operators;
mod queue;
mod reports;
mod revocations;
mod servers;
mod silences;
mod tokens;
mod usage;

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use layout::*;
pub use layout::{KeyRange, Op, Tree};

use super::{
    AlertRecord, AuditEntry, AuditLog, AuditQuery, BurnedToken, Commands, OperatorRevocation, OperatorStore,
    PendingRecord, PlanRecord, PlanUpdate, Queue, QueuedJob, Reports, Resolution, Result, Revocations, Revoked,
    ServerRecord, Servers, SilenceRecord, Silences, StoreError, Submitted, TokenRecord, TokenState, Tokens, Usage,
    UsageBucket, UsageCursor,
};

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
    fn scan(&self, t: Tree, range: KeyRange<'_>, rev: bool, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()>;
    /// Applies the batches of a group in order and makes them durable; one result per batch, each `Ok`
    /// only once the batch is durable. A batch that fails may leave a prefix of its ops (batches are
    /// ordered so any prefix is safe). Blocking.
    fn apply(&self, group: &[Vec<Op>]) -> Vec<Result<()>>;
    /// Called once, after the last group, when the store closes.
    fn close(&self) {}
    /// A consistent copy of every tree, as of one instant, in a new store file `out` (0600); its size.
    fn snapshot(&self, _out: &std::path::Path) -> Result<u64> {
        Err(StoreError::Write(
            "this embedded store (sled) cannot be copied while it runs: stop hubd once so that it moves the store to redb, or stop it and copy DATA/store".into(),
        ))
    }
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
        let task = tokio::spawn(writer(engine.clone(), rx, bulk_rx, fold_task, commit_gap.clone()));
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
    fn pairs(&self, t: Tree, range: KeyRange<'_>, rev: bool, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
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
            return Err(crate::store::taken_over(&what, hub, &held));
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

async fn writer<E: Engine>(
    engine: Arc<E>,
    mut first: mpsc::Receiver<Batch>,
    mut bulk: mpsc::Receiver<Batch>,
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
