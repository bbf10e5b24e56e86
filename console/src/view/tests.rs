//! Snapshot tests of rendered frames from a deterministic fixture, at 80×24 and 200×50.

use outpost_proto::v1::{
    Disk, FleetEvent, FleetSnapshot, HistoryPoint, HostFacts, K3s, Liveness, Server, ServerDetail, fleet_event, k3s,
};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::{Theme, render};
use crate::state::{App, Conn, Key};

/// 2026-11-22T12:00:00Z
const NOW: i64 = 1_795_348_800_000;

fn fixture() -> App {
    let mut servers = Vec::new();
    let states =
        [Liveness::Connected, Liveness::Connected, Liveness::Connected, Liveness::Disconnected, Liveness::Lost];
    for i in 0..40u64 {
        let l = states[i as usize % states.len()];
        let health = (l != Liveness::Lost || i % 2 == 0).then(|| outpost_proto::v1::Health {
            cpu_percent: (i * 7 % 100) as f32,
            load1: i as f32 / 10.0,
            mem_total_bytes: 4 << 30,
            mem_used_bytes: (4u64 << 30) / 100 * (20 + i % 70),
            disks: vec![Disk {
                mount: "/".into(),
                total_bytes: 40 << 30,
                available_bytes: (40u64 << 30) / 100 * (5 + i * 3 % 90),
            }],
            k3s: Some(K3s {
                state: if i % 11 == 0 { k3s::State::Failed } else { k3s::State::Active } as i32,
                detail: "".into(),
            }),
            agent_version: "0.1.0".into(),
            net_rx_bytes: i * 1000,
            ..Default::default()
        });
        servers.push(Server {
            name: format!("srv-{i:03}"),
            customer: ["acme", "globex", "initech"][i as usize % 3].into(),
            plan: ["starter", "pro", "team"][i as usize % 3].into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
            liveness: l as i32,
            liveness_since_ms: NOW - 90_000,
            last_seen_ms: NOW - (i as i64 * 13_000),
            cert_not_after: NOW / 1000 + 20 * 3600,
            cert_serial: "4a1b2c3d4e5f60718293a4b5c6d7e8f9".into(),
            agent_id: format!("agent{i:04}"),
            agent_version: "0.1.0".into(),
            last_seq: 100 + i,
            reports_received: 100 + i,
            host: Some(HostFacts {
                hostname: format!("host-{i}"),
                os: "Debian 12".into(),
                arch: "x86_64".into(),
                ..Default::default()
            }),
            health,
            // The first server runs two apps, one of them failing; the next reports a cluster and no apps.
            apps: match i {
                0 => Some(outpost_proto::v1::AppsState {
                    apps: vec![
                        outpost_proto::v1::AppState {
                            name: "web".into(),
                            project: "acme".into(),
                            phase: "available".into(),
                            desired_replicas: 2,
                            ready_replicas: 2,
                            deployment: "web-4".into(),
                            commit: "c0ffee1234567890".into(),
                            ..Default::default()
                        },
                        outpost_proto::v1::AppState {
                            name: "worker".into(),
                            project: "acme".into(),
                            phase: "degraded".into(),
                            desired_replicas: 1,
                            deployment: "worker-2".into(),
                            commit: "badbad".into(),
                            last_error: "CrashLoopBackOff: container worker crashes (exit code 1: no queue)".into(),
                            deployed_ms: NOW - 3_600_000,
                            history: vec![
                                outpost_proto::v1::DeploymentSummary {
                                    id: "worker-3".into(),
                                    commit: "deadbeef0000".into(),
                                    status: "rolled_back".into(),
                                    reason: "CrashLoopBackOff: container worker crashes (exit code 1: no queue); worker-2 restored".into(),
                                    operator: "alice".into(),
                                    started_ms: NOW - 600_000,
                                    finished_ms: NOW - 540_000,
                                },
                                outpost_proto::v1::DeploymentSummary {
                                    id: "worker-2".into(),
                                    commit: "badbad".into(),
                                    status: "available".into(),
                                    operator: "bob".into(),
                                    started_ms: NOW - 3_660_000,
                                    finished_ms: NOW - 3_600_000,
                                    ..Default::default()
                                },
                            ],
                            ..Default::default()
                        },
                    ],
                    cluster: Some(outpost_proto::v1::ClusterState {
                        ready: true,
                        version: "v1.33.5+k3s1".into(),
                        nodes: 1,
                        pods_running: 9,
                        ..Default::default()
                    }),
                }),
                1 => Some(outpost_proto::v1::AppsState::default()),
                _ => None,
            },
            ..Default::default()
        });
    }
    let mut app = App::new("https://hub.example:7443", "alice", "support");
    app.apply(
        FleetEvent { event: Some(fleet_event::Event::Snapshot(FleetSnapshot { servers, part: 0, last: true })) },
        NOW,
    );
    app.conn = Conn::Live;
    app
}

fn draw(app: &mut App, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render(f, app, NOW, Theme { color: false })).unwrap();
    t.backend().to_string()
}

fn both(name: &str, app: &mut App) {
    insta::assert_snapshot!(format!("{name}_80x24"), draw(app, 80, 24));
    insta::assert_snapshot!(format!("{name}_200x50"), draw(app, 200, 50));
}

#[test]
fn fleet() {
    let mut app = fixture();
    app.key(Key::Char('j'));
    both("fleet", &mut app);
}

#[test]
fn fleet_filtered_and_sorted() {
    let mut app = fixture();
    app.key(Key::Char('/'));
    for c in "status:connected plan:pro".chars() {
        app.key(Key::Char(c));
    }
    app.key(Key::Enter);
    while app.fleet.sort != crate::state::Column::Cpu {
        app.key(Key::Char('s'));
    }
    app.key(Key::Char('S'));
    both("fleet_filtered", &mut app);
}

#[test]
fn server() {
    let mut app = fixture();
    app.key(Key::Char('j'));
    app.key(Key::Enter);
    let s = app.fleet.server("srv-001").unwrap().clone();
    let history = (0..60)
        .map(|i| HistoryPoint {
            seq: i,
            taken_at_ms: NOW - (60 - i as i64) * 10_000,
            health: Some(outpost_proto::v1::Health {
                cpu_percent: ((i * 13) % 100) as f32,
                mem_total_bytes: 100,
                mem_used_bytes: 30 + i % 40,
                net_rx_bytes: i * i * 1000,
                disks: vec![Disk { mount: "/".into(), total_bytes: 100, available_bytes: 60 - i / 2 }],
                ..Default::default()
            }),
        })
        .collect();
    app.apply_detail(ServerDetail { server: Some(s), history });
    both("server", &mut app);
}

/// A server that runs apps: the apps table (a failing one in red), the cluster line; the fleet's APPS column.
#[test]
fn server_with_apps() {
    let mut app = fixture();
    app.key(Key::Enter); // srv-000, the first row
    insta::assert_snapshot!("server_apps_200x50", draw(&mut app, 200, 50));
    let mut app = fixture();
    let fleet = draw(&mut app, 200, 50);
    let row = fleet.lines().find(|l| l.contains("srv-000")).unwrap();
    assert!(row.contains("1/2"), "the APPS column counts available apps: {row}");
}

/// `:apps`: every app of the fleet, failing first; the fleet filter applies.
#[test]
fn apps_view() {
    let mut app = fixture();
    for c in ":apps".chars() {
        app.key(Key::Char(c));
    }
    app.key(Key::Enter);
    both("apps", &mut app);
    let text = draw(&mut app, 200, 50);
    let worker = text.find("worker").expect("the failing app is listed");
    let web = text.find(" web ").expect("the available app is listed");
    assert!(worker < web, "failing apps come first");
    // Enter opens the selected app (the failing one, first): its state and deployment history.
    app.key(Key::Enter);
    both("app", &mut app);
    let text = draw(&mut app, 200, 50);
    assert!(text.contains("worker-3") && text.contains("rolled_back") && text.contains("worker-2 restored"), "{text}");
    // `a` on an app: the actions menu for its server, and an app argument offers this app first.
    app.key(Key::Char('a'));
    let crate::state::Mode::Actions(menu) = app.mode.clone() else { panic!("{:?}", app.mode) };
    assert_eq!(menu.targets, ["srv-000"]);
    let logs = menu.items.iter().position(|i| *i == "app-logs").unwrap();
    for _ in 0..logs {
        app.key(Key::Char('j'));
    }
    app.key(Key::Enter);
    let crate::state::Mode::Args(form) = app.mode.clone() else { panic!("{:?}", app.mode) };
    assert_eq!(form.fields[0], ("app", "worker".to_string()));
    app.key(Key::Esc);
    // j moves to the next app; esc goes back to the list, then to the fleet.
    app.key(Key::Esc);
    app.key(Key::Char('j'));
    app.key(Key::Enter);
    assert!(draw(&mut app, 200, 50).contains("web on srv-000"));
    app.key(Key::Esc);
    app.key(Key::Esc);
    assert_eq!(app.screen, crate::state::Screen::Fleet);
}

/// An admin's menu is longer than a small terminal: it scrolls with the cursor, the last action reachable.
#[test]
fn a_long_actions_menu_scrolls_to_the_chosen_action() {
    let mut app = fixture();
    app.role = "admin".into();
    app.key(Key::Enter);
    app.key(Key::Char('a'));
    let text = draw(&mut app, 80, 24);
    assert!(text.contains("(j/k: more)"), "{text}");
    assert!(!text.contains("app-remove"), "{text}");
    app.key(Key::Char('G'));
    let text = draw(&mut app, 80, 24);
    assert!(text.contains("app-remove") || text.contains("k3s-status"), "the last actions are in view: {text}");
    let crate::state::Mode::Actions(m) = &app.mode else { panic!() };
    let last = *m.items.last().unwrap();
    assert!(text.contains(last), "{last} in view: {text}");
}

#[test]
fn help() {
    let mut app = fixture();
    app.key(Key::Char('?'));
    both("help", &mut app);
}

#[test]
fn reconnecting_keeps_the_last_known_state() {
    let mut app = fixture();
    app.conn = Conn::Reconnecting { error: "connection refused".into(), retry_in_ms: 4000 };
    both("reconnecting", &mut app);
}

#[test]
fn viewer_is_read_only_everywhere() {
    let mut app = fixture();
    app.role = "viewer".into();
    app.key(Key::Enter);
    let screen = draw(&mut app, 200, 50);
    assert!(screen.contains("alice (viewer read-only)"), "{screen}");
    assert!(screen.contains("none: read-only (viewer)"), "{screen}");
}

#[test]
fn no_color_means_no_color() {
    let mut app = fixture();
    let mut t = Terminal::new(TestBackend::new(120, 30)).unwrap();
    t.draw(|f| render(f, &mut app, NOW, Theme { color: false })).unwrap();
    let buf = t.backend().buffer();
    assert!(buf.content.iter().all(|c| c.fg == ratatui::style::Color::Reset && c.bg == ratatui::style::Color::Reset));
    t.draw(|f| render(f, &mut app, NOW, Theme { color: true })).unwrap();
    assert!(t.backend().buffer().content.iter().any(|c| c.fg != ratatui::style::Color::Reset));
}

#[test]
fn actions_menu_confirmation_and_job_screen() {
    use outpost_proto::v1::{CommandResult, JobEvent, JobPlan, JobProgress, TargetEvent, job_event::Event};
    let mut app = fixture();
    app.key(Key::Enter);
    app.key(Key::Char('a'));
    both("actions_menu", &mut app);
    app.key(Key::Char('j'));
    app.key(Key::Enter); // service-restart
    for c in "k3s".chars() {
        app.key(Key::Char(c));
    }
    app.key(Key::Enter);
    for c in "srv-0".chars() {
        app.key(Key::Char(c));
    }
    both("confirm", &mut app);
    for c in "00".chars() {
        app.key(Key::Char(c));
    }
    app.key(Key::Enter);
    let plan = JobPlan { job_id: "6b1f0c2a9d3e4f51".into(), targets: vec!["srv-000".into()], ..Default::default() };
    app.apply_job(JobEvent { event: Some(Event::Plan(plan)) });
    let out = TargetEvent {
        server: "srv-000".into(),
        output: "ActiveState=active\nSubState=running\n".into(),
        ..Default::default()
    };
    app.apply_job(JobEvent { event: Some(Event::Target(out)) });
    let r = CommandResult { outcome: 1, message: "k3s: active (running)".into(), ..Default::default() };
    app.apply_job(JobEvent {
        event: Some(Event::Target(TargetEvent { server: "srv-000".into(), result: Some(r), ..Default::default() })),
    });
    let p = JobProgress { total: 1, succeeded: 1, finished: true, ..Default::default() };
    app.apply_job(JobEvent { event: Some(Event::Progress(p)) });
    both("job", &mut app);
}

#[test]
fn audit_view() {
    use outpost_proto::v1::AuditRecord;
    let mut app = fixture();
    for c in ":audit".chars() {
        app.key(Key::Char(c));
    }
    app.key(Key::Enter);
    let rec = |id, kind: &str, outcome, message: &str| AuditRecord {
        id,
        at_ms: NOW - 60_000 + id as i64 * 1000,
        operator: "sam".into(),
        role: "support".into(),
        kind: kind.into(),
        action: "service-restart".into(),
        servers: vec!["srv-000".into()],
        outcome,
        message: message.into(),
        ..Default::default()
    };
    app.apply_audit(vec![
        rec(3, "result", 1, "k3s: active (running)"),
        rec(2, "requested", 0, "1 target(s), batch 10, canary 0"),
        rec(1, "refused", 3, "service-restart is destructive: confirm with the server name (srv-000)"),
    ]);
    both("audit", &mut app);
}

#[test]
fn the_job_queue_and_a_job_s_steps() {
    use outpost_proto::v1::{LifecycleJob, LifecycleStep, ListLifecycleJobsResponse, QueueStats};
    let mut app = fixture();
    let step = |name: &str, at: i64, end: i64, ok: bool, msg: &str| LifecycleStep {
        name: name.into(),
        started_ms: NOW - at,
        ended_ms: if end == 0 { 0 } else { NOW - end },
        ok,
        message: msg.into(),
    };
    let running = LifecycleJob {
        id: 12,
        kind: "provision".into(),
        state: "running".into(),
        target: "acme".into(),
        attempt: 2,
        max_attempts: 5,
        submitted_by: "alice".into(),
        params: [("customer".to_string(), "acme".to_string()), ("plan".to_string(), "pro".to_string())].into(),
        progress: "agent online; waiting for its first cluster report".into(),
        steps: vec![
            step("register", 40_000, 39_900, true, "server record acme and a single-use join token (valid 900s)"),
            step("create", 39_000, 38_000, true, "server acme (id 42, cx32) in fsn1"),
            step("boot", 38_000, 20_000, true, "server 42 is running"),
            step("ready", 20_000, 0, false, ""),
        ],
        ..Default::default()
    };
    let failed = LifecycleJob {
        id: 11,
        kind: "provision".into(),
        state: "failed".into(),
        target: "beta".into(),
        attempt: 1,
        max_attempts: 5,
        error: "the cloud API token lacks the rights for this (403 forbidden)".into(),
        steps: vec![step("cloud-setup", 90_000, 89_000, false, "403 forbidden")],
        ..Default::default()
    };
    let retrying = LifecycleJob {
        id: 10,
        kind: "provision".into(),
        state: "pending".into(),
        target: "gamma".into(),
        attempt: 1,
        max_attempts: 5,
        not_before_ms: NOW + 30_000,
        error: "rate limited by the cloud API (429) 8 times in a row; try again later".into(),
        ..Default::default()
    };
    app.apply_queue(ListLifecycleJobsResponse {
        jobs: vec![running, failed, retrying],
        stats: Some(QueueStats { pending: 1, running: 1, finished_last_hour: 1, failed_last_hour: 1 }),
    });
    app.screen = crate::state::Screen::Queue;
    both("jobs", &mut app);
    app.screen = crate::state::Screen::QueueJob(12);
    both("job_steps", &mut app);
}

#[test]
fn the_alerts_screen_firing_first_and_its_empty_state() {
    use outpost_proto::v1::AlertInfo;
    let mut app = fixture();
    app.screen = crate::state::Screen::Alerts;
    app.apply_alerts(vec![]);
    both("alerts_empty", &mut app);
    let alert = |name: &str, severity: &str, state: &str, server: &str, summary: &str| AlertInfo {
        labels: [("alertname", name), ("severity", severity), ("server", server)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        state: state.into(),
        since_ms: NOW - 600_000,
        fired_ms: NOW - 300_000,
        value: 1.0,
        summary: summary.into(),
        action: "check it".into(),
        silenced_by: String::new(),
        acked_by: String::new(),
    };
    app.apply_alerts(vec![
        alert(
            "server_lost",
            "critical",
            "firing",
            "srv-007",
            "server_lost on srv-007: server_offline_seconds is 612.0 (> 300)",
        ),
        alert("disk_full", "warning", "firing", "srv-012", "disk_full on srv-012: disk_used_percent is 93.4 (> 90)"),
        alert(
            "memory_high",
            "warning",
            "pending",
            "srv-020",
            "memory_high on srv-020: memory_used_percent is 96.0 (> 95)",
        ),
        AlertInfo {
            silenced_by: "s-1".into(),
            acked_by: "alice".into(),
            ..alert("app_failing", "warning", "firing", "srv-021", "app_failing on srv-021: apps_failing is 1.0 (> 0)")
        },
    ]);
    both("alerts", &mut app);
}

#[test]
fn a_servers_alerts_show_on_its_screen_and_its_apps() {
    use outpost_proto::v1::AlertInfo;
    let mut app = fixture();
    let name = app.fleet.rows()[0].clone();
    let alert = |alertname: &str, state: &str| AlertInfo {
        labels: [("alertname", alertname), ("severity", "warning"), ("server", name.as_str())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        state: state.into(),
        since_ms: NOW - 600_000,
        ..Default::default()
    };
    let on_worker = AlertInfo {
        labels: [("alertname", "app_failing"), ("severity", "warning"), ("server", "srv-000"), ("app", "worker")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        state: "firing".into(),
        since_ms: NOW - 120_000,
        ..Default::default()
    };
    app.apply_alerts(vec![alert("disk_full", "firing"), alert("usage_over_plan", "pending"), on_worker]);
    // An app's screen: the alerts labelled with it, and its server's usage over the plan.
    app.screen = crate::state::Screen::App("srv-000".into(), "worker".into());
    let screen = draw(&mut app, 200, 50);
    assert!(screen.contains("▲ app_failing (worker) warning firing 2m"), "{screen}");
    assert!(!screen.contains("disk_full"), "{screen}");
    app.screen = crate::state::Screen::App("srv-000".into(), "web".into());
    assert!(!draw(&mut app, 200, 50).contains("app_failing"));
    app.screen = crate::state::Screen::Server(name.clone());
    let screen = draw(&mut app, 200, 50);
    assert!(
        screen.contains("alerts") && screen.contains("▲ disk_full warning firing 10m · ▲ usage_over_plan"),
        "{screen}"
    );
    app.apply_alerts(vec![]);
    let screen = draw(&mut app, 200, 50);
    assert!(screen.lines().any(|l| l.contains("│alerts ") && l.contains(" none ")), "{screen}");
}

#[test]
fn the_usage_screen_against_the_plan_with_charts_and_cost() {
    use outpost_proto::v1::{GetUsageResponse, PlanUse, UsageDay, UsageRow};
    const MIB: u64 = 1 << 20;
    let mut app = fixture();
    app.usage = crate::state::UsagePage { customer: "acme".into(), month: "2026-11".into(), data: None };
    app.screen = crate::state::Screen::Usage;
    both("usage_loading", &mut app);
    let day0 = 1_793_491_200_000; // 2026-11-01
    app.apply_usage(GetUsageResponse {
        customer: "acme".into(),
        month: "2026-11".into(),
        plan: "starter".into(),
        plan_cpu_millis: 500,
        plan_memory_bytes: 512 * MIB,
        plan_database_bytes: 100 * MIB,
        rows: vec![
            UsageRow {
                server: "acme-1".into(),
                scope: "host".into(),
                cpu_seconds: 7200.0,
                cpu_cores_avg: 0.8,
                memory_peak_bytes: 900 * MIB,
                egress_bytes: 3 << 30,
                ..Default::default()
            },
            UsageRow {
                server: "acme-1".into(),
                scope: "namespace/acme".into(),
                cpu_seconds: 3600.0,
                cpu_cores_avg: 0.4,
                memory_peak_bytes: 600 * MIB,
                database_bytes: 40 * MIB,
                egress_bytes: 2 << 30,
                ..Default::default()
            },
            UsageRow {
                server: "acme-1".into(),
                scope: "app/acme/web".into(),
                cpu_seconds: 3000.0,
                cpu_cores_avg: 0.33,
                memory_peak_bytes: 400 * MIB,
                ..Default::default()
            },
        ],
        days: (0..12)
            .map(|i| UsageDay {
                start_ms: day0 + i * 86_400_000,
                cpu_cores_avg: 0.1 + 0.05 * i as f64,
                memory_peak_bytes: (300 + 25 * i as u64) * MIB,
                egress_bytes: (i as u64 + 1) * 100 * MIB,
                ..Default::default()
            })
            .collect(),
        plan_use: vec![
            PlanUse { what: "cpu".into(), percent: 80.0, words: "CPU averaged 0.40 cores of the plan's 0.50".into() },
            PlanUse {
                what: "memory".into(),
                percent: 117.2,
                words: "memory peaked at 600 MiB of the plan's 512 MiB".into(),
            },
            PlanUse {
                what: "database".into(),
                percent: 40.0,
                words: "database storage reached 40 MiB of the plan's 100 MiB".into(),
            },
        ],
        currency: "EUR".into(),
        cost_server: 3.79,
        cost_egress: 0.02,
        cost_total: 3.81,
        ..Default::default()
    });
    both("usage", &mut app);
    let screen = draw(&mut app, 200, 50);
    assert!(screen.contains("memory    117% OVER"), "{screen}");
    // An answer for another customer (asked before) does not replace this one.
    app.apply_usage(GetUsageResponse { customer: "other".into(), ..Default::default() });
    assert_eq!(app.usage.data.as_ref().unwrap().customer, "acme");
    app.usage.data.as_mut().unwrap().rows.clear();
    assert!(draw(&mut app, 200, 50).contains("no usage reported for acme in 2026-11"));
}

#[test]
fn the_rollouts_screen_shows_versions_and_why_a_server_rolled_back() {
    use outpost_proto::v1::UpdateStatus;
    let mut app = fixture();
    let update = |name: &str, version: &str, u: UpdateStatus| {
        let mut s = app.fleet.server(name).cloned().unwrap();
        s.agent_version = version.into();
        s.health.get_or_insert_with(Default::default).update = Some(u);
        FleetEvent { event: Some(fleet_event::Event::Upsert(s)) }
    };
    let events = [
        update(
            "srv-000",
            "0.2.0",
            UpdateStatus {
                phase: "committed".into(),
                from_version: "0.1.0".into(),
                to_version: "0.2.0".into(),
                reason: "agentd 0.2.0 committed 1.2 s after its start".into(),
                at_ms: NOW - 120_000,
            },
        ),
        update(
            "srv-001",
            "0.1.0",
            UpdateStatus {
                phase: "rolled_back".into(),
                from_version: "0.1.0".into(),
                to_version: "0.2.0".into(),
                reason: "agentd 0.2.0 exited with status 3 before it was committed".into(),
                at_ms: NOW - 60_000,
            },
        ),
        update(
            "srv-002",
            "0.1.0",
            UpdateStatus {
                phase: "downloading".into(),
                from_version: "0.1.0".into(),
                to_version: "0.2.0".into(),
                reason: String::new(),
                at_ms: NOW,
            },
        ),
    ];
    for e in events {
        app.apply(e, NOW);
    }
    app.screen = crate::state::Screen::Rollouts;
    let text = draw(&mut app, 200, 50);
    assert!(text.contains("0.2.0") && text.contains("1 under way · 1 rolled back"), "{text}");
    let (under_way, rolled, healthy) = (
        text.find("downloading   0.1.0 → 0.2.0").unwrap(),
        text.find("rolled back   0.1.0 → 0.2.0").unwrap(),
        text.find("healthy       0.1.0 → 0.2.0").unwrap(),
    );
    assert!(under_way < rolled && rolled < healthy, "under way first, then rolled back, then healthy:\n{text}");
    assert!(text.contains("exited with status 3 before it was committed"), "{text}");
    both("rollouts", &mut app);
}

#[test]
fn a_ca_rotation_in_progress_shows_in_the_header() {
    let mut app = fixture();
    assert!(!draw(&mut app, 200, 10).contains("CA rotation"), "nothing while none runs");
    app.ca_rotation = Some(outpost_proto::v1::CaRotationStatus {
        phase: "update_clients".into(),
        servers: 20,
        done: 17,
        offline: 1,
        ..Default::default()
    });
    let screen = draw(&mut app, 200, 10);
    assert!(screen.contains("⟳ CA rotation: update_clients 17/20 done, 1 offline"), "{screen}");
    app.ca_rotation.as_mut().unwrap().phase = "standby".into();
    assert!(!draw(&mut app, 200, 10).contains("CA rotation"), "gone when it ends");
}
