//! Alerts: rules as data (`[[alerts.rules]]` in hubd.toml, built-in defaults), evaluated every
//! `eval_secs` against what the hub knows (each server's liveness, latest health, certificate and apps
//! state; the lifecycle queue). An alert is identified by its labels (rule, severity, server, customer,
//! plan); it is pending until its condition held for `for_secs`, then firing until the condition clears,
//! then resolved. Firing alerts are sent to a Prometheus Alertmanager (v2 API) on every evaluation, as
//! Alertmanager expects, and a resolved one once with its end time; routing, grouping, inhibition,
//! silences and notifications (Slack, e-mail, PagerDuty) are Alertmanager's. Every fire and resolve is
//! audited (kind `alert`): that is the history.
//!
//! Parts: `rules` (the configuration and what a rule means, as types), `eval` (one round as a pure
//! function), `deliver` (webhook and Alertmanager, with what leaves the hub neutralised), `silences`
//! (silences and acknowledgements); this file is the service that measures the conditions and carries a
//! round out.

mod deliver;
mod eval;
mod measure;
pub mod rules;
mod silences;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::audit::{Audit, AuditEntry, Kind};
use crate::fleet::Fleet;
use crate::lifecycle::Lifecycle;
use crate::runtime::Runtime;

pub use eval::{Alert, State};
pub use rules::{AlertsConfig, Metric, Rule, SILENCE_LABELS, default_rules};

use eval::Condition;
use rules::Metric as M;

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

/// What the alert engine is built from.
pub struct AlertsParts {
    pub config: AlertsConfig,
    pub fleet: Arc<Fleet>,
    pub lifecycle: Arc<Lifecycle>,
    pub audit: Arc<Audit>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub store: Arc<dyn crate::store::HubStore>,
    pub usage: Arc<crate::usage::UsageBook>,
}

impl Alerts {
    pub async fn new(parts: AlertsParts) -> Alerts {
        let AlertsParts { config, fleet, lifecycle, audit, metrics, store, usage } = parts;
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

    /// Every condition that holds now.
    async fn conditions(&self, now_ms: i64) -> Vec<Condition> {
        let mut out = Vec::new();
        let views = self.fleet.registry().list();
        let over_plan = self.usage.over_plan();
        for r in self.config.rules.iter().filter(|r| !r.metric.hub_wide()) {
            for v in &views {
                let rec = &v.record;
                if rec.suspended_ms > 0 || rec.revoked_ms > 0 || rec.agent_id.is_empty() {
                    continue; // deprovisioned, revoked or never enrolled: nothing to watch
                }
                let labels = |app: Option<&str>| -> BTreeMap<String, String> {
                    [
                        ("alertname", r.name.clone()),
                        ("severity", r.severity.as_str().to_string()),
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
                let per_app_scope = r.metric == M::AppFailing && r.labels.contains_key("app");
                if !per_app_scope && !r.applies(rec, None) {
                    continue;
                }
                if r.metric == M::AppFailing {
                    for a in v.apps.iter().flat_map(|s| s.apps.iter()).filter(|a| r.applies(rec, Some(&a.name))) {
                        let value = f64::from(u8::from(measure::failing(&a.phase)));
                        if r.holds(value) {
                            let why = if a.last_error.is_empty() { a.phase.clone() } else { a.last_error.clone() };
                            let summary = format!("{} on {}: app {} is {}: {why}", r.name, rec.name, a.name, a.phase);
                            out.push(Condition { rule: r.clone(), labels: labels(Some(&a.name)), value, summary });
                        }
                    }
                    continue;
                }
                let value = measure::server_value(r.metric, v, now_ms, over_plan.get(&rec.name).copied());
                let Some(value) = value else { continue };
                if r.holds(value) {
                    let summary = format!(
                        "{} on {}: {} is {value:.1} ({} {})",
                        r.name,
                        rec.name,
                        r.metric.name(),
                        r.op.as_str(),
                        r.threshold
                    );
                    out.push(Condition { rule: r.clone(), labels: labels(None), value, summary });
                }
            }
        }
        if let Ok(s) = self.lifecycle.stats().await {
            for r in self.config.rules.iter().filter(|r| r.metric.hub_wide()) {
                let value = match r.metric {
                    Metric::BackupOverdue => self.metrics.backup_overdue(outpost_common::now_ms()),
                    m => measure::hub_value(m, &s),
                };
                let Some(value) = value else { continue };
                if r.holds(value) {
                    let labels = [("alertname", r.name.clone()), ("severity", r.severity.as_str().to_string())]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect();
                    let summary =
                        format!("{}: {} is {value:.1} ({} {})", r.name, r.metric.name(), r.op.as_str(), r.threshold);
                    out.push(Condition { rule: r.clone(), labels, value, summary });
                }
            }
        }
        out
    }

    /// One evaluation at `now_ms`: the conditions measured, a round of `eval::step`, and what it says done
    /// (notified, audited, stored).
    pub async fn evaluate(&self, now_ms: i64) {
        self.evaluated_ms.store(now_ms, std::sync::atomic::Ordering::Relaxed);
        self.take_stored_acks().await;
        let started = std::time::Instant::now();
        let holding = self.conditions(now_ms).await;
        self.metrics.alerts_evaluated(started.elapsed());
        let round = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            let silences = self.silences.lock().unwrap_or_else(|p| p.into_inner());
            let resolve_after = (self.config.resolve_after_secs * 1000) as i64;
            eval::step(&mut active, holding, &silences, now_ms, resolve_after)
        };
        for _ in 0..round.flaps {
            self.metrics.alert_flap_damped();
        }
        for a in &round.notify {
            self.notify(a, "firing", now_ms);
        }
        for a in &round.fired {
            tracing::warn!(alert = %a.key(), summary = %a.summary, "alert firing");
            self.record(a, "fired").await;
        }
        let mut changed: Vec<&Alert> = round.fired.iter().collect();
        changed.extend(round.notify.iter().filter(|n| !round.fired.iter().any(|f| f.key() == n.key())));
        for a in changed {
            self.keep(a, true).await;
        }
        for a in round.resolved {
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
}
