//! The store conformance suite: what every backend must do, written against the repository traits only.
//! A backend's test implements [`Backend`] (open the same store again, close it) and calls [`run`]; the
//! PostgreSQL backend will run this suite unchanged.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    AuditEntry, AuditQuery, BurnedToken, HubStore, Kind, OperatorRevocation, Outcome, PendingRecord, PlanRecord,
    PlanUpdate, Revoked, ServerRecord, StoreError, TokenRecord, TokenState,
};
use super::{JobKind, JobState, QueuedJob, SilenceRecord, Submitted};
use super::{Resolution, ScopeUsage, UsageBucket, UsageCounters, UsageCursor};

/// Opens one and the same store, again and again.
#[async_trait]
pub trait Backend {
    /// Opens the store (empty the first time; with everything written before on later calls).
    async fn open(&mut self) -> Arc<dyn HubStore>;
    /// Closes it; the suite holds no other handle.
    async fn close(&mut self, store: Arc<dyn HubStore>);
}

/// Closes an embedded store: drops the suite's only handle and waits for its writer to stop (it lets go of
/// the files then).
pub async fn close_embedded(store: Arc<dyn HubStore>, writer: Option<tokio::task::JoinHandle<()>>) {
    assert_eq!(Arc::strong_count(&store), 1, "the suite holds the only handle when it closes the store");
    drop(store);
    if let Some(w) = writer {
        w.await.unwrap();
    }
}

fn server(name: &str) -> ServerRecord {
    ServerRecord { name: name.into(), customer: "acme".into(), plan: "pro".into(), ..Default::default() }
}

fn token(server: &str) -> TokenRecord {
    TokenRecord { server: server.into(), created_ms: 1, expires_ms: i64::MAX, created_by: "ann".into() }
}

fn pending(server: &str, job: &str) -> PendingRecord {
    PendingRecord {
        server: server.into(),
        job_id: job.into(),
        action: "diagnostics".into(),
        args: [("a".to_string(), "1".to_string())].into(),
        operator: "ann".into(),
        run_for_ms: 30_000,
        deadline_ms: Some(7),
        queue_until_ms: None,
        hub: String::new(),
    }
}

fn plan(targets: &[&str]) -> PlanRecord {
    PlanRecord {
        action: "diagnostics".into(),
        args: Default::default(),
        operator: "ann".into(),
        audit_id: 1,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        batches: vec![targets.len()],
        max_failure_rate: 0.5,
        run_for_ms: 30_000,
        deadline_ms: None,
        queue_secs: Some(60),
        succeeded: 1,
        failed: 0,
        hub: String::new(),
        window: "22:00-06:00".into(),
        paused: false,
    }
}

/// Runs every check; panics with what failed.
pub async fn run(backend: &mut dyn Backend) {
    let store = backend.open().await;
    leases_have_one_holder_at_a_time(&*store).await;
    one_server_reads_back_with_its_progress(&*store).await;
    servers_are_replaced_whole(&*store).await;
    one_outstanding_token_per_server_and_single_use(store.clone()).await;
    reports_are_bounded_and_carry_the_high_water_mark(&*store).await;
    audit_ids_grow_are_unique_and_queries_filter(store.clone()).await;
    commands_and_plans_end_with_their_audit_record(&*store).await;
    a_dead_hubs_commands_are_claimed_once(store.clone()).await;
    revocations_are_kept(&*store).await;
    usage_buckets_and_their_cursor_are_written_together(&*store).await;
    let last_job = the_queue_claims_once_in_order_and_checks_leases(store.clone()).await;
    let silence = SilenceRecord {
        matchers: [("alertname".to_string(), "disk_full".to_string())].into(),
        starts_ms: 1,
        expires_ms: 2,
        creator: "ann".into(),
        comment: "maintenance".into(),
    };
    store.put_silence("s1", &silence, AuditEntry::default()).await.unwrap();
    let firing = super::AlertRecord { acked_by: "ann".into(), notified: true, ..Default::default() };
    store.put_alert("alertname=disk_full", Some(&firing)).await.unwrap();
    store.put_alert("alertname=gone", Some(&firing)).await.unwrap();
    store.put_alert("alertname=gone", None).await.unwrap();
    // Written again without its acknowledgement (by a hub that has not seen it): the acknowledgement stays;
    // once resolved and firing again, it is a new alert.
    let unacked = super::AlertRecord { acked_by: String::new(), value: 2.0, ..firing.clone() };
    store.put_alert("alertname=disk_full", Some(&unacked)).await.unwrap();
    let stored = store.firing_alerts().await.unwrap();
    assert_eq!((stored[0].1.acked_by.as_str(), stored[0].1.value), ("ann", 2.0), "the acknowledgement stays");
    store.put_alert("alertname=again", Some(&firing)).await.unwrap();
    store.put_alert("alertname=again", None).await.unwrap();
    store.put_alert("alertname=again", Some(&unacked)).await.unwrap();
    let again = store.firing_alerts().await.unwrap().into_iter().find(|(k, _)| k == "alertname=again").unwrap();
    assert_eq!(again.1.acked_by, "", "a resolved alert's acknowledgement went with it");
    store.put_alert("alertname=again", None).await.unwrap();
    assert_eq!(store.silences().await.unwrap(), [("s1".to_string(), silence.clone())]);
    backend.close(store).await;

    // Everything reads back after a reopen, and audit ids go on from where they were.
    let store = backend.open().await;
    let names: BTreeSet<String> = store.servers().await.unwrap().into_iter().map(|s| s.name).collect();
    assert!(names.is_superset(&["a", "b", "r"].map(String::from).into()), "{names:?}");
    let r = store.servers().await.unwrap().into_iter().find(|s| s.name == "r").unwrap();
    assert_eq!(r.last_seq, 102, "the high-water mark survives a reopen");
    assert_eq!(store.apps("r").await.unwrap(), Some(vec![3]));
    assert_eq!(store.history("r", 1).await.unwrap(), vec![vec![100u8]]);
    assert!(store.revoked_serials().await.unwrap().contains(&"s1".to_string()));
    assert_eq!(
        store.operator_revocations().await.unwrap(),
        vec![("eve".into(), OperatorRevocation { revoked_ms: 5, by: "ann".into() })]
    );
    // Jobs read back, and ids go on.
    assert_eq!(store.job(last_job).await.unwrap().unwrap().state, JobState::Cancelled);
    assert_eq!(store.silences().await.unwrap().len(), 1, "silences survive a reopen");
    let firing = store.firing_alerts().await.unwrap();
    assert_eq!(firing.len(), 1, "firing alerts survive a reopen; resolved ones are forgotten");
    assert_eq!((firing[0].0.as_str(), firing[0].1.acked_by.as_str()), ("alertname=disk_full", "ann"));
    assert_eq!(store.usage_cursor("u1").await.unwrap().map(|c| c.seq), Some(7), "usage survives a reopen");
    assert_eq!(store.usage_between(Resolution::Day, 0, i64::MAX, None).await.unwrap().len(), 2);
    let next_job = match store.submit_job(job("after-reopen", 1, 0), AuditEntry::default()).await.unwrap() {
        Submitted::New(j) => j.id,
        other => panic!("{other:?}"),
    };
    assert_eq!(next_job, last_job + 1, "job ids continue after a reopen");
    assert_eq!(store.claim_job("w", i64::MAX / 2, 10).await.unwrap().map(|j| j.id), Some(next_job));
    let before = store.query_audit(&AuditQuery { limit: 1, ..Default::default() }).await.unwrap()[0].id;
    let next = store.append_audit(AuditEntry::default()).await.unwrap();
    assert_eq!(next, before + 1, "audit ids continue after a reopen");
    assert!(store.pending_commands().await.unwrap().is_empty() && store.plans().await.unwrap().is_empty());
    // Retention removes old records but always keeps the newest (ids are never reused).
    let trimmed = store.trim_audit(i64::MAX).await.unwrap();
    assert!(trimmed > 0);
    let left = store.query_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(left.iter().map(|e| e.id).collect::<Vec<_>>(), [next]);
    assert_eq!(store.trim_audit(i64::MAX).await.unwrap(), 0);
    backend.close(store).await;
    let store = backend.open().await;
    assert_eq!(
        store.append_audit(AuditEntry::default()).await.unwrap(),
        next + 1,
        "ids are not reused after retention"
    );
    backend.close(store).await;
}

async fn servers_are_replaced_whole(store: &dyn HubStore) {
    let mut a = server("a");
    store.put_server(&a).await.unwrap();
    a.labels.insert("tier".into(), "gold".into());
    a.customer = String::new();
    store.put_server(&a).await.unwrap();
    let got = store.servers().await.unwrap().into_iter().find(|s| s.name == "a").unwrap();
    assert_eq!(got, a);

    // Progress only moves forward under one identity: a record from an older view (another hub, a second
    // behind) changes the labels, not the high-water mark or the counters.
    let mut p = ServerRecord { name: "p".into(), agent_id: "ag-1".into(), ..Default::default() };
    (p.last_seq, p.reports_received, p.last_seen_ms, p.last_report_ms, p.first_seen_ms) = (10, 10, 1000, 990, 5);
    store.put_server(&p).await.unwrap();
    let mut stale = p.clone();
    stale.labels.insert("tier".into(), "gold".into());
    (stale.last_seq, stale.reports_received, stale.last_seen_ms, stale.last_report_ms) = (7, 7, 900, 890);
    store.put_server(&stale).await.unwrap();
    let got = store.server("p").await.unwrap().unwrap();
    assert_eq!(got.labels, stale.labels, "the newer labels");
    assert_eq!(
        (got.last_seq, got.reports_received, got.last_seen_ms, got.last_report_ms, got.first_seen_ms),
        (10, 10, 1000, 990, 5),
        "the progress did not go back"
    );
    // A new identity starts its own.
    let fresh = ServerRecord { name: "p".into(), agent_id: "ag-2".into(), ..Default::default() };
    store.put_server(&fresh).await.unwrap();
    assert_eq!(store.server("p").await.unwrap().unwrap(), fresh);
    store.remove_server("p").await.unwrap();
}

async fn one_outstanding_token_per_server_and_single_use(store: Arc<dyn HubStore>) {
    let b = server("b");
    assert_eq!(store.issue_token("h1", &token("b"), &b).await.unwrap(), 0);
    assert_eq!(store.issue_token("other", &token("a"), &server("a")).await.unwrap(), 0);
    assert_eq!(store.issue_token("h2", &token("b"), &b).await.unwrap(), 1, "the older token of b goes");
    assert_eq!(store.token("h1").await.unwrap(), TokenState::Unknown);
    assert_eq!(store.token("h2").await.unwrap(), TokenState::Live(token("b")));
    assert_eq!(store.token("other").await.unwrap(), TokenState::Live(token("a")), "another server's token stays");

    // Ten enrollments race for one token: exactly one wins, the others change nothing.
    let racers: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let enrolled = ServerRecord { agent_id: format!("agent-{i}"), ..server("b") };
                let burned = BurnedToken { server: "b".into(), burned_ms: 3, agent_id: enrolled.agent_id.clone() };
                let takeover =
                    AuditEntry { action: "takeover".into(), message: format!("by {i}"), ..Default::default() };
                store.enroll("h2", &burned, &enrolled, Some(takeover)).await.map(|()| i)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        match r.await.unwrap() {
            Ok(i) => winners.push(i),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let winner = format!("agent-{}", winners[0]);
    match store.token("h2").await.unwrap() {
        TokenState::Burned(b) => assert_eq!(b.agent_id, winner),
        other => panic!("{other:?}"),
    }
    let b = store.servers().await.unwrap().into_iter().find(|s| s.name == "b").unwrap();
    assert_eq!(b.agent_id, winner, "the server record is the winner's");
    let takeovers =
        store.query_audit(&AuditQuery { action: "takeover".into(), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(takeovers.len(), 1, "only the winning enrollment is audited");
    assert_eq!(takeovers[0].message, format!("by {}", winners[0]));
    let burned = BurnedToken { server: "b".into(), burned_ms: 4, agent_id: "late".into() };
    assert!(matches!(store.enroll("never-issued", &burned, &server("b"), None).await, Err(StoreError::Conflict(_))));
}

async fn reports_are_bounded_and_carry_the_high_water_mark(store: &dyn HubStore) {
    let mut r = server("r");
    let keep = 10;
    for seq in 1..=100u64 {
        r.last_seq = seq;
        store.record_report(&r, seq, vec![seq as u8], keep).await.unwrap();
    }
    let history = store.history("r", 1000).await.unwrap();
    assert!((keep as usize..=keep as usize + 64).contains(&history.len()), "{} points kept", history.len());
    let seqs: Vec<u8> = history.iter().map(|p| p[0]).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1) && *seqs.last().unwrap() == 100, "{seqs:?}");
    assert_eq!(store.history("r", 3).await.unwrap(), vec![vec![98], vec![99], vec![100]]);
    assert_eq!(store.history("r", 0).await.unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(store.report("r", 100).await.unwrap(), Some(vec![100]));
    assert_eq!(store.report("r", 1).await.unwrap(), None, "trimmed");
    // A server whose name is a prefix of another's does not see its reports.
    assert!(store.history("", 10).await.unwrap().is_empty());
    let mut rr = server("rr");
    rr.last_seq = 1;
    store.record_report(&rr, 1, vec![42], keep).await.unwrap();
    assert_eq!(store.history("r", 1).await.unwrap(), vec![vec![100]]);
    assert_eq!(store.servers().await.unwrap().into_iter().find(|s| s.name == "r").unwrap().last_seq, 100);
    // An apps state replaces the previous one and moves the high-water mark with it.
    assert_eq!(store.apps("r").await.unwrap(), None);
    r.last_seq = 101;
    store.record_apps(&r, 101, vec![1, 2]).await.unwrap();
    r.last_seq = 102;
    store.record_apps(&r, 102, vec![3]).await.unwrap();
    assert_eq!(store.apps("r").await.unwrap(), Some(vec![3]));
    assert_eq!(store.apps("rr").await.unwrap(), None);
    assert_eq!(store.servers().await.unwrap().into_iter().find(|s| s.name == "r").unwrap().last_seq, 102);
    assert_eq!(store.history("r", 1).await.unwrap(), vec![vec![100]], "history holds health only");
}

async fn audit_ids_grow_are_unique_and_queries_filter(store: Arc<dyn HubStore>) {
    let appends: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let e = AuditEntry {
                    operator: if i % 2 == 0 { "ann" } else { "bob" }.into(),
                    action: "exec".into(),
                    servers: vec![format!("s{i}")],
                    ..Default::default()
                };
                store.append_audit(e).await.unwrap()
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for a in appends {
        assert!(ids.insert(a.await.unwrap()), "audit ids are unique");
    }
    let q = async |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery { limit: 1000, ..Default::default() };
        f(&mut q);
        store.query_audit(&q).await.unwrap()
    };
    let all = q(|q| q.action = "exec".into()).await;
    assert_eq!(all.len(), 50);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id && w[0].at_ms >= w[1].at_ms), "newest first");
    assert!(all.iter().all(|e| e.at_ms > 0), "the store gives the time");
    assert_eq!(q(|q| q.operator = "bob".into()).await.len(), 25);
    assert_eq!(q(|q| q.server = "s7".into()).await.len(), 1);
    assert_eq!(q(|q| q.limit = 3).await.len(), 3);
    assert!(q(|q| q.since_ms = i64::MAX).await.is_empty());
    let e = AuditEntry { outcome: Outcome::TimedOut, kind: Kind::Result, message: "m".into(), ..Default::default() };
    let id = store.append_audit(e.clone()).await.unwrap();
    let got = &q(|q| q.limit = 1).await[0];
    assert_eq!((got.id, got.kind, got.outcome, got.message.as_str()), (id, Kind::Result, Outcome::TimedOut, "m"));
}

async fn commands_and_plans_end_with_their_audit_record(store: &dyn HubStore) {
    let batch = vec![("c1".to_string(), pending("a", "j1")), ("c2".to_string(), pending("b", "j1"))];
    store.dispatch_batch("j1", &batch, PlanUpdate::Remaining(Box::new(plan(&["c", "d"])))).await.unwrap();
    let mut got: Vec<(String, PendingRecord)> =
        store.pending_commands().await.unwrap().into_iter().map(|(id, r)| (id, r.unwrap())).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, batch);
    assert_eq!(store.plans().await.unwrap(), vec![("j1".to_string(), Ok(plan(&["c", "d"])))]);
    // Paused and resumed, the plan otherwise unchanged; a job without a plan says so.
    assert!(store.set_plan_paused("j1", true).await.unwrap());
    let paused = PlanRecord { paused: true, ..plan(&["c", "d"]) };
    assert_eq!(store.plans().await.unwrap(), vec![("j1".to_string(), Ok(paused))]);
    assert!(store.set_plan_paused("j1", false).await.unwrap());
    assert_eq!(store.plans().await.unwrap(), vec![("j1".to_string(), Ok(plan(&["c", "d"])))]);
    assert!(!store.set_plan_paused("nope", true).await.unwrap());

    let result =
        AuditEntry { kind: Kind::Result, command_id: "c1".into(), outcome: Outcome::Succeeded, ..Default::default() };
    let id = store.finish_command("c1", "", result).await.unwrap();
    assert_eq!(store.pending_commands().await.unwrap().len(), 1, "c1's pending record went with its result");
    let audited = store.query_audit(&AuditQuery { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!((audited[0].id, audited[0].outcome), (id, Outcome::Succeeded));

    // The next batch replaces the plan; the last batch removes it.
    store
        .dispatch_batch("j1", &[("c3".into(), pending("c", "j1"))], PlanUpdate::Remaining(Box::new(plan(&["d"]))))
        .await
        .unwrap();
    assert_eq!(store.plans().await.unwrap(), vec![("j1".to_string(), Ok(plan(&["d"])))]);
    store.dispatch_batch("j1", &[("c4".into(), pending("d", "j1"))], PlanUpdate::Done).await.unwrap();
    assert!(store.plans().await.unwrap().is_empty());
    for c in ["c2", "c3", "c4"] {
        store.finish_command(c, "", AuditEntry::default()).await.unwrap();
    }
    assert!(store.pending_commands().await.unwrap().is_empty());

    // A job that stops early: its skipped targets are audited and its plan goes, in one write.
    store.dispatch_batch("j2", &[], PlanUpdate::Remaining(Box::new(plan(&["e"])))).await.unwrap();
    let skipped = AuditEntry { outcome: Outcome::Skipped, job_id: "j2".into(), ..Default::default() };
    let id = store.finish_job("j2", "", skipped).await.unwrap();
    assert!(store.plans().await.unwrap().is_empty());
    let audited = store.query_audit(&AuditQuery { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!((audited[0].id, audited[0].outcome), (id, Outcome::Skipped));
}

async fn revocations_are_kept(store: &dyn HubStore) {
    let mut a = server("a");
    a.revoked_ms = 9;
    let by = Revoked { server: "a".into(), revoked_ms: 9, by: "ann".into() };
    store.revoke_identity(&a, &["s1".into(), "s0".into()], &by).await.unwrap();
    let mut serials = store.revoked_serials().await.unwrap();
    serials.sort();
    assert_eq!(serials, ["s0", "s1"]);
    assert_eq!(store.servers().await.unwrap().into_iter().find(|s| s.name == "a").unwrap().revoked_ms, 9);
    store.revoke_operator("eve", &OperatorRevocation { revoked_ms: 5, by: "ann".into() }).await.unwrap();
}

fn job(key: &str, priority: u8, created_ms: i64) -> QueuedJob {
    QueuedJob {
        kind: JobKind::Provision,
        priority,
        idempotency_key: key.into(),
        params: [("customer".to_string(), key.to_string())].into(),
        target: key.into(),
        created_ms,
        max_attempts: 3,
        ..Default::default()
    }
}

async fn submit(store: &dyn HubStore, j: QueuedJob) -> u64 {
    match store.submit_job(j, AuditEntry { action: "provision".into(), ..Default::default() }).await.unwrap() {
        Submitted::New(j) => {
            assert_eq!(j.state, JobState::Pending);
            j.id
        }
        Submitted::Existing(j) => panic!("a new key returned job {}", j.id),
    }
}

/// Returns the id of the last job it submitted. Leaves no job that can be claimed.
async fn the_queue_claims_once_in_order_and_checks_leases(store: Arc<dyn HubStore>) -> u64 {
    const NOW: i64 = 1_000_000;
    // Priority first, then age; a job whose time has not come waits.
    let starter = submit(&*store, job("starter", 1, 1)).await;
    let team = submit(&*store, job("team", 3, 3)).await;
    let pro_new = submit(&*store, job("pro-new", 2, 5)).await;
    let pro_old = submit(&*store, job("pro-old", 2, 2)).await;
    let later = submit(&*store, QueuedJob { not_before_ms: NOW + 1_000, ..job("later", 3, 0) }).await;
    assert!(team > starter, "ids grow");

    // Idempotency: the same key and parameters return the job; other parameters are refused.
    match store.submit_job(job("team", 3, 9), AuditEntry::default()).await.unwrap() {
        Submitted::Existing(j) => assert_eq!(j.id, team),
        other => panic!("{other:?}"),
    }
    let mut changed = job("team", 3, 9);
    changed.params.insert("plan".into(), "starter".into());
    match store.submit_job(changed, AuditEntry::default()).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("other parameters"), "{m}"),
        other => panic!("{other:?}"),
    }

    let mut order = Vec::new();
    while let Some(j) = store.claim_job("w1", NOW, 60_000).await.unwrap() {
        assert_eq!(
            (j.state, j.attempt, j.lease_owner.as_str(), j.lease_until_ms),
            (JobState::Running, 1, "w1", NOW + 60_000)
        );
        order.push(j.id);
    }
    assert_eq!(order, [team, pro_old, pro_new, starter], "priority, then age; `later` waits");

    // A held job is updated only by its holder.
    let mut held = store.job(team).await.unwrap().unwrap();
    held.facts.insert("cloud_id".into(), "42".into());
    match store.update_job(&held, "w2", None).await {
        Err(StoreError::Conflict(m)) => assert!(m.contains("no longer held"), "{m}"),
        other => panic!("another worker's update went through: {other:?}"),
    }
    store.update_job(&held, "w1", Some(AuditEntry { action: "step".into(), ..Default::default() })).await.unwrap();
    assert_eq!(store.job(team).await.unwrap().unwrap().facts["cloud_id"], "42");

    // The lease runs out: another worker takes the job up (a new attempt), and the old holder is refused.
    assert!(store.claim_job("w2", NOW + 900, 10_000).await.unwrap().is_none(), "leases still run");
    let later_ms = NOW + 60_001;
    let mut took = Vec::new();
    while let Some(j) = store.claim_job("w2", later_ms, 10_000).await.unwrap() {
        took.push((j.id, j.attempt, j.facts.get("cloud_id").cloned()));
    }
    assert_eq!(
        took,
        [(later, 1, None), (team, 2, Some("42".into())), (pro_old, 2, None), (pro_new, 2, None), (starter, 2, None)],
    );
    assert!(matches!(store.update_job(&held, "w1", None).await, Err(StoreError::Conflict(_))));

    // Racing claims: one job, ten workers, one winner.
    let race = submit(&*store, job("race", 2, 10)).await;
    let claims: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.claim_job(&format!("r{i}"), NOW, 60_000).await.unwrap() })
        })
        .collect();
    let mut winners = Vec::new();
    for c in claims {
        if let Some(j) = c.await.unwrap() {
            winners.push(j.id);
        }
    }
    assert_eq!(winners, [race], "exactly one claim wins");

    // Cancel: a running job is asked to stop (and the request survives its holder's next update); a pending
    // one ends at once. Final jobs are never claimed again.
    let running = store.cancel_job(race, AuditEntry::default()).await.unwrap().unwrap();
    assert!(running.cancel_requested && running.state == JobState::Running);
    let mut stale = store.job(race).await.unwrap().unwrap();
    stale.cancel_requested = false;
    let holder = stale.lease_owner.clone();
    store.update_job(&stale, &holder, None).await.unwrap();
    assert!(store.job(race).await.unwrap().unwrap().cancel_requested, "a cancel is not lost to a concurrent update");
    for id in [later, team, pro_old, pro_new, starter, race] {
        let mut j = store.job(id).await.unwrap().unwrap();
        j.state = JobState::Succeeded;
        let owner = j.lease_owner.clone();
        store.update_job(&j, &owner, None).await.unwrap();
    }
    let pending = submit(&*store, QueuedJob { not_before_ms: i64::MAX, ..job("pending", 1, 11) }).await;
    let cancelled = store.cancel_job(pending, AuditEntry::default()).await.unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    // One that ran and waits for a retry is made due, asked to stop: its undo runs on the next claim.
    let retried = submit(&*store, job("retried", 1, 12)).await;
    let mut r = store.claim_job("w4", 0, 10).await.unwrap().expect("due");
    assert_eq!(r.id, retried);
    (r.state, r.not_before_ms) = (JobState::Pending, i64::MAX);
    store.update_job(&r, "w4", None).await.unwrap();
    let asked = store.cancel_job(retried, AuditEntry::default()).await.unwrap().unwrap();
    assert!(asked.state == JobState::Pending && asked.cancel_requested && asked.not_before_ms == 0, "{asked:?}");
    let claimed = store.claim_job("w5", 0, 10).await.unwrap().expect("claimed at once to be undone");
    assert!(claimed.id == retried && claimed.cancel_requested);
    let mut done = claimed;
    done.state = JobState::Cancelled;
    store.update_job(&done, "w5", None).await.unwrap();
    assert!(store.claim_job("w3", i64::MAX / 2, 10).await.unwrap().is_none(), "nothing open is left");
    assert!(store.cancel_job(9_999_999, AuditEntry::default()).await.unwrap().is_none());
    let listed: Vec<u64> = store.jobs(2).await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(listed, [retried, pending], "newest first, limited");
    // Retention: final jobs that ended before the cutoff go, with their keys (the key can be used again).
    assert_eq!(store.trim_jobs(0).await.unwrap(), 0, "nothing ended before 0");
    let before = store.jobs(0).await.unwrap().len();
    assert_eq!(store.trim_jobs(i64::MAX).await.unwrap(), before, "every job here is final");
    assert!(store.job(starter).await.unwrap().is_none());
    let again = submit(&*store, QueuedJob { not_before_ms: i64::MAX, ..job("starter", 1, 1) }).await;
    assert!(again > retried, "ids are not reused after retention");
    assert_eq!(store.cancel_job(again, AuditEntry::default()).await.unwrap().unwrap().state, JobState::Cancelled);
    again
}

fn bucket(customer: &str, cpu: f64) -> UsageBucket {
    UsageBucket {
        customer: customer.into(),
        plan: "pro".into(),
        scopes: vec![ScopeUsage { scope: "host".into(), cpu_seconds: cpu, samples: 1, ..Default::default() }],
    }
}

async fn usage_buckets_and_their_cursor_are_written_together(store: &dyn HubStore) {
    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;
    let mut u1 = server("u1");
    u1.last_seq = 7;
    let cursor = UsageCursor {
        seq: 7,
        scopes: [("host".to_string(), UsageCounters { cpu_usec: 5, egress_bytes: 6, taken_at_ms: 10 * D + H })].into(),
    };
    let buckets = [
        (Resolution::Hour, 10 * D, bucket("acme", 1.0)),
        (Resolution::Hour, 10 * D + H, bucket("acme", 2.0)),
        (Resolution::Day, 10 * D, bucket("acme", 3.0)),
    ];
    store.record_usage(&u1, &cursor, &buckets).await.unwrap();
    let mut u2 = server("u2");
    u2.customer = "zeta".into();
    store
        .record_usage(
            &u2,
            &UsageCursor { seq: 1, ..Default::default() },
            &[(Resolution::Day, 11 * D, bucket("zeta", 9.0))],
        )
        .await
        .unwrap();
    assert_eq!(store.usage_cursor("u1").await.unwrap(), Some(cursor));
    assert_eq!(store.usage_cursor("nobody").await.unwrap(), None);
    let high_water = store.servers().await.unwrap().into_iter().find(|s| s.name == "u1").unwrap().last_seq;
    assert_eq!(high_water, 7, "the server record with the high-water mark is written too");
    assert_eq!(
        store.usage_bucket(Resolution::Hour, 10 * D + H, "acme", "u1").await.unwrap(),
        Some(bucket("acme", 2.0))
    );
    assert_eq!(
        store.usage_bucket(Resolution::Hour, 10 * D + H, "zeta", "u1").await.unwrap(),
        None,
        "keyed by customer"
    );
    // Ranges: by resolution, by start in [from, to), by customer, oldest first.
    let hours = store.usage_between(Resolution::Hour, 0, i64::MAX, None).await.unwrap();
    assert_eq!(
        hours.iter().map(|(t, s, _)| (*t, s.as_str())).collect::<Vec<_>>(),
        [(10 * D, "u1"), (10 * D + H, "u1")]
    );
    assert_eq!(store.usage_between(Resolution::Hour, 10 * D + 1, 11 * D, None).await.unwrap().len(), 1);
    let days = store.usage_between(Resolution::Day, 0, i64::MAX, Some("zeta")).await.unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!((days[0].0, days[0].1.as_str(), days[0].2.scopes[0].cpu_seconds), (11 * D, "u2", 9.0));
    assert_eq!(store.usage_between(Resolution::Day, 0, i64::MAX, Some("acm")).await.unwrap().len(), 0, "whole names");
    // Retention per resolution.
    assert_eq!(store.trim_usage(Resolution::Hour, 10 * D + H).await.unwrap(), 1);
    assert_eq!(store.usage_between(Resolution::Hour, 0, i64::MAX, None).await.unwrap().len(), 1);
    assert_eq!(store.usage_between(Resolution::Day, 0, i64::MAX, None).await.unwrap().len(), 2, "days untouched");
}

async fn one_server_reads_back_with_its_progress(store: &dyn HubStore) {
    assert_eq!(store.server("nobody").await.unwrap(), None);
    let mut r = server("one");
    store.put_server(&r).await.unwrap();
    r.last_seq = 5;
    store.record_report(&r, 5, vec![5], 10).await.unwrap();
    assert_eq!(store.server("one").await.unwrap(), Some(r.clone()), "the record with the progress of its last report");
    assert_eq!(store.server_of_agent("").await.unwrap(), None);
    r.agent_id = "agent-one".into();
    store.put_server(&r).await.unwrap();
    assert_eq!(store.server_of_agent("agent-one").await.unwrap(), Some(r));
    store.remove_server("one").await.unwrap();
}

async fn leases_have_one_holder_at_a_time(store: &dyn HubStore) {
    assert!(store.hold_lease("alerts", "a", 1000, 100).await.unwrap(), "a free lease is taken");
    assert!(!store.hold_lease("alerts", "b", 1050, 100).await.unwrap(), "held by a until 1100");
    assert!(store.hold_lease("alerts", "a", 1090, 100).await.unwrap(), "renewed by its holder");
    assert!(!store.hold_lease("alerts", "b", 1150, 100).await.unwrap(), "the renewal runs to 1190");
    assert!(store.hold_lease("other", "b", 1150, 100).await.unwrap(), "leases are by name");
    assert!(store.hold_lease("alerts", "b", 1191, 100).await.unwrap(), "a lease that ran out is taken over");
    assert!(!store.hold_lease("alerts", "a", 1200, 100).await.unwrap(), "and the old holder has lost it");
}

async fn a_dead_hubs_commands_are_claimed_once(store: Arc<dyn HubStore>) {
    let of = |hub: &str, r: PendingRecord| PendingRecord { hub: hub.into(), ..r };
    let batch: Vec<(String, PendingRecord)> =
        (0..20).map(|i| (format!("k{i:02}"), of("dead", pending(&format!("s{i}"), "jk")))).collect();
    let plan = PlanRecord { hub: "dead".into(), ..plan(&["t"]) };
    store.dispatch_batch("jk", &batch, PlanUpdate::Remaining(Box::new(plan))).await.unwrap();
    store.dispatch_batch("jl", &[("l1".into(), of("alive", pending("s", "jl")))], PlanUpdate::Done).await.unwrap();
    // Two hubs claim the dead one's records at once: each record goes to one of them.
    let (a, b) = tokio::join!(store.claim_commands("dead", "a"), store.claim_commands("dead", "b"));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut ids: Vec<String> = a.0.iter().chain(&b.0).map(|(id, _)| id.clone()).collect();
    ids.sort();
    assert_eq!(ids, batch.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), "every command claimed once");
    assert_eq!(a.1.len() + b.1.len(), 1, "the plan claimed once");
    assert!(a.0.iter().all(|(_, r)| r.hub == "a") && b.0.iter().all(|(_, r)| r.hub == "b"));
    assert_eq!(store.claim_commands("dead", "c").await.unwrap(), (vec![], vec![]), "nothing left");
    let stored = store.pending_commands().await.unwrap();
    assert!(stored.iter().any(|(id, r)| id == "l1" && r.as_ref().unwrap().hub == "alive"), "others' stay");
    // The "dead" hub was only cut off from the store; back, it finishes what it no longer holds: refused,
    // nothing audited, the record stays with its new holder.
    let audits = || async { store.query_audit(&AuditQuery { limit: 1000, ..Default::default() }).await.unwrap().len() };
    let before = audits().await;
    let e = store.finish_command("k00", "dead", AuditEntry::default()).await.unwrap_err();
    assert!(matches!(&e, StoreError::Conflict(m) if m.contains("taken over")), "{e}");
    let e = store.finish_job("jk", "dead", AuditEntry::default()).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert_eq!(audits().await, before, "nothing audited by the hub that lost the records");
    assert_eq!(store.pending_commands().await.unwrap().len(), stored.len());
    let plan_holder = if a.1.is_empty() { "b" } else { "a" };
    for (id, r) in stored {
        store.finish_command(&id, &r.unwrap().hub, AuditEntry::default()).await.unwrap();
    }
    store.finish_job("jk", plan_holder, AuditEntry::default()).await.unwrap();
    assert_eq!(audits().await, before + 22, "each holder audited its own");
}
