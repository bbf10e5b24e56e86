//! hubd configuration: one validated struct, from a TOML file plus flags. Every problem is reported at once,
//! naming the field, before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default location of the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/outpost/hubd.toml";

/// hubd's configuration. Top-level keys say where the hub lives; each subsystem has its own section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Address the single TLS port binds to (agents, enrollment and operators share it).
    pub listen: SocketAddr,
    /// `https://host:port` agents and operators use to reach this hub; goes into join tokens.
    /// Default: `https://<listen>` (with 127.0.0.1 when listening on 0.0.0.0). Several replicas on one
    /// PostgreSQL: every replica's address, comma-separated, the same list on each (agents rotate through
    /// it when one does not answer).
    pub advertise: Option<String>,
    /// Extra DNS names / IPs for the hub's server certificate (the advertise host, localhost and 127.0.0.1
    /// are always included).
    pub tls_names: Vec<String>,
    /// How long the hub's own serving certificate is valid (issued at start, renewed two thirds into its
    /// life while the hub runs). Default 90 days.
    pub server_cert_validity_secs: u64,
    /// Where the store and the CA live.
    pub data_dir: PathBuf,
    /// Rolling log files go here when set.
    pub log_dir: Option<PathBuf>,
    pub ca: CaConfig,
    pub store: StoreConfig,
    pub agents: AgentsConfig,
    pub operators: OperatorsConfig,
    pub audit: AuditConfig,
    pub provision: crate::lifecycle::ProvisionConfig,
    pub lifecycle: crate::lifecycle::LifecycleConfig,
    pub admin: AdminConfig,
    pub alerts: crate::alerts::AlertsConfig,
    pub usage: crate::usage::UsageConfig,
    pub releases: ReleasesConfig,
    pub backup: BackupConfig,
    /// The file this was read from (what a scheduled backup includes).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[backup]`: backups the hub takes by itself, encrypted to age recipients (unattended: no passphrase on
/// the host). `hubd backup` takes one by hand.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// How often; 0: no scheduled backups.
    pub every_secs: u64,
    /// The newest this many are kept; older ones are deleted.
    pub keep: u32,
    /// Where they go (another disk, or a mount that leaves the machine). Default: DATA/scheduled-backups.
    pub dir: Option<PathBuf>,
    /// age recipients (`age1pq1…`); required when `every_secs` is set.
    pub recipients: Vec<String>,
    /// The `backup_too_old` alert fires when the last good backup is older than this; 0: twice `every_secs`.
    pub max_age_secs: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig { every_secs: 0, keep: 7, dir: None, recipients: Vec::new(), max_age_secs: 0 }
    }
}

impl BackupConfig {
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(if self.max_age_secs > 0 { self.max_age_secs } else { self.every_secs * 2 })
    }
}

/// `[releases]`: the release public keys (minisign, `RW…`) `hubd release add` checks a release against
/// before storing it. The hub never holds the release key itself; agents pin the same public keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleasesConfig {
    pub public_keys: Vec<String>,
    /// The zstd level `hubd release add` compresses a release with for transfer (1..=22; 19 takes agentd's
    /// 17 MB to about 5 MB in some seconds).
    pub zstd_level: i32,
}

impl Default for ReleasesConfig {
    fn default() -> Self {
        ReleasesConfig { public_keys: Vec::new(), zstd_level: 19 }
    }
}

impl ReleasesConfig {
    pub fn keys(&self) -> Result<Vec<outpost_common::release::PublicKey>, String> {
        self.public_keys
            .iter()
            .map(|k| outpost_common::release::PublicKey::parse(k).map_err(|e| format!("releases.public_keys: {e}")))
            .collect()
    }
}

/// `[admin]`: the listener Prometheus scrapes (`/metrics`) and health checks call (`/healthz`, `/readyz`).
/// Plain HTTP, on loopback by default. An address other than loopback needs `bearer_token_file` (then
/// `/metrics` answers only `Authorization: Bearer <the file's token>`; Prometheus: `authorization:
/// credentials_file`) or, on a network you trust, `allow_remote_without_auth = true`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where it listens (port 0: any free port, printed in the READY line and the log).
    pub listen: SocketAddr,
    /// `false`: no admin listener at all.
    pub enabled: bool,
    /// A file (keep it 0600) whose one line is the token `/metrics` requires.
    pub bearer_token_file: Option<PathBuf>,
    /// Serve `/metrics` to anyone who can reach a non-loopback `listen`, without a token.
    pub allow_remote_without_auth: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9464".parse().expect("literal"),
            enabled: true,
            bearer_token_file: None,
            allow_remote_without_auth: false,
        }
    }
}

impl AdminConfig {
    /// The token `/metrics` requires, read from `bearer_token_file` (None: no token configured).
    pub fn bearer_token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.bearer_token_file else { return Ok(None) };
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("admin.bearer_token_file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "admin.bearer_token_file {}: one line of at least 16 characters, no spaces (e.g. `openssl rand -hex 32`)",
                path.display()
            ));
        }
        Ok(Some(token.to_string()))
    }
}

/// `[ca]`: an external fleet CA. Without it the hub creates one in `data_dir/ca`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaConfig {
    /// CA certificate (PEM); set with `key`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[store]`: where the hub keeps its state.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redb` (embedded, one hub; the default: `data_dir/store.redb`), `sled` (the embedded store before redb,
    /// `data_dir/store`; a redb hub migrates it at start) or `postgres` (several hubs on one database:
    /// `[store.postgres]`).
    pub kind: StoreKind,
    /// The embedded store's page cache, MiB. Reports are appended and folded, so few reads need it:
    /// 16 MiB cost no CPU against 64 at 10,000 agents and saved 17 MiB (BENCHMARKS.md).
    pub cache_mib: u64,
    /// Health points kept per server for charts (bounded history).
    pub history_len: u32,
    /// What an acknowledged report (and every other acknowledged write) survives on sled: `process` (a crash
    /// of hubd; the operating system writes it out within about half a second) or `power` (a power loss: each
    /// group commit is followed by an fdatasync of the store file before anything in it is acknowledged).
    /// redb always syncs each group commit (`power`).
    pub durability: Durability,
    /// The embedded store's group commits start at most this many milliseconds apart while writes arrive
    /// together: each sync covers more reports, each acknowledged a little later (BENCHMARKS.md).
    pub commit_gap_ms: u64,
    pub postgres: PostgresConfig,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Redb,
    Sled,
    Postgres,
}

impl StoreKind {
    /// In the data directory (not a database server).
    pub fn embedded(self) -> bool {
        self != StoreKind::Postgres
    }
}

/// `[store.postgres]`: the database several hubs share.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// A libpq connection string (`host=db.internal port=5432 user=outpost dbname=outpost`) or URL; the
    /// password goes in `password_file`, not here.
    pub url: String,
    /// A 0600 file holding the password.
    pub password_file: Option<PathBuf>,
    /// Connections per hub at most.
    pub pool_size: usize,
    /// How long to wait for a connection before answering "store unavailable".
    pub connect_timeout_secs: u64,
    /// The CA (PEM) that signed PostgreSQL's server certificate: the connection is then TLS, verified
    /// against it and the host name. Required unless the database is on this host (loopback or a Unix
    /// socket): the hub sends nothing over a network in plain text.
    pub ca_file: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: String::new(),
            password_file: None,
            pool_size: 16,
            connect_timeout_secs: 5,
            ca_file: None,
        }
    }
}

impl PostgresConfig {
    /// The options to connect with (the password read from its file).
    pub fn options(&self) -> Result<crate::store::postgres::PgOptions, String> {
        let password = match &self.password_file {
            Some(p) => Some(outpost_common::config::read_secret_file(p, "store.postgres.password_file")?),
            None => None,
        };
        let tls_ca_pem = match &self.ca_file {
            Some(p) => {
                Some(std::fs::read_to_string(p).map_err(|e| format!("store.postgres.ca_file {}: {e}", p.display()))?)
            }
            None => None,
        };
        Ok(crate::store::postgres::PgOptions {
            url: self.url.clone(),
            password,
            tls_ca_pem,
            pool_size: self.pool_size,
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout_secs),
        })
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Process,
    Power,
}

/// `[agents]`: agent identities and liveness.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Lifetime of agent certificates; agents renew at about two thirds of it.
    pub cert_ttl_secs: u64,
    /// How long a server stays "disconnected" before it is "lost".
    pub grace_secs: u64,
    /// Enroll calls per second from one source address (0: unlimited); past it, RESOURCE_EXHAUSTED with a
    /// retry hint. Bursts of `enroll_burst_per_source` are allowed.
    pub enroll_rate_per_source: u32,
    pub enroll_burst_per_source: u32,
}

/// `[operators]`: operator certificates.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorsConfig {
    /// Longest lifetime `hubd operator issue` gives (and the hub accepts for) an operator certificate.
    pub cert_max_ttl_secs: u64,
}

/// `[audit]`: the audit log.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Records older than this are deleted (checked hourly).
    pub retention_days: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            listen: "0.0.0.0:7443".parse().expect("valid literal"),
            advertise: None,
            tls_names: Vec::new(),
            server_cert_validity_secs: 90 * 86_400,
            data_dir: PathBuf::from("/var/lib/outpost-hubd"),
            log_dir: None,
            ca: CaConfig::default(),
            store: StoreConfig::default(),
            agents: AgentsConfig::default(),
            operators: OperatorsConfig::default(),
            audit: AuditConfig::default(),
            provision: Default::default(),
            lifecycle: Default::default(),
            admin: AdminConfig::default(),
            alerts: Default::default(),
            usage: Default::default(),
            releases: Default::default(),
            backup: Default::default(),
            source: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Redb,
            cache_mib: 16,
            history_len: 360,
            durability: Durability::Process,
            commit_gap_ms: crate::store::kv::COMMIT_GAP_MS,
            postgres: PostgresConfig::default(),
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            cert_ttl_secs: 24 * 3600,
            grace_secs: 120,
            enroll_rate_per_source: 20,
            enroll_burst_per_source: 200,
        }
    }
}

impl Default for OperatorsConfig {
    fn default() -> Self {
        OperatorsConfig { cert_max_ttl_secs: 30 * 24 * 3600 }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { retention_days: 400 }
    }
}

/// Keys of the flat config file (before sections), and where each lives now.
const MOVED: [(&str, &str, &str); 10] = [
    ("ca_cert", "ca", "cert"),
    ("ca_key", "ca", "key"),
    ("cache_mib", "store", "cache_mib"),
    ("history_len", "store", "history_len"),
    ("agent_cert_ttl_secs", "agents", "cert_ttl_secs"),
    ("grace_secs", "agents", "grace_secs"),
    ("enroll_rate_per_source", "agents", "enroll_rate_per_source"),
    ("enroll_burst_per_source", "agents", "enroll_burst_per_source"),
    ("operator_cert_max_ttl_secs", "operators", "cert_max_ttl_secs"),
    ("audit_retention_days", "audit", "retention_days"),
];

pub use outpost_common::config::ConfigError;

impl HubConfig {
    /// Where the agentd releases live: `provision.artifacts_dir`, else `data_dir/artifacts`.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.provision.artifacts_dir.clone().unwrap_or_else(|| self.data_dir.join("artifacts"))
    }

    /// Reads `path`; a missing file at the default path means "all defaults".
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => HubConfig::from_toml(&text)
                .map(|c| HubConfig { source: Some(path.to_path_buf()), ..c })
                .map_err(|error| ConfigError::Parse { path: path.into(), error }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(DEFAULT_CONFIG_PATH) => {
                Ok(HubConfig::default())
            }
            Err(error) => Err(ConfigError::Read { path: path.into(), error }),
        }
    }

    /// Parses a config file. A key of the old flat layout gets a message saying where it moved.
    pub fn from_toml(text: &str) -> Result<HubConfig, String> {
        if let Ok(table) = text.parse::<toml::Table>() {
            let moved: Vec<String> = MOVED
                .iter()
                .filter(|(old, _, _)| table.contains_key(*old))
                .map(|(old, section, new)| format!("`{old}` moved to section [{section}] as `{new}`"))
                .collect();
            if !moved.is_empty() {
                return Err(format!(
                    "this file has the flat layout of an older hubd; settings now live in sections: {}",
                    moved.join("; ")
                ));
            }
        }
        outpost_common::config::from_toml(text)
    }

    /// Checks every field; returns all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.backup.every_secs > 0 {
            if self.backup.recipients.is_empty() {
                problems.push("backup.recipients: scheduled backups are encrypted to age recipients (age1pq1…); give at least one".into());
            }
            for r in &self.backup.recipients {
                if r.parse::<age::pq::Recipient>().is_err() {
                    problems.push(format!("backup.recipients: {r:?} is not an age recipient (age1pq1…)"));
                }
            }
            if self.backup.keep == 0 {
                problems.push("backup.keep: must be at least 1".into());
            }
        }
        if let Some(a) = &self.advertise
            && let Err(e) = outpost_common::tls::HubAddr::parse_list(a)
        {
            problems.push(format!("advertise: {e}"));
        }
        if self.admin.enabled
            && !self.admin.listen.ip().is_loopback()
            && self.admin.bearer_token_file.is_none()
            && !self.admin.allow_remote_without_auth
        {
            problems.push(format!(
                "admin.listen {}: not a loopback address, so /metrics would be served to anyone who can reach it; set admin.bearer_token_file (a file with a token Prometheus sends), or admin.allow_remote_without_auth = true on a network you trust",
                self.admin.listen
            ));
        }
        if self.admin.enabled
            && self.admin.bearer_token_file.is_some()
            && let Err(e) = self.admin.bearer_token()
        {
            problems.push(e);
        }
        if !(10..=397 * 86_400).contains(&self.server_cert_validity_secs) {
            problems.push(format!(
                "server_cert_validity_secs: {} is outside 10..=34300800 (397 days)",
                self.server_cert_validity_secs
            ));
        }
        if !(1..=22).contains(&self.releases.zstd_level) {
            problems.push(format!("releases.zstd_level: {} is outside 1..=22", self.releases.zstd_level));
        }
        if let Err(e) = self.releases.keys() {
            problems.push(e);
        }
        if self.ca.cert.is_some() != self.ca.key.is_some() {
            problems.push("ca.cert and ca.key: set both (an external CA) or neither (the hub creates one)".into());
        }
        // Seconds-long lifetimes are legitimate in tests of renewal; 90 days is the ceiling for "short-lived".
        if !(3..=90 * 24 * 3600).contains(&self.agents.cert_ttl_secs) {
            problems.push(format!("agents.cert_ttl_secs: {} is outside 3..=7776000", self.agents.cert_ttl_secs));
        }
        if self.agents.grace_secs == 0 {
            problems.push("agents.grace_secs: must be at least 1".into());
        }
        if !(1..=3650).contains(&self.audit.retention_days) {
            problems.push(format!("audit.retention_days: {} is outside 1..=3650", self.audit.retention_days));
        }
        if !(1..=100_000).contains(&self.store.history_len) {
            problems.push(format!("store.history_len: {} is outside 1..=100000", self.store.history_len));
        }
        if !(60..=365 * 24 * 3600).contains(&self.operators.cert_max_ttl_secs) {
            problems.push(format!(
                "operators.cert_max_ttl_secs: {} is outside 60..=31536000 (one year)",
                self.operators.cert_max_ttl_secs
            ));
        }
        if !(4..=65536).contains(&self.store.cache_mib) {
            problems.push(format!("store.cache_mib: {} is outside 4..=65536", self.store.cache_mib));
        }
        if self.store.commit_gap_ms > 100 {
            problems.push(format!(
                "store.commit_gap_ms: {} is over 100 (every acknowledgement would wait that long under load)",
                self.store.commit_gap_ms
            ));
        }
        let pg = &self.store.postgres;
        if self.store.kind == StoreKind::Postgres {
            if pg.url.trim().is_empty() {
                problems.push(
                    "store.postgres.url: set it for kind = \"postgres\" (e.g. \"host=db port=5432 user=outpost dbname=outpost\")"
                        .into(),
                );
            } else if let Err(e) = pg.url.parse::<tokio_postgres::Config>() {
                problems.push(format!("store.postgres.url: not a PostgreSQL connection string: {e}"));
            } else if pg.url.contains("password") {
                problems
                    .push("store.postgres.url: holds a password; put it in store.postgres.password_file (0600)".into());
            } else if let Ok(c) = pg.url.parse::<tokio_postgres::Config>()
                && pg.ca_file.is_none()
                && let Some(host) = crate::store::postgres::remote_host(&c)
            {
                problems.push(format!(
                    "store.postgres: the database at {host} is not on this host and the connection would be plain \
                     text: set store.postgres.ca_file to the CA that signed its server certificate (TLS, verified)"
                ));
            }
            if let Err(e) = pg.options() {
                problems.push(e);
            }
            if self.store.durability == Durability::Power {
                problems.push(
                    "store.durability applies to the embedded store; PostgreSQL acknowledges what it committed \
                     (its synchronous_commit decides what that survives)"
                        .into(),
                );
            }
        }
        if !(1..=1024).contains(&pg.pool_size) {
            problems.push(format!("store.postgres.pool_size: {} is outside 1..=1024", pg.pool_size));
        }
        if !(1..=300).contains(&pg.connect_timeout_secs) {
            problems
                .push(format!("store.postgres.connect_timeout_secs: {} is outside 1..=300", pg.connect_timeout_secs));
        }
        problems.extend(self.provision.problems());
        problems.extend(self.lifecycle.problems());
        problems.extend(self.alerts.problems());
        problems.extend(self.usage.problems());
        outpost_common::config::problems(problems)
    }

    /// The address that goes into join tokens and bundles.
    pub fn advertise_url(&self, bound: SocketAddr) -> String {
        match &self.advertise {
            Some(a) => outpost_common::tls::HubAddr::parse_list(a)
                .map(|a| outpost_common::tls::HubAddr::join(&a))
                .unwrap_or_else(|_| a.clone()),
            None => {
                let ip = if bound.ip().is_unspecified() { "127.0.0.1".to_string() } else { bound.ip().to_string() };
                let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
                format!("https://{host}:{}", bound.port())
            }
        }
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.agents.grace_secs)
    }

    /// The CA certificate and key paths, when the CA is external.
    pub fn external_ca(&self) -> Option<(&Path, &Path)> {
        self.ca.cert.as_deref().zip(self.ca.key.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named() {
        let err = HubConfig::from_toml("listen = \"127.0.0.1:1\"\ngrace_sec = 3\n").unwrap_err();
        assert!(err.contains("unknown field `grace_sec`"), "{err}");
        let err = HubConfig::from_toml("[agents]\ngrace = 3\n").unwrap_err();
        assert!(err.contains("unknown field `grace`"), "{err}");
    }

    #[test]
    fn sections_parse_and_an_old_flat_file_says_what_moved_where() {
        let c = HubConfig::from_toml(
            "listen = \"127.0.0.1:1\"\n[agents]\ngrace_secs = 3\n[store]\nhistory_len = 7\n[audit]\nretention_days = 9\n",
        )
        .unwrap();
        assert_eq!((c.agents.grace_secs, c.store.history_len, c.audit.retention_days), (3, 7, 9));
        assert_eq!(c.agents.cert_ttl_secs, 24 * 3600, "what is not set keeps its default");
        let err =
            HubConfig::from_toml("grace_secs = 3\nhistory_len = 7\noperator_cert_max_ttl_secs = 60\n").unwrap_err();
        for moved in [
            "`grace_secs` moved to section [agents] as `grace_secs`",
            "`history_len` moved to section [store] as `history_len`",
            "`operator_cert_max_ttl_secs` moved to section [operators] as `cert_max_ttl_secs`",
        ] {
            assert!(err.contains(moved), "{moved} missing from {err}");
        }
    }

    #[test]
    fn invalid_value_is_named() {
        let err = HubConfig::from_toml("listen = \"not an address\"\n").unwrap_err();
        assert!(err.contains("listen"), "{err}");
        let mut c = HubConfig { advertise: Some("http://x:1".into()), ..HubConfig::default() };
        c.agents.grace_secs = 0;
        c.store.history_len = 0;
        c.audit.retention_days = 0;
        c.store.commit_gap_ms = 101;
        let err = c.validate().unwrap_err().to_string();
        for field in
            ["agents.grace_secs", "store.history_len", "advertise", "audit.retention_days", "store.commit_gap_ms"]
        {
            assert!(err.contains(field), "{field} missing from {err}");
        }
    }

    #[test]
    fn advertise_defaults_to_loopback_for_wildcard() {
        let c = HubConfig::default();
        assert_eq!(c.advertise_url("0.0.0.0:7443".parse().unwrap()), "https://127.0.0.1:7443");
        assert_eq!(c.advertise_url("[::1]:9".parse().unwrap()), "https://[::1]:9");
    }

    #[test]
    fn a_postgres_store_is_checked_before_anything_starts() {
        let pg = |extra: &str| {
            let c = HubConfig::from_toml(&format!("listen = \"127.0.0.1:1\"\n[store]\nkind = \"postgres\"\n{extra}"))
                .unwrap();
            c.validate().err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(pg("").contains("store.postgres.url: set it"), "{}", pg(""));
        let err = pg("[store.postgres]\nurl = \"host=db.internal user=outpost password=hunter2\"\n");
        assert!(err.contains("holds a password") && !err.contains("hunter2"), "{err}");
        let err = pg("[store.postgres]\nurl = \"host=db.internal user=outpost\"\n");
        assert!(err.contains("db.internal is not on this host") && err.contains("ca_file"), "{err}");
        assert_eq!(pg("[store.postgres]\nurl = \"host=127.0.0.1 user=outpost\"\n"), "", "loopback may be plain");
        let err = pg("[store.postgres]\nurl = \"host=127.0.0.1\"\npassword_file = \"/nonexistent\"\npool_size = 0\n");
        assert!(err.contains("password_file /nonexistent") && err.contains("pool_size: 0"), "{err}");
    }
}
