//! The console's model, fed by hub events and keys. No ratatui here: everything is tested without a
//! terminal. Rows are kept by name, so the selection follows the server, not the row number, whatever
//! deltas arrive.

mod actions;
mod alerts;
pub mod filter;
pub mod fleet;
pub mod keymap;
mod pages;
mod queue;
mod usage;

use std::collections::VecDeque;

use outpost_proto::v1::{FleetEvent, Health, Server, ServerDetail, fleet_event};

pub use filter::Filter;
pub use fleet::{Column, Counts, FleetTable};
pub use keymap::{Action, Key};
pub use pages::{AlertsPage, ArgsForm, Confirm, JobView, Menu, QueuePage, UsagePage};

/// History points kept for the open server (the hub keeps 360 by default: an hour at 10 s).
pub const DETAIL_POINTS: usize = 360;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Screen {
    Fleet,
    Server(String),
    /// The job this console started: progress, results, streamed output.
    Job,
    Audit,
    /// Every app on every server the fleet filter matches, failing ones first.
    Apps,
    /// One app on one server: its state and deployment history.
    App(String, String),
    /// The hub's lifecycle job queue (provision, deprovision, ...).
    Queue,
    /// One lifecycle job: its steps.
    QueueJob(u64),
    /// The hub's alerts, firing first.
    Alerts,
    /// A customer's month of usage against the plan (`:usage`).
    Usage,
    /// Agent rollouts: the fleet's agentd versions and each server's update (`:rollouts`).
    Rollouts,
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

impl Detail {
    /// A newer report of the open server extends its charts.
    fn follow(&mut self, s: &Server) {
        if s.last_seq <= self.last_seq {
            return;
        }
        if let Some(h) = &s.health {
            self.last_seq = s.last_seq;
            self.points.push_back((s.last_seen_ms, h.clone()));
            while self.points.len() > DETAIL_POINTS {
                self.points.pop_front();
            }
        }
    }
}

/// What the model asks of the hub connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Detail(String),
    Run(Box<outpost_proto::v1::RunActionRequest>),
    CancelJob(String),
    Audit,
    /// The lifecycle job queue.
    Queue,
    /// Queue a provision (admin).
    Provision {
        customer: String,
        plan: String,
        /// Empty: the hub's default (the customer's name).
        name: String,
        location: String,
    },
    /// Cancel a lifecycle job (admin).
    CancelQueueJob(u64),
    /// The hub's alerts.
    Alerts,
    /// Acknowledge alert `name` (on `server`, or every server's).
    Ack {
        name: String,
        server: String,
    },
    /// A customer's usage in `month` (empty: this month).
    Usage {
        customer: String,
        month: String,
    },
    /// Silence alert `name` on `server` for `secs` because `reason`.
    Silence {
        name: String,
        server: String,
        secs: u32,
        reason: String,
    },
}

pub const COMMANDS: [(&str, &str); 13] = [
    ("servers", "the fleet view"),
    ("apps", "every app on every server (the fleet filter applies), failing first"),
    ("rollouts", "agentd versions across the fleet and each server's update: phase, and why one rolled back"),
    ("alerts", "the hub's alerts, firing first (the fleet filter is:alert shows servers that need a look)"),
    ("usage", "usage [CUSTOMER [YYYY-MM]]: a customer's month against the plan, with its cost"),
    ("audit", "the audit log"),
    ("lifecycle", "lifecycle jobs: provision, deprovision, ... (:jobs too)"),
    ("provision", "provision CUSTOMER PLAN [NAME] [LOCATION]: a new server for a customer (admin)"),
    ("cancel", "cancel JOB: stop a lifecycle job; a provision undoes what it created (admin)"),
    ("ack", "ack ALERT [SERVER]: say you are on a firing alert (support+)"),
    ("silence", "silence ALERT SERVER DURATION REASON…: hold its notifications back (support+)"),
    ("help", "keys and commands"),
    ("quit", "leave the console"),
];

/// The `:apps` screen's cursor: which (server, app) is selected, kept by name so updates do not move it.
#[derive(Clone, Debug, Default)]
pub struct AppsPage {
    selected: Option<(String, String)>,
}

impl AppsPage {
    /// The selected row's index and (server, app) among the current rows.
    pub fn cursor(&self, fleet: &FleetTable) -> usize {
        let rows = fleet.apps();
        self.selected
            .as_ref()
            .and_then(|(s, a)| rows.iter().position(|(srv, app)| &srv.name == s && &app.name == a))
            .unwrap_or(0)
    }

    pub fn selected(&self, fleet: &FleetTable) -> Option<(String, String)> {
        let rows = fleet.apps();
        rows.get(self.cursor(fleet)).map(|(s, a)| (s.name.clone(), a.name.clone()))
    }

    fn move_by(&mut self, fleet: &FleetTable, delta: isize) {
        let rows = fleet.apps();
        if rows.is_empty() {
            return;
        }
        let at = self.cursor(fleet).saturating_add_signed(delta).min(rows.len() - 1);
        self.selected = Some((rows[at].0.name.clone(), rows[at].1.name.clone()));
    }
}

/// The audit screen: the newest records, as last loaded.
#[derive(Clone, Debug, Default)]
pub struct AuditPage {
    pub records: Vec<outpost_proto::v1::AuditRecord>,
    pub loaded: bool,
}

/// The whole console: who is connected to which hub, which screen and mode it is in, and each screen's
/// own state (the fleet table, the open server, the job, the audit page).
#[derive(Debug)]
pub struct App {
    pub hub: String,
    pub operator: String,
    pub role: String,
    pub screen: Screen,
    pub mode: Mode,
    pub conn: Conn,
    pub message: Option<Message>,
    /// Drained by the event loop.
    pub requests: Vec<Request>,
    pub fleet: FleetTable,
    pub detail: Option<Detail>,
    pub job: Option<JobView>,
    pub audit: AuditPage,
    pub apps_page: AppsPage,
    pub queue: QueuePage,
    pub alerts: AlertsPage,
    pub usage: UsagePage,
    /// App spec files offered in the app-apply form (as `@PATH`; Ctrl-n cycles): the demo's samples.
    pub spec_files: Vec<String>,
    /// The fleet CA's rotation, polled with the header's alerts (shown while one is in progress).
    pub ca_rotation: Option<outpost_proto::v1::CaRotationStatus>,
}

impl App {
    pub fn new(hub: &str, operator: &str, role: &str) -> App {
        App {
            hub: hub.into(),
            operator: operator.into(),
            role: role.into(),
            screen: Screen::Fleet,
            mode: Mode::Normal,
            conn: Conn::Connecting,
            message: None,
            requests: Vec::new(),
            fleet: FleetTable::default(),
            detail: None,
            job: None,
            audit: AuditPage::default(),
            apps_page: AppsPage::default(),
            queue: QueuePage::default(),
            alerts: AlertsPage::default(),
            usage: UsagePage::default(),
            spec_files: Vec::new(),
            ca_rotation: None,
        }
    }

    /// A message on the status line (what an embedder wants the operator to read first).
    pub fn notice(&mut self, text: impl Into<String>) {
        self.say(text, false);
    }

    /// A viewer sees no action and cannot run one.
    pub fn read_only(&self) -> bool {
        // An unknown role is treated as the least one.
        self.role.parse::<outpost_common::Role>().map_or(true, |r| r == outpost_common::Role::Viewer)
    }

    /// A hub event. While paused, events are held and applied in order on resume.
    pub fn apply(&mut self, e: FleetEvent, now_ms: i64) {
        let Some(mut e) = e.event else { return };
        match &mut e {
            fleet_event::Event::Snapshot(s) => s.servers.iter_mut().for_each(crate::inert::server),
            fleet_event::Event::Upsert(s) => crate::inert::server(s),
            fleet_event::Event::Removed(name) => *name = outpost_common::text::inert(name).into_owned(),
        }
        if self.fleet.paused {
            self.fleet.held.push(e);
            return;
        }
        self.apply_event(e, now_ms);
    }

    fn apply_event(&mut self, e: fleet_event::Event, now_ms: i64) {
        match e {
            fleet_event::Event::Snapshot(s) => {
                self.fleet.snapshot(s.servers, s.part == 0);
                if let Some(d) = &self.detail {
                    // Reloaded after a reconnect: the snapshot may have moved on.
                    self.requests.push(Request::Detail(d.name.clone()));
                }
            }
            fleet_event::Event::Removed(n) => self.fleet.remove(&n),
            fleet_event::Event::Upsert(s) => {
                if let Some(d) = self.detail.as_mut().filter(|d| d.name == s.name) {
                    d.follow(&s);
                }
                self.fleet.upsert(s, now_ms);
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
        self.fleet.replace(server);
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
                            Some(name) => format!("server {}", longest_common(self.fleet.names(), name.trim_start())),
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
            Mode::Normal => {
                match keymap::lookup(k, matches!(self.screen, Screen::Fleet | Screen::Apps | Screen::Queue)) {
                    Some(a) => self.act(a),
                    None => true,
                }
            }
        }
    }

    fn set_filter(&mut self, text: &str) {
        match Filter::parse(text) {
            Ok(f) => {
                self.fleet.set_filter(f);
                self.message = None;
            }
            Err(e) => {
                // Say what was typed and why it is wrong; show nothing rather than a stale match.
                self.fleet.set_filter(Filter::invalid(text));
                self.say(format!("filter: {e}"), true);
            }
        }
    }

    pub fn act(&mut self, a: Action) -> bool {
        self.message = None;
        if self.screen == Screen::Queue {
            match a {
                Action::Up => self.queue.move_by(-1),
                Action::Down => self.queue.move_by(1),
                Action::Top => self.queue.move_by(isize::MIN / 2),
                Action::Bottom => self.queue.move_by(isize::MAX / 2),
                Action::Open => {
                    if let Some(j) = self.queue.selected() {
                        self.screen = Screen::QueueJob(j.id);
                    }
                }
                Action::Refresh => self.requests.push(Request::Queue),
                _ => return self.act_common(a),
            }
            return true;
        }
        if self.screen == Screen::Apps {
            match a {
                Action::Up => {
                    self.apps_page.move_by(&self.fleet, -1);
                    return true;
                }
                Action::Down => {
                    self.apps_page.move_by(&self.fleet, 1);
                    return true;
                }
                Action::Top => {
                    self.apps_page.move_by(&self.fleet, isize::MIN / 2);
                    return true;
                }
                Action::Bottom => {
                    self.apps_page.move_by(&self.fleet, isize::MAX / 2);
                    return true;
                }
                Action::Open => {
                    if let Some((server, app)) = self.apps_page.selected(&self.fleet) {
                        self.screen = Screen::App(server, app);
                    }
                    return true;
                }
                Action::Mark | Action::SortNext | Action::SortReverse | Action::TogglePause => return true,
                _ => {}
            }
        }
        self.act_common(a)
    }

    fn act_common(&mut self, a: Action) -> bool {
        match a {
            Action::Up => self.fleet.move_by(-1),
            Action::Down => self.fleet.move_by(1),
            Action::PageUp => self.fleet.move_by(-(self.fleet.page.max(1) as isize)),
            Action::PageDown => self.fleet.move_by(self.fleet.page.max(1) as isize),
            Action::Top => self.fleet.move_to(0),
            Action::Bottom => self.fleet.move_to(usize::MAX),
            Action::Open => {
                if let Some(name) = self.fleet.selected() {
                    self.open(&name);
                }
            }
            Action::Back => match self.screen {
                Screen::Job
                | Screen::Audit
                | Screen::Apps
                | Screen::Queue
                | Screen::Alerts
                | Screen::Usage
                | Screen::Rollouts => self.screen = Screen::Fleet,
                Screen::App(..) => self.screen = Screen::Apps,
                Screen::QueueJob(_) => self.screen = Screen::Queue,
                Screen::Server(_) => {
                    self.screen = Screen::Fleet;
                    self.detail = None;
                }
                Screen::Fleet if !self.fleet.filter.is_empty() => self.set_filter(""),
                Screen::Fleet => {}
            },
            Action::Filter => self.mode = Mode::Filter(self.fleet.filter.text().to_string()),
            Action::Command => self.mode = Mode::Command(String::new()),
            Action::Help => self.mode = Mode::Help,
            Action::TogglePause => {
                self.fleet.paused = !self.fleet.paused;
                if !self.fleet.paused {
                    let now = self.fleet.newest_seen_ms();
                    for e in std::mem::take(&mut self.fleet.held) {
                        self.apply_event(e, now);
                    }
                }
            }
            Action::SortNext => self.fleet.sort_next(),
            Action::SortReverse => self.fleet.sort_reverse(),
            Action::Actions => self.open_actions(),
            Action::Mark => self.toggle_mark(),
            Action::CancelJob => self.cancel_job(),
            Action::Refresh if self.screen == Screen::Audit => self.open_audit(),
            Action::Refresh if self.screen == Screen::Alerts => self.requests.push(Request::Alerts),
            Action::Refresh if self.screen == Screen::Usage => self
                .requests
                .push(Request::Usage { customer: self.usage.customer.clone(), month: self.usage.month.clone() }),
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
            "apps" => {
                self.screen = Screen::Apps;
                self.detail = None;
            }
            "rollouts" => {
                self.screen = Screen::Rollouts;
                self.detail = None;
            }
            "job" if self.job.is_some() => self.screen = Screen::Job,
            "job" => self.say("no action job started from this console yet; :lifecycle lists lifecycle jobs", true),
            "lifecycle" | "jobs" => self.open_queue(),
            "alerts" => self.open_alerts(),
            other if other.starts_with("provision") || other.starts_with("cancel") => self.queue_command(other),
            other if other.starts_with("ack ") || other.starts_with("silence") => self.alert_command(other),
            other if other == "usage" || other.starts_with("usage ") => self.usage_command(other),
            other => match other.strip_prefix("server ").map(str::trim) {
                Some(name) if self.fleet.server(name).is_some() => self.open(name),
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
