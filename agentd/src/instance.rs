//! The instance database: one sled database per customer server (`data_dir/instance.db`), owning its trees,
//! their names and a schema version.
//!
//! Architecture invariant: this is the only module of agentd that opens sled; the outbox, the command journal
//! (and, later, projects, apps, deployments and repos) get their trees from here. A database written by a
//! newer agentd is refused, not misread; an older one is migrated forward at open, each step in order.

use std::path::{Path, PathBuf};

/// sled's page cache for the agent: it shares a small server with K3s.
const CACHE_BYTES: u64 = 4 * 1024 * 1024;
const META: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema_version";
/// The schema this agentd writes.
pub const SCHEMA_VERSION: u64 = 2;

/// Every tree of the instance database, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    /// seq (u64 BE) → `Report` (protobuf): reports not yet acknowledged by the hub.
    Outbox,
    /// `last_seq`, `dropped`, `refused` counters of the outbox.
    OutboxMeta,
    /// command id → journal entry (see `actions::journal`).
    Journal,
    /// project name → `apps::Project` (JSON). Schema 2.
    Projects,
    /// app name → `apps::AppRecord` (JSON; secrets sealed). Schema 2.
    Apps,
    /// app name, 0, deployment number (u64 BE) → `apps::Deployment` (JSON). Schema 2.
    Deployments,
    /// app name → `repos::RepoState` (JSON). Schema 2.
    Repos,
    /// number (u64 BE) → `apps::Activity` (JSON): append-only log of what the agent changed. Schema 2.
    Activity,
}

impl Tree {
    fn name(self) -> &'static str {
        match self {
            Tree::Outbox => "outbox",
            Tree::OutboxMeta => "outbox_meta",
            Tree::Journal => "journal",
            Tree::Projects => "projects",
            Tree::Apps => "apps",
            Tree::Deployments => "deployments",
            Tree::Repos => "repos",
            Tree::Activity => "activity",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot open the instance database {path}: {error}; is another agentd running on this data_dir?")]
    Open { path: PathBuf, error: sled::Error },
    #[error(
        "the instance database {path} has schema version {found}, newer than this agentd's {SCHEMA_VERSION}: it was written by a newer agentd; install that version again"
    )]
    Newer { path: PathBuf, found: u64 },
    #[error("instance database {path}: {error}")]
    Store { path: PathBuf, error: sled::Error },
}

/// A failed read or write of the instance database.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(#[from] sled::Error);

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One tree: ordered byte keys to byte values. Writes are durable after [`InstanceDb::flush`].
#[derive(Clone)]
pub struct Table(sled::Tree);

impl Table {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.0.get(key)?.map(|v| v.to_vec()))
    }

    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), DbError> {
        self.0.insert(key.as_ref(), value.as_ref())?;
        Ok(())
    }

    /// Whether the key was there.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<bool, DbError> {
        Ok(self.0.remove(key)?.is_some())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The greatest key.
    pub fn last_key(&self) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.0.last()?.map(|(k, _)| k.to_vec()))
    }

    /// Removes and returns the entry with the least key.
    pub fn pop_first(&self) -> Result<Option<Entry>, DbError> {
        Ok(self.0.pop_min()?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    /// Up to `limit` entries with keys >= `from`, in key order.
    pub fn from(&self, from: impl AsRef<[u8]>, limit: usize) -> Result<Vec<Entry>, DbError> {
        let from = from.as_ref().to_vec();
        self.0.range(from..).take(limit).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(DbError)).collect()
    }

    /// Every key <= `to`, in order.
    pub fn keys_to(&self, to: impl AsRef<[u8]>) -> Result<Vec<Vec<u8>>, DbError> {
        let to = to.as_ref().to_vec();
        self.0.range(..=to).keys().map(|r| r.map(|k| k.to_vec()).map_err(DbError)).collect()
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Vec<Entry>, DbError> {
        self.0.scan_prefix(prefix).map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(DbError)).collect()
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<Entry>, DbError> {
        self.0.iter().map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(DbError)).collect()
    }
}

/// The open database. Cheap to clone.
#[derive(Clone)]
pub struct InstanceDb {
    db: sled::Db,
    path: PathBuf,
}

/// Migrations, in order: `MIGRATIONS[n]` takes a database from version `n` to `n + 1`. Version 0 is a
/// database from before versioning (the outbox and the journal, as version 1 has them); version 2 adds
/// what the agent manages (projects, apps, deployments, repos, activity).
type Migration = fn(&sled::Db) -> Result<(), sled::Error>;
const MIGRATIONS: [Migration; SCHEMA_VERSION as usize] = [
    |_| Ok(()),
    |db| {
        for t in [Tree::Projects, Tree::Apps, Tree::Deployments, Tree::Repos, Tree::Activity] {
            db.open_tree(t.name())?;
        }
        Ok(())
    },
];

/// One change of an atomic write ([`InstanceDb::apply`]).
#[derive(Clone, Debug)]
pub enum Write {
    Put(Tree, Vec<u8>, Vec<u8>),
    Del(Tree, Vec<u8>),
}

impl InstanceDb {
    /// Opens (or creates) the database in `path`, migrating it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<InstanceDb, InstanceError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            // Every write that must be durable is flushed by its writer (outbox, journal, app store): sled's
            // own flusher, waking twice a second, would only cost an idle server CPU. What is left unflushed
            // (acknowledged reports being removed) is safe to redo after a crash.
            .flush_every_ms(None)
            .open()
            .map_err(|error| InstanceError::Open { path: path.to_path_buf(), error })?;
        InstanceDb::migrate(db, path)
    }

    fn migrate(db: sled::Db, path: &Path) -> Result<InstanceDb, InstanceError> {
        let store = |error| InstanceError::Store { path: path.to_path_buf(), error };
        let meta = db.open_tree(META).map_err(store)?;
        let found = meta
            .get(SCHEMA_KEY)
            .map_err(store)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(InstanceError::Newer { path: path.to_path_buf(), found });
        }
        for (from, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            step(&db).map_err(store)?;
            meta.insert(SCHEMA_KEY, &(from as u64 + 1).to_be_bytes()).map_err(store)?;
            db.flush().map_err(store)?;
            tracing::info!(path = %path.display(), from, to = from + 1, "instance database migrated");
        }
        Ok(InstanceDb { db, path: path.to_path_buf() })
    }

    pub fn table(&self, t: Tree) -> Result<Table, DbError> {
        Ok(Table(self.db.open_tree(t.name())?))
    }

    /// Applies every write or none of them (one transaction across the trees they touch), then flushes.
    pub async fn apply(&self, writes: &[Write]) -> Result<(), DbError> {
        use sled::Transactional;
        let mut names: Vec<Tree> = Vec::new();
        for w in writes {
            let (Write::Put(t, ..) | Write::Del(t, _)) = w;
            if !names.contains(t) {
                names.push(*t);
            }
        }
        let trees = names.iter().map(|t| self.db.open_tree(t.name())).collect::<Result<Vec<_>, _>>()?;
        let at = |t: &Tree| names.iter().position(|n| n == t).expect("collected above");
        trees[..]
            .transaction(|tx| {
                for w in writes {
                    match w {
                        Write::Put(t, k, v) => {
                            tx[at(t)].insert(k.as_slice(), v.as_slice())?;
                        }
                        Write::Del(t, k) => {
                            tx[at(t)].remove(k.as_slice())?;
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => DbError(e),
                sled::transaction::TransactionError::Abort(()) => unreachable!("nothing aborts"),
            })?;
        self.flush().await
    }

    /// Makes every write so far durable (sled's `flush_async`; see ARCHITECTURE.md for what it guarantees).
    pub async fn flush(&self) -> Result<(), DbError> {
        Ok(self.db.flush_async().await.map(|_| ())?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> u64 {
        self.db
            .open_tree(META)
            .ok()
            .and_then(|m| m.get(SCHEMA_KEY).ok().flatten())
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes)
    }

    /// Stamps the database at `path` with schema `version`, as a newer agentd would have.
    #[cfg(test)]
    pub(crate) fn set_schema_for_test(path: &Path, version: u64) {
        let db = InstanceDb::reopen_for_test(path);
        db.db.open_tree(META).unwrap().insert(SCHEMA_KEY, &version.to_be_bytes()).unwrap();
        db.db.flush().unwrap();
    }

    /// Reopens in a test, waiting for a previous handle's background flusher to let go of the file lock (it
    /// does so shortly after the last handle is dropped).
    #[cfg(test)]
    pub(crate) fn reopen_for_test(path: &Path) -> InstanceDb {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match InstanceDb::open(path) {
                Ok(db) => return db,
                Err(e) if std::time::Instant::now() >= deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unversioned_database_is_stamped_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            // As agentd before versioning left it: an outbox tree, no meta.
            let db = sled::Config::new().path(&path).open().unwrap();
            db.open_tree("outbox").unwrap().insert(1u64.to_be_bytes(), b"x".as_slice()).unwrap();
            db.flush().unwrap();
        }
        let db = InstanceDb::reopen_for_test(&path);
        assert_eq!(db.schema_version(), SCHEMA_VERSION);
        assert_eq!(db.table(Tree::Outbox).unwrap().len(), 1, "data kept");
        db.db.open_tree(META).unwrap().insert(SCHEMA_KEY, &99u64.to_be_bytes()).unwrap();
        db.db.flush().unwrap();
        drop(db);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let err = loop {
            match InstanceDb::open(&path) {
                Err(InstanceError::Open { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => break e.to_string(),
                Ok(_) => panic!("a newer database was opened"),
            }
        };
        assert!(err.contains("schema version 99, newer than this agentd's 2"), "{err}");
    }
}
