//! A stand-in Hetzner Cloud API on loopback, for the hub's provisioner and its tests. The Hetzner API cannot
//! be reached from here, so this speaks its wire protocol (JSON over HTTP, the real paths under `/v1`, bearer
//! tokens, `meta.pagination`, label selectors, error bodies with codes, actions that run and then succeed or
//! fail, `RateLimit-*` headers with 429) and is driven by the real client, the `hcloud` crate, whose base URL
//! the hub takes from its config.
//!
//! What it serves: servers (create, get, list, delete), actions, SSH keys and firewalls (create, list).
//! Faults a test can ask for: the next answers failing (429, 503), a server type sold out in a location
//! (`resource_unavailable`), create actions that end in error, a rate limit (a token bucket as Hetzner's),
//! a slow boot. When a create action succeeds, the server "boots": the [`Machines`] hook gets its user-data
//! (the tests write the files the user-data writes into a throwaway root and start a real agentd there).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, Response, StatusCode};

use crate::kube::query;
use serde_json::{Value, json};

/// What happens to the machines behind the fake's servers.
pub trait Machines: Send + Sync {
    /// A server finished booting with this user-data.
    fn boot(&self, server: &Booted);
    /// A server was deleted.
    fn destroy(&self, id: i64, name: &str);
}

/// A booted server.
#[derive(Clone, Debug)]
pub struct Booted {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub user_data: String,
}

/// An answer a test wants for the next request(s), whatever they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 `rate_limit_exceeded`.
    RateLimited,
    /// 503 `unavailable`.
    Unavailable,
}

#[derive(Clone, Debug)]
struct Server {
    id: i64,
    name: String,
    server_type: String,
    location: String,
    labels: BTreeMap<String, String>,
    user_data: String,
    ssh_keys: Vec<String>,
    firewalls: Vec<i64>,
    status: &'static str,
    created: String,
}

#[derive(Clone, Debug)]
struct Action {
    id: i64,
    command: String,
    server: i64,
    /// When it ends; `error` set: it ends in error.
    done_at: Instant,
    error: Option<String>,
    started: String,
    booted: bool,
}

struct Bucket {
    limit: u32,
    remaining: f64,
    per_sec: f64,
    at: Instant,
}

#[derive(Default)]
struct State {
    token: String,
    /// Tokens that may read but not write (403 `forbidden` on writes).
    read_only: Vec<String>,
    next_id: i64,
    servers: BTreeMap<i64, Server>,
    actions: BTreeMap<i64, Action>,
    ssh_keys: BTreeMap<i64, (String, String)>,
    firewalls: BTreeMap<i64, (String, Value)>,
    faults: VecDeque<Fault>,
    /// A broken or hostile API: listings ignore the label selector.
    ignore_selector: bool,
    /// A broken or hostile API: every listing says there is a next page.
    endless_pages: bool,
    /// A broken or hostile API: listings carry this many bytes of padding (a field clients ignore).
    listing_padding: usize,
    /// (server type, location) pairs that are sold out.
    sold_out: Vec<(String, String)>,
    /// Create actions that end in error (next n).
    failing_creates: u32,
    boot: Duration,
    bucket: Option<Bucket>,
    /// Every request, as "METHOD /path".
    requests: Vec<String>,
    /// 429 answers given.
    throttled: u64,
    /// Servers deleted since the last tick (for the machines hook).
    deleted: Vec<(i64, String)>,
}

/// A running fake. Dropping it stops the server.
pub struct HetznerStandIn {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Requests ("METHOD /path") held until released (a test catches the hub mid-call).
    holds: Arc<Mutex<Vec<String>>>,
    released: Arc<tokio::sync::Notify>,
    machines: Arc<Mutex<Option<Arc<dyn Machines>>>>,
    task: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for HetznerStandIn {
    fn drop(&mut self) {
        self.task.abort();
        self.ticker.abort();
    }
}

/// The server types the fake sells: name, architecture, cores, memory GB, disk GB, locations.
const SERVER_TYPES: &[(&str, &str, i32, f64, f64)] = &[
    ("cx22", "x86", 2, 4.0, 40.0),
    ("cx32", "x86", 4, 8.0, 80.0),
    ("cx42", "x86", 8, 16.0, 160.0),
    ("cax11", "arm", 2, 4.0, 40.0),
];
const LOCATIONS: &[(&str, &str, &str)] =
    &[("fsn1", "Falkenstein", "DE"), ("nbg1", "Nuremberg", "DE"), ("hel1", "Helsinki", "FI")];

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"code": code, "message": message, "details": {}}}))
}

fn location_json(name: &str) -> Value {
    let (i, (n, city, country)) = LOCATIONS.iter().enumerate().find(|(_, l)| l.0 == name).unwrap_or((0, &LOCATIONS[0]));
    json!({"id": i as i64 + 1, "name": n, "description": format!("{city} DC Park 1"), "country": country,
           "city": city, "latitude": 50.0, "longitude": 12.0, "network_zone": "eu-central"})
}

fn server_type_json(name: &str) -> Value {
    let (i, (n, arch, cores, mem, disk)) =
        SERVER_TYPES.iter().enumerate().find(|(_, t)| t.0 == name).unwrap_or((0, &SERVER_TYPES[0]));
    let price = json!({"net": "0.0060", "gross": "0.0071"});
    json!({"id": i as i64 + 1, "name": n, "description": n.to_uppercase(), "cores": cores, "memory": mem,
           "disk": disk, "architecture": arch, "cpu_type": "shared", "storage_type": "local", "deprecated": false,
           "deprecation": null, "category": "shared",
           "locations": LOCATIONS.iter().enumerate().map(|(i, l)| json!({"id": i as i64 + 1, "name": l.0, "deprecation": null})).collect::<Vec<_>>(),
           "prices": [{"location": "fsn1", "included_traffic": 21990232555520i64, "price_hourly": price,
                       "price_monthly": {"net": "3.79", "gross": "4.51"}, "price_per_tb_traffic": {"net": "1.00", "gross": "1.19"}}]})
}

impl Server {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "status": self.status, "created": self.created,
            "labels": self.labels, "locked": false, "rescue_enabled": false, "primary_disk_size": 40,
            "private_net": [], "protection": {"delete": false, "rebuild": false},
            "public_net": {"floating_ips": [], "firewalls": self.firewalls.iter().map(|id| json!({"id": id, "status": "applied"})).collect::<Vec<_>>(),
                "ipv4": {"blocked": false, "dns_ptr": format!("static.{}.example", self.id), "ip": format!("203.0.113.{}", self.id % 250)},
                "ipv6": null},
            "server_type": server_type_json(&self.server_type),
            "location": location_json(&self.location),
            "image": null, "iso": null, "load_balancers": [], "volumes": [], "placement_group": null,
            "included_traffic": 21990232555520i64, "ingoing_traffic": 0, "outgoing_traffic": 0, "backup_window": null,
        })
    }
}

impl Action {
    fn json(&self, now: Instant) -> Value {
        let done = now >= self.done_at;
        let (status, progress, error) = match (done, &self.error) {
            (false, _) => ("running", 50, Value::Null),
            (true, None) => ("success", 100, Value::Null),
            (true, Some(e)) => ("error", 100, json!({"code": "action_failed", "message": e})),
        };
        json!({"id": self.id, "command": self.command, "status": status, "progress": progress,
               "started": self.started, "finished": if done { json!(self.started) } else { Value::Null },
               "resources": [{"id": self.server, "type": "server"}], "error": error})
    }
}

/// `k=v`, `k!=v`, `k`, `!k`, comma-separated (all must hold): Hetzner's label selector, minus set syntax.
fn selects(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k.trim()).is_none_or(|x| x != v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k.trim()).is_some_and(|x| x == v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            !labels.contains_key(k.trim())
        } else {
            labels.contains_key(term)
        }
    })
}

/// One page of `items` as Hetzner pages: `page` from 1, `per_page` 25 by default and 50 at most.
fn page(key: &str, items: Vec<Value>, q: &HashMap<String, String>) -> Value {
    let per_page = q.get("per_page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(25).clamp(1, 50);
    let page = q.get("page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let slice: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    json!({key: slice, "meta": {"pagination": {"page": page, "per_page": per_page, "total_entries": total,
        "last_page": last, "next_page": if page < last { json!(page + 1) } else { Value::Null },
        "previous_page": if page > 1 { json!(page - 1) } else { Value::Null }}}})
}

impl State {
    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn action(&mut self, command: &str, server: i64, after: Duration, error: Option<String>) -> Value {
        let id = self.id();
        let a = Action {
            id,
            command: command.into(),
            server,
            done_at: Instant::now() + after,
            error,
            started: now_rfc3339(),
            booted: false,
        };
        let v = a.json(Instant::now());
        self.actions.insert(id, a);
        v
    }

    /// Takes a token from the bucket; `Err(reset secs)` when empty.
    fn take(&mut self) -> Result<(u32, u32), u64> {
        let Some(b) = &mut self.bucket else { return Ok((3600, 3600)) };
        let now = Instant::now();
        b.remaining = (b.remaining + now.duration_since(b.at).as_secs_f64() * b.per_sec).min(f64::from(b.limit));
        b.at = now;
        if b.remaining < 1.0 {
            return Err(((1.0 - b.remaining) / b.per_sec).ceil() as u64);
        }
        b.remaining -= 1.0;
        Ok((b.limit, b.remaining as u32))
    }

    fn handle(&mut self, method: &Method, path: &str, q: &HashMap<String, String>, body: &[u8]) -> (StatusCode, Value) {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, "json_error", &format!("invalid JSON: {e}")),
            }
        };
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["v1", "servers"]) => {
                let sel = q.get("label_selector").cloned().unwrap_or_default();
                let name = q.get("name");
                let ignore = self.ignore_selector;
                let items = self
                    .servers
                    .values()
                    .filter(|s| (ignore || selects(&sel, &s.labels)) && name.is_none_or(|n| *n == s.name))
                    .map(Server::json)
                    .collect();
                let mut answer = page("servers", items, q);
                if self.listing_padding > 0 {
                    answer["padding"] = json!("x".repeat(self.listing_padding));
                }
                if self.endless_pages {
                    let p = answer["meta"]["pagination"]["page"].as_u64().unwrap_or(1);
                    answer["meta"]["pagination"]["next_page"] = json!(p + 1);
                    answer["meta"]["pagination"]["last_page"] = json!(p + 1);
                }
                (StatusCode::OK, answer)
            }
            ("POST", ["v1", "servers"]) => self.create_server(&body),
            ("GET", ["v1", "servers", id]) => match id.parse().ok().and_then(|id: i64| self.servers.get(&id)) {
                Some(s) => (StatusCode::OK, json!({"server": s.json()})),
                None => error(StatusCode::NOT_FOUND, "not_found", "server not found"),
            },
            ("DELETE", ["v1", "servers", id]) => {
                let Some(s) = id.parse().ok().and_then(|id: i64| self.servers.remove(&id)) else {
                    return error(StatusCode::NOT_FOUND, "not_found", "server not found");
                };
                let a = self.action("delete_server", s.id, Duration::ZERO, None);
                self.deleted.push((s.id, s.name));
                (StatusCode::OK, json!({"action": a}))
            }
            ("GET", ["v1", "actions", id]) => match id.parse().ok().and_then(|id: i64| self.actions.get(&id)) {
                Some(a) => (StatusCode::OK, json!({"action": a.json(Instant::now())})),
                None => error(StatusCode::NOT_FOUND, "not_found", "action not found"),
            },
            ("GET", ["v1", "ssh_keys"]) => {
                let name = q.get("name");
                let items = self
                    .ssh_keys
                    .iter()
                    .filter(|(_, (n, _))| name.is_none_or(|x| x == n))
                    .map(|(id, (n, k))| ssh_key_json(*id, n, k))
                    .collect();
                (StatusCode::OK, page("ssh_keys", items, q))
            }
            ("POST", ["v1", "ssh_keys"]) => {
                let (Some(name), Some(key)) = (body["name"].as_str(), body["public_key"].as_str()) else {
                    return error(StatusCode::BAD_REQUEST, "invalid_input", "name and public_key are required");
                };
                if !key.starts_with("ssh-") {
                    return error(StatusCode::BAD_REQUEST, "invalid_input", "invalid public key");
                }
                if self.ssh_keys.values().any(|(n, _)| n == name) {
                    return error(
                        StatusCode::CONFLICT,
                        "uniqueness_error",
                        "SSH key with the same name already exists",
                    );
                }
                let id = self.id();
                self.ssh_keys.insert(id, (name.into(), key.into()));
                (StatusCode::CREATED, json!({"ssh_key": ssh_key_json(id, name, key)}))
            }
            ("GET", ["v1", "firewalls"]) => {
                let name = q.get("name");
                let items = self
                    .firewalls
                    .iter()
                    .filter(|(_, (n, _))| name.is_none_or(|x| x == n))
                    .map(|(id, (n, rules))| firewall_json(*id, n, rules))
                    .collect();
                (StatusCode::OK, page("firewalls", items, q))
            }
            ("POST", ["v1", "firewalls"]) => {
                let Some(name) = body["name"].as_str() else {
                    return error(StatusCode::BAD_REQUEST, "invalid_input", "name is required");
                };
                if self.firewalls.values().any(|(n, _)| n == name) {
                    return error(
                        StatusCode::CONFLICT,
                        "uniqueness_error",
                        "firewall with the same name already exists",
                    );
                }
                let id = self.id();
                let rules = body.get("rules").cloned().unwrap_or(json!([]));
                self.firewalls.insert(id, (name.into(), rules.clone()));
                (StatusCode::CREATED, json!({"firewall": firewall_json(id, name, &rules), "actions": []}))
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", &format!("{method} {path} is not served by the stand-in")),
        }
    }

    fn create_server(&mut self, body: &Value) -> (StatusCode, Value) {
        let (Some(name), Some(server_type), Some(_image)) =
            (body["name"].as_str(), body["server_type"].as_str(), body["image"].as_str())
        else {
            return error(StatusCode::BAD_REQUEST, "invalid_input", "name, server_type and image are required");
        };
        if !SERVER_TYPES.iter().any(|t| t.0 == server_type) {
            return error(StatusCode::BAD_REQUEST, "invalid_input", &format!("unknown server type {server_type}"));
        }
        let location = body["location"].as_str().unwrap_or("fsn1");
        if !LOCATIONS.iter().any(|l| l.0 == location) {
            return error(StatusCode::BAD_REQUEST, "invalid_input", &format!("unknown location {location}"));
        }
        if self.servers.values().any(|s| s.name == name) {
            return error(StatusCode::CONFLICT, "uniqueness_error", "server name is already used");
        }
        if self.sold_out.iter().any(|(t, l)| t == server_type && l == location) {
            return error(
                StatusCode::PRECONDITION_FAILED,
                "resource_unavailable",
                &format!("server type {server_type} is unavailable in {location}"),
            );
        }
        let user_data = body["user_data"].as_str().unwrap_or_default();
        if user_data.len() > 32 * 1024 {
            return error(StatusCode::BAD_REQUEST, "invalid_input", "user_data is longer than 32 KiB");
        }
        let labels: BTreeMap<String, String> = serde_json::from_value(body["labels"].clone()).unwrap_or_default();
        let id = self.id();
        let server = Server {
            id,
            name: name.into(),
            server_type: server_type.into(),
            location: location.into(),
            labels,
            user_data: user_data.into(),
            ssh_keys: serde_json::from_value(body["ssh_keys"].clone()).unwrap_or_default(),
            firewalls: body["firewalls"]
                .as_array()
                .map(|a| a.iter().filter_map(|f| f["firewall"].as_i64()).collect())
                .unwrap_or_default(),
            status: "initializing",
            created: now_rfc3339(),
        };
        let json = server.json();
        self.servers.insert(id, server);
        let failing = self.failing_creates > 0;
        self.failing_creates = self.failing_creates.saturating_sub(1);
        let error = failing.then(|| "the server could not be started (injected failure)".to_string());
        let action = self.action("create_server", id, self.boot, error);
        (StatusCode::CREATED, json!({"server": json, "action": action, "next_actions": [], "root_password": null}))
    }

    /// Ends the actions whose time came: a server whose create succeeded runs (and boots).
    fn tick(&mut self) -> Vec<Booted> {
        let now = Instant::now();
        let mut booted = Vec::new();
        for a in self.actions.values_mut() {
            if a.booted || now < a.done_at || a.command != "create_server" {
                continue;
            }
            a.booted = true;
            if let Some(s) = self.servers.get_mut(&a.server) {
                s.status = if a.error.is_none() { "running" } else { "off" };
                if a.error.is_none() {
                    booted.push(Booted {
                        id: s.id,
                        name: s.name.clone(),
                        labels: s.labels.clone(),
                        user_data: s.user_data.clone(),
                    });
                }
            }
        }
        booted
    }
}

fn ssh_key_json(id: i64, name: &str, key: &str) -> Value {
    json!({"id": id, "name": name, "public_key": key, "fingerprint": format!("b7:2f:{:02x}", id % 256),
           "labels": {}, "created": now_rfc3339()})
}

fn firewall_json(id: i64, name: &str, rules: &Value) -> Value {
    let rules: Vec<Value> = rules
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    json!({"direction": r["direction"], "protocol": r["protocol"], "port": r["port"],
                           "source_ips": r.get("source_ips").cloned().unwrap_or(json!([])),
                           "destination_ips": r.get("destination_ips").cloned().unwrap_or(json!([])),
                           "description": r.get("description").cloned().unwrap_or(Value::Null)})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"id": id, "name": name, "labels": {}, "created": now_rfc3339(), "rules": rules, "applied_to": []})
}

impl HetznerStandIn {
    /// Starts it on a free loopback port; requests must carry `Authorization: Bearer {token}`.
    pub async fn start(token: &str) -> HetznerStandIn {
        let state = Arc::new(Mutex::new(State { token: token.into(), ..State::default() }));
        let machines: Arc<Mutex<Option<Arc<dyn Machines>>>> = Arc::default();
        let holds: Arc<Mutex<Vec<String>>> = Arc::default();
        let released = Arc::new(tokio::sync::Notify::new());
        let shared = state.clone();
        let (held, release) = (holds.clone(), released.clone());
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let state = shared.clone();
            let (held, release) = (held.clone(), release.clone());
            async move {
                let (parts, body) = req.into_parts();
                let key = format!("{} {}", parts.method, parts.uri.path());
                state.lock().unwrap().requests.push(key.clone());
                loop {
                    let wait = release.notified();
                    if !held.lock().unwrap().iter().any(|h| key.starts_with(h.as_str())) {
                        break;
                    }
                    wait.await;
                }
                let bytes = to_bytes(body, 1 << 20).await.unwrap_or_default();
                let auth = parts.headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let q = query(parts.uri.query());
                let mut state = state.lock().unwrap();
                let write = parts.method != Method::GET;
                let bearer = auth.strip_prefix("Bearer ").unwrap_or_default();
                let mut headers = Vec::new();
                let (status, body) = if bearer != state.token && !state.read_only.iter().any(|t| t == bearer) {
                    error(StatusCode::UNAUTHORIZED, "unauthorized", "unable to authenticate")
                } else if write && bearer != state.token {
                    error(StatusCode::FORBIDDEN, "forbidden", "insufficient permissions for this request")
                } else if let Some(f) = state.faults.pop_front() {
                    match f {
                        Fault::RateLimited => {
                            state.throttled += 1;
                            headers.push(("ratelimit-reset", "1".to_string()));
                            error(
                                StatusCode::TOO_MANY_REQUESTS,
                                "rate_limit_exceeded",
                                "limit of requests per hour reached",
                            )
                        }
                        Fault::Unavailable => {
                            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "service unavailable")
                        }
                    }
                } else {
                    match state.take() {
                        Err(reset) => {
                            state.throttled += 1;
                            headers.push(("ratelimit-remaining", "0".to_string()));
                            headers.push(("ratelimit-reset", reset.to_string()));
                            error(
                                StatusCode::TOO_MANY_REQUESTS,
                                "rate_limit_exceeded",
                                "limit of requests per hour reached",
                            )
                        }
                        Ok((limit, remaining)) => {
                            headers.push(("ratelimit-limit", limit.to_string()));
                            headers.push(("ratelimit-remaining", remaining.to_string()));
                            state.handle(&parts.method, parts.uri.path(), &q, &bytes)
                        }
                    }
                };
                let mut r = Response::builder().status(status).header("content-type", "application/json");
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                r.body(Body::from(body.to_string())).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let (st, m) = (state.clone(), machines.clone());
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(20));
            loop {
                every.tick().await;
                let (booted, deleted) = {
                    let mut s = st.lock().unwrap();
                    (s.tick(), std::mem::take(&mut s.deleted))
                };
                let hook = m.lock().unwrap().clone();
                if let Some(hook) = hook {
                    // Booting runs programs (the tests' machines): off the runtime's threads.
                    for b in booted {
                        let hook = hook.clone();
                        tokio::task::spawn_blocking(move || hook.boot(&b));
                    }
                    for (id, name) in deleted {
                        let hook = hook.clone();
                        tokio::task::spawn_blocking(move || hook.destroy(id, &name));
                    }
                }
            }
        });
        HetznerStandIn { addr, state, holds, released, machines, task, ticker }
    }

    /// The base URL to give the client (`…/v1`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_machines(&self, machines: Arc<dyn Machines>) {
        *self.machines.lock().unwrap() = Some(machines);
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Requests starting with `what` ("METHOD /path") wait until [`HetznerStandIn::release`].
    pub fn hold(&self, what: &str) {
        self.holds.lock().unwrap().push(what.into());
    }

    /// Lets every held request go on, and holds nothing more.
    pub fn release(&self) {
        self.holds.lock().unwrap().clear();
        self.released.notify_waiters();
    }

    /// The requests seen so far that are `what` ("METHOD /path"), held ones included.
    pub fn seen(&self, what: &str) -> usize {
        self.with(|s| s.requests.iter().filter(|r| *r == what).count())
    }

    /// Listings ignore their label selector from now on (an API answering wrongly).
    pub fn ignore_label_selectors(&self, on: bool) {
        self.with(|s| s.ignore_selector = on);
    }

    /// Every listing says there is a next page from now on.
    pub fn endless_pages(&self, on: bool) {
        self.with(|s| s.endless_pages = on);
    }

    /// Listings carry `bytes` of padding from now on (0: none).
    pub fn pad_listings(&self, bytes: usize) {
        self.with(|s| s.listing_padding = bytes);
    }

    /// The next answers, whatever is asked, are these faults.
    pub fn fail_next(&self, faults: &[Fault]) {
        self.with(|s| s.faults.extend(faults));
    }

    pub fn sell_out(&self, server_type: &str, location: &str) {
        self.with(|s| s.sold_out.push((server_type.into(), location.into())));
    }

    /// The next `n` create actions end in error.
    pub fn fail_creates(&self, n: u32) {
        self.with(|s| s.failing_creates += n);
    }

    /// How long a create action runs.
    pub fn set_boot_time(&self, d: Duration) {
        self.with(|s| s.boot = d);
    }

    /// Hetzner's limit: `limit` requests, refilled at `per_sec`.
    pub fn rate_limit(&self, limit: u32, per_sec: f64) {
        self.with(|s| {
            s.bucket = Some(Bucket { limit, remaining: f64::from(limit), per_sec, at: Instant::now() });
        });
    }

    pub fn add_read_only_token(&self, token: &str) {
        self.with(|s| s.read_only.push(token.into()));
    }

    /// A server made outside the hub (an orphan for the reaper, or a leftover).
    pub fn add_server(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        self.with(|s| {
            let id = s.id();
            let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            s.servers.insert(
                id,
                Server {
                    id,
                    name: name.into(),
                    server_type: "cx22".into(),
                    location: "fsn1".into(),
                    labels,
                    user_data: String::new(),
                    ssh_keys: vec![],
                    firewalls: vec![],
                    status: "running",
                    created: now_rfc3339(),
                },
            );
            id
        })
    }

    /// The servers as (id, name, labels, status, server type, location).
    pub fn servers(&self) -> Vec<FakeServer> {
        self.with(|s| {
            s.servers
                .values()
                .map(|x| FakeServer {
                    id: x.id,
                    name: x.name.clone(),
                    labels: x.labels.clone(),
                    status: x.status.into(),
                    server_type: x.server_type.clone(),
                    location: x.location.clone(),
                    ssh_keys: x.ssh_keys.clone(),
                    firewalls: x.firewalls.clone(),
                    user_data: x.user_data.clone(),
                })
                .collect()
        })
    }

    /// The firewall rules by name.
    pub fn firewall_rules(&self, name: &str) -> Option<Value> {
        self.with(|s| s.firewalls.values().find(|(n, _)| n == name).map(|(_, r)| r.clone()))
    }

    /// Every request so far, as "METHOD /path".
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }

    /// 429 answers given so far.
    pub fn throttled(&self) -> u64 {
        self.with(|s| s.throttled)
    }
}

/// A server on the fake, as a test sees it.
#[derive(Clone, Debug)]
pub struct FakeServer {
    pub id: i64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub status: String,
    pub server_type: String,
    pub location: String,
    pub ssh_keys: Vec<String>,
    pub firewalls: Vec<i64>,
    pub user_data: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        let l: BTreeMap<String, String> = [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into();
        assert!(selects("a=1", &l) && selects("a==1,b", &l) && selects("a!=2,!c", &l) && selects("", &l));
        assert!(!selects("a=2", &l) && !selects("c", &l) && !selects("!a", &l) && !selects("a=1,b=3", &l));
    }

    #[test]
    fn percent_decoding() {
        use crate::kube::percent_decode;
        assert_eq!(percent_decode("outpost-id%3Dweb-1%2Cplan"), "outpost-id=web-1,plan");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
