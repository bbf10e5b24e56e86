//! The fleet simulator speaks the real protocol: real enrollment, real mTLS streams, reports the hub stores.

use harness::{HubProc, action, follow_job, watch_until};
use outpost_common::Role;
use outpost_proto::v1::{Liveness, Outcome, Selector};

/// A hub and `outpost-sim` with `args` (agent count, interval, ...), enrolling through an admin bundle.
async fn hub_and_sim(root: &std::path::Path, args: &[&str]) -> (HubProc, tokio::process::Child) {
    harness::init();
    let hub = HubProc::start(&root.join("hub"), harness::free_port(), "").await;
    let admin = root.join("admin");
    hub.bundle("sim-admin", Role::Admin).write(&admin).unwrap();
    let sim = tokio::process::Command::new(harness::bin("outpost-sim"))
        .arg("--bundle")
        .arg(&admin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (hub, sim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_enroll_and_report_through_a_real_hub() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _sim) = hub_and_sim(tmp.path(), &["--agents", "30", "--interval", "200ms"]).await;
    let mut ops = hub.client(Role::Viewer);
    let f = watch_until(&mut ops, "30 simulated agents reporting", |f| {
        f.len() == 30 && f.values().all(|s| harness::liveness(s) == Liveness::Connected && s.reports_received >= 3)
    })
    .await;
    let s = &f["sim-00007"];
    assert_eq!(s.reports_received, s.last_seq, "each report stored once");
    let h = s.health.as_ref().unwrap();
    assert!(h.cpu_percent >= 1.0 && h.mem_used_bytes <= h.mem_total_bytes, "plausible metrics: {h:?}");
    assert!(!s.cert_serial.is_empty(), "enrolled with a real certificate");
    assert_eq!((s.customer.as_str(), s.plan.as_str()), ("cust-7", "pro"));
}

/// A fan-out wider than the caller's event queue (64) to a caller that pauses, then reads slowly: targets
/// and the job's own progress wait for room in the same queue, and none may keep the others waiting for
/// ever (this hung when the job awaited room for a progress event while its frozen targets were handed the
/// queue's free slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_fan_out_to_a_slow_caller_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _sim) = hub_and_sim(tmp.path(), &["--agents", "150", "--interval", "10s", "--concurrency", "32"]).await;
    watch_until(&mut hub.client(Role::Viewer), "150 simulated agents connected", |f| {
        f.len() == 150 && f.values().all(|s| harness::liveness(s) == Liveness::Connected)
    })
    .await;
    let mut support = hub.client(Role::Support);
    for round in 0..3 {
        let mut req = action("service-status", &[], &[("unit", "k3s")]);
        req.selector = Some(Selector { all: true, ..Default::default() });
        req.batch = 150;
        let mut stream = support.run_action(req).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap(); // the plan; then the caller does not read for a while
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // ... and then reads slowly.
        let mut n = 0;
        let run = follow_job(&mut stream, |_| {
            n += 1;
            if n % 8 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
        .await;
        assert_eq!(run.results.len(), 150, "round {round}");
        assert!(run.results.values().all(|r| r.outcome == Outcome::Succeeded as i32), "round {round}");
        assert!(run.progress.finished && run.progress.succeeded == 150, "round {round}: {:?}", run.progress);
    }
}
