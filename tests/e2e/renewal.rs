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

/// The serving certificate of `addr` as openssl sees it: (serial, notAfter line).
fn served_certificate(port: u16) -> (String, String) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -alpn h2 </dev/null 2>/dev/null | openssl x509 -noout -serial -enddate"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field =
        |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).unwrap_or_else(|| panic!("{k} in {text:?}")).to_string();
    (field("serial="), field("notAfter="))
}

/// The hub's own serving certificate is renewed while it runs: connections open by then keep going, and a
/// server enrolling after the first certificate expired verifies the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_serving_certificate_is_renewed_while_it_serves() {
    crate::ops::tool("openssl");
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let started = outpost_common::now_secs();
    // 12 s: renewed at about 8 s.
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "server_cert_validity_secs = 12\n").await;
    let first = served_certificate(hub.port);
    let _agent = AgentProc::start(tmp.path(), "srv-1", &hub.token("srv-1").await, "");
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "agent connected", |f| is(f, "srv-1", Liveness::Connected)).await;
    harness::wait_for_file(&tmp.path().join("hub/hubd.log"), "serving certificate renewed").await;
    let second = served_certificate(hub.port);
    assert_ne!(first.0, second.0, "a new certificate is served: {first:?} then {second:?}");
    assert_ne!(first.1, second.1, "{first:?} then {second:?}");
    // Past the first certificate's end: a new server enrolls (a new connection verifies the renewed
    // certificate), and the first agent's stream never broke.
    let token = hub.token("srv-2").await;
    let wait = (started + 13 - outpost_common::now_secs()).max(0) as u64;
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await; // the expiry is a time, not an event
    let _late = AgentProc::start(tmp.path(), "srv-2", &token, "");
    let f = watch_until(&mut ops, "the late server connected", |f| is(f, "srv-2", Liveness::Connected)).await;
    assert_eq!(f["srv-1"].connections, 1, "the open stream kept its connection through the renewal");
    assert!(is(&f, "srv-1", Liveness::Connected));
}
