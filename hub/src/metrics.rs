//! What hubd tells Prometheus: OpenMetrics text at `/metrics` on the admin listener (loopback by default),
//! with `/healthz` and `/readyz`. Counters and histograms are updated where things happen (reports,
//! enrollments, renewals, action results); fleet and queue figures are read at scrape time from the registry
//! and the job queue, so they are never stale.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::fleet::Fleet;
use crate::lifecycle::Lifecycle;

type Labels = Vec<(&'static str, String)>;

/// The hub's metrics.
pub struct Metrics {
    registry: Registry,
    reports_stored: Counter,
    report_ack: Histogram,
    store_commit: Histogram,
    enrollments: Counter,
    renewals: Counter,
    action_rtt: Family<Labels, Histogram>,
    servers: Family<Labels, Gauge>,
    streams: Gauge,
    jobs: Family<Labels, Gauge>,
    queue_depth: Gauge,
    jobs_failed_hour: Gauge,
    soonest_expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
    alerts_firing: Family<Labels, Gauge>,
    alert_evaluation: Histogram,
    alert_deliveries: Family<Labels, Counter>,
    usage_dropped: Counter,
    alert_flaps_damped: Counter,
    usage_resets: Counter,
}

fn latency() -> Histogram {
    // 100 µs .. ~26 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("outpost");
        let m = Metrics {
            reports_stored: Counter::default(),
            report_ack: latency(),
            store_commit: latency(),
            enrollments: Counter::default(),
            renewals: Counter::default(),
            action_rtt: Family::new_with_constructor(latency),
            servers: Family::default(),
            streams: Gauge::default(),
            jobs: Family::default(),
            queue_depth: Gauge::default(),
            jobs_failed_hour: Gauge::default(),
            soonest_expiry: Gauge::default(),
            alerts_firing: Family::default(),
            alert_evaluation: latency(),
            alert_deliveries: Family::default(),
            usage_dropped: Counter::default(),
            alert_flaps_damped: Counter::default(),
            usage_resets: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("reports_stored", "Health and apps reports stored durably", m.reports_stored.clone());
        registry.register_with_unit(
            "report_ack",
            "Time from a report's arrival at the store to its acknowledgement being due (validation, lock, durable write)",
            prometheus_client::registry::Unit::Seconds,
            m.report_ack.clone(),
        );
        registry.register_with_unit(
            "store_commit",
            "Time of one durable store write of a report (group commit included)",
            prometheus_client::registry::Unit::Seconds,
            m.store_commit.clone(),
        );
        registry.register("enrollments", "Agents enrolled with a join token", m.enrollments.clone());
        registry.register("renewals", "Agent certificates renewed", m.renewals.clone());
        registry.register_with_unit(
            "action_round_trip",
            "Remote action round trips (hub to agent and back), by outcome",
            prometheus_client::registry::Unit::Seconds,
            m.action_rtt.clone(),
        );
        registry.register("servers", "Servers by liveness and plan", m.servers.clone());
        registry.register("agent_streams", "Agent streams connected now", m.streams.clone());
        registry.register("lifecycle_jobs", "Lifecycle jobs (provision, deprovision, ...) by state", m.jobs.clone());
        registry.register("lifecycle_queue_depth", "Lifecycle jobs pending", m.queue_depth.clone());
        registry.register(
            "lifecycle_jobs_failed_last_hour",
            "Lifecycle jobs that failed in the last hour",
            m.jobs_failed_hour.clone(),
        );
        registry.register_with_unit(
            "certificate_soonest_expiry_timestamp",
            "When the soonest agent certificate expires (Unix time; 0 with no enrolled agent)",
            prometheus_client::registry::Unit::Seconds,
            m.soonest_expiry.clone(),
        );
        registry.register("alerts_firing", "Alerts firing now, by severity", m.alerts_firing.clone());
        registry.register_with_unit(
            "alert_evaluation",
            "Time of one round of alert rule evaluation over the whole fleet",
            prometheus_client::registry::Unit::Seconds,
            m.alert_evaluation.clone(),
        );
        registry.register(
            "alert_deliveries",
            "Deliveries to Alertmanager by result (delivered, refused: it answered an error, unreachable: no answer in time)",
            m.alert_deliveries.clone(),
        );
        registry.register(
            "usage_samples_dropped",
            "Usage samples not counted: an app or project the server does not have, an implausible figure, or too old",
            m.usage_dropped.clone(),
        );
        registry.register(
            "alert_flaps_damped",
            "Times a firing alert's condition came back within alerts.resolve_after_secs of clearing: kept firing, no resolve and no second notification",
            m.alert_flaps_damped.clone(),
        );
        registry.register(
            "usage_resets",
            "Usage counters that went down and were taken as resets",
            m.usage_resets.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A report stored: how long the write took, and the whole path to its ack.
    pub fn report_stored(&self, commit: Duration, total: Duration) {
        self.reports_stored.inc();
        self.store_commit.observe(commit.as_secs_f64());
        self.report_ack.observe(total.as_secs_f64());
    }

    pub fn enrolled(&self) {
        self.enrollments.inc();
    }

    pub fn renewed(&self) {
        self.renewals.inc();
    }

    /// The firing alerts by severity (every severity present, 0 when none fire).
    pub fn set_alerts(&self, firing: &BTreeMap<String, u64>) {
        for severity in ["critical", "warning", "info"] {
            let n = firing.get(severity).copied().unwrap_or(0);
            self.alerts_firing.get_or_create(&vec![("severity", severity.to_string())]).set(n as i64);
        }
    }

    /// One delivery to Alertmanager: `delivered`, `refused` or `unreachable`.
    pub fn alert_delivery(&self, result: &str) {
        self.alert_deliveries.get_or_create(&vec![("result", result.to_string())]).inc();
    }

    /// A firing alert's condition came back before it could resolve: kept firing, nothing notified.
    pub fn alert_flap_damped(&self) {
        self.alert_flaps_damped.inc();
    }

    pub fn alert_flaps_damped(&self) -> u64 {
        self.alert_flaps_damped.get()
    }

    pub fn usage_dropped(&self) {
        self.usage_dropped.inc();
    }

    pub fn usage_reset(&self) {
        self.usage_resets.inc();
    }

    /// (usage samples dropped, usage counter resets) so far.
    pub fn usage_counts(&self) -> (u64, u64) {
        (self.usage_dropped.get(), self.usage_resets.get())
    }

    pub fn alerts_evaluated(&self, took: Duration) {
        self.alert_evaluation.observe(took.as_secs_f64());
    }

    /// A remote action ended for one target with `outcome` (a word) after `rtt`.
    pub fn action_done(&self, outcome: &str, rtt: Duration) {
        self.action_rtt.get_or_create(&vec![("outcome", outcome.to_string())]).observe(rtt.as_secs_f64());
    }

    /// The exposition, with the fleet and queue figures read now.
    pub async fn render(&self, fleet: &Fleet, lifecycle: Option<&Lifecycle>) -> String {
        self.servers.clear();
        let mut streams = 0;
        let mut soonest = i64::MAX;
        for v in fleet.registry().list() {
            let liveness = v.liveness.to_string();
            streams += i64::from(v.liveness == outpost_common::Liveness::Connected);
            self.servers.get_or_create(&vec![("liveness", liveness), ("plan", v.record.plan.clone())]).inc();
            if !v.record.agent_id.is_empty() && v.record.revoked_ms == 0 && v.record.cert_not_after > 0 {
                soonest = soonest.min(v.record.cert_not_after);
            }
        }
        self.streams.set(streams);
        self.soonest_expiry.set(if soonest == i64::MAX { 0.0 } else { soonest as f64 });
        let stats = match lifecycle {
            Some(l) => l.stats().await.ok(),
            None => None,
        };
        if let Some(stats) = stats {
            self.jobs.clear();
            for (state, n) in [("pending", stats.pending), ("running", stats.running)] {
                self.jobs.get_or_create(&vec![("state", state.to_string())]).set(n as i64);
            }
            self.queue_depth.set(stats.pending as i64);
            self.jobs_failed_hour.set(stats.failed_last_hour as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// OpenMetrics text as the classic Prometheus text format: a counter's HELP and TYPE name its `_total`
/// samples, and there are no `# UNIT` or `# EOF` lines.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The admin listener's routes.
/// Whether `headers` carry `Authorization: Bearer <token>` (compared in constant time).
fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let got = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    got.len() == token.len() && got.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

pub fn router(
    metrics: Arc<Metrics>,
    fleet: Arc<Fleet>,
    (lifecycle, alerts): (Arc<Lifecycle>, Arc<crate::alerts::Alerts>),
    ready: tokio_util::sync::CancellationToken,
    token: Option<String>,
) -> axum::Router {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    // OpenMetrics to those who ask for it (Prometheus does); the classic text format to everyone else
    // (curl, `promtool check metrics`).
    let scrape = move |headers: axum::http::HeaderMap| {
        let (metrics, fleet, lifecycle, alerts) = (metrics.clone(), fleet.clone(), lifecycle.clone(), alerts.clone());
        let allowed = token.as_deref().is_none_or(|t| bearer_matches(&headers, t));
        async move {
            if !allowed {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "a bearer token is required (admin.bearer_token_file)\n".to_string(),
                )
                    .into_response();
            }
            metrics.set_alerts(&alerts.firing_by_severity());
            let body = metrics.render(&fleet, Some(&lifecycle)).await;
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if accept.contains("application/openmetrics-text") {
                ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                    .into_response()
            } else {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], classic_text(&body))
                    .into_response()
            }
        }
    };
    axum::Router::new().route("/metrics", get(scrape)).route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            let stopping = ready.is_cancelled();
            async move {
                if stopping {
                    (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response()
                } else {
                    (StatusCode::OK, "ready\n").into_response()
                }
            }
        }),
    )
}
