//! `agentd`: parse, validate, log, run until SIGTERM/SIGINT. Exit codes: 0 ok, 1 runtime error, 2 usage
//! or config error.

use std::process::ExitCode;

use agentd::cli::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    outpost_common::install_crypto_provider();
    let cli = Cli::parse();
    let config = match cli.config() {
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
                print_result(agentd::cli::enroll(&config, token.as_deref(), token_file.as_ref()).await)
            }
            Some(Command::Status) => print_result(agentd::cli::status(&config)),
            Some(Command::VerifyRelease { file, signature, allow_downgrade }) => {
                print_result(agentd::cli::verify_release(&config, &file, signature.as_deref(), allow_downgrade))
            }
            Some(Command::Run) | None => {
                let probation_until = match agentd::update::launch(&config).await {
                    agentd::update::Launch::Here { probation_until } => probation_until,
                    agentd::update::Launch::Exit(code) => return ExitCode::from(code),
                };
                let shutdown = tokio_util::sync::CancellationToken::new();
                let stop = shutdown.clone();
                // A version on probation stops with its watcher (even one that died before this line).
                let parent = agentd::update::watcher().unwrap_or_else(std::os::unix::process::parent_id);
                let exit_with_parent = cli.exit_with_parent || agentd::update::supervised();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = outpost_common::shutdown_signal() => tracing::info!("signal received; stopping"),
                        _ = parent_exit(parent), if exit_with_parent => tracing::info!("parent exited; stopping"),
                    }
                    stop.cancel();
                });
                match agentd::run(config, shutdown, probation_until).await {
                    Ok(agentd::Ended::Stopped) => ExitCode::SUCCESS,
                    Ok(agentd::Ended::Restart) => ExitCode::from(agentd::update::restart()),
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

fn print_result(r: Result<String, agentd::cli::CommandError>) -> ExitCode {
    match r {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("agentd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves when our parent is no longer `parent` (it died and we were re-parented).
async fn parent_exit(parent: u32) {
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
