//! hubd configuration: one validated struct, from a TOML file plus flags. Every problem is reported at once,
//! naming the field, before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default location of the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/outpost/hubd.toml";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Address the single TLS port binds to (agents, enrollment and operators share it).
    pub listen: SocketAddr,
    /// `https://host:port` agents and operators use to reach this hub; goes into join tokens.
    /// Default: `https://<listen>` (with 127.0.0.1 when listening on 0.0.0.0).
    pub advertise: Option<String>,
    /// Extra DNS names / IPs for the hub's server certificate (the advertise host, localhost and 127.0.0.1
    /// are always included).
    pub tls_names: Vec<String>,
    /// Where the store and the CA live.
    pub data_dir: PathBuf,
    /// External CA certificate (PEM). With `ca_key`, replaces the CA the hub would create in `data_dir/ca`.
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
    /// Lifetime of agent certificates; agents renew at about two thirds of it.
    pub agent_cert_ttl_secs: u64,
    /// How long a server stays "disconnected" before it is "lost".
    pub grace_secs: u64,
    /// Health points kept per server for charts (bounded history).
    pub history_len: u32,
    /// Rolling log files go here when set.
    pub log_dir: Option<PathBuf>,
    /// sled page cache, MiB.
    pub cache_mib: u64,
    /// Audit records older than this are deleted (checked hourly).
    pub audit_retention_days: u32,
    /// Enroll calls per second from one source address (0: unlimited); past it, RESOURCE_EXHAUSTED with a
    /// retry hint. Bursts of `enroll_burst_per_source` are allowed.
    pub enroll_rate_per_source: u32,
    pub enroll_burst_per_source: u32,
    /// Longest lifetime `hubd operator issue` gives an operator certificate.
    pub operator_cert_max_ttl_secs: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: "0.0.0.0:7443".parse().expect("valid literal"),
            advertise: None,
            tls_names: Vec::new(),
            data_dir: PathBuf::from("/var/lib/outpost-hubd"),
            ca_cert: None,
            ca_key: None,
            agent_cert_ttl_secs: 24 * 3600,
            grace_secs: 120,
            history_len: 360,
            log_dir: None,
            cache_mib: 64,
            audit_retention_days: 400,
            enroll_rate_per_source: 20,
            enroll_burst_per_source: 200,
            operator_cert_max_ttl_secs: 30 * 24 * 3600,
        }
    }
}

pub use outpost_common::config::ConfigError;

impl HubConfig {
    /// Reads `path`; a missing file at the default path means "all defaults".
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        outpost_common::config::load(path, DEFAULT_CONFIG_PATH)
    }

    pub fn from_toml(text: &str) -> Result<HubConfig, String> {
        outpost_common::config::from_toml(text)
    }

    /// Checks every field; returns all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Some(a) = &self.advertise
            && let Err(e) = outpost_common::tls::HubAddr::parse(a)
        {
            problems.push(format!("advertise: {e}"));
        }
        if self.ca_cert.is_some() != self.ca_key.is_some() {
            problems.push("ca_cert and ca_key: set both (an external CA) or neither (the hub creates one)".into());
        }
        // Seconds-long lifetimes are legitimate in tests of renewal; 90 days is the ceiling for "short-lived".
        if !(3..=90 * 24 * 3600).contains(&self.agent_cert_ttl_secs) {
            problems.push(format!("agent_cert_ttl_secs: {} is outside 3..=7776000", self.agent_cert_ttl_secs));
        }
        if self.grace_secs == 0 {
            problems.push("grace_secs: must be at least 1".into());
        }
        if !(1..=3650).contains(&self.audit_retention_days) {
            problems.push(format!("audit_retention_days: {} is outside 1..=3650", self.audit_retention_days));
        }
        if !(1..=100_000).contains(&self.history_len) {
            problems.push(format!("history_len: {} is outside 1..=100000", self.history_len));
        }
        if !(60..=365 * 24 * 3600).contains(&self.operator_cert_max_ttl_secs) {
            problems.push(format!(
                "operator_cert_max_ttl_secs: {} is outside 60..=31536000 (one year)",
                self.operator_cert_max_ttl_secs
            ));
        }
        if !(4..=65536).contains(&self.cache_mib) {
            problems.push(format!("cache_mib: {} is outside 4..=65536", self.cache_mib));
        }
        outpost_common::config::problems(problems)
    }

    /// The address that goes into join tokens and bundles.
    pub fn advertise_url(&self, bound: SocketAddr) -> String {
        match &self.advertise {
            Some(a) => outpost_common::tls::HubAddr::parse(a).map(|a| a.url).unwrap_or_else(|_| a.clone()),
            None => {
                let ip = if bound.ip().is_unspecified() { "127.0.0.1".to_string() } else { bound.ip().to_string() };
                let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
                format!("https://{host}:{}", bound.port())
            }
        }
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named() {
        let err = HubConfig::from_toml("listen = \"127.0.0.1:1\"\ngrace_sec = 3\n").unwrap_err();
        assert!(err.contains("unknown field `grace_sec`"), "{err}");
    }

    #[test]
    fn invalid_value_is_named() {
        let err = HubConfig::from_toml("listen = \"not an address\"\n").unwrap_err();
        assert!(err.contains("listen"), "{err}");
        let c = HubConfig {
            grace_secs: 0,
            history_len: 0,
            advertise: Some("http://x:1".into()),
            audit_retention_days: 0,
            ..HubConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        for field in ["grace_secs", "history_len", "advertise", "audit_retention_days"] {
            assert!(err.contains(field), "{field} missing from {err}");
        }
    }

    #[test]
    fn advertise_defaults_to_loopback_for_wildcard() {
        let c = HubConfig::default();
        assert_eq!(c.advertise_url("0.0.0.0:7443".parse().unwrap()), "https://127.0.0.1:7443");
        assert_eq!(c.advertise_url("[::1]:9".parse().unwrap()), "https://[::1]:9");
    }
}
