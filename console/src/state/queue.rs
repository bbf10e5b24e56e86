//! The `:lifecycle` screen: the hub's lifecycle job queue (provision, deprovision, ...), refreshed every second
//! while it is open, and one job's steps.

use super::pages::*;
use super::{App, Request, Screen};
use outpost_proto::v1 as pb;

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

    /// `:provision CUSTOMER PLAN [NAME] [LOCATION]` (NAME `-`: the hub's default, the customer's name) and
    /// `:cancel JOB`: admin only; the hub checks again.
    pub(super) fn queue_command(&mut self, cmd: &str) {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if self.role != "admin" {
            return self.say(format!(":{} needs role admin (you are {})", words[0], self.role), true);
        }
        match words.as_slice() {
            ["provision", customer, plan, rest @ ..] if rest.len() <= 2 => {
                let name = rest.first().filter(|n| **n != "-").map(|n| n.to_string()).unwrap_or_default();
                let location = rest.get(1).map(|l| l.to_string()).unwrap_or_default();
                self.requests.push(Request::Provision {
                    customer: customer.to_string(),
                    plan: plan.to_string(),
                    name,
                    location,
                });
                self.open_queue();
            }
            ["cancel", id] => match id.parse() {
                Ok(id) => self.requests.push(Request::CancelQueueJob(id)),
                Err(_) => self.say(format!("{id:?} is not a job id (see :lifecycle)"), true),
            },
            ["provision", ..] => {
                self.say("usage: :provision CUSTOMER PLAN [NAME] [LOCATION] (NAME - for the default)", true)
            }
            _ => self.say("usage: :cancel JOB (a job id from :lifecycle)", true),
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
