//! Usage end to end: reports over two simulated days (the agent's sample times) sent over the wire by an
//! agent speaking the contract by hand, with a counter reset, a report replayed after a hub SIGKILL, an app
//! that does not exist and ill-formed reports; every figure checked against hand-computed ones through the
//! API and `outpost usage` (table, JSON, CSV). And a real agentd measuring its host.

use std::process::Command;
use std::time::{Duration, Instant};

use harness::hostile::{self, RawLink};
use harness::{AgentProc, HubProc, free_port, init};
use outpost_common::Role;
use outpost_proto::v1::{self as pb, AppState, AppsState, UsageReport, UsageSample, agent_message, hub_message};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

fn report(seq: u64, taken_at_ms: i64, body: pb::report::Body) -> pb::AgentMessage {
    hostile::body(agent_message::Body::Report(pb::Report { seq, taken_at_ms, body: Some(body) }))
}

fn usage(seq: u64, at: i64, samples: Vec<UsageSample>) -> pb::AgentMessage {
    report(seq, at, pb::report::Body::Usage(UsageReport { samples }))
}

fn ns(cpu_s: u64, egress: u64, mem: u64) -> UsageSample {
    UsageSample {
        scope: "namespace".into(),
        project: "acme".into(),
        cpu_usec: cpu_s * 1_000_000,
        egress_bytes: egress,
        memory_bytes: mem,
        memory_peak_bytes: mem,
        database_bytes: 200 * MIB,
        ..Default::default()
    }
}

fn app(name: &str, cpu_s: u64) -> UsageSample {
    UsageSample {
        scope: "app".into(),
        project: "acme".into(),
        app: name.into(),
        cpu_usec: cpu_s * 1_000_000,
        ..Default::default()
    }
}

fn host(cpu_s: u64) -> UsageSample {
    UsageSample { scope: "host".into(), cpu_usec: cpu_s * 1_000_000, ..Default::default() }
}

async fn answer(link: &mut RawLink, seq: u64) -> hub_message::Body {
    link.until(|m| match m {
        hub_message::Body::Ack(a) if a.up_to_seq >= seq => Some(m.clone()),
        hub_message::Body::Refused(r) if r.seq == seq => Some(m.clone()),
        _ => None,
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_counted_once_across_a_hub_sigkill_against_the_plan_and_priced() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let config = "[usage.prices]\ncpu_core_hour = 0.5\negress_gib = 1.0\n[usage.prices.server_types]\ncx32 = 30.0\n";
    let mut hub = HubProc::start(&tmp.path().join("hub"), free_port(), config).await;
    let id = hostile::enroll(&hub.token("u-1").await).await;
    let mut link = RawLink::connect(&id).await.unwrap();
    let apps = AppsState {
        apps: vec![AppState {
            name: "web".into(),
            project: "acme".into(),
            phase: "available".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    link.send(report(1, outpost_common::now_ms(), pb::report::Body::Apps(apps))).await;
    assert!(matches!(answer(&mut link, 1).await, hub_message::Body::Ack(_)));

    // The 10th of last month, 10:00 UTC, and the day after.
    use hub::usage::{month_of, month_range};
    let (this_month, _) = month_range(&month_of(outpost_common::now_ms())).unwrap();
    let (last_month, _) = month_range(&month_of(this_month - 1)).unwrap();
    let d0 = last_month + 9 * DAY + 10 * HOUR;
    let m = month_of(d0);
    link.send(usage(2, d0, vec![host(1000), ns(10, 1000, 100 * MIB), app("web", 10)])).await;
    link.send(usage(3, d0 + 60_000, vec![host(1060), ns(40, 1000 + GIB, 300 * MIB), app("web", 40), app("ghost", 7)]))
        .await;
    // agentd restarted: the namespace's CPU counter went down (5 s since).
    link.send(usage(4, d0 + 120_000, vec![host(1120), ns(5, 1000 + 2 * GIB, 300 * MIB), app("web", 5)])).await;
    assert!(matches!(answer(&mut link, 4).await, hub_message::Body::Ack(_)));

    // Ill-formed usage is refused by seq and blocks nothing.
    let bad = UsageSample { scope: "planet".into(), ..Default::default() };
    link.send(usage(5, d0 + 130_000, vec![bad])).await;
    match answer(&mut link, 5).await {
        hub_message::Body::Refused(r) => {
            assert!(r.reason.contains("usage scope \"planet\" is not one of host"), "{r:?}")
        }
        other => panic!("{other:?}"),
    }
    link.send(usage(6, d0 + 130_000, vec![host(1), host(2)])).await;
    assert!(matches!(answer(&mut link, 6).await, hub_message::Body::Refused(_)));

    // The hub dies; the agent, not knowing whether 4 was kept, sends it again, then the next day.
    drop(link);
    hub.kill9().await;
    hub.restart().await;
    let mut link = RawLink::connect(&id).await.unwrap();
    link.send(usage(4, d0 + 120_000, vec![host(1120), ns(5, 1000 + 2 * GIB, 300 * MIB), app("web", 5)])).await;
    link.send(usage(7, d0 + DAY + 60_000, vec![host(5000), ns(3605, 1000 + 2 * GIB, 1536 * MIB)])).await;
    assert!(matches!(answer(&mut link, 7).await, hub_message::Body::Ack(_)));

    let mut viewer = hub.client(Role::Viewer);
    let u =
        viewer.get_usage(pb::GetUsageRequest { customer: "acme".into(), month: m.clone() }).await.unwrap().into_inner();
    let row = |scope: &str| u.rows.iter().find(|r| r.scope == scope).unwrap_or_else(|| panic!("{scope}: {u:#?}"));
    let n = row("namespace/acme");
    assert_eq!(n.cpu_seconds, 30.0 + 5.0 + 3600.0, "counted once, the reset as 5 s");
    assert_eq!((n.egress_bytes, n.memory_peak_bytes, n.database_bytes, n.resets), (2 * GIB, 1536 * MIB, 200 * MIB, 1));
    assert_eq!(row("app/acme/web").cpu_seconds, 35.0);
    assert!(!u.rows.iter().any(|r| r.scope.contains("ghost")), "an app the server does not have is dropped");
    assert_eq!(row("host").covered_hours, 1020.0 / 3600.0, "60 + 60 s, then the day's gap capped at 900 s");
    assert_eq!(u.days.len(), 2);
    assert_eq!((u.plan.as_str(), u.plan_memory_bytes), ("pro", GIB));
    let memory = u.plan_use.iter().find(|p| p.what == "memory").unwrap();
    assert_eq!(memory.percent, 150.0, "{memory:?}");
    assert!((u.cost_cpu - 3635.0 / 3600.0 * 0.5).abs() < 1e-9 && (u.cost_egress - 2.0).abs() < 1e-9, "{u:#?}");
    let month_secs = ((this_month - last_month) / 1000) as f64;
    assert!((u.cost_server - 30.0 * 1020.0 / month_secs).abs() < 1e-9, "{u:#?}");
    assert!((u.cost_total - (u.cost_server + u.cost_cpu + u.cost_egress)).abs() < 1e-9);

    // The command line: table, JSON, CSV; and bad input in words.
    let bundle = tmp.path().join("viewer");
    hub.bundle("vera", Role::Viewer).write(&bundle).unwrap();
    let outpost =
        |args: &[&str]| Command::new(harness::bin("outpost")).arg("--bundle").arg(&bundle).args(args).output().unwrap();
    let ok = |args: &[&str]| {
        let out = outpost(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = ok(&["usage", "--customer", "acme", "--month", &m]);
    assert!(table.contains("memory      150%  OVER"), "{table}");
    assert!(table.contains("namespace/acme") && table.contains("COST (EUR)"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["usage", "--customer", "acme", "--month", &m, "--output", "json"])).unwrap();
    assert_eq!(json["cost"]["egress"], 2.0);
    assert_eq!(json["plan_limits"]["memory_bytes"], GIB);
    let csv = ok(&["usage", "--customer", "acme", "--month", &m, "--output", "csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("customer,month,plan,server,scope,cpu_seconds"), "{csv}");
    assert_eq!(lines.len(), 1 + u.rows.len());
    assert!(lines.iter().any(|l| l.starts_with(&format!("acme,{m},pro,u-1,namespace/acme,3635.000,"))), "{csv}");
    let empty = ok(&["usage", "--customer", "nobody", "--month", &m]);
    assert!(empty.contains("no usage reported in this month"), "{empty}");
    for (args, needle) in [
        (vec!["usage", "--customer", "acme", "--month", "2026-13"], "give YYYY-MM"),
        (vec!["usage", "--customer", "Not A Name"], "a customer name"),
    ] {
        let out = outpost(&args);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A real agentd reports usage: its host measured from /proc, its project from `usage_file` (no K3s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_reports_its_usage() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&tmp.path().join("hub"), free_port(), "").await;
    let file = tmp.path().join("usage.json");
    std::fs::write(
        &file,
        r#"{"samples": [{"scope": "namespace", "project": "acme", "cpu_usec": 1000000, "memory_bytes": 1048576, "database_bytes": 4096}]}"#,
    )
    .unwrap();
    let extra = format!("usage_interval_secs = 1\nusage_file = \"{}\"\n", file.display());
    let _agent = AgentProc::start(tmp.path(), "u-2", &hub.token("u-2").await, &extra);
    let mut viewer = hub.client(Role::Viewer);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let u = viewer
            .get_usage(pb::GetUsageRequest { customer: "acme".into(), month: String::new() })
            .await
            .unwrap()
            .into_inner();
        let host = u.rows.iter().find(|r| r.scope == "host" && r.server == "u-2");
        let project = u.rows.iter().find(|r| r.scope == "namespace/acme");
        if let (Some(h), Some(p)) = (host, project)
            && h.covered_hours > 0.0
            && h.memory_peak_bytes > 0
            && h.database_bytes > 0
        {
            assert_eq!((p.memory_peak_bytes, p.database_bytes), (1 << 20, 4096));
            break;
        }
        assert!(Instant::now() < deadline, "no usage from the agent: {u:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
