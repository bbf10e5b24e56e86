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
