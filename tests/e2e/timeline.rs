//! The deprovision timeline end to end, with hubd's lifecycle clock moved by the test: suspend (apps
//! stopped), reactivate within the 7 days (apps back), archive at 7 days (archive present with the right
//! checksum, cloud server gone, identity revoked), reactivate between 7 and 30 days (a new server, the
//! archive restored onto it), and deletion at 30 days (archive and record gone).

use std::time::Duration;

use outpost_common::Role;
use outpost_proto::v1 as pb;
use tonic::transport::Channel;

use harness::cloud::cloud_with;

use crate::provision::{is_final, provision_req, wait_job};

const DAY_MS: i64 = 86_400_000;
const WAIT: Duration = Duration::from_secs(90);

type Client = pb::operator_client::OperatorClient<Channel>;

async fn server(admin: &mut Client, name: &str) -> Option<pb::Server> {
    admin.get_server(pb::GetServerRequest { name: name.into(), history: 0 }).await.ok()?.into_inner().server
}

/// Waits until the server's reported app `web` satisfies `done`.
async fn wait_app(admin: &mut Client, name: &str, what: &str, done: impl Fn(&pb::AppState) -> bool) -> pb::AppState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let app =
            server(admin, name).await.and_then(|s| s.apps).and_then(|a| a.apps.into_iter().find(|a| a.name == "web"));
        if let Some(a) = &app
            && done(a)
        {
            return app.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {app:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(admin: &mut Client, name: &str, action: &str, args: &[(&str, &str)]) -> pb::CommandResult {
    let run = harness::run_job(admin, harness::action(action, &[name], args)).await;
    run.result(name).clone()
}

/// The jobs the hub holds for `target`, newest first.
async fn jobs_of(admin: &mut Client, target: &str) -> Vec<pb::LifecycleJob> {
    let r = admin.list_lifecycle_jobs(pb::ListLifecycleJobsRequest { limit: 0 }).await.unwrap().into_inner();
    r.jobs.into_iter().filter(|j| j.target == target).collect()
}

async fn finish_all(admin: &mut Client, jobs: Vec<pb::LifecycleJob>) -> Vec<pb::LifecycleJob> {
    let mut out = Vec::new();
    for j in jobs {
        let done = wait_job(admin, j.id, WAIT, is_final).await;
        assert_eq!(done.state, "succeeded", "{done:#?}");
        out.push(done);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deprovision_timeline_with_the_clock_moved() {
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("offset-ms");
    let set_clock = |ms: i64| std::fs::write(&clock, ms.to_string()).unwrap();
    set_clock(0);
    let c = cloud_with("", "", Some(&clock)).await;
    let mut admin = c.hub.client(Role::Admin);
    let root = c.dir.path();
    harness::git(
        root,
        "git init -q --bare -b main web.git && git clone -q web.git dev 2>/dev/null && cd dev && echo v1 > app.txt && git add -A && git commit -qm v1 && git push -q origin HEAD:main",
    );
    let commit = harness::git(&root.join("dev"), "git rev-parse HEAD");

    // A customer with one app, two replicas, and a secret.
    let id = admin.provision(provision_req("acme", "pro")).await.unwrap().into_inner().job.unwrap().id;
    assert_eq!(wait_job(&mut admin, id, WAIT, is_final).await.state, "succeeded");
    let spec = format!(
        "name = \"web\"\nimage = \"registry.example/acme/web:{{commit}}\"\nport = 8080\nreplicas = 2\n[repo]\nurl = \"{}\"\n[secrets]\nDATABASE_URL = \"postgres://u:hunter2@db/acme\"\n",
        root.join("web.git").display()
    );
    assert_eq!(run(&mut admin, "acme", "app-apply", &[("spec", &spec)]).await.outcome, pb::Outcome::Succeeded as i32);
    let deployed = run(&mut admin, "acme", "app-deploy", &[("app", "web")]).await;
    assert_eq!(deployed.outcome, pb::Outcome::Succeeded as i32, "{deployed:?}");
    wait_app(&mut admin, "acme", "deployed", |a| a.desired_replicas == 2 && a.phase == "available").await;

    // A deprovision needs the customer's name as confirmation.
    let unconfirmed =
        admin.deprovision(pb::DeprovisionRequest { customer: "acme".into(), confirm: String::new() }).await;
    assert_eq!(unconfirmed.unwrap_err().code(), tonic::Code::FailedPrecondition);
    let deprovision = pb::DeprovisionRequest { customer: "acme".into(), confirm: "acme".into() };

    // Day 0: suspended at once; apps stopped; an archive job waits for day 7.
    let jobs = admin.deprovision(deprovision.clone()).await.unwrap().into_inner().jobs;
    let done = finish_all(&mut admin, jobs).await;
    let steps: Vec<&str> = done[0].steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(steps, ["stop-apps", "burn-tokens", "suspend", "schedule-archive"]);
    wait_app(&mut admin, "acme", "stopped", |a| a.desired_replicas == 0).await;
    let s = server(&mut admin, "acme").await.unwrap();
    assert_eq!(s.labels.get("lifecycle").map(String::as_str), Some("suspended"));
    let archive_job = jobs_of(&mut admin, "acme").await.into_iter().find(|j| j.kind == "archive").unwrap();
    assert_eq!(archive_job.state, "pending");
    assert!(archive_job.not_before_ms - done[0].created_ms >= 7 * DAY_MS - 60_000, "{archive_job:#?}");

    // Day 3: reactivated: the apps are back, the archive is called off.
    set_clock(3 * DAY_MS);
    let jobs = admin.reactivate(pb::ReactivateRequest { customer: "acme".into() }).await.unwrap().into_inner().jobs;
    finish_all(&mut admin, jobs).await;
    wait_app(&mut admin, "acme", "started again", |a| a.desired_replicas == 2).await;
    let s = server(&mut admin, "acme").await.unwrap();
    assert!(!s.labels.contains_key("lifecycle"));
    let archive_job = wait_job(&mut admin, archive_job.id, WAIT, is_final).await;
    assert_eq!(archive_job.state, "cancelled");

    // Deprovisioned again on day 3; day 10: archived, the cloud server deleted, the identity revoked.
    let jobs = admin.deprovision(deprovision.clone()).await.unwrap().into_inner().jobs;
    finish_all(&mut admin, jobs).await;
    set_clock(10 * DAY_MS + 60_000);
    let archive_job =
        jobs_of(&mut admin, "acme").await.into_iter().find(|j| j.kind == "archive" && j.state != "cancelled").unwrap();
    let archived = wait_job(&mut admin, archive_job.id, WAIT, is_final).await;
    assert_eq!(archived.state, "succeeded", "{archived:#?}");
    let export = &archived.steps.iter().find(|s| s.name == "export").unwrap().message;
    let path = export.split("archived to ").nth(1).and_then(|r| r.split(" (").next()).unwrap();
    let bytes = std::fs::read(path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(export.contains(&harness::cloud::sha256_hex(&bytes)), "the recorded checksum is the file's: {export}");
    // Sealed: the secret is not in the file; the hub's key (derived from its CA) opens it.
    assert!(bytes.starts_with(b"sealed:v1:") && !String::from_utf8_lossy(&bytes).contains("hunter2"));
    let sealer = c.hub.sealer();
    let plain = sealer.open(std::str::from_utf8(&bytes).unwrap(), &format!("archive/{}", archived.target)).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    assert!(String::from_utf8_lossy(&plain).contains("hunter2"), "the archive keeps the secret, sealed");
    assert_eq!(doc["apps"][0]["name"], "web");
    assert_eq!(doc["apps"][0]["live"]["commit"], commit.as_str());
    assert!(c.fake.servers().is_empty(), "the cloud server is deleted: {:?}", c.fake.servers());
    let s = server(&mut admin, "acme").await.unwrap();
    assert_eq!(s.labels.get("lifecycle").map(String::as_str), Some("archived"));
    assert!(s.liveness != pb::Liveness::Connected as i32);

    // Day 12: reactivated from the archive: a new server, the app restored at its commit with its secret.
    set_clock(12 * DAY_MS);
    let jobs = admin.reactivate(pb::ReactivateRequest { customer: "acme".into() }).await.unwrap().into_inner().jobs;
    let back = finish_all(&mut admin, jobs).await;
    let restore = &back[0].steps.iter().find(|s| s.name == "restore").unwrap().message;
    assert!(restore.contains("restored 1 app(s)"), "{restore}");
    assert_eq!(c.fake.servers().len(), 1, "a new cloud server");
    let app = wait_app(&mut admin, "acme", "restored", |a| a.phase == "available" && a.desired_replicas == 2).await;
    assert_eq!((app.commit.as_str(), app.desired_replicas), (commit.as_str(), 2));

    // Deprovisioned on day 12: archived on day 19, deleted for good on day 42.
    let jobs = admin.deprovision(deprovision).await.unwrap().into_inner().jobs;
    finish_all(&mut admin, jobs).await;
    set_clock(19 * DAY_MS + 60_000);
    let archive_job =
        jobs_of(&mut admin, "acme").await.into_iter().find(|j| j.kind == "archive" && j.state == "pending").unwrap();
    let archived = wait_job(&mut admin, archive_job.id, WAIT, is_final).await;
    assert_eq!(archived.state, "succeeded", "{archived:#?}");
    let export = &archived.steps.iter().find(|s| s.name == "export").unwrap().message;
    let path = export.split("archived to ").nth(1).and_then(|r| r.split(" (").next()).unwrap().to_string();
    assert!(std::path::Path::new(&path).exists());
    set_clock(42 * DAY_MS + 60_000);
    let delete_job = loop {
        if let Some(j) =
            jobs_of(&mut admin, "acme").await.into_iter().find(|j| j.kind == "delete" && j.state == "pending")
        {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deleted = wait_job(&mut admin, delete_job.id, WAIT, is_final).await;
    assert_eq!(deleted.state, "succeeded", "{deleted:#?}");
    assert!(!std::path::Path::new(&path).exists(), "the archive is gone at 30 days");
    assert!(server(&mut admin, "acme").await.is_none(), "the record is gone");
    assert!(c.fake.servers().is_empty());
    // Every step is in the audit log.
    let audit = admin
        .query_audit(pb::QueryAuditRequest { server: "acme".into(), limit: 200, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .records;
    for kind in ["provision", "deprovision", "archive", "reactivate", "delete"] {
        assert!(
            audit.iter().any(|r| r.kind == "job" && r.action == kind && r.outcome == pb::Outcome::Succeeded as i32),
            "{kind} audited"
        );
    }
}
