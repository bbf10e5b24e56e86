//! The `hubd` command line: serve, and the admin commands that work next to a running hub.
//!
//! Admin commands read the CA from the data directory (so they need the same file access as hubd itself),
//! mint a five-minute admin certificate in memory, and talk to the running hub over its operator API: the
//! hub stays the only writer of its store. The calls themselves are in `api::admin`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use outpost_common::Role;
use outpost_common::bundle::{Bundle, BundleMeta};

use crate::config::{DEFAULT_CONFIG_PATH, HubConfig};
use crate::pki::rotation::{Keys, Pki};

#[derive(Debug, Parser)]
#[command(
    name = "hubd",
    version,
    about = "The Outpost hub: registry, fleet CA, join tokens, agent gateway, operator API."
)]
pub struct Cli {
    /// Config file (TOML). A missing file at the default path means defaults.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH, env = "OUTPOST_HUBD_CONFIG")]
    pub config: PathBuf,
    /// Overrides `data_dir`.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long, global = true)]
    pub listen: Option<std::net::SocketAddr>,
    /// Overrides `advertise`.
    #[arg(long, global = true)]
    pub advertise: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub (the default).
    Serve,
    /// Set up a new hub: asks for (or takes as flags) the addresses, data directory and store, writes the
    /// config, creates the fleet CA and the first admin's bundle, and says what to do next. Never overwrites
    /// an installation.
    Init(InitArgs),
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Operator certificates.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Signed agentd releases in the artifact store (served to servers at /artifacts/agentd/VERSION/ARCH).
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// The fleet CA: rotate it in phases (init → update_clients → update_servers → standby), with the agents
    /// following over their live streams; roll back until the last step.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Back the hub up while it runs: a consistent copy of its store, the fleet CA's files and hubd.toml, in
    /// one file encrypted with a passphrase or to age recipients (the CA key is in it).
    Backup(BackupArgs),
    /// Restore a backup onto an empty data directory (this machine or a new one), with hubd stopped. Agents
    /// reconnect without enrolling again when the hub is reached at the same address.
    Restore(RestoreArgs),
    /// Revoke a server's certificate; its live stream is closed at once.
    Revoke {
        #[arg(long)]
        server: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The embedded store (`redb`, one hub) or PostgreSQL (`postgres`, several replicas; then
    /// `--postgres-url` and `--postgres-password-file`).
    #[arg(long, value_parser = ["redb", "postgres"])]
    pub store: Option<String>,
    /// `[store.postgres] url` (a libpq connection string without the password).
    #[arg(long)]
    pub postgres_url: Option<String>,
    /// A 0600 file holding the database password.
    #[arg(long)]
    pub postgres_password_file: Option<PathBuf>,
    /// The first admin's name (shown in every audit record).
    #[arg(long)]
    pub admin: Option<String>,
    /// Where the first admin's bundle goes (created 0700; the key 0600). Default: DATA_DIR/../admin-bundle
    /// next to the config.
    #[arg(long)]
    pub bundle_out: Option<PathBuf>,
    /// Never ask: take the flags and the defaults (the default when stdin is not a terminal).
    #[arg(long)]
    pub non_interactive: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup file to write (0600; replaced only once complete).
    #[arg(long)]
    pub out: PathBuf,
    /// Encrypt with the passphrase in this file (its first line; the file must be 0600).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// Encrypt to this age recipient (`age1pq1…`, from `age-keygen -pq` or rage); repeatable.
    #[arg(long = "recipient")]
    pub recipients: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// The passphrase it was encrypted with, in a 0600 file.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
    /// An age identity file (`AGE-SECRET-KEY-PQ-1…` lines, 0600) matching one of its recipients.
    #[arg(long)]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Rotate the fleet CA (see README, "Rotating the fleet CA").
    #[command(subcommand)]
    Rotate(RotateCmd),
}

#[derive(Debug, Subcommand)]
pub enum RotateCmd {
    /// Make a new CA and have every party trust both (phase init).
    Start,
    /// The phase, and how many servers have done what it needs (which are lagging or offline).
    Status,
    /// Go to the next phase once every connected server has done this one: update_clients (agents get
    /// certificates from the new CA), update_servers (the hub serves with it), standby (the old CA is dropped).
    Advance {
        /// Go on although some servers have not done the phase (offline ones, or connected ones that do not
        /// follow); at the end, those are stranded and need a join token.
        #[arg(long)]
        force: bool,
    },
    /// Go back to the current CA (from any phase before the end); `advance` then drops the new one.
    Rollback,
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Store an agentd binary and its minisign signature, checked against `[releases] public_keys`. The
    /// signature's trusted comment says what it is: `minisign -S -m agentd -t "outpost-agentd version=0.2.0 arch=x86_64"`.
    Add {
        /// The agentd binary.
        file: PathBuf,
        /// Its signature (default: FILE.minisig).
        #[arg(long)]
        signature: Option<PathBuf>,
    },
    /// The releases stored: version, architecture, size, SHA-256, signing key.
    List,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a one-time join token for a server record (created if new). Prints the token.
    Create(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Server record the token enrolls (1-63 of a-z, 0-9, '-'); created if new.
    #[arg(long)]
    pub server: String,
    /// Lifetime: 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = outpost_common::parse_duration)]
    pub ttl: Duration,
    /// Customer the server belongs to (kept if empty).
    #[arg(long, default_value = "")]
    pub customer: String,
    /// Plan: starter, pro, team… (kept if empty).
    #[arg(long, default_value = "")]
    pub plan: String,
    /// key=value; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The server is enrolled and connected: enrolling with the new token replaces (revokes) its agent.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Write an operator bundle (CA, certificate, 0600 key, hub address) for the console.
    Issue {
        /// Operator name (shown in every audit record).
        #[arg(long)]
        name: String,
        /// viewer (read-only), support (actions) or admin (tokens, revocation).
        #[arg(long, value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
        /// Directory to write the bundle to (created 0700; key 0600).
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime (at most `[operators] cert_max_ttl_secs` of hubd's config, default 30d).
        #[arg(long, default_value = "30d", value_parser = outpost_common::parse_duration)]
        ttl: Duration,
    },
    /// List the operators the running hub has seen since it started, and every revoked one.
    List,
    /// Refuse every certificate of operator NAME issued until now (a bundle issued later works); its live
    /// sessions are closed.
    Revoke {
        /// Operator name.
        name: String,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

impl Cli {
    pub fn config(&self) -> Result<HubConfig, crate::config::ConfigError> {
        let mut c = HubConfig::load(&self.config)?;
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if let Some(a) = &self.advertise {
            c.advertise = Some(a.clone());
        }
        c.validate()?;
        Ok(c)
    }
}

pub fn load_ca(config: &HubConfig) -> anyhow::Result<Pki> {
    let external = config.external_ca();
    Pki::read(&config.data_dir.join("ca"), external)
        .map_err(|e| anyhow::anyhow!("{e}\n(has hubd been started once with this data_dir? it creates the CA)"))
}

/// A bundle for `name` with `role`, signed by the CA that signs now (during a CA rotation, the bundle
/// trusts both CAs).
pub fn issue_bundle(config: &HubConfig, keys: &Keys, name: &str, role: Role, ttl: Duration) -> anyhow::Result<Bundle> {
    if !outpost_common::cert::valid_name(name) {
        anyhow::bail!("operator name {name:?} must be 1-63 of a-z, 0-9 and '-'");
    }
    let (issued, key_pem) = keys.signing().issue_operator(name, role, ttl)?;
    let hub = config.advertise.clone().unwrap_or_else(|| config.advertise_url(config.listen));
    Ok(Bundle {
        meta: BundleMeta { hub, name: name.to_string(), role: role.to_string() },
        ca_pem: keys.trust_pem(),
        cert_pem: issued.chain_pem,
        key_pem,
    })
}
