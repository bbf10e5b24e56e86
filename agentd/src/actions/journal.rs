//! The command journal (a tree of the instance database): the reason an action runs at most once.
//!
//! A command id is written (and flushed) as `started` before anything runs, and rewritten as `done` with its
//! result and a bounded output tail when it ends. A command that arrives again finds its entry: `done` is
//! answered from the record; `started` without `done` means agentd died while it ran, so it is answered as
//! interrupted and not run again.

use outpost_proto::v1::CommandUpdate;
use prost::Message;

use crate::instance::{DbError, InstanceDb, Table, Tree};

/// Entries kept; older ones are dropped at start (a redelivery comes within minutes, not weeks).
const KEEP: usize = 10_000;
const MAX_AGE_MS: i64 = 30 * 24 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Started,
    /// The final update as it was sent: result and output tail.
    Done(CommandUpdate),
}

#[derive(Clone)]
pub struct Journal {
    db: InstanceDb,
    tree: Table,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("command journal: {0}")]
    Store(#[from] DbError),
    #[error("command journal entry {0} is corrupt")]
    Corrupt(String),
}

impl Journal {
    pub fn open(db: &InstanceDb) -> Result<Journal, JournalError> {
        let tree = db.table(Tree::Journal)?;
        let j = Journal { db: db.clone(), tree };
        j.prune(outpost_common::now_ms())?;
        Ok(j)
    }

    pub fn get(&self, id: &str) -> Result<Option<Entry>, JournalError> {
        let Some(v) = self.tree.get(id)? else { return Ok(None) };
        let corrupt = || JournalError::Corrupt(id.to_string());
        match v.first() {
            Some(b'S') => Ok(Some(Entry::Started)),
            Some(b'D') if v.len() >= 9 => {
                CommandUpdate::decode(&v[9..]).map(|u| Some(Entry::Done(u))).map_err(|_| corrupt())
            }
            _ => Err(corrupt()),
        }
    }

    /// Durable before it returns: only then may the command run.
    pub async fn start(&self, id: &str) -> Result<(), JournalError> {
        self.tree.insert(id, value(b'S', &[]))?;
        self.db.flush().await?;
        Ok(())
    }

    pub async fn finish(&self, id: &str, last: &CommandUpdate) -> Result<(), JournalError> {
        self.tree.insert(id, value(b'D', &last.encode_to_vec()))?;
        self.db.flush().await?;
        Ok(())
    }

    fn prune(&self, now: i64) -> Result<(), JournalError> {
        let mut entries: Vec<(i64, Vec<u8>)> = Vec::new();
        for (k, v) in self.tree.entries()? {
            let at = v.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(i64::from_be_bytes).unwrap_or(0);
            entries.push((at, k));
        }
        entries.sort();
        let over = entries.len().saturating_sub(KEEP);
        for (i, (at, k)) in entries.into_iter().enumerate() {
            if i < over || now - at > MAX_AGE_MS {
                self.tree.remove(k)?;
            }
        }
        Ok(())
    }
}

fn value(state: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + body.len());
    v.push(state);
    v.extend_from_slice(&outpost_common::now_ms().to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_survive_reopen_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = crate::instance::InstanceDb::open(dir.path()).unwrap();
            let j = Journal::open(&db).unwrap();
            assert_eq!(j.get("a").unwrap(), None);
            j.start("a").await.unwrap();
            j.start("b").await.unwrap();
            let done = CommandUpdate { command_id: "b".into(), output: "tail".into(), ..Default::default() };
            j.finish("b", &done).await.unwrap();
        }
        let db = crate::instance::InstanceDb::reopen_for_test(dir.path());
        let j = Journal::open(&db).unwrap();
        assert_eq!(j.get("a").unwrap(), Some(Entry::Started));
        assert!(matches!(j.get("b").unwrap(), Some(Entry::Done(u)) if u.output == "tail"));
        j.prune(outpost_common::now_ms() + MAX_AGE_MS + 1).unwrap();
        assert_eq!(j.get("a").unwrap(), None);
    }
}
