//! A stand-in Hetzner Cloud API on loopback, for the hub's provisioner and its tests. The Hetzner API cannot
//! be reached from here, so this speaks its wire protocol (JSON over HTTP, the real paths under `/v1`, bearer
//! tokens, `meta.pagination`, label selectors, error bodies with codes, actions that run and then succeed or
//! fail, `RateLimit-*` headers with 429) and is driven by the real client, the `hcloud` crate, whose base URL
//! the hub takes from its config.
//!
//! It answers in the shapes the API documents, with every required field, and the official clients accept
//! it: Debian's `hcloud` CLI and the official Python `hcloud` library are driven against it in the suite
//! (`tests/e2e/official.rs`). It checks inputs as the API does (server names, label keys and values,
//! images, server types, locations, SSH keys and firewalls that must exist) and deletes as the API does: a
//! server is `deleting` while its delete action runs, then gone.
//!
//! What it serves: servers (create, get, list, delete, their actions), actions (get, list), images, server
//! types, locations and datacenters (get, list), SSH keys and firewalls (create, list).
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
    image: i64,
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
    /// How long a delete action runs (the server is `deleting` meanwhile).
    delete_time: Duration,
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

/// The server types the fake sells: name, architecture, cores, memory GB, disk GB.
const SERVER_TYPES: &[(&str, &str, i32, f64, i64)] = &[
    ("cx22", "x86", 2, 4.0, 40),
    ("cx32", "x86", 4, 8.0, 80),
    ("cx42", "x86", 8, 16.0, 160),
    ("cax11", "arm", 2, 4.0, 40),
];
/// Locations: name, city, country, latitude, longitude, network zone, datacenter number.
const LOCATIONS: &[(&str, &str, &str, f64, f64, &str, u32)] = &[
    ("fsn1", "Falkenstein", "DE", 50.47612, 12.370071, "eu-central", 14),
    ("nbg1", "Nuremberg", "DE", 49.452102, 11.076665, "eu-central", 3),
    ("hel1", "Helsinki", "FI", 60.169855, 24.938379, "eu-central", 2),
];
/// System images: id, name, OS flavor, OS version, architecture.
const IMAGES: &[(i64, &str, &str, &str, &str)] = &[
    (114690387, "debian-12", "debian", "12", "x86"),
    (114690389, "debian-12", "debian", "12", "arm"),
    (161547269, "ubuntu-24.04", "ubuntu", "24.04", "x86"),
    (161547270, "ubuntu-24.04", "ubuntu", "24.04", "arm"),
];

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!({"error": {"code": code, "message": message, "details": {}}}))
}

/// 400 `invalid_input` naming the field, as the API answers a bad request body.
fn invalid(field: &str, why: &str) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({"error": {"code": "invalid_input", "message": format!("invalid input in field '{field}'"),
            "details": {"fields": [{"name": field, "messages": [why]}]}}}),
    )
}

fn not_found(what: &str, id: &str) -> (StatusCode, Value) {
    error(StatusCode::NOT_FOUND, "not_found", &format!("{what} with ID '{id}' not found"))
}

fn location_json(i: usize) -> Value {
    let (n, city, country, lat, lon, zone, _) = LOCATIONS[i];
    json!({"id": i as i64 + 1, "name": n, "description": format!("{city} DC Park 1"), "country": country,
           "city": city, "latitude": lat, "longitude": lon, "network_zone": zone})
}

fn location_index(name: &str) -> Option<usize> {
    LOCATIONS.iter().position(|l| {
        l.0 == name
            || name.parse::<usize>().is_ok_and(|id| id == LOCATIONS.iter().position(|x| x.0 == l.0).unwrap_or(0) + 1)
    })
}

fn datacenter_json(i: usize, sold_out: &[(String, String)]) -> Value {
    let (n, city, _, _, _, _, dc) = LOCATIONS[i];
    let all: Vec<i64> = (1..=SERVER_TYPES.len() as i64).collect();
    let available: Vec<i64> = SERVER_TYPES
        .iter()
        .enumerate()
        .filter(|(_, t)| !sold_out.iter().any(|(st, l)| st == t.0 && l == n))
        .map(|(j, _)| j as i64 + 1)
        .collect();
    json!({"id": i as i64 + 1, "name": format!("{n}-dc{dc}"), "description": format!("{city} 1 virtual DC {dc}"),
           "location": location_json(i),
           "server_types": {"supported": all, "available": available, "available_for_migration": all}})
}

fn server_type_index(name: &str) -> Option<usize> {
    SERVER_TYPES
        .iter()
        .position(|t| t.0 == name)
        .or_else(|| name.parse::<usize>().ok().filter(|id| (1..=SERVER_TYPES.len()).contains(id)).map(|id| id - 1))
}

fn server_type_json(i: usize, sold_out: &[(String, String)]) -> Value {
    let (n, arch, cores, mem, disk) = SERVER_TYPES[i];
    let price = |net: &str| json!({"net": net, "gross": net});
    json!({"id": i as i64 + 1, "name": n, "description": n.to_uppercase(), "cores": cores, "memory": mem,
           "disk": disk, "architecture": arch, "cpu_type": "shared", "storage_type": "local", "deprecated": false,
           "deprecation": null, "category": "shared", "included_traffic": 21990232555520i64,
           "locations": LOCATIONS.iter().enumerate().map(|(j, l)| json!({"id": j as i64 + 1, "name": l.0, "deprecation": null,
               "available": !sold_out.iter().any(|(t, loc)| t == n && loc == l.0), "recommended": true})).collect::<Vec<_>>(),
           "prices": LOCATIONS.iter().map(|l| json!({"location": l.0, "included_traffic": 21990232555520i64,
               "price_hourly": price("0.0060"), "price_monthly": price("3.7900"), "price_per_tb_traffic": price("1.0000")})).collect::<Vec<_>>()})
}

fn image_json(id: i64) -> Value {
    let (id, name, flavor, version, arch) = IMAGES.iter().copied().find(|i| i.0 == id).unwrap_or(IMAGES[0]);
    json!({"id": id, "type": "system", "status": "available", "name": name,
           "description": format!("{} {version}", if flavor == "debian" { "Debian" } else { "Ubuntu" }),
           "image_size": null, "disk_size": 5, "created": "2023-06-13T06:00:02+00:00", "created_from": null,
           "bound_to": null, "os_flavor": flavor, "os_version": version, "rapid_deploy": true,
           "protection": {"delete": false}, "deprecated": null, "deleted": null, "labels": {}, "architecture": arch})
}

/// A server name as the API takes it: a hostname (RFC 1123), at most 63 characters.
fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Every `key=value` of a query, repeated keys kept (`id=1&id=2`).
fn query_all(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), crate::kube::percent_decode(v)))
        .collect()
}

impl Server {
    fn json(&self, sold_out: &[(String, String)]) -> Value {
        let loc = location_index(&self.location).unwrap_or(0);
        let t = server_type_index(&self.server_type).unwrap_or(0);
        json!({
            "id": self.id, "name": self.name, "status": self.status, "created": self.created,
            "labels": self.labels, "locked": false, "rescue_enabled": false, "primary_disk_size": SERVER_TYPES[t].4,
            "private_net": [], "protection": {"delete": false, "rebuild": false},
            "public_net": {"floating_ips": [], "firewalls": self.firewalls.iter().map(|id| json!({"id": id, "status": "applied"})).collect::<Vec<_>>(),
                "ipv4": {"id": 1_000_000 + self.id, "blocked": false, "dns_ptr": format!("static.{}.example", self.id), "ip": format!("203.0.113.{}", self.id % 250)},
                "ipv6": {"id": 2_000_000 + self.id, "blocked": false, "dns_ptr": [], "ip": format!("2001:db8:{:x}::/64", self.id)}},
            "server_type": server_type_json(t, sold_out),
            "datacenter": datacenter_json(loc, sold_out),
            "location": location_json(loc),
            "image": image_json(self.image), "iso": null, "load_balancers": [], "volumes": [], "placement_group": null,
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

/// Hetzner's label selector (the Kubernetes syntax: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a)`);
/// `Err` when it does not parse.
fn selects(selector: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    let terms = crate::kube::select::parse_labels(selector)?;
    Ok(crate::kube::select::holds(&terms, |k| labels.get(k).map(String::as_str)))
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

    fn handle(&mut self, method: &Method, path: &str, raw_query: Option<&str>, body: &[u8]) -> (StatusCode, Value) {
        self.settle_deletes();
        let q = query(raw_query);
        let q = &q;
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, "json_error", &format!("invalid JSON: {e}")),
            }
        };
        let sold_out = self.sold_out.clone();
        let by_name = |n: &str| q.get("name").is_none_or(|x| x == n);
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["v1", "servers"]) => {
                let sel = q.get("label_selector").cloned().unwrap_or_default();
                let ignore = self.ignore_selector;
                let mut items = Vec::new();
                for s in self.servers.values() {
                    let picked = match selects(&sel, &s.labels) {
                        Ok(m) => ignore || m,
                        Err(e) => return invalid("label_selector", &e),
                    };
                    if picked && by_name(&s.name) && q.get("status").is_none_or(|st| st == s.status) {
                        items.push(s.json(&sold_out));
                    }
                }
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
                Some(s) => (StatusCode::OK, json!({"server": s.json(&sold_out)})),
                None => not_found("server", id),
            },
            ("DELETE", ["v1", "servers", id]) => {
                let Some(s) = id.parse().ok().and_then(|id: i64| self.servers.get_mut(&id)) else {
                    return not_found("server", id);
                };
                if s.status == "deleting" {
                    return error(StatusCode::LOCKED, "locked", "server is locked: an action is running on it");
                }
                s.status = "deleting";
                let (sid, after) = (s.id, self.delete_time);
                let a = self.action("delete_server", sid, after, None);
                (StatusCode::OK, json!({"action": a}))
            }
            ("GET", ["v1", "servers", id, "actions"]) => {
                let Some(sid) = id.parse::<i64>().ok().filter(|i| self.servers.contains_key(i)) else {
                    return not_found("server", id);
                };
                let now = Instant::now();
                let items = self.actions.values().filter(|a| a.server == sid).map(|a| a.json(now)).collect();
                (StatusCode::OK, page("actions", items, q))
            }
            ("GET", ["v1", "actions"]) => {
                let ids: Vec<i64> = query_all(raw_query)
                    .into_iter()
                    .filter(|(k, _)| k == "id")
                    .filter_map(|(_, v)| v.parse().ok())
                    .collect();
                let status = q.get("status");
                let now = Instant::now();
                let items = self
                    .actions
                    .values()
                    .filter(|a| ids.is_empty() || ids.contains(&a.id))
                    .map(|a| a.json(now))
                    .filter(|a| status.is_none_or(|s| a["status"] == s.as_str()))
                    .collect();
                (StatusCode::OK, page("actions", items, q))
            }
            ("GET", ["v1", "actions", id]) => match id.parse().ok().and_then(|id: i64| self.actions.get(&id)) {
                Some(a) => (StatusCode::OK, json!({"action": a.json(Instant::now())})),
                None => not_found("action", id),
            },
            ("GET", ["v1", "images"]) => {
                let arch = q.get("architecture");
                let items = IMAGES
                    .iter()
                    .filter(|i| by_name(i.1) && arch.is_none_or(|a| a == i.4))
                    .filter(|_| q.get("type").is_none_or(|t| t == "system"))
                    .map(|i| image_json(i.0))
                    .collect();
                (StatusCode::OK, page("images", items, q))
            }
            ("GET", ["v1", "images", id]) => match IMAGES.iter().find(|i| id.parse() == Ok(i.0)) {
                Some(i) => (StatusCode::OK, json!({"image": image_json(i.0)})),
                None => not_found("image", id),
            },
            ("GET", ["v1", "server_types"]) => {
                let items = (0..SERVER_TYPES.len())
                    .filter(|i| by_name(SERVER_TYPES[*i].0))
                    .map(|i| server_type_json(i, &sold_out))
                    .collect();
                (StatusCode::OK, page("server_types", items, q))
            }
            ("GET", ["v1", "server_types", id]) => {
                match id.parse::<usize>().ok().and_then(|i| server_type_index(&i.to_string())) {
                    Some(i) => (StatusCode::OK, json!({"server_type": server_type_json(i, &sold_out)})),
                    None => not_found("server_type", id),
                }
            }
            ("GET", ["v1", "locations"]) => {
                let items = (0..LOCATIONS.len()).filter(|i| by_name(LOCATIONS[*i].0)).map(location_json).collect();
                (StatusCode::OK, page("locations", items, q))
            }
            ("GET", ["v1", "locations", id]) => {
                match id.parse::<usize>().ok().filter(|i| (1..=LOCATIONS.len()).contains(i)) {
                    Some(i) => (StatusCode::OK, json!({"location": location_json(i - 1)})),
                    None => not_found("location", id),
                }
            }
            ("GET", ["v1", "datacenters"]) => {
                let items: Vec<Value> = (0..LOCATIONS.len())
                    .map(|i| datacenter_json(i, &sold_out))
                    .filter(|d| by_name(d["name"].as_str().unwrap_or_default()))
                    .collect();
                let mut answer = page("datacenters", items, q);
                answer["recommendation"] = json!(1);
                (StatusCode::OK, answer)
            }
            ("GET", ["v1", "datacenters", id]) => {
                match id.parse::<usize>().ok().filter(|i| (1..=LOCATIONS.len()).contains(i)) {
                    Some(i) => (StatusCode::OK, json!({"datacenter": datacenter_json(i - 1, &sold_out)})),
                    None => not_found("datacenter", id),
                }
            }
            ("GET", ["v1", "ssh_keys"]) => {
                let items = self
                    .ssh_keys
                    .iter()
                    .filter(|(_, (n, _))| by_name(n))
                    .map(|(id, (n, k))| ssh_key_json(*id, n, k))
                    .collect();
                (StatusCode::OK, page("ssh_keys", items, q))
            }
            ("POST", ["v1", "ssh_keys"]) => {
                let (Some(name), Some(key)) = (body["name"].as_str(), body["public_key"].as_str()) else {
                    return invalid("name", "name and public_key are required");
                };
                if !key.starts_with("ssh-") {
                    return invalid("public_key", "invalid public key");
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
                let items = self
                    .firewalls
                    .iter()
                    .filter(|(_, (n, _))| by_name(n))
                    .map(|(id, (n, rules))| firewall_json(*id, n, rules))
                    .collect();
                (StatusCode::OK, page("firewalls", items, q))
            }
            ("POST", ["v1", "firewalls"]) => {
                let Some(name) = body["name"].as_str() else {
                    return invalid("name", "name is required");
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
        let Some(name) = body["name"].as_str() else { return invalid("name", "Missing data for required field.") };
        if !valid_server_name(name) {
            return invalid("name", "must be a valid hostname (RFC 1123) of at most 63 characters");
        }
        let text = |v: &Value| v.as_str().map(String::from).or_else(|| v.as_i64().map(|i| i.to_string()));
        let Some(type_i) = text(&body["server_type"]).and_then(|t| server_type_index(&t)) else {
            return invalid("server_type", "server type not found");
        };
        let server_type = SERVER_TYPES[type_i].0;
        let arch = SERVER_TYPES[type_i].1;
        let Some(image) = text(&body["image"])
            .and_then(|i| IMAGES.iter().find(|x| (x.1 == i && x.4 == arch) || i.parse() == Ok(x.0)).map(|x| x.0))
        else {
            return invalid("image", &format!("image not found for architecture {arch}"));
        };
        let location = match (text(&body["location"]), text(&body["datacenter"])) {
            (Some(l), _) => match location_index(&l) {
                Some(i) => LOCATIONS[i].0,
                None => return invalid("location", "location not found"),
            },
            (None, Some(dc)) => match LOCATIONS.iter().find(|l| dc.starts_with(l.0)) {
                Some(l) => l.0,
                None => return invalid("datacenter", "datacenter not found"),
            },
            (None, None) => "fsn1",
        };
        let labels: BTreeMap<String, String> = match &body["labels"] {
            Value::Null => BTreeMap::new(),
            v => match serde_json::from_value(v.clone()) {
                Ok(l) => l,
                Err(_) => return invalid("labels", "labels are an object of strings"),
            },
        };
        if let Some(e) = labels.iter().find_map(|(k, v)| crate::kube::admit::label_problem(k, v)) {
            return invalid("labels", &e);
        }
        let mut ssh_keys = Vec::new();
        for k in body["ssh_keys"].as_array().into_iter().flatten() {
            let found = match k {
                Value::String(n) => self
                    .ssh_keys
                    .iter()
                    .find(|(id, (name, _))| name == n || n.parse() == Ok(**id))
                    .map(|(_, (n, _))| n.clone()),
                Value::Number(id) => id.as_i64().and_then(|id| self.ssh_keys.get(&id)).map(|(n, _)| n.clone()),
                _ => None,
            };
            match found {
                Some(n) => ssh_keys.push(n),
                None => return invalid("ssh_keys", &format!("SSH key {k} not found")),
            }
        }
        let mut firewalls = Vec::new();
        for f in body["firewalls"].as_array().into_iter().flatten() {
            match f["firewall"].as_i64().filter(|id| self.firewalls.contains_key(id)) {
                Some(id) => firewalls.push(id),
                None => return invalid("firewalls", &format!("firewall {} not found", f["firewall"])),
            }
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
        let user_data = match &body["user_data"] {
            Value::Null => "",
            Value::String(u) => u.as_str(),
            _ => return invalid("user_data", "a string"),
        };
        if user_data.len() > 32 * 1024 {
            return invalid("user_data", "user_data is longer than 32 KiB");
        }
        let id = self.id();
        let server = Server {
            id,
            name: name.into(),
            server_type: server_type.into(),
            location: location.into(),
            labels,
            user_data: user_data.into(),
            ssh_keys,
            firewalls,
            image,
            status: "initializing",
            created: now_rfc3339(),
        };
        let json = server.json(&self.sold_out);
        self.servers.insert(id, server);
        let failing = self.failing_creates > 0;
        self.failing_creates = self.failing_creates.saturating_sub(1);
        let error = failing.then(|| "the server could not be started (injected failure)".to_string());
        let action = self.action("create_server", id, self.boot, error);
        let start = self.action("start_server", id, self.boot, None);
        (StatusCode::CREATED, json!({"server": json, "action": action, "next_actions": [start], "root_password": null}))
    }

    /// Ends the actions whose time came: a server whose create succeeded runs (and boots); one whose
    /// delete ended is gone.
    fn tick(&mut self) -> Vec<Booted> {
        let now = Instant::now();
        let mut booted = Vec::new();
        for a in self.actions.values_mut() {
            if a.booted || now < a.done_at {
                continue;
            }
            match a.command.as_str() {
                "create_server" => {
                    a.booted = true;
                    if let Some(s) = self.servers.get_mut(&a.server).filter(|s| s.status == "initializing") {
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
                "delete_server" => {}
                _ => a.booted = true,
            }
        }
        self.settle_deletes();
        booted
    }

    /// Servers whose delete action ended are gone (before any answer says the action succeeded).
    fn settle_deletes(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        for a in self.actions.values_mut().filter(|a| a.command == "delete_server" && !a.booted && now >= a.done_at) {
            a.booted = true;
            gone.push(a.server);
        }
        for id in gone {
            if let Some(s) = self.servers.remove(&id) {
                self.deleted.push((s.id, s.name));
            }
        }
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
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            delete_time: Duration::from_millis(300),
            ..State::default()
        }));
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
                let mut state = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
                            state.handle(&parts.method, parts.uri.path(), parts.uri.query(), &bytes)
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

    /// How long a delete action runs (the server is `deleting` meanwhile).
    pub fn set_delete_time(&self, d: Duration) {
        self.with(|s| s.delete_time = d);
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
                    image: IMAGES[0].0,
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
        let sel = |s: &str| selects(s, &l).unwrap();
        assert!(sel("a=1") && sel("a==1,b") && sel("a!=2,!c") && sel("") && sel("a in (1,3)") && sel("b notin (1)"));
        assert!(!sel("a=2") && !sel("c") && !sel("!a") && !sel("a=1,b=3") && !sel("a in (2,3)"));
        assert!(selects("a in 1", &l).is_err());
    }

    #[test]
    fn percent_decoding() {
        use crate::kube::percent_decode;
        assert_eq!(percent_decode("outpost-id%3Dweb-1%2Cplan"), "outpost-id=web-1,plan");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
