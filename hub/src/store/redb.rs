//! redb as the embedded store's engine: the hub's default store.
//!
//! redb is a copy-on-write B-tree: a commit writes new pages and frees the ones it replaced, which later
//! commits reuse, so the file stays bounded by the live data (sled's log did not: its store grew without
//! bound at a fixed live size, see BENCHMARKS.md). A group is one write transaction, committed with
//! `Durability::Immediate` (an fsync): acknowledged writes survive a power loss, and a group is applied
//! whole or not at all.
//!
//! A store written by an older hubd (sled, in `data_dir/store`) is copied into a new redb file at start,
//! once ([`open_migrating`]); the sled directory is kept, renamed, for the operator to delete.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::kv::{Engine, KeyRange, KvStore, Op, Tree, token_taken, walk};
use super::{Result, StoreError};

/// The store on redb.
pub type RedbStore = KvStore<RedbEngine>;

pub struct RedbEngine {
    db: Database,
}

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;
type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

fn def(t: Tree) -> Def {
    TableDefinition::new(t.name())
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Write(e.to_string())
}

impl RedbEngine {
    /// Opens (or creates) the redb file `path`, with every table. The file is the owner's only (0600).
    pub fn open(path: &Path, cache_mib: u64) -> Result<RedbEngine> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let open_err = |e: String| StoreError::Open { path: path.display().to_string(), error: e };
        // Created here with its mode (redb initialises an empty file); an older file gets the mode too.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| open_err(e.to_string()))?;
        let db = Database::builder()
            .set_cache_size((cache_mib * 1024 * 1024) as usize)
            .create(path)
            .map_err(|e| open_err(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        for t in Tree::ALL {
            txn.open_table(def(t)).map_err(|e| open_err(e.to_string()))?;
        }
        txn.commit().map_err(|e| open_err(e.to_string()))?;
        Ok(RedbEngine { db })
    }

    /// Applies a group in one transaction; `Err` when the transaction failed (nothing of the group is
    /// written), else one result per batch (a batch refused with a conflict wrote nothing).
    fn apply_group(&self, group: &[Vec<Op>]) -> Result<Vec<Result<()>>> {
        let txn = self.db.begin_write().map_err(err)?;
        let mut results = Vec::with_capacity(group.len());
        {
            // Only the tables the group writes: a group of reports touches one of the nineteen, and opening
            // each costs a lookup in the table tree.
            let mut used = vec![false; Tree::ALL.len()];
            for op in group.iter().flatten() {
                for t in op_trees(op) {
                    used[t.index()] = true;
                }
            }
            let mut tables: Vec<Option<Table>> = Tree::ALL
                .iter()
                .map(|t| used[t.index()].then(|| txn.open_table(def(*t))).transpose())
                .collect::<Result<_, _>>()
                .map_err(err)?;
            for ops in group {
                results.push(apply_batch(&mut tables, ops)?);
            }
        }
        txn.commit().map_err(err)?;
        Ok(results)
    }
}

/// The trees `op` writes.
fn op_trees(op: &Op) -> &'static [Tree] {
    const TOKENS: &[Tree] = &[Tree::Tokens, Tree::TokenOf];
    const ALL: &[Tree] = &Tree::ALL;
    match op {
        Op::Put(t, ..) | Op::Del(t, _) | Op::DelRange(t, ..) | Op::Atomic(t, _) => {
            std::slice::from_ref(&ALL[t.index()])
        }
        Op::ReplaceToken { .. } | Op::DropTokenOf(_) | Op::TakeToken { .. } => TOKENS,
    }
}

/// The open table of `t` (opened for the group when one of its ops writes `t`).
fn table<'t, 'a>(tables: &'t mut [Option<Table<'a>>], t: Tree) -> Result<&'t mut Table<'a>> {
    tables[t.index()].as_mut().ok_or_else(|| StoreError::Write(format!("table {t:?} was not opened for this write")))
}

/// The two token tables, open.
fn token_tables<'t, 'a>(tables: &'t mut [Option<Table<'a>>]) -> Result<[&'t mut Table<'a>; 2]> {
    match tables.get_disjoint_mut([Tree::Tokens.index(), Tree::TokenOf.index()]) {
        Ok([Some(tokens), Some(token_of)]) => Ok([tokens, token_of]),
        _ => Err(StoreError::Write("the token tables were not opened for this write".into())),
    }
}

/// Applies one batch; `Ok(Err(conflict))` when its token was taken (then it is its first op: nothing of the
/// batch was written).
fn apply_batch(tables: &mut [Option<Table>], ops: &[Op]) -> Result<Result<()>> {
    let copy = |g: Option<redb::AccessGuard<&'static [u8]>>| g.map(|g| g.value().to_vec());
    for op in ops {
        match op {
            Op::ReplaceToken { server, hash, token } => {
                let [tokens, token_of] = token_tables(tables)?;
                if let Some(old) = copy(token_of.insert(server.as_bytes(), hash.as_bytes()).map_err(err)?) {
                    tokens.remove(old.as_slice()).map_err(err)?;
                }
                tokens.insert(hash.as_bytes(), token.as_slice()).map_err(err)?;
            }
            Op::DropTokenOf(server) => {
                let [tokens, token_of] = token_tables(tables)?;
                if let Some(old) = copy(token_of.remove(server.as_bytes()).map_err(err)?) {
                    tokens.remove(old.as_slice()).map_err(err)?;
                }
            }
            Op::TakeToken { server, hash } => {
                let [tokens, token_of] = token_tables(tables)?;
                if tokens.remove(hash.as_bytes()).map_err(err)?.is_none() {
                    return Ok(Err(token_taken()));
                }
                if copy(token_of.get(server.as_bytes()).map_err(err)?).as_deref() == Some(hash.as_bytes()) {
                    token_of.remove(server.as_bytes()).map_err(err)?;
                }
            }
            Op::Put(t, k, v) => drop(table(tables, *t)?.insert(k.as_slice(), v.as_slice()).map_err(err)?),
            Op::Del(t, k) => drop(table(tables, *t)?.remove(k.as_slice()).map_err(err)?),
            Op::DelRange(t, from, to) => {
                table(tables, *t)?.retain_in::<&[u8], _>(from.as_slice()..to.as_slice(), |_, _| false).map_err(err)?
            }
            Op::Atomic(t, pairs) => {
                let table = table(tables, *t)?;
                for (k, v) in pairs {
                    table.insert(k.as_slice(), v.as_slice()).map_err(err)?;
                }
            }
        }
    }
    Ok(Ok(()))
}

impl Engine for RedbEngine {
    fn snapshot(&self, out: &Path) -> Result<u64> {
        // One read transaction: every tree as of the same commit, whatever is written meanwhile.
        let read = self.db.begin_read().map_err(err)?;
        let copy = RedbEngine::open(out, 16)?;
        let txn = copy.db.begin_write().map_err(err)?;
        for t in Tree::ALL {
            let from = read.open_table(def(t)).map_err(err)?;
            let mut to = txn.open_table(def(t)).map_err(err)?;
            for entry in from.iter().map_err(err)? {
                let (k, v) = entry.map_err(err)?;
                to.insert(k.value(), v.value()).map_err(err)?;
            }
        }
        txn.commit().map_err(err)?;
        drop(copy);
        std::fs::metadata(out).map(|m| m.len()).map_err(err)
    }

    fn get(&self, t: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(def(t)).map_err(err)?;
        Ok(table.get(key).map_err(err)?.map(|g| g.value().to_vec()))
    }

    fn get_many(&self, t: Tree, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(def(t)).map_err(err)?;
        keys.iter().map(|k| Ok(table.get(k.as_slice()).map_err(err)?.map(|g| g.value().to_vec()))).collect()
    }

    fn scan(&self, t: Tree, range: KeyRange<'_>, rev: bool, visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(def(t)).map_err(err)?;
        walk(table.range::<&[u8]>(range).map_err(err)?, rev, |item| {
            let (k, v) = item.map_err(err)?;
            Ok(visit(k.value(), v.value()))
        })
    }

    fn apply(&self, group: &[Vec<Op>]) -> Vec<Result<()>> {
        match self.apply_group(group) {
            Ok(results) => results,
            Err(e) => group.iter().map(|_| Err(StoreError::Write(e.to_string()))).collect(),
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store in the redb file `path` and starts its writer.
    pub fn open(path: &Path, cache_mib: u64) -> Result<RedbStore> {
        KvStore::new(RedbEngine::open(path, cache_mib)?)
    }
}

/// Where [`open_migrating`] keeps a migrated sled store: `store` → `store.sled-migrated`.
pub fn migrated_dir(sled_dir: &Path) -> PathBuf {
    sled_dir.with_file_name(format!(
        "{}.sled-migrated",
        sled_dir.file_name().map_or("store".into(), |n| n.to_string_lossy())
    ))
}

/// Opens the redb store `path`. When there is none yet and `sled_dir` holds a sled store (written by a hubd
/// before redb), every record is first copied into a new file that becomes `path` only once complete and
/// synced; then `sled_dir` is renamed to [`migrated_dir`]. A crash at any point leaves either the sled
/// store untouched (the copy is started again) or the complete redb store.
pub fn open_migrating(path: &Path, sled_dir: &Path, cache_mib: u64) -> Result<RedbStore> {
    if !path.exists() && sled_dir.join("db").exists() {
        migrate(sled_dir, path)?;
    } else if path.exists() && sled_dir.join("db").exists() {
        tracing::warn!(
            sled = %sled_dir.display(),
            "an old sled store is next to the redb store the hub uses; it was migrated before: delete it"
        );
    }
    RedbStore::open(path, cache_mib)
}

fn migrate(sled_dir: &Path, path: &Path) -> Result<()> {
    let started = std::time::Instant::now();
    let fail = |error: String| StoreError::Open { path: sled_dir.display().to_string(), error };
    let partial = path.with_extension("redb.migrating");
    let _ = std::fs::remove_file(&partial);
    tracing::info!(from = %sled_dir.display(), to = %path.display(), "migrating the hub's sled store to redb");
    let sled = super::sled::SledEngine::open(sled_dir, 64, false)?;
    let redb = RedbEngine::open(&partial, 64)?;
    let mut records = 0u64;
    for t in Tree::ALL {
        // In chunks, so a large store is not one transaction held in memory.
        let mut chunk = Vec::new();
        let mut failed = None;
        sled.scan(t, (Bound::Unbounded, Bound::Unbounded), false, &mut |k, v| {
            chunk.push(Op::Put(t, k.to_vec(), v.to_vec()));
            if chunk.len() == 10_000 {
                records += chunk.len() as u64;
                if let Err(e) = redb.apply(&[std::mem::take(&mut chunk)]).remove(0) {
                    failed = Some(e);
                    return false;
                }
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(fail(format!("copying {} into {}: {e}", t.name(), partial.display())));
        }
        records += chunk.len() as u64;
        redb.apply(&[chunk]).remove(0).map_err(|e| fail(format!("copying {}: {e}", t.name())))?;
    }
    drop((sled, redb));
    let sync = |p: &Path| std::fs::File::open(p).and_then(|f| f.sync_all());
    std::fs::rename(&partial, path)
        .map_err(|e| fail(format!("renaming {} to {}: {e}", partial.display(), path.display())))?;
    if let Some(parent) = path.parent() {
        sync(parent).map_err(|e| fail(format!("syncing {}: {e}", parent.display())))?;
    }
    let old = migrated_dir(sled_dir);
    std::fs::rename(sled_dir, &old)
        .map_err(|e| fail(format!("renaming {} to {}: {e}", sled_dir.display(), old.display())))?;
    tracing::info!(
        records,
        seconds = started.elapsed().as_secs_f64(),
        kept = %old.display(),
        "migrated the hub's store from sled to redb; the old directory is kept: delete it once the hub runs well"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::store::{AuditLog, AuditQuery, HubStore, Kind, Servers, conformance};

    /// Opens and closes redb stores in one file for the conformance suite.
    struct Redb {
        dir: tempfile::TempDir,
        writer: Option<tokio::task::JoinHandle<()>>,
        /// The report log's fold threshold (`None`: the default).
        fold_at: Option<usize>,
    }

    #[async_trait]
    impl conformance::Backend for Redb {
        async fn open(&mut self) -> Arc<dyn HubStore> {
            let mut store = RedbStore::open(&self.dir.path().join("store.redb"), 8).unwrap();
            if let Some(n) = self.fold_at {
                store = store.fold_at(n);
            }
            self.writer = store.writer_task();
            Arc::new(store)
        }

        async fn close(&mut self, store: Arc<dyn HubStore>) {
            conformance::close_embedded(store, self.writer.take()).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_passes_the_conformance_suite() {
        conformance::run(&mut Redb { dir: tempfile::tempdir().unwrap(), writer: None, fold_at: None }).await;
    }

    /// Again, with the report log folded every few reports: what a read sees does not depend on whether a
    /// report is in the log or folded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_folding_often_passes_the_conformance_suite() {
        conformance::run(&mut Redb { dir: tempfile::tempdir().unwrap(), writer: None, fold_at: Some(3) }).await;
    }

    /// Reports in the report log when the hub stops (or dies) are folded at the next open; a server removed
    /// while its reports were in the log does not get them back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_report_log_is_replayed_at_open() {
        use crate::store::ServerRecord;
        let mut b = Redb { dir: tempfile::tempdir().unwrap(), writer: None, fold_at: None };
        let store = conformance::Backend::open(&mut b).await;
        for name in ["a", "b"] {
            let mut r = ServerRecord { name: name.into(), agent_id: format!("agent-{name}"), ..Default::default() };
            store.put_server(&r).await.unwrap();
            for seq in 1..=5u64 {
                r.last_seq = seq;
                store.record_report(&r, seq, vec![seq as u8], 3).await.unwrap();
            }
        }
        assert_eq!(store.history("a", 10).await.unwrap(), vec![vec![3], vec![4], vec![5]], "kept 3, from the log");
        store.remove_server("b").await.unwrap();
        conformance::Backend::close(&mut b, store).await;
        let store = conformance::Backend::open(&mut b).await;
        assert_eq!(store.history("a", 10).await.unwrap(), vec![vec![3], vec![4], vec![5]], "folded at open");
        assert_eq!(store.report("a", 2).await.unwrap(), None, "trimmed by the fold");
        assert_eq!(store.server("a").await.unwrap().unwrap().last_seq, 5);
        assert!(store.history("b", 10).await.unwrap().is_empty(), "a removed server's reports stay gone");
        assert!(store.server("b").await.unwrap().is_none());
        conformance::Backend::close(&mut b, store).await;
    }

    /// Past the threshold the fold task folds the log in the background: the log empties, the history
    /// and progress are there, trimmed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_report_log_is_folded_once_long_enough() {
        use crate::store::{Reports, ServerRecord};
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("store.redb"), 8).unwrap().fold_at(4);
        let mut r = ServerRecord { name: "a".into(), agent_id: "agent-a".into(), ..Default::default() };
        store.put_server(&r).await.unwrap();
        for seq in 1..=10u64 {
            r.last_seq = seq;
            store.record_report(&r, seq, vec![seq as u8], 5).await.unwrap();
        }
        // The fold task says when it has folded; the history holds what it folded, trimmed.
        let mut folds = store.folds();
        tokio::time::timeout(std::time::Duration::from_secs(10), folds.wait_for(|n| *n >= 1))
            .await
            .expect("the log was never folded")
            .unwrap();
        let mut folded = 0;
        store
            .engine()
            .scan(Tree::History, (Bound::Unbounded, Bound::Unbounded), false, &mut |_, _| {
                folded += 1;
                true
            })
            .unwrap();
        assert!((1..=5).contains(&folded), "{folded} points folded into the history, trimmed to 5");
        let seqs: Vec<u8> = store.history("a", 10).await.unwrap().into_iter().map(|p| p[0]).collect();
        assert_eq!(seqs, vec![6, 7, 8, 9, 10]);
        assert_eq!(store.server("a").await.unwrap().unwrap().last_seq, 10);
    }

    /// A second hub on the same file is refused with a clear error while the first has it open.
    #[tokio::test]
    async fn a_store_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let _first = RedbStore::open(&path, 8).unwrap();
        let e = RedbStore::open(&path, 8).err().expect("the file is in use").to_string();
        assert!(e.contains("store.redb") && e.contains("another hubd"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "the owner's only");
    }

    /// A sled store written by an older hubd (the 6e40fb5 fixture) is migrated at open: every record reads
    /// back, ids continue, and the sled directory is kept, renamed; a second open does not migrate again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sled_store_is_migrated_once() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-6e40fb5");
        let dir = tempfile::tempdir().unwrap();
        let sled_dir = dir.path().join("store");
        std::fs::create_dir_all(sled_dir.join("blobs")).unwrap();
        for f in ["conf", "db"] {
            std::fs::copy(fixture.join(f), sled_dir.join(f)).unwrap();
        }
        let path = dir.path().join("store.redb");
        let store = open_migrating(&path, &sled_dir, 8).unwrap();
        assert!(!sled_dir.exists() && migrated_dir(&sled_dir).join("db").exists(), "the sled store was kept, renamed");
        assert!(!path.with_extension("redb.migrating").exists());
        let all = store.query_audit(&AuditQuery { limit: 100, ..Default::default() }).await.unwrap();
        let kinds: Vec<(u64, Kind)> = all.iter().map(|e| (e.id, e.kind)).collect();
        assert_eq!(
            kinds,
            vec![(5, Kind::Result), (4, Kind::Requested), (3, Kind::Result), (2, Kind::Requested), (1, Kind::Token)]
        );
        let servers = store.servers().await.unwrap();
        assert_eq!(servers.len(), 1);
        assert_eq!((servers[0].name.as_str(), servers[0].customer.as_str()), ("old-1", "acme"));
        let id = store.append_audit(crate::store::AuditEntry::default()).await.unwrap();
        assert_eq!(id, 6, "ids continue after the migrated ones");
        let writer = store.writer_task().unwrap();
        drop(store);
        writer.await.unwrap();
        // Opened again: the redb store as it is, nothing migrated a second time.
        let store = open_migrating(&path, &sled_dir, 8).unwrap();
        assert_eq!(store.query_audit(&AuditQuery { limit: 100, ..Default::default() }).await.unwrap().len(), 6);
    }
}
