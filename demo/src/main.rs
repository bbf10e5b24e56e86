//! `outpost-demo`: parse, run, map errors to exit codes (1 runtime, 2 usage: clap's).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    outpost_common::install_crypto_provider();
    let args = demo::DemoArgs::parse();
    match demo::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("outpost-demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}
