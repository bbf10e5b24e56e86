//! `hubd`: parse, validate, log, run until SIGTERM/SIGINT, drain. Exit codes: 0 ok, 1 runtime error,
//! 2 usage or config error.

use std::process::ExitCode;

use clap::Parser;
use hub::cli::{Cli, Command};

/// mimalloc: glibc's malloc and free were ~13 % of hubd's CPU under report load (perf).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_huge_pages();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run()),
        Err(error) => {
            eprintln!("hubd: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for them on its arenas, and a 2 MiB
/// page counts whole in RSS however little of it is in use: at 10,000 connected agents 820 of hubd's 985 MiB
/// were huge pages. Small pages cost hubd no measurable CPU (BENCHMARKS.md).
fn no_huge_pages() {
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("hubd: could not turn transparent huge pages off: {error}");
    }
}

async fn run() -> ExitCode {
    outpost_common::install_crypto_provider();
    let cli = Cli::parse();
    if let Some(Command::Init(args)) = &cli.command {
        // No config to load: this writes it. The global flags answer their questions.
        let given =
            hub::init::Given { listen: cli.listen, advertise: cli.advertise.clone(), data_dir: cli.data_dir.clone() };
        return match hub::init::init(&cli.config, &hub::HubConfig::default(), &given, args) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("hubd init: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Restore(args)) = &cli.command {
        // Onto a fresh machine there may be no config yet: the backup brings one.
        return match hub::backup::restore(&cli.config, cli.data_dir.as_deref(), args) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("hubd restore: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match cli.config() {
        Ok(c) => c,
        Err(error) => {
            eprintln!("hubd: {error}");
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, None | Some(Command::Serve)) {
        return match hub::api::admin::admin(&cli, &config).await {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("hubd: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let _log = match outpost_common::logging::init("hubd", config.log_dir.as_deref(), "info", true) {
        Ok(g) => g,
        Err(error) => {
            eprintln!("hubd: {error}");
            return ExitCode::from(2);
        }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        outpost_common::shutdown_signal().await;
        tracing::info!("signal received; draining");
        signals.cancel();
    });
    match hub::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "hubd failed");
            eprintln!("hubd: {error:#}");
            ExitCode::FAILURE
        }
    }
}
