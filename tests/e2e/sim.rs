//! The fleet simulator speaks the real protocol: real enrollment, real mTLS streams, reports the hub stores.

use harness::{HubProc, watch_until};
use outpost_common::Role;
use outpost_proto::v1::Liveness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_enroll_and_report_through_a_real_hub() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let admin = tmp.path().join("admin");
    hub.bundle("sim-admin", Role::Admin).write(&admin).unwrap();
    let _sim = tokio::process::Command::new(harness::bin("outpost-sim"))
        .args(["--bundle", admin.to_str().unwrap(), "--agents", "30", "--interval", "200ms"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
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
