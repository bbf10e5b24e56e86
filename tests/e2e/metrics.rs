//! hubd's admin listener: `/metrics` that the real `promtool check metrics` accepts, scraped by a real
//! Prometheus (Debian `prometheus`, started by the test on a loopback port) whose HTTP API then answers for
//! the hub's series; `/healthz` and `/readyz`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{AgentProc, HubProc, free_port, init};
use outpost_common::Role;
use outpost_proto::v1 as pb;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn curl(url: &str) -> (String, String) {
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_code}", url]).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

/// The value of `query` from Prometheus's HTTP API, once it has one.
fn prom_value(prom: &str, query: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let url =
            format!("{prom}/api/v1/query?query={}", query.replace('{', "%7B").replace('}', "%7D").replace('"', "%22"));
        let (body, _) = curl(&url);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let value = v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok());
        if let Some(x) = value
            && done(x)
        {
            return x;
        }
        assert!(Instant::now() < deadline, "Prometheus has no good value for {query}: {body}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_hub_and_promtool_accepts_its_exposition() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&tmp.path().join("hub"), free_port(), "").await;
    assert!(hub.admin.starts_with("http://127.0.0.1:"), "READY names the admin listener: {}", hub.admin);
    let token = hub.token("metrics-1").await;
    let _agent = AgentProc::start(tmp.path(), "metrics-1", &token, "");
    let mut admin = hub.client(Role::Admin);
    harness::watch_until(&mut admin, "reports stored", |f| f.get("metrics-1").is_some_and(|s| s.reports_received >= 3))
        .await;
    let run = harness::run_job(&mut admin, harness::action("diagnostics", &["metrics-1"], &[])).await;
    assert_eq!(run.result("metrics-1").outcome, pb::Outcome::Succeeded as i32);

    // The exposition: what promtool accepts, with the figures the hub knows.
    let (text, code) = curl(&format!("{}/metrics", hub.admin));
    assert_eq!(code, "200");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus, installed by scripts/test)");
    use std::io::Write;
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    for needle in [
        "outpost_servers{liveness=\"connected\",plan=\"pro\"} 1",
        "outpost_agent_streams 1",
        "outpost_enrollments_total 1",
        "outpost_action_round_trip_seconds_count{outcome=\"succeeded\"} 1",
        "outpost_lifecycle_queue_depth 0",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
    let stored: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("outpost_reports_stored_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(stored >= 3.0, "{stored}");
    assert_eq!(curl(&format!("{}/healthz", hub.admin)).1, "200");
    assert_eq!(curl(&format!("{}/readyz", hub.admin)).1, "200");

    // A real Prometheus scrapes it (OpenMetrics) and answers for its series.
    let target = hub.admin.trim_start_matches("http://");
    let dir = tmp.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hubd\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let port = free_port();
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian prometheus, installed by scripts/test)");
    let _prom = Killed(prom);
    let api = format!("http://127.0.0.1:{port}");
    assert_eq!(prom_value(&api, "outpost_agent_streams", |v| v == 1.0), 1.0);
    assert_eq!(prom_value(&api, "outpost_servers{liveness=\"connected\"}", |v| v == 1.0), 1.0);
    let first = prom_value(&api, "outpost_reports_stored_total", |v| v >= 3.0);
    // The counter moves as the agent reports (every 200 ms here).
    prom_value(&api, "outpost_reports_stored_total", |v| v > first);
    prom_value(&api, "up{job=\"hubd\"}", |v| v == 1.0);
}
