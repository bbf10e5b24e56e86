//! The fleet screen's state: every server as the hub last told, the filtered and sorted rows, the cursor
//! (which follows the selected server, not the row number), marks, pause, and counts kept per event.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};

use outpost_proto::v1::{Health, Liveness, Server, fleet_event};

use super::filter::Filter;
use crate::format::{disk_pct, k3s_word, liveness, mem_pct, needs_attention, status_word};

/// Liveness/certificate events remembered per server.
const EVENTS_PER_SERVER: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Name,
    Customer,
    Plan,
    Status,
    Cpu,
    Mem,
    Disk,
    Load,
    K3s,
    Apps,
    Version,
    Cert,
    Seen,
}

impl Column {
    /// In the order the fleet table shows them (left to right), so `s` walks the screen.
    pub const ALL: [Column; 13] = [
        Column::Name,
        Column::Status,
        Column::Cpu,
        Column::Mem,
        Column::Disk,
        Column::Customer,
        Column::Plan,
        Column::Seen,
        Column::K3s,
        Column::Apps,
        Column::Load,
        Column::Version,
        Column::Cert,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Name => "NAME",
            Column::Customer => "CUSTOMER",
            Column::Plan => "PLAN",
            Column::Status => "STATUS",
            Column::Cpu => "CPU",
            Column::Mem => "MEM",
            Column::Disk => "DISK",
            Column::Load => "LOAD",
            Column::K3s => "K3S",
            Column::Apps => "APPS",
            Column::Version => "VERSION",
            Column::Cert => "CERT",
            Column::Seen => "SEEN",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub connected: usize,
    pub disconnected: usize,
    pub lost: usize,
    pub pending: usize,
    /// Servers that need a look: lost, K3s failed, or a disk over 90 %.
    pub alerts: usize,
}

/// What a server without a report compares as.
static NO_HEALTH: std::sync::LazyLock<Health> = std::sync::LazyLock::new(Health::default);

/// A row's sort key, computed once per rebuild (not per comparison).
#[derive(PartialEq, PartialOrd)]
enum SortKey<'a> {
    Num(f64),
    Int(i64),
    Text(&'a str),
}

fn sort_key(col: Column, s: &Server) -> SortKey<'_> {
    let h = s.health.as_ref().unwrap_or(&NO_HEALTH);
    let num = |v: Option<f64>| SortKey::Num(v.unwrap_or(-1.0));
    match col {
        Column::Name => SortKey::Int(0),
        Column::Customer => SortKey::Text(&s.customer),
        Column::Plan => SortKey::Text(&s.plan),
        // Worst first when descending: lost > disconnected > pending > connected.
        Column::Status => SortKey::Int(i64::from(status_rank(s))),
        Column::Cpu => num(s.health.as_ref().map(|h| f64::from(h.cpu_percent))),
        Column::Mem => num(mem_pct(h)),
        Column::Disk => num(disk_pct(h)),
        Column::Load => SortKey::Num(f64::from(h.load1)),
        Column::K3s => SortKey::Text(k3s_word(h)),
        // Most failing apps first when descending.
        Column::Apps => SortKey::Int(
            s.apps.as_ref().map_or(0, |a| a.apps.iter().filter(|x| crate::format::app_failing(x)).count() as i64),
        ),
        Column::Version => SortKey::Text(&s.agent_version),
        Column::Cert => SortKey::Int(s.cert_not_after),
        Column::Seen => SortKey::Int(s.last_seen_ms),
    }
}

fn status_rank(s: &Server) -> u8 {
    match liveness(s) {
        Liveness::Connected => 0,
        Liveness::Pending | Liveness::Unspecified => 1,
        Liveness::Disconnected => 2,
        Liveness::Lost => 3,
    }
}

#[derive(Debug)]
pub struct FleetTable {
    servers: HashMap<String, Server>,
    rows: Vec<String>,
    rows_dirty: bool,
    cursor: usize,
    selected: Option<String>,
    pub filter: Filter,
    pub sort: Column,
    pub descending: bool,
    /// Events are held (in order) while paused.
    pub paused: bool,
    pub(super) held: Vec<fleet_event::Event>,
    events: HashMap<String, VecDeque<(i64, String)>>,
    /// Kept per event (O(1)), not recounted per frame over the whole fleet.
    counts: Counts,
    /// Rows per page; the view sets it to what fits.
    pub page: usize,
    /// Servers marked for an action on all of them.
    pub marked: BTreeSet<String>,
}

impl Default for FleetTable {
    fn default() -> Self {
        FleetTable {
            servers: HashMap::new(),
            rows: Vec::new(),
            rows_dirty: false,
            cursor: 0,
            selected: None,
            filter: Filter::default(),
            sort: Column::Name,
            descending: false,
            paused: false,
            held: Vec::new(),
            events: HashMap::new(),
            counts: Counts::default(),
            page: 20,
            marked: BTreeSet::new(),
        }
    }
}

/// A server and the update its agent reports.
pub type ServerUpdate<'a> = (&'a Server, &'a outpost_proto::v1::UpdateStatus);

impl FleetTable {
    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.get(name)
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.servers.keys().map(String::as_str)
    }

    pub fn events(&self, name: &str) -> impl DoubleEndedIterator<Item = &(i64, String)> {
        self.events.get(name).into_iter().flatten()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The servers the filter matches by agentd version, newest first, and those reporting an update (under
    /// way first, then rolled back, then committed; by name within each).
    pub fn rollouts(&self) -> (Vec<(String, usize)>, Vec<ServerUpdate<'_>>) {
        let shown: Vec<&Server> = self.servers.values().filter(|s| self.filter.matches(s, status_word(s))).collect();
        let mut versions: std::collections::BTreeMap<String, usize> = Default::default();
        for s in &shown {
            *versions
                .entry(if s.agent_version.is_empty() { "unknown".into() } else { s.agent_version.clone() })
                .or_default() += 1;
        }
        let mut versions: Vec<(String, usize)> = versions.into_iter().collect();
        versions.sort_by_key(|(v, _)| std::cmp::Reverse(outpost_common::release::parse_version(v)));
        let rank = |p: &str| match p {
            "committed" => 2,
            "rolled_back" => 1,
            _ => 0,
        };
        let mut updates: Vec<ServerUpdate<'_>> =
            shown.into_iter().filter_map(|s| s.health.as_ref()?.update.as_ref().map(|u| (s, u))).collect();
        updates.sort_by(|a, b| rank(&a.1.phase).cmp(&rank(&b.1.phase)).then(a.0.name.cmp(&b.0.name)));
        (versions, updates)
    }

    /// Every app of every server the filter matches: (server, app), failing apps first, then by server and app.
    pub fn apps(&self) -> Vec<(&Server, &outpost_proto::v1::AppState)> {
        let mut out: Vec<(&Server, &outpost_proto::v1::AppState)> = self
            .servers
            .values()
            .flat_map(|s| s.apps.iter().flat_map(|a| a.apps.iter()).map(move |a| (s, a)))
            .filter(|(s, a)| self.filter.matches_app(s, status_word(s), a))
            .collect();
        out.sort_by(|a, b| {
            (!crate::format::app_failing(a.1), &a.0.name, &a.1.name).cmp(&(
                !crate::format::app_failing(b.1),
                &b.0.name,
                &b.1.name,
            ))
        });
        out
    }

    /// The latest time any server was seen (the clock for events applied on resume).
    pub fn newest_seen_ms(&self) -> i64 {
        self.servers.values().map(|s| s.last_seen_ms).max().unwrap_or(0)
    }

    /// One part of a snapshot (`first`: it replaces everything known).
    pub(super) fn snapshot(&mut self, servers: Vec<Server>, first: bool) {
        if first {
            self.servers.clear();
            self.counts = Counts::default();
        }
        for server in servers {
            self.replace(server);
        }
        self.rows_dirty = true;
    }

    pub(super) fn remove(&mut self, name: &str) {
        if let Some(old) = self.servers.remove(name) {
            tally(&mut self.counts, &old, false);
        }
        self.rows_dirty = true;
    }

    /// A server's new state, noting what changed in its recent events.
    pub(super) fn upsert(&mut self, s: Server, now_ms: i64) {
        let old = self.servers.get(&s.name);
        let existed = old.is_some();
        let notes = old.map(|old| changes(old, &s)).unwrap_or_default();
        if !notes.is_empty() {
            let log = self.events.entry(s.name.clone()).or_default();
            log.extend(notes.into_iter().map(|n| (now_ms, n)));
            while log.len() > EVENTS_PER_SERVER {
                log.pop_front();
            }
        }
        // By name with no filter, a known server's update moves no row: skip the rebuild (the common case at
        // 10k servers reporting every second).
        if !existed || self.sort != Column::Name || !self.filter.is_empty() {
            self.rows_dirty = true;
        }
        tally(&mut self.counts, &s, true);
        if let Some(old) = self.servers.insert(s.name.clone(), s) {
            tally(&mut self.counts, &old, false);
        }
    }

    /// Replaces a server's state (a snapshot part, a detail answer).
    pub(super) fn replace(&mut self, server: Server) {
        tally(&mut self.counts, &server, true);
        if let Some(old) = self.servers.insert(server.name.clone(), server) {
            tally(&mut self.counts, &old, false);
        }
        self.rows_dirty = true;
    }

    pub(super) fn set_filter(&mut self, f: Filter) {
        self.filter = f;
        self.rows_dirty = true;
    }

    pub(super) fn sort_next(&mut self) {
        let i = Column::ALL.iter().position(|c| *c == self.sort).unwrap_or(0);
        self.sort = Column::ALL[(i + 1) % Column::ALL.len()];
        // `S` reversed the column it was on, not every column after it.
        self.descending = false;
        self.rows_dirty = true;
    }

    pub(super) fn sort_reverse(&mut self) {
        self.descending = !self.descending;
        self.rows_dirty = true;
    }

    /// Filtered, sorted row names (rebuilt only after a change).
    pub fn rows(&mut self) -> &[String] {
        if self.rows_dirty {
            let col = self.sort;
            let mut rows: Vec<(SortKey, &str)> = self
                .servers
                .values()
                .filter(|s| self.filter.matches(s, status_word(s)))
                .map(|s| (sort_key(col, s), s.name.as_str()))
                .collect();
            // Keys never mix kinds within a column; NaN cannot occur (percentages of finite numbers).
            rows.sort_unstable_by(|a, b| {
                let o = a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal).then_with(|| a.1.cmp(b.1));
                if self.descending { o.reverse() } else { o }
            });
            self.rows = rows.into_iter().map(|(_, n)| n.to_string()).collect();
            self.rows_dirty = false;
            // Follow the selected server to its new row; if it is filtered out, stay at the same row.
            if let Some(i) = self.selected.as_ref().and_then(|sel| self.rows.iter().position(|r| r == sel)) {
                self.cursor = i;
            }
            self.cursor = self.cursor.min(self.rows.len().saturating_sub(1));
            self.selected = self.rows.get(self.cursor).cloned();
        }
        &self.rows
    }

    /// Index of the selected row.
    pub fn cursor(&mut self) -> usize {
        self.rows();
        self.cursor
    }

    pub fn selected(&mut self) -> Option<String> {
        self.rows();
        self.selected.clone()
    }

    pub(super) fn move_to(&mut self, i: usize) {
        self.rows();
        self.cursor = i.min(self.rows.len().saturating_sub(1));
        self.selected = self.rows.get(self.cursor).cloned();
    }

    pub(super) fn move_by(&mut self, delta: isize) {
        let at = self.cursor();
        self.move_to(at.saturating_add_signed(delta));
    }
}

/// Adds (`add`) or removes one server's contribution to the counts.
pub(super) fn tally(c: &mut Counts, s: &Server, add: bool) {
    let bump = |v: &mut usize| if add { *v += 1 } else { *v -= 1 };
    bump(&mut c.total);
    match liveness(s) {
        Liveness::Connected => bump(&mut c.connected),
        Liveness::Disconnected => bump(&mut c.disconnected),
        Liveness::Lost => bump(&mut c.lost),
        _ => bump(&mut c.pending),
    }
    if needs_attention(s) {
        bump(&mut c.alerts);
    }
}

/// What changed between two versions of a server that an operator would want in "recent events".
fn changes(old: &Server, new: &Server) -> Vec<String> {
    let mut notes = Vec::new();
    if old.liveness != new.liveness {
        notes.push(format!("{} → {}", status_word(old), status_word(new)));
    }
    if !old.cert_serial.is_empty() && old.cert_serial != new.cert_serial {
        notes.push("certificate renewed".to_string());
    }
    notes
}
