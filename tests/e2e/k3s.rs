//! Issue 10: the agent's K3s layer, unchanged, through kube-rs against the stand-in API server
//! (`harness::kube`); the test plays the controllers (marks a Deployment available, makes a pod
//! crash-loop, deletes a managed object).

use std::time::Duration;

use agentd::k3s::render::{self, Revision};
use agentd::k3s::{K3s, Rollout};
use futures::AsyncReadExt;
use outpost_common::app::{AppSpec, PlanLimits, RepoRoots};
use serde_json::json;
use standin::kube::KubeStandIn;

const SPEC: &str = r#"
name = "web"
image = "ghcr.io/acme/web:{commit}"
port = 8080
replicas = 2
domains = ["acme.example.com"]
[repo]
url = "https://github.com/acme/web.git"
[env]
RUST_LOG = "info"
[secrets]
DATABASE_URL = "postgres://u:hunter2@db/acme"
[resources]
cpu_limit = "250m"
memory_limit = "256Mi"
[health]
path = "/healthz"
"#;

fn spec() -> AppSpec {
    AppSpec::parse(SPEC, PlanLimits::named("pro"), &RepoRoots::default()).unwrap()
}

fn rev(id: &str, commit: &str) -> Revision {
    Revision { deployment_id: id.into(), commit: commit.into(), ..Default::default() }
}

const DEPLOYMENT: &str = "apis/apps/v1/namespaces/acme/deployments/web";

/// What the Deployment controller would write once the pods are up.
fn mark_available(kube: &KubeStandIn) {
    let d = kube.get(DEPLOYMENT).unwrap();
    let replicas = d["spec"]["replicas"].clone();
    kube.patch(
        DEPLOYMENT,
        json!({"status": {
            "observedGeneration": d["metadata"]["generation"],
            "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
            ]
        }}),
    );
}

/// A pod of deployment `id` whose container is waiting for `reason`.
fn waiting_pod(kube: &KubeStandIn, name: &str, id: &str, reason: &str, message: &str) {
    kube.put(
        &format!("api/v1/namespaces/acme/pods/{name}"),
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"labels": {"app.kubernetes.io/instance": "web", "outpost.dev/deployment": id}},
        "spec": {"containers": [{"name": "web", "image": "ghcr.io/acme/web:bad"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "web", "image": "ghcr.io/acme/web:bad", "imageID": "", "ready": false, "restartCount": 4,
            "state": {"waiting": {"reason": reason, "message": "back-off pulling image"}},
            "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": message}}
        }]}}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_k3s_layer_applies_watches_repairs_and_prunes_through_kube_rs() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let kube = KubeStandIn::start(tmp.path()).await;
    // A minute between looks when nothing changes: only the watch's events can end a rollout sooner.
    let k3s = K3s::connect(&kube.kubeconfig, Duration::from_secs(60)).await.unwrap();

    // Cluster state: nodes, pods, system pods.
    kube.put("api/v1/nodes/node-1", json!({"apiVersion": "v1", "kind": "Node", "status": {
        "nodeInfo": {"kubeletVersion": "v1.33.5+k3s1", "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "DiskPressure", "status": "True", "reason": "KubeletHasDiskPressure", "message": "disk 93% full"}]}}));
    kube.put("api/v1/namespaces/kube-system/pods/coredns-1", json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}, "status": {"phase": "Running", "containerStatuses": [{"name": "coredns", "image": "coredns", "imageID": "", "ready": true, "restartCount": 0}]}}));
    kube.put("api/v1/namespaces/kube-system/pods/traefik-1", json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}, "status": {"phase": "Running", "containerStatuses": [{"name": "traefik", "image": "traefik", "imageID": "", "ready": false, "restartCount": 7, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}));
    let state = k3s.state().await.unwrap();
    assert!(state.ready && state.version == "v1.33.5+k3s1", "{state:?}");
    assert_eq!(state.nodes[0].kubelet_version, "v1.33.5+k3s1");
    assert!(state.nodes[0].problems.iter().any(|p| p.contains("DiskPressure") && p.contains("93%")), "{state:?}");
    assert_eq!(state.system_problems, ["traefik-1: traefik CrashLoopBackOff"]);
    assert_eq!(state.pods_running, 2);

    // The project: namespace, plan quota, default limits, default-deny.
    let plan = PlanLimits::named("pro").unwrap();
    k3s.apply_project(&render::project("acme", &plan)).await.unwrap();
    let quota = kube.get("api/v1/namespaces/acme/resourcequotas/outpost-plan").unwrap();
    assert_eq!(quota["spec"]["hard"]["limits.cpu"], "1000m");
    assert_eq!(quota["spec"]["hard"]["limits.memory"], "1024Mi");
    assert!(kube.get("api/v1/namespaces/acme").is_some());
    let deny = kube.get("apis/networking.k8s.io/v1/namespaces/acme/networkpolicies/outpost-default-deny").unwrap();
    assert_eq!(deny["spec"]["podSelector"], json!({}));

    // The app at deployment web-1: every object, labelled; the rollout ends when the controller says so.
    let s = spec();
    let m = render::app("acme", &s, &rev("web-1", "c0ffee"));
    k3s.apply_app("acme", "web", &m, &render::app_policy("acme", &s)).await.unwrap();
    let d = kube.get(DEPLOYMENT).unwrap();
    assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/managed-by"], "outpost");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/acme/web:c0ffee");
    assert_eq!(d["spec"]["template"]["metadata"]["labels"]["outpost.dev/deployment"], "web-1");
    assert_eq!(
        kube.get("api/v1/namespaces/acme/secrets/web-secrets").unwrap()["stringData"]["DATABASE_URL"],
        "postgres://u:hunter2@db/acme"
    );
    assert_eq!(
        kube.get("apis/networking.k8s.io/v1/namespaces/acme/ingresses/web").unwrap()["spec"]["rules"][0]["host"],
        "acme.example.com"
    );
    assert!(
        kube.requests().iter().any(|r| r.starts_with("PATCH /apis/apps/v1/namespaces/acme/deployments/web")),
        "server-side apply"
    );
    let started = std::time::Instant::now();
    let watching = tokio::spawn({
        let k3s = k3s.clone();
        async move { k3s.rollout("acme", "web", "web-1", Duration::from_secs(30)).await }
    });
    // The rollout is not done at its first look: it watches, and the controller's change wakes it.
    kube.wait_for_request("WATCH /apis/apps/v1/namespaces/acme/deployments", Duration::from_secs(10)).await;
    mark_available(&kube);
    assert_eq!(watching.await.unwrap().unwrap(), Rollout::Available);
    assert!(started.elapsed() < Duration::from_secs(10), "woken by the watch, not the minute's look");

    // A bad commit: the container crash-loops; the reason is the container's last words.
    let bad = render::app("acme", &s, &rev("web-2", "badbad"));
    k3s.apply_app("acme", "web", &bad, &render::app_policy("acme", &s)).await.unwrap();
    waiting_pod(&kube, "web-2-a", "web-2", "CrashLoopBackOff", "panic: DATABASE_URL has no database name");
    let r = k3s.rollout("acme", "web", "web-2", Duration::from_secs(30)).await.unwrap();
    assert_eq!(r, Rollout::Failed("CrashLoopBackOff: container web crashes (exit code 2: panic: DATABASE_URL has no database name), restarted 4 time(s)".into()));
    waiting_pod(&kube, "web-3-a", "web-3", "ImagePullBackOff", "");
    let r = k3s.rollout("acme", "web", "web-3", Duration::from_secs(30)).await.unwrap();
    assert!(
        matches!(&r, Rollout::Failed(why) if why.starts_with("ImagePullBackOff: image ghcr.io/acme/web:bad cannot be pulled")),
        "{r:?}"
    );
    kube.patch(DEPLOYMENT, json!({"status": {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet web-2 has timed out progressing."}]}}));
    let r = k3s.rollout("acme", "web", "web-4", Duration::from_secs(30)).await.unwrap();
    assert_eq!(r, Rollout::Failed("ProgressDeadlineExceeded: ReplicaSet web-2 has timed out progressing.".into()));
    // Nobody plays the controller: the deadline says what it saw.
    kube.patch(DEPLOYMENT, json!({"status": {"conditions": null, "availableReplicas": 1}}));
    let r = k3s.rollout("acme", "web", "web-5", Duration::from_millis(200)).await.unwrap();
    assert!(
        matches!(&r, Rollout::Failed(why) if why.contains("did not finish within 0 s: 1 of 2 replica(s) available")),
        "{r:?}"
    );

    // Drift: a managed object deleted and the deployment scaled by hand are found; applying repairs them.
    k3s.apply_app("acme", "web", &m, &render::app_policy("acme", &s)).await.unwrap();
    assert!(k3s.drift("acme", "web", &m).await.unwrap().is_empty());
    assert!(kube.delete("api/v1/namespaces/acme/services/web"));
    kube.patch(DEPLOYMENT, json!({"spec": {"replicas": 5}}));
    let drift = k3s.drift("acme", "web", &m).await.unwrap();
    assert_eq!(drift, ["deployment web: replicas changed", "service web was deleted"]);
    k3s.apply_app("acme", "web", &m, &render::app_policy("acme", &s)).await.unwrap();
    assert!(k3s.drift("acme", "web", &m).await.unwrap().is_empty());

    // Logs, through the API.
    kube.put("api/v1/namespaces/acme/pods/web-1-a", json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"app.kubernetes.io/instance": "web", "outpost.dev/deployment": "web-1"}}, "spec": {"containers": []}}));
    kube.set_logs("acme", "web-1-a", "one\ntwo\nthree\n");
    let mut text = String::new();
    k3s.logs("acme", "web-1-a", 2, false).await.unwrap().read_to_string(&mut text).await.unwrap();
    assert_eq!(text, "two\nthree\n");

    // Without domains the ingress goes; removing the app prunes everything it had, and nothing else.
    let mut plain = s.clone();
    plain.domains.clear();
    k3s.apply_app(
        "acme",
        "web",
        &render::app("acme", &plain, &rev("web-6", "c0ffee")),
        &render::app_policy("acme", &plain),
    )
    .await
    .unwrap();
    assert!(kube.get("apis/networking.k8s.io/v1/namespaces/acme/ingresses/web").is_none());
    let mut other = s.clone();
    other.name = "api".into();
    k3s.apply_app(
        "acme",
        "api",
        &render::app("acme", &other, &rev("api-1", "c0ffee")),
        &render::app_policy("acme", &other),
    )
    .await
    .unwrap();
    let pruned = k3s.prune_app("acme", "web").await.unwrap();
    assert_eq!(pruned, 5, "deployment, service, config map, secret, network policy");
    assert!(kube.get(DEPLOYMENT).is_none() && kube.get("api/v1/namespaces/acme/secrets/web-secrets").is_none());
    assert!(kube.get("apis/apps/v1/namespaces/acme/deployments/api").is_some(), "another app is untouched");
    assert!(kube.get("api/v1/namespaces/acme/resourcequotas/outpost-plan").is_some(), "the project stays");
}

#[test]
fn rendered_manifests_round_trip_through_the_kubernetes_types_and_digest_without_secret_values() {
    let s = spec();
    let m = render::app("acme", &s, &rev("web-1", "c0ffee"));
    let back: render::AppManifests = {
        let v = serde_json::to_value(&m).unwrap();
        render::AppManifests {
            config_map: serde_json::from_value(v["config_map"].clone()).unwrap(),
            secret: serde_json::from_value(v["secret"].clone()).unwrap(),
            deployment: serde_json::from_value(v["deployment"].clone()).unwrap(),
            service: serde_json::from_value(v["service"].clone()).unwrap(),
            ingress: serde_json::from_value(v["ingress"].clone()).unwrap(),
        }
    };
    assert_eq!(back, m, "every rendered object is a valid k8s-openapi object");
    insta::assert_snapshot!("app_web", serde_json::to_string_pretty(&m).unwrap());
    for plan in ["starter", "pro", "team"] {
        let p = render::project("acme", &PlanLimits::named(plan).unwrap());
        insta::assert_snapshot!(format!("project_{plan}"), serde_json::to_string_pretty(&p).unwrap());
        let v = serde_json::to_value(&p).unwrap();
        let _: k8s_openapi::api::core::v1::ResourceQuota = serde_json::from_value(v["quota"].clone()).unwrap();
        let _: k8s_openapi::api::core::v1::LimitRange = serde_json::from_value(v["limits"].clone()).unwrap();
    }
    let mut other_secret = s.clone();
    other_secret.secrets.insert("DATABASE_URL".into(), "postgres://u:other@db/acme".into());
    assert_eq!(
        render::app("acme", &other_secret, &rev("web-1", "c0ffee")).digest(),
        m.digest(),
        "secret values are not in the digest"
    );
    assert_ne!(render::app("acme", &s, &rev("web-2", "c0ffee")).digest(), m.digest());
}
