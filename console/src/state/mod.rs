//! The console's model, fed by hub events and key actions. No ratatui here: this is tested without a
//! terminal.

use std::collections::BTreeMap;

use outpost_proto::v1::{FleetEvent, Liveness, Server, fleet_event};

/// The link to the hub, as the operator should see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conn {
    Connecting,
    Live,
    /// Lost the hub; showing the last known state. `retry_in_ms` until the next attempt.
    Reconnecting {
        error: String,
        retry_in_ms: u64,
    },
}

#[derive(Debug)]
pub struct Fleet {
    pub hub: String,
    pub operator: String,
    pub role: String,
    pub servers: BTreeMap<String, Server>,
    pub selected: usize,
    pub paused: bool,
    pub conn: Conn,
    /// Events received while paused are applied on resume, in order.
    held: Vec<fleet_event::Event>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub connected: usize,
    pub disconnected: usize,
    pub lost: usize,
    pub pending: usize,
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    Top,
    Bottom,
    TogglePause,
    Quit,
}

impl Fleet {
    pub fn new(hub: &str, operator: &str, role: &str) -> Fleet {
        Fleet {
            hub: hub.into(),
            operator: operator.into(),
            role: role.into(),
            servers: BTreeMap::new(),
            selected: 0,
            paused: false,
            conn: Conn::Connecting,
            held: Vec::new(),
        }
    }

    pub fn apply(&mut self, e: FleetEvent) {
        let Some(e) = e.event else { return };
        if self.paused {
            self.held.push(e);
            return;
        }
        self.apply_event(e);
    }

    fn apply_event(&mut self, e: fleet_event::Event) {
        let selected = self.selected_name();
        match e {
            fleet_event::Event::Snapshot(s) => {
                self.servers = s.servers.into_iter().map(|s| (s.name.clone(), s)).collect();
            }
            fleet_event::Event::Upsert(s) => {
                self.servers.insert(s.name.clone(), s);
            }
            fleet_event::Event::Removed(n) => {
                self.servers.remove(&n);
            }
        }
        // The selection follows the server, not the row number.
        if let Some(name) = selected
            && let Some(i) = self.servers.keys().position(|k| *k == name)
        {
            self.selected = i;
        }
        self.selected = self.selected.min(self.servers.len().saturating_sub(1));
    }

    pub fn selected_name(&self) -> Option<String> {
        self.servers.keys().nth(self.selected).cloned()
    }

    /// Returns false when the console should quit.
    pub fn act(&mut self, a: Action) -> bool {
        let last = self.servers.len().saturating_sub(1);
        match a {
            Action::Up => self.selected = self.selected.saturating_sub(1),
            Action::Down => self.selected = (self.selected + 1).min(last),
            Action::Top => self.selected = 0,
            Action::Bottom => self.selected = last,
            Action::TogglePause => {
                self.paused = !self.paused;
                if !self.paused {
                    for e in std::mem::take(&mut self.held) {
                        self.apply_event(e);
                    }
                }
            }
            Action::Quit => return false,
        }
        true
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts { total: self.servers.len(), ..Counts::default() };
        for s in self.servers.values() {
            match Liveness::try_from(s.liveness).unwrap_or(Liveness::Unspecified) {
                Liveness::Connected => c.connected += 1,
                Liveness::Disconnected => c.disconnected += 1,
                Liveness::Lost => c.lost += 1,
                _ => c.pending += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::v1::FleetSnapshot;

    fn server(name: &str, l: Liveness) -> Server {
        Server { name: name.into(), liveness: l as i32, ..Default::default() }
    }

    fn snap(names: &[&str]) -> FleetEvent {
        let servers = names.iter().map(|n| server(n, Liveness::Connected)).collect();
        FleetEvent { event: Some(fleet_event::Event::Snapshot(FleetSnapshot { servers })) }
    }

    fn upsert(s: Server) -> FleetEvent {
        FleetEvent { event: Some(fleet_event::Event::Upsert(s)) }
    }

    #[test]
    fn selection_follows_the_server_across_deltas() {
        let mut f = Fleet::new("h", "o", "viewer");
        f.apply(snap(&["b", "c"]));
        f.act(Action::Down);
        assert_eq!(f.selected_name().as_deref(), Some("c"));
        f.apply(upsert(server("a", Liveness::Lost))); // sorts before c
        assert_eq!(f.selected_name().as_deref(), Some("c"));
        assert_eq!(f.counts(), Counts { total: 3, connected: 2, lost: 1, ..Default::default() });
    }

    #[test]
    fn pause_holds_events_and_resume_applies_them_in_order() {
        let mut f = Fleet::new("h", "o", "viewer");
        f.apply(snap(&["a"]));
        f.act(Action::TogglePause);
        f.apply(upsert(server("a", Liveness::Disconnected)));
        f.apply(upsert(server("a", Liveness::Lost)));
        assert_eq!(f.counts().connected, 1, "paused: nothing changes on screen");
        f.act(Action::TogglePause);
        assert_eq!(f.counts().lost, 1);
    }

    #[test]
    fn movement_is_bounded_and_quit_says_so() {
        let mut f = Fleet::new("h", "o", "viewer");
        f.apply(snap(&["a", "b"]));
        for _ in 0..5 {
            f.act(Action::Down);
        }
        assert_eq!(f.selected, 1);
        f.act(Action::Top);
        assert_eq!(f.selected, 0);
        assert!(!f.act(Action::Quit));
    }
}
