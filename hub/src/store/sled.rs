//! The embedded backend: sled, with a group-commit writer.
//!
//! Every change goes through one writer task that applies whatever batches are waiting and flushes once
//! for all of them, so durability costs one flush per group, not per report; a method returns after the
//! flush. sled recovers a prefix of the operations applied to it, across trees, so each batch is ordered
//! such that any prefix is safe (a report's history point before the server record with the high-water
//! mark; an audit record before the removal of the pending command it ends).
//!
//! sled allows one process per directory, so what must be atomic across callers (burning a token, one
//! outstanding token per server) is serialised here with a lock; ids come from a counter loaded at open.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::{
    AlertRecord, AuditEntry, AuditLog, AuditQuery, BurnedToken, Commands, OperatorRevocation, OperatorStore,
    PendingRecord, PlanRecord, PlanUpdate, Queue, QueuedJob, Reports, Resolution, Result, Revocations, Revoked,
    ServerRecord, Servers, SilenceRecord, Silences, StoreError, Submitted, TRIM_EVERY, TokenRecord, TokenState, Tokens,
    Usage, UsageBucket, UsageCursor,
};

/// Trees of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tree {
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
}

impl Tree {
    const ALL: [Tree; 18] = [
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
        Tree::Usage,
        Tree::Alerts,
        Tree::Progress,
        Tree::TokenOf,
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
            Tree::Apps => "apps",
            Tree::Queue => "queue",
            Tree::QueueOpen => "queue_open",
            Tree::QueueKeys => "queue_keys",
            Tree::Silences => "silences",
            Tree::Usage => "usage",
            Tree::Alerts => "alerts",
            Tree::Progress => "progress",
            Tree::TokenOf => "token_of",
        }
    }
}

#[derive(Debug)]
enum Op {
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

type Trees = Arc<[sled::Tree; Tree::ALL.len()]>;

/// How many batches one flush may cover at most.
const GROUP_MAX: usize = 1024;
/// Audit records looked at per query at most (newest first), so one query cannot walk an unbounded log.
const SCAN_MAX: usize = 200_000;

pub struct SledStore {
    trees: Trees,
    writer: mpsc::Sender<Batch>,
    /// Reports, apps states and usage: the bulk of the writes. Everything else (enrollment, tokens, audit,
    /// commands, jobs) goes through `writer`, which the writer task serves first, so a saturated report
    /// load never makes an enrollment wait behind thousands of queued reports.
    bulk: mpsc::Sender<Batch>,
    /// The writer task; it ends (after a final flush) when the store is dropped.
    writer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    audit_next: AtomicU64,
    /// Serialises queue writes (submit, claim, update): claims are atomic, updates check the lease.
    queue: tokio::sync::Mutex<()>,
    queue_next: AtomicU64,
    /// Per server, a hash of its record as last written whole, without its progress fields: a report whose
    /// record differs only in those writes 40 bytes of progress, not the record.
    written: Mutex<std::collections::HashMap<String, u64>>,
    /// Leases, in memory: one process owns a sled directory, so they only order this hub's own tasks.
    leases: Mutex<std::collections::HashMap<String, (String, i64)>>,
}

fn read_err(e: sled::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

fn decode<T: DeserializeOwned>(tree: Tree, key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        table: tree.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        error: e.to_string(),
    })
}

impl SledStore {
    /// Opens (or creates) the store in `dir` and starts its writer; acknowledged writes survive a crash of
    /// the process.
    pub fn open(dir: &Path, cache_mib: u64) -> Result<SledStore> {
        SledStore::open_durable(dir, cache_mib, false)
    }

    /// As [`SledStore::open`]; with `power`, every group commit is followed by an fdatasync of sled's log
    /// before its writers are answered, so acknowledged writes survive a power loss. (sled's own flush
    /// issues `sync_file_range`, which does not write the disk's cache nor the file's metadata; a real
    /// fsync comes only from its flusher thread, every 500 ms.)
    pub fn open_durable(dir: &Path, cache_mib: u64, power: bool) -> Result<SledStore> {
        let open_err =
            |error: sled::Error| StoreError::Open { path: dir.display().to_string(), error: error.to_string() };
        let db = sled::Config::new().path(dir).cache_capacity(cache_mib * 1024 * 1024).open().map_err(open_err)?;
        let mut trees = Vec::new();
        for t in Tree::ALL {
            trees.push(db.open_tree(t.name()).map_err(open_err)?);
        }
        let trees: Trees = Arc::new(trees.try_into().unwrap_or_else(|_| unreachable!("every tree opened")));
        let last_audit = trees[Self::index(Tree::Audit)]
            .last()
            .map_err(open_err)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let last_job = trees[Self::index(Tree::Queue)]
            .last()
            .map_err(open_err)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        // The token index (stores written before it had none): rebuilt from the unused tokens.
        let (tokens, token_of) = (&trees[Self::index(Tree::Tokens)], &trees[Self::index(Tree::TokenOf)]);
        if token_of.is_empty() && !tokens.is_empty() {
            for item in tokens.iter() {
                let (hash, v) = item.map_err(open_err)?;
                if let Ok(t) = serde_json::from_slice::<TokenRecord>(&v) {
                    token_of.insert(t.server.as_bytes(), hash).map_err(open_err)?;
                }
            }
        }
        let (tx, rx) = mpsc::channel(1024);
        let (bulk_tx, bulk_rx) = mpsc::channel(4096);
        let sync = if power {
            Some(std::fs::File::open(dir.join("db")).map_err(|e| StoreError::Open {
                path: dir.display().to_string(),
                error: format!("opening sled's log to fdatasync it: {e}"),
            })?)
        } else {
            None
        };
        let task = tokio::spawn(writer(db, trees.clone(), (rx, bulk_rx), sync));
        Ok(SledStore {
            trees,
            writer: tx,
            bulk: bulk_tx,
            writer_task: Mutex::new(Some(task)),
            audit_next: AtomicU64::new(last_audit + 1),
            queue: tokio::sync::Mutex::new(()),
            queue_next: AtomicU64::new(last_job + 1),
            written: Mutex::default(),
            leases: Mutex::default(),
        })
    }

    fn index(t: Tree) -> usize {
        Tree::ALL.iter().position(|x| *x == t).expect("every tree is opened")
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[Self::index(t)]
    }

    /// The writer task, once: after the store is dropped it flushes and ends (shutdown waits for it).
    pub fn writer_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.writer_task.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Applies `ops` in order and returns once they are on disk.
    async fn commit(&self, ops: Vec<Op>) -> Result<()> {
        self.send(&self.writer, ops).await
    }

    /// As [`SledStore::commit`], for the bulk of the writes (reports), served after the others.
    async fn commit_bulk(&self, ops: Vec<Op>) -> Result<()> {
        self.send(&self.bulk, ops).await
    }

    async fn send(&self, to: &mpsc::Sender<Batch>, ops: Vec<Op>) -> Result<()> {
        let (done, wait) = oneshot::channel();
        to.send(Batch { ops, done }).await.map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)?
    }

    fn get_json<T: DeserializeOwned>(&self, t: Tree, key: &[u8]) -> Result<Option<T>> {
        match self.tree(t).get(key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => decode(t, key, &v).map(Some),
        }
    }

    fn all_json<T: DeserializeOwned>(&self, t: Tree) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        for item in self.tree(t).iter() {
            let (k, v) = item.map_err(read_err)?;
            out.push((String::from_utf8_lossy(&k).into_owned(), decode(t, &k, &v)?));
        }
        Ok(out)
    }

    /// Every record of `t`, each decoded on its own (an unreadable one does not hide the others).
    fn each_json<T: DeserializeOwned>(&self, t: Tree) -> Result<Vec<(String, Result<T, String>)>> {
        let mut out = Vec::new();
        for item in self.tree(t).iter() {
            let (k, v) = item.map_err(read_err)?;
            out.push((String::from_utf8_lossy(&k).into_owned(), serde_json::from_slice(&v).map_err(|e| e.to_string())));
        }
        Ok(out)
    }

    /// Whether `server` has an unused token now.
    fn has_token(&self, server: &str) -> Result<bool> {
        Ok(self.tree(Tree::TokenOf).get(server.as_bytes()).map_err(read_err)?.is_some())
    }

    fn audit_record(&self, mut entry: AuditEntry) -> (u64, Op) {
        entry.id = self.audit_next.fetch_add(1, Ordering::Relaxed);
        entry.at_ms = outpost_common::now_ms();
        (entry.id, put_json(Tree::Audit, entry.id.to_be_bytes().to_vec(), &entry))
    }
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

impl SledStore {
    /// The writes that store `r`: the whole record when more than its progress changed since it was last
    /// written whole (or `whole`), then its progress (last: it carries the high-water mark).
    fn server_ops(&self, r: &ServerRecord, whole: bool) -> Vec<Op> {
        let h = r.static_hash();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let mut ops = Vec::with_capacity(2);
        if whole || written.get(&r.name) != Some(&h) {
            ops.push(put_json(Tree::Servers, r.name.clone(), r));
            written.insert(r.name.clone(), h);
        }
        ops.push(Op::Put(Tree::Progress, r.name.as_bytes().to_vec(), progress_bytes(r)));
        ops
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
impl Servers for SledStore {
    async fn servers(&self) -> Result<Vec<ServerRecord>> {
        let mut out = Vec::new();
        for (name, mut r) in self.all_json::<ServerRecord>(Tree::Servers)? {
            if let Some(p) = self.tree(Tree::Progress).get(name.as_bytes()).map_err(read_err)? {
                apply_progress(&mut r, &p);
            }
            out.push(r);
        }
        Ok(out)
    }

    async fn server(&self, name: &str) -> Result<Option<ServerRecord>> {
        let Some(mut r) = self.get_json::<ServerRecord>(Tree::Servers, name.as_bytes())? else { return Ok(None) };
        if let Some(p) = self.tree(Tree::Progress).get(name.as_bytes()).map_err(read_err)? {
            apply_progress(&mut r, &p);
        }
        Ok(Some(r))
    }

    async fn server_of_agent(&self, agent_id: &str) -> Result<Option<ServerRecord>> {
        // A scan: one hub owns a sled store, and its fleet view already maps every agent; this is for
        // completeness, not a path that runs.
        Ok(self.servers().await?.into_iter().find(|r| !agent_id.is_empty() && r.agent_id == agent_id))
    }

    async fn put_server(&self, record: &ServerRecord) -> Result<()> {
        self.commit_server(&record.name, self.server_ops(record, true), false).await
    }

    async fn remove_server(&self, name: &str) -> Result<()> {
        let mut ops = vec![Op::DropTokenOf(name.to_string())];
        let (from, to) = (history_key(name, 0), history_key(name, u64::MAX));
        ops.push(Op::DelRange(Tree::History, from, to));
        ops.push(Op::Del(Tree::Apps, name.as_bytes().to_vec()));
        // Its usage buckets stay (they carry the customer); the counters' cursor goes with the server.
        ops.push(Op::Del(Tree::Usage, cursor_key(name)));
        ops.push(Op::Del(Tree::Progress, name.as_bytes().to_vec()));
        ops.push(Op::Del(Tree::Servers, name.as_bytes().to_vec()));
        self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.commit(ops).await
    }
}

#[async_trait]
impl Tokens for SledStore {
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
        self.commit_server(&server.name, ops, false).await
    }

    async fn drop_tokens(&self, server: &str) -> Result<usize> {
        let n = usize::from(self.has_token(server)?);
        self.commit(vec![Op::DropTokenOf(server.to_string())]).await?;
        Ok(n)
    }
}

#[async_trait]
impl Revocations for SledStore {
    async fn revoked_serials(&self) -> Result<Vec<String>> {
        Ok(self.all_json::<Revoked>(Tree::Revoked)?.into_iter().map(|(k, _)| k).collect())
    }

    async fn revoke_identity(&self, server: &ServerRecord, serials: &[String], by: &Revoked) -> Result<()> {
        let mut ops: Vec<Op> = serials.iter().map(|s| put_json(Tree::Revoked, s.clone(), by)).collect();
        ops.extend(self.server_ops(server, true));
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
impl Reports for SledStore {
    async fn record_report(&self, server: &ServerRecord, seq: u64, point: Vec<u8>, keep: u32) -> Result<()> {
        let name = &server.name;
        let mut ops = vec![Op::Put(Tree::History, history_key(name, seq), point)];
        let keep = u64::from(keep);
        if seq > keep && seq.is_multiple_of(TRIM_EVERY) {
            ops.push(Op::DelRange(Tree::History, history_key(name, 0), history_key(name, seq + 1 - keep)));
        }
        // Last: the high-water mark, so any recovered prefix of this batch is safe.
        ops.extend(self.server_ops(server, false));
        self.commit_server(name, ops, true).await
    }

    async fn record_apps(&self, server: &ServerRecord, _seq: u64, apps: Vec<u8>) -> Result<()> {
        // The state first, the high-water mark last: any recovered prefix is safe.
        let mut ops = vec![Op::Put(Tree::Apps, server.name.as_bytes().to_vec(), apps)];
        ops.extend(self.server_ops(server, false));
        self.commit_server(&server.name, ops, true).await
    }

    async fn apps(&self, server: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(Tree::Apps).get(server).map_err(read_err)?.map(|v| v.to_vec()))
    }

    async fn report(&self, server: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(Tree::History).get(history_key(server, seq)).map_err(read_err)?.map(|v| v.to_vec()))
    }

    async fn history(&self, server: &str, n: usize) -> Result<Vec<Vec<u8>>> {
        let mut out = std::collections::VecDeque::with_capacity(n.min(4096));
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut prefix = server.as_bytes().to_vec();
        prefix.push(0);
        for item in self.tree(Tree::History).scan_prefix(prefix).rev() {
            let (_, v) = item.map_err(read_err)?;
            out.push_front(v.to_vec());
            if out.len() == n {
                break;
            }
        }
        Ok(out.into())
    }
}

#[async_trait]
impl AuditLog for SledStore {
    async fn append_audit(&self, entry: AuditEntry) -> Result<u64> {
        let (id, op) = self.audit_record(entry);
        self.commit(vec![op]).await?;
        Ok(id)
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        for item in self.tree(Tree::Audit).iter().rev().take(SCAN_MAX) {
            let (k, v) = item.map_err(read_err)?;
            let e: AuditEntry = decode(Tree::Audit, &k, &v)?;
            if q.since_ms > 0 && e.at_ms < q.since_ms {
                break; // ids grow with time: everything further is older
            }
            if q.matches(&e) {
                out.push(e);
                if out.len() >= q.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn trim_audit(&self, cutoff_ms: i64) -> Result<usize> {
        let tree = self.tree(Tree::Audit);
        let Some((newest, _)) = tree.last().map_err(read_err)? else { return Ok(0) };
        let mut n = 0;
        loop {
            let mut ops = Vec::new();
            for item in tree.iter().take(1000) {
                let (k, v) = item.map_err(read_err)?;
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
            self.commit(ops).await?;
        }
    }
}

#[async_trait]
impl Commands for SledStore {
    async fn dispatch_batch(&self, job_id: &str, batch: &[(String, PendingRecord)], plan: PlanUpdate) -> Result<()> {
        let mut ops: Vec<Op> = batch.iter().map(|(id, r)| put_json(Tree::Pending, id.as_bytes(), r)).collect();
        ops.push(match &plan {
            PlanUpdate::Remaining(p) => put_json(Tree::Plans, job_id, p),
            PlanUpdate::Done => Op::Del(Tree::Plans, job_id.as_bytes().to_vec()),
        });
        self.commit(ops).await
    }

    async fn finish_command(&self, command_id: &str, result: AuditEntry) -> Result<u64> {
        let (id, op) = self.audit_record(result);
        self.commit(vec![op, Op::Del(Tree::Pending, command_id.as_bytes().to_vec())]).await?;
        Ok(id)
    }

    async fn finish_job(&self, job_id: &str, skipped: AuditEntry) -> Result<u64> {
        let (id, op) = self.audit_record(skipped);
        self.commit(vec![op, Op::Del(Tree::Plans, job_id.as_bytes().to_vec())]).await?;
        Ok(id)
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
impl OperatorStore for SledStore {
    async fn operator_revocations(&self) -> Result<Vec<(String, OperatorRevocation)>> {
        self.all_json(Tree::Operators)
    }

    async fn revoke_operator(&self, name: &str, revocation: &OperatorRevocation) -> Result<()> {
        self.commit(vec![put_json(Tree::Operators, name, revocation)]).await
    }
}

#[async_trait]
impl Silences for SledStore {
    async fn put_silence(&self, id: &str, silence: &SilenceRecord, audit: AuditEntry) -> Result<()> {
        let (_, audit_op) = self.audit_record(audit);
        self.commit(vec![audit_op, put_json(Tree::Silences, id, silence)]).await
    }

    async fn silences(&self) -> Result<Vec<(String, SilenceRecord)>> {
        self.all_json(Tree::Silences)
    }

    async fn put_alert(&self, key: &str, alert: Option<&AlertRecord>) -> Result<()> {
        self.commit(vec![match alert {
            Some(a) => put_json(Tree::Alerts, key, a),
            None => Op::Del(Tree::Alerts, key.as_bytes().to_vec()),
        }])
        .await
    }

    async fn firing_alerts(&self) -> Result<Vec<(String, AlertRecord)>> {
        self.all_json(Tree::Alerts)
    }
}

#[async_trait]
impl super::Leases for SledStore {
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
impl Queue for SledStore {
    async fn submit_job(&self, mut job: QueuedJob, mut audit: AuditEntry) -> Result<Submitted> {
        let _queue = self.queue.lock().await;
        if !job.idempotency_key.is_empty()
            && let Some(id) = self.tree(Tree::QueueKeys).get(job.idempotency_key.as_bytes()).map_err(read_err)?
        {
            let id = <[u8; 8]>::try_from(id.as_ref()).map(u64::from_be_bytes).unwrap_or_default();
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
        for key in self.tree(Tree::QueueOpen).iter().keys() {
            let key = key.map_err(read_err)?;
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
        for item in self.tree(Tree::Queue).iter() {
            let (k, v) = item.map_err(read_err)?;
            let job: QueuedJob = decode(Tree::Queue, &k, &v)?;
            if job.state.is_final() && job.finished_ms < cutoff_ms {
                ops.push(Op::Del(Tree::Queue, k.to_vec()));
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
        for item in self.tree(Tree::Queue).iter().rev() {
            let (k, v) = item.map_err(read_err)?;
            out.push(decode(Tree::Queue, &k, &v)?);
            if out.len() == limit {
                break;
            }
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
impl Usage for SledStore {
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
        match self.tree(Tree::Usage).get(&key).map_err(read_err)? {
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
        let mut ops = vec![Op::Atomic(Tree::Usage, pairs)];
        ops.extend(self.server_ops(server, false));
        self.commit_server(&server.name, ops, true).await
    }

    async fn usage_between(
        &self,
        res: Resolution,
        from_ms: i64,
        to_ms: i64,
        customer: Option<&str>,
    ) -> Result<Vec<(i64, String, UsageBucket)>> {
        let mut out = Vec::new();
        for item in self.tree(Tree::Usage).range(usage_time_key(res, from_ms)..usage_time_key(res, to_ms)) {
            let (k, v) = item.map_err(read_err)?;
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
        let n = self.tree(Tree::Usage).range(from.clone()..to.clone()).count();
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

async fn writer(
    db: sled::Db,
    trees: Trees,
    (mut first, mut bulk): (mpsc::Receiver<Batch>, mpsc::Receiver<Batch>),
    sync: Option<std::fs::File>,
) {
    let tree = |t: Tree| &trees[SledStore::index(t)];
    let mut group = Vec::with_capacity(GROUP_MAX);
    let (mut first_open, mut bulk_open) = (true, true);
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
        let mut results = Vec::with_capacity(group.len());
        for batch in &group {
            let mut result = Ok(());
            for op in &batch.ops {
                let (tokens, token_of) = (tree(Tree::Tokens), tree(Tree::TokenOf));
                let r = match op {
                    Op::ReplaceToken { server, hash, token } => (|| {
                        if let Some(old) = token_of.insert(server.as_bytes(), hash.as_bytes())? {
                            tokens.remove(old)?;
                        }
                        tokens.insert(hash.as_bytes(), token.as_slice()).map(drop)
                    })(),
                    Op::DropTokenOf(server) => (|| {
                        if let Some(old) = token_of.remove(server.as_bytes())? {
                            tokens.remove(old)?;
                        }
                        Ok(())
                    })(),
                    Op::TakeToken { server, hash } => match tokens.remove(hash.as_bytes()) {
                        Ok(Some(_)) => {
                            let _ = token_of.compare_and_swap(server.as_bytes(), Some(hash.as_bytes()), None::<&[u8]>);
                            Ok(())
                        }
                        Ok(None) => {
                            result = Err(StoreError::Conflict(
                                "this join token was used or replaced a moment ago; it is single-use: create a new one"
                                    .into(),
                            ));
                            break;
                        }
                        Err(e) => Err(e),
                    },
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
                    Op::Atomic(t, pairs) => {
                        let mut b = sled::Batch::default();
                        for (k, v) in pairs {
                            b.insert(k.as_slice(), v.as_slice());
                        }
                        tree(*t).apply_batch(b)
                    }
                };
                if let Err(e) = r {
                    result = Err(StoreError::Write(e.to_string()));
                    break;
                }
            }
            results.push(result);
        }
        let mut flushed = db.flush_async().await.map(drop).map_err(|e| StoreError::Write(format!("flush: {e}")));
        if let (Ok(()), Some(file)) = (&flushed, &sync) {
            // fdatasync through any descriptor of the file writes all of its dirty data.
            flushed = match file.try_clone() {
                Ok(f) => tokio::task::spawn_blocking(move || f.sync_data())
                    .await
                    .map_err(|e| StoreError::Write(format!("fdatasync: {e}")))
                    .and_then(|r| r.map_err(|e| StoreError::Write(format!("fdatasync: {e}")))),
                Err(e) => Err(StoreError::Write(format!("fdatasync: {e}"))),
            };
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use crate::store::{HubStore, Kind};

    /// Opens and closes sled stores in one directory for the conformance suite.
    struct Sled {
        dir: tempfile::TempDir,
        writer: Option<tokio::task::JoinHandle<()>>,
        /// `durability = "power"`: an fdatasync after every group commit.
        power: bool,
    }

    #[async_trait]
    impl conformance::Backend for Sled {
        async fn open(&mut self) -> Arc<dyn HubStore> {
            // sled's background flusher lets go of the file lock shortly after the last handle is dropped.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let store = loop {
                match SledStore::open_durable(self.dir.path(), 8, self.power) {
                    Ok(s) => break s,
                    Err(_) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            self.writer = store.writer_task();
            Arc::new(store)
        }

        async fn close(&mut self, store: Arc<dyn HubStore>) {
            assert_eq!(Arc::strong_count(&store), 1, "the suite holds the only handle when it closes the store");
            drop(store);
            if let Some(w) = self.writer.take() {
                w.await.unwrap(); // the writer flushed and stopped
            }
        }
    }

    #[tokio::test]
    async fn sled_passes_the_conformance_suite() {
        conformance::run(&mut Sled { dir: tempfile::tempdir().unwrap(), writer: None, power: false }).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sled_syncing_every_commit_passes_the_conformance_suite() {
        conformance::run(&mut Sled { dir: tempfile::tempdir().unwrap(), writer: None, power: true }).await;
    }

    /// A store from before the token index gets one at open: its unused token is found and replaced.
    #[tokio::test]
    async fn a_store_without_the_token_index_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            let t =
                TokenRecord { server: "old-1".into(), created_ms: 1, expires_ms: i64::MAX, created_by: "ann".into() };
            store.tree(Tree::Tokens).insert("h-old", serde_json::to_vec(&t).unwrap()).unwrap();
            let writer = store.writer_task().unwrap();
            drop(store);
            writer.await.unwrap();
        }
        let store = loop {
            match SledStore::open(dir.path(), 8) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        let t = TokenRecord { server: "old-1".into(), created_ms: 2, expires_ms: i64::MAX, created_by: "ann".into() };
        let r = ServerRecord { name: "old-1".into(), ..Default::default() };
        assert_eq!(store.issue_token("h-new", &t, &r).await.unwrap(), 1);
        assert_eq!(store.token("h-old").await.unwrap(), TokenState::Unknown, "the older token went");
        assert!(matches!(store.token("h-new").await.unwrap(), TokenState::Live(_)));
    }

    /// A report that changes only a record's progress writes 40 bytes of it, not the record; anything else
    /// in the record changing writes it whole again; a reopen reads the newest of both.
    #[tokio::test]
    async fn reports_write_progress_not_the_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        let mut r = ServerRecord { name: "p1".into(), customer: "acme".into(), ..Default::default() };
        store.put_server(&r).await.unwrap();
        for seq in 1..=5 {
            (r.last_seq, r.reports_received, r.last_seen_ms) = (seq, seq, 1000 + seq as i64);
            store.record_report(&r, seq, vec![seq as u8], 10).await.unwrap();
        }
        let whole: ServerRecord = store.get_json(Tree::Servers, b"p1").unwrap().unwrap();
        assert_eq!(whole.last_seq, 0, "the record itself was not rewritten by the reports");
        let read = store.servers().await.unwrap().pop().unwrap();
        assert_eq!((read.last_seq, read.reports_received, read.last_seen_ms), (5, 5, 1005));
        // The agent's version changes: the record is written whole with the report.
        r.agent_version = "2.0.0".into();
        r.last_seq = 6;
        store.record_report(&r, 6, vec![6], 10).await.unwrap();
        let whole: ServerRecord = store.get_json(Tree::Servers, b"p1").unwrap().unwrap();
        assert_eq!((whole.agent_version.as_str(), whole.last_seq), ("2.0.0", 6));
        assert_eq!(store.servers().await.unwrap(), vec![r]);
    }

    /// A store written by the hub at 6e40fb5 (audit outcomes stored as wire numbers) opens, and its records
    /// read back with the same meaning; new records store the outcome as a word.
    #[tokio::test]
    async fn a_store_written_before_outcomes_were_words_reads_back() {
        use crate::store::Outcome;
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-6e40fb5");
        let dir = tempfile::tempdir().unwrap();
        for f in ["conf", "db"] {
            std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("blobs")).unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        let all = store.query_audit(&AuditQuery { limit: 100, ..Default::default() }).await.unwrap();
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
        let servers = store.servers().await.unwrap();
        let record = &servers[0];
        assert_eq!((record.name.as_str(), record.customer.as_str(), record.plan.as_str()), ("old-1", "acme", "pro"));
        assert!(!record.agent_id.is_empty() && record.prev_serial.is_empty() && record.revoked_ms == 0);
        // A new record stores the word.
        let id = store.append_audit(AuditEntry { outcome: Outcome::TimedOut, ..Default::default() }).await.unwrap();
        let raw = store.tree(Tree::Audit).get(id.to_be_bytes()).unwrap().unwrap();
        assert!(String::from_utf8_lossy(&raw).contains("\"outcome\":\"timed_out\""), "{raw:?}");
        assert_eq!(id, 6, "ids continue after the old ones");
    }
}
