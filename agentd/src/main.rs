//! `agentd`: parse, validate, log, run until SIGTERM/SIGINT. Exit codes: 0 ok, 1 runtime error, 2 usage
//! or config error.

use std::path::PathBuf;
use std::process::ExitCode;

use agentd::AgentConfig;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "agentd", version, about = "The Outpost agent: enrolls, reports health, never loses a report.")]
struct Cli {
    /// Config file (TOML). A missing file at the default path means defaults.
    #[arg(long, global = true, default_value = agentd::config::DEFAULT_CONFIG_PATH, env = "OUTPOST_AGENTD_CONFIG")]
    config: PathBuf,
    /// Overrides `data_dir`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Overrides `hub` (https://HOST:PORT).
    #[arg(long, global = true)]
    hub: Option<String>,
    /// Exit when the parent process exits (used by `outpost demo`, so no agent outlives it).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Enroll with a one-time join token and store the identity.
    Enroll {
        /// The token string `hubd token create` printed.
        #[arg(long, conflicts_with = "token_file", required_unless_present = "token_file")]
        token: Option<String>,
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Print the identity this agent has.
    Status,
}

fn config(cli: &Cli) -> Result<AgentConfig, agentd::config::ConfigError> {
    let mut c = AgentConfig::load(&cli.config)?;
    if let Some(d) = &cli.data_dir {
        c.data_dir = d.clone();
    }
    if let Some(h) = &cli.hub {
        c.hub = Some(h.clone());
    }
    c.validate()?;
    Ok(c)
}

fn main() -> ExitCode {
    outpost_common::install_crypto_provider();
    let cli = Cli::parse();
    let config = match config(&cli) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("agentd: {error}");
            return ExitCode::from(2);
        }
    };
    // One thread: the agent shares a small server with K3s.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("agentd: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let _log = match outpost_common::logging::init("agentd", config.log_dir.as_deref(), "info", true) {
        Ok(g) => g,
        Err(error) => {
            eprintln!("agentd: {error}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        match cli.command {
            Some(Command::Enroll { token, token_file }) => {
                let spent = token_file.clone();
                let token = match (token, token_file) {
                    (Some(t), _) => t,
                    (None, Some(f)) => match std::fs::read_to_string(&f) {
                        Ok(t) => t,
                        Err(error) => {
                            eprintln!("agentd: cannot read {}: {error}", f.display());
                            return ExitCode::from(2);
                        }
                    },
                    (None, None) => unreachable!("clap requires one"),
                };
                match agentd::identity::enroll(token.trim(), config.hub.as_deref())
                    .await
                    .and_then(|id| id.save(&config.data_dir).map(|()| id))
                {
                    Ok(id) => {
                        println!("enrolled as {} (agent {}) with {}", id.server, id.agent_id, id.hub);
                        // A used token is worthless, but it is a secret: it does not stay on disk.
                        if let Some(f) = spent
                            && let Err(error) = std::fs::remove_file(&f)
                        {
                            eprintln!("agentd: enrolled, but could not delete the used token {}: {error}", f.display());
                        }
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        eprintln!("agentd: enrollment failed: {error}");
                        ExitCode::FAILURE
                    }
                }
            }
            Some(Command::Status) => match agentd::identity::AgentIdentity::load(&config.data_dir) {
                Ok(Some(id)) => {
                    let cert = id.cert().ok();
                    println!("server:   {}\nagent id: {}\nhub:      {}", id.server, id.agent_id, id.hub);
                    if let Some(c) = cert {
                        let left = c.not_after - outpost_common::now_secs();
                        println!(
                            "cert:     serial {} expires in {}s{}",
                            c.serial,
                            left,
                            if left <= 0 { " (EXPIRED: enroll again)" } else { "" }
                        );
                    }
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    println!("not enrolled");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    eprintln!("agentd: {error}");
                    ExitCode::FAILURE
                }
            },
            Some(Command::Run) | None => {
                let shutdown = tokio_util::sync::CancellationToken::new();
                let stop = shutdown.clone();
                let exit_with_parent = cli.exit_with_parent;
                tokio::spawn(async move {
                    tokio::select! {
                        _ = outpost_common::shutdown_signal() => tracing::info!("signal received; stopping"),
                        _ = parent_exit(), if exit_with_parent => tracing::info!("parent exited; stopping"),
                    }
                    stop.cancel();
                });
                match agentd::run(config, shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        tracing::error!(%error, "agentd failed");
                        eprintln!("agentd: {error}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

/// Resolves when our parent process is gone (we get re-parented).
async fn parent_exit() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}
