//! sled as the embedded store's engine: the hub's store before redb, kept for stores written then (a
//! hub migrates them to redb at start, see [`super::redb`]) and for `[store] kind = "sled"`.
//!
//! sled recovers a prefix of the operations applied to it, across trees; the store orders every batch so
//! that any prefix is safe. Its `flush` syncs with `sync_file_range`, which survives a crash of the
//! process, not a power loss; with `power`, every group is also followed by an fdatasync of sled's log.

use std::path::Path;

use super::kv::{Engine, KeyRange, KvStore, Op, Tree, token_taken, walk};
use super::{Result, StoreError};

/// The store on sled.
pub type SledStore = KvStore<SledEngine>;

pub struct SledEngine {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// `durability = "power"`: sled's log, to fdatasync after every group.
    sync: Option<std::fs::File>,
}

fn err(e: sled::Error) -> StoreError {
    StoreError::Write(e.to_string())
}

impl SledEngine {
    /// Opens (or creates) sled's directory `dir`.
    pub fn open(dir: &Path, cache_mib: u64, power: bool) -> Result<SledEngine> {
        let open_err = |error: String| StoreError::Open { path: dir.display().to_string(), error };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mib * 1024 * 1024)
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<_, _>>()
            .map_err(|e| open_err(e.to_string()))?;
        let sync = match power {
            true => Some(
                std::fs::File::open(dir.join("db"))
                    .map_err(|e| open_err(format!("opening sled's log to fdatasync it: {e}")))?,
            ),
            false => None,
        };
        Ok(SledEngine { db, trees, sync })
    }

    pub(crate) fn tree(&self, t: Tree) -> &sled::Tree {
        &self.trees[t.index()]
    }

    /// Applies one batch, stopping at its first failure.
    fn apply_batch(&self, ops: &[Op]) -> Result<()> {
        let (tokens, token_of) = (self.tree(Tree::Tokens), self.tree(Tree::TokenOf));
        for op in ops {
            match op {
                Op::ReplaceToken { server, hash, token } => {
                    if let Some(old) = token_of.insert(server.as_bytes(), hash.as_bytes()).map_err(err)? {
                        tokens.remove(old).map_err(err)?;
                    }
                    tokens.insert(hash.as_bytes(), token.as_slice()).map_err(err)?;
                }
                Op::DropTokenOf(server) => {
                    if let Some(old) = token_of.remove(server.as_bytes()).map_err(err)? {
                        tokens.remove(old).map_err(err)?;
                    }
                }
                Op::TakeToken { server, hash } => {
                    if tokens.remove(hash.as_bytes()).map_err(err)?.is_none() {
                        return Err(token_taken());
                    }
                    let _ = token_of.compare_and_swap(server.as_bytes(), Some(hash.as_bytes()), None::<&[u8]>);
                }
                Op::Put(t, k, v) => drop(self.tree(*t).insert(k.as_slice(), v.as_slice()).map_err(err)?),
                Op::Del(t, k) => drop(self.tree(*t).remove(k.as_slice()).map_err(err)?),
                Op::DelRange(t, from, to) => {
                    for k in self.tree(*t).range(from.as_slice()..to.as_slice()).keys() {
                        self.tree(*t).remove(k.map_err(err)?).map_err(err)?;
                    }
                }
                Op::Atomic(t, pairs) => {
                    let mut b = sled::Batch::default();
                    for (k, v) in pairs {
                        b.insert(k.as_slice(), v.as_slice());
                    }
                    self.tree(*t).apply_batch(b).map_err(err)?;
                }
            }
        }
        Ok(())
    }

    /// Makes everything applied so far durable: sled's flush, and with `power` an fdatasync of its log.
    fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| StoreError::Write(format!("flush: {e}")))?;
        if let Some(file) = &self.sync {
            // fdatasync through any descriptor of the file writes all of its dirty data.
            file.sync_data().map_err(|e| StoreError::Write(format!("fdatasync: {e}")))?;
        }
        Ok(())
    }
}

impl Engine for SledEngine {
    fn get(&self, t: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(t).get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, t: Tree, range: KeyRange<'_>, rev: bool, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        walk(self.tree(t).range::<&[u8], _>(range), rev, |item| {
            let (k, v) = item.map_err(err)?;
            Ok(visit(&k, &v))
        })
    }

    fn apply(&self, group: &[Vec<Op>]) -> Vec<Result<()>> {
        let results: Vec<Result<()>> = group.iter().map(|ops| self.apply_batch(ops)).collect();
        match self.flush() {
            Ok(()) => results,
            Err(e) => results.iter().map(|_| Err(StoreError::Write(e.to_string()))).collect(),
        }
    }

    fn close(&self) {
        let _ = self.db.flush();
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir` and starts its writer; acknowledged writes survive a crash of
    /// the process.
    pub fn open(dir: &Path, cache_mib: u64) -> Result<SledStore> {
        SledStore::open_durable(dir, cache_mib, false)
    }

    /// As [`SledStore::open`]; with `power`, acknowledged writes survive a power loss.
    pub fn open_durable(dir: &Path, cache_mib: u64, power: bool) -> Result<SledStore> {
        KvStore::new(SledEngine::open(dir, cache_mib, power)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;
    use crate::store::{
        AuditEntry, AuditLog, AuditQuery, Reports, ServerRecord, Servers, TokenRecord, TokenState, Tokens,
    };
    use crate::store::{HubStore, Kind};
    use async_trait::async_trait;
    use std::sync::Arc;

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
            // The syncing variant also folds the report log every few reports.
            let store = if self.power { store.fold_at(3) } else { store };
            self.writer = store.writer_task();
            Arc::new(store)
        }

        async fn close(&mut self, store: Arc<dyn HubStore>) {
            conformance::close_embedded(store, self.writer.take()).await;
        }
    }

    #[tokio::test]
    async fn sled_passes_the_conformance_suite() {
        conformance::run(&mut Sled { dir: tempfile::tempdir().unwrap(), writer: None, power: false }).await;
    }

    /// Syncing every commit, and folding the report log every few reports.
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
            store.engine().tree(Tree::Tokens).insert("h-old", serde_json::to_vec(&t).unwrap()).unwrap();
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
        let raw = store.engine().tree(Tree::Audit).get(id.to_be_bytes()).unwrap().unwrap();
        assert!(String::from_utf8_lossy(&raw).contains("\"outcome\":\"timed_out\""), "{raw:?}");
        assert_eq!(id, 6, "ids continue after the old ones");
    }
}
