//! The console's model, fed by hub events and keys. No ratatui here: everything is tested without a
//! terminal. Rows are kept by name, so the selection follows the server, not the row number, whatever
//! deltas arrive.

pub mod actions;
pub mod filter;
pub mod keymap;

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::format::{disk_pct, k3s_word, liveness, mem_pct, needs_attention, status_word};
use outpost_proto::v1::{FleetEvent, Health, Liveness, Server, ServerDetail, fleet_event};

pub use actions::{ArgsForm, Confirm, JobView, Menu};
pub use filter::Filter;
pub use keymap::{Action, Key};

/// History points kept for the open server (the hub keeps 360 by default: an hour at 10 s).
pub const DETAIL_POINTS: usize = 360;
/// Liveness/certificate events remembered per server.
const EVENTS_PER_SERVER: usize = 20;

/// The link to the hub, as the operator should see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conn {
    Connecting,
    Live,
    /// Lost the hub; the last known state stays on screen.
    Reconnecting {
        error: String,
        retry_in_ms: u64,
    },
}

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
    Version,
    Cert,
    Seen,
}

impl Column {
    /// In the order the fleet table shows them (left to right), so `s` walks the screen.
    pub const ALL: [Column; 12] = [
        Column::Name,
        Column::Status,
        Column::Cpu,
        Column::Mem,
        Column::Disk,
        Column::Customer,
        Column::Plan,
        Column::Seen,
        Column::K3s,
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
            Column::Version => "VERSION",
            Column::Cert => "CERT",
            Column::Seen => "SEEN",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Screen {
    Fleet,
    Server(String),
    /// The job this console started: progress, results, streamed output.
    Job,
    Audit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter (applied live as it parses).
    Filter(String),
    /// Typing a `:` command.
    Command(String),
    Help,
    /// Choosing an action for the targets.
    Actions(Menu),
    /// Entering its arguments.
    Args(ArgsForm),
    /// Typing the target (or count) to run a destructive action.
    Confirm(Confirm),
}

/// A line for the operator at the bottom of the screen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

/// The open server's chart data.
#[derive(Clone, Debug, Default)]
pub struct Detail {
    pub name: String,
    /// (unix ms, health), oldest first.
    pub points: VecDeque<(i64, Health)>,
    pub loaded: bool,
    last_seq: u64,
}

/// What the model asks of the hub connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Detail(String),
    Run(Box<outpost_proto::v1::RunActionRequest>),
    CancelJob(String),
    Audit,
}

pub const COMMANDS: [(&str, &str); 6] = [
    ("servers", "the fleet view"),
    ("alerts", "alerts"),
    ("audit", "the audit log"),
    ("jobs", "provisioning jobs"),
    ("help", "keys and commands"),
    ("quit", "leave the console"),
];

#[derive(Debug)]
pub struct App {
    pub hub: String,
    pub operator: String,
    pub role: String,
    servers: HashMap<String, Server>,
    rows: Vec<String>,
    rows_dirty: bool,
    cursor: usize,
    selected: Option<String>,
    pub filter: Filter,
    pub sort: Column,
    pub descending: bool,
    pub screen: Screen,
    pub mode: Mode,
    pub paused: bool,
    held: Vec<fleet_event::Event>,
    pub conn: Conn,
    pub message: Option<Message>,
    pub detail: Option<Detail>,
    events: HashMap<String, VecDeque<(i64, String)>>,
    /// Kept per event (O(1)), not recounted per frame over the whole fleet.
    counts: Counts,
    /// Rows per page; the view sets it to what fits.
    pub page: usize,
    /// Drained by the event loop.
    pub requests: Vec<Request>,
    /// Servers marked in the fleet view for an action on all of them.
    pub marked: BTreeSet<String>,
    pub job: Option<JobView>,
    pub audit: Vec<outpost_proto::v1::AuditRecord>,
    pub audit_loaded: bool,
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

impl App {
    pub fn new(hub: &str, operator: &str, role: &str) -> App {
        App {
            hub: hub.into(),
            operator: operator.into(),
            role: role.into(),
            servers: HashMap::new(),
            rows: Vec::new(),
            rows_dirty: false,
            cursor: 0,
            selected: None,
            filter: Filter::default(),
            sort: Column::Name,
            descending: false,
            screen: Screen::Fleet,
            mode: Mode::Normal,
            paused: false,
            held: Vec::new(),
            conn: Conn::Connecting,
            message: None,
            detail: None,
            events: HashMap::new(),
            counts: Counts::default(),
            page: 20,
            requests: Vec::new(),
            marked: BTreeSet::new(),
            job: None,
            audit: Vec::new(),
            audit_loaded: false,
        }
    }

    /// A viewer sees no action and cannot run one.
    pub fn read_only(&self) -> bool {
        // An unknown role is treated as the least one.
        self.role.parse::<outpost_common::Role>().map_or(true, |r| r == outpost_common::Role::Viewer)
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.get(name)
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn events(&self, name: &str) -> impl DoubleEndedIterator<Item = &(i64, String)> {
        self.events.get(name).into_iter().flatten()
    }

    /// A hub event. While paused, events are held and applied in order on resume.
    pub fn apply(&mut self, e: FleetEvent, now_ms: i64) {
        let Some(mut e) = e.event else { return };
        match &mut e {
            fleet_event::Event::Snapshot(s) => s.servers.iter_mut().for_each(crate::inert::server),
            fleet_event::Event::Upsert(s) => crate::inert::server(s),
            fleet_event::Event::Removed(name) => *name = outpost_common::text::inert(name).into_owned(),
        }
        if self.paused {
            self.held.push(e);
            return;
        }
        self.apply_event(e, now_ms);
    }

    fn apply_event(&mut self, e: fleet_event::Event, now_ms: i64) {
        match e {
            fleet_event::Event::Snapshot(s) => {
                if s.part == 0 {
                    self.servers.clear();
                    self.counts = Counts::default();
                }
                for server in s.servers {
                    tally(&mut self.counts, &server, true);
                    if let Some(old) = self.servers.insert(server.name.clone(), server) {
                        tally(&mut self.counts, &old, false);
                    }
                }
                if let Some(d) = &self.detail {
                    // Reloaded after a reconnect: the snapshot may have moved on.
                    self.requests.push(Request::Detail(d.name.clone()));
                }
                self.rows_dirty = true;
            }
            fleet_event::Event::Removed(n) => {
                if let Some(old) = self.servers.remove(&n) {
                    tally(&mut self.counts, &old, false);
                }
                self.rows_dirty = true;
            }
            fleet_event::Event::Upsert(s) => {
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
                // By name with no filter, a known server's update moves no row: skip the rebuild (the
                // common case at 10k servers reporting every second).
                if !existed || self.sort != Column::Name || !self.filter.is_empty() {
                    self.rows_dirty = true;
                }
                if let Some(d) = self.detail.as_mut().filter(|d| d.name == s.name && s.last_seq > d.last_seq)
                    && let Some(h) = &s.health
                {
                    d.last_seq = s.last_seq;
                    d.points.push_back((s.last_seen_ms, h.clone()));
                    while d.points.len() > DETAIL_POINTS {
                        d.points.pop_front();
                    }
                }
                tally(&mut self.counts, &s, true);
                if let Some(old) = self.servers.insert(s.name.clone(), s) {
                    tally(&mut self.counts, &old, false);
                }
            }
        }
    }

    /// The open server's history, as the hub sent it.
    pub fn apply_detail(&mut self, d: ServerDetail) {
        let Some(mut server) = d.server else { return };
        crate::inert::server(&mut server);
        if self.detail.as_ref().is_none_or(|x| x.name != server.name) {
            return; // the operator moved on
        }
        let points = d.history.into_iter().filter_map(|p| p.health.map(|h| (p.taken_at_ms, h))).collect();
        self.detail = Some(Detail { name: server.name.clone(), points, loaded: true, last_seq: server.last_seq });
        tally(&mut self.counts, &server, true);
        if let Some(old) = self.servers.insert(server.name.clone(), server) {
            tally(&mut self.counts, &old, false);
        }
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

    /// Index of the selected row (after [`App::rows`]).
    pub fn cursor(&mut self) -> usize {
        self.rows();
        self.cursor
    }

    pub fn selected(&mut self) -> Option<String> {
        self.rows();
        self.selected.clone()
    }

    fn move_to(&mut self, i: usize) {
        self.rows();
        self.cursor = i.min(self.rows.len().saturating_sub(1));
        self.selected = self.rows.get(self.cursor).cloned();
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub(crate) fn say(&mut self, text: impl Into<String>, error: bool) {
        self.message = Some(Message { text: text.into(), error });
    }

    /// A key press. Returns false when the console should quit.
    pub fn key(&mut self, k: Key) -> bool {
        match self.mode.clone() {
            Mode::Help => {
                if keymap::lookup(k, false) == Some(Action::Quit) && k != Key::Char('q') {
                    return false;
                }
                self.mode = Mode::Normal;
                true
            }
            Mode::Filter(mut buf) => {
                match k {
                    Key::Enter => self.mode = Mode::Normal,
                    Key::Esc => {
                        self.set_filter("");
                        self.mode = Mode::Normal;
                    }
                    Key::Ctrl('c') => return false,
                    Key::Ctrl('u') => {
                        self.set_filter("");
                        self.mode = Mode::Filter(String::new());
                    }
                    Key::Backspace => {
                        buf.pop();
                        self.set_filter(&buf);
                        self.mode = Mode::Filter(buf);
                    }
                    Key::Char(c) => {
                        buf.push(c);
                        self.set_filter(&buf);
                        self.mode = Mode::Filter(buf);
                    }
                    _ => {}
                }
                true
            }
            Mode::Command(mut buf) => {
                match k {
                    Key::Enter => {
                        self.mode = Mode::Normal;
                        return self.run_command(buf.trim());
                    }
                    Key::Esc => self.mode = Mode::Normal,
                    Key::Ctrl('c') => return false,
                    Key::Tab => {
                        buf = match buf.strip_prefix("server ") {
                            Some(name) => format!(
                                "server {}",
                                longest_common(self.servers.keys().map(String::as_str), name.trim_start())
                            ),
                            None => complete(&buf),
                        };
                        self.mode = Mode::Command(buf);
                    }
                    Key::Ctrl('u') => self.mode = Mode::Command(String::new()),
                    Key::Backspace => {
                        buf.pop();
                        self.mode = Mode::Command(buf);
                    }
                    Key::Char(c) => {
                        buf.push(c);
                        self.mode = Mode::Command(buf);
                    }
                    _ => {}
                }
                true
            }
            Mode::Actions(m) => {
                self.menu_key(m, k);
                true
            }
            Mode::Args(f) => {
                self.args_key(f, k);
                true
            }
            Mode::Confirm(c) => {
                self.confirm_key(c, k);
                true
            }
            Mode::Normal => match keymap::lookup(k, self.screen == Screen::Fleet) {
                Some(a) => self.act(a),
                None => true,
            },
        }
    }

    fn set_filter(&mut self, text: &str) {
        match Filter::parse(text) {
            Ok(f) => {
                self.filter = f;
                self.rows_dirty = true;
                self.message = None;
            }
            Err(e) => {
                // Say what was typed and why it is wrong; show nothing rather than a stale match.
                self.filter = Filter::invalid(text);
                self.rows_dirty = true;
                self.say(format!("filter: {e}"), true);
            }
        }
    }

    pub fn act(&mut self, a: Action) -> bool {
        self.message = None;
        match a {
            Action::Up => self.move_to(self.cursor.saturating_sub(1)),
            Action::Down => self.move_to(self.cursor + 1),
            Action::PageUp => self.move_to(self.cursor.saturating_sub(self.page.max(1))),
            Action::PageDown => self.move_to(self.cursor + self.page.max(1)),
            Action::Top => self.move_to(0),
            Action::Bottom => self.move_to(usize::MAX),
            Action::Open => {
                if let Some(name) = self.selected() {
                    self.open(&name);
                }
            }
            Action::Back => match self.screen {
                Screen::Job | Screen::Audit => self.screen = Screen::Fleet,
                Screen::Server(_) => {
                    self.screen = Screen::Fleet;
                    self.detail = None;
                }
                Screen::Fleet if !self.filter.is_empty() => self.set_filter(""),
                Screen::Fleet => {}
            },
            Action::Filter => self.mode = Mode::Filter(self.filter.text().to_string()),
            Action::Command => self.mode = Mode::Command(String::new()),
            Action::Help => self.mode = Mode::Help,
            Action::TogglePause => {
                self.paused = !self.paused;
                if !self.paused {
                    let now = self.servers.values().map(|s| s.last_seen_ms).max().unwrap_or(0);
                    for e in std::mem::take(&mut self.held) {
                        self.apply_event(e, now);
                    }
                }
            }
            Action::SortNext => {
                let i = Column::ALL.iter().position(|c| *c == self.sort).unwrap_or(0);
                self.sort = Column::ALL[(i + 1) % Column::ALL.len()];
                // `S` reversed the column it was on, not every column after it.
                self.descending = false;
                self.rows_dirty = true;
            }
            Action::SortReverse => {
                self.descending = !self.descending;
                self.rows_dirty = true;
            }
            Action::Actions => self.open_actions(),
            Action::Mark => self.toggle_mark(),
            Action::CancelJob => self.cancel_job(),
            Action::Refresh if self.screen == Screen::Audit => self.open_audit(),
            Action::Refresh => {}
            Action::Quit => return false,
        }
        true
    }

    fn open(&mut self, name: &str) {
        self.screen = Screen::Server(name.to_string());
        self.detail = Some(Detail { name: name.to_string(), ..Detail::default() });
        self.requests.push(Request::Detail(name.to_string()));
    }

    fn run_command(&mut self, cmd: &str) -> bool {
        match cmd {
            "" => {}
            "servers" | "fleet" | "s" => {
                self.screen = Screen::Fleet;
                self.detail = None;
            }
            "quit" | "q" | "q!" => return false,
            "help" | "h" => self.mode = Mode::Help,
            "audit" => self.open_audit(),
            "job" | "jobs" if self.job.is_some() => self.screen = Screen::Job,
            "alerts" => {
                // The servers the header counts as alerts (lost, K3s failed, a disk ≥ 90 %).
                self.screen = Screen::Fleet;
                self.detail = None;
                self.set_filter("is:alert");
            }
            "jobs" => self.say(format!(":{cmd} is not served by this hub version yet"), true),
            other => match other.strip_prefix("server ").map(str::trim) {
                Some(name) if self.servers.contains_key(name) => self.open(name),
                Some(name) => self.say(format!("no server named {name:?}"), true),
                None => self.say(
                    format!(
                        "unknown command :{other}; try {}",
                        COMMANDS.iter().map(|(c, _)| format!(":{c}")).collect::<Vec<_>>().join(" ")
                    ),
                    true,
                ),
            },
        }
        true
    }
}

/// Adds (`add`) or removes one server's contribution to the counts.
fn tally(c: &mut Counts, s: &Server, add: bool) {
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

/// Completes a command prefix to the one command it names, or to the longest common prefix.
pub fn complete(prefix: &str) -> String {
    longest_common(COMMANDS.iter().map(|(c, _)| *c), prefix)
}

/// The one candidate starting with `prefix`, or the longest prefix all such candidates share.
fn longest_common<'a>(candidates: impl Iterator<Item = &'a str>, prefix: &str) -> String {
    let mut matches: Vec<&str> = candidates.filter(|c| c.starts_with(prefix)).collect();
    matches.sort_unstable();
    match matches.as_slice() {
        [] => prefix.to_string(),
        [one] => one.to_string(),
        many => {
            let first = many[0];
            let n = (0..first.len())
                .take_while(|&i| many.iter().all(|m| m.as_bytes().get(i) == first.as_bytes().get(i)))
                .count();
            first[..n].to_string()
        }
    }
}

#[cfg(test)]
mod tests;
