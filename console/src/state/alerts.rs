//! The `:alerts` screen: the hub's alerts (firing first), polled every few seconds so the header counts
//! the firing ones.

use outpost_common::text::inert;
use outpost_proto::v1 as pb;

use super::{App, Request, Screen};

/// Seconds between polls while the screen is closed (the header's count); every second while open.
const POLL_SECS: u64 = 5;

#[derive(Clone, Debug, Default)]
pub struct AlertsPage {
    pub alerts: Vec<pb::AlertInfo>,
    pub loaded: bool,
    ticks: u64,
}

impl AlertsPage {
    pub fn firing(&self) -> usize {
        self.alerts.iter().filter(|a| a.state == "firing").count()
    }
}

impl App {
    pub fn apply_alerts(&mut self, mut alerts: Vec<pb::AlertInfo>) {
        for a in &mut alerts {
            a.summary = inert(&a.summary).into_owned();
            a.action = inert(&a.action).into_owned();
            a.state = inert(&a.state).into_owned();
            a.silenced_by = inert(&a.silenced_by).into_owned();
            a.acked_by = inert(&a.acked_by).into_owned();
            a.labels = std::mem::take(&mut a.labels)
                .into_iter()
                .map(|(k, v)| (inert(&k).into_owned(), inert(&v).into_owned()))
                .collect();
        }
        self.alerts.alerts = alerts;
        self.alerts.loaded = true;
    }

    pub(super) fn open_alerts(&mut self) {
        self.screen = Screen::Alerts;
        self.detail = None;
        self.requests.push(Request::Alerts);
    }

    /// Every second: the open screen is refreshed, and the header's count every few seconds.
    pub(super) fn tick_alerts(&mut self) {
        self.alerts.ticks += 1;
        if self.screen == Screen::Alerts || self.alerts.ticks % POLL_SECS == 1 {
            self.requests.push(Request::Alerts);
        }
    }
}
