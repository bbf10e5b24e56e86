//! Several hubs on one PostgreSQL (a real one, started here): one fleet on every replica, agents that
//! move to another replica when theirs dies, every report stored exactly once, revocations in force on
//! every replica, and a database outage that loses nothing.

use harness::{AgentProc, HubProc, is, watch_until};
use outpost_common::Role;
use outpost_proto::v1 as pb;
use outpost_proto::v1::{CreateJoinTokenRequest, GetServerRequest, Liveness, RevokeServerRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_fleet_fail_over_and_wait_out_the_database() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let mut pg = standin::postgres::Postgres::start(false).unwrap();
    let ports = [harness::free_port(), harness::free_port()];
    let mut config = harness::replica_config(&pg, tmp.path(), &ports, "grace_secs = 3");
    config.push_str(
        "[alerts]\neval_secs = 1\nresolve_after_secs = 0\n[[alerts.rules]]\nname = \"server_lost\"\nmetric = \"server_offline_seconds\"\n\
         op = \">\"\nthreshold = 1\nseverity = \"critical\"\n",
    );
    let mut a = HubProc::start(&tmp.path().join("a"), ports[0], &config).await;

    // Agents enroll while only replica A is up: the ones whose turn is B find it closed and go to A.
    let names = ["r-1", "r-2", "r-3"];
    let mut agents = Vec::new();
    for n in names {
        let token = a.token(n).await;
        let extra = if n == "r-1" { "exec_enabled = true" } else { "" };
        agents.push(AgentProc::start(tmp.path(), n, &token, extra));
    }
    let mut on_a = a.client(Role::Viewer);
    watch_until(&mut on_a, "three agents on replica A", |f| {
        names.iter().all(|n| is(f, n, Liveness::Connected) && f[*n].reports_received >= 3)
    })
    .await;

    // Replica B starts on the same database: its fleet view shows A's agents live, reports included.
    let b = HubProc::start(&tmp.path().join("b"), ports[1], &config).await;
    let mut on_b = b.client(Role::Viewer);
    let seen_on_a = on_a.get_server(GetServerRequest { name: "r-1".into(), history: 0 }).await.unwrap();
    let seq_on_a = seen_on_a.into_inner().server.unwrap().last_seq;
    watch_until(&mut on_b, "A's agents live on B", |f| {
        names.iter().all(|n| is(f, n, Liveness::Connected)) && f["r-1"].last_seq > seq_on_a
    })
    .await;

    // An action submitted on B for an agent on A runs on A; its output streams back through B, and it is
    // audited once, as the operator who asked (B could not have run it: r-1's stream is not on B).
    let mut admin_b = b.client(Role::Admin);
    let run = harness::run_job(&mut admin_b, harness::action("diagnostics", &["r-1"], &[])).await;
    assert_eq!(run.result("r-1").outcome, pb::Outcome::Succeeded as i32, "{:#?}", run.events);
    assert!(run.output["r-1"].contains("agentd"), "{}", run.output["r-1"]);
    let q = pb::QueryAuditRequest { action: "diagnostics".into(), limit: 100, ..Default::default() };
    let records = admin_b.query_audit(q).await.unwrap().into_inner().records;
    assert_eq!(records.len(), 2, "one request and one result: {records:#?}");
    assert!(records.iter().all(|r| r.operator == "test-admin"), "{records:#?}");

    // A token made on B enrolls an agent wherever it lands; A sees it too.
    let token = harness::create_token(&mut b.client(Role::Admin), "r-4").await;
    agents.push(AgentProc::start(tmp.path(), "r-4", &token, ""));
    watch_until(&mut on_a, "r-4 (token from B) connected, seen on A", |f| is(f, "r-4", Liveness::Connected)).await;

    // A revocation made on B is in force on A: the agent's stream there is closed within a second or so.
    let revoked_at = std::time::Instant::now();
    b.client(Role::Admin).revoke_server(RevokeServerRequest { name: "r-3".into() }).await.unwrap();
    watch_until(&mut on_a, "r-3 revoked, off A", |f| !is(f, "r-3", Liveness::Connected) && f["r-3"].revoked_ms > 0)
        .await;
    assert!(revoked_at.elapsed() < std::time::Duration::from_secs(3), "revocation took {:?}", revoked_at.elapsed());
    drop(on_a);

    // An agent dies: one replica evaluates alerts (it holds the lease), and both list the alert.
    let token = a.token("r-5").await;
    let mut r5 = AgentProc::start(tmp.path(), "r-5", &token, "");
    watch_until(&mut on_b, "r-5 connected", |f| is(f, "r-5", Liveness::Connected)).await;
    r5.kill9().await;
    for hub in [&a, &b] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut viewer = hub.client(Role::Viewer);
        loop {
            let alerts = viewer.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts;
            let lost =
                |a: &pb::AlertInfo| a.state == "firing" && a.labels.get("server").map(String::as_str) == Some("r-5");
            if alerts.iter().any(lost) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no firing server_lost for r-5 on {}: {alerts:#?}", hub.url);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    // Acknowledged once on B, which does not evaluate (A, up first, holds the lease): both list it
    // acknowledged. The alert does not flap meanwhile: the offline time counts from r-5's last report, so
    // neither the move to lost nor the holder's release seen late restarts it, and the acknowledgement
    // (which goes with the firing it acknowledged) stays.
    let ack = pb::AckAlertRequest { alertname: "server_lost".into(), server: "r-5".into() };
    let acked = b.client(Role::Support).ack_alert(ack).await.unwrap().into_inner().acknowledged;
    assert_eq!(acked, 1);
    for hub in [&a, &b] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut viewer = hub.client(Role::Viewer);
        loop {
            let alerts = viewer.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts;
            let r5 = alerts.iter().find(|a| a.labels.get("server").map(String::as_str) == Some("r-5"));
            if r5.is_some_and(|a| a.state == "firing" && a.acked_by == "test-support") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "r-5's alert not acknowledged on {}: {alerts:#?}", hub.url);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    // A command runs on r-1 through A when A dies without warning. Its agents move to B within their
    // backoff and their reports keep coming; B takes over A's pending command once A has been silent for
    // long enough, and it is delivered once: the agent answers from its journal, the side effect happened
    // once, and the result is audited once.
    let marker = tmp.path().join("ran-once");
    let script = format!("echo ran >> {}; sleep 5", marker.display());
    let mut req =
        harness::action("exec", &["r-1"], &[("argv", &serde_json::to_string(&["sh", "-c", &script]).unwrap())]);
    req.confirm = "r-1".into();
    // The caller's stream stays open (unread) until A dies.
    let _running = a.client(Role::Admin).run_action(req).await.unwrap().into_inner();
    let started = std::time::Instant::now();
    // The side effect is the event: the agent is running the command (a file has no notification to await).
    while marker.metadata().map_or(true, |m| m.len() == 0) {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the command never started");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = on_b.get_server(GetServerRequest { name: "r-1".into(), history: 0 }).await.unwrap();
    let before = before.into_inner().server.unwrap().last_seq;
    a.kill9().await;
    watch_until(&mut on_b, "A's agents on B", |f| {
        ["r-1", "r-2", "r-4"].iter().all(|n| is(f, n, Liveness::Connected)) && f["r-1"].last_seq >= before + 10
    })
    .await;
    let exec_audit =
        async |admin: &mut outpost_proto::v1::operator_client::OperatorClient<tonic::transport::Channel>| {
            let q = pb::QueryAuditRequest { action: "exec".into(), limit: 100, ..Default::default() };
            admin.query_audit(q).await.unwrap().into_inner().records
        };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let results = loop {
        let records = exec_audit(&mut admin_b).await;
        let results: Vec<_> = records.into_iter().filter(|r| r.kind == "result").collect();
        if !results.is_empty() || std::time::Instant::now() > deadline {
            break results;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(results.len(), 1, "the taken-over command's result, audited once: {results:#?}");
    assert_eq!(results[0].outcome, pb::Outcome::Succeeded as i32, "{results:#?}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n", "it ran once");

    // The database stops: B answers "store unavailable", agents keep their reports, nothing is lost.
    let before = on_b.get_server(GetServerRequest { name: "r-2".into(), history: 0 }).await.unwrap();
    let before = before.into_inner().server.unwrap().last_seq;
    pg.stop();
    let err = b
        .client(Role::Admin)
        .create_join_token(CreateJoinTokenRequest {
            server_name: "r-9".into(),
            ttl_secs: 600,
            customer: "acme".into(),
            plan: "pro".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("store unavailable: PostgreSQL at 127.0.0.1:"), "{}", err.message());
    // The outage is the thing under test: agents keep reporting into their outboxes meanwhile.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    pg.restart().unwrap();
    let f = watch_until(&mut on_b, "the outage drained", |f| {
        ["r-1", "r-2", "r-4"].iter().all(|n| is(f, n, Liveness::Connected)) && f["r-2"].last_seq >= before + 20
    })
    .await;
    assert!(f["r-3"].revoked_ms > 0);

    // Count them: every seq from 1 to last_seq is stored exactly once, across replicas and the outage.
    for n in ["r-1", "r-2", "r-4"] {
        let detail =
            on_b.get_server(GetServerRequest { name: n.to_string(), history: 2_000 }).await.unwrap().into_inner();
        let server = detail.server.unwrap();
        let seqs: Vec<u64> = detail.history.iter().map(|p| p.seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "{n}: history has gaps or duplicates");
        assert_eq!(server.reports_received, server.last_seq, "{n}: a report was counted twice");
    }
}
