//! `[provision]` (the cloud, plans, what goes on a new server) and `[lifecycle]` (the job queue's workers
//! and the deprovision timeline) of hubd.toml.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `[provision]`: creating servers in Hetzner Cloud. Provisioning is off until `ssh_public_key` is set and
/// a token is available (`token_file`, or `HCLOUD_TOKEN` in the environment).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionConfig {
    /// The Hetzner Cloud API root.
    pub api_url: String,
    /// A file (0600) holding the API token; else `HCLOUD_TOKEN`. Never logged.
    pub token_file: Option<PathBuf>,
    pub image: String,
    /// The K3s version new servers install (pinned).
    pub k3s_version: String,
    /// Where new servers fetch K3s's install script: `https://get.k3s.io` by default, or a `file:///`
    /// path already on the image (a mirror for air-gapped sites; the suite's test hosts use a stand-in).
    pub k3s_installer: String,
    /// The agentd version new servers fetch from this hub (`artifacts_dir/agentd-{version}-{arch}`).
    pub agent_version: String,
    /// Default: `data_dir/artifacts`.
    pub artifacts_dir: Option<PathBuf>,
    /// The break-glass key every server gets (an OpenSSH public key line).
    pub ssh_public_key: String,
    pub ssh_key_name: String,
    /// The firewall (admitting only TCP 80 and 443) every server gets.
    pub firewall_name: String,
    /// How long a new server may take to be created, enroll and report K3s Ready.
    pub ready_timeout_secs: u64,
    /// How often the create action and the new agent are looked at.
    pub poll_ms: u64,
    /// How often servers carrying outpost labels are compared with the registry (0: never).
    pub reap_secs: u64,
    /// Delete orphans (servers labelled by this hub that no record or job knows) instead of reporting them.
    pub reap_delete: bool,
    /// Plans by name.
    pub plans: BTreeMap<String, PlanConfig>,
    /// Retries of one API call on 429, 5xx and transport errors.
    pub api_attempts: u32,
    pub api_backoff_initial_ms: u64,
    pub api_backoff_max_ms: u64,
    /// The hub's own pace towards the API, all jobs together (Hetzner: 3600 an hour, one a second).
    pub api_rate_per_sec: f64,
    pub api_burst: u32,
    /// enroll-ssh: a key the hub uses when a request brings none (lets a job resume after a hub restart).
    pub ssh_private_key_file: Option<PathBuf>,
    /// enroll-ssh: where files go on the server (`/`).
    pub enroll_root: String,
    /// enroll-ssh: how agentd is started once installed (`{root}` is `enroll_root`).
    pub enroll_start: String,
}

/// What a plan gets.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    pub server_type: String,
    /// Tried in order: a server type sold out in one moves on to the next.
    pub locations: Vec<String>,
    /// `x86_64` or `aarch64` (which agentd binary the server fetches).
    #[serde(default = "x86_64")]
    pub arch: String,
    #[serde(default)]
    pub k3s_flags: String,
    /// Queue priority: higher first.
    #[serde(default)]
    pub priority: u8,
}

fn x86_64() -> String {
    "x86_64".into()
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        let plan = |server_type: &str, priority: u8| PlanConfig {
            server_type: server_type.into(),
            locations: vec!["fsn1".into(), "nbg1".into(), "hel1".into()],
            arch: x86_64(),
            k3s_flags: "--write-kubeconfig-mode=0600 --disable=servicelb".into(),
            priority,
        };
        ProvisionConfig {
            api_url: "https://api.hetzner.cloud/v1".into(),
            token_file: None,
            image: "debian-12".into(),
            k3s_version: "v1.33.5+k3s1".into(),
            k3s_installer: "https://get.k3s.io".into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            artifacts_dir: None,
            ssh_public_key: String::new(),
            ssh_key_name: "outpost-break-glass".into(),
            firewall_name: "outpost-web".into(),
            ready_timeout_secs: 900,
            poll_ms: 2000,
            reap_secs: 600,
            reap_delete: false,
            plans: [
                ("starter".into(), plan("cx22", 1)),
                ("pro".into(), plan("cx32", 2)),
                ("team".into(), plan("cx42", 3)),
            ]
            .into(),
            api_attempts: 8,
            api_backoff_initial_ms: 500,
            api_backoff_max_ms: 20_000,
            api_rate_per_sec: 1.0,
            api_burst: 600,
            ssh_private_key_file: None,
            enroll_root: "/".into(),
            enroll_start: "systemctl daemon-reload && systemctl enable --now outpost-agentd".into(),
        }
    }
}

/// `[lifecycle]`: the job queue and the deprovision timeline.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Jobs run at once.
    pub workers: usize,
    /// A worker's hold on a job; renewed while it runs. A job whose worker died is taken up after this.
    pub lease_secs: u64,
    /// Backoff between attempts of a job: exponential from this, full jitter, capped.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// After a deprovision: when the data is archived and the cloud server deleted, and when the archive goes.
    pub archive_after_secs: u64,
    pub delete_after_secs: u64,
    /// Where archives are kept. Default: `data_dir/archive`.
    pub archive_dir: Option<PathBuf>,
    /// Ended jobs are deleted this long after they ended (checked hourly).
    pub job_retention_days: u32,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            workers: 8,
            lease_secs: 60,
            retry_initial_ms: 10_000,
            retry_max_ms: 600_000,
            archive_after_secs: 7 * 86_400,
            delete_after_secs: 30 * 86_400,
            archive_dir: None,
            job_retention_days: 90,
        }
    }
}

/// A customer name (and so a server name): a DNS label.
pub fn valid_dns_label(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-')
}

impl ProvisionConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.api_url.starts_with("https://") || self.api_url.starts_with("http://127.0.0.1:")) {
            p.push(format!(
                "provision.api_url {:?}: must be https:// (http only to a loopback stand-in)",
                self.api_url
            ));
        }
        if !super::userdata::valid_k3s_version(&self.k3s_version) {
            p.push(format!("provision.k3s_version {:?} is not a K3s version like v1.33.5+k3s1", self.k3s_version));
        }
        if !super::userdata::valid_installer(&self.k3s_installer) {
            p.push(format!(
                "provision.k3s_installer {:?}: an https:// URL or a file:/// path of letters, digits and -._~:/%+",
                self.k3s_installer
            ));
        }
        if !self.ssh_public_key.is_empty()
            && !self.ssh_public_key.starts_with("ssh-")
            && !self.ssh_public_key.starts_with("ecdsa-")
        {
            p.push("provision.ssh_public_key: not an OpenSSH public key line (ssh-ed25519 AAAA...)".into());
        }
        if self.ready_timeout_secs < 5 || self.poll_ms < 10 {
            p.push("provision.ready_timeout_secs must be at least 5 and poll_ms at least 10".into());
        }
        if self.plans.is_empty() {
            p.push("provision.plans: at least one plan".into());
        }
        for (name, plan) in &self.plans {
            if !valid_dns_label(name) {
                p.push(format!("provision.plans.{name}: plan names are DNS labels"));
            }
            if plan.locations.is_empty() {
                p.push(format!("provision.plans.{name}.locations: at least one"));
            }
            if !super::artifacts::ARCHES.contains(&plan.arch.as_str()) {
                p.push(format!("provision.plans.{name}.arch {:?}: x86_64 or aarch64", plan.arch));
            }
            if !super::userdata::valid_k3s_flags(&plan.k3s_flags) {
                p.push(format!("provision.plans.{name}.k3s_flags: only letters, digits, spaces and -=,./:_"));
            }
        }
        if !self.enroll_root.starts_with('/') || self.enroll_root.contains('\'') || self.enroll_root.contains("..") {
            p.push(format!("provision.enroll_root {:?}: an absolute path without quotes or ..", self.enroll_root));
        }
        if !(self.api_rate_per_sec > 0.0 && self.api_rate_per_sec <= 1000.0) || self.api_burst == 0 {
            p.push("provision.api_rate_per_sec must be in (0, 1000] and api_burst at least 1".into());
        }
        if self.api_attempts == 0 {
            p.push("provision.api_attempts: at least 1".into());
        }
        p
    }

    /// The API token: `token_file` (which must not be readable by others) or `HCLOUD_TOKEN`.
    pub fn token(&self) -> Result<String, String> {
        if let Some(path) = &self.token_file {
            return outpost_common::config::read_secret_file(path, "provision.token_file");
        }
        std::env::var("HCLOUD_TOKEN")
            .map(|t| t.trim().to_string())
            .map_err(|_| "no Hetzner API token: set provision.token_file (a 0600 file) or HCLOUD_TOKEN".to_string())
    }
}

impl LifecycleConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=256).contains(&self.workers) {
            p.push(format!("lifecycle.workers: {} is outside 1..=256", self.workers));
        }
        if self.lease_secs < 2 {
            p.push("lifecycle.lease_secs: at least 2".into());
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            p.push("lifecycle.retry_initial_ms: at least 1, and at most retry_max_ms".into());
        }
        if !(1..=3650).contains(&self.job_retention_days) {
            p.push(format!("lifecycle.job_retention_days: {} is outside 1..=3650", self.job_retention_days));
        }
        if self.archive_after_secs == 0 || self.delete_after_secs <= self.archive_after_secs {
            p.push("lifecycle.delete_after_secs must be after archive_after_secs (both above 0)".into());
        }
        p
    }
}
