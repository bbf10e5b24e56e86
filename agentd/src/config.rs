//! agentd configuration: `/etc/outpost/agentd.toml` plus flags; every field validated, all problems at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/outpost/agentd.toml";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Overrides the hub address that came with the join token (e.g. after the hub moved).
    pub hub: Option<String>,
    /// Identity, outbox and instance database.
    pub data_dir: PathBuf,
    /// A join token written here (by cloud-init) is used to enroll on start, then deleted.
    pub token_file: PathBuf,
    /// How often a health report is taken.
    pub report_interval_ms: u64,
    /// Most reports kept while the hub is unreachable; beyond it the oldest are dropped (and counted).
    pub outbox_max: u64,
    /// Rolling log files go here when set.
    pub log_dir: Option<PathBuf>,
    /// The systemd unit that is K3s on this server.
    pub k3s_unit: String,
    /// First reconnect delay; doubles per failure up to `backoff_max_ms`, with full jitter.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Allow the admin-only `exec` action (off by default).
    pub exec_enabled: bool,
    /// Units that service-status, service-restart and logs may touch besides k3s and outpost-agentd.
    pub allowed_units: Vec<String>,
    /// The release public keys (minisign, `RW…`) an agentd binary must be signed with to be installed.
    pub release_keys: Vec<String>,
    /// How long a new agentd has, after an update's restart, to reconnect, replay its outbox and have a
    /// health report acknowledged; otherwise the previous agentd comes back.
    pub update_probation_secs: u64,
    /// Files the logs action may read (exact absolute paths).
    pub log_files: Vec<PathBuf>,
    /// The systemctl and journalctl programs the actions run.
    pub systemctl: String,
    pub journalctl: String,
    /// The Kubernetes API of this server's K3s.
    pub kubeconfig: PathBuf,
    /// Local directories app repositories may be cloned from (mirrors, tests); other local paths are refused.
    pub repo_roots: Vec<PathBuf>,
    /// Most disk one app's checkout may take.
    pub repo_budget_mib: u64,
    /// The git program.
    pub git: String,
    /// A failed rollout restores the previous good deployment.
    pub auto_rollback: bool,
    /// How long a rollout may take before it counts as failed.
    pub rollout_deadline_secs: u64,
    /// A rollout is watched (each change looked at when it happens); this is the longest wait between looks
    /// when no change comes.
    pub rollout_poll_ms: u64,
    /// How often live apps are compared with the cluster and drift is repaired.
    pub reconcile_secs: u64,
    /// How often the apps state is looked at; it is reported when it changed, and in full every 10 minutes.
    pub apps_report_secs: u64,
    /// How often apps with `auto_deploy` fetch their tracked branch.
    pub auto_deploy_secs: u64,
    /// What each plan allows one customer on this server (its namespace's quota); the server's plan comes
    /// from the hub. Default: starter 0.5 CPU / 512 MiB / 100 MiB, pro 1 / 1 GiB / 500 MiB, team 2 / 2 GiB /
    /// 2 GiB. `[plans.pro]` with `cpu_millis`, `memory_bytes`, `storage_bytes`.
    pub plans: std::collections::BTreeMap<String, outpost_common::app::PlanLimits>,
    /// How often usage (CPU, memory, disk, database, egress per host, project and app) is measured and
    /// reported.
    pub usage_interval_secs: u64,
    /// Where the kernel's cgroup v2 hierarchy is (the pods' CPU and memory counters).
    pub cgroup_root: PathBuf,
    /// A JSON file of usage samples (`{"samples": [{"scope": "app", "project": "acme", "app": "web",
    /// "cpu_usec": 1000, ...}]}`) reported in place of measured ones with the same scope: for demos and
    /// tests on machines without K3s. Unset in production.
    pub usage_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            hub: None,
            data_dir: PathBuf::from("/var/lib/outpost-agentd"),
            token_file: PathBuf::from("/etc/outpost/join-token"),
            report_interval_ms: 10_000,
            outbox_max: 50_000,
            log_dir: None,
            k3s_unit: "k3s".into(),
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            exec_enabled: false,
            allowed_units: Vec::new(),
            release_keys: Vec::new(),
            update_probation_secs: 120,
            log_files: Vec::new(),
            systemctl: "systemctl".into(),
            journalctl: "journalctl".into(),
            kubeconfig: PathBuf::from(crate::k3s::DEFAULT_KUBECONFIG),
            repo_roots: Vec::new(),
            repo_budget_mib: 512,
            git: "git".into(),
            auto_rollback: true,
            rollout_deadline_secs: 300,
            rollout_poll_ms: 10_000,
            reconcile_secs: 60,
            apps_report_secs: 30,
            auto_deploy_secs: 300,
            usage_interval_secs: 60,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            usage_file: None,
            plans: ["starter", "pro", "team"]
                .into_iter()
                .filter_map(|n| outpost_common::app::PlanLimits::named(n).map(|p| (n.to_string(), p)))
                .collect(),
        }
    }
}

pub use outpost_common::config::ConfigError;

impl AgentConfig {
    /// Reads `path`; a missing file at the default path means "all defaults".
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        outpost_common::config::load(path, DEFAULT_CONFIG_PATH)
    }

    pub fn from_toml(text: &str) -> Result<AgentConfig, String> {
        outpost_common::config::from_toml(text)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        if let Some(h) = &self.hub
            && let Err(e) = outpost_common::tls::HubAddr::parse_list(h)
        {
            p.push(format!("hub: {e}"));
        }
        if !(100..=3_600_000).contains(&self.report_interval_ms) {
            p.push(format!("report_interval_ms: {} is outside 100..=3600000", self.report_interval_ms));
        }
        if !(10..=10_000_000).contains(&self.outbox_max) {
            p.push(format!("outbox_max: {} is outside 10..=10000000", self.outbox_max));
        }
        if self.backoff_initial_ms == 0 || self.backoff_initial_ms > self.backoff_max_ms {
            p.push(format!(
                "backoff_initial_ms: {} must be at least 1 and at most backoff_max_ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            ));
        }
        if self.k3s_unit.is_empty() || !self.k3s_unit.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
            p.push(format!("k3s_unit: {:?} is not a systemd unit name", self.k3s_unit));
        }
        for k in &self.release_keys {
            if let Err(e) = outpost_common::release::PublicKey::parse(k) {
                p.push(format!("release_keys: {e}"));
            }
        }
        if !(10..=3600).contains(&self.update_probation_secs) {
            p.push(format!("update_probation_secs: {} is outside 10..=3600", self.update_probation_secs));
        }
        for u in self.allowed_units.iter().filter(|u| !outpost_common::actions::valid_unit(u)) {
            p.push(format!("allowed_units: {u:?} is not a systemd unit name"));
        }
        // The same check the hub applies to the list this agent announces in Hello.
        match self.log_files.iter().map(|f| f.to_str()).collect::<Option<Vec<&str>>>() {
            Some(files) => {
                if let Err(e) = outpost_common::report::check_log_files(files.into_iter()) {
                    p.push(e);
                }
            }
            None => p.push("log_files: paths must be UTF-8".into()),
        }
        for r in self
            .repo_roots
            .iter()
            .filter(|r| !r.is_absolute() || r.components().any(|c| matches!(c, std::path::Component::ParentDir)))
        {
            p.push(format!("repo_roots: {} must be an absolute path without '..'", r.display()));
        }
        if !(1..=1_000_000).contains(&self.repo_budget_mib) {
            p.push(format!("repo_budget_mib: {} is outside 1..=1000000", self.repo_budget_mib));
        }
        if !(10..=3600).contains(&self.rollout_deadline_secs) {
            p.push(format!("rollout_deadline_secs: {} is outside 10..=3600", self.rollout_deadline_secs));
        }
        if !(10..=60_000).contains(&self.rollout_poll_ms) {
            p.push(format!("rollout_poll_ms: {} is outside 10..=60000", self.rollout_poll_ms));
        }
        for (name, plan) in &self.plans {
            if !outpost_common::cert::valid_name(name) || plan.cpu_millis == 0 || plan.memory_bytes == 0 {
                p.push(format!(
                    "plans.{name}: a plan is a name (a-z, 0-9, '-') with cpu_millis and memory_bytes above 0"
                ));
            }
        }
        if !(1..=86_400).contains(&self.auto_deploy_secs) {
            p.push(format!("auto_deploy_secs: {} is outside 1..=86400", self.auto_deploy_secs));
        }
        if !(1..=3600).contains(&self.usage_interval_secs) {
            p.push(format!("usage_interval_secs: {} is outside 1..=3600", self.usage_interval_secs));
        }
        if !(1..=3600).contains(&self.apps_report_secs) {
            p.push(format!("apps_report_secs: {} is outside 1..=3600", self.apps_report_secs));
        }
        if !(1..=86_400).contains(&self.reconcile_secs) {
            p.push(format!("reconcile_secs: {} is outside 1..=86400", self.reconcile_secs));
        }
        for (field, v) in [("systemctl", &self.systemctl), ("journalctl", &self.journalctl), ("git", &self.git)] {
            if v.is_empty() {
                p.push(format!("{field}: must name a program"));
            }
        }
        outpost_common::config::problems(p)
    }

    pub fn report_interval(&self) -> Duration {
        Duration::from_millis(self.report_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_have_defaults_and_can_be_set() {
        let c = AgentConfig::default();
        assert_eq!(c.plans["pro"].cpu_millis, 1000);
        let c =
            AgentConfig::from_toml("[plans.gold]\ncpu_millis = 4000\nmemory_bytes = 8589934592\nstorage_bytes = 1\n")
                .unwrap();
        assert_eq!(c.plans.keys().collect::<Vec<_>>(), ["gold"], "a [plans] table replaces the defaults");
        c.validate().unwrap();
        let bad = AgentConfig::from_toml("[plans.x]\ncpu_millis = 0\nmemory_bytes = 1\nstorage_bytes = 1\n").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("plans.x"));
        assert!(AgentConfig::from_toml("[plans.x]\ncpu = 1\n").is_err(), "unknown fields are refused");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = AgentConfig::from_toml("report_intervall_ms = 5\n").unwrap_err();
        assert!(e.contains("unknown field `report_intervall_ms`"), "{e}");
    }

    #[test]
    fn invalid_values_are_all_named() {
        let e = AgentConfig::from_toml("report_interval_ms = \"ten\"\n").unwrap_err();
        assert!(e.contains("report_interval_ms"), "{e}");
        let c = AgentConfig {
            report_interval_ms: 5,
            hub: Some("http://h:1".into()),
            k3s_unit: "k3s; rm".into(),
            allowed_units: vec!["a b".into()],
            log_files: vec!["relative.log".into()],
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        for f in ["report_interval_ms", "hub:", "k3s_unit", "allowed_units", "log_files"] {
            assert!(e.contains(f), "{f} not in {e}");
        }
        assert!(AgentConfig::default().validate().is_ok());
    }
}
