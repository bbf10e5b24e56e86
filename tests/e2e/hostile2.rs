//! Issue 22, hostile peers round two: what leaves the hub, long calls at revocation, secrets at rest, and
//! answers from outside bounded. Each test here failed on the main branch before the fix it names.

use std::time::{Duration, Instant};

use harness::{AgentProc, HubProc, WAIT, action, is, watch_until};
use outpost_common::Role;
use outpost_proto::v1::job_event::Event;
use outpost_proto::v1::{
    CreateJoinTokenRequest, DeprovisionRequest, ListLifecycleJobsRequest, Liveness, RevokeOperatorRequest,
    WatchLifecycleJobRequest,
};
use tonic::Code;

/// Reads `stream` until it ends; the status it ended with (None: a clean end). Panics after [`WAIT`].
async fn end_of<T>(stream: &mut tonic::Streaming<T>) -> Option<tonic::Status> {
    tokio::time::timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(s) => break Some(s),
            }
        }
    })
    .await
    .expect("the stream did not end")
}

/// Defect 2: a revoked operator's open `RunAction` (a `logs follow`) and `WatchLifecycleJob` end at the
/// revocation, not at the action's deadline; the follow's job is cancelled with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_operators_follow_and_job_watch_end_at_once() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let log = tmp.path().join("follow.log");
    std::fs::write(&log, "one\n").unwrap();
    let extra = format!("log_files = [\"{}\"]\n", log.display());
    let _agent = AgentProc::start(tmp.path(), "rv-1", &hub.token("rv-1").await, &extra);
    let mut admin = hub.client(Role::Admin);
    watch_until(&mut admin, "rv-1 connected", |f| is(f, "rv-1", Liveness::Connected)).await;

    // A lifecycle job that stays open: the archive a deprovision schedules days ahead.
    let req = CreateJoinTokenRequest {
        server_name: "ghost".into(),
        ttl_secs: 600,
        customer: "ghostco".into(),
        plan: "pro".into(),
        ..Default::default()
    };
    admin.create_join_token(req).await.unwrap();
    let req = DeprovisionRequest { customer: "ghostco".into(), confirm: "ghostco".into() };
    let deprovision = admin.deprovision(req).await.unwrap().into_inner().jobs[0].id;
    let archive = tokio::time::timeout(WAIT, async {
        let mut watch =
            admin.watch_lifecycle_job(WatchLifecycleJobRequest { id: deprovision }).await.unwrap().into_inner();
        while watch.message().await.unwrap().is_some() {}
        let list = admin.list_lifecycle_jobs(ListLifecycleJobsRequest { limit: 0 }).await.unwrap().into_inner();
        list.jobs.iter().find(|j| j.kind == "archive" && j.target == "ghost").expect("an archive scheduled").id
    })
    .await
    .unwrap();

    let alice = hub.bundle("alice", Role::Support);
    let mut client = outpost_proto::v1::operator_client::OperatorClient::new(alice.channel().unwrap());
    let mut jobs = client.watch_lifecycle_job(WatchLifecycleJobRequest { id: archive }).await.unwrap().into_inner();
    jobs.message().await.unwrap().expect("the job as it is");
    let source = format!("file:{}", log.display());
    let mut req = action("logs", &["rv-1"], &[("source", &source), ("lines", "1"), ("follow", "true")]);
    req.deadline_ms = outpost_common::now_ms() + 120_000;
    let mut follow = client.run_action(req).await.unwrap().into_inner();
    // Following: the first line is back.
    tokio::time::timeout(WAIT, async {
        while let Some(m) = follow.message().await.unwrap() {
            if let Some(Event::Target(t)) = m.event
                && t.output.contains("one")
            {
                return;
            }
        }
        panic!("the follow ended before its first line")
    })
    .await
    .unwrap();

    let revoked_at = Instant::now();
    admin.revoke_operator(RevokeOperatorRequest { name: "alice".into() }).await.unwrap();
    let end = end_of(&mut follow).await;
    assert_eq!(end.as_ref().map(|s| s.code()), Some(Code::PermissionDenied), "{end:?}");
    let end = end_of(&mut jobs).await;
    assert_eq!(end.as_ref().map(|s| s.code()), Some(Code::PermissionDenied), "{end:?}");
    assert!(revoked_at.elapsed() < Duration::from_secs(10), "ended {:?} after the revocation", revoked_at.elapsed());

    // The follow's job was cancelled with the session: its result is audited as cancelled, long before
    // its two-minute deadline.
    let cancelled = tokio::time::timeout(WAIT, async {
        loop {
            let q = outpost_proto::v1::QueryAuditRequest { action: "logs".into(), limit: 50, ..Default::default() };
            let records = admin.query_audit(q).await.unwrap().into_inner().records;
            if let Some(r) = records.iter().find(|r| r.operator == "alice" && r.kind == "result") {
                return r.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await; // polling the audit log: no event to await
        }
    })
    .await
    .expect("the revoked operator's follow was never ended");
    assert_eq!(cancelled.outcome(), outpost_proto::v1::Outcome::Cancelled, "{cancelled:?}");
}

/// `curl` with optional extra headers: (body, HTTP status).
fn curl(url: &str, headers: &[&str]) -> (String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

/// Defect 10: a non-loopback admin address without a token or an explicit opt-in is refused before anything
/// is bound; with `bearer_token_file`, `/metrics` answers only the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_metrics_to_the_token_or_only_on_loopback() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("hubd.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n[admin]\nlisten = \"0.0.0.0:0\"\n",
            harness::free_port(),
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(harness::bin("hubd")).arg("--config").arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("admin.listen 0.0.0.0:0") && err.contains("bearer_token_file"), "{err}");
    assert!(!tmp.path().join("data").exists(), "nothing is created on a refused config");

    let token_file = tmp.path().join("metrics.token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let extra = format!("[admin]\nlisten = \"127.0.0.1:0\"\nbearer_token_file = \"{}\"\n", token_file.display());
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), &extra).await;
    let url = format!("{}/metrics", hub.admin);
    let (body, code) = curl(&url, &[]);
    assert_eq!(code, "401", "{body}");
    assert!(!body.contains("outpost_"), "{body}");
    let (_, code) = curl(&url, &["Authorization: Bearer 0123456789abcdef0123456789abcdee"]);
    assert_eq!(code, "401");
    let (body, code) = curl(&url, &["Authorization: Bearer 0123456789abcdef0123456789abcdef"]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("outpost_"), "{body}");
    let (_, code) = curl(&format!("{}/healthz", hub.admin), &[]);
    assert_eq!(code, "200", "health checks need no token");
}

/// Defect 6: a cloud API that ignores the label selector never makes the hub adopt (or delete) a server
/// labelled for another customer, and one that always says there is a next page ends in a bounded error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_answers_that_ignore_the_selector_or_never_end_are_not_trusted() {
    use hub::lifecycle::cloud::{Cloud, Hetzner, Retry};
    harness::init();
    let api = standin::hetzner::HetznerStandIn::start("tok").await;
    let victim = api.add_server("victim-prod-1", &[("managed-by", "outpost"), ("outpost-id", "victim-prod")]);
    let retry = Retry {
        attempts: 2,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(20),
        rate_per_sec: 10_000.0,
        burst: 10_000,
    };
    let cloud = Hetzner::new(&api.url(), "tok", retry);
    let mine = "managed-by=outpost,outpost-id=new-customer";
    assert!(cloud.servers(mine).await.unwrap().is_empty());
    api.ignore_label_selectors(true);
    let listed = cloud.servers(mine).await.unwrap();
    assert!(listed.iter().all(|s| s.id != victim), "a server labelled for another customer was taken: {listed:?}");

    // 20 MB in one answer: not read past 8 MiB.
    api.pad_listings(20 << 20);
    let e = cloud.servers(mine).await.expect_err("an answer too large to read");
    assert!(e.to_string().contains("more than 8 MiB"), "{e}");
    api.pad_listings(0);

    api.endless_pages(true);
    let before = api.requests().len();
    let started = Instant::now();
    let e = cloud.servers("managed-by=outpost").await.expect_err("an endless listing must end in an error");
    assert!(e.to_string().contains("next page"), "{e}");
    let pages = api.requests().len() - before;
    assert!(pages <= 201, "{pages} pages read");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    assert!(api.servers().iter().any(|s| s.id == victim), "the victim's server is still there");
}

/// Every file under `dir` that contains `needle`, as bytes.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
                found.push(p);
            }
        }
    }
    found
}

/// Defects 3, 4 and 5, and the last check: after every way a secret reaches the hub (an app spec
/// queued for an offline server, a spec whose `[secrets]` line is bad TOML, a repository URL with a
/// password), hubd's store, audit and log files hold none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_holds_no_secret_it_was_handed_in_the_clear() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let mut admin = hub.client(Role::Admin);
    let req = CreateJoinTokenRequest {
        server_name: "off-1".into(),
        ttl_secs: 600,
        customer: "acme".into(),
        plan: "pro".into(),
        ..Default::default()
    };
    admin.create_join_token(req).await.unwrap();
    let spec = |secret_line: &str, url: &str| {
        format!("name = \"web\"\nimage = \"nginx\"\nport = 80\n[repo]\nurl = \"{url}\"\n[secrets]\n{secret_line}\n")
    };
    let url = "https://github.com/acme/web.git";
    let secrets = ["s3cr3t-queued-7f3a", "s3cr3t-toml-9b1c", "s3cr3t-url-4d2e"];

    // Queued for a server that is not there: the command waits in the store, its spec sealed.
    let mut queued = action("app-apply", &["off-1"], &[("spec", &spec("DB = \"s3cr3t-queued-7f3a\"", url))]);
    queued.queue_secs = 600;
    let mut events = admin.run_action(queued).await.unwrap().into_inner();
    tokio::time::timeout(WAIT, async {
        while let Some(m) = events.message().await.unwrap() {
            if let Some(Event::Target(t)) = m.event
                && t.state() == outpost_proto::v1::TargetState::Queued
            {
                return;
            }
        }
    })
    .await
    .expect("the command is queued");
    // Bad TOML on the secret's own line: refused, the error says where.
    let bad =
        admin.run_action(action("app-apply", &["off-1"], &[("spec", &spec("DB = \"s3cr3t-toml-9b1c", url))])).await;
    let e = bad.expect_err("refused");
    assert!(e.message().contains("line 7") && !e.message().contains("s3cr3t"), "{e:?}");
    // A password in an ssh URL: refused, never quoted.
    let with_pw = spec("DB = \"x\"", "ssh://git:s3cr3t-url-4d2e@github.com/acme/web.git");
    let e = admin.run_action(action("app-apply", &["off-1"], &[("spec", &with_pw)])).await.expect_err("refused");
    assert!(e.message().contains("no credentials") && !e.message().contains("s3cr3t"), "{e:?}");

    // The store (with the queued command), the audit log in it, and the hub's log.
    let audit =
        admin.query_audit(outpost_proto::v1::QueryAuditRequest { limit: 100, ..Default::default() }).await.unwrap();
    let records = format!("{:?}", audit.into_inner().records);
    assert!(records.contains("app-apply"), "the requests are audited");
    for s in secrets {
        assert!(!records.contains(s), "{s} in the audit log: {records}");
        let found = files_containing(&tmp.path().join("hub"), s);
        assert!(found.is_empty(), "{s} in the clear in {found:?}");
    }
    drop(events);
}
