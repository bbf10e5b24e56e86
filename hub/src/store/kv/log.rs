//! The report log: what reports write (a history point, the server's progress), appended in arrival order
//! to [`Tree::Log`] and folded into the per-server trees ([`Tree::History`], [`Tree::Progress`]) many at a
//! time.
//!
//! Why: a copy-on-write B-tree (redb) rewrites every leaf a commit touches, and a report written straight
//! into its server's history and progress touched two leaves of its own: about 8 KiB written and synced
//! for a 300-byte report, most of hubd's CPU. Appended to the log, the reports of one group commit share
//! the log's last leaves; a fold later writes each server's many new points into its history at once.
//!
//! What is not folded yet is indexed here in memory ([`Unfolded`]), and every read of a server, its
//! history or one report looks through it, so nothing reads differently for a report being in the log.
//! The log is durable like every other write: after a crash the store replays and folds it at open.

use std::collections::{BTreeSet, HashMap};

use super::layout::{Op, Tree, apply_progress, history_key, progress_bytes};
use crate::store::{Result, ServerRecord, StoreError};

/// Entries in the log that start a fold (about 5 s of reports at 10,000 a second).
pub(super) const FOLD_AT: usize = 50_000;
/// Entries folded per commit at most, so that a fold never holds the writer for long.
const CHUNK: usize = 4096;

/// The log key of entry `id`.
pub(super) fn key(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// One log entry: a report's point (its seq, the history kept, the point) and the server's progress after
/// it, or the progress alone (an apps state, a usage report).
#[derive(Debug, PartialEq)]
pub(super) struct Entry {
    pub server: String,
    pub agent_id: String,
    /// As [`super::progress_bytes`]: 5 × u64 BE.
    pub progress: Vec<u8>,
    pub point: Option<(u64, u32, Vec<u8>)>,
}

const VERSION: u8 = 1;

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let point = self.point.as_ref().map_or(0, |(_, _, p)| p.len() + 12);
        let mut v = Vec::with_capacity(6 + self.server.len() + self.agent_id.len() + self.progress.len() + point);
        v.push(VERSION);
        for s in [&self.server, &self.agent_id] {
            v.extend_from_slice(&(s.len() as u16).to_be_bytes());
            v.extend_from_slice(s.as_bytes());
        }
        v.push(self.progress.len() as u8);
        v.extend_from_slice(&self.progress);
        if let Some((seq, keep, p)) = &self.point {
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(&keep.to_be_bytes());
            v.extend_from_slice(p);
        }
        v
    }

    pub fn decode(id: u64, v: &[u8]) -> Result<Entry> {
        let corrupt = |what: &str| StoreError::Corrupt {
            table: Tree::Log.name(),
            key: id.to_string(),
            error: format!("{what} (entry of {} bytes)", v.len()),
        };
        let mut rest = v;
        let mut take = |n: usize| -> Result<&[u8]> {
            let (head, tail) = rest.split_at_checked(n).ok_or_else(|| corrupt("truncated"))?;
            rest = tail;
            Ok(head)
        };
        if take(1)? != [VERSION] {
            return Err(corrupt("unknown version"));
        }
        let mut text = || -> Result<String> {
            let n = u16::from_be_bytes(take(2)?.try_into().expect("2 bytes")) as usize;
            String::from_utf8(take(n)?.to_vec()).map_err(|_| corrupt("a name is not UTF-8"))
        };
        let (server, agent_id) = (text()?, text()?);
        let n = take(1)?[0] as usize;
        let progress = take(n)?.to_vec();
        let point = match take(12) {
            Err(_) => None,
            Ok(h) => {
                let seq = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
                let keep = u32::from_be_bytes(h[8..].try_into().expect("4 bytes"));
                Some((seq, keep, rest.to_vec()))
            }
        };
        Ok(Entry { server, agent_id, progress, point })
    }
}

/// Progress `new` merged into `old` (both 5 × u64 BE): counters and times only move forward, the first
/// time seen is kept once set.
pub(super) fn forward(old: &[u8], new: &[u8]) -> Vec<u8> {
    let field =
        |v: &[u8], i: usize| v.get(i * 8..i * 8 + 8).map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8")));
    (0..5)
        .map(|i| match i {
            4 if field(old, 4) != 0 => field(old, 4),
            _ => field(old, i).max(field(new, i)),
        })
        .flat_map(u64::to_be_bytes)
        .collect()
}

/// What one server has in the log.
struct Pending {
    agent_id: String,
    /// The newest progress of `agent_id` in the log.
    progress: Vec<u8>,
    /// Log ids as their writes returned (concurrent writes may return out of id order), with the seq of
    /// the report each holds (none: progress only).
    entries: Vec<(u64, Option<u64>)>,
    /// The lowest seq the server's history keeps after its newest point in the log (a fold trims below).
    floor: u64,
}

/// The log's index in memory.
#[derive(Default)]
pub(super) struct Unfolded {
    next: u64,
    /// Ids handed out whose write has not returned yet.
    writing: BTreeSet<u64>,
    servers: HashMap<String, Pending>,
    len: usize,
}

impl Unfolded {
    pub fn starting_at(next: u64) -> Unfolded {
        Unfolded { next, ..Unfolded::default() }
    }

    /// A new id, for an entry being written.
    pub fn begin(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        self.writing.insert(id);
        id
    }

    /// The write of `id` returned: with `Some`, it is durable and indexed.
    pub fn end(&mut self, id: u64, written: Option<&Entry>) {
        self.writing.remove(&id);
        if let Some(e) = written {
            self.add(id, e);
        }
    }

    fn add(&mut self, id: u64, e: &Entry) {
        let (agent_id, progress) = (&e.agent_id, &e.progress);
        // Looked up before inserting: the name is copied once per server, not once per entry.
        if !self.servers.contains_key(&e.server) {
            let p = Pending { agent_id: agent_id.clone(), progress: Vec::new(), entries: Vec::new(), floor: 0 };
            self.servers.insert(e.server.clone(), p);
        }
        let Some(p) = self.servers.get_mut(&e.server) else { return };
        let seq = e.point.as_ref().map(|(seq, keep, _)| {
            p.floor = p.floor.max((seq + 1).saturating_sub(u64::from(*keep)));
            *seq
        });
        if p.agent_id != *agent_id {
            // A new identity starts its own progress (its points still go to the server's history).
            (p.agent_id, p.progress) = (agent_id.clone(), Vec::new());
        }
        p.progress = forward(&p.progress, progress);
        p.entries.push((id, seq));
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Every id below this is settled: written and indexed here, or failed (not in the log).
    pub fn settled(&self) -> u64 {
        self.writing.first().copied().unwrap_or(self.next)
    }

    /// `r` with the progress the log holds for it (same identity only).
    pub fn merge(&self, r: &mut ServerRecord) {
        if let Some(p) = self.servers.get(&r.name).filter(|p| p.agent_id == r.agent_id && !p.progress.is_empty()) {
            apply_progress(r, &forward(&progress_bytes(r), &p.progress));
        }
    }

    /// The log ids of `server`'s last `n` points (oldest first), with their seqs.
    pub fn points(&self, server: &str, n: usize) -> Vec<(u64, u64)> {
        let Some(p) = self.servers.get(server) else { return Vec::new() };
        let mut v: Vec<(u64, u64)> = p.entries.iter().rev().filter_map(|(id, s)| s.map(|s| (*id, s))).take(n).collect();
        v.reverse();
        v
    }

    /// The lowest seq of `server`'s history still kept, counting its points in the log.
    pub fn floor(&self, server: &str) -> u64 {
        self.servers.get(server).map_or(0, |p| p.floor)
    }

    /// The log id of `server`'s report `seq`.
    pub fn point(&self, server: &str, seq: u64) -> Option<u64> {
        self.servers.get(server)?.entries.iter().find(|(_, s)| *s == Some(seq)).map(|(id, _)| *id)
    }

    /// The log ids of `server`'s entries.
    pub fn ids(&self, server: &str) -> Vec<u64> {
        self.servers.get(server).map(|p| p.entries.iter().map(|(id, _)| *id).collect()).unwrap_or_default()
    }

    /// Forgets `server` (it was removed).
    pub fn forget(&mut self, server: &str) {
        if let Some(p) = self.servers.remove(server) {
            self.len -= p.entries.len();
        }
    }

    /// The servers with entries below `cut`, in groups of about [`CHUNK`] entries.
    pub fn chunks(&self, cut: u64) -> Vec<Vec<String>> {
        let mut names: Vec<(&String, usize)> = self
            .servers
            .iter()
            .map(|(name, p)| (name, p.entries.iter().filter(|(id, _)| *id < cut).count()))
            .filter(|(_, n)| *n > 0)
            .collect();
        names.sort();
        let mut out: Vec<Vec<String>> = Vec::new();
        let mut size = CHUNK;
        for (name, n) in names {
            if size + n > CHUNK {
                out.push(Vec::new());
                size = 0;
            }
            out.last_mut().expect("pushed").push(name.clone());
            size += n;
        }
        out
    }

    /// What `servers` have below `cut`: (server, agent id, progress, log ids); the log ids to read.
    pub fn take(&self, servers: &[String], cut: u64) -> Vec<(String, String, Vec<u8>, Vec<u64>)> {
        servers
            .iter()
            .filter_map(|name| {
                let p = self.servers.get(name)?;
                let ids: Vec<u64> = p.entries.iter().map(|(id, _)| *id).filter(|id| *id < cut).collect();
                Some((name.clone(), p.agent_id.clone(), p.progress.clone(), ids))
            })
            .collect()
    }

    /// `servers`' entries below `cut` are folded: forgets them.
    pub fn folded(&mut self, servers: &[String], cut: u64) {
        for name in servers {
            let Some(p) = self.servers.get_mut(name) else { continue };
            let before = p.entries.len();
            p.entries.retain(|(id, _)| *id >= cut);
            self.len -= before - p.entries.len();
            if p.entries.is_empty() {
                self.servers.remove(name);
            }
        }
    }
}

/// The writes that fold `entries` of one server (read from the log, oldest first) into its history and
/// progress, given its stored record and progress: nothing for a server that is gone. Points first, the
/// progress last, so any prefix is safe (a replay writes the same again).
pub(super) fn fold_ops(
    server: &str,
    agent_id: &str,
    progress: &[u8],
    entries: Vec<Entry>,
    stored: Option<(&ServerRecord, Option<Vec<u8>>)>,
) -> Vec<Op> {
    let Some((record, stored_progress)) = stored else { return Vec::new() };
    let mut ops = Vec::with_capacity(entries.len() + 2);
    let mut last = None;
    for e in entries {
        if let Some((seq, keep, point)) = e.point {
            ops.push(Op::Put(Tree::History, history_key(server, seq), point));
            last = Some((seq.max(last.map_or(0, |(s, _)| s)), u64::from(keep)));
        }
    }
    if let Some((seq, keep)) = last
        && seq > keep
    {
        ops.push(Op::DelRange(Tree::History, history_key(server, 0), history_key(server, seq + 1 - keep)));
    }
    if record.agent_id == agent_id && !progress.is_empty() {
        let merged = forward(stored_progress.as_deref().unwrap_or_default(), progress);
        ops.push(Op::Put(Tree::Progress, server.as_bytes().to_vec(), merged));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_as_encoded() {
        let progress = super::super::progress_bytes(&ServerRecord { last_seq: 7, ..ServerRecord::default() });
        for point in [None, Some((7, 60, b"point".to_vec())), Some((8, 1, Vec::new()))] {
            let e = Entry { server: "srv-1".into(), agent_id: "agent".into(), progress: progress.clone(), point };
            assert_eq!(Entry::decode(1, &e.encode()).unwrap(), e);
        }
        for bad in [&[][..], &[2, 0, 0][..], &[1, 0, 9, b'a'][..]] {
            let err = Entry::decode(3, bad).unwrap_err().to_string();
            assert!(err.contains("report_log"), "{err}");
        }
    }

    #[test]
    fn progress_moves_forward_and_keeps_the_first_time_seen() {
        let p = |v: [u64; 5]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        assert_eq!(forward(&p([5, 9, 100, 90, 10]), &p([4, 10, 99, 95, 20])), p([5, 10, 100, 95, 10]));
        assert_eq!(forward(&[], &p([4, 10, 99, 95, 20])), p([4, 10, 99, 95, 20]));
    }

    /// Writes of one server that return out of id order: each is taken by the cut it is below.
    #[test]
    fn entries_written_out_of_order_are_all_folded() {
        let entry = |seq: u64| Entry {
            server: "s".into(),
            agent_id: "a".into(),
            progress: Vec::new(),
            point: Some((seq, 60, Vec::new())),
        };
        let mut u = Unfolded::starting_at(1);
        let (c, d) = (u.begin(), u.begin());
        u.end(d, Some(&entry(2)));
        u.end(c, Some(&entry(1)));
        let ids = |u: &Unfolded, cut| u.take(&["s".to_string()], cut).into_iter().map(|t| t.3).collect::<Vec<_>>();
        assert_eq!(ids(&u, d), vec![vec![c]]);
        assert_eq!(u.chunks(d + 1), vec![vec!["s".to_string()]]);
        assert_eq!(ids(&u, d + 1), vec![vec![d, c]]);
        u.folded(&["s".to_string()], d + 1);
        assert_eq!(u.len(), 0);
    }

    #[test]
    fn the_index_settles_in_order_and_chunks_by_size() {
        let entry = |server: &str, seq: u64| Entry {
            server: server.into(),
            agent_id: format!("agent-{server}"),
            progress: Vec::new(),
            point: Some((seq, 60, Vec::new())),
        };
        let mut u = Unfolded::starting_at(1);
        let (a, b) = (u.begin(), u.begin());
        u.end(b, Some(&entry("srv-b", 1)));
        assert_eq!(u.settled(), a, "an id still being written holds the cut");
        u.end(a, None);
        assert_eq!((u.settled(), u.len()), (3, 1));
        for _ in 0..CHUNK {
            let id = u.begin();
            u.end(id, Some(&entry("srv-a", id)));
        }
        assert_eq!(u.chunks(u.settled()), vec![vec!["srv-a".to_string()], vec!["srv-b".to_string()]]);
        u.folded(&["srv-a".to_string()], 10);
        assert_eq!(u.len(), CHUNK + 1 - 7);
        assert_eq!(u.points("srv-a", 2).len(), 2);
        assert_eq!(u.floor("srv-a"), CHUNK as u64 + 3 - 60, "the newest point's seq + 1 - its keep");
        assert_eq!(u.ids("srv-b"), vec![b]);
        u.forget("srv-b");
        assert_eq!(u.len(), CHUNK - 7);
    }
}
