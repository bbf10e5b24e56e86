//! A stand-in Kubernetes API server on loopback, for the agent's K3s layer and the tests that play the
//! controllers. No Kubernetes API server can be installed here, so this speaks the API's wire protocol
//! (JSON over HTTP, the real paths, list/get/create/replace/patch/delete, server-side apply as an upsert,
//! label and field selectors, pod logs, resource versions and generations) and is driven by the real
//! client, kube-rs, through a kubeconfig.
//!
//! Written here rather than wrapping kmock (see ARCHITECTURE.md): kube-rs needs server-side apply to create
//! missing objects, which kmock's plain merge PATCH does not do, and a Rust stand-in runs in the test
//! process without a Python environment. What it does not do: admission, defaulting beyond metadata,
//! field ownership (apply merges the applied fields over the object) and watches. Controllers: tests play
//! them (they set status fields themselves); the demo starts it [`with a controller`](KubeStandIn::start_with_controller)
//! that makes every Deployment available with one running pod per revision, and a Ready node.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

#[derive(Default)]
struct Store {
    /// Play a minimal Deployment controller after every request (the demo).
    controller: bool,
    /// "{prefix}/{plural}/{namespace}/{name}" → object; prefix is `api/v1` or `apis/GROUP/VERSION`.
    objects: BTreeMap<String, Value>,
    rv: u64,
    /// (namespace, pod) → log text.
    logs: HashMap<(String, String), String>,
    /// The newest requests seen (at most 10,000), as "METHOD path" (for tests that count calls).
    requests: Vec<String>,
}

/// A running stand-in. Dropping it stops the server.
pub struct KubeStandIn {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    store: Arc<Mutex<Store>>,
    /// Notified after every request the server handled.
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where an object lives.
struct Target {
    prefix: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (prefix, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => (format!("api/{v}"), rest),
            ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
            _ => return None,
        };
        let own = |s: &&str| s.to_string();
        Some(match rest {
            ["namespaces", ns, plural, more @ ..] => Target {
                prefix,
                plural: plural.to_string(),
                namespace: Some(ns.to_string()),
                name: more.first().map(own),
                sub: more.get(1).map(own),
            },
            [plural, more @ ..] => Target {
                prefix,
                plural: plural.to_string(),
                namespace: None,
                name: more.first().map(own),
                sub: more.get(1).map(own),
            },
            [] => return None,
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{}/{}/{}", self.prefix, self.plural, self.namespace.as_deref().unwrap_or(""), name)
    }

    /// Keys of the collection (every namespace when none is given).
    fn collection(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{}/{ns}/", self.prefix, self.plural),
            None => format!("{}/{}/", self.prefix, self.plural),
        }
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("valid response")
}

fn ok(v: &Value) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(v.to_string()))
        .expect("valid response")
}

/// A URL query as pairs, percent-decoded (shared by the stand-ins).
pub(crate) fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(c) => {
                        out.push(c);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v,k2=v2,k3` against an object's labels.
fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| match term.split_once("!=") {
        Some((k, v)) => labels[k].as_str() != Some(v),
        None => match term.split_once('=') {
            Some((k, v)) => labels[k.trim_end_matches('=')].as_str() == Some(v),
            None => labels.get(term).is_some(),
        },
    })
}

fn fields_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| match term.split_once('=') {
        Some(("metadata.name", v)) => obj["metadata"]["name"].as_str() == Some(v),
        Some(("metadata.namespace", v)) => obj["metadata"]["namespace"].as_str() == Some(v),
        _ => true,
    })
}

/// `over` merged into `base`: objects key by key, everything else replaced; `null` removes (merge patch).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

impl Store {
    /// The demo's Deployment controller: every Deployment is available at its generation, with one running
    /// pod of its current revision (older revisions' pods go).
    fn control(&mut self) {
        let deployments: Vec<(String, Value)> = self
            .objects
            .iter()
            .filter(|(k, _)| k.starts_with("apis/apps/v1/deployments/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, d) in deployments {
            let generation = d["metadata"]["generation"].clone();
            let ns = d["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            let name = d["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let labels = d["spec"]["template"]["metadata"]["labels"].clone();
            let revision = labels["outpost.dev/deployment"].as_str().unwrap_or("0").to_string();
            let pod = format!("{name}-{revision}");
            let pod_key = format!("api/v1/pods/{ns}/{pod}");
            if !self.objects.contains_key(&pod_key) {
                let stale: Vec<String> = self
                    .objects
                    .iter()
                    .filter(|(k, o)| {
                        k.starts_with(&format!("api/v1/pods/{ns}/"))
                            && o["metadata"]["labels"]["app.kubernetes.io/instance"].as_str() == Some(name.as_str())
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in stale {
                    self.objects.remove(&k);
                }
                let image = d["spec"]["template"]["spec"]["containers"][0]["image"].clone();
                let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "labels": labels},
                    "spec": {"containers": [{"name": name, "image": image}]},
                    "status": {"phase": "Running", "containerStatuses": [{"name": name, "image": image, "imageID": "", "ready": true, "restartCount": 0}]}});
                let t = Target {
                    prefix: "api/v1".into(),
                    plural: "pods".into(),
                    namespace: Some(ns.clone()),
                    name: Some(pod.clone()),
                    sub: None,
                };
                self.stamp(&mut p, None, &t);
                self.objects.insert(pod_key, p);
                self.logs.insert(
                    (ns.clone(), pod.clone()),
                    format!(
                        "{name} {revision}: listening on :8080 (demo stand-in)\n{name} {revision}: GET /healthz 200\n"
                    ),
                );
            }
            if d["status"]["observedGeneration"] != generation {
                let replicas = d["spec"]["replicas"].clone();
                let mut obj = d.clone();
                obj["status"] = json!({"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                    "readyReplicas": replicas, "availableReplicas": replicas,
                    "conditions": [{"type": "Available", "status": "True"}, {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]});
                let t = Target {
                    prefix: "apis/apps/v1".into(),
                    plural: "deployments".into(),
                    namespace: Some(ns.clone()),
                    name: Some(name.clone()),
                    sub: None,
                };
                self.stamp(&mut obj, Some(&d), &t);
                self.objects.insert(key, obj);
            }
        }
    }

    /// Stamps metadata as the API server does: resource version, uid, creation time, generation (bumped
    /// when the spec changes).
    fn stamp(&mut self, obj: &mut Value, old: Option<&Value>, t: &Target) {
        self.rv += 1;
        let m = obj["metadata"].as_object_mut().map(|_| ()).is_some();
        if !m {
            obj["metadata"] = json!({});
        }
        if let Some(ns) = &t.namespace {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let uid = old
            .and_then(|o| o["metadata"]["uid"].as_str().map(String::from))
            .unwrap_or_else(|| format!("uid-{}", self.rv));
        obj["metadata"]["uid"] = json!(uid);
        let created = old
            .and_then(|o| o["metadata"]["creationTimestamp"].as_str().map(String::from))
            .unwrap_or_else(|| "2026-11-30T00:00:00Z".into());
        obj["metadata"]["creationTimestamp"] = json!(created);
        let generation = old.and_then(|o| o["metadata"]["generation"].as_i64()).unwrap_or(0);
        let changed = old.is_none_or(|o| o.get("spec") != obj.get("spec"));
        obj["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation.max(1) });
    }

    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        q: &HashMap<String, String>,
        content_type: &str,
        body: &[u8],
    ) -> Response<Body> {
        // The newest requests only: the demo runs for hours.
        if self.requests.len() >= 10_000 {
            self.requests.drain(..5_000);
        }
        self.requests.push(format!("{method} {path}"));
        if path == "/version" {
            return ok(&json!({"major": "1", "minor": "33", "gitVersion": "v1.33.5+k3s1", "platform": "linux/amd64"}));
        }
        let Some(t) = Target::parse(path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            );
        };
        let parsed: Option<Value> = if body.is_empty() { None } else { serde_json::from_slice(body).ok() };
        match (method.as_str(), &t.name, t.sub.as_deref()) {
            ("GET", Some(name), Some("log")) => {
                let ns = t.namespace.clone().unwrap_or_default();
                if !self.objects.contains_key(&t.key(name)) {
                    return status(StatusCode::NOT_FOUND, "NotFound", format!("pods \"{name}\" not found"));
                }
                let text = self.logs.get(&(ns, name.clone())).cloned().unwrap_or_default();
                let text = match q.get("tailLines").and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) => {
                        let lines: Vec<&str> = text.lines().collect();
                        lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("{l}\n")).collect()
                    }
                    None => text,
                };
                Response::builder().header("content-type", "text/plain").body(Body::from(text)).expect("valid response")
            }
            ("GET", Some(name), _) => match self.objects.get(&t.key(name)) {
                Some(o) => ok(o),
                None => status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", t.plural)),
            },
            ("GET", None, _) => {
                let prefix = t.collection();
                let items: Vec<Value> = self
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| v)
                    .filter(|o| q.get("labelSelector").is_none_or(|s| labels_match(o, s)))
                    .filter(|o| q.get("fieldSelector").is_none_or(|s| fields_match(o, s)))
                    .cloned()
                    .collect();
                ok(
                    &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
                )
            }
            ("POST", None, _) => {
                let Some(mut obj) = parsed else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON".into());
                };
                let Some(name) = obj["metadata"]["name"].as_str().map(String::from) else {
                    return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required value".into());
                };
                let key = t.key(&name);
                if self.objects.contains_key(&key) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", t.plural),
                    );
                }
                let t = Target { name: Some(name), ..t };
                self.stamp(&mut obj, None, &t);
                self.objects.insert(key, obj.clone());
                ok(&obj)
            }
            ("PUT" | "PATCH", Some(name), sub) => {
                let Some(patch) = parsed else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is not JSON".into());
                };
                let key = t.key(name);
                let old = self.objects.get(&key).cloned();
                let apply = content_type.starts_with("application/apply-patch");
                let mut obj = match (&old, method.as_str()) {
                    (None, "PATCH") if !apply => {
                        return status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", t.plural));
                    }
                    (None, "PUT") => {
                        return status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", t.plural));
                    }
                    (None, _) => json!({}),
                    (Some(o), _) => o.clone(),
                };
                match (method.as_str(), sub) {
                    ("PUT", Some("status")) => obj["status"] = patch["status"].clone(),
                    ("PUT", _) => {
                        let status = obj.get("status").cloned();
                        obj = patch;
                        if let Some(s) = status.filter(|_| obj.get("status").is_none()) {
                            obj["status"] = s;
                        }
                    }
                    (_, Some("status")) => merge(&mut obj, &json!({"status": patch["status"]})),
                    _ => merge(&mut obj, &patch),
                }
                obj["metadata"]["name"] = json!(name);
                self.stamp(&mut obj, old.as_ref(), &t);
                self.objects.insert(key, obj.clone());
                ok(&obj)
            }
            ("DELETE", Some(name), _) => match self.objects.remove(&t.key(name)) {
                Some(o) => {
                    self.rv += 1;
                    ok(&o)
                }
                None => status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", t.plural)),
            },
            ("DELETE", None, _) => {
                let prefix = t.collection();
                let gone: Vec<String> = self
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(_, o)| q.get("labelSelector").is_none_or(|s| labels_match(o, s)))
                    .map(|(k, _)| k.clone())
                    .collect();
                let items: Vec<Value> = gone.iter().filter_map(|k| self.objects.remove(k)).collect();
                self.rv += 1;
                ok(
                    &json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}),
                )
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {path} is not supported by the stand-in"),
            ),
        }
    }
}

impl KubeStandIn {
    /// Starts it on a free loopback port and writes a kubeconfig for it into `dir`.
    pub async fn start(dir: &Path) -> KubeStandIn {
        KubeStandIn::start_inner(dir, false).await
    }

    /// As [`KubeStandIn::start`], with a Ready node, healthy system pods, and a controller that makes every
    /// Deployment available (one running pod per revision, with a few log lines).
    pub async fn start_with_controller(dir: &Path) -> KubeStandIn {
        let k = KubeStandIn::start_inner(dir, true).await;
        k.put(
            "api/v1/nodes/demo-node",
            json!({"apiVersion": "v1", "kind": "Node", "status": {
                "nodeInfo": {"kubeletVersion": "v1.33.5+k3s1", "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}),
        );
        for pod in ["coredns-demo", "traefik-demo"] {
            k.put(
                &format!("api/v1/namespaces/kube-system/pods/{pod}"),
                json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}, "status": {"phase": "Running",
                    "containerStatuses": [{"name": pod, "image": pod, "imageID": "", "ready": true, "restartCount": 0}]}}),
            );
        }
        k
    }

    async fn start_inner(dir: &Path, controller: bool) -> KubeStandIn {
        let store = Arc::new(Mutex::new(Store { controller, ..Store::default() }));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (shared, notify) = (store.clone(), changed.clone());
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let (store, notify) = (shared.clone(), notify.clone());
            async move {
                let (parts, body) = req.into_parts();
                let bytes = to_bytes(body, 16 << 20).await.unwrap_or_default();
                let ct =
                    parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let q = query(parts.uri.query());
                let response = {
                    let mut store = store.lock().unwrap();
                    let response = store.handle(&parts.method, parts.uri.path(), &q, &ct, &bytes);
                    if store.controller {
                        store.control();
                    }
                    response
                };
                notify.notify_waiters();
                response
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let kubeconfig = dir.join("kubeconfig.yaml");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: stand-in\ncurrent-context: stand-in\nusers:\n- name: stand-in\n  user: {{}}\n"
            ),
        )
        .unwrap();
        KubeStandIn { addr, kubeconfig, store, changed, task }
    }

    /// Waits until the object at `path` satisfies `done` (checked after every request the server handles),
    /// for at most `within`.
    pub async fn wait_for(&self, path: &str, within: std::time::Duration, done: impl Fn(&Value) -> bool) -> Value {
        let until = tokio::time::Instant::now() + within;
        loop {
            let next = self.changed.notified();
            if let Some(v) = self.get(path).filter(|v| done(v)) {
                return v;
            }
            if tokio::time::timeout_at(until, next).await.is_err() {
                panic!("{path} did not reach the state waited for; it is {:#?}", self.get(path));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap()
    }

    /// An object by API path, e.g. `apis/apps/v1/namespaces/acme/deployments/web`.
    pub fn get(&self, path: &str) -> Option<Value> {
        let t = Target::parse(path)?;
        self.lock().objects.get(&t.key(t.name.as_deref()?)).cloned()
    }

    /// Every object under a collection path, e.g. `api/v1/namespaces/acme/pods`.
    pub fn list(&self, path: &str) -> Vec<Value> {
        let Some(t) = Target::parse(path) else { return Vec::new() };
        let prefix = t.collection();
        self.lock()
            .objects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object as a controller would (stamped like any write).
    pub fn put(&self, path: &str, mut obj: Value) {
        let t = Target::parse(path).expect("an API path with a name");
        let name = t.name.clone().expect("an API path with a name");
        obj["metadata"]["name"] = json!(name);
        let mut store = self.lock();
        let old = store.objects.get(&t.key(&name)).cloned();
        store.stamp(&mut obj, old.as_ref(), &t);
        store.objects.insert(t.key(&name), obj);
    }

    /// Merges `patch` into an object (a controller updating status, or someone editing it by hand).
    pub fn patch(&self, path: &str, patch: Value) {
        let mut obj = self.get(path).unwrap_or_else(|| panic!("no object at {path}"));
        merge(&mut obj, &patch);
        self.put(path, obj);
    }

    /// Deletes an object (someone deleting a managed object by hand).
    pub fn delete(&self, path: &str) -> bool {
        let Some(t) = Target::parse(path) else { return false };
        let Some(name) = t.name.clone() else { return false };
        self.lock().objects.remove(&t.key(&name)).is_some()
    }

    pub fn set_logs(&self, namespace: &str, pod: &str, text: &str) {
        self.lock().logs.insert((namespace.into(), pod.into()), text.into());
    }

    /// Requests seen so far, as "METHOD /path".
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_selectors_and_merge() {
        let t = Target::parse("/apis/apps/v1/namespaces/acme/deployments/web/status").unwrap();
        assert_eq!(
            (t.prefix.as_str(), t.plural.as_str(), t.namespace.as_deref(), t.name.as_deref(), t.sub.as_deref()),
            ("apis/apps/v1", "deployments", Some("acme"), Some("web"), Some("status"))
        );
        let t = Target::parse("/api/v1/nodes").unwrap();
        assert_eq!((t.plural.as_str(), t.namespace, t.name), ("nodes", None, None));
        let o = json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "x"}}});
        assert!(labels_match(&o, "app=web,tier"));
        assert!(!labels_match(&o, "app=api"));
        assert!(labels_match(&o, "app!=api"));
        assert!(fields_match(&o, "metadata.name=a") && !fields_match(&o, "metadata.name=b"));
        let mut b = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge(&mut b, &json!({"a": {"b": 3, "c": null}, "d": [2, 3]}));
        assert_eq!(b, json!({"a": {"b": 3}, "d": [2, 3]}));
        assert_eq!(percent_decode("app.kubernetes.io%2Fname%3Dweb"), "app.kubernetes.io/name=web");
    }
}
