//! Key sequences → state changes.

use outpost_proto::v1::{Disk, FleetSnapshot, HistoryPoint};

use super::*;

fn server(name: &str, l: Liveness, cpu: f32, plan: &str) -> Server {
    Server {
        name: name.into(),
        liveness: l as i32,
        plan: plan.into(),
        customer: "acme".into(),
        health: Some(Health { cpu_percent: cpu, ..Default::default() }),
        ..Default::default()
    }
}

fn snap(servers: Vec<Server>) -> FleetEvent {
    FleetEvent { event: Some(fleet_event::Event::Snapshot(FleetSnapshot { servers, part: 0, last: true })) }
}

fn upsert(s: Server) -> FleetEvent {
    FleetEvent { event: Some(fleet_event::Event::Upsert(s)) }
}

fn app() -> App {
    let mut a = App::new("https://hub:7443", "alice", "support");
    a.apply(
        snap(vec![
            server("web-1", Liveness::Connected, 10.0, "pro"),
            server("web-2", Liveness::Lost, 50.0, "starter"),
            server("db-1", Liveness::Connected, 90.0, "pro"),
        ]),
        0,
    );
    a
}

fn typ(a: &mut App, text: &str) {
    for c in text.chars() {
        a.key(Key::Char(c));
    }
}

#[test]
fn selection_follows_the_server_across_deltas() {
    let mut a = app();
    a.key(Key::Char('j')); // web-1 (db-1, web-1, web-2)
    assert_eq!(a.selected().as_deref(), Some("web-1"));
    a.apply(upsert(server("app-1", Liveness::Connected, 1.0, "pro")), 0); // sorts first
    assert_eq!(a.selected().as_deref(), Some("web-1"));
    assert_eq!(a.cursor(), 2);
}

#[test]
fn filter_with_qualifiers_live_and_esc_clears() {
    let mut a = app();
    a.key(Key::Char('/'));
    typ(&mut a, "plan:pro");
    assert_eq!(a.rows(), ["db-1", "web-1"]);
    a.key(Key::Enter);
    assert_eq!(a.mode, Mode::Normal);
    assert_eq!(a.rows().len(), 2, "the filter stays applied");
    a.key(Key::Char('/'));
    for _ in 0.."plan:pro".len() {
        a.key(Key::Backspace);
    }
    typ(&mut a, "status:lost");
    assert_eq!(a.rows(), ["web-2"]);
    a.key(Key::Esc);
    assert_eq!(a.rows().len(), 3);
}

#[test]
fn a_bad_filter_says_why_and_keeps_the_last_good_one() {
    let mut a = app();
    a.key(Key::Char('/'));
    typ(&mut a, "status:gone");
    assert!(a.message.as_ref().is_some_and(|m| m.error && m.text.contains("status:gone")));
    // The last prefix that parsed was "status" as plain text, which matches no server.
    assert_eq!(a.filter.text(), "status");
    assert_eq!(a.rows().len(), 0);
}

#[test]
fn sort_by_cpu_descending() {
    let mut a = app();
    while a.sort != Column::Cpu {
        a.key(Key::Char('s'));
    }
    a.key(Key::Char('S'));
    assert_eq!(a.rows(), ["db-1", "web-2", "web-1"]);
}

#[test]
fn pause_holds_events_and_resume_applies_them_in_order() {
    let mut a = app();
    a.key(Key::Char(' '));
    a.apply(upsert(server("web-1", Liveness::Disconnected, 10.0, "pro")), 1);
    a.apply(upsert(server("web-1", Liveness::Lost, 10.0, "pro")), 2);
    assert_eq!(a.counts().lost, 1, "paused: nothing changes on screen");
    a.key(Key::Char(' '));
    assert_eq!(a.counts().lost, 2);
    let events: Vec<_> = a.events("web-1").map(|(_, e)| e.as_str()).collect();
    assert_eq!(events, ["connected → disconnected", "disconnected → lost"]);
}

#[test]
fn open_asks_for_detail_and_back_returns() {
    let mut a = app();
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::Server("db-1".into()));
    assert_eq!(a.requests, [Request::Detail("db-1".into())]);
    a.apply_detail(ServerDetail {
        server: Some(server("db-1", Liveness::Connected, 90.0, "pro")),
        history: vec![HistoryPoint { seq: 1, taken_at_ms: 5, health: Some(Health::default()) }],
    });
    assert_eq!(a.detail.as_ref().unwrap().points.len(), 1);
    let mut later = server("db-1", Liveness::Connected, 80.0, "pro");
    later.last_seq = 2;
    a.apply(upsert(later), 0);
    assert_eq!(a.detail.as_ref().unwrap().points.len(), 2, "live points append to the chart");
    a.key(Key::Char('j')); // fleet-only key: ignored here
    assert_eq!(a.screen, Screen::Server("db-1".into()));
    a.key(Key::Esc);
    assert_eq!((a.screen.clone(), a.detail.is_none()), (Screen::Fleet, true));
}

#[test]
fn command_mode_completes_and_runs() {
    let mut a = app();
    a.key(Key::Char(':'));
    typ(&mut a, "se");
    a.key(Key::Tab);
    assert_eq!(a.mode, Mode::Command("servers".into()));
    a.key(Key::Enter);
    assert_eq!(a.mode, Mode::Normal);
    a.key(Key::Char(':'));
    typ(&mut a, "bogus");
    a.key(Key::Enter);
    assert!(a.message.as_ref().unwrap().text.starts_with("unknown command :bogus"));
    a.key(Key::Char(':'));
    typ(&mut a, "server web-2");
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::Server("web-2".into()));
    a.key(Key::Char(':'));
    typ(&mut a, "q");
    assert!(!a.key(Key::Enter), ":q quits");
}

#[test]
fn help_closes_on_any_key_and_counts_alerts() {
    let mut a = app();
    a.key(Key::Char('?'));
    assert_eq!(a.mode, Mode::Help);
    assert!(a.key(Key::Char('x')));
    assert_eq!(a.mode, Mode::Normal);
    let mut full = server("db-1", Liveness::Connected, 1.0, "pro");
    full.health.as_mut().unwrap().disks = vec![Disk { mount: "/".into(), total_bytes: 100, available_bytes: 5 }];
    a.apply(upsert(full), 0);
    assert_eq!(a.counts().alerts, 2, "web-2 lost, db-1 disk 95 %");
}

#[test]
fn navigation_is_bounded() {
    let mut a = app();
    for _ in 0..10 {
        a.key(Key::Down);
    }
    assert_eq!(a.cursor(), 2);
    a.key(Key::Char('g'));
    assert_eq!(a.cursor(), 0);
    a.key(Key::End);
    assert_eq!(a.cursor(), 2);
    assert!(!a.key(Key::Char('q')));
}

#[test]
fn a_snapshot_in_parts_accumulates_and_part_zero_resets() {
    let mut a = app();
    let part = |names: &[&str], part, last| FleetEvent {
        event: Some(fleet_event::Event::Snapshot(FleetSnapshot {
            servers: names.iter().map(|n| server(n, Liveness::Connected, 1.0, "pro")).collect(),
            part,
            last,
        })),
    };
    a.apply(part(&["x-1", "x-2"], 0, false), 0);
    a.apply(part(&["x-3"], 1, true), 0);
    assert_eq!(a.rows(), ["x-1", "x-2", "x-3"], "part 0 dropped the old fleet, part 1 added");
}

#[test]
fn incremental_counts_equal_a_recount() {
    let mut a = app();
    a.apply(upsert(server("web-2", Liveness::Connected, 1.0, "pro")), 0);
    a.apply(upsert(server("new-1", Liveness::Disconnected, 1.0, "pro")), 0);
    a.apply(FleetEvent { event: Some(fleet_event::Event::Removed("web-1".into())) }, 0);
    let mut recount = Counts::default();
    for n in a.rows().to_vec() {
        super::tally(&mut recount, a.server(&n).unwrap(), true);
    }
    assert_eq!(a.counts(), recount);
    assert_eq!(a.counts(), Counts { total: 3, connected: 2, disconnected: 1, ..Default::default() });
}
