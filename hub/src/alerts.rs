//! Alerts: rules as data (`[[alerts.rules]]` in hubd.toml, built-in defaults), evaluated every
//! `eval_secs` against what the hub knows (each server's liveness, latest health, certificate and apps
//! state; the lifecycle queue). An alert is identified by its labels (rule, severity, server, customer,
//! plan); it is pending until its condition held for `for_secs`, then firing until the condition clears,
//! then resolved. Firing alerts are sent to a Prometheus Alertmanager (v2 API) on every evaluation, as
//! Alertmanager expects, and a resolved one once with its end time; routing, grouping, inhibition,
//! silences and notifications (Slack, e-mail, PagerDuty) are Alertmanager's. Every fire and resolve is
//! audited (kind `alert`): that is the history.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_common::text;
use serde::Deserialize;

use crate::audit::{Audit, AuditEntry, Kind};
use crate::fleet::Fleet;
use crate::lifecycle::Lifecycle;
use crate::runtime::Runtime;

/// Per-server metrics a rule may use.
pub const SERVER_METRICS: [&str; 9] = [
    "server_offline_seconds",
    "disk_used_percent",
    "memory_used_percent",
    "certificate_expires_in_seconds",
    "k3s_ready",
    "apps_failing",
    // Per app (an alert each, labelled with the app): 1 when it is crash-looping, degraded or its rollout
    // failed.
    "app_failing",
    // The customer's projects' highest use of the plan (CPU average, memory peak, database) this hour.
    "usage_over_plan_percent",
    // 1 when the server's agentd is not the hub's version.
    "agent_version_skew",
];
/// Hub-wide metrics a rule may use.
pub const HUB_METRICS: [&str; 3] = ["job_queue_pending", "job_failure_rate_percent", "provisions_failed_last_hour"];

/// `[alerts]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub eval_secs: u64,
    /// Alertmanager's base URL (`http://127.0.0.1:9093`); none: alerts are evaluated, audited and listed only.
    pub alertmanager_url: Option<String>,
    /// How long a delivery to Alertmanager may take; one that does not answer in time is tried again on
    /// the next round (delivery runs apart from evaluation: a hanging Alertmanager delays nothing else).
    pub alertmanager_timeout_secs: u64,
    /// Replaces the built-in rules when given.
    pub rules: Vec<Rule>,
    /// For installs without Alertmanager: each fire and resolve is POSTed here once (retried with backoff;
    /// after `webhook_attempts` it is recorded as a dead letter in the audit log).
    pub webhook_url: Option<String>,
    /// `generic` (JSON with the alert's fields) or `slack` (a Slack-compatible `{"text": …}`).
    pub webhook_format: String,
    pub webhook_attempts: u32,
    pub webhook_backoff_initial_ms: u64,
    pub webhook_backoff_max_ms: u64,
    /// Flap damping, on every delivery path: a firing alert resolves only once its condition has been clear
    /// this long. A condition that comes back sooner keeps the alert firing (no resolve and fire again, so
    /// no second page), and each such return is counted (`outpost_alert_flaps_damped_total`).
    pub resolve_after_secs: u64,
}

/// One rule: `metric op threshold`, held for `for_secs`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub metric: String,
    /// `>`, `>=`, `<`, `<=`.
    pub op: String,
    pub threshold: f64,
    #[serde(default)]
    pub for_secs: u64,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    /// What a person should do, in the notification.
    #[serde(default)]
    pub action: String,
    /// Where the rule applies: every label given must match (`labels = { plan = "team" }`); the labels are
    /// customer, plan, server and app (per-app metrics only). None: everywhere.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The labels a rule may be scoped by.
pub const RULE_LABELS: [&str; 4] = ["customer", "plan", "server", "app"];

impl Rule {
    /// Whether the rule applies to this server (and app).
    fn applies(&self, rec: &crate::store::ServerRecord, app: Option<&str>) -> bool {
        self.labels.iter().all(|(k, v)| match k.as_str() {
            "customer" => &rec.customer == v,
            "plan" => &rec.plan == v,
            "server" => &rec.name == v,
            "app" => app == Some(v.as_str()),
            _ => false,
        })
    }
}

fn rule(name: &str, metric: &str, op: &str, threshold: f64, for_secs: u64, severity: &str, action: &str) -> Rule {
    Rule {
        name: name.into(),
        metric: metric.into(),
        op: op.into(),
        threshold,
        for_secs,
        severity: severity.into(),
        action: action.into(),
        labels: BTreeMap::new(),
    }
}

/// The built-in rules.
pub fn default_rules() -> Vec<Rule> {
    vec![
        rule(
            "server_lost",
            "server_offline_seconds",
            ">",
            300.0,
            0,
            "critical",
            "check the server in the cloud console; `outpost server NAME` shows when it was last seen",
        ),
        rule(
            "disk_full",
            "disk_used_percent",
            ">",
            90.0,
            0,
            "warning",
            "free space on the server (logs, images) or move the customer to a bigger plan",
        ),
        rule(
            "memory_high",
            "memory_used_percent",
            ">",
            95.0,
            300,
            "warning",
            "look at the apps' memory (`outpost apps --on NAME`)",
        ),
        rule(
            "certificate_expiring",
            "certificate_expires_in_seconds",
            "<",
            21_600.0,
            0,
            "critical",
            "renewal is failing: `outpost run rotate-cert --on NAME`, or re-enroll the agent",
        ),
        rule("k3s_not_ready", "k3s_ready", "<", 1.0, 300, "warning", "`outpost run k3s-status --on NAME`"),
        rule(
            "app_failing",
            "app_failing",
            ">",
            0.0,
            0,
            "warning",
            "`outpost apps --on NAME --failing`; roll back with `outpost rollback`",
        ),
        rule(
            "usage_over_plan",
            "usage_over_plan_percent",
            ">",
            100.0,
            900,
            "warning",
            "`outpost usage --customer CUSTOMER` shows what is over; offer the next plan",
        ),
        rule(
            "agent_version_skew",
            "agent_version_skew",
            ">",
            0.0,
            3600,
            "info",
            "install the hub's agentd on the server (served at /artifacts/agentd/VERSION/ARCH) or re-provision it",
        ),
        rule(
            "job_queue_long",
            "job_queue_pending",
            ">",
            50.0,
            300,
            "warning",
            "`outpost jobs list`: is the cloud API failing or rate limiting?",
        ),
        rule(
            "job_failures",
            "job_failure_rate_percent",
            ">",
            5.0,
            0,
            "warning",
            "`outpost jobs list`: read the failed jobs' errors",
        ),
        rule(
            "provision_failed",
            "provisions_failed_last_hour",
            ">",
            0.0,
            0,
            "warning",
            "`outpost jobs list`; the customer is waiting for a server",
        ),
    ]
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            eval_secs: 15,
            alertmanager_url: None,
            alertmanager_timeout_secs: 10,
            rules: default_rules(),
            webhook_url: None,
            webhook_format: "generic".into(),
            webhook_attempts: 8,
            webhook_backoff_initial_ms: 1000,
            webhook_backoff_max_ms: 60_000,
            resolve_after_secs: 60,
        }
    }
}

impl AlertsConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=300).contains(&self.alertmanager_timeout_secs) {
            p.push(format!("alerts.alertmanager_timeout_secs: {} is outside 1..=300", self.alertmanager_timeout_secs));
        }
        if !(1..=3600).contains(&self.eval_secs) {
            p.push(format!("alerts.eval_secs: {} is outside 1..=3600", self.eval_secs));
        }
        if let Some(u) = &self.alertmanager_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            p.push(format!("alerts.alertmanager_url {u:?}: an http:// or https:// URL"));
        }
        if let Some(u) = &self.webhook_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            p.push(format!("alerts.webhook_url {u:?}: an http:// or https:// URL"));
        }
        if self.resolve_after_secs > 86_400 {
            p.push(format!("alerts.resolve_after_secs: {} is over a day (86400)", self.resolve_after_secs));
        }
        if !["generic", "slack"].contains(&self.webhook_format.as_str()) {
            p.push(format!("alerts.webhook_format {:?}: generic or slack", self.webhook_format));
        }
        if self.webhook_attempts == 0 || self.webhook_backoff_initial_ms == 0 {
            p.push("alerts.webhook_attempts and webhook_backoff_initial_ms: at least 1".into());
        }
        for r in &self.rules {
            if !SERVER_METRICS.contains(&r.metric.as_str()) && !HUB_METRICS.contains(&r.metric.as_str()) {
                p.push(format!(
                    "alerts rule {}: unknown metric {:?}; the metrics are {}",
                    r.name,
                    r.metric,
                    SERVER_METRICS.iter().chain(HUB_METRICS.iter()).copied().collect::<Vec<_>>().join(", ")
                ));
            }
            if ![">", ">=", "<", "<="].contains(&r.op.as_str()) {
                p.push(format!("alerts rule {}: op {:?} is not one of > >= < <=", r.name, r.op));
            }
            if !["critical", "warning", "info"].contains(&r.severity.as_str()) {
                p.push(format!("alerts rule {}: severity {:?} is not critical, warning or info", r.name, r.severity));
            }
            for k in r.labels.keys() {
                if !RULE_LABELS.contains(&k.as_str()) {
                    p.push(format!(
                        "alerts rule {}: unknown label {k:?}; a rule is scoped by {}",
                        r.name,
                        RULE_LABELS.join(", ")
                    ));
                } else if HUB_METRICS.contains(&r.metric.as_str()) {
                    p.push(format!("alerts rule {}: {} is hub-wide and takes no labels", r.name, r.metric));
                } else if k == "app" && r.metric != "app_failing" {
                    p.push(format!("alerts rule {}: label app applies to the per-app metric app_failing only", r.name));
                }
            }
            if r.name.is_empty() || !r.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                p.push(format!("alerts rule {:?}: names are letters, digits and _", r.name));
            }
        }
        p
    }
}

impl Rule {
    fn holds(&self, v: f64) -> bool {
        match self.op.as_str() {
            ">" => v > self.threshold,
            ">=" => v >= self.threshold,
            "<" => v < self.threshold,
            _ => v <= self.threshold,
        }
    }
}

/// Where an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Firing,
}

/// One alert.
#[derive(Clone, Debug)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub state: State,
    /// When the condition started to hold, and when it fired.
    pub since_ms: i64,
    pub fired_ms: i64,
    pub value: f64,
    pub summary: String,
    pub action: String,
    /// The silence that keeps it from being notified, if any.
    pub silenced_by: String,
    /// Who said they are on it.
    pub acked_by: String,
    /// Its firing was notified (webhook): its resolution will be too.
    notified: bool,
    /// When its condition last held (a firing alert resolves `resolve_after_secs` after this).
    held_ms: i64,
    /// Firing, and its condition did not hold at the last round: it resolves unless the condition returns.
    clearing: bool,
}

/// The labels a silence may match.
pub const SILENCE_LABELS: [&str; 6] = ["alertname", "severity", "server", "customer", "plan", "app"];

impl Alert {
    fn key(&self) -> String {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// The engine: its alerts, and the resolved ones not delivered yet.
pub struct Alerts {
    config: AlertsConfig,
    fleet: Arc<Fleet>,
    lifecycle: Arc<Lifecycle>,
    audit: Arc<Audit>,
    active: Mutex<HashMap<String, Alert>>,
    /// Resolved alerts (with their end) waiting to reach Alertmanager.
    resolved: Mutex<Vec<(Alert, i64)>>,
    client: reqwest::Client,
    metrics: Arc<crate::metrics::Metrics>,
    /// Where notifications run (set by `spawn`).
    rt: std::sync::OnceLock<Runtime>,
    store: Arc<dyn crate::store::HubStore>,
    /// The silences (a copy of the store's).
    silences: Mutex<Vec<(String, crate::store::SilenceRecord)>>,
    usage: Arc<crate::usage::UsageBook>,
    /// When this hub last evaluated (it held the `alerts` lease).
    evaluated_ms: std::sync::atomic::AtomicI64,
}

/// The firing alerts `store` holds, by key.
async fn firing_in(store: &dyn crate::store::HubStore) -> Result<HashMap<String, Alert>, crate::store::StoreError> {
    Ok(store
        .firing_alerts()
        .await?
        .into_iter()
        .map(|(key, r)| {
            let alert = Alert {
                labels: r.labels,
                state: State::Firing,
                since_ms: r.since_ms,
                fired_ms: r.fired_ms,
                value: r.value,
                summary: r.summary,
                action: r.action,
                silenced_by: String::new(),
                acked_by: r.acked_by,
                notified: r.notified,
                held_ms: outpost_common::now_ms(),
                clearing: false,
            };
            (key, alert)
        })
        .collect())
}

/// The most of an alert's summary (which quotes agent text: an app's `last_error`) a notifier gets.
const SUMMARY_MAX: usize = 1024;
/// The most of one label value a notifier gets.
const LABEL_MAX: usize = 128;

/// Labels as a notifier gets them: every value inert and bounded (a server or app name is checked when
/// stored, but what leaves the hub is neutralised here, whatever it came from).
fn notifier_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (text::for_notifier(k, LABEL_MAX), text::for_notifier(v, LABEL_MAX))).collect()
}

/// The webhook's body for `a` going `status`. Everything in it that did not come from the hub's own words is
/// neutralised for its medium: Slack's `text` is escaped as Slack documents (`&`, `<`, `>`; no mention, no
/// link the hub did not build); the generic JSON has every text inert and bounded.
fn webhook_body(format: &str, a: &Alert, status: &str, now_ms: i64) -> serde_json::Value {
    let labels = notifier_labels(&a.labels);
    let l = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let summary = text::for_notifier(&a.summary, SUMMARY_MAX);
    let head = |l: &dyn Fn(&str) -> String| {
        format!(
            "[{} {}] {}{} since {}",
            status.to_uppercase(),
            l("severity"),
            l("alertname"),
            if l("server").is_empty() { String::new() } else { format!(" on {}", l("server")) },
            outpost_common::when::rfc3339(a.since_ms),
        )
    };
    match format {
        "slack" => {
            let s = |k: &str| text::for_slack(&l(k), LABEL_MAX);
            let line = format!(
                "{}: {} — what to do: {}",
                head(&s),
                text::for_slack(&a.summary, SUMMARY_MAX),
                text::for_slack(&a.action, SUMMARY_MAX)
            );
            // `parse: none`: Slack links and mentions nothing in the text by itself.
            serde_json::json!({ "text": line, "parse": "none", "unfurl_links": false, "unfurl_media": false })
        }
        _ => {
            let action = text::for_notifier(&a.action, SUMMARY_MAX);
            let line = format!("{}: {summary} — what to do: {action}", head(&l));
            serde_json::json!({
                "status": status, "labels": labels, "summary": summary, "action": action,
                "since": outpost_common::when::rfc3339(a.since_ms), "at": outpost_common::when::rfc3339(now_ms), "text": line,
            })
        }
    }
}

impl Alerts {
    pub async fn new(
        config: AlertsConfig,
        fleet: Arc<Fleet>,
        lifecycle: Arc<Lifecycle>,
        audit: Arc<Audit>,
        (metrics, store, usage): (
            Arc<crate::metrics::Metrics>,
            Arc<dyn crate::store::HubStore>,
            Arc<crate::usage::UsageBook>,
        ),
    ) -> Alerts {
        let silences = Mutex::new(store.silences().await.unwrap_or_else(|error| {
            tracing::error!(%error, "cannot read the silences; starting without them");
            Vec::new()
        }));
        // The alerts that were firing when the hub stopped: not fired (nor notified) again, acks kept.
        let active = firing_in(&*store).await.unwrap_or_else(|error| {
            tracing::error!(%error, "cannot read the firing alerts; they fire again");
            HashMap::new()
        });
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        Alerts {
            config,
            fleet,
            lifecycle,
            audit,
            active: Mutex::new(active),
            resolved: Mutex::default(),
            client,
            metrics,
            rt: std::sync::OnceLock::new(),
            store,
            silences,
            usage,
            // As if it had just evaluated: a hub that never gets the lease mirrors after three rounds.
            evaluated_ms: std::sync::atomic::AtomicI64::new(outpost_common::now_ms()),
        }
    }

    /// On a hub that does not evaluate (another hub of the same store holds the `alerts` lease): the
    /// alerts and silences as the evaluating hub stored them, so every hub lists the same alerts, and
    /// one that takes the lease over goes on from there.
    async fn mirror(&self, now_ms: i64) {
        let led = self.evaluated_ms.load(std::sync::atomic::Ordering::Relaxed);
        if now_ms - led < 3 * 1000 * self.config.eval_secs as i64 {
            return;
        }
        match (firing_in(&*self.store).await, self.store.silences().await) {
            (Ok(active), Ok(silences)) => {
                *self.active.lock().unwrap_or_else(|p| p.into_inner()) = active;
                *self.silences.lock().unwrap_or_else(|p| p.into_inner()) = silences;
            }
            (Err(error), _) | (_, Err(error)) => tracing::warn!(%error, "cannot read the alerts another hub stored"),
        }
    }

    /// Acknowledgements stored by another hub of the same store (where an operator acknowledged an alert
    /// this hub evaluates), taken into the alerts they acknowledge.
    async fn take_stored_acks(&self) {
        let stored = match self.store.firing_alerts().await {
            Ok(s) => s,
            Err(error) => return tracing::warn!(%error, "cannot read the stored alerts' acknowledgements"),
        };
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        for (key, r) in stored {
            if let Some(a) = active.get_mut(&key).filter(|a| a.state == State::Firing && a.acked_by.is_empty()) {
                a.acked_by = r.acked_by;
            }
        }
    }

    /// Evaluates and delivers every `eval_secs`.
    pub fn spawn(self: &Arc<Self>, rt: &Runtime) {
        let _ = self.rt.set(rt.clone());
        let me = self.clone();
        rt.every_once("alerts", Duration::from_secs(self.config.eval_secs), move || {
            let me = me.clone();
            async move { me.evaluate(outpost_common::now_ms()).await }
        });
        let me = self.clone();
        rt.every("alerts mirror", Duration::from_secs(self.config.eval_secs), move || {
            let me = me.clone();
            async move { me.mirror(outpost_common::now_ms()).await }
        });
        // The same lease as evaluation: delivery sends what this replica's evaluation found.
        let me = self.clone();
        rt.every_once("alerts", Duration::from_secs(self.config.eval_secs), move || {
            let me = me.clone();
            async move { me.deliver().await }
        });
    }

    /// The alerts now, firing first.
    pub fn list(&self) -> Vec<Alert> {
        let mut v: Vec<Alert> = self.active.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by_key(|a| (a.state != State::Firing, a.since_ms));
        v
    }

    /// Firing alerts by severity.
    pub fn firing_by_severity(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for a in self.list().into_iter().filter(|a| a.state == State::Firing) {
            *m.entry(a.labels.get("severity").cloned().unwrap_or_default()).or_insert(0) += 1;
        }
        m
    }

    /// Every (rule, labels, value, summary) whose condition holds now.
    async fn conditions(&self, now_ms: i64) -> Vec<(Rule, BTreeMap<String, String>, f64, String)> {
        let mut out = Vec::new();
        let views = self.fleet.registry().list();
        let over_plan = self.usage.over_plan();
        for r in self.config.rules.iter().filter(|r| SERVER_METRICS.contains(&r.metric.as_str())) {
            for v in &views {
                let rec = &v.record;
                if rec.suspended_ms > 0 || rec.revoked_ms > 0 || rec.agent_id.is_empty() {
                    continue; // deprovisioned, revoked or never enrolled: nothing to watch
                }
                let h = v.health.as_ref();
                let labels = |app: Option<&str>| -> BTreeMap<String, String> {
                    [
                        ("alertname", r.name.clone()),
                        ("severity", r.severity.clone()),
                        ("server", rec.name.clone()),
                        ("customer", rec.customer.clone()),
                        ("plan", rec.plan.clone()),
                    ]
                    .into_iter()
                    .chain(app.map(|a| ("app", a.to_string())))
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
                };
                // A per-app rule scoped by app is checked app by app below.
                let per_app_scope = r.metric == "app_failing" && r.labels.contains_key("app");
                if !per_app_scope && !r.applies(rec, None) {
                    continue;
                }
                if r.metric == "app_failing" {
                    for a in v.apps.iter().flat_map(|s| s.apps.iter()).filter(|a| r.applies(rec, Some(&a.name))) {
                        let value = f64::from(u8::from(a.phase == "failed" || a.phase == "degraded"));
                        if r.holds(value) {
                            let why = if a.last_error.is_empty() { a.phase.clone() } else { a.last_error.clone() };
                            let summary = format!("{} on {}: app {} is {}: {why}", r.name, rec.name, a.name, a.phase);
                            out.push((r.clone(), labels(Some(&a.name)), value, summary));
                        }
                    }
                    continue;
                }
                let value = match r.metric.as_str() {
                    "server_offline_seconds" => {
                        Some(v.offline_since_ms().map_or(0.0, |since| (now_ms - since).max(0) as f64 / 1000.0))
                    }
                    "disk_used_percent" => h.and_then(|h| {
                        h.disks
                            .iter()
                            .filter(|d| d.total_bytes > 0)
                            .map(|d| {
                                100.0 * (d.total_bytes - d.available_bytes.min(d.total_bytes)) as f64
                                    / d.total_bytes as f64
                            })
                            .reduce(f64::max)
                    }),
                    "memory_used_percent" => h
                        .filter(|h| h.mem_total_bytes > 0)
                        .map(|h| 100.0 * h.mem_used_bytes as f64 / h.mem_total_bytes as f64),
                    "certificate_expires_in_seconds" => {
                        (rec.cert_not_after > 0).then(|| (rec.cert_not_after * 1000 - now_ms) as f64 / 1000.0)
                    }
                    "k3s_ready" => {
                        v.apps.as_ref().and_then(|a| a.cluster.as_ref()).map(|c| f64::from(u8::from(c.ready)))
                    }
                    "usage_over_plan_percent" => over_plan.get(&rec.name).copied(),
                    "agent_version_skew" => (!rec.agent_version.is_empty())
                        .then(|| f64::from(u8::from(rec.agent_version != env!("CARGO_PKG_VERSION")))),
                    "apps_failing" => v
                        .apps
                        .as_ref()
                        .map(|a| a.apps.iter().filter(|x| x.phase == "failed" || x.phase == "degraded").count() as f64),
                    _ => None,
                };
                let Some(value) = value else { continue };
                if r.holds(value) {
                    let summary =
                        format!("{} on {}: {} is {value:.1} ({} {})", r.name, rec.name, r.metric, r.op, r.threshold);
                    out.push((r.clone(), labels(None), value, summary));
                }
            }
        }
        if let Ok(s) = self.lifecycle.stats().await {
            for r in self.config.rules.iter().filter(|r| HUB_METRICS.contains(&r.metric.as_str())) {
                let value = match r.metric.as_str() {
                    "job_queue_pending" => s.pending as f64,
                    "job_failure_rate_percent" if s.finished_last_hour > 0 => {
                        100.0 * s.failed_last_hour as f64 / s.finished_last_hour as f64
                    }
                    "job_failure_rate_percent" => 0.0,
                    _ => s.provisions_failed_last_hour as f64,
                };
                if r.holds(value) {
                    let labels = [("alertname", r.name.clone()), ("severity", r.severity.clone())]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                    let summary = format!("{}: {} is {value:.1} ({} {})", r.name, r.metric, r.op, r.threshold);
                    out.push((r.clone(), labels, value, summary));
                }
            }
        }
        out
    }

    /// One evaluation at `now_ms`: new conditions become pending, held ones fire, cleared ones resolve.
    pub async fn evaluate(&self, now_ms: i64) {
        self.evaluated_ms.store(now_ms, std::sync::atomic::Ordering::Relaxed);
        self.take_stored_acks().await;
        let started = std::time::Instant::now();
        let holding = self.conditions(now_ms).await;
        self.metrics.alerts_evaluated(started.elapsed());
        let mut fired = Vec::new();
        let mut gone = Vec::new();
        let mut to_notify = Vec::new();
        {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = std::collections::HashSet::new();
            for (rule, labels, value, summary) in holding {
                let alert = Alert {
                    labels,
                    state: State::Pending,
                    since_ms: now_ms,
                    fired_ms: 0,
                    value,
                    summary,
                    action: rule.action.clone(),
                    silenced_by: String::new(),
                    acked_by: String::new(),
                    notified: false,
                    held_ms: now_ms,
                    clearing: false,
                };
                let key = alert.key();
                seen.insert(key.clone());
                let a = active.entry(key).or_insert(alert.clone());
                if a.clearing {
                    // Clear for a while, and back before it could resolve: a flap, not a new alert.
                    self.metrics.alert_flap_damped();
                    a.clearing = false;
                }
                a.held_ms = now_ms;
                a.value = alert.value;
                a.summary = alert.summary;
                if a.state == State::Pending && now_ms - a.since_ms >= (rule.for_secs * 1000) as i64 {
                    a.state = State::Firing;
                    a.fired_ms = now_ms;
                    fired.push(a.clone());
                }
            }
            let resolve_after = (self.config.resolve_after_secs * 1000) as i64;
            active.retain(|k, a| {
                let held = seen.contains(k);
                let keep = held || (a.state == State::Firing && now_ms - a.held_ms < resolve_after);
                a.clearing = !held && keep;
                if !keep && a.state == State::Firing {
                    gone.push(a.clone());
                }
                keep
            });
            let silences = self.silences.lock().unwrap_or_else(|p| p.into_inner());
            for a in active.values_mut() {
                a.silenced_by = silences
                    .iter()
                    .find(|(_, s)| s.expires_ms > now_ms && s.matchers.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
                    .map(|(id, _)| id.clone())
                    .unwrap_or_default();
                // Notified once, when it fires, or when a silence over it ends.
                if a.state == State::Firing && a.silenced_by.is_empty() && !a.notified {
                    a.notified = true;
                    to_notify.push(a.clone());
                }
            }
        }
        for a in &to_notify {
            self.notify(a, "firing", now_ms);
        }
        for a in &fired {
            tracing::warn!(alert = %a.key(), summary = %a.summary, "alert firing");
            self.record(a, "fired").await;
        }
        let mut changed: Vec<&Alert> = fired.iter().collect();
        changed.extend(to_notify.iter().filter(|n| !fired.iter().any(|f| f.key() == n.key())));
        for a in changed {
            self.keep(a, true).await;
        }
        for a in gone {
            tracing::info!(alert = %a.key(), "alert resolved");
            self.keep(&a, false).await;
            self.record(&a, "resolved").await;
            if a.notified {
                self.notify(&a, "resolved", now_ms);
            }
            self.resolved.lock().unwrap_or_else(|p| p.into_inner()).push((a, now_ms));
        }
    }

    /// Stores a firing alert as it now is (`firing`), or forgets a resolved one.
    async fn keep(&self, a: &Alert, firing: bool) {
        let record = crate::store::AlertRecord {
            labels: a.labels.clone(),
            since_ms: a.since_ms,
            fired_ms: a.fired_ms,
            value: a.value,
            summary: a.summary.clone(),
            action: a.action.clone(),
            acked_by: a.acked_by.clone(),
            notified: a.notified,
        };
        if let Err(error) = self.store.put_alert(&a.key(), firing.then_some(&record)).await {
            tracing::error!(%error, alert = %a.key(), "cannot store the alert; a restart may notify it again");
        }
    }

    /// One notification to the webhook, on its own task: retried with exponential backoff and full jitter,
    /// then a dead letter (audited) when it never got through.
    fn notify(&self, a: &Alert, status: &str, now_ms: i64) {
        let Some(url) = self.config.webhook_url.clone() else { return };
        let Some(rt) = self.rt.get() else { return };
        let body = webhook_body(&self.config.webhook_format, a, status, now_ms);
        let (client, audit, cfg, alert) = (self.client.clone(), self.audit.clone(), self.config.clone(), a.clone());
        let status = status.to_string();
        rt.spawn(async move {
            let mut last = String::new();
            for attempt in 1..=cfg.webhook_attempts {
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => last = format!("HTTP {}", r.status()),
                    Err(e) => last = e.to_string(),
                }
                if attempt < cfg.webhook_attempts {
                    let wait = outpost_common::backoff::full_jitter(
                        attempt - 1,
                        Duration::from_millis(cfg.webhook_backoff_initial_ms),
                        Duration::from_millis(cfg.webhook_backoff_max_ms),
                    );
                    tokio::time::sleep(wait).await;
                }
            }
            tracing::error!(%url, error = %last, "alert notification undeliverable; recorded as a dead letter");
            let entry = AuditEntry {
                operator: "alerts".into(),
                kind: Kind::Alert,
                action: alert.labels.get("alertname").cloned().unwrap_or_default(),
                args: alert.labels.clone(),
                servers: alert.labels.get("server").cloned().into_iter().collect(),
                message: format!(
                    "dead letter: the {status} notification never reached the webhook after {} attempts ({last})",
                    cfg.webhook_attempts
                ),
                ..Default::default()
            };
            let _ = audit.append(entry).await;
        });
    }

    /// Silences alerts whose labels include every matcher, for `duration`.
    pub async fn silence(
        &self,
        matchers: BTreeMap<String, String>,
        duration: Duration,
        comment: &str,
        by: &str,
    ) -> Result<(String, crate::store::SilenceRecord), crate::error::HubError> {
        let mut problems = Vec::new();
        if matchers.is_empty() {
            problems.push("a silence needs at least one matcher (e.g. alertname=disk_full); an empty one would silence everything".to_string());
        }
        for (k, v) in &matchers {
            if !SILENCE_LABELS.contains(&k.as_str()) {
                problems.push(format!("matcher label {:?}: one of {}", k, SILENCE_LABELS.join(", ")));
            }
            if v.is_empty() || v.len() > 128 || !outpost_common::text::is_printable(v) {
                problems.push(format!("matcher {k}: a value of 1-128 printable characters"));
            }
        }
        if duration < Duration::from_secs(60) || duration > Duration::from_secs(30 * 86_400) {
            problems.push(format!(
                "duration {}s: between 1 minute and 30 days (an expiry in the past silences nothing)",
                duration.as_secs()
            ));
        }
        if comment.trim().is_empty() || comment.len() > 500 || !outpost_common::text::is_printable(comment) {
            problems.push("comment: say why (1-500 printable characters)".into());
        }
        if !problems.is_empty() {
            return Err(crate::error::HubError::Invalid(problems.join("; ")));
        }
        let now = outpost_common::now_ms();
        let id = format!("s-{}", outpost_common::random_hex::<6>());
        let record = crate::store::SilenceRecord {
            matchers,
            starts_ms: now,
            expires_ms: now + duration.as_millis() as i64,
            creator: by.into(),
            comment: comment.into(),
        };
        self.put(
            &id,
            &record,
            by,
            format!("silenced until {}: {comment}", outpost_common::when::rfc3339(record.expires_ms)),
        )
        .await?;
        Ok((id, record))
    }

    /// Ends silence `id` now.
    pub async fn expire_silence(
        &self,
        id: &str,
        by: &str,
    ) -> Result<crate::store::SilenceRecord, crate::error::HubError> {
        let found = self
            .silences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, s)| s.clone());
        let mut record = found.ok_or_else(|| {
            crate::error::HubError::NotFound(format!("no silence {}", outpost_common::text::excerpt(id, 32)))
        })?;
        record.expires_ms = record.expires_ms.min(outpost_common::now_ms());
        self.put(id, &record, by, "silence ended".into()).await?;
        Ok(record)
    }

    async fn put(
        &self,
        id: &str,
        record: &crate::store::SilenceRecord,
        by: &str,
        message: String,
    ) -> Result<(), crate::error::HubError> {
        let audit = AuditEntry {
            operator: by.into(),
            kind: Kind::Alert,
            action: "silence".into(),
            args: record.matchers.clone(),
            message: format!("{id}: {message}"),
            ..Default::default()
        };
        self.store.put_silence(id, record, audit).await?;
        let mut all = self.silences.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(i, _)| i != id);
        all.push((id.to_string(), record.clone()));
        Ok(())
    }

    /// The silences not expired yet.
    pub fn active_silences(&self) -> Vec<(String, crate::store::SilenceRecord)> {
        let now = outpost_common::now_ms();
        self.silences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, s)| s.expires_ms > now)
            .cloned()
            .collect()
    }

    /// Marks the firing alerts `alertname` (on `server`, when given) acknowledged by `by`. Returns how many.
    pub async fn ack(&self, alertname: &str, server: &str, by: &str) -> Result<usize, crate::error::HubError> {
        let acked: Vec<Alert> = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            active
                .values_mut()
                .filter(|a| {
                    a.state == State::Firing
                        && a.labels.get("alertname").map(String::as_str) == Some(alertname)
                        && (server.is_empty() || a.labels.get("server").map(String::as_str) == Some(server))
                })
                .map(|a| {
                    a.acked_by = by.to_string();
                    a.clone()
                })
                .collect()
        };
        if acked.is_empty() {
            return Err(crate::error::HubError::NotFound(format!(
                "no firing alert {}{}",
                outpost_common::text::excerpt(alertname, 64),
                if server.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", outpost_common::text::excerpt(server, 64))
                }
            )));
        }
        for a in &acked {
            self.keep(a, true).await;
            let entry = AuditEntry {
                operator: by.into(),
                kind: Kind::Alert,
                action: alertname.into(),
                args: a.labels.clone(),
                servers: a.labels.get("server").cloned().into_iter().collect(),
                message: format!("acknowledged: {}", a.summary),
                ..Default::default()
            };
            self.audit.append(entry).await?;
        }
        Ok(acked.len())
    }

    async fn record(&self, a: &Alert, what: &str) {
        let entry = AuditEntry {
            operator: "alerts".into(),
            kind: Kind::Alert,
            action: a.labels.get("alertname").cloned().unwrap_or_default(),
            args: a.labels.clone(),
            servers: a.labels.get("server").cloned().into_iter().collect(),
            message: format!("{what}: {}", a.summary),
            ..Default::default()
        };
        if let Err(error) = self.audit.append(entry).await {
            tracing::warn!(%error, "cannot audit an alert");
        }
    }

    /// Sends firing alerts, and resolved ones not sent yet, to Alertmanager (`POST /api/v2/alerts`).
    pub async fn deliver(&self) {
        let Some(base) = &self.config.alertmanager_url else { return };
        let firing: Vec<Alert> =
            self.list().into_iter().filter(|a| a.state == State::Firing && a.silenced_by.is_empty()).collect();
        let resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if firing.is_empty() && resolved.is_empty() {
            return;
        }
        let time = |ms: i64| outpost_common::when::rfc3339(ms);
        let body: Vec<serde_json::Value> = firing
            .iter()
            .map(|a| (a, None))
            .chain(resolved.iter().map(|(a, end)| (a, Some(*end))))
            .map(|(a, end)| {
                let mut v = serde_json::json!({
                    "labels": notifier_labels(&a.labels),
                    "annotations": {
                        "summary": text::for_notifier(&a.summary, SUMMARY_MAX),
                        "description": text::for_notifier(&format!("since {}; what to do: {}", time(a.since_ms), a.action), SUMMARY_MAX),
                    },
                    "startsAt": time(a.since_ms),
                    "generatorURL": "",
                });
                if let Some(end) = end {
                    v["endsAt"] = serde_json::json!(time(end));
                }
                v
            })
            .collect();
        let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
        let timeout = Duration::from_secs(self.config.alertmanager_timeout_secs);
        match self.client.post(&url).timeout(timeout).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                self.metrics.alert_delivery("delivered");
                let sent = resolved.len();
                self.resolved.lock().unwrap_or_else(|p| p.into_inner()).drain(..sent);
            }
            Ok(r) => {
                self.metrics.alert_delivery("refused");
                let status = r.status();
                let said = r.text().await.unwrap_or_default();
                tracing::warn!(%status, %url, answer = %outpost_common::text::excerpt(&said, 200), "Alertmanager refused the alerts; they are sent again next round");
            }
            Err(error) => {
                self.metrics.alert_delivery("unreachable");
                let why = if error.is_timeout() {
                    format!("no answer within {}s", timeout.as_secs())
                } else {
                    error.to_string()
                };
                tracing::warn!(error = %why, %url, "Alertmanager unreachable; the alerts are sent again next round")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(summary: &str) -> Alert {
        let labels: BTreeMap<String, String> =
            [("alertname", "app_failing"), ("severity", "warning"), ("server", "web-1"), ("app", "<!here>")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        Alert {
            labels,
            state: State::Firing,
            since_ms: 1_700_000_000_000,
            fired_ms: 1_700_000_000_000,
            value: 1.0,
            summary: summary.into(),
            action: "`outpost run app-logs`".into(),
            silenced_by: String::new(),
            acked_by: String::new(),
            notified: false,
            held_ms: 0,
            clearing: false,
        }
    }

    const HOSTILE: &str = "crash: <!channel> <@U123ABC> <!here> @everyone <https://evil.example/login|click to re-auth> \u{1b}]8;;https://evil.example\u{7}";

    #[test]
    fn agent_text_reaches_a_slack_webhook_escaped_bounded_and_without_links_or_mentions() {
        let body = webhook_body("slack", &alert(HOSTILE), "firing", 1_700_000_001_000);
        let text = body["text"].as_str().unwrap();
        for obeyed in ["<!channel>", "<@U123ABC>", "<!here>", "<https://", "@everyone", "https://", "\u{1b}"] {
            assert!(!text.contains(obeyed), "{obeyed:?} reached Slack as is: {text}");
        }
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(text.contains("&lt;!channel&gt;") && text.contains("click to re-auth"), "shown, not obeyed: {text}");
        assert_eq!(body["parse"], "none");
        let long = webhook_body("slack", &alert(&"<".repeat(900_000)), "firing", 0);
        assert!(long["text"].as_str().unwrap().len() < 8 * 1024, "bounded");
    }

    #[test]
    fn the_generic_webhook_and_alertmanager_get_inert_bounded_text() {
        let body = webhook_body("generic", &alert(&format!("{HOSTILE}{}", "x".repeat(100_000))), "firing", 0);
        let all = body.to_string();
        assert!(all.len() < 8 * 1024, "bounded: {} bytes", all.len());
        for field in ["summary", "text", "action"] {
            let v = body[field].as_str().unwrap();
            assert!(!v.chars().any(text::is_unsafe), "{field}: {v:?}");
        }
        let labels = notifier_labels(&[("app".to_string(), format!("a\u{202e}b{}", "y".repeat(1000)))].into());
        assert!(labels["app"].len() < 200 && !labels["app"].chars().any(text::is_unsafe), "{labels:?}");
    }
}
