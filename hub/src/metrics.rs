//! What hubd tells Prometheus, as a leaf: the subsystems report into it (counters and histograms where
//! things happen: reports, enrollments, renewals, action results, alert rounds), and figures counted at
//! scrape time come in as plain data (`FleetFigures`, `QueueFigures`, alerts by severity). It imports no
//! subsystem; `crate::admin` is the one place that knows them together and serves the exposition.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    artifact_bytes: Counter,
    backup_last_success: Gauge,
    backup_failures: Counter,
    /// Scheduled backups: (the age past which one is overdue, when the schedule began), in ms; (0, 0): off.
    backup_policy: std::sync::Mutex<(i64, i64)>,
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
            artifact_bytes: Counter::default(),
            backup_last_success: Gauge::default(),
            backup_failures: Counter::default(),
            backup_policy: std::sync::Mutex::new((0, 0)),
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
        registry.register(
            "artifact_bytes_served",
            "Bytes of agentd binaries and releases sent (whole or ranged; the compressed form when asked for)",
            m.artifact_bytes.clone(),
        );
        registry.register_with_unit(
            "backup_last_success_timestamp",
            "When the hub's last scheduled backup was written (Unix time; 0: none since it started)",
            prometheus_client::registry::Unit::Seconds,
            m.backup_last_success.clone(),
        );
        registry.register("backup_failures", "Scheduled backups that failed", m.backup_failures.clone());
        Metrics { registry, ..m }
    }

    /// Scheduled backups are on: one is overdue past `max_age`.
    pub fn backup_schedule(&self, max_age: Duration) {
        *self.backup_policy.lock().unwrap_or_else(|p| p.into_inner()) =
            (max_age.as_millis() as i64, outpost_common::now_ms());
    }

    pub fn backup_done(&self, at_ms: i64) {
        self.backup_last_success.set(at_ms / 1000);
    }

    pub fn backup_failed(&self) {
        self.backup_failures.inc();
    }

    /// 1 when scheduled backups are on and the last good one (or the schedule's start, before the first) is
    /// older than their `max_age`; 0 when not; `None` when they are off.
    pub fn backup_overdue(&self, now_ms: i64) -> Option<f64> {
        let (max_age, since) = *self.backup_policy.lock().unwrap_or_else(|p| p.into_inner());
        if max_age == 0 {
            return None;
        }
        let last = (self.backup_last_success.get() * 1000).max(since);
        Some(f64::from(u8::from(now_ms - last > max_age)))
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

    /// What the artifact server counts the bytes it sends into.
    pub fn artifact_bytes(&self) -> Counter {
        self.artifact_bytes.clone()
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

    /// The fleet's figures as the caller counted them now (at scrape).
    pub fn set_fleet(&self, f: &FleetFigures) {
        self.servers.clear();
        for ((liveness, plan), n) in &f.servers {
            self.servers.get_or_create(&vec![("liveness", liveness.clone()), ("plan", plan.clone())]).set(*n);
        }
        self.streams.set(f.streams);
        self.soonest_expiry.set(f.soonest_cert_expiry_secs.map_or(0.0, |s| s as f64));
    }

    /// The lifecycle queue's figures as the caller read them now (at scrape).
    pub fn set_queue(&self, q: &QueueFigures) {
        self.jobs.clear();
        for (state, n) in [("pending", q.pending), ("running", q.running)] {
            self.jobs.get_or_create(&vec![("state", state.to_string())]).set(n as i64);
        }
        self.queue_depth.set(q.pending as i64);
        self.jobs_failed_hour.set(q.failed_last_hour as i64);
    }

    /// The exposition (OpenMetrics text) of everything reported so far.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The fleet, counted for the gauges: servers by (liveness, plan), connected streams, and the soonest
/// certificate expiry (unix seconds) of a live identity.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetFigures {
    pub servers: BTreeMap<(String, String), i64>,
    pub streams: i64,
    pub soonest_cert_expiry_secs: Option<i64>,
}

/// The lifecycle queue, counted for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFigures {
    pub pending: u64,
    pub running: u64,
    pub failed_last_hour: u64,
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
