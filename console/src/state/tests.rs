//! Key sequences → state changes.

use outpost_proto::v1::{Disk, FleetSnapshot, HistoryPoint, Liveness};

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
    assert_eq!(a.fleet.selected().as_deref(), Some("web-1"));
    a.apply(upsert(server("app-1", Liveness::Connected, 1.0, "pro")), 0); // sorts first
    assert_eq!(a.fleet.selected().as_deref(), Some("web-1"));
    assert_eq!(a.fleet.cursor(), 2);
}

#[test]
fn filter_with_qualifiers_live_and_esc_clears() {
    let mut a = app();
    a.key(Key::Char('/'));
    typ(&mut a, "plan:pro");
    assert_eq!(a.fleet.rows(), ["db-1", "web-1"]);
    a.key(Key::Enter);
    assert_eq!(a.mode, Mode::Normal);
    assert_eq!(a.fleet.rows().len(), 2, "the filter stays applied");
    a.key(Key::Char('/'));
    for _ in 0.."plan:pro".len() {
        a.key(Key::Backspace);
    }
    typ(&mut a, "status:lost");
    assert_eq!(a.fleet.rows(), ["web-2"]);
    a.key(Key::Esc);
    assert_eq!(a.fleet.rows().len(), 3);
}

#[test]
fn a_bad_filter_says_why_and_shows_what_was_typed() {
    let mut a = app();
    a.key(Key::Char('/'));
    typ(&mut a, "status:gone");
    assert!(a.message.as_ref().is_some_and(|m| m.error && m.text.contains("status:gone")));
    // The header shows the filter as typed, marked invalid, and nothing matches it.
    assert_eq!(a.fleet.filter.text(), "status:gone (invalid)");
    assert_eq!(a.fleet.rows().len(), 0);
    // Ctrl-U clears it.
    a.key(Key::Ctrl('u'));
    assert!(a.fleet.filter.is_empty() && a.fleet.rows().len() == 3);
}

#[test]
fn sort_by_cpu_descending() {
    let mut a = app();
    while a.fleet.sort != Column::Cpu {
        a.key(Key::Char('s'));
    }
    a.key(Key::Char('S'));
    assert_eq!(a.fleet.rows(), ["db-1", "web-2", "web-1"]);
}

#[test]
fn pause_holds_events_and_resume_applies_them_in_order() {
    let mut a = app();
    a.key(Key::Char(' '));
    a.apply(upsert(server("web-1", Liveness::Disconnected, 10.0, "pro")), 1);
    a.apply(upsert(server("web-1", Liveness::Lost, 10.0, "pro")), 2);
    assert_eq!(a.fleet.counts().lost, 1, "paused: nothing changes on screen");
    a.key(Key::Char(' '));
    assert_eq!(a.fleet.counts().lost, 2);
    let events: Vec<_> = a.fleet.events("web-1").map(|(_, e)| e.as_str()).collect();
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
    assert_eq!(a.fleet.counts().alerts, 2, "web-2 lost, db-1 disk 95 %");
}

#[test]
fn navigation_is_bounded() {
    let mut a = app();
    for _ in 0..10 {
        a.key(Key::Down);
    }
    assert_eq!(a.fleet.cursor(), 2);
    a.key(Key::Char('g'));
    assert_eq!(a.fleet.cursor(), 0);
    a.key(Key::End);
    assert_eq!(a.fleet.cursor(), 2);
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
    assert_eq!(a.fleet.rows(), ["x-1", "x-2", "x-3"], "part 0 dropped the old fleet, part 1 added");
}

#[test]
fn incremental_counts_equal_a_recount() {
    let mut a = app();
    a.apply(upsert(server("web-2", Liveness::Connected, 1.0, "pro")), 0);
    a.apply(upsert(server("new-1", Liveness::Disconnected, 1.0, "pro")), 0);
    a.apply(FleetEvent { event: Some(fleet_event::Event::Removed("web-1".into())) }, 0);
    let mut recount = Counts::default();
    for n in a.fleet.rows().to_vec() {
        super::fleet::tally(&mut recount, a.fleet.server(&n).unwrap(), true);
    }
    assert_eq!(a.fleet.counts(), recount);
    assert_eq!(a.fleet.counts(), Counts { total: 3, connected: 2, disconnected: 1, ..Default::default() });
}

#[test]
fn actions_menu_args_and_typed_confirmation() {
    let mut a = app();
    a.key(Key::Enter); // open db-1 (the first row by name)
    assert_eq!(a.screen, Screen::Server("db-1".into()));
    a.key(Key::Char('a'));
    let Mode::Actions(m) = &a.mode else { panic!("{:?}", a.mode) };
    assert!(m.items.contains(&"service-restart") && !m.items.contains(&"reboot") && !m.items.contains(&"exec"));
    let at = m.items.iter().position(|i| *i == "service-restart").unwrap();
    for _ in 0..at {
        a.key(Key::Char('j'));
    }
    a.key(Key::Enter);
    assert!(
        matches!(&a.mode, Mode::Args(f) if f.action == "service-restart" && f.fields[0].1 == "k3s"),
        "the unit is offered"
    );
    a.key(Key::Ctrl('n'));
    assert!(matches!(&a.mode, Mode::Args(f) if f.fields[0].1 == "outpost-agentd"), "ctrl-n offers the next unit");
    a.key(Key::Ctrl('u'));
    a.key(Key::Enter); // the unit is required: refused locally
    assert!(a.message.as_ref().is_some_and(|m| m.error && m.text.contains("\"unit\" is required")), "{:?}", a.message);
    typ(&mut a, "k3s");
    a.key(Key::Enter);
    assert!(matches!(&a.mode, Mode::Confirm(c) if c.expected() == "db-1"));
    typ(&mut a, "db-2");
    a.key(Key::Enter);
    assert!(matches!(&a.mode, Mode::Confirm(_)), "a wrong name does not run it");
    assert!(!a.requests.iter().any(|r| matches!(r, Request::Run(_))));
    for _ in 0..4 {
        a.key(Key::Backspace);
    }
    typ(&mut a, "db-1");
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::Job);
    match a.requests.as_slice() {
        [Request::Detail(_), Request::Run(r)] => {
            assert_eq!(
                (r.action.as_str(), r.confirm.as_str(), r.args["unit"].as_str()),
                ("service-restart", "db-1", "k3s")
            );
            assert_eq!(r.selector.as_ref().unwrap().names, ["db-1"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn marked_servers_confirm_by_count_and_the_job_streams_in() {
    let mut a = app();
    a.key(Key::Char('m'));
    a.key(Key::Char('j'));
    a.key(Key::Char('m'));
    assert_eq!(a.fleet.marked.len(), 2);
    a.key(Key::Char('a'));
    a.key(Key::Enter); // service-status: not destructive, runs after its argument
    typ(&mut a, "k3s");
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::Job);
    assert!(a.fleet.marked.is_empty(), "marks are used up by the run");
    use outpost_proto::v1::{CommandResult, JobEvent, JobPlan, JobProgress, TargetEvent, job_event::Event};
    a.apply_job(JobEvent {
        event: Some(Event::Plan(JobPlan {
            job_id: "j1".into(),
            targets: vec!["db-1".into(), "web-1".into()],
            ..Default::default()
        })),
    });
    a.apply_job(JobEvent {
        event: Some(Event::Target(TargetEvent {
            server: "db-1".into(),
            output: "a\nb\n".into(),
            ..Default::default()
        })),
    });
    a.key(Key::Char('c'));
    assert_eq!(a.requests.last(), Some(&Request::CancelJob("j1".into())));
    let r = CommandResult { outcome: 1, message: "k3s: active (running)".into(), ..Default::default() };
    a.apply_job(JobEvent {
        event: Some(Event::Target(TargetEvent { server: "db-1".into(), result: Some(r), ..Default::default() })),
    });
    a.apply_job(JobEvent {
        event: Some(Event::Progress(JobProgress { total: 2, succeeded: 1, finished: true, ..Default::default() })),
    });
    let job = a.job.as_ref().unwrap();
    assert_eq!(job.lines, ["db-1 | a", "db-1 | b"]);
    assert_eq!(job.results, [("db-1".to_string(), "succeeded", "k3s: active (running)".to_string())]);
    assert!(job.finished());
    a.key(Key::Esc);
    assert_eq!(a.screen, Screen::Fleet);
}

#[test]
fn a_viewer_gets_no_actions_menu_and_no_audit() {
    let mut a = App::new("h", "vera", "viewer");
    a.apply(snap(vec![server("web-1", Liveness::Connected, 1.0, "pro")]), 0);
    a.key(Key::Char('a'));
    assert_eq!(a.mode, Mode::Normal);
    assert!(a.message.as_ref().unwrap().text.contains("read-only (viewer)"));
    a.key(Key::Char(':'));
    typ(&mut a, "audit");
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::Fleet);
    assert!(a.requests.is_empty());
}

#[test]
fn first_hour_papercuts() {
    let mut a = app();
    // `:server ` + tab completes a server name.
    a.key(Key::Char(':'));
    typ(&mut a, "server db");
    a.key(Key::Tab);
    assert_eq!(a.mode, Mode::Command("server db-1".into()));
    a.key(Key::Ctrl('u'));
    assert_eq!(a.mode, Mode::Command(String::new()), "ctrl-u clears the command line");
    a.key(Key::Esc);
    // `s` walks the columns in screen order and `S` reverses only the current one.
    assert_eq!(a.fleet.sort, Column::Name);
    a.key(Key::Char('S'));
    assert!(a.fleet.descending);
    a.key(Key::Char('s'));
    assert_eq!((a.fleet.sort, a.fleet.descending), (Column::Status, false));
    a.key(Key::Char('s'));
    assert_eq!(a.fleet.sort, Column::Cpu);
    // The filter `is:alert` shows the servers that need a look (web-2 is lost), and nothing else.
    a.key(Key::Char('/'));
    typ(&mut a, "is:alert");
    a.key(Key::Enter);
    assert_eq!(a.fleet.rows().to_vec(), vec!["web-2".to_string()]);
    // `:alerts` opens the hub's alerts.
    a.requests.clear();
    a.key(Key::Char(':'));
    typ(&mut a, "alerts");
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::Alerts);
    assert_eq!(a.requests.drain(..).collect::<Vec<_>>(), [Request::Alerts]);
    a.key(Key::Esc);
    // g / G in the actions menu.
    a.key(Key::Esc);
    a.key(Key::Char('a'));
    a.key(Key::Char('G'));
    let Mode::Actions(m) = &a.mode else { panic!("{:?}", a.mode) };
    assert_eq!(m.cursor, m.items.len() - 1);
    a.key(Key::Char('g'));
    let Mode::Actions(m) = &a.mode else { panic!("{:?}", a.mode) };
    assert_eq!(m.cursor, 0);
}

fn lifecycle_job(id: u64, state: &str, target: &str) -> outpost_proto::v1::LifecycleJob {
    outpost_proto::v1::LifecycleJob {
        id,
        kind: "provision".into(),
        state: state.into(),
        target: target.into(),
        attempt: 1,
        max_attempts: 5,
        ..Default::default()
    }
}

#[test]
fn jobs_opens_the_queue_refreshes_it_and_keeps_its_text_inert() {
    let mut a = app();
    typ(&mut a, ":jobs");
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::Queue);
    assert_eq!(a.requests.drain(..).collect::<Vec<_>>(), [Request::Queue]);
    a.tick();
    let polled: Vec<Request> = a.requests.drain(..).filter(|r| *r != Request::Alerts).collect();
    assert_eq!(polled, [Request::Queue], "an open queue is refreshed");
    let mut hostile = lifecycle_job(7, "running", "acme");
    hostile.progress = "K3s not Ready: \u{1b}]52;c;cm0gLXJmIC8=\u{7}".into();
    a.apply_queue(outpost_proto::v1::ListLifecycleJobsResponse {
        jobs: vec![hostile, lifecycle_job(6, "succeeded", "beta")],
        stats: Some(outpost_proto::v1::QueueStats {
            pending: 0,
            running: 1,
            finished_last_hour: 1,
            failed_last_hour: 0,
        }),
    });
    assert!(!a.queue.jobs[0].progress.contains('\u{1b}'), "{:?}", a.queue.jobs[0].progress);
    a.key(Key::Char('j'));
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::QueueJob(6));
    a.key(Key::Esc);
    assert_eq!(a.screen, Screen::Queue);
    a.key(Key::Esc);
    assert_eq!(a.screen, Screen::Fleet);
    a.tick();
    assert!(!a.requests.contains(&Request::Queue), "a closed queue is not polled");
}

#[test]
fn provision_and_cancel_from_the_command_line_need_admin() {
    let mut support = app();
    typ(&mut support, ":provision acme pro");
    support.key(Key::Enter);
    assert!(support.requests.is_empty());
    assert!(
        support.message.as_ref().is_some_and(|m| m.error && m.text.contains("needs role admin")),
        "{:?}",
        support.message
    );

    let mut admin = App::new("https://hub:7443", "root", "admin");
    typ(&mut admin, ":provision acme pro acme-2 nbg1");
    admin.key(Key::Enter);
    assert_eq!(admin.screen, Screen::Queue);
    let provision = |name: &str, location: &str| Request::Provision {
        customer: "acme".into(),
        plan: "pro".into(),
        name: name.into(),
        location: location.into(),
    };
    assert_eq!(admin.requests.drain(..).collect::<Vec<_>>(), [provision("acme-2", "nbg1"), Request::Queue]);
    typ(&mut admin, ":provision acme pro - hel1");
    admin.key(Key::Enter);
    assert_eq!(admin.requests.drain(..).collect::<Vec<_>>(), [provision("", "hel1"), Request::Queue]);
    typ(&mut admin, ":provision acme pro acme-3");
    admin.key(Key::Enter);
    assert_eq!(admin.requests.drain(..).collect::<Vec<_>>(), [provision("acme-3", ""), Request::Queue]);
    typ(&mut admin, ":cancel 7");
    admin.key(Key::Enter);
    assert_eq!(admin.requests.drain(..).collect::<Vec<_>>(), [Request::CancelQueueJob(7)]);
    typ(&mut admin, ":cancel seven");
    admin.key(Key::Enter);
    assert!(admin.requests.is_empty());
    assert!(admin.message.as_ref().is_some_and(|m| m.error && m.text.contains("not a job id")));
    typ(&mut admin, ":provision acme");
    admin.key(Key::Enter);
    assert!(admin.message.as_ref().is_some_and(|m| m.text.contains("usage: :provision CUSTOMER PLAN")));
}

#[test]
fn ack_and_silence_from_the_command_line() {
    let mut viewer = App::new("https://hub:7443", "vic", "viewer");
    typ(&mut viewer, ":ack disk_full");
    viewer.key(Key::Enter);
    assert!(viewer.requests.is_empty());
    assert!(viewer.message.as_ref().is_some_and(|m| m.error && m.text.contains("needs role support")));

    let mut a = app();
    typ(&mut a, ":ack disk_full web-1");
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::Alerts);
    assert_eq!(
        a.requests.drain(..).collect::<Vec<_>>(),
        [Request::Ack { name: "disk_full".into(), server: "web-1".into() }, Request::Alerts]
    );
    typ(&mut a, ":silence disk_full web-1 2h disk being resized");
    a.key(Key::Enter);
    assert_eq!(
        a.requests.drain(..).collect::<Vec<_>>(),
        [
            Request::Silence {
                name: "disk_full".into(),
                server: "web-1".into(),
                secs: 7200,
                reason: "disk being resized".into()
            },
            Request::Alerts
        ]
    );
    typ(&mut a, ":silence disk_full web-1 soon because");
    a.key(Key::Enter);
    assert!(a.requests.is_empty());
    assert!(a.message.as_ref().is_some_and(|m| m.error && m.text.contains("duration \"soon\"")), "{:?}", a.message);
    typ(&mut a, ":silence disk_full web-1 2h");
    a.key(Key::Enter);
    assert!(a.message.as_ref().is_some_and(|m| m.text.contains("usage: :silence")));
}

#[test]
fn usage_opens_for_the_selected_servers_customer_or_a_named_one_and_checks_the_month() {
    let mut a = app();
    a.requests.clear();
    let customer = a.fleet.selected().and_then(|n| a.fleet.server(&n).map(|s| s.customer.clone())).unwrap();
    typ(&mut a, ":usage");
    a.key(Key::Enter);
    assert_eq!(a.screen, Screen::Usage);
    assert_eq!(a.requests.drain(..).collect::<Vec<_>>(), [Request::Usage { customer, month: String::new() }]);
    typ(&mut a, ":usage globex 2026-11");
    a.key(Key::Enter);
    assert_eq!(
        a.requests.drain(..).collect::<Vec<_>>(),
        [Request::Usage { customer: "globex".into(), month: "2026-11".into() }]
    );
    for bad in ["2026-13", "26-11", "2026-1x"] {
        typ(&mut a, &format!(":usage globex {bad}"));
        a.key(Key::Enter);
        assert!(a.requests.is_empty(), "{bad}");
        assert!(
            a.message.as_ref().is_some_and(|m| m.error && m.text.contains("give YYYY-MM")),
            "{bad}: {:?}",
            a.message
        );
    }
}

/// An app spec is many lines: `@PATH` in a form field reads the file, and the embedder's spec files are
/// offered (the demo's sample), so an app can be applied by keys alone.
#[test]
fn a_form_field_reads_at_file_and_offers_spec_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("hello.toml");
    std::fs::write(&spec, "name = \"hello\"\nimage = \"r.example/hello:{commit}\"\nport = 8080\n[repo]\nurl = \"https://git.example/h.git\"\n")
        .unwrap();
    let mut a = app();
    a.spec_files = vec![spec.display().to_string()];
    a.key(Key::Enter);
    a.key(Key::Char('a'));
    let Mode::Actions(m) = &a.mode else { panic!("{:?}", a.mode) };
    let at = m.items.iter().position(|i| *i == "app-apply").unwrap();
    for _ in 0..at {
        a.key(Key::Char('j'));
    }
    a.key(Key::Enter);
    let offered = format!("@{}", spec.display());
    assert!(matches!(&a.mode, Mode::Args(f) if f.fields[0].1 == offered), "{:?}", a.mode);
    a.key(Key::Enter);
    match a.requests.as_slice() {
        [.., Request::Run(r)] => assert!(r.args["spec"].starts_with("name = \"hello\"\n"), "{:?}", r.args),
        other => panic!("{other:?} {:?} {:?}", a.mode, a.message),
    }
    // A file that cannot be read: said, and the form stays.
    a.mode = Mode::Normal;
    a.screen = Screen::Server("db-1".into());
    a.requests.clear();
    a.key(Key::Char('a'));
    for _ in 0..at {
        a.key(Key::Char('j'));
    }
    a.key(Key::Enter);
    a.key(Key::Ctrl('u'));
    typ(&mut a, "@/nonexistent/spec.toml");
    a.key(Key::Enter);
    assert!(matches!(a.mode, Mode::Args(_)), "{:?}", a.mode);
    assert!(a.message.as_ref().is_some_and(|m| m.error && m.text.contains("cannot read @/nonexistent/spec.toml")));
    assert!(!a.requests.iter().any(|r| matches!(r, Request::Run(_))));
}
