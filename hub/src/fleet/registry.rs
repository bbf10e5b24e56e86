//! The server registry: persisted records plus live state (liveness, latest health, the current stream).
//!
//! Architecture invariant: liveness is honest and derived in one place. `Connected` means a Connect stream
//! is attached right now; `Disconnected` means it went away less than `grace` ago; `Lost` means longer.
//! A hub that restarts knows nobody is attached, so every enrolled server starts `Disconnected` and becomes
//! `Lost` after the grace unless its agent comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_proto::v1::{AppsState, Health};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::store::ServerRecord;
use outpost_common::now_ms;

pub use outpost_common::Liveness;

/// What an operator sees of one server.
#[derive(Clone, Debug)]
pub struct ServerView {
    pub record: ServerRecord,
    pub liveness: Liveness,
    pub liveness_since_ms: i64,
    /// Shared, as `apps` is: a new view (every report) refers to the parts that did not change.
    pub health: Option<Arc<Health>>,
    /// The latest apps and cluster state the agent reported.
    pub apps: Option<Arc<AppsState>>,
}

impl ServerView {
    /// Since when the server has been out of touch: its agent's last report, or, never heard from, since
    /// its liveness began; `None` while connected. Unlike `liveness_since_ms`, a move from disconnected to
    /// lost, or another replica's view of the same silence, does not restart it (`server_offline_seconds`).
    pub fn offline_since_ms(&self) -> Option<i64> {
        match self.liveness {
            Liveness::Connected => None,
            _ if self.record.last_seen_ms > 0 => Some(self.record.last_seen_ms),
            _ => Some(self.liveness_since_ms),
        }
    }
}

/// A change the fleet watch broadcasts.
#[derive(Clone, Debug)]
pub enum FleetDelta {
    Upsert(Arc<ServerView>),
    Removed(String),
}

/// The attached Connect stream of one server.
struct Attached {
    conn_id: u64,
    close: CancellationToken,
}

struct Entry {
    view: Arc<ServerView>,
    stream: Option<Attached>,
}

pub struct Registry {
    inner: Mutex<Inner>,
    deltas: broadcast::Sender<FleetDelta>,
    grace: Duration,
}

struct Inner {
    servers: HashMap<String, Entry>,
    by_agent: HashMap<String, String>,
    next_conn: u64,
}

/// Deltas buffered per watcher before it is considered lagging (it then gets a fresh snapshot).
const WATCH_BUFFER: usize = 16 * 1024;

/// A server's live state as another replica of the same store shows it.
pub struct RemoteView {
    pub health: Option<Health>,
    pub apps: Option<AppsState>,
    pub liveness: Liveness,
    pub since_ms: i64,
}

impl Registry {
    pub fn new(
        records: Vec<ServerRecord>,
        mut latest: impl FnMut(&str) -> (Option<Health>, Option<AppsState>),
        grace: Duration,
    ) -> Registry {
        let now = now_ms();
        let mut servers = HashMap::new();
        let mut by_agent = HashMap::new();
        let grace_ms = grace.as_millis() as i64;
        for record in records {
            // After a restart, tell what happened from what was stored: a server last seen within the grace
            // is disconnected since then, one seen longer ago is (still) lost; never enrolled is pending.
            let (liveness, since) = match record.last_seen_ms {
                _ if record.agent_id.is_empty() => (Liveness::Pending, record.created_ms.max(0)),
                0 => (Liveness::Pending, now),
                seen if now - seen >= grace_ms => (Liveness::Lost, seen + grace_ms),
                seen => (Liveness::Disconnected, seen),
            };
            if !record.agent_id.is_empty() {
                by_agent.insert(record.agent_id.clone(), record.name.clone());
            }
            let (health, apps) = latest(&record.name);
            let (health, apps) = (health.map(Arc::new), apps.map(Arc::new));
            let view = ServerView { record, liveness, liveness_since_ms: since, health, apps };
            servers.insert(view.record.name.clone(), Entry { view: Arc::new(view), stream: None });
        }
        Registry {
            inner: Mutex::new(Inner { servers, by_agent, next_conn: 1 }),
            deltas: broadcast::channel(WATCH_BUFFER).0,
            grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock is a bug elsewhere; the data is still consistent per operation.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<ServerView>> {
        self.lock().servers.get(name).map(|e| e.view.clone())
    }

    pub fn server_of_agent(&self, agent_id: &str) -> Option<String> {
        self.lock().by_agent.get(agent_id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<ServerView>> {
        let mut v: Vec<_> = self.lock().servers.values().map(|e| e.view.clone()).collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        v
    }

    /// A snapshot and a receiver that sees every change after it (taken under one lock: nothing is missed).
    pub fn watch(&self) -> (Vec<Arc<ServerView>>, broadcast::Receiver<FleetDelta>) {
        let inner = self.lock();
        let rx = self.deltas.subscribe();
        let mut v: Vec<_> = inner.servers.values().map(|e| e.view.clone()).collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        (v, rx)
    }

    /// Replaces a server's record (after it was durably stored), keeping its live state.
    pub fn put_record(&self, record: ServerRecord) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let old = inner.servers.get(&record.name).map(|e| e.view.clone());
        if let Some(old) = &old
            && old.record.agent_id != record.agent_id
        {
            inner.by_agent.remove(&old.record.agent_id);
        }
        if !record.agent_id.is_empty() {
            inner.by_agent.insert(record.agent_id.clone(), record.name.clone());
        }
        // Enrollment alone changes no liveness: a new server stays pending until its first stream.
        let (liveness, since, health, apps) = old
            .map(|o| (o.liveness, o.liveness_since_ms, o.health.clone(), o.apps.clone()))
            .unwrap_or((Liveness::Pending, now_ms(), None, None));
        let name = record.name.clone();
        let view = Arc::new(ServerView { record, liveness, liveness_since_ms: since, health, apps });
        inner.servers.entry(name).or_insert_with(|| Entry { view: view.clone(), stream: None }).view = view.clone();
        let _ = self.deltas.send(FleetDelta::Upsert(view));
    }

    /// Forgets a server (its record was removed from the store); its stream, if any, is closed.
    pub fn remove(&self, name: &str) {
        let mut inner = self.lock();
        if let Some(e) = inner.servers.remove(name) {
            inner.by_agent.remove(&e.view.record.agent_id);
            if let Some(s) = e.stream {
                s.close.cancel();
            }
            let _ = self.deltas.send(FleetDelta::Removed(name.to_string()));
        }
    }

    /// A report was durably stored: new record and health.
    pub fn put_report(&self, record: ServerRecord, health: Health) {
        let mut inner = self.lock();
        let Some(entry) = inner.servers.get_mut(&record.name) else {
            return;
        };
        // The hot path (every report): build the view from its parts, cloning nothing of the old one.
        let view = Arc::new(ServerView {
            record,
            health: Some(Arc::new(health)),
            apps: entry.view.apps.clone(),
            liveness: entry.view.liveness,
            liveness_since_ms: entry.view.liveness_since_ms,
        });
        entry.view = view.clone();
        let _ = self.deltas.send(FleetDelta::Upsert(view));
    }

    /// An apps report was durably stored: new record and apps state.
    pub fn put_apps(&self, record: ServerRecord, apps: AppsState) {
        let mut inner = self.lock();
        let Some(entry) = inner.servers.get_mut(&record.name) else {
            return;
        };
        let view = Arc::new(ServerView { record, apps: Some(Arc::new(apps)), ..(*entry.view).clone() });
        entry.view = view.clone();
        let _ = self.deltas.send(FleetDelta::Upsert(view));
    }

    /// Attaches a new stream, closing any previous one of the same server. Returns the connection id and
    /// the token that closes this stream (revocation, replacement, shutdown).
    pub fn attach(&self, name: &str, parent: &CancellationToken) -> Option<(u64, CancellationToken)> {
        let mut inner = self.lock();
        let conn_id = inner.next_conn;
        inner.next_conn += 1;
        let entry = inner.servers.get_mut(name)?;
        let close = parent.child_token();
        if let Some(old) = entry.stream.replace(Attached { conn_id, close: close.clone() }) {
            tracing::info!(server = name, old_conn = old.conn_id, "a new stream replaces the old one");
            old.close.cancel();
        }
        let view = Arc::new(ServerView {
            liveness: Liveness::Connected,
            liveness_since_ms: now_ms(),
            ..(*entry.view).clone()
        });
        entry.view = view.clone();
        let _ = self.deltas.send(FleetDelta::Upsert(view));
        Some((conn_id, close))
    }

    /// The stream `conn_id` ended. A newer stream of the same server is left alone.
    pub fn detach(&self, name: &str, conn_id: u64) {
        let mut inner = self.lock();
        let Some(entry) = inner.servers.get_mut(name) else {
            return;
        };
        if entry.stream.as_ref().map(|s| s.conn_id) != Some(conn_id) {
            return;
        }
        entry.stream = None;
        let view = Arc::new(ServerView {
            liveness: Liveness::Disconnected,
            liveness_since_ms: now_ms(),
            ..(*entry.view).clone()
        });
        entry.view = view.clone();
        let _ = self.deltas.send(FleetDelta::Upsert(view));
    }

    /// Whether `name`'s stream is attached here.
    pub fn is_attached(&self, name: &str) -> bool {
        self.lock().servers.get(name).is_some_and(|e| e.stream.is_some())
    }

    /// The servers whose stream is attached here.
    pub fn attached(&self) -> std::collections::HashSet<String> {
        self.lock().servers.iter().filter(|(_, e)| e.stream.is_some()).map(|(n, _)| n.clone()).collect()
    }

    /// A server as another hub of the same store sees it. A server whose stream is attached here keeps
    /// its live state (this hub is its authority) and takes only the record, when more than its progress
    /// changed; any other takes the whole view. Returns whether the server's stream is attached here.
    pub fn apply_remote(&self, record: ServerRecord, seen: RemoteView) -> bool {
        let RemoteView { health, apps, liveness, since_ms: since } = seen;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let name = record.name.clone();
        if let Some(old) = inner.servers.get(&name).map(|e| e.view.record.agent_id.clone())
            && old != record.agent_id
        {
            inner.by_agent.remove(&old);
        }
        if !record.agent_id.is_empty() {
            inner.by_agent.insert(record.agent_id.clone(), name.clone());
        }
        let entry = inner.servers.entry(name).or_insert_with(|| Entry {
            view: Arc::new(ServerView {
                record: record.clone(),
                liveness,
                liveness_since_ms: since,
                health: None,
                apps: None,
            }),
            stream: None,
        });
        let local = entry.stream.is_some();
        let view = if local {
            if entry.view.record.static_hash() == record.static_hash() {
                return true;
            }
            // Its stream is here: this hub's progress is the newest (what another hub wrote is its view).
            let mut record = record;
            let mine = &entry.view.record;
            if mine.agent_id == record.agent_id {
                (record.last_seq, record.reports_received) = (mine.last_seq, mine.reports_received);
                (record.last_seen_ms, record.last_report_ms) = (mine.last_seen_ms, mine.last_report_ms);
                record.first_seen_ms = mine.first_seen_ms;
            }
            ServerView { record, ..(*entry.view).clone() }
        } else {
            let health = health.map(Arc::new).or_else(|| entry.view.health.clone());
            let apps = apps.map(Arc::new).or_else(|| entry.view.apps.clone());
            ServerView { record, liveness, liveness_since_ms: since, health, apps }
        };
        let view = Arc::new(view);
        entry.view = view.clone();
        let _ = self.deltas.send(FleetDelta::Upsert(view));
        local
    }

    /// Every server's name.
    pub fn names(&self) -> Vec<String> {
        self.lock().servers.keys().cloned().collect()
    }

    /// Closes the live stream of `name`, if any (revocation, re-enrollment). Returns how many were closed.
    pub fn close_server(&self, name: &str) -> usize {
        let inner = self.lock();
        match inner.servers.get(name).and_then(|e| e.stream.as_ref()) {
            Some(s) => {
                s.close.cancel();
                1
            }
            None => 0,
        }
    }

    /// Promotes `Disconnected` servers whose grace has passed to `Lost`. Called on a timer.
    pub fn sweep(&self) {
        let now = now_ms();
        let grace = self.grace.as_millis() as i64;
        let mut inner = self.lock();
        for entry in inner.servers.values_mut() {
            if entry.view.liveness == Liveness::Disconnected && now - entry.view.liveness_since_ms >= grace {
                let view =
                    Arc::new(ServerView { liveness: Liveness::Lost, liveness_since_ms: now, ..(*entry.view).clone() });
                entry.view = view.clone();
                let _ = self.deltas.send(FleetDelta::Upsert(view));
            }
        }
    }

    /// How often [`Registry::sweep`] must run for `Lost` to appear within 10 % of the grace.
    pub fn sweep_every(&self) -> Duration {
        (self.grace / 10).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, agent: &str) -> ServerRecord {
        ServerRecord { name: name.into(), agent_id: agent.into(), ..Default::default() }
    }

    /// Another hub's write of a server whose stream is here changes its labels, not its progress (that
    /// hub's copy is up to a second behind).
    #[test]
    fn another_hubs_write_keeps_the_progress_of_a_stream_held_here() {
        let reg = Registry::new(vec![rec("a", "x")], |_| (None, None), Duration::from_secs(60));
        let (_conn, _close) = reg.attach("a", &CancellationToken::new()).unwrap();
        let mut mine = rec("a", "x");
        (mine.last_seq, mine.reports_received) = (10, 10);
        reg.put_report(mine, Health::default());
        let mut theirs = rec("a", "x");
        theirs.labels.insert("tier".into(), "gold".into());
        (theirs.last_seq, theirs.reports_received) = (7, 7);
        let connected = RemoteView { health: None, apps: None, liveness: Liveness::Connected, since_ms: 0 };
        assert!(reg.apply_remote(theirs, connected), "held here");
        let v = reg.get("a").unwrap();
        assert_eq!((v.record.labels.get("tier").map(String::as_str), v.record.last_seq), (Some("gold"), 10));
        assert_eq!(v.record.reports_received, 10);
    }

    #[test]
    fn liveness_moves_connected_disconnected_lost() {
        let reg = Registry::new(vec![rec("a", "x")], |_| (None, None), Duration::from_millis(0));
        let root = CancellationToken::new();
        assert_eq!(reg.get("a").unwrap().liveness, Liveness::Pending, "enrolled, never seen: pending");
        let (conn, _close) = reg.attach("a", &root).unwrap();
        assert_eq!(reg.get("a").unwrap().liveness, Liveness::Connected);
        reg.sweep();
        assert_eq!(reg.get("a").unwrap().liveness, Liveness::Connected, "connected never goes lost");
        reg.detach("a", conn);
        assert_eq!(reg.get("a").unwrap().liveness, Liveness::Disconnected);
        reg.sweep();
        assert_eq!(reg.get("a").unwrap().liveness, Liveness::Lost);
    }

    #[test]
    fn a_new_stream_closes_the_old_and_old_detach_is_ignored() {
        let reg = Registry::new(vec![rec("a", "x")], |_| (None, None), Duration::from_secs(60));
        let root = CancellationToken::new();
        let (c1, close1) = reg.attach("a", &root).unwrap();
        let (_c2, close2) = reg.attach("a", &root).unwrap();
        assert!(close1.is_cancelled() && !close2.is_cancelled());
        reg.detach("a", c1);
        assert_eq!(reg.get("a").unwrap().liveness, Liveness::Connected);
    }

    #[test]
    fn revocation_closes_only_matching_streams() {
        let reg = Registry::new(vec![rec("a", "x"), rec("b", "y")], |_| (None, None), Duration::from_secs(60));
        let root = CancellationToken::new();
        let (_, ca) = reg.attach("a", &root).unwrap();
        let (_, cb) = reg.attach("b", &root).unwrap();
        assert_eq!(reg.close_server("a"), 1);
        assert!(ca.is_cancelled() && !cb.is_cancelled());
    }

    #[test]
    fn after_a_restart_liveness_tells_what_happened() {
        let now = now_ms();
        let seen = |name: &str, ago_ms: i64| ServerRecord { last_seen_ms: now - ago_ms, ..rec(name, name) };
        let reg = Registry::new(
            vec![seen("recent", 1_000), seen("gone", 600_000)],
            |_| (None, None),
            Duration::from_secs(120),
        );
        let recent = reg.get("recent").unwrap();
        assert_eq!((recent.liveness, recent.liveness_since_ms), (Liveness::Disconnected, now - 1_000));
        let gone = reg.get("gone").unwrap();
        assert_eq!((gone.liveness, gone.liveness_since_ms), (Liveness::Lost, now - 600_000 + 120_000));
        // Enrollment alone does not move a pending server: its first stream does.
        reg.put_record(rec("new", ""));
        reg.put_record(rec("new", "agent-1"));
        assert_eq!(reg.get("new").unwrap().liveness, Liveness::Pending);
    }

    #[test]
    fn offline_time_counts_from_the_last_report_through_disconnected_and_lost() {
        let seen = now_ms() - 5_000;
        let reg =
            Registry::new(vec![ServerRecord { last_seen_ms: seen, ..rec("a", "x") }], |_| (None, None), Duration::ZERO);
        let root = CancellationToken::new();
        let (conn, _) = reg.attach("a", &root).unwrap();
        assert_eq!(reg.get("a").unwrap().offline_since_ms(), None);
        reg.detach("a", conn);
        let disconnected = reg.get("a").unwrap();
        assert_eq!((disconnected.liveness, disconnected.offline_since_ms()), (Liveness::Disconnected, Some(seen)));
        reg.sweep();
        let lost = reg.get("a").unwrap();
        assert_eq!(lost.liveness, Liveness::Lost);
        assert!(lost.liveness_since_ms > seen, "the liveness restarted at the sweep");
        assert_eq!(lost.offline_since_ms(), Some(seen), "the offline time did not");
        reg.put_record(rec("new", "agent-1"));
        let pending = reg.get("new").unwrap();
        assert_eq!(pending.offline_since_ms(), Some(pending.liveness_since_ms));
    }

    #[test]
    fn watch_sees_every_change_after_its_snapshot() {
        let reg = Registry::new(vec![rec("a", "x")], |_| (None, None), Duration::from_secs(60));
        let (snap, mut rx) = reg.watch();
        assert_eq!(snap.len(), 1);
        reg.put_record(rec("b", ""));
        match rx.try_recv().unwrap() {
            FleetDelta::Upsert(v) => assert_eq!((v.record.name.as_str(), v.liveness), ("b", Liveness::Pending)),
            other => panic!("{other:?}"),
        }
    }
}
