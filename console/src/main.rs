//! `outpost`: parse, dispatch, map errors to exit codes (1 runtime, 2 usage).

use std::process::ExitCode;

use clap::Parser;
use console::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    outpost_common::install_crypto_provider();
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Demo(args)) => console::demo::run(args.clone()).await.map(|()| String::new()),
        Some(Command::Servers { output }) => match console::cli::load_bundle(&cli) {
            Ok(b) => console::cli::servers(&b, *output).await,
            Err(e) => Err(e),
        },
        Some(Command::Fleet) | None => match console::cli::load_bundle(&cli) {
            Ok(b) => {
                let fleet = console::state::Fleet::new(&b.meta.hub, &b.meta.name, &b.meta.role);
                match b.channel() {
                    Ok(ch) => console::app::run(fleet, ch).await.map(|()| String::new()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("outpost: {error:#}");
            ExitCode::FAILURE
        }
    }
}
