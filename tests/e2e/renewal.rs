//! Done-when 3: certificates renew over the live stream, with no reconnect.

use harness::{AgentProc, HubProc, is, watch_until};
use outpost_common::Role;
use outpost_proto::v1::Liveness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificate_renews_on_the_live_stream() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    // 6 s certificates: renewal at ~4 s. The hub closes a stream whose certificate expired unless it was
    // renewed on that stream, so surviving two lifetimes on one connection proves renewal in place.
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "[agents]\ncert_ttl_secs = 6").await;
    let token = hub.token("renew-1").await;
    let _agent = AgentProc::start(tmp.path(), "renew-1", &token, "");
    let mut ops = hub.client(Role::Viewer);
    let f = watch_until(&mut ops, "agent connected", |f| is(f, "renew-1", Liveness::Connected)).await;
    let first = f["renew-1"].clone();
    let mut serials = vec![first.cert_serial.clone()];
    let f = watch_until(&mut ops, "two renewals past the first certificate's expiry", |f| {
        let s = &f["renew-1"];
        if serials.last() != Some(&s.cert_serial) {
            serials.push(s.cert_serial.clone());
        }
        serials.len() >= 3 && outpost_common::now_ms() / 1000 > first.cert_not_after + 1
    })
    .await;
    let s = &f["renew-1"];
    assert_eq!(s.connections, 1, "renewal must not reconnect");
    assert!(is(&f, "renew-1", Liveness::Connected));
    assert!(s.cert_not_after > first.cert_not_after);
    assert_eq!(
        serials.iter().collect::<std::collections::HashSet<_>>().len(),
        serials.len(),
        "each renewal is a new certificate"
    );
}
