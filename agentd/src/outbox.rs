//! The outbox: every report is written here (and flushed) before it is sent, and removed only when the hub
//! acknowledged it as durably stored. After a partition or a hub restart, the backlog replays in order.
//!
//! Bounded: at most `max` reports. When full, the oldest report is dropped and counted (`dropped`, sent to
//! the hub in Hello): at the default 50,000 and a 10 s interval that is about 5.8 days of outage before
//! anything is dropped, and what is dropped first is the stalest health sample.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::v1::{Report, report};
use prost::Message;
use tokio::sync::Notify;

use crate::instance::{DbError, InstanceDb, Table, Tree};

const LAST_SEQ: &[u8] = b"last_seq";
const DROPPED: &[u8] = b"dropped";
const REFUSED: &[u8] = b"refused";

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store: {0}")]
    Store(#[from] DbError),
    #[error("outbox entry {0} is corrupt: {1}")]
    Corrupt(u64, prost::DecodeError),
}

#[derive(Clone)]
pub struct Outbox {
    db: InstanceDb,
    reports: Table,
    meta: Table,
    max: u64,
    last_seq: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    /// Reports the hub refused as invalid and this outbox therefore dropped (cumulative).
    refused: Arc<AtomicU64>,
    len: Arc<AtomicU64>,
    /// Signalled on every push; the link waits on it.
    pub pushed: Arc<Notify>,
    /// The highest seq the hub acknowledged (or refused) on this run.
    acked: Arc<tokio::sync::watch::Sender<u64>>,
    /// Pushes one at a time.
    pushing: Arc<tokio::sync::Mutex<()>>,
}

fn read_u64(table: &Table, key: &[u8]) -> Result<u64, DbError> {
    Ok(table.get(key)?.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map(u64::from_be_bytes).unwrap_or(0))
}

impl Outbox {
    pub fn open(db: &InstanceDb, max: u64) -> Result<Outbox, OutboxError> {
        let reports = db.table(Tree::Outbox)?;
        let meta = db.table(Tree::OutboxMeta)?;
        // The last key is authoritative if the meta write did not make it before a crash.
        let last_key = reports
            .last_key()?
            .and_then(|k| <[u8; 8]>::try_from(k.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let last_seq = read_u64(&meta, LAST_SEQ)?.max(last_key);
        let dropped = read_u64(&meta, DROPPED)?;
        let refused = read_u64(&meta, REFUSED)?;
        let len = reports.len() as u64;
        Ok(Outbox {
            db: db.clone(),
            reports,
            meta,
            max,
            last_seq: Arc::new(AtomicU64::new(last_seq)),
            dropped: Arc::new(AtomicU64::new(dropped)),
            refused: Arc::new(AtomicU64::new(refused)),
            len: Arc::new(AtomicU64::new(len)),
            pushed: Arc::new(Notify::new()),
            acked: Arc::new(tokio::sync::watch::Sender::new(0)),
            pushing: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Assigns the next seq, stores the report (any kind of body: health today) durably, and wakes the
    /// link. Pushes from several tasks are taken one at a time.
    pub async fn push(&self, taken_at_ms: i64, body: impl Into<report::Body>) -> Result<u64, OutboxError> {
        // Health, apps and usage are pushed by their own tasks: one at a time, so seqs are never shared.
        let _one = self.pushing.lock().await;
        let seq = self.last_seq.load(Ordering::SeqCst) + 1;
        let report = Report { seq, taken_at_ms, body: Some(body.into()) };
        self.reports.insert(seq.to_be_bytes(), report.encode_to_vec())?;
        self.meta.insert(LAST_SEQ, seq.to_be_bytes())?;
        self.last_seq.store(seq, Ordering::SeqCst);
        let mut len = self.len.fetch_add(1, Ordering::SeqCst) + 1;
        while len > self.max {
            let Some(_) = self.reports.pop_first()? else {
                break;
            };
            len = self.len.fetch_sub(1, Ordering::SeqCst) - 1;
            let d = self.dropped.fetch_add(1, Ordering::SeqCst) + 1;
            self.meta.insert(DROPPED, d.to_be_bytes())?;
        }
        self.db.flush().await?;
        self.pushed.notify_one();
        Ok(seq)
    }

    /// Moves the sequence past `seq` if it is behind (the hub has stored reports up to `seq`, e.g. because
    /// this outbox was lost while the identity survived): otherwise every new report would look like a
    /// duplicate to the hub and be dropped.
    pub async fn advance_to(&self, seq: u64) -> Result<bool, OutboxError> {
        if self.last_seq.load(Ordering::SeqCst) >= seq {
            return Ok(false);
        }
        self.meta.insert(LAST_SEQ, seq.to_be_bytes())?;
        self.db.flush().await?;
        self.last_seq.store(seq, Ordering::SeqCst);
        Ok(true)
    }

    /// Up to `limit` reports with seq >= `from`, in order.
    pub fn pending_from(&self, from: u64, limit: usize) -> Result<Vec<Report>, OutboxError> {
        let mut out = Vec::new();
        for (k, v) in self.reports.from(from.to_be_bytes(), limit)? {
            let seq = <[u8; 8]>::try_from(k.as_slice()).map(u64::from_be_bytes).unwrap_or(0);
            out.push(Report::decode(v.as_slice()).map_err(|e| OutboxError::Corrupt(seq, e))?);
        }
        Ok(out)
    }

    /// Removes every report with seq <= `up_to` (the hub has them).
    pub fn ack(&self, up_to: u64) -> Result<(), OutboxError> {
        for k in self.reports.keys_to(up_to.to_be_bytes())? {
            if self.reports.remove(k)? {
                self.len.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.acked.send_if_modified(|a| {
            let moved = up_to > *a;
            *a = up_to.max(*a);
            moved
        });
        Ok(())
    }

    /// Follows the highest seq acknowledged on this run.
    pub fn acked(&self) -> tokio::sync::watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// The hub refused report `seq` as invalid (it will never take it): it is dropped and counted. The hub
    /// answers in order, so every report before it was acknowledged or refused already; everything up to
    /// `seq` leaves the outbox.
    pub fn refused(&self, seq: u64) -> Result<(), OutboxError> {
        let n = self.refused.fetch_add(1, Ordering::SeqCst) + 1;
        self.meta.insert(REFUSED, n.to_be_bytes())?;
        self.ack(seq)
    }

    pub fn refused_count(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::SeqCst)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use outpost_proto::v1::Health;

    use super::*;

    fn open(dir: &std::path::Path, max: u64) -> Outbox {
        Outbox::open(&InstanceDb::reopen_for_test(dir), max).unwrap()
    }

    #[tokio::test]
    async fn survives_restart_in_order_and_acks_remove() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = open(dir.path(), 100);
            for i in 0..5 {
                assert_eq!(o.push(i, Health::default()).await.unwrap(), i as u64 + 1);
            }
            o.ack(2).unwrap();
        }
        let o = open(dir.path(), 100);
        assert_eq!(o.last_seq(), 5);
        let seqs: Vec<u64> = o.pending_from(0, 100).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(o.push(9, Health::default()).await.unwrap(), 6, "seq continues after restart");
        assert_eq!(o.len(), 4);
    }

    #[tokio::test]
    async fn a_lost_outbox_continues_after_the_hubs_high_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path(), 100);
        assert!(o.advance_to(500).await.unwrap());
        assert!(!o.advance_to(10).await.unwrap(), "never goes back");
        assert_eq!(o.push(0, Health::default()).await.unwrap(), 501);
    }

    #[tokio::test]
    async fn full_outbox_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path(), 10);
        for i in 0..13 {
            o.push(i, Health::default()).await.unwrap();
        }
        assert_eq!((o.len(), o.dropped()), (10, 3));
        assert_eq!(o.pending_from(0, 1).unwrap()[0].seq, 4);
    }

    #[tokio::test]
    async fn a_refused_report_is_dropped_counted_and_unblocks_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = open(dir.path(), 100);
            for i in 0..4 {
                o.push(i, Health::default()).await.unwrap();
            }
            o.refused(2).unwrap();
            assert_eq!(o.pending_from(0, 10).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
        }
        assert_eq!(open(dir.path(), 100).refused_count(), 1, "the count survives a restart");
    }
}
