//! Several hubs on one PostgreSQL: each replica's fleet view follows what the others write.
//!
//! Invariants (ARCHITECTURE.md, "Several hubs"; tested in `tests/e2e/replicas.rs`):
//! - A server's agent has at most one stream that counts: the replica that attached it last says so in
//!   the store (`holder`); a replica that sees a newer holder for a stream it has closes its own.
//! - Every replica shows every server: a replica applies every server written after the version it last
//!   saw (reports included), at least once a second and at once when another replica notifies it.
//!   A server held by another live replica is `connected`; by a replica whose heartbeat stopped
//!   ([`DEAD_AFTER_MS`]), or by none, it is disconnected since its agent was last seen, then lost.
//! - A revocation (of an agent or an operator) made on one replica is in force on every replica within a
//!   second: the record is applied (its stream closed) and the revoked serials and operators reloaded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::v1::{AppsState, HistoryPoint};
use prost::Message as _;

use crate::fleet::Fleet;
use crate::fleet::identities::Identities;
use crate::fleet::registry::{Liveness, RemoteView};
use crate::pki::operators::Operators;
use crate::runtime::Runtime;
use crate::store::postgres::{PgStore, Replica};

/// How often a replica looks even when nobody notified it, and beats its heart.
pub const BEAT: Duration = Duration::from_secs(1);
/// A replica whose heartbeat is older than this is gone: the streams it held are not connected.
pub const DEAD_AFTER_MS: i64 = 5_000;
/// A replica silent this long is dead: its pending commands and plans are taken over. Longer than
/// [`DEAD_AFTER_MS`]: a replica cut off from the database for a few seconds keeps its jobs.
pub const TAKE_OVER_AFTER_MS: i64 = 15_000;
/// Changes applied per look at most.
const BATCH: i64 = 20_000;
/// The revoked serials and operators are read again this often even without a notification.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

pub struct Replication {
    store: Arc<PgStore>,
    /// This replica's id (unique per process) and address.
    me: String,
    url: String,
    started_ms: i64,
    fleet: Arc<Fleet>,
    identities: Arc<Identities>,
    operators: Arc<Operators>,
    actions: Arc<crate::actions::Actions>,
    grace_ms: i64,
    placement: Arc<Placement>,
}

/// Which replica each server's stream is on, as this replica last saw it (servers on this replica, and
/// servers on none, are not listed).
#[derive(Default)]
pub struct Placement {
    inner: std::sync::Mutex<(HashMap<String, String>, HashMap<String, String>)>,
}

impl Placement {
    /// The replica (id, address) `server`'s stream is on, when it is on another live one.
    pub fn replica_of(&self, server: &str) -> Option<(String, String)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = inner.0.get(server)?;
        Some((id.clone(), inner.1.get(id)?.clone()))
    }

    fn set(&self, held: &HashMap<String, String>, urls: HashMap<String, String>) {
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = (held.clone(), urls);
    }
}

/// What the loop keeps between looks.
#[derive(Default)]
struct State {
    /// The highest version applied; and the one before the last look (changes are read again from there:
    /// a transaction that took an earlier version may commit after a later one).
    seen: i64,
    from: i64,
    /// Version applied per server (skips what was read again unchanged).
    applied: HashMap<String, i64>,
    /// Streams this replica said it holds.
    published: HashSet<String>,
    /// Servers shown connected through another replica, with it.
    remote: HashMap<String, String>,
    heartbeats: HashMap<String, i64>,
}

/// What a replica's loop is built from.
pub struct ReplicationParts {
    pub store: Arc<PgStore>,
    /// This replica's id, and the URL other replicas reach it at.
    pub me: String,
    pub url: String,
    pub fleet: Arc<Fleet>,
    pub identities: Arc<Identities>,
    pub operators: Arc<Operators>,
    pub actions: Arc<crate::actions::Actions>,
    /// How long a server's stream may be gone before it counts as lost.
    pub grace: Duration,
}

impl Replication {
    pub fn new(parts: ReplicationParts) -> Replication {
        let ReplicationParts { store, me, url, fleet, identities, operators, actions, grace } = parts;
        let started_ms = outpost_common::now_ms();
        let grace_ms = grace.as_millis() as i64;
        let placement = Arc::default();
        Replication { store, me, url, started_ms, fleet, identities, operators, actions, grace_ms, placement }
    }

    /// Where the other replicas' streams are (kept up to date by the loop).
    pub fn placement(&self) -> Arc<Placement> {
        self.placement.clone()
    }

    pub fn spawn(self: Arc<Self>, rt: &Runtime) {
        let stop = rt.stopping().clone();
        // The heartbeat beats on its own: a look can take seconds (thousands of changes to apply, a busy
        // database), and a heartbeat that waited for it made the other replicas count this one's streams
        // gone, half the fleet at a time (measured: 10,000 agents at 1 s on two replicas).
        let (beats_tx, beats) = tokio::sync::watch::channel(None);
        let beating = self.clone();
        let beat_stop = stop.clone();
        rt.spawn(async move {
            while !beat_stop.is_cancelled() {
                let read_at = outpost_common::now_ms();
                match beating.store.heartbeat(&beating.me, &beating.url, beating.started_ms, read_at).await {
                    Ok(replicas) => {
                        beats_tx.send_replace(Some((read_at, replicas)));
                    }
                    Err(error) => tracing::warn!(%error, "replication: the heartbeat failed; trying again"),
                }
                tokio::select! {
                    () = beat_stop.cancelled() => break,
                    () = tokio::time::sleep(BEAT) => {}
                }
            }
        });
        rt.spawn(async move {
            let mut state = State::default();
            let mut listen = None;
            let mut last_reload = std::time::Instant::now();
            while !stop.is_cancelled() {
                if listen.is_none() {
                    match self.store.listen().await {
                        Ok(rx) => listen = Some(rx),
                        Err(error) => {
                            tracing::warn!(%error, "cannot listen for other replicas' changes; looking every second")
                        }
                    }
                }
                let mut what = HashSet::new();
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(BEAT) => {}
                    w = async { listen.as_mut().expect("checked").recv().await }, if listen.is_some() => match w {
                        Some(w) => { what.insert(w); }
                        None => listen = None,
                    },
                }
                while let Some(w) = listen.as_mut().and_then(|l| l.try_recv().ok()) {
                    what.insert(w);
                }
                let reload = last_reload.elapsed() >= RELOAD_EVERY;
                let beat = beats.borrow().clone();
                if let Err(error) = self.look(&mut state, &what, reload, beat).await {
                    tracing::warn!(%error, "replication: a look at the store failed; trying again");
                } else if reload {
                    last_reload = std::time::Instant::now();
                }
            }
            // Going away: the streams this replica held are not held any more.
            let held: Vec<String> = state.published.into_iter().collect();
            let _ = self.store.hold_streams(&self.me, &[], &held, outpost_common::now_ms()).await;
        });
    }

    /// One look: the replicas as the latest heartbeat read them (`beat`: when, and what; none yet: read
    /// here), the streams held here, the servers changed, revocations.
    async fn look(
        &self,
        state: &mut State,
        what: &HashSet<String>,
        reload: bool,
        beat: Option<(i64, Vec<Replica>)>,
    ) -> Result<(), crate::store::StoreError> {
        let now = outpost_common::now_ms();
        // Another replica's heartbeat is judged by its age when it was read, not now: a late look (or a
        // heartbeat of ours stuck in a busy database) must not declare live replicas dead.
        let (read_at, replicas) = match beat {
            Some(beat) => beat,
            None => (now, self.store.heartbeat(&self.me, &self.url, self.started_ms, now).await?),
        };
        // A replica silent for long enough is dead: its jobs are taken over (by one replica: the claim is
        // atomic), then it is forgotten.
        for dead in replicas.iter().filter(|r| r.id != self.me && read_at - r.heartbeat_ms >= TAKE_OVER_AFTER_MS) {
            let taken = self.actions.take_over(&dead.id).await?;
            self.store.forget_replica(&dead.id).await?;
            tracing::warn!(replica = %dead.id, commands = taken, "a replica stopped beating; its jobs are taken over");
        }
        let urls = replicas
            .iter()
            .filter(|r| r.id != self.me && read_at - r.heartbeat_ms < DEAD_AFTER_MS)
            .map(|r| (r.id.clone(), r.url.clone()))
            .collect();
        state.heartbeats = replicas.into_iter().map(|r| (r.id, r.heartbeat_ms)).collect();

        let registry = self.fleet.registry();
        let attached = registry.attached();
        let take: Vec<String> = attached.difference(&state.published).cloned().collect();
        let release: Vec<String> = state.published.difference(&attached).cloned().collect();
        if !take.is_empty() || !release.is_empty() {
            self.store.hold_streams(&self.me, &take, &release, now).await?;
            state.published = attached;
        }

        let changes = self.store.changes_since(state.from, BATCH).await?;
        let top = changes.last().map_or(state.seen, |c| c.version.max(state.seen));
        // A full batch: no overlap next time, or a look could read the same batch again and again.
        let full = changes.len() as i64 == BATCH;
        let alive = |holder: &str| state.heartbeats.get(holder).is_some_and(|hb| read_at - hb < DEAD_AFTER_MS);
        for c in changes {
            if state.applied.get(&c.record.name) == Some(&c.version) {
                continue;
            }
            state.applied.insert(c.record.name.clone(), c.version);
            let name = c.record.name.clone();
            let remote = !c.holder.is_empty() && c.holder != self.me && alive(&c.holder);
            let liveness = if remote { (Liveness::Connected, c.holder_ms) } else { self.offline(&c.record, now) };
            let health = c.latest.and_then(|p| HistoryPoint::decode(p.as_slice()).ok()).and_then(|p| p.health);
            let apps = c.apps.and_then(|a| AppsState::decode(a.as_slice()).ok());
            let (revoked, holder, holder_ms) = (c.record.revoked_ms != 0, c.holder, c.holder_ms);
            let attached_since = registry.get(&name).map(|v| v.liveness_since_ms);
            let (liveness, since_ms) = liveness;
            if registry.apply_remote(c.record, RemoteView { health, apps, liveness, since_ms }) {
                // This replica's stream: closed when the identity was revoked elsewhere, or when the agent
                // attached to another replica after it attached here.
                let newer = remote && attached_since.is_some_and(|since| holder_ms > since);
                if revoked || newer {
                    tracing::info!(server = %name, %holder, revoked, "closing a stream another replica superseded");
                    registry.close_server(&name);
                }
                state.remote.remove(&name);
            } else if remote {
                state.remote.insert(name, holder);
            } else {
                state.remote.remove(&name);
            }
        }
        (state.from, state.seen) = if full { (top, top) } else { (state.seen, top) };

        // Streams held by a replica that stopped beating: not connected any more.
        let gone: Vec<String> = state.remote.iter().filter(|(_, h)| !alive(h)).map(|(s, _)| s.clone()).collect();
        for name in gone {
            state.remote.remove(&name);
            if let Some(v) = registry.get(&name) {
                let (liveness, since_ms) = self.offline(&v.record, now);
                registry.apply_remote(v.record.clone(), RemoteView { health: None, apps: None, liveness, since_ms });
            }
        }

        self.placement.set(&state.remote, urls);

        if what.contains("removed") || reload {
            let stored: HashSet<String> = self.store.server_names().await?.into_iter().collect();
            for name in registry.names().into_iter().filter(|n| !stored.contains(n)) {
                registry.remove(&name);
                state.applied.remove(&name);
            }
        }
        if what.contains("revoked") || reload {
            self.identities.reload_revoked().await?;
        }
        if what.contains("operators") || reload {
            let new = self.operators.reload().await?;
            if new > 0 {
                tracing::info!(new, "operator revocations made on another replica are in force here");
            }
        }
        Ok(())
    }

    /// The liveness of a server no live replica holds: from when its agent was last seen.
    fn offline(&self, r: &crate::store::ServerRecord, now: i64) -> (Liveness, i64) {
        match r.last_seen_ms {
            _ if r.agent_id.is_empty() => (Liveness::Pending, r.created_ms.max(0)),
            0 => (Liveness::Pending, now),
            seen if now - seen >= self.grace_ms => (Liveness::Lost, seen + self.grace_ms),
            seen => (Liveness::Disconnected, seen),
        }
    }
}
