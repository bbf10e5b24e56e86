//! Alerts end to end with a real Prometheus Alertmanager (Debian `prometheus-alertmanager`, started by the
//! test on a loopback port): a disk reading past 90 % (sent by an agent speaking the contract by hand)
//! fires `disk_full`, which Alertmanager then holds with the server's labels; the reading back under 90 %
//! resolves it there; the agent gone past the lost threshold fires `server_lost`. The hub's own list and
//! its audit log say the same.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::hostile::{self, RawLink};
use harness::{HubProc, free_port, init};
use outpost_common::Role;
use outpost_proto::v1::{self as pb, Disk, Health, hub_message};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Alertmanager's alerts (`GET /api/v2/alerts`), once `done` holds for them.
fn am_alerts(am: &str, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("curl").args(["-s", &format!("{am}/api/v2/alerts")]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let alerts = v.as_array().cloned().unwrap_or_default();
        if done(&alerts) {
            return alerts;
        }
        assert!(Instant::now() < deadline, "Alertmanager never had {what}: {alerts:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn named<'a>(alerts: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    alerts.iter().find(|a| a["labels"]["alertname"] == name)
}

fn disk(used_pct: u64) -> Health {
    Health {
        disks: vec![Disk { mount: "/".into(), total_bytes: 100 << 30, available_bytes: (100 - used_pct) << 30 }],
        mem_total_bytes: 8 << 30,
        mem_used_bytes: 1 << 30,
        ..Default::default()
    }
}

async fn acked(link: &mut RawLink, seq: u64) {
    link.until(|m| match m {
        hub_message::Body::Ack(a) if a.up_to_seq >= seq => Some(()),
        _ => None,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_alertmanager_fire_once_and_resolve() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("alertmanager");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("am.yml"), "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n").unwrap();
    let port = free_port();
    let am = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", dir.join("am.yml").display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("alertmanager.log")).unwrap())
        .spawn()
        .expect("prometheus-alertmanager (Debian, installed by scripts/test)");
    let _am = Killed(am);
    let am_url = format!("http://127.0.0.1:{port}");
    am_alerts(&am_url, "its API up", |_| true);

    let config = format!(
        "[agents]\ngrace_secs = 1\n[alerts]\neval_secs = 1\nresolve_after_secs = 0\nalertmanager_url = \"{am_url}\"\n\
         [[alerts.rules]]\nname = \"disk_full\"\nmetric = \"disk_used_percent\"\nop = \">\"\nthreshold = 90\nseverity = \"warning\"\naction = \"free some space\"\n\
         [[alerts.rules]]\nname = \"server_lost\"\nmetric = \"server_offline_seconds\"\nop = \">\"\nthreshold = 2\nseverity = \"critical\"\n"
    );
    let hub = HubProc::start(&tmp.path().join("hub"), free_port(), &config).await;
    let id = hostile::enroll(&hub.token("disk-1").await).await;
    let mut link = RawLink::connect(&id).await.unwrap();

    // Past 90 %: firing at the hub, held by Alertmanager with the server's labels and what to do.
    link.send(hostile::report(1, disk(95))).await;
    acked(&mut link, 1).await;
    let alerts = am_alerts(&am_url, "disk_full firing", |a| named(a, "disk_full").is_some());
    let a = named(&alerts, "disk_full").unwrap();
    for (k, v) in [("server", "disk-1"), ("severity", "warning"), ("customer", "acme"), ("plan", "pro")] {
        assert_eq!(a["labels"][k], v, "{a:#}");
    }
    assert!(a["annotations"]["summary"].as_str().unwrap().contains("disk_used_percent is 95.0"), "{a:#}");
    assert!(a["annotations"]["description"].as_str().unwrap().contains("free some space"), "{a:#}");
    let mut admin = hub.client(Role::Viewer);
    let listed = admin.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts;
    assert!(listed.iter().any(|a| a.labels["alertname"] == "disk_full" && a.state == "firing"), "{listed:#?}");
    let text = String::from_utf8_lossy(
        &Command::new("curl").args(["-s", &format!("{}/metrics", hub.admin)]).output().unwrap().stdout,
    )
    .into_owned();
    assert!(text.contains("outpost_alerts_firing{severity=\"warning\"} 1"), "{text}");

    // Back under 90 %: resolved, and Alertmanager lets it go.
    link.send(hostile::report(2, disk(50))).await;
    acked(&mut link, 2).await;
    am_alerts(&am_url, "disk_full resolved", |a| named(a, "disk_full").is_none());
    assert!(admin.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts.is_empty());

    // The agent goes away: lost past the threshold fires server_lost.
    drop(link);
    let alerts = am_alerts(&am_url, "server_lost firing", |a| named(a, "server_lost").is_some());
    assert_eq!(named(&alerts, "server_lost").unwrap()["labels"]["severity"], "critical");

    // The history: fired once, resolved once, in the audit log.
    let mut admin = hub.client(Role::Admin);
    let audit = admin
        .query_audit(pb::QueryAuditRequest { action: "disk_full".into(), limit: 50, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .records;
    let said: Vec<&str> = audit.iter().rev().map(|r| r.message.split(':').next().unwrap()).collect();
    assert_eq!(said, ["fired", "resolved"], "{audit:#?}");
}

/// A rule with an unknown metric, comparison or severity is refused by the parser, naming it and what
/// exists; the checks after parsing (labels, URLs) are reported all at once. Either stops hubd before it starts.
#[test]
fn bad_rules_are_refused_at_start() {
    let rule = |metric: &str, op: &str, severity: &str| {
        format!(
            "[[alerts.rules]]\nname = \"x\"\nmetric = \"{metric}\"\nop = \"{op}\"\nthreshold = 1\nseverity = \"{severity}\"\n"
        )
    };
    for (config, needles) in [
        (rule("cpu_temperature", ">", "info"), ["cpu_temperature", "disk_used_percent"]),
        (rule("disk_used_percent", "!", "info"), ["`!`", "`>=`"]),
        (rule("disk_used_percent", ">", "page"), ["`page`", "`critical`"]),
    ] {
        let err = hub::HubConfig::from_toml(&config).unwrap_err();
        for needle in needles {
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
    let config = format!(
        "[alerts]\nalertmanager_url = \"ftp://am\"\n{}labels = {{ colour = \"red\" }}\n",
        rule("disk_used_percent", ">", "info")
    );
    let err = hub::HubConfig::from_toml(&config).unwrap().validate().unwrap_err().to_string();
    for needle in ["ftp://am", "unknown label \"colour\""] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

/// The hub's completed alert rounds (its own counter).
fn rounds_done(hub: &HubProc) -> u64 {
    let out = Command::new("curl").args(["-s", &format!("{}/metrics", hub.admin)]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("outpost_alert_evaluation_seconds_count ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the hub has evaluated its rules `n` more times (for "nothing more happened" checks).
async fn alert_rounds(hub: &HubProc, n: u64) {
    let target = rounds_done(hub) + n;
    let deadline = Instant::now() + Duration::from_secs(30);
    while rounds_done(hub) < target {
        assert!(Instant::now() < deadline, "the hub stopped evaluating its alerts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A webhook receiver on loopback that answers 200 and keeps every body it got; its URL.
async fn webhook_receiver() -> (std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>, String) {
    let got: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let seen = got.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or_default());
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (got, url)
}

/// A hub whose alerts go to `webhook` (attempts, 50 ms initial backoff), with the disk rule only; a raw
/// agent `disk-1` connected.
async fn webhook_hub(dir: &std::path::Path, webhook: &str, attempts: u32) -> (HubProc, RawLink) {
    let config = format!(
        "[alerts]\neval_secs = 1\nresolve_after_secs = 0\nwebhook_url = \"{webhook}\"\nwebhook_format = \"slack\"\nwebhook_attempts = {attempts}\nwebhook_backoff_initial_ms = 50\nwebhook_backoff_max_ms = 200\n\
         [[alerts.rules]]\nname = \"disk_full\"\nmetric = \"disk_used_percent\"\nop = \">\"\nthreshold = 90\nseverity = \"warning\"\naction = \"free some space\"\n"
    );
    let hub = HubProc::start(dir, free_port(), &config).await;
    let id = hostile::enroll(&hub.token("disk-1").await).await;
    let link = RawLink::connect(&id).await.unwrap();
    (hub, link)
}

/// The built-in webhook notifier: a receiver that fails the first two attempts gets the notification once,
/// after retries, in Slack's shape with a line a person can act on; one that never answers ends in a dead
/// letter in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_retries_then_delivers_once_and_dead_letters_what_never_arrives() {
    use std::sync::{Arc, Mutex};
    init();
    let got: Arc<Mutex<Vec<(u16, serde_json::Value)>>> = Arc::default();
    let seen = got.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            let mut seen = seen.lock().unwrap();
            let status = if seen.len() < 2 { 500 } else { 200 };
            seen.push((status, serde_json::from_slice(&body).unwrap_or_default()));
            axum::http::StatusCode::from_u16(status).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let tmp = tempfile::tempdir().unwrap();
    let (first_hub, mut link) = webhook_hub(&tmp.path().join("hub"), &url, 5).await;
    link.send(hostile::report(1, disk(95))).await;
    acked(&mut link, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !got.lock().unwrap().iter().any(|(s, _)| *s == 200) {
        assert!(Instant::now() < deadline, "never delivered: {:?}", got.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alert_rounds(&first_hub, 3).await; // the alert still fires: no second notification
    let got = got.lock().unwrap().clone();
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [500, 500, 200], "retried, then delivered once");
    let text = got[2].1["text"].as_str().unwrap();
    assert!(text.starts_with("[FIRING warning] disk_full on disk-1 since "), "{text}");
    assert!(text.contains("what to do: free some space") && !text.contains("http"), "{text}");

    // Nobody listens: after its attempts the notification is a dead letter in the audit log.
    let closed = format!("http://127.0.0.1:{}/hook", free_port());
    let (hub, mut link) = webhook_hub(&tmp.path().join("hub2"), &closed, 2).await;
    link.send(hostile::report(1, disk(95))).await;
    acked(&mut link, 1).await;
    let mut admin = hub.client(Role::Admin);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let audit = admin
            .query_audit(pb::QueryAuditRequest { action: "disk_full".into(), limit: 50, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .records;
        if let Some(r) = audit.iter().find(|r| r.message.starts_with("dead letter")) {
            assert!(r.message.contains("after 2 attempts"), "{}", r.message);
            break;
        }
        assert!(Instant::now() < deadline, "no dead letter: {audit:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A provision that fails makes `provision_failed` and `job_failures` fire (the fake cloud's create action
/// fails); the hub lists them firing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_provision_fires_its_alerts() {
    let rules = "\n[alerts]\neval_secs = 1\nresolve_after_secs = 0\n\
        [[alerts.rules]]\nname = \"provision_failed\"\nmetric = \"provisions_failed_last_hour\"\nop = \">\"\nthreshold = 0\nseverity = \"warning\"\n\
        [[alerts.rules]]\nname = \"job_failures\"\nmetric = \"job_failure_rate_percent\"\nop = \">\"\nthreshold = 5\nseverity = \"warning\"\n";
    let c = harness::cloud::cloud_with("", rules, None).await;
    c.fake.fail_creates(1);
    let mut admin = c.hub.client(Role::Admin);
    let req = pb::ProvisionRequest { customer: "doomed".into(), plan: "pro".into(), ..Default::default() };
    admin.provision(req).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alerts = admin.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts;
        let firing: Vec<&str> =
            alerts.iter().filter(|a| a.state == "firing").map(|a| a.labels["alertname"].as_str()).collect();
        if firing.contains(&"provision_failed") && firing.contains(&"job_failures") {
            break;
        }
        assert!(Instant::now() < deadline, "{alerts:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Silences hold notifications back until they end (then the alert is notified once); they need matchers,
/// a sensible duration and a reason, and a role; acknowledgements show who is on it. Both are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_hold_notifications_back_and_acks_say_who_is_on_it() {
    init();
    let (got, url) = webhook_receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    let (mut hub, mut link) = webhook_hub(&tmp.path().join("hub"), &url, 3).await;
    let mut support = hub.client(Role::Support);
    let matchers = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();

    // Bad silences are refused in words; a viewer cannot silence.
    for (req, needle) in [
        (
            pb::SilenceRequest { matchers: matchers(&[]), duration_secs: 3600, comment: "x".into() },
            "at least one matcher",
        ),
        (
            pb::SilenceRequest {
                matchers: matchers(&[("alertname", "disk_full")]),
                duration_secs: 0,
                comment: "x".into(),
            },
            "between 1 minute",
        ),
        (
            pb::SilenceRequest { matchers: matchers(&[("colour", "red")]), duration_secs: 3600, comment: "x".into() },
            "matcher label \"colour\"",
        ),
        (
            pb::SilenceRequest {
                matchers: matchers(&[("alertname", "disk_full")]),
                duration_secs: 3600,
                comment: " ".into(),
            },
            "say why",
        ),
    ] {
        let err = support.silence(req).await.unwrap_err();
        assert!(err.code() == tonic::Code::InvalidArgument && err.message().contains(needle), "{needle}: {err:?}");
    }
    let ok = pb::SilenceRequest {
        matchers: matchers(&[("alertname", "disk_full"), ("server", "disk-1")]),
        duration_secs: 3600,
        comment: "disk being resized".into(),
    };
    let denied = hub.client(Role::Viewer).silence(ok.clone()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let silence = support.silence(ok).await.unwrap().into_inner();

    // Silenced: firing, listed as silenced, not notified.
    link.send(hostile::report(1, disk(95))).await;
    acked(&mut link, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = support.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts;
        if alerts.iter().any(|a| a.state == "firing" && a.silenced_by == silence.id) {
            break;
        }
        assert!(Instant::now() < deadline, "{alerts:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alert_rounds(&hub, 2).await;
    assert!(got.lock().unwrap().is_empty(), "a silenced alert was notified: {:?}", got.lock().unwrap());

    // Acknowledged: everyone sees who is on it.
    let n = support.ack_alert(pb::AckAlertRequest { alertname: "disk_full".into(), server: String::new() }).await;
    assert_eq!(n.unwrap().into_inner().acknowledged, 1);
    let alerts = support.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts;
    assert_eq!(alerts[0].acked_by, "test-support");
    let none = support.ack_alert(pb::AckAlertRequest { alertname: "nope".into(), server: String::new() }).await;
    assert_eq!(none.unwrap_err().code(), tonic::Code::NotFound);

    // The silence ends: the alert still firing is notified, once.
    support.expire_silence(pb::ExpireSilenceRequest { id: silence.id.clone() }).await.unwrap();
    assert!(support.list_silences(pb::ListSilencesRequest {}).await.unwrap().into_inner().silences.is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "never notified after the silence ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alert_rounds(&hub, 2).await;
    assert_eq!(got.lock().unwrap().len(), 1, "notified once");
    let audit = hub
        .client(Role::Admin)
        .query_audit(pb::QueryAuditRequest { limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(audit.iter().any(|r| r.action == "silence" && r.message.contains("disk being resized")));
    assert!(audit.iter().any(|r| r.action == "silence" && r.message.contains("silence ended")));
    assert!(audit.iter().any(|r| r.message.starts_with("acknowledged")));

    // A hub restart: the alert still fires, still acknowledged, and is neither fired nor notified again.
    drop(link);
    hub.stop().await;
    hub.restart().await;
    alert_rounds(&hub, 2).await;
    let mut support = hub.client(Role::Support);
    let alerts = support.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts;
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!((alerts[0].state.as_str(), alerts[0].acked_by.as_str()), ("firing", "test-support"));
    assert_eq!(got.lock().unwrap().len(), 1, "not notified again after the restart");
    let fired = hub
        .client(Role::Admin)
        .query_audit(pb::QueryAuditRequest { action: "disk_full".into(), limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .records
        .into_iter()
        .filter(|r| r.message.starts_with("fired"))
        .count();
    assert_eq!(fired, 1, "fired once, across the restart");
}

/// An Alertmanager that answers 500, then one that hangs: each failed delivery is counted and logged with
/// what went wrong, evaluation goes on (the alert resolves at the hub while Alertmanager hangs), and the
/// resolution reaches Alertmanager once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alertmanager_that_fails_or_hangs_delays_nothing_and_loses_nothing() {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::{Arc, Mutex};
    init();
    const REFUSE: u8 = 0;
    const HANG: u8 = 1;
    const ANSWER: u8 = 2;
    let mode = Arc::new(AtomicU8::new(REFUSE));
    let got: Arc<Mutex<Vec<(u8, serde_json::Value)>>> = Arc::default();
    let (m, seen) = (mode.clone(), got.clone());
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let (m, seen) = (m.clone(), seen.clone());
        async move {
            let mode = m.load(Ordering::SeqCst);
            seen.lock().unwrap().push((mode, serde_json::from_slice(&body).unwrap_or_default()));
            match mode {
                REFUSE => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "cluster not ready"),
                HANG => std::future::pending().await,
                _ => (axum::http::StatusCode::OK, ""),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let am = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[alerts]\neval_secs = 1\nresolve_after_secs = 0\nalertmanager_url = \"{am}\"\nalertmanager_timeout_secs = 1\n\
         [[alerts.rules]]\nname = \"disk_full\"\nmetric = \"disk_used_percent\"\nop = \">\"\nthreshold = 90\nseverity = \"warning\"\n"
    );
    let hub = HubProc::start(&tmp.path().join("hub"), free_port(), &config).await;
    let id = hostile::enroll(&hub.token("disk-1").await).await;
    let mut link = RawLink::connect(&id).await.unwrap();
    let deliveries = |result: &str| {
        let out = Command::new("curl").args(["-s", &format!("{}/metrics", hub.admin)]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let name = format!("outpost_alert_deliveries_total{{result=\"{result}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&name)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    let wait = async |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // 500: refused, counted, logged with the status and Alertmanager's words; tried again each round.
    link.send(hostile::report(1, disk(95))).await;
    acked(&mut link, 1).await;
    wait("two refused deliveries", &|| deliveries("refused") >= 2.0).await;
    let log = std::fs::read_to_string(hub.dir.join("hubd.log")).unwrap();
    assert!(
        log.contains("Alertmanager refused the alerts") && log.contains("500") && log.contains("cluster not ready"),
        "{log}"
    );

    // Hanging: the disk is fine again and the alert resolves at the hub while deliveries time out.
    mode.store(HANG, Ordering::SeqCst);
    link.send(hostile::report(2, disk(50))).await;
    acked(&mut link, 2).await;
    let mut viewer = hub.client(Role::Viewer);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !viewer.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts.is_empty() {
        assert!(Instant::now() < deadline, "the alert never resolved while Alertmanager hung");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait("a delivery that timed out", &|| deliveries("unreachable") >= 1.0).await;
    assert!(std::fs::read_to_string(hub.dir.join("hubd.log")).unwrap().contains("no answer within 1s"));

    // Answering again: the resolution arrives, with its end.
    mode.store(ANSWER, Ordering::SeqCst);
    wait("the resolution delivered", &|| deliveries("delivered") >= 1.0).await;
    let got = got.lock().unwrap().clone();
    let (_, body) = got.iter().rev().find(|(m, _)| *m == ANSWER).unwrap();
    let a = named(body.as_array().unwrap(), "disk_full").unwrap_or_else(|| panic!("{body:#}"));
    assert!(a["endsAt"].as_str().is_some_and(|e| !e.is_empty()), "{a:#}");
}

/// The customer's projects over the plan this hour, an agentd that is not the hub's version and a
/// crash-looping app: each fires its rule, with the server's labels (and the app's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_over_plan_version_skew_and_a_failing_app_fire() {
    use outpost_proto::v1::{AppState, AppsState, UsageReport, UsageSample, agent_message};
    init();
    let tmp = tempfile::tempdir().unwrap();
    let config = "[alerts]\neval_secs = 1\nresolve_after_secs = 0\n\
         [[alerts.rules]]\nname = \"usage_over_plan\"\nmetric = \"usage_over_plan_percent\"\nop = \">\"\nthreshold = 100\nseverity = \"warning\"\n\
         [[alerts.rules]]\nname = \"agent_version_skew\"\nmetric = \"agent_version_skew\"\nop = \">\"\nthreshold = 0\nseverity = \"info\"\nlabels = { plan = \"pro\", customer = \"acme\" }\n\
         [[alerts.rules]]\nname = \"app_failing\"\nmetric = \"app_failing\"\nop = \">\"\nthreshold = 0\nseverity = \"warning\"\n\
         [[alerts.rules]]\nname = \"team_skew\"\nmetric = \"agent_version_skew\"\nop = \">\"\nthreshold = 0\nseverity = \"info\"\nlabels = { plan = \"team\" }\n";
    let hub = HubProc::start(&tmp.path().join("hub"), free_port(), config).await;
    let id = hostile::enroll(&hub.token("big-1").await).await;
    let mut link = RawLink::connect(&id).await.unwrap();
    link.send(hostile::report(1, Health { agent_version: "0.0.1".into(), ..disk(10) })).await;
    // 2 GiB of memory in the customer's project on the pro plan (1 GiB): 200 %.
    let now = outpost_common::now_ms();
    for (seq, at) in [(2, now - 30_000), (3, now)] {
        let s = UsageSample {
            scope: "namespace".into(),
            project: "acme".into(),
            memory_bytes: 2 << 30,
            memory_peak_bytes: 2 << 30,
            ..Default::default()
        };
        let r =
            pb::Report { seq, taken_at_ms: at, body: Some(pb::report::Body::Usage(UsageReport { samples: vec![s] })) };
        link.send(hostile::body(agent_message::Body::Report(r))).await;
    }
    let app = |name: &str, phase: &str, error: &str| AppState {
        name: name.into(),
        project: "acme".into(),
        phase: phase.into(),
        last_error: error.into(),
        ..Default::default()
    };
    let apps = AppsState {
        apps: vec![app("web", "failed", "CrashLoopBackOff: exit 1: no DATABASE_URL"), app("api", "available", "")],
        ..Default::default()
    };
    let r = pb::Report { seq: 4, taken_at_ms: now, body: Some(pb::report::Body::Apps(apps)) };
    link.send(hostile::body(agent_message::Body::Report(r))).await;
    acked(&mut link, 4).await;
    let mut viewer = hub.client(Role::Viewer);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = viewer.list_alerts(pb::ListAlertsRequest {}).await.unwrap().into_inner().alerts;
        let firing = |name: &str| alerts.iter().find(|a| a.labels["alertname"] == name && a.state == "firing");
        if let (Some(usage), Some(skew), Some(app)) =
            (firing("usage_over_plan"), firing("agent_version_skew"), firing("app_failing"))
        {
            assert_eq!(usage.value, 200.0, "{usage:?}");
            assert_eq!(app.labels["app"], "web", "{app:?}");
            assert!(app.summary.contains("CrashLoopBackOff: exit 1"), "{app:?}");
            assert_eq!(alerts.iter().filter(|a| a.labels["alertname"] == "app_failing").count(), 1, "api is fine");
            assert!(!alerts.iter().any(|a| a.labels["alertname"] == "team_skew"), "scoped to team; the server is pro");
            assert_eq!((usage.labels["server"].as_str(), usage.labels["customer"].as_str()), ("big-1", "acme"));
            assert_eq!(skew.value, 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "{alerts:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 22, defect 9: a condition that clears and comes back within `resolve_after_secs` keeps its alert
/// firing: one notification for a flapping disk, not one per flap, and each flap is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_condition_pages_once_and_its_flaps_are_counted() {
    init();
    let (got, url) = webhook_receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[alerts]\neval_secs = 1\nresolve_after_secs = 60\nwebhook_url = \"{url}\"\n\
         [[alerts.rules]]\nname = \"disk_full\"\nmetric = \"disk_used_percent\"\nop = \">\"\nthreshold = 90\nseverity = \"warning\"\naction = \"free some space\"\n"
    );
    let hub = HubProc::start(&tmp.path().join("hub"), free_port(), &config).await;
    let id = hostile::enroll(&hub.token("flap-1").await).await;
    let mut link = RawLink::connect(&id).await.unwrap();
    // Full, fine, full, fine, full: each state held for two evaluation rounds.
    for (seq, pct) in [95, 50, 95, 50, 95].into_iter().enumerate() {
        let seq = seq as u64 + 1;
        link.send(hostile::report(seq, disk(pct))).await;
        acked(&mut link, seq).await;
        alert_rounds(&hub, 2).await;
    }
    let posts = got.lock().unwrap().clone();
    let statuses: Vec<&str> = posts.iter().map(|p| p["status"].as_str().unwrap_or_default()).collect();
    assert_eq!(statuses, ["firing"], "one page for a flapping disk: {posts:#?}");
    let out = Command::new("curl").args(["-s", &format!("{}/metrics", hub.admin)]).output().unwrap();
    let flaps: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("outpost_alert_flaps_damped_total ")?.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(flaps, 2, "the two returns of the condition are counted");
}
