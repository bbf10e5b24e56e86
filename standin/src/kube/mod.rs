//! A stand-in Kubernetes API server on loopback, for the agent's K3s layer, the tests and the demo. No
//! Kubernetes API server can be installed here, so this speaks the API's wire protocol, and the official
//! clients accept it: `kubectl` (get, apply --server-side, logs, rollout status, delete) and the official
//! Python client are driven against it in the suite (`tests/e2e/official.rs`), kube-rs by the product.
//!
//! What it does as the API server does: discovery (`/version`, `/api`, `/apis`, each group version's
//! resources) with unknown resources answered 404; list, get, create, replace, the three patch formats
//! and server-side apply (as an upsert that merges the applied fields), delete and delete-collection;
//! label selectors with sets and field selectors (refused when malformed or unsupported), `limit` and
//! `continue`; watches (newline-delimited events from a resource version, `410 Gone` when compacted);
//! optimistic concurrency (409 on a stale `resourceVersion`); name and label validation; the namespace
//! existing; and on pods LimitRange defaults and ResourceQuota admission (`exceeded quota`, 403).
//! Nothing a client sends can poison it: every request is answered, a panic is a 500 and the lock is
//! never left poisoned.
//!
//! What it does not do: field ownership (apply merges; no conflicts between managers), strategic merge
//! by list keys (lists are replaced), protobuf, and controllers other than the optional one that plays
//! Deployments ([`KubeStandIn::start_with_controller`]: rolling updates honouring maxSurge and
//! maxUnavailable, pods created through admission, progress deadlines and `ReplicaFailure`).

pub(crate) mod admit;
mod control;
mod discovery;
mod patch;
pub(crate) mod select;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, to_bytes};
use axum::http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use discovery::Resource;

/// Events kept for watches; older resource versions get `410 Gone`.
const EVENTS_KEPT: usize = 20_000;

struct Event {
    rv: u64,
    key: String,
    kind: &'static str,
    obj: Value,
}

#[derive(Default)]
struct Store {
    /// Play a Deployment controller (the demo, and tests that need rollouts to happen).
    controller: bool,
    /// "{prefix}/{plural}/{namespace}/{name}" → object; prefix is `api/v1` or `apis/GROUP/VERSION`.
    objects: BTreeMap<String, Value>,
    rv: u64,
    /// Recent changes, oldest first, for watches.
    events: VecDeque<Event>,
    /// (namespace, pod) → log text.
    logs: HashMap<(String, String), String>,
    /// The newest requests seen (at most 10,000), as "METHOD path" (for tests that count calls).
    requests: Vec<String>,
    /// The controller's memory: pod key → its Deployment's key.
    owners: HashMap<String, String>,
    /// The controller's memory: Deployment key → (generation, when it last made progress).
    progress: HashMap<String, (i64, Instant)>,
    /// Images whose containers crash (the controller leaves their pods in CrashLoopBackOff).
    failing_images: HashSet<String>,
    next_pod: u64,
}

/// A running stand-in. Dropping it stops the server.
pub struct KubeStandIn {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    store: Arc<Mutex<Store>>,
    /// Notified after every change.
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(t) = &self.ticker {
            t.abort();
        }
    }
}

/// Where an object lives.
#[derive(Clone)]
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

    fn resource(&self) -> Option<&'static Resource> {
        discovery::resource(&self.prefix, &self.plural)
    }

    /// `deployments.apps`, as the API server names a resource in messages.
    fn qualified(&self) -> String {
        match discovery::api_version(&self.prefix).split_once('/') {
            Some((group, _)) => format!("{}.{group}", self.plural),
            None => self.plural.clone(),
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

/// An admission's refusal: status, reason, message.
struct Refusal(StatusCode, &'static str, String);

impl Refusal {
    fn response(self) -> Response<Body> {
        status(self.0, self.1, self.2)
    }
}

fn ok(v: &Value) -> Response<Body> {
    answer(StatusCode::OK, v)
}

fn answer(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
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

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    let b: Option<Vec<u8>> =
        (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    String::from_utf8(b?).ok()
}

/// The selectors of a list or watch, parsed; `Err` is the 400 to answer.
struct Filter {
    labels: Vec<select::Term>,
    fields: Vec<select::Term>,
}

impl Filter {
    fn of(t: &Target, q: &HashMap<String, String>) -> Result<Filter, Refusal> {
        let bad = |e: String| Refusal(StatusCode::BAD_REQUEST, "BadRequest", e);
        Ok(Filter {
            labels: select::parse_labels(q.get("labelSelector").map_or("", String::as_str)).map_err(bad)?,
            fields: select::parse_fields(&t.plural, q.get("fieldSelector").map_or("", String::as_str)).map_err(bad)?,
        })
    }

    fn admits(&self, obj: &Value) -> bool {
        select::labels_hold(&self.labels, obj) && select::fields_hold(&self.fields, obj)
    }
}

/// Makes `obj` an object with an object `metadata`; `Err` when it is not an object at all.
fn ensure_meta(obj: &mut Value) -> Result<(), Refusal> {
    if !obj.is_object() {
        return Err(Refusal(StatusCode::BAD_REQUEST, "BadRequest", "the object is not a JSON object".into()));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    Ok(())
}

impl Store {
    /// Records a change for watches (the object already carries its new resource version).
    fn record(&mut self, kind: &'static str, key: &str, obj: &Value) {
        if self.events.len() >= EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(Event { rv: self.rv, key: key.into(), kind, obj: obj.clone() });
    }

    /// Stores a stamped object and records ADDED or MODIFIED.
    fn write(&mut self, key: String, obj: Value) {
        let kind = if self.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        self.record(kind, &key, &obj);
        self.objects.insert(key, obj);
    }

    /// Removes an object and records DELETED (with a new resource version, as the API server does).
    fn remove(&mut self, key: &str) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record("DELETED", key, &obj);
        self.owners.remove(key);
        self.progress.remove(key);
        if key.starts_with("api/v1/namespaces//") {
            // A namespace takes what is in it.
            let ns = key.trim_start_matches("api/v1/namespaces//");
            let inside: Vec<String> = self
                .objects
                .keys()
                .filter(|k| k.split('/').rev().nth(1) == Some(ns) && !k.starts_with("api/v1/namespaces/"))
                .cloned()
                .collect();
            for k in inside {
                self.remove(&k);
            }
        }
        if key.starts_with("api/v1/pods/") {
            self.refresh_quotas(key.split('/').nth(3).unwrap_or_default());
        }
        Some(obj)
    }

    /// Stamps metadata as the API server does: kind and apiVersion, namespace, resource version, uid,
    /// creation time, generation (bumped when the spec changes).
    fn stamp(&mut self, obj: &mut Value, old: Option<&Value>, t: &Target) {
        self.rv += 1;
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if let Some(r) = t.resource() {
            obj["kind"] = json!(r.kind);
            obj["apiVersion"] = json!(discovery::api_version(r.gv));
        }
        if let Some(ns) = &t.namespace {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let uid = old
            .and_then(|o| o["metadata"]["uid"].as_str().map(String::from))
            .unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012x}", self.rv));
        obj["metadata"]["uid"] = json!(uid);
        let created =
            old.and_then(|o| o["metadata"]["creationTimestamp"].as_str().map(String::from)).unwrap_or_else(now_rfc3339);
        obj["metadata"]["creationTimestamp"] = json!(created);
        let generation = old.and_then(|o| o["metadata"]["generation"].as_i64()).unwrap_or(0);
        let changed = old.is_none_or(|o| o.get("spec") != obj.get("spec"));
        obj["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation.max(1) });
    }

    /// The objects of a collection, in key order.
    fn collection(&self, prefix: String) -> impl Iterator<Item = (&String, &Value)> + '_ {
        self.objects.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix))
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects.contains_key(&format!("api/v1/namespaces//{ns}"))
    }

    /// Admission of a new object: its name and labels, its namespace, and for pods LimitRanges and
    /// ResourceQuotas. `Err` is the refusal (status, reason, message).
    fn admit(&self, t: &Target, name: &str, obj: &mut Value) -> Result<(), Refusal> {
        let invalid = |e: String| {
            Refusal(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("{} {name:?} is invalid: {e}", t.plural))
        };
        if let Some(e) = admit::name_problem(&t.plural, name) {
            return Err(invalid(e));
        }
        if let Some(e) = admit::labels_problem(obj) {
            return Err(invalid(e));
        }
        let Some(ns) = &t.namespace else { return Ok(()) };
        if !self.namespace_exists(ns) {
            return Err(Refusal(StatusCode::NOT_FOUND, "NotFound", format!("namespaces \"{ns}\" not found")));
        }
        if t.plural == "pods" {
            self.admit_pod(ns, obj)
                .map_err(|e| Refusal(StatusCode::FORBIDDEN, "Forbidden", format!("pods {name:?} is forbidden: {e}")))?;
        }
        Ok(())
    }

    /// LimitRange defaults and maxima, then every ResourceQuota of the namespace.
    fn admit_pod(&self, ns: &str, pod: &mut Value) -> Result<(), String> {
        let ranges: Vec<&Value> = self.collection(format!("api/v1/limitranges/{ns}/")).map(|(_, v)| v).collect();
        admit::limit_ranges(pod, &ranges)?;
        let pods: Vec<&Value> = self.collection(format!("api/v1/pods/{ns}/")).map(|(_, v)| v).collect();
        for (_, q) in self.collection(format!("api/v1/resourcequotas/{ns}/")) {
            admit::quota(q, pod, &pods)?;
        }
        Ok(())
    }

    /// Every quota of the namespace gets its `status.used` from the pods now there.
    fn refresh_quotas(&mut self, ns: &str) {
        let pods: Vec<Value> = self.collection(format!("api/v1/pods/{ns}/")).map(|(_, v)| v.clone()).collect();
        let pods: Vec<&Value> = pods.iter().collect();
        let quotas: Vec<(String, Value)> =
            self.collection(format!("api/v1/resourcequotas/{ns}/")).map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, mut q) in quotas {
            let s = admit::quota_status(&q, &pods);
            if q["status"] != s {
                q["status"] = s;
                self.rv += 1;
                q["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                self.write(key, q);
            }
        }
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
        if let Some(doc) = discovery::document(path) {
            return if method == Method::GET {
                ok(&doc)
            } else {
                status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", format!("{method} is not allowed on {path}"))
            };
        }
        let not_found = || {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            )
        };
        let Some(t) = Target::parse(path) else { return not_found() };
        let Some(resource) = t.resource() else { return not_found() };
        if (t.namespace.is_some() && !resource.namespaced)
            || t.sub.as_deref().is_some_and(|s| !resource.subs.contains(&s))
            || (t.name.is_none() && t.sub.is_some())
        {
            return not_found();
        }
        let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
        let parsed = if body.is_empty() {
            None
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(v) => Some(v),
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", format!("the body is not JSON: {e}")),
            }
        };
        if matches!(method.as_str(), "POST" | "PUT")
            && !(content_type.is_empty()
                || content_type.starts_with("application/json")
                || content_type.starts_with("*/*"))
        {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (sent {content_type:?})"
                ),
            );
        }
        if let Some(obj) = &parsed
            && matches!(method.as_str(), "POST" | "PUT")
            && t.sub.is_none()
            && let Some(kind) = obj["kind"].as_str()
            && kind != resource.kind
        {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the kind in the body ({kind}) does not match the resource ({})", resource.kind),
            );
        }
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
                None => status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", t.qualified())),
            },
            ("GET", None, _) => self.list(&t, resource, q),
            ("POST", None, _) => {
                let Some(mut obj) = parsed else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is empty".into());
                };
                if let Err(r) = ensure_meta(&mut obj) {
                    return r.response();
                }
                if let Some(ns) = obj["metadata"]["namespace"].as_str()
                    && t.namespace.as_deref().is_some_and(|n| n != ns)
                {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    );
                }
                let name = match (obj["metadata"]["name"].as_str(), obj["metadata"]["generateName"].as_str()) {
                    (Some(n), _) => n.to_string(),
                    (None, Some(g)) => {
                        self.next_pod += 1;
                        format!("{g}{:05x}", self.next_pod)
                    }
                    (None, None) => {
                        return status(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid",
                            format!(
                                "{} is invalid: metadata.name: Required value: name or generateName is required",
                                resource.kind
                            ),
                        );
                    }
                };
                let key = t.key(&name);
                if self.objects.contains_key(&key) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", t.qualified()),
                    );
                }
                if let Err(r) = self.admit(&t, &name, &mut obj) {
                    return r.response();
                }
                obj["metadata"]["name"] = json!(name);
                let t = Target { name: Some(name), ..t };
                if dry_run {
                    return answer(StatusCode::CREATED, &obj);
                }
                self.stamp(&mut obj, None, &t);
                self.write(key, obj.clone());
                if t.plural == "pods" {
                    self.refresh_quotas(t.namespace.as_deref().unwrap_or_default());
                }
                answer(StatusCode::CREATED, &obj)
            }
            ("PUT" | "PATCH", Some(name), sub) => self.update(&t, name, sub, method, content_type, parsed, q, dry_run),
            ("DELETE", Some(name), _) => match self.remove(&t.key(name)) {
                Some(o) => ok(&o),
                None => status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", t.qualified())),
            },
            ("DELETE", None, _) => {
                let filter = match Filter::of(&t, q) {
                    Ok(f) => f,
                    Err(r) => return r.response(),
                };
                let prefix = t.collection();
                let gone: Vec<String> =
                    self.collection(prefix.clone()).filter(|(_, o)| filter.admits(o)).map(|(k, _)| k.clone()).collect();
                let items: Vec<Value> = gone.iter().filter_map(|k| self.remove(k)).collect();
                ok(&json!({"kind": format!("{}List", resource.kind), "apiVersion": discovery::api_version(resource.gv),
                    "metadata": {"resourceVersion": self.rv.to_string()}, "items": items}))
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("the server does not allow this method on the requested resource ({method} {path})"),
            ),
        }
    }

    /// A list, with selectors, `limit` and `continue`.
    fn list(&self, t: &Target, resource: &Resource, q: &HashMap<String, String>) -> Response<Body> {
        let filter = match Filter::of(t, q) {
            Ok(f) => f,
            Err(r) => return r.response(),
        };
        let prefix = t.collection();
        let after = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(c) => match unhex(c).filter(|k| k.starts_with(&prefix)) {
                Some(k) => Bound::Excluded(k),
                None => return status(StatusCode::BAD_REQUEST, "BadRequest", "continue key is not valid".into()),
            },
            None => Bound::Included(prefix.clone()),
        };
        let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
            None => usize::MAX,
            Some(Ok(0)) => usize::MAX,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "limit must be a whole number".into());
            }
        };
        let mut matching = self
            .objects
            .range((after, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, o)| filter.admits(o));
        let items: Vec<(&String, &Value)> = matching.by_ref().take(limit).collect();
        let remaining = matching.count();
        let mut meta = json!({"resourceVersion": self.rv.to_string()});
        if remaining > 0
            && let Some((last, _)) = items.last()
        {
            meta["continue"] = json!(hex(last));
            meta["remainingItemCount"] = json!(remaining);
        }
        let items: Vec<&Value> = items.into_iter().map(|(_, v)| v).collect();
        ok(
            &json!({"kind": format!("{}List", resource.kind), "apiVersion": discovery::api_version(resource.gv), "metadata": meta, "items": items}),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        t: &Target,
        name: &str,
        sub: Option<&str>,
        method: &Method,
        content_type: &str,
        parsed: Option<Value>,
        q: &HashMap<String, String>,
        dry_run: bool,
    ) -> Response<Body> {
        let Some(patch) = parsed else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "the body is empty".into());
        };
        let key = t.key(name);
        let old = self.objects.get(&key).cloned();
        let kind = if method == Method::PUT {
            "put"
        } else if content_type.starts_with("application/apply-patch") {
            "apply"
        } else if content_type.starts_with("application/merge-patch+json") {
            "merge"
        } else if content_type.starts_with("application/strategic-merge-patch+json") {
            "strategic"
        } else if content_type.starts_with("application/json-patch+json") {
            "json"
        } else {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (sent {content_type:?})"
                ),
            );
        };
        if kind == "apply" && q.get("fieldManager").is_none_or(|m| m.is_empty()) {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "PATCH, fieldManager is required for apply requests".into(),
            );
        }
        let not_found = || status(StatusCode::NOT_FOUND, "NotFound", format!("{} \"{name}\" not found", t.qualified()));
        let creating = old.is_none();
        let mut obj = match old.clone() {
            Some(o) => o,
            None if kind == "apply" && sub.is_none() => json!({"metadata": {}}),
            None => return not_found(),
        };
        // Optimistic concurrency: a resource version in what is sent must be the current one.
        let sent_rv =
            if kind == "json" { None } else { patch["metadata"]["resourceVersion"].as_str().map(String::from) };
        if let (Some(sent), Some(o)) = (sent_rv.filter(|s| !s.is_empty()), &old)
            && o["metadata"]["resourceVersion"].as_str() != Some(sent.as_str())
        {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    t.qualified()
                ),
            );
        }
        match (kind, sub) {
            ("put", Some("status")) => obj["status"] = patch["status"].clone(),
            ("put", _) => {
                let status = obj.get("status").cloned();
                obj = patch;
                if let Err(r) = ensure_meta(&mut obj) {
                    return r.response();
                }
                if let Some(s) = status {
                    obj["status"] = s;
                }
            }
            ("json", _) => {
                if let Err(e) = patch::json_patch(&mut obj, &patch) {
                    return status(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid",
                        format!("the JSON patch does not apply: {e}"),
                    );
                }
            }
            (_, Some("status")) => patch::merge(&mut obj, &json!({"status": patch["status"]})),
            _ => {
                if !patch.is_object() {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "a merge patch or an applied configuration is a JSON object".into(),
                    );
                }
                patch::merge(&mut obj, &patch)
            }
        }
        if let Err(r) = ensure_meta(&mut obj) {
            return r.response();
        }
        if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    obj["metadata"]["name"]
                ),
            );
        }
        if let Some(kind) = obj["kind"].as_str()
            && t.resource().is_some_and(|r| r.kind != kind)
        {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the kind in the body ({kind}) does not match the resource"),
            );
        }
        obj["metadata"]["name"] = json!(name);
        if creating {
            if let Err(r) = self.admit(t, name, &mut obj) {
                return r.response();
            }
        } else if let Some(e) = admit::labels_problem(&obj) {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("{} {name:?} is invalid: {e}", t.plural),
            );
        }
        if dry_run {
            return ok(&obj);
        }
        self.stamp(&mut obj, old.as_ref(), t);
        self.write(key, obj.clone());
        if t.plural == "pods" && creating {
            self.refresh_quotas(t.namespace.as_deref().unwrap_or_default());
        }
        answer(if creating { StatusCode::CREATED } else { StatusCode::OK }, &obj)
    }

    /// The events of a watch after `from` that the filter admits, as newline-delimited JSON; `Err(())`
    /// when `from` is older than what is kept (410 Gone).
    fn events_after(&self, prefix: &str, from: u64, filter: &Filter, metadata_only: bool) -> Result<Vec<Bytes>, ()> {
        if self.events.front().is_some_and(|e| e.rv > from + 1) && self.rv > from {
            return Err(());
        }
        let start = self.events.partition_point(|e| e.rv <= from);
        Ok(self
            .events
            .range(start..)
            .filter(|e| e.key.starts_with(prefix) && filter.admits(&e.obj))
            .map(|e| event_line(e.kind, &e.obj, metadata_only))
            .collect())
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn gone() -> Bytes {
    Bytes::from(
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}})
        .to_string()
            + "\n",
    )
}

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An event line; with `metadata_only`, its object as a PartialObjectMetadata (what a client asks for with
/// `Accept: …;as=PartialObjectMetadata;…`).
fn event_line(kind: &str, obj: &Value, metadata_only: bool) -> Bytes {
    let obj = if metadata_only {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
    } else {
        obj.clone()
    };
    Bytes::from(json!({"type": kind, "object": obj}).to_string() + "\n")
}

/// A watch: the events after the asked resource version (or every current object as ADDED, then what
/// follows), until `timeoutSeconds` or the client goes.
fn watch(
    store: Arc<Mutex<Store>>,
    changed: Arc<tokio::sync::Notify>,
    t: &Target,
    q: &HashMap<String, String>,
    metadata_only: bool,
) -> Response<Body> {
    let filter = match Filter::of(t, q) {
        Ok(f) => f,
        Err(r) => return r.response(),
    };
    let prefix = t.collection();
    let timeout = q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(1800).min(3600);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let asked = q.get("resourceVersion").filter(|v| !v.is_empty() && *v != "0").map(|v| v.parse::<u64>());
    let mut first = VecDeque::new();
    let cursor = {
        let s = lock(&store);
        match asked {
            Some(Ok(rv)) => rv,
            Some(Err(_)) => {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "resourceVersion is not a number".into());
            }
            None => {
                for (_, o) in s.collection(prefix.clone()).filter(|(_, o)| filter.admits(o)) {
                    first.push_back(event_line("ADDED", o, metadata_only));
                }
                s.rv
            }
        }
    };
    struct W {
        store: Arc<Mutex<Store>>,
        changed: Arc<tokio::sync::Notify>,
        prefix: String,
        filter: Filter,
        cursor: u64,
        pending: VecDeque<Bytes>,
        deadline: tokio::time::Instant,
        done: bool,
        metadata_only: bool,
    }
    let w = W { store, changed, prefix, filter, cursor, pending: first, deadline, done: false, metadata_only };
    let stream = futures::stream::unfold(w, |mut w| async move {
        loop {
            if let Some(b) = w.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(b), w));
            }
            if w.done || tokio::time::Instant::now() >= w.deadline {
                return None;
            }
            let next = w.changed.clone();
            let next = next.notified();
            {
                let s = lock(&w.store);
                match s.events_after(&w.prefix, w.cursor, &w.filter, w.metadata_only) {
                    Ok(events) => w.pending.extend(events),
                    Err(()) => {
                        w.pending.push_back(gone());
                        w.done = true;
                    }
                }
                w.cursor = s.rv;
            }
            if w.pending.is_empty() {
                let _ = tokio::time::timeout_at(w.deadline, next).await;
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("valid response")
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
        {
            // The namespaces every cluster has.
            let mut s = lock(&store);
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let t = Target::parse(&format!("api/v1/namespaces/{ns}")).expect("a path");
                let mut obj = json!({"metadata": {"name": ns}, "status": {"phase": "Active"}});
                s.stamp(&mut obj, None, &t);
                s.write(t.key(ns), obj);
            }
        }
        let changed = Arc::new(tokio::sync::Notify::new());
        let (shared, notify) = (store.clone(), changed.clone());
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let (store, notify) = (shared.clone(), notify.clone());
            async move {
                let (parts, body) = req.into_parts();
                let bytes = match to_bytes(body, 16 << 20).await {
                    Ok(b) => b,
                    Err(_) => {
                        return status(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "RequestEntityTooLarge",
                            "the request is larger than 16 MiB".into(),
                        );
                    }
                };
                let ct =
                    parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let q = query(parts.uri.query());
                let path = parts.uri.path().to_string();
                if parts.method == Method::GET
                    && q.get("watch").is_some_and(|w| w == "true" || w == "1")
                    && let Some(t) = Target::parse(&path).filter(|t| t.name.is_none() && t.resource().is_some())
                {
                    lock(&store).requests.push(format!("WATCH {path}"));
                    let accept = parts.headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    let metadata_only = accept.contains("as=PartialObjectMetadata");
                    let response = watch(store, notify.clone(), &t, &q, metadata_only);
                    notify.notify_waiters(); // a test may wait for a watch to be open
                    return response;
                }
                let response = {
                    let mut s = lock(&store);
                    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let r = s.handle(&parts.method, &path, &q, &ct, &bytes);
                        if s.controller {
                            s.control();
                        }
                        r
                    }));
                    handled.unwrap_or_else(|_| {
                        status(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "InternalError",
                            "the stand-in failed on this request".into(),
                        )
                    })
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
        // The controller also acts with nobody asking: pods come and go, deadlines pass.
        let ticker = controller.then(|| {
            let (store, notify) = (store.clone(), changed.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(250));
                loop {
                    every.tick().await;
                    let changed = {
                        let mut s = lock(&store);
                        let before = s.rv;
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.control()));
                        s.rv != before
                    };
                    if changed {
                        notify.notify_waiters();
                    }
                }
            })
        });
        let kubeconfig = dir.join("kubeconfig.yaml");
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: stand-in\n  context:\n    cluster: stand-in\n    user: stand-in\n    namespace: default\ncurrent-context: stand-in\nusers:\n- name: stand-in\n  user: {{}}\n"
            ),
        )
        .unwrap();
        KubeStandIn { addr, kubeconfig, store, changed, task, ticker }
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

    /// Waits until a request starting with `what` ("METHOD /path", or "WATCH /path") was seen, for at most
    /// `within`.
    pub async fn wait_for_request(&self, what: &str, within: std::time::Duration) {
        let until = tokio::time::Instant::now() + within;
        loop {
            let next = self.changed.notified();
            if self.requests().iter().any(|r| r.starts_with(what)) {
                return;
            }
            if tokio::time::timeout_at(until, next).await.is_err() {
                panic!("no request {what} within {within:?}");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
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
        {
            let mut store = self.lock();
            let old = store.objects.get(&t.key(&name)).cloned();
            store.stamp(&mut obj, old.as_ref(), &t);
            store.write(t.key(&name), obj);
            if t.plural == "pods" {
                store.refresh_quotas(t.namespace.as_deref().unwrap_or_default());
            }
        }
        self.changed.notify_waiters();
    }

    /// Merges `patch` into an object (a controller updating status, or someone editing it by hand).
    pub fn patch(&self, path: &str, patch: Value) {
        let mut obj = self.get(path).unwrap_or_else(|| panic!("no object at {path}"));
        patch::merge(&mut obj, &patch);
        self.put(path, obj);
    }

    /// Deletes an object (someone deleting a managed object by hand).
    pub fn delete(&self, path: &str) -> bool {
        let Some(t) = Target::parse(path) else { return false };
        let Some(name) = t.name.clone() else { return false };
        let gone = self.lock().remove(&t.key(&name)).is_some();
        self.changed.notify_waiters();
        gone
    }

    /// Containers of this image crash from now on (the controller leaves their pods in CrashLoopBackOff).
    pub fn fail_image(&self, image: &str) {
        self.lock().failing_images.insert(image.into());
    }

    /// As [`KubeStandIn::fail_image`], in one namespace only.
    pub fn fail_image_in(&self, namespace: &str, image: &str) {
        self.lock().failing_images.insert(format!("{namespace}/{image}"));
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
mod tests;
