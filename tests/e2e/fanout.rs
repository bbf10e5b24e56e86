//! Fan-out over 50 real agentd processes: canary first, batch size respected, stop at the failure threshold.

use std::collections::BTreeMap;

use harness::{AgentProc, HubProc, action, fake_systemctl, is, run_job, watch_until};
use outpost_common::Role;
use outpost_proto::v1::job_event::Event;
use outpost_proto::v1::{Liveness, Outcome, TargetState};

const N: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agents_canary_batches_and_failure_threshold() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let names: Vec<String> = (0..N).map(|i| format!("fan-{i:02}")).collect();
    // Failing units: two in batch 1 (fan-05..14), four in batch 2 (fan-15..24): 2/15 = 13 % stays under a
    // 20 % limit, 6/25 = 24 % goes over it, so the job must stop after batch 2 and skip fan-25..49.
    let failing = ["fan-07", "fan-12", "fan-16", "fan-17", "fan-18", "fan-20"];
    let mut admin = hub.client(Role::Admin);
    let mut agents = Vec::new();
    for n in &names {
        let dir = tmp.path().join(n);
        let systemctl = fake_systemctl(&dir);
        if failing.contains(&n.as_str()) {
            std::fs::write(dir.join("fail"), "").unwrap();
        }
        let token = harness::create_token(&mut admin, n).await;
        let extra = format!("systemctl = \"{}\"\nreport_interval_ms = 5000\n", systemctl.display());
        agents.push(AgentProc::start(tmp.path(), n, &token, &extra));
    }
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "50 agents connected", |f| names.iter().all(|n| is(f, n, Liveness::Connected))).await;

    let mut req = action("service-restart", &[], &[("unit", "k3s")]);
    req.selector.as_mut().unwrap().customer = "acme".into();
    req.batch = 10;
    req.canary = 5;
    req.max_failure_rate = 0.2;
    req.confirm = N.to_string();
    let run = run_job(&mut admin, req).await;
    assert_eq!(run.plan.batches, [5, 10, 10, 10, 10, 5]);
    assert_eq!(run.plan.targets, names);

    // Replay the event stream: which batch each event belongs to, and how many targets are in flight.
    let mut in_flight: BTreeMap<String, u32> = BTreeMap::new();
    let mut max_in_flight = 0;
    let mut done_per_batch: BTreeMap<u32, usize> = BTreeMap::new();
    for e in &run.events {
        let Event::Target(t) = e else { continue };
        if t.result.as_ref().is_some_and(|r| r.outcome == Outcome::Skipped as i32) {
            continue;
        }
        // Nothing of a batch starts before the previous batch is completely done.
        if t.batch > 0 {
            let before = run.plan.batches[t.batch as usize - 1] as usize;
            assert_eq!(done_per_batch.get(&(t.batch - 1)).copied().unwrap_or(0), before, "{} started early", t.server);
        }
        if t.state == TargetState::Done as i32 {
            in_flight.remove(&t.server);
            *done_per_batch.entry(t.batch).or_default() += 1;
        } else {
            in_flight.insert(t.server.clone(), t.batch);
        }
        let batch_size = run.plan.batches[t.batch as usize] as usize;
        assert!(in_flight.len() <= batch_size, "{} in flight in a batch of {batch_size}", in_flight.len());
        max_in_flight = max_in_flight.max(in_flight.len());
    }
    assert!(max_in_flight > 1, "batches ran one at a time");
    assert_eq!(done_per_batch, BTreeMap::from([(0, 5), (1, 10), (2, 10)]));

    let p = &run.progress;
    assert_eq!((p.succeeded, p.failed, p.skipped, p.total), (19, 6, 25, 50), "{p:?}");
    assert!(p.stopped.contains("failure rate 24% (6 of 25) after batch 3 is over the limit of 20%"), "{}", p.stopped);
    for (i, n) in names.iter().enumerate() {
        let r = run.result(n);
        let calls = std::fs::read_to_string(tmp.path().join(n).join("calls")).unwrap_or_default();
        let restarts = calls.lines().filter(|l| *l == "restart k3s").count();
        if i < 25 {
            let want = if failing.contains(&n.as_str()) { Outcome::Failed } else { Outcome::Succeeded };
            assert_eq!(r.outcome, want as i32, "{n}: {r:?}");
            assert_eq!(restarts, 1, "{n} restarted {restarts} times");
        } else {
            assert_eq!(r.outcome, Outcome::Skipped as i32, "{n}: {r:?}");
            assert_eq!(restarts, 0, "{n} ran although the job had stopped");
        }
    }
}

/// A hub killed between batches resumes the job when it starts again: the batch that was running finishes
/// (its pending commands), the remaining batches run, and every target runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_resumes_its_remaining_batches_after_a_hub_sigkill() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let names = ["rs-1", "rs-2", "rs-3"];
    let mut agents = Vec::new();
    for n in names {
        agents.push(AgentProc::start(tmp.path(), n, &hub.token(n).await, "exec_enabled = true\n"));
    }
    watch_until(&mut hub.client(Role::Viewer), "three agents", |f| names.iter().all(|n| is(f, n, Liveness::Connected)))
        .await;
    let (runs, gate) = (tmp.path().join("runs"), tmp.path().join("gate"));
    // Each run records which agent ran it (the agent's config path is in its command line), then waits for
    // the gate the test opens after the restart.
    let script = format!(
        "tr '\\0' '\\n' < /proc/$PPID/cmdline | grep agentd.toml >> {0}; echo started; while [ ! -e {1} ]; do sleep 0.05; done",
        runs.display(),
        gate.display()
    );
    let argv = serde_json::to_string(&["sh", "-c", &script]).unwrap();
    let mut req = action("exec", &names, &[("argv", &argv)]);
    req.batch = 1;
    req.confirm = "3".into();
    let mut stream = hub.client(Role::Admin).run_action(req).await.unwrap().into_inner();
    let mut job_id = String::new();
    'first: while let Some(m) = stream.message().await.unwrap() {
        match m.event {
            Some(Event::Plan(p)) => job_id = p.job_id,
            Some(Event::Target(t)) if t.output.contains("started") => break 'first,
            _ => {}
        }
    }
    hub.kill9().await; // batch 1 is running, batches 2 and 3 are not dispatched
    hub.restart().await;
    std::fs::write(&gate, "").unwrap();
    // The audit log tells the outcome (the caller is gone): a result for every target, once.
    let mut admin = hub.client(Role::Admin);
    let until = std::time::Instant::now() + harness::WAIT;
    let results = loop {
        let log = admin
            .query_audit(outpost_proto::v1::QueryAuditRequest { limit: 1000, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .records;
        let results: Vec<_> = log.into_iter().filter(|r| r.job_id == job_id && r.kind == "result").collect();
        if results.len() >= 3 {
            break results;
        }
        assert!(std::time::Instant::now() < until, "the job did not finish after the restart: {results:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let mut servers: Vec<&str> = results.iter().flat_map(|r| r.servers.iter().map(String::as_str)).collect();
    servers.sort_unstable();
    assert_eq!(servers, names, "{results:#?}");
    assert!(results.iter().all(|r| r.outcome == Outcome::Succeeded as i32), "{results:#?}");
    let ran = std::fs::read_to_string(&runs).unwrap();
    let mut lines: Vec<&str> = ran.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 3, "every target ran exactly once: {ran}");
    for n in names {
        assert_eq!(lines.iter().filter(|l| l.contains(&format!("/{n}/"))).count(), 1, "{n}: {ran}");
    }
    drop(agents);
}
