//! Issue 10 end to end: an operator deploys an app from a local bare repository onto a real agentd
//! through the real hub; the agent fetches it with git, renders and applies it through kube-rs to the
//! stand-in Kubernetes API, and watches the rollout that this test plays the controller for.

use std::time::Duration;

use harness::{AgentProc, HubProc, action, run_job, watch_until};
use outpost_common::Role;
use outpost_proto::v1::{CreateJoinTokenRequest, Liveness, Outcome, QueryAuditRequest};
use serde_json::{Value, json};
use standin::kube::KubeStandIn;

const DEPLOYMENT: &str = "apis/apps/v1/namespaces/acme/deployments/web";
const WAIT: Duration = Duration::from_secs(30);

/// The Deployment controller: the rollout of the current template is done.
fn mark_available(kube: &KubeStandIn, d: &Value) {
    let replicas = d["spec"]["replicas"].clone();
    kube.patch(
        DEPLOYMENT,
        json!({"status": {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True"}, {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]
        }}),
    );
}

fn template_of(d: &Value) -> &str {
    d["spec"]["template"]["metadata"]["labels"]["outpost.dev/deployment"].as_str().unwrap_or_default()
}

/// What every app test starts from: a stand-in Kubernetes API, a bare repository `web.git` with one commit on
/// main (a developer's clone in `dev`), a hub, and agent `name` of customer acme on plan pro, connected,
/// pointed at both (`extra`: more agentd.toml lines).
struct AppServer {
    kube: KubeStandIn,
    hub: HubProc,
    _agent: AgentProc,
    /// The repository's first commit.
    first: String,
}

impl AppServer {
    async fn start(root: &std::path::Path, name: &str, extra: &str) -> AppServer {
        AppServer::start_on(root, name, extra, "pro", false).await
    }

    /// On `plan`; `controller`: the stand-in plays the Deployment controller (pods through admission).
    async fn start_on(root: &std::path::Path, name: &str, extra: &str, plan: &str, controller: bool) -> AppServer {
        harness::init();
        let kube = if controller {
            KubeStandIn::start_with_controller(&root.join("kube")).await
        } else {
            KubeStandIn::start(&root.join("kube")).await
        };
        harness::git(
            root,
            "git init -q --bare -b main web.git && git clone -q web.git dev 2>/dev/null && cd dev && echo v1 > app.txt && git add -A && git commit -qm v1 && git push -q origin HEAD:main",
        );
        let first = harness::git(&root.join("dev"), "git rev-parse HEAD");
        let hub = HubProc::start(&root.join("hub"), harness::free_port(), "").await;
        let request = CreateJoinTokenRequest {
            server_name: name.into(),
            ttl_secs: 600,
            customer: "acme".into(),
            plan: plan.into(),
            ..Default::default()
        };
        let token = hub.client(Role::Admin).create_join_token(request).await.unwrap().into_inner().token;
        let poll = if extra.contains("rollout_poll_ms") { "" } else { "rollout_poll_ms = 20\n" };
        let config = format!(
            "kubeconfig = \"{}\"\nrepo_roots = [\"{}\"]\n{poll}{extra}",
            kube.kubeconfig.display(),
            root.display()
        );
        let agent = AgentProc::start(root, name, &token, &config);
        watch_until(&mut hub.client(Role::Viewer), "the agent connected", |f| {
            f.get(name).is_some_and(|s| s.liveness == Liveness::Connected as i32)
        })
        .await;
        AppServer { kube, hub, _agent: agent, first }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_deploys_from_git_and_a_bad_commit_is_rolled_back_automatically() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // The rollout is watched: with a minute between looks when nothing changes, only the watch's events
    // (this test plays the controller) can end these deploys as fast as they end.
    let env =
        AppServer::start(root, "app-1", "reconcile_secs = 1\napps_report_secs = 1\nrollout_poll_ms = 60000\n").await;
    let (kube, hub, good) = (&env.kube, &env.hub, env.first.clone());
    let mut admin = hub.client(Role::Admin);

    // The spec, with a secret: stored, and never in the audit log.
    let spec = format!(
        "name = \"web\"\nimage = \"registry.example/acme/web:{{commit}}\"\nport = 8080\nreplicas = 2\n[repo]\nurl = \"{}\"\n[secrets]\nDATABASE_URL = \"postgres://u:hunter2@db/acme\"\n[resources]\nmemory_limit = \"256Mi\"\n",
        root.join("web.git").display()
    );
    let mut support = hub.client(Role::Support);
    let applied = run_job(&mut support, action("app-apply", &["app-1"], &[("spec", &spec)])).await;
    assert_eq!(applied.result("app-1").outcome, Outcome::Succeeded as i32, "{:?}", applied.result("app-1"));
    let again = run_job(&mut support, action("app-apply", &["app-1"], &[("spec", &spec)])).await;
    assert!(again.result("app-1").message.contains("nothing changed"), "{:?}", again.result("app-1"));

    // Deploy: the agent fetches, applies, and waits for the controller.
    let deploying = tokio::spawn({
        let mut c = hub.client(Role::Support);
        async move { run_job(&mut c, action("app-deploy", &["app-1"], &[("app", "web")])).await }
    });
    let d = kube.wait_for(DEPLOYMENT, WAIT, |d| template_of(d) == "web-1").await;
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], format!("registry.example/acme/web:{good}"));
    assert_eq!(
        kube.get("api/v1/namespaces/acme/secrets/web-secrets").unwrap()["stringData"]["DATABASE_URL"],
        "postgres://u:hunter2@db/acme"
    );
    assert!(kube.get("api/v1/namespaces/acme/resourcequotas/outpost-plan").is_some(), "the plan's quota");
    mark_available(kube, &d);
    let first = deploying.await.unwrap();
    let r = first.result("app-1");
    assert_eq!(r.outcome, Outcome::Succeeded as i32, "{r:?} {}", first.output["app-1"]);
    assert!(r.message.contains("web-1 is live"), "{r:?}");
    assert!(first.output["app-1"].contains(&format!("at {}", &good[..12])), "{}", first.output["app-1"]);

    // The hub learns what runs there from the agent's apps reports.
    let fleet = watch_until(&mut hub.client(Role::Viewer), "web available at the hub", |f| {
        f.get("app-1").and_then(|s| s.apps.as_ref()).is_some_and(|a| {
            a.apps.iter().any(|x| x.name == "web" && x.phase == "available" && x.deployment == "web-1")
        })
    })
    .await;
    let state = fleet["app-1"].apps.clone().unwrap();
    let web = &state.apps[0];
    assert_eq!((web.project.as_str(), web.desired_replicas, web.ready_replicas), ("acme", 2, 2), "{web:?}");
    assert_eq!(web.repo.as_ref().unwrap().head, good);

    // The same commit again, from the command line: nothing to do.
    let bundle = root.join("bundle");
    hub.bundle("sam", Role::Support).write(&bundle).unwrap();
    let outpost = |args: &[&str]| {
        let out = std::process::Command::new(harness::bin("outpost"))
            .arg("--bundle")
            .arg(&bundle)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = outpost(&["deploy", "web", "--on", "app-1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("already runs commit"), "{out}");
    let (code, out, err) = outpost(&["apps", "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (listed[0]["server"].as_str(), listed[0]["app"].as_str(), listed[0]["phase"].as_str()),
        (Some("app-1"), Some("web"), Some("available")),
        "{out}"
    );
    let (_, out, _) = outpost(&["apps", "--failing"]);
    assert!(out.contains("(no failing apps)"), "{out}");

    // A bad commit: its pods crash-loop; the agent says why and restores web-1.
    harness::git(&root.join("dev"), "echo broken > app.txt && git commit -qam broken && git push -q origin HEAD:main");
    let deploying = tokio::spawn({
        let mut c = hub.client(Role::Support);
        async move { run_job(&mut c, action("app-deploy", &["app-1"], &[("app", "web")])).await }
    });
    kube.wait_for(DEPLOYMENT, WAIT, |d| template_of(d) == "web-2").await;
    kube.put(
        "api/v1/namespaces/acme/pods/web-2-x",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"app.kubernetes.io/instance": "web", "outpost.dev/deployment": "web-2"}},
            "spec": {"containers": [{"name": "web"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "web", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "message": "panic: app.txt says broken"}}}]}}),
    );
    let restored = kube.wait_for(DEPLOYMENT, WAIT, |d| template_of(d) == "web-1").await;
    mark_available(kube, &restored);
    assert!(kube.delete("api/v1/namespaces/acme/pods/web-2-x"), "the controller removes the bad revision's pod");
    let second = deploying.await.unwrap();
    let r = second.result("app-1");
    assert_eq!(r.outcome, Outcome::Failed as i32, "{r:?}");
    assert!(
        r.message.contains("web-2 failed")
            && r.message.contains("panic: app.txt says broken")
            && r.message.contains("web-1 restored"),
        "{r:?}"
    );
    assert_eq!(
        kube.get(DEPLOYMENT).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("registry.example/acme/web:{good}")
    );
    // Rolled back and still running web-1: the hub hears of the failure and has both in the history.
    watch_until(&mut hub.client(Role::Viewer), "web-2's failure at the hub", |f| {
        f.get("app-1").and_then(|s| s.apps.as_ref()).is_some_and(|a| {
            a.apps.iter().any(|x| {
                x.deployment == "web-1"
                    && x.last_error.contains("web-2")
                    && x.history.first().is_some_and(|d| d.id == "web-2" && d.status == "rolled_back")
                    && x.history.iter().any(|d| d.id == "web-1" && d.status == "available")
            })
        })
    })
    .await;

    // The real console, in tmux: `:apps`, then the app with both deployments.
    crate::ops::tool("tmux");
    let socket = format!("outpost-apps-{}", std::process::id());
    let _tmux = crate::ops::Tmux(socket.clone());
    let cmd = format!("NO_COLOR=1 {} --bundle {}", harness::bin("outpost").display(), bundle.display());
    let started = std::process::Command::new("tmux")
        .args(["-L", &socket, "new-session", "-d", "-s", "demo", "-x", "160", "-y", "40", &cmd])
        .status()
        .unwrap();
    assert!(started.success());
    crate::ops::wait_for_pane(&socket, "1 servers");
    let keys = |k: &[&str]| {
        let ok = std::process::Command::new("tmux")
            .args(["-L", &socket, "send-keys", "-t", "demo"])
            .args(k)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    keys(&[":", "apps", "Enter"]);
    let screen = crate::ops::wait_for_pane(&socket, "SERVER");
    assert!(screen.contains("app-1") && screen.contains("web") && screen.contains("web-1"), "{screen}");
    keys(&["Enter"]);
    // The history: web-2 rolled back (and why), web-1 available (the whole frame, not half a one).
    crate::ops::wait_for_pane_where(&socket, "the app's history", |screen| {
        screen.contains("deployments, newest first")
            && screen
                .lines()
                .any(|l| l.contains("web-2") && l.contains("rolled_back") && l.contains("app.txt says broken"))
            && screen.lines().any(|l| l.contains("web-1") && l.contains("available"))
    });
    keys(&["q"]);

    // A deployment id that does not exist: refused in words, nothing applied.
    let before = kube.get(DEPLOYMENT).unwrap()["metadata"]["resourceVersion"].clone();
    let none = run_job(&mut support, action("app-rollback", &["app-1"], &[("app", "web"), ("to", "web-99")])).await;
    let r = none.result("app-1");
    assert!(r.outcome == Outcome::Failed as i32 && r.message.contains("web has no deployment web-99"), "{r:?}");
    assert_eq!(kube.get(DEPLOYMENT).unwrap()["metadata"]["resourceVersion"], before, "nothing was applied");

    // Someone deletes a managed object by hand: the agent's reconcile loop puts it back.
    assert!(kube.delete("api/v1/namespaces/acme/services/web"));
    kube.wait_for("api/v1/namespaces/acme/services/web", WAIT, |_| true).await;

    // Audited: the requests with the spec's secret redacted, and both results.
    let audit =
        admin.query_audit(QueryAuditRequest { limit: 100, ..Default::default() }).await.unwrap().into_inner().records;
    let text = format!("{audit:?}");
    assert!(!text.contains("hunter2"), "a secret reached the audit log");
    assert!(
        audit.iter().any(|a| a.action == "app-apply" && a.args.get("spec").is_some_and(|s| s.contains("<secret>"))),
        "{audit:#?}"
    );
    let results: Vec<(&str, i32)> = audit
        .iter()
        .filter(|a| a.kind == "result" && a.action == "app-deploy")
        .map(|a| (a.message.as_str(), a.outcome))
        .collect();
    assert_eq!(results.len(), 3, "the first deploy, the no-op from the command line, the bad one: {results:?}");
}

/// The hub is SIGKILLed while a deploy watches its rollout: the deploy goes on at the agent, and after the
/// hub's restart its result is audited exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_across_a_hub_sigkill_is_audited_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut env = AppServer::start(root, "app-2", "").await;
    let kube = &env.kube;
    let connected = |f: &harness::Fleet| f.get("app-2").is_some_and(|s| s.liveness == Liveness::Connected as i32);
    let spec = format!(
        "name = \"web\"\nimage = \"nginx:{{commit}}\"\nport = 80\n[repo]\nurl = \"{}\"\n",
        root.join("web.git").display()
    );
    let applied =
        run_job(&mut env.hub.client(Role::Support), action("app-apply", &["app-2"], &[("spec", &spec)])).await;
    assert_eq!(applied.result("app-2").outcome, Outcome::Succeeded as i32);

    let stream = env
        .hub
        .client(Role::Support)
        .run_action(action("app-deploy", &["app-2"], &[("app", "web")]))
        .await
        .unwrap()
        .into_inner();
    let d = kube.wait_for(DEPLOYMENT, WAIT, |d| template_of(d) == "web-1").await;
    env.hub.kill9().await; // the rollout is being watched; nobody has answered yet
    drop(stream); // the caller went with the hub
    env.hub.restart().await;
    watch_until(&mut env.hub.client(Role::Viewer), "app-2 back", connected).await;
    mark_available(kube, &d);
    let mut admin = env.hub.client(Role::Admin);
    let until = std::time::Instant::now() + WAIT;
    let results = loop {
        let audit = admin
            .query_audit(QueryAuditRequest { action: "app-deploy".into(), limit: 100, ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .records;
        let results: Vec<_> = audit.into_iter().filter(|a| a.kind == "result").collect();
        if !results.is_empty() {
            break results;
        }
        assert!(std::time::Instant::now() < until, "no result audited after the restart");
        // The audit log has no watch; the result arrives when the agent's rollout ends (tens of ms).
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(results.len(), 1, "{results:#?}");
    assert_eq!(results[0].outcome, Outcome::Succeeded as i32, "{results:#?}");
    assert!(results[0].message.contains("web-1 is live"), "{results:#?}");
    // Nothing was deployed twice.
    let again = run_job(&mut admin, action("app-deploy", &["app-2"], &[("app", "web")])).await;
    assert!(again.result("app-2").message.contains("already runs commit"), "{:?}", again.result("app-2"));
}

/// `auto_deploy`: once an operator deployed the app, a new commit on its tracked branch is deployed by the
/// agent by itself, with the same rollout watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_deploy_follows_the_tracked_branch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let env = AppServer::start(root, "app-3", "auto_deploy_secs = 1\napps_report_secs = 1\n").await;
    let (kube, hub) = (&env.kube, &env.hub);
    let spec = format!(
        "name = \"web\"\nimage = \"nginx:{{commit}}\"\nport = 80\nauto_deploy = true\n[repo]\nurl = \"{}\"\n",
        root.join("web.git").display()
    );
    let mut ops = hub.client(Role::Support);
    assert_eq!(
        run_job(&mut ops, action("app-apply", &["app-3"], &[("spec", &spec)])).await.result("app-3").outcome,
        Outcome::Succeeded as i32
    );
    let deploying = tokio::spawn({
        let mut c = hub.client(Role::Support);
        async move { run_job(&mut c, action("app-deploy", &["app-3"], &[("app", "web")])).await }
    });
    let d = kube.wait_for(DEPLOYMENT, WAIT, |d| template_of(d) == "web-1").await;
    mark_available(kube, &d);
    assert_eq!(deploying.await.unwrap().result("app-3").outcome, Outcome::Succeeded as i32);

    // A developer pushes: the agent deploys it by itself.
    harness::git(&root.join("dev"), "echo v2 > app.txt && git commit -qam v2 && git push -q origin HEAD:main");
    let v2 = harness::git(&root.join("dev"), "git rev-parse HEAD");
    let d = kube.wait_for(DEPLOYMENT, WAIT, |d| template_of(d) == "web-2").await;
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], format!("nginx:{v2}"));
    mark_available(kube, &d);
    watch_until(&mut hub.client(Role::Viewer), "web-2 live, deployed by auto-deploy", |f| {
        f.get("app-3").and_then(|s| s.apps.as_ref()).is_some_and(|a| {
            a.apps.iter().any(|x| {
                x.deployment == "web-2"
                    && x.history.first().is_some_and(|h| h.operator == "auto-deploy" && h.status == "available")
            })
        })
    })
    .await;
}

/// A starter app with two replicas at the default limits fills its quota (2 × 250m / 256 MiB of 500m /
/// 512 MiB). A rolling update with a surge pod then needs a third pod, which the API server's quota
/// admission refuses, and the rollout stalls until its deadline. The agent renders no surge where the plan
/// has no room, says so, and refuses in words what cannot fit at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starter_app_that_fills_its_quota_redeploys_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let env = AppServer::start_on(root, "small-1", "rollout_deadline_secs = 20\n", "starter", true).await;
    let (kube, hub) = (&env.kube, &env.hub);
    let mut support = hub.client(Role::Support);
    let spec = format!(
        "name = \"web\"\nimage = \"registry.example/acme/web:{{commit}}\"\nport = 8080\nreplicas = 2\n[repo]\nurl = \"{}\"\n",
        root.join("web.git").display()
    );
    let run = |action_name: &'static str, args: Vec<(&'static str, String)>| {
        let mut c = hub.client(Role::Support);
        async move {
            let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_job(&mut c, action(action_name, &["small-1"], &args)).await
        }
    };
    let applied = run_job(&mut support, action("app-apply", &["small-1"], &[("spec", &spec)])).await;
    assert_eq!(applied.result("small-1").outcome, Outcome::Succeeded as i32, "{:?}", applied.result("small-1"));
    let first = run("app-deploy", vec![("app", "web".into())]).await;
    assert_eq!(first.result("small-1").outcome, Outcome::Succeeded as i32, "{}", first.output["small-1"]);

    // A new commit: the redeploy needs new pods while the quota is full.
    harness::git(&root.join("dev"), "echo v2 > app.txt && git commit -qam v2 && git push -q origin HEAD:main");
    let second = run("app-deploy", vec![("app", "web".into())]).await;
    let out = &second.output["small-1"];
    assert_eq!(second.result("small-1").outcome, Outcome::Succeeded as i32, "{:?}\n{out}", second.result("small-1"));
    assert!(out.contains("no surge pod") && out.contains("1 of 2 serving"), "{out}");
    let d = kube.get(DEPLOYMENT).unwrap();
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"], json!({"maxSurge": 0, "maxUnavailable": 1}), "{d:#}");
    let conditions = d["status"]["conditions"].as_array().unwrap();
    assert!(!conditions.iter().any(|c| c["type"] == "ReplicaFailure"), "no pod was refused: {conditions:?}");

    // A restart rolls every pod the same way.
    let restarted = run("app-restart", vec![("app", "web".into())]).await;
    assert_eq!(restarted.result("small-1").outcome, Outcome::Succeeded as i32, "{}", restarted.output["small-1"]);
    let pods = kube.list("api/v1/namespaces/acme/pods");
    assert_eq!(pods.len(), 2, "two pods, all of the restarted template: {pods:#?}");
    let quota = kube.get("api/v1/namespaces/acme/resourcequotas/outpost-plan").unwrap();
    assert_eq!(quota["status"]["used"]["limits.memory"], "512Mi", "{quota:#}");

    // A second app cannot fit beside it: refused in words before anything is applied.
    let api = spec.replace("name = \"web\"", "name = \"api\"").replace("replicas = 2", "replicas = 1");
    let applied = run_job(&mut support, action("app-apply", &["small-1"], &[("spec", &api)])).await;
    assert_eq!(applied.result("small-1").outcome, Outcome::Succeeded as i32);
    let refused = run("app-deploy", vec![("app", "api".into())]).await;
    let r = refused.result("small-1");
    assert_eq!(r.outcome, Outcome::Refused as i32, "{r:?}");
    assert!(r.message.contains("over the plan's 500m / 512 MiB") && r.message.contains("other apps"), "{r:?}");
    assert!(kube.get("apis/apps/v1/namespaces/acme/deployments/api").is_none(), "nothing applied");
}
