//! The `agentd` command line: run (the default), `enroll` and `status`. The binary only parses and maps
//! results to exit codes; what the commands do lives here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::AgentConfig;
use crate::identity::{AgentIdentity, EnrollError};

#[derive(Debug, Parser)]
#[command(name = "agentd", version, about = "The Outpost agent: enrolls, reports health, never loses a report.")]
pub struct Cli {
    /// Config file (TOML). A missing file at the default path means defaults.
    #[arg(long, global = true, default_value = crate::config::DEFAULT_CONFIG_PATH, env = "OUTPOST_AGENTD_CONFIG")]
    pub config: PathBuf,
    /// Overrides `data_dir`.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `hub` (https://HOST:PORT).
    #[arg(long, global = true)]
    pub hub: Option<String>,
    /// Exit when the parent process exits (used by `outpost demo`, so no agent outlives it).
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default).
    Run,
    /// Enroll with a one-time join token and store the identity.
    Enroll {
        /// The token string `hubd token create` printed.
        #[arg(long, conflicts_with = "token_file", required_unless_present = "token_file")]
        token: Option<String>,
        /// A file holding the token; deleted once the token is used.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Print the identity this agent has.
    Status,
    /// Check an agentd release against the pinned `release_keys`: its signature, what it says it is, and
    /// whether this machine may install it (its architecture; no downgrade unless --allow-downgrade).
    VerifyRelease {
        /// The agentd binary.
        file: PathBuf,
        /// Its minisign signature (default: FILE.minisig).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// Accept a version older than this agentd's.
        #[arg(long)]
        allow_downgrade: bool,
    },
}

impl Cli {
    /// The config file with the flags applied, validated.
    pub fn config(&self) -> Result<AgentConfig, crate::config::ConfigError> {
        let mut c = AgentConfig::load(&self.config)?;
        if let Some(d) = &self.data_dir {
            c.data_dir = d.clone();
        }
        if let Some(h) = &self.hub {
            c.hub = Some(h.clone());
        }
        c.validate()?;
        Ok(c)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot read {path}: {error}")]
    TokenFile { path: String, error: std::io::Error },
    #[error("enrollment failed: {0}")]
    Enroll(#[from] EnrollError),
    #[error("not enrolled: run `agentd enroll --token TOKEN` (a token comes from `hubd token create`)")]
    NotEnrolled,
    #[error("{0}")]
    Unreadable(String),
    #[error("no release key pinned: set release_keys in agentd.toml (the `RW…` line of the release key's .pub file)")]
    NoReleaseKeys,
    #[error("{file} refused: {error}")]
    Release { file: String, error: outpost_common::release::ReleaseError },
}

/// `agentd verify-release`: the release `file` checked as an update would check it. Returns what to print.
pub fn verify_release(
    config: &AgentConfig,
    file: &std::path::Path,
    signature: Option<&std::path::Path>,
    allow_downgrade: bool,
) -> Result<String, CommandError> {
    use outpost_common::release::{PublicKey, Signature, verify};
    let keys: Vec<PublicKey> = config.release_keys.iter().filter_map(|k| PublicKey::parse(k).ok()).collect();
    if keys.is_empty() {
        return Err(CommandError::NoReleaseKeys);
    }
    let sig_path = signature.map(PathBuf::from).unwrap_or_else(|| PathBuf::from(format!("{}.minisig", file.display())));
    use outpost_common::release::{MAX_BINARY, MAX_SIGNATURE, read_bounded};
    let data = read_bounded(file, MAX_BINARY).map_err(CommandError::Unreadable)?;
    let sig = read_bounded(&sig_path, MAX_SIGNATURE as u64).map_err(CommandError::Unreadable)?;
    let sig = String::from_utf8_lossy(&sig).into_owned();
    let refused = |error| CommandError::Release { file: file.display().to_string(), error };
    let release = verify(&data, &sig, &keys).map_err(refused)?;
    release.installable(std::env::consts::ARCH, crate::VERSION, allow_downgrade).map_err(refused)?;
    let by = Signature::parse(&sig).map(|s| s.key_id_hex()).unwrap_or_default();
    Ok(format!(
        "{}: agentd {} for {}, signed by release key {by}; installable here (running {})",
        file.display(),
        release.version,
        release.arch,
        crate::VERSION
    ))
}

/// `agentd enroll`: enrolls and stores the identity; a token file is deleted once used (it is a secret).
/// Returns what to print.
pub async fn enroll(config: &AgentConfig, token: Option<&str>, file: Option<&PathBuf>) -> Result<String, CommandError> {
    let token = match (token, file) {
        (Some(t), _) => t.to_string(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|error| CommandError::TokenFile { path: f.display().to_string(), error })?,
        (None, None) => unreachable!("clap requires one"),
    };
    let id = crate::identity::enroll(token.trim(), config.hub.as_deref()).await?;
    id.save(&config.data_dir)?;
    let mut out = format!("enrolled as {} (agent {}) with {}", id.server, id.agent_id, id.hub);
    if let Some(f) = file
        && let Err(error) = std::fs::remove_file(f)
    {
        out.push_str(&format!("\nwarning: could not delete the used token {}: {error}", f.display()));
    }
    Ok(out)
}

/// `agentd status`: the identity and its certificate.
pub fn status(config: &AgentConfig) -> Result<String, CommandError> {
    let id = AgentIdentity::load(&config.data_dir)?.ok_or(CommandError::NotEnrolled)?;
    let mut out = format!("server:   {}\nagent id: {}\nhub:      {}", id.server, id.agent_id, id.hub);
    if let Ok(c) = id.cert() {
        let now = outpost_common::now_ms();
        out.push_str(&format!(
            "\ncert:     serial {} expires {}{}",
            c.serial,
            outpost_common::when::utc_and_relative(now, c.not_after * 1000),
            if c.not_after * 1000 <= now { " (EXPIRED: enroll again with a new token)" } else { "" }
        ));
    }
    Ok(out)
}
