//! What each screen keeps besides the fleet: the job being run (the actions menu, its argument form, the
//! typed confirmation), the alerts, the lifecycle queue and a customer's usage. Plain data and their own
//! methods; how `App` opens and drives each screen is in the file named after it. A leaf of `state`.

use std::collections::{BTreeMap, VecDeque};

use outpost_common::actions;
use outpost_common::text::inert;
use outpost_proto::v1 as pb;

// The job being run: the actions menu, its argument form, the typed confirmation (`actions.rs`).
/// Output lines kept on the job screen.
const JOB_LINES: usize = 2000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Menu {
    pub targets: Vec<String>,
    /// Catalog actions the operator's role allows.
    pub items: Vec<&'static str>,
    pub cursor: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgsForm {
    pub action: &'static str,
    pub targets: Vec<String>,
    /// (argument, value as typed)
    pub fields: Vec<(&'static str, String)>,
    pub at: usize,
    /// Values worth offering per argument (ctrl-n / ctrl-p cycle through them): the units every agent
    /// allows, and for `logs` the files all the targets report in their `log_files`.
    pub choices: BTreeMap<&'static str, Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirm {
    pub action: &'static str,
    pub targets: Vec<String>,
    pub args: BTreeMap<String, String>,
    pub typed: String,
}

impl Confirm {
    /// What must be typed: the server name, or the number of servers.
    pub fn expected(&self) -> String {
        actions::confirmation(&self.targets)
    }
}

/// The job the operator started from this console, as it streams in.
#[derive(Clone, Debug, Default)]
pub struct JobView {
    pub action: String,
    pub targets: Vec<String>,
    pub job_id: String,
    pub progress: pb::JobProgress,
    /// `server | line`, oldest first.
    pub lines: VecDeque<String>,
    /// (server, outcome word, message), in the order they ended.
    pub results: Vec<(String, &'static str, String)>,
    /// The hub refused the request (the message says why).
    pub error: Option<String>,
    pub cancelling: bool,
}

impl JobView {
    pub fn finished(&self) -> bool {
        self.progress.finished || self.error.is_some()
    }

    pub(super) fn push_line(&mut self, line: String) {
        self.lines.push_back(line);
        while self.lines.len() > JOB_LINES {
            self.lines.pop_front();
        }
    }
}

// The alerts (`alerts.rs`).
/// Seconds between polls while the screen is closed (the header's count); every second while open.
pub(super) const POLL_SECS: u64 = 5;

#[derive(Clone, Debug, Default)]
pub struct AlertsPage {
    pub alerts: Vec<pb::AlertInfo>,
    pub loaded: bool,
    pub(super) ticks: u64,
}

impl AlertsPage {
    pub fn firing(&self) -> usize {
        self.alerts.iter().filter(|a| a.state == "firing").count()
    }

    /// The alerts of one server, firing first.
    pub fn of_server(&self, server: &str) -> Vec<&pb::AlertInfo> {
        self.alerts.iter().filter(|a| a.labels.get("server").is_some_and(|s| s == server)).collect()
    }

    /// One line for a server's or an app's screen: `▲ disk_full firing 3m · …`, or that none fire.
    pub fn line(alerts: &[&pb::AlertInfo], now_ms: i64) -> String {
        if alerts.is_empty() {
            return "none".into();
        }
        alerts
            .iter()
            .map(|a| {
                let l = |k: &str| a.labels.get(k).cloned().unwrap_or_default();
                let symbol = match l("severity").as_str() {
                    "critical" => "✖",
                    "warning" => "▲",
                    _ => "●",
                };
                let secs = (now_ms - a.since_ms).max(0) / 1000;
                let state = if a.silenced_by.is_empty() { a.state.as_str() } else { "silenced" };
                let app = a.labels.get("app").map(|a| format!(" ({a})")).unwrap_or_default();
                format!("{symbol} {}{app} {} {state} {}m", l("alertname"), l("severity"), secs / 60)
            })
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

// The lifecycle queue (`queue.rs`).
/// The queue as last loaded; the cursor is kept by job id.
#[derive(Clone, Debug, Default)]
pub struct QueuePage {
    pub jobs: Vec<pb::LifecycleJob>,
    pub stats: pb::QueueStats,
    pub loaded: bool,
    selected: Option<u64>,
}

impl QueuePage {
    pub fn cursor(&self) -> usize {
        self.selected.and_then(|id| self.jobs.iter().position(|j| j.id == id)).unwrap_or(0)
    }

    pub fn selected(&self) -> Option<&pb::LifecycleJob> {
        self.jobs.get(self.cursor())
    }

    pub fn job(&self, id: u64) -> Option<&pb::LifecycleJob> {
        self.jobs.iter().find(|j| j.id == id)
    }

    pub(super) fn move_by(&mut self, delta: isize) {
        if self.jobs.is_empty() {
            return;
        }
        let at = self.cursor().saturating_add_signed(delta).min(self.jobs.len() - 1);
        self.selected = Some(self.jobs[at].id);
    }
}

/// Job text comes from the hub, the cloud and (in progress lines) agents: inert before it is kept.
pub(super) fn inert_job(j: &mut pb::LifecycleJob) {
    for f in
        [&mut j.target, &mut j.customer, &mut j.progress, &mut j.error, &mut j.submitted_by, &mut j.kind, &mut j.state]
    {
        *f = inert(f).into_owned();
    }
    for s in &mut j.steps {
        s.name = inert(&s.name).into_owned();
        s.message = inert(&s.message).into_owned();
    }
    j.params = std::mem::take(&mut j.params)
        .into_iter()
        .map(|(k, v)| (inert(&k).into_owned(), inert(&v).into_owned()))
        .collect();
}

// A customer's usage (`usage.rs`).
#[derive(Clone, Debug, Default)]
pub struct UsagePage {
    pub customer: String,
    /// Empty: this month (the hub's).
    pub month: String,
    pub data: Option<pb::GetUsageResponse>,
}
