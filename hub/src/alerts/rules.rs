//! Alert rules: `[alerts]` and its `[[alerts.rules]]`, the built-in rules, and what a rule's parts mean.
//! A metric, a comparison and a severity are types: serde refuses a rule that names one that does not
//! exist, with its name, before the hub starts.

use std::collections::BTreeMap;

use serde::Deserialize;

/// What a rule measures. Per server unless [`Metric::hub_wide`]; `app_failing` is per app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Seconds since the agent's last report (0 while connected).
    ServerOfflineSeconds,
    /// The fullest disk's use.
    DiskUsedPercent,
    MemoryUsedPercent,
    CertificateExpiresInSeconds,
    /// 1 when the server's K3s is ready.
    #[serde(rename = "k3s_ready")]
    K3sReady,
    /// How many of the server's apps are failed or degraded.
    AppsFailing,
    /// Per app (an alert each, labelled with the app): 1 when it is crash-looping, degraded or its rollout
    /// failed.
    AppFailing,
    /// The customer's projects' highest use of the plan (CPU average, memory peak, database) this hour.
    UsageOverPlanPercent,
    /// 1 when the server's agentd is not the hub's version.
    AgentVersionSkew,
    /// Lifecycle jobs waiting in the queue (hub-wide).
    JobQueuePending,
    /// Lifecycle jobs that failed in the last hour, of those that ended (hub-wide).
    JobFailureRatePercent,
    /// Provisions that failed in the last hour (hub-wide).
    ProvisionsFailedLastHour,
    /// 1 when scheduled backups are on and the last good one is older than `[backup] max_age_secs`
    /// (hub-wide).
    BackupOverdue,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
        Metric::ServerOfflineSeconds,
        Metric::DiskUsedPercent,
        Metric::MemoryUsedPercent,
        Metric::CertificateExpiresInSeconds,
        Metric::K3sReady,
        Metric::AppsFailing,
        Metric::AppFailing,
        Metric::UsageOverPlanPercent,
        Metric::AgentVersionSkew,
        Metric::JobQueuePending,
        Metric::JobFailureRatePercent,
        Metric::ProvisionsFailedLastHour,
        Metric::BackupOverdue,
    ];

    /// Its name in the configuration and in summaries.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ServerOfflineSeconds => "server_offline_seconds",
            Metric::DiskUsedPercent => "disk_used_percent",
            Metric::MemoryUsedPercent => "memory_used_percent",
            Metric::CertificateExpiresInSeconds => "certificate_expires_in_seconds",
            Metric::K3sReady => "k3s_ready",
            Metric::AppsFailing => "apps_failing",
            Metric::AppFailing => "app_failing",
            Metric::UsageOverPlanPercent => "usage_over_plan_percent",
            Metric::AgentVersionSkew => "agent_version_skew",
            Metric::JobQueuePending => "job_queue_pending",
            Metric::JobFailureRatePercent => "job_failure_rate_percent",
            Metric::ProvisionsFailedLastHour => "provisions_failed_last_hour",
            Metric::BackupOverdue => "backup_overdue",
        }
    }

    /// Measured once for the hub (the lifecycle queue), not per server.
    pub fn hub_wide(self) -> bool {
        matches!(
            self,
            Metric::JobQueuePending
                | Metric::JobFailureRatePercent
                | Metric::ProvisionsFailedLastHour
                | Metric::BackupOverdue
        )
    }
}

/// How a rule compares its metric with its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

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
    pub metric: Metric,
    pub op: Op,
    pub threshold: f64,
    #[serde(default)]
    pub for_secs: u64,
    pub severity: Severity,
    /// What a person should do, in the notification.
    #[serde(default)]
    pub action: String,
    /// Where the rule applies: every label given must match (`labels = { plan = "team" }`); the labels are
    /// customer, plan, server and app (per-app metrics only). None: everywhere.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The labels a silence may match.
pub const SILENCE_LABELS: [&str; 6] = ["alertname", "severity", "server", "customer", "plan", "app"];

/// The labels a rule may be scoped by.
pub const RULE_LABELS: [&str; 4] = ["customer", "plan", "server", "app"];

impl Rule {
    /// Whether the rule applies to this server (and app).
    pub fn applies(&self, rec: &crate::store::ServerRecord, app: Option<&str>) -> bool {
        self.labels.iter().all(|(k, v)| match k.as_str() {
            "customer" => &rec.customer == v,
            "plan" => &rec.plan == v,
            "server" => &rec.name == v,
            "app" => app == Some(v.as_str()),
            _ => false,
        })
    }

    /// Whether `v` meets the rule's condition.
    pub fn holds(&self, v: f64) -> bool {
        match self.op {
            Op::Gt => v > self.threshold,
            Op::Ge => v >= self.threshold,
            Op::Lt => v < self.threshold,
            Op::Le => v <= self.threshold,
        }
    }
}

fn rule(name: &str, metric: Metric, op: Op, threshold: f64, for_secs: u64, severity: Severity, action: &str) -> Rule {
    Rule {
        name: name.into(),
        metric,
        op,
        threshold,
        for_secs,
        severity,
        action: action.into(),
        labels: BTreeMap::new(),
    }
}

/// The built-in rules.
pub fn default_rules() -> Vec<Rule> {
    vec![
        rule(
            "server_lost",
            Metric::ServerOfflineSeconds,
            Op::Gt,
            300.0,
            0,
            Severity::Critical,
            "check the server in the cloud console; `outpost server NAME` shows when it was last seen",
        ),
        rule(
            "disk_full",
            Metric::DiskUsedPercent,
            Op::Gt,
            90.0,
            0,
            Severity::Warning,
            "free space on the server (logs, images) or move the customer to a bigger plan",
        ),
        rule(
            "memory_high",
            Metric::MemoryUsedPercent,
            Op::Gt,
            95.0,
            300,
            Severity::Warning,
            "look at the apps' memory (`outpost apps --on NAME`)",
        ),
        rule(
            "certificate_expiring",
            Metric::CertificateExpiresInSeconds,
            Op::Lt,
            21_600.0,
            0,
            Severity::Critical,
            "renewal is failing: `outpost run rotate-cert --on NAME`, or re-enroll the agent",
        ),
        rule(
            "k3s_not_ready",
            Metric::K3sReady,
            Op::Lt,
            1.0,
            300,
            Severity::Warning,
            "`outpost run k3s-status --on NAME`",
        ),
        rule(
            "app_failing",
            Metric::AppFailing,
            Op::Gt,
            0.0,
            0,
            Severity::Warning,
            "`outpost apps --on NAME --failing`; roll back with `outpost rollback`",
        ),
        rule(
            "usage_over_plan",
            Metric::UsageOverPlanPercent,
            Op::Gt,
            100.0,
            900,
            Severity::Warning,
            "`outpost usage --customer CUSTOMER` shows what is over; offer the next plan",
        ),
        rule(
            "agent_version_skew",
            Metric::AgentVersionSkew,
            Op::Gt,
            0.0,
            3600,
            Severity::Info,
            "install the hub's agentd on the server (served at /artifacts/agentd/VERSION/ARCH) or re-provision it",
        ),
        rule(
            "job_queue_long",
            Metric::JobQueuePending,
            Op::Gt,
            50.0,
            300,
            Severity::Warning,
            "`outpost lifecycle list`: is the cloud API failing or rate limiting?",
        ),
        rule(
            "job_failures",
            Metric::JobFailureRatePercent,
            Op::Gt,
            5.0,
            0,
            Severity::Warning,
            "`outpost lifecycle list`: read the failed jobs' errors",
        ),
        rule(
            "provision_failed",
            Metric::ProvisionsFailedLastHour,
            Op::Gt,
            0.0,
            0,
            Severity::Warning,
            "`outpost lifecycle list`; the customer is waiting for a server",
        ),
        rule(
            "backup_too_old",
            Metric::BackupOverdue,
            Op::Ge,
            1.0,
            0,
            Severity::Critical,
            "no scheduled backup succeeded within [backup] max_age_secs: see hubd's log (\"scheduled backup failed\") and outpost_backup_failures_total; `hubd backup` takes one by hand",
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
            for k in r.labels.keys() {
                if !RULE_LABELS.contains(&k.as_str()) {
                    p.push(format!(
                        "alerts rule {}: unknown label {k:?}; a rule is scoped by {}",
                        r.name,
                        RULE_LABELS.join(", ")
                    ));
                } else if r.metric.hub_wide() {
                    p.push(format!("alerts rule {}: {} is hub-wide and takes no labels", r.name, r.metric.name()));
                } else if k == "app" && r.metric != Metric::AppFailing {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_as_serde_reads_it() {
        for m in Metric::ALL {
            let rule =
                format!("name = \"x\"\nmetric = \"{}\"\nop = \">\"\nthreshold = 1\nseverity = \"info\"\n", m.name());
            assert_eq!(toml::from_str::<Rule>(&rule).unwrap().metric, m);
        }
        let bad = "name = \"x\"\nmetric = \"cpu_temperature\"\nop = \">\"\nthreshold = 1\nseverity = \"info\"\n";
        let e = toml::from_str::<Rule>(bad).unwrap_err().to_string();
        assert!(e.contains("cpu_temperature") && e.contains("disk_used_percent"), "{e}");
        let bad = "name = \"x\"\nmetric = \"k3s_ready\"\nop = \"!\"\nthreshold = 1\nseverity = \"info\"\n";
        assert!(toml::from_str::<Rule>(bad).unwrap_err().to_string().contains('!'));
    }
}
