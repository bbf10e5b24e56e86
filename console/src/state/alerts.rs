//! The `:alerts` screen: the hub's alerts (firing first), polled every few seconds so the header counts
//! the firing ones.

use super::pages::*;
use super::{App, Request, Screen};
use outpost_common::text::inert;
use outpost_proto::v1 as pb;

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

    /// `:ack ALERT [SERVER]` and `:silence ALERT SERVER DURATION REASON…`: support and admin; the hub checks again.
    pub(super) fn alert_command(&mut self, cmd: &str) {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if self.read_only() {
            return self.say(format!(":{} needs role support or admin (you are {})", words[0], self.role), true);
        }
        match words.as_slice() {
            ["ack", name] | ["ack", name, _] => {
                let server = words.get(2).map(|s| s.to_string()).unwrap_or_default();
                self.requests.push(Request::Ack { name: name.to_string(), server });
            }
            ["silence", name, server, duration, reason @ ..] if !reason.is_empty() => {
                match outpost_common::parse_duration_ms(duration) {
                    Ok(d) => self.requests.push(Request::Silence {
                        name: name.to_string(),
                        server: server.to_string(),
                        secs: u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
                        reason: reason.join(" "),
                    }),
                    Err(e) => return self.say(format!("duration {duration:?}: {e} (e.g. 30m, 2h)"), true),
                }
            }
            ["ack", ..] => return self.say("usage: :ack ALERT [SERVER]", true),
            _ => {
                return self.say(
                    "usage: :silence ALERT SERVER DURATION REASON… (e.g. :silence disk_full web-1 2h resizing)",
                    true,
                );
            }
        }
        if self.screen != Screen::Alerts {
            self.open_alerts();
        } else {
            self.requests.push(Request::Alerts);
        }
    }

    /// Every second: the open screen is refreshed, and the header's count every few seconds.
    pub(super) fn tick_alerts(&mut self) {
        self.alerts.ticks += 1;
        if self.screen == Screen::Alerts || self.alerts.ticks % POLL_SECS == 1 {
            self.requests.push(Request::Alerts);
        }
    }
}
