//! Provisioning end to end: a real hubd drives the fake Hetzner API through the real `hcloud` client; the
//! fake's servers boot by running their user-data's agentd part for real (tests/src/cloud.rs), so a
//! provision goes job → cloud server → user-data → agentd fetched from the hub → enrollment → K3s Ready
//! (the Kubernetes stand-in) → online, with no hand-made token.

use std::time::Duration;

use harness::cloud::{Boot, parse_user_data, written_files};
use harness::{WAIT, bin, init};
use outpost_common::Role;
use outpost_proto::v1 as pb;
use standin::hetzner::{Fault, HetznerStandIn};
use tonic::transport::Channel;

use harness::cloud::{Cloud, TOKEN, cloud};
const STEPS: [&str; 5] = ["register", "cloud-setup", "create", "boot", "ready"];

pub fn provision_req(customer: &str, plan: &str) -> pb::ProvisionRequest {
    pb::ProvisionRequest { customer: customer.into(), plan: plan.into(), ..Default::default() }
}

/// Follows a job until `done` holds (reconnecting while the hub restarts); returns that state.
pub async fn wait_job(
    client: &mut outpost_proto::v1::operator_client::OperatorClient<Channel>,
    id: u64,
    within: Duration,
    done: impl Fn(&pb::LifecycleJob) -> bool,
) -> pb::LifecycleJob {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = None;
    loop {
        if let Ok(s) = client.watch_lifecycle_job(pb::WatchLifecycleJobRequest { id }).await {
            let mut s = s.into_inner();
            while let Ok(Some(j)) = tokio::time::timeout_at(deadline, s.message()).await.unwrap_or(Ok(None)) {
                if done(&j) {
                    return j;
                }
                last = Some(j);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            if let Ok(keep) = std::env::var("KEEP_TEST_DIR") {
                let _ = std::process::Command::new("cp").args(["-a", "/tmp/.", &keep]).status();
            }
            panic!("job {id} did not get there in {within:?}; last: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is_final(j: &pb::LifecycleJob) -> bool {
    ["succeeded", "failed", "cancelled"].contains(&j.state.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provision_creates_a_server_whose_agent_enrolls_itself_and_comes_online() {
    let c = cloud("").await;
    let mut admin = c.hub.client(Role::Admin);
    let req = pb::ProvisionRequest { idempotency_key: "signup-acme-1".into(), ..provision_req("acme", "pro") };
    let r = admin.provision(req.clone()).await.unwrap().into_inner();
    assert!(r.created);
    let id = r.job.unwrap().id;
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert_eq!(job.state, "succeeded", "{job:#?}\nboots: {:?}", c.machines.boot_of("acme"));
    let steps: Vec<(&str, bool)> = job.steps.iter().map(|s| (s.name.as_str(), s.ok)).collect();
    assert_eq!(steps, STEPS.map(|s| (s, true)));
    assert_eq!(job.attempt, 1);

    // The same idempotency key returns the job; with other parameters it is refused.
    let again = admin.provision(req.clone()).await.unwrap().into_inner();
    assert!(!again.created && again.job.unwrap().id == id);
    let other = pb::ProvisionRequest { plan: "team".into(), ..req };
    let err = admin.provision(other).await.unwrap_err();
    assert!(err.message().contains("other parameters"), "{err:?}");

    // Exactly one cloud server, labelled, with the plan's type, the break-glass key and the 80/443 firewall.
    let servers = c.fake.servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    let s = &servers[0];
    assert_eq!((s.name.as_str(), s.server_type.as_str(), s.location.as_str()), ("acme", "cx32", "fsn1"));
    for (k, v) in [("managed-by", "outpost"), ("outpost-id", "acme"), ("customer", "acme"), ("plan", "pro")] {
        assert_eq!(s.labels.get(k).map(String::as_str), Some(v), "label {k}");
    }
    assert_eq!(s.ssh_keys, ["outpost-break-glass"]);
    assert_eq!(s.firewalls.len(), 1);
    let rules = c.fake.firewall_rules("outpost-web").unwrap();
    let ports: Vec<(&str, &str, &str)> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["direction"].as_str().unwrap(), r["protocol"].as_str().unwrap(), r["port"].as_str().unwrap()))
        .collect();
    assert_eq!(ports, [("in", "tcp", "80"), ("in", "tcp", "443")]);

    // The user-data: the token 0600, and nothing left of it once enrolled.
    let files = written_files(&parse_user_data(&s.user_data));
    assert_eq!(files["/etc/outpost/join-token"].0, 0o600);
    assert!(String::from_utf8_lossy(&files["/etc/outpost/join-token"].1).starts_with("outpost-join-v1."));
    let root = c.machines.root_of("acme");
    assert!(!root.join("etc/outpost/join-token").exists(), "agentd deletes the token once enrolled");

    // The hub sees it online with K3s Ready, customer and plan.
    let server = admin.get_server(pb::GetServerRequest { name: "acme".into(), history: 0 }).await.unwrap();
    let server = server.into_inner().server.unwrap();
    assert_eq!((server.customer.as_str(), server.plan.as_str()), ("acme", "pro"));
    assert!(!server.agent_id.is_empty());
    assert!(server.apps.as_ref().and_then(|a| a.cluster.as_ref()).is_some_and(|c| c.ready));

    // A second provision for the same name is refused while the server exists.
    let err = admin.provision(provision_req("acme", "pro")).await.unwrap_err();
    assert!(err.message().contains("exists already"), "{err:?}");

    // The queue's figures.
    let list = admin.list_lifecycle_jobs(pb::ListLifecycleJobsRequest { limit: 0 }).await.unwrap().into_inner();
    let stats = list.stats.unwrap();
    assert_eq!((stats.pending, stats.running, stats.finished_last_hour, stats.failed_last_hour), (0, 0, 1, 0));
    // Viewers may look but not provision.
    let mut viewer = c.hub.client(Role::Viewer);
    assert_eq!(
        viewer.list_lifecycle_jobs(pb::ListLifecycleJobsRequest::default()).await.unwrap().into_inner().jobs.len(),
        1
    );
    let denied = viewer.provision(provision_req("other", "pro")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_outages_and_a_sold_out_location_are_ridden_out() {
    let c = cloud("").await;
    let mut admin = c.hub.client(Role::Admin);
    c.fake.sell_out("cx22", "fsn1");
    c.fake.fail_next(&[
        Fault::RateLimited,
        Fault::RateLimited,
        Fault::Unavailable,
        Fault::RateLimited,
        Fault::Unavailable,
    ]);
    let id = admin.provision(provision_req("beta", "starter")).await.unwrap().into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert_eq!(job.state, "succeeded", "{job:#?}");
    assert_eq!(c.fake.throttled(), 3);
    let servers = c.fake.servers();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].location, "nbg1", "cx22 is sold out in fsn1: the plan's next location");
    let create = job.steps.iter().find(|s| s.name == "create").unwrap();
    assert!(create.message.contains("nbg1"), "{create:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_provision_leaves_nothing_behind() {
    let c = cloud("ready_timeout_secs = 8").await;
    let mut admin = c.hub.client(Role::Admin);

    // The cloud's create action fails: the server is deleted, the record and token removed.
    c.fake.fail_creates(1);
    let id = admin.provision(provision_req("gamma", "pro")).await.unwrap().into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert_eq!(job.state, "failed");
    assert!(job.error.contains("creating server") && job.error.contains("deleted cloud server"), "{}", job.error);
    assert!(c.fake.servers().is_empty(), "{:?}", c.fake.servers());
    let gone = admin.get_server(pb::GetServerRequest { name: "gamma".into(), history: 0 }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);

    // A server of that name exists in the project, not created by this hub: the job says so and leaves it.
    c.fake.add_server("stranger", &[("team", "data")]);
    let id = admin.provision(provision_req("stranger", "pro")).await.unwrap().into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert_eq!(job.state, "failed");
    assert!(job.error.contains("that this hub did not create"), "{}", job.error);
    assert_eq!(c.fake.servers().len(), 1, "the stranger's server stays");
    assert_eq!(c.fake.servers()[0].name, "stranger");
    let gone = admin.get_server(pb::GetServerRequest { name: "stranger".into(), history: 0 }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);

    // The artifact changes after the hub hashed it: the installer refuses it, the agent never enrolls, and
    // the job fails at the timeout with what it saw, leaving nothing.
    let artifact = c.hub.dir.join(format!("data/artifacts/agentd-{}-x86_64", env!("CARGO_PKG_VERSION")));
    let mut bytes = std::fs::read(&artifact).unwrap();
    bytes.push(0);
    std::fs::write(&artifact, bytes).unwrap();
    let id = admin.provision(provision_req("delta", "pro")).await.unwrap().into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert_eq!(job.state, "failed");
    assert!(job.error.contains("never enrolled") && job.error.contains("cloud status running"), "{}", job.error);
    match c.machines.boot_of("delta") {
        Some(Boot::Failed(why)) => assert!(why.contains("does not match its SHA-256"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.fake.servers().len(), 1, "only the stranger's server: {:?}", c.fake.servers());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_and_bad_tokens_get_clear_errors() {
    let c = cloud("").await;
    let mut admin = c.hub.client(Role::Admin);
    for (req, needle) in [
        (provision_req("acme", "platinum"), "unknown plan \"platinum\"; plans: pro, starter, team"),
        (
            pb::ProvisionRequest { location: "ash".into(), ..provision_req("acme", "pro") },
            "location \"ash\" is not one of plan pro's locations",
        ),
        (provision_req("Acme Corp", "pro"), "customer \"Acme Corp\" is not a DNS label"),
        (provision_req("-acme", "pro"), "is not a DNS label"),
    ] {
        let err = admin.provision(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(needle), "{needle}: {err:?}");
    }
    assert!(
        c.fake.requests().iter().all(|r| r.starts_with("GET ")),
        "nothing was asked of the cloud: {:?}",
        c.fake.requests()
    );
    assert!(
        admin.list_lifecycle_jobs(pb::ListLifecycleJobsRequest::default()).await.unwrap().into_inner().jobs.is_empty()
    );

    // A read-only token: 403 fails the job at once, with the reason; nothing is left.
    c.fake.add_read_only_token("read-only");
    drop(admin);
    let Cloud { mut hub, fake, machines, dir, .. } = c;
    let token_file = dir.path().join("hcloud-token");
    std::fs::write(&token_file, "read-only").unwrap();
    hub.kill9().await;
    hub.restart().await;
    let mut admin = hub.client(Role::Admin);
    let id = admin.provision(provision_req("eps", "pro")).await.unwrap().into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert_eq!(job.state, "failed");
    assert!(job.error.contains("403") && job.error.contains("read & write"), "{}", job.error);
    assert_eq!(job.attempt, 1, "a permanent error is not retried");

    // An invalid token: 401.
    std::fs::write(&token_file, "wrong").unwrap();
    hub.kill9().await;
    hub.restart().await;
    let mut admin = hub.client(Role::Admin);
    let id = admin.provision(provision_req("zeta", "pro")).await.unwrap().into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert!(job.state == "failed" && job.error.contains("401"), "{job:#?}");
    assert!(fake.servers().is_empty() && machines.boot_of("zeta").is_none());
    // The token is never logged.
    let log = std::fs::read_to_string(hub.dir.join("hubd.log")).unwrap();
    assert!(!log.contains(TOKEN) && !log.contains("read-only\""), "the API token is in hubd's log");
}

/// hubd is SIGKILLed while a provision is at each step in turn (each step held at its cloud call, or its
/// wait, so the kill lands inside it); each time the job resumes on the restarted hub and finishes, with
/// exactly one cloud server for it and no orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hubd_killed_at_every_step_resumes_with_exactly_one_server() {
    let mut c = cloud("").await;
    for (i, step) in STEPS.iter().enumerate() {
        let customer = format!("crash-{i}");
        // Where the step waits: a cloud call held by the fake, or the machine's boot.
        match *step {
            "cloud-setup" => c.fake.hold("GET /v1/ssh_keys"),
            "create" => c.fake.hold("POST /v1/servers"),
            "boot" => c.fake.hold("GET /v1/actions/"),
            "ready" => c.machines.hold(),
            _ => {}
        }
        let posts_before = c.fake.seen("POST /v1/servers");
        let mut admin = c.hub.client(Role::Admin);
        let id = admin.provision(provision_req(&customer, "pro")).await.unwrap().into_inner().job.unwrap().id;
        let seen = wait_job(&mut admin, id, WAIT, |j| is_final(j) || j.steps.iter().any(|s| s.name == *step)).await;
        assert!(!is_final(&seen), "killed at {step}: {seen:#?}");
        if *step == "create" {
            // The create call is in flight: the kill loses its answer (the server exists, unrecorded).
            let deadline = tokio::time::Instant::now() + WAIT;
            while c.fake.seen("POST /v1/servers") <= posts_before {
                assert!(tokio::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        c.hub.kill9().await;
        c.fake.release();
        c.machines.release();
        c.hub.restart().await;
        let mut admin = c.hub.client(Role::Admin);
        let job = wait_job(&mut admin, id, WAIT, is_final).await;
        assert_eq!(job.state, "succeeded", "killed at {step}: {job:#?}");
        assert!(job.attempt >= 2 || *step == "register", "killed at {step}: taken up again ({})", job.attempt);
        let _ = i;
        let mine: Vec<_> =
            c.fake.servers().into_iter().filter(|s| s.labels.get("outpost-id") == Some(&customer)).collect();
        assert_eq!(mine.len(), 1, "killed at {step}: {mine:?}");
        // Steps that ended well were not run again.
        for s in STEPS {
            let runs = job.steps.iter().filter(|x| x.name == s && x.ok).count();
            assert_eq!(runs, 1, "killed at {step}: step {s} ended well {runs} times: {:#?}", job.steps);
        }
    }
    assert_eq!(c.fake.servers().len(), STEPS.len(), "one server per provision, no orphan");
}

/// Every user-data the hub renders passes the real `cloud-init schema`, and the install script passes
/// shellcheck.
#[test]
fn rendered_user_data_passes_cloud_init_schema_and_shellcheck() {
    let dir = tempfile::tempdir().unwrap();
    let ca = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTest\n-----END CERTIFICATE-----\n";
    let doc = hub::lifecycle::userdata::UserData {
        server: "acme",
        job: 42,
        token: "outpost-join-v1.abc",
        ca_pem: ca,
        release_keys: &["RWTcM5PYzuYuP5qFyshXCbndhBo5SA19cVFbzt0kOmWF8G4vErCgGba7".to_string()],
        k3s_version: "v1.33.5+k3s1",
        k3s_installer: "https://get.k3s.io",
        k3s_flags: "--write-kubeconfig-mode=0600 --disable=servicelb",
        agentd_url: "https://hub.example.com:7443/artifacts/agentd/0.1.0/x86_64",
        agentd_sha256: &"0123456789abcdef".repeat(4),
    }
    .render()
    .unwrap();
    let path = dir.path().join("user-data");
    std::fs::write(&path, &doc).unwrap();
    let out = std::process::Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(&path)
        .output()
        .expect("cloud-init (installed by scripts/test)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("Valid cloud-config"), "{text}");

    // A document cloud-init refuses is refused by the same check (the check can fail).
    std::fs::write(&path, doc.replace("permissions: \"0600\"", "permissions: [1, 2]")).unwrap();
    let bad = std::process::Command::new("cloud-init").args(["schema", "--config-file"]).arg(&path).output().unwrap();
    assert!(!bad.status.success(), "cloud-init accepted a bad document");

    // The agent pins the hub's release keys, as it pins the CA: its config parses and validates as written.
    let files = written_files(&parse_user_data(&doc));
    let agent_toml = String::from_utf8(files["/etc/outpost/agentd.toml"].1.clone()).unwrap();
    let agent = agentd::config::AgentConfig::from_toml(&agent_toml).unwrap();
    agent.validate().unwrap();
    assert_eq!(agent.release_keys, ["RWTcM5PYzuYuP5qFyshXCbndhBo5SA19cVFbzt0kOmWF8G4vErCgGba7"]);

    let install = files["/usr/local/lib/outpost/install.sh"].1.clone();
    let script = dir.path().join("install.sh");
    std::fs::write(&script, install).unwrap();
    let sc = std::process::Command::new("shellcheck").arg(&script).output().unwrap();
    assert!(sc.status.success(), "{}", String::from_utf8_lossy(&sc.stdout));
}

/// The reaper finds every server that carries this hub's labels but no record or job knows, across pages
/// of the API (60 orphans, 50 a page), and deletes them with `reap_delete`; servers it knows and servers
/// without its labels are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reaper_removes_orphans_across_pages_and_leaves_the_rest() {
    let c = cloud("reap_secs = 1\nreap_delete = true").await;
    let mut admin = c.hub.client(Role::Admin);
    let id = admin.provision(provision_req("keep", "pro")).await.unwrap().into_inner().job.unwrap().id;
    assert_eq!(wait_job(&mut admin, id, WAIT, is_final).await.state, "succeeded");
    for i in 0..60 {
        c.fake.add_server(&format!("ghost-{i}"), &[("managed-by", "outpost"), ("outpost-id", &format!("ghost-{i}"))]);
    }
    c.fake.add_server("someone-elses", &[("team", "data")]);
    // The hub waits for each delete action to end before it audits the delete: quick actions here.
    c.fake.set_delete_time(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + WAIT;
    let audit = loop {
        let names: Vec<String> = c.fake.servers().into_iter().map(|s| s.name).collect();
        let audit = admin
            .query_audit(pb::QueryAuditRequest { action: "reap".into(), limit: 100, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .records;
        if names == ["keep", "someone-elses"] && audit.len() >= 60 {
            break audit;
        }
        assert!(tokio::time::Instant::now() < deadline, "orphans left: {names:?}; {} audited", audit.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(audit.len(), 60, "each orphan is audited once");
    assert!(audit.iter().all(|r| r.message.contains("; deleted")));
}

/// The hub's Hetzner client against the fake: every page of a listing, the label selector, and the errors
/// classified as the provisioner needs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hetzner_client_pages_selects_and_classifies() {
    use hub::lifecycle::cloud::{Cloud, CloudError, Hetzner, Retry};
    init();
    let fake = HetznerStandIn::start(TOKEN).await;
    for i in 0..120 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        fake.add_server(&format!("s-{i}"), &[("managed-by", "outpost"), ("tier", tier)]);
    }
    let retry = Retry {
        attempts: 3,
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
        rate_per_sec: 100.0,
        burst: 100,
    };
    let cloud = Hetzner::new(&fake.url(), TOKEN, retry);
    assert_eq!(cloud.servers("managed-by=outpost").await.unwrap().len(), 120, "three pages of 50");
    assert_eq!(fake.requests().iter().filter(|r| *r == "GET /v1/servers").count(), 3);
    assert_eq!(cloud.servers("managed-by=outpost,tier=odd").await.unwrap().len(), 60);
    // 429 and 503 are retried within the call; past the attempts, the error says how often.
    fake.fail_next(&[Fault::RateLimited, Fault::Unavailable]);
    assert_eq!(cloud.servers("tier=even").await.unwrap().len(), 60);
    fake.fail_next(&[Fault::RateLimited; 3]);
    assert_eq!(cloud.servers("tier=even").await.unwrap_err(), CloudError::RateLimited(3));
    assert_eq!(Hetzner::new(&fake.url(), "bad", retry).servers("").await.unwrap_err(), CloudError::Unauthorized);
    assert_eq!(cloud.delete_server(99_999).await, Ok(()), "a server that is gone is deleted");
    // The API checks what a create names, as the real one does: an SSH key or firewall that does not
    // exist is refused, not dropped.
    let unknown = hub::lifecycle::cloud::NewServer {
        name: "s-1".into(),
        server_type: "cx22".into(),
        image: "debian-12".into(),
        location: "fsn1".into(),
        labels: Default::default(),
        user_data: String::new(),
        ssh_key: "k".into(),
        firewall: 0,
    };
    let e = cloud.create_server(&unknown).await.unwrap_err();
    assert!(matches!(&e, CloudError::Invalid(m) if m.contains("invalid_input")), "{e:?}");
    let key = cloud
        .ensure_ssh_key("k", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOutpostTestKeyOutpostTestKeyOutpost k")
        .await
        .unwrap();
    let firewall = cloud.ensure_firewall("fw").await.unwrap();
    let taken = hub::lifecycle::cloud::NewServer { ssh_key: key, firewall, ..unknown };
    assert!(matches!(cloud.create_server(&taken).await, Err(CloudError::Uniqueness(_))));
}

/// `outpost provision` follows its job with a progress bar; when hubd dies mid-job and comes back, the
/// command re-attaches by job id and ends with the job's result. `jobs list --output json` has the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_follows_a_provision_across_a_hub_restart() {
    let mut c = cloud("").await;
    let bundle = c.dir.path().join("bundle");
    c.hub.bundle("ops-admin", Role::Admin).write(&bundle).unwrap();
    c.fake.hold("GET /v1/actions/");
    let cli = tokio::process::Command::new(bin("outpost"))
        .arg("--bundle")
        .arg(&bundle)
        .args(["provision", "--customer", "cli", "--plan", "pro", "--idempotency-key", "cli-1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut admin = c.hub.client(Role::Admin);
    let deadline = tokio::time::Instant::now() + WAIT;
    let id = loop {
        let jobs = admin.list_lifecycle_jobs(pb::ListLifecycleJobsRequest::default()).await.unwrap().into_inner().jobs;
        if let Some(j) = jobs.iter().find(|j| j.steps.iter().any(|s| s.name == "boot")) {
            break j.id;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    c.hub.kill9().await;
    c.fake.release();
    c.hub.restart().await;
    let out = tokio::time::timeout(WAIT, cli.wait_with_output()).await.expect("the CLI ends").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains(&format!("job {id} provision cli: succeeded")), "{stdout}");
    assert!(stdout.contains("✓ ready"), "{stdout}");

    let json = std::process::Command::new(bin("outpost"))
        .arg("--bundle")
        .arg(&bundle)
        .args(["jobs", "list", "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["stats"]["finished_last_hour"], 1);
    assert_eq!(v["jobs"][0]["state"], "succeeded");
}

/// A graceful stop (SIGTERM) hands running jobs back to the queue at once: the next hubd continues them
/// without waiting for their lease (600 s here) and without counting an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_stop_hands_running_jobs_back() {
    let mut c = harness::cloud::cloud_with("", "lease_secs = 600", None).await;
    c.fake.hold("GET /v1/actions/");
    let mut admin = c.hub.client(Role::Admin);
    let id = admin.provision(provision_req("calm", "pro")).await.unwrap().into_inner().job.unwrap().id;
    wait_job(&mut admin, id, WAIT, |j| j.steps.iter().any(|s| s.name == "boot")).await;
    let pid = c.hub.child.id().unwrap();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let status = tokio::time::timeout(WAIT, c.hub.child.wait()).await.expect("hubd drains").unwrap();
    assert!(status.success(), "{status:?}");
    c.fake.release();
    c.hub.restart().await;
    let mut admin = c.hub.client(Role::Admin);
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert_eq!(job.state, "succeeded", "{job:#?}");
    assert_eq!(job.attempt, 1, "a hand-back is not an attempt");
}
