//! Reports on the embedded store (the report log is `log`).

use super::*;

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
