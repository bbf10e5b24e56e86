//! The `:jobs` screen: the hub's lifecycle job queue (provision, deprovision, ...), refreshed every second
//! while it is open, and one job's steps.

use outpost_common::text::inert;
use outpost_proto::v1 as pb;

use super::{App, Request, Screen};

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
fn inert_job(j: &mut pb::LifecycleJob) {
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

impl App {
    pub fn apply_queue(&mut self, mut r: pb::ListLifecycleJobsResponse) {
        r.jobs.iter_mut().for_each(inert_job);
        self.queue.jobs = r.jobs;
        self.queue.stats = r.stats.unwrap_or_default();
        self.queue.loaded = true;
    }

    pub(super) fn open_queue(&mut self) {
        self.screen = Screen::Queue;
        self.detail = None;
        self.requests.push(Request::Queue);
    }

    /// `:provision CUSTOMER PLAN [LOCATION]` and `:cancel JOB`: admin only; the hub checks again.
    pub(super) fn queue_command(&mut self, cmd: &str) {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if self.role != "admin" {
            return self.say(format!(":{} needs role admin (you are {})", words[0], self.role), true);
        }
        match words.as_slice() {
            ["provision", customer, plan] | ["provision", customer, plan, _] => {
                let location = words.get(3).map(|l| l.to_string()).unwrap_or_default();
                self.requests.push(Request::Provision {
                    customer: customer.to_string(),
                    plan: plan.to_string(),
                    location,
                });
                self.open_queue();
            }
            ["cancel", id] => match id.parse() {
                Ok(id) => self.requests.push(Request::CancelQueueJob(id)),
                Err(_) => self.say(format!("{id:?} is not a job id (see :jobs)"), true),
            },
            ["provision", ..] => self.say("usage: :provision CUSTOMER PLAN [LOCATION]", true),
            _ => self.say("usage: :cancel JOB (a job id from :jobs)", true),
        }
    }

    /// Called every second: an open queue screen is refreshed.
    pub fn tick(&mut self) {
        if matches!(self.screen, Screen::Queue | Screen::QueueJob(_)) {
            self.requests.push(Request::Queue);
        }
        self.tick_alerts();
    }
}
