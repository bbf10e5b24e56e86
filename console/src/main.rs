//! `outpost`: parse, dispatch, map errors to exit codes (1 runtime, 2 usage).

use std::process::ExitCode;

use clap::Parser;
use outpost_console::args::{Cli, Command};
use outpost_console::client::bundle;
use outpost_console::cmd;

async fn dispatch(cli: &Cli) -> anyhow::Result<String> {
    match &cli.command {
        Some(Command::Completions { shell }) => Ok(cmd::completions(*shell)),
        Some(Command::Login { from, force }) => cmd::login(cli, from, *force).await,
        Some(Command::Servers { output }) => cmd::servers(&bundle(cli).await?, *output).await,
        Some(Command::Server { name, output, history }) => {
            cmd::server(&bundle(cli).await?, name, *output, *history).await
        }
        Some(Command::Watch) => cmd::watch(&bundle(cli).await?).await,
        Some(Command::Run(a)) => cmd::run::run(&bundle(cli).await?, a).await,
        Some(Command::Audit(a)) => cmd::run::audit(&bundle(cli).await?, a).await,
        Some(Command::Actions) => Ok(cmd::run::catalog()),
        Some(Command::Ca(outpost_console::args::CaCmd::Status)) => cmd::ca_status(&bundle(cli).await?).await,
        Some(Command::Rollout(c)) => cmd::rollout::rollout(&bundle(cli).await?, c).await,
        Some(Command::Silence { matchers, duration, comment }) => {
            cmd::alerts::silence(&bundle(cli).await?, matchers, duration, comment).await
        }
        Some(Command::Silences) => cmd::alerts::silences(&bundle(cli).await?).await,
        Some(Command::Unsilence { id }) => cmd::alerts::unsilence(&bundle(cli).await?, id).await,
        Some(Command::Ack { alertname, server }) => {
            cmd::alerts::ack(&bundle(cli).await?, alertname, server.as_deref().unwrap_or_default()).await
        }
        Some(Command::Usage(a)) => cmd::usage::usage(&bundle(cli).await?, a).await,
        Some(Command::Alerts { output }) => cmd::alerts::alerts(&bundle(cli).await?, *output).await,
        Some(Command::Provision(a)) => cmd::lifecycle::provision(&bundle(cli).await?, a).await,
        Some(Command::Lifecycle(c)) => cmd::lifecycle::jobs(&bundle(cli).await?, c).await,
        Some(Command::EnrollSsh(a)) => cmd::lifecycle::enroll_ssh(&bundle(cli).await?, a).await,
        Some(Command::Deprovision(a)) => cmd::lifecycle::customer_jobs(&bundle(cli).await?, a, false).await,
        Some(Command::Reactivate(a)) => cmd::lifecycle::customer_jobs(&bundle(cli).await?, a, true).await,
        Some(Command::Apps { on, failing, output }) => cmd::apps(&bundle(cli).await?, on, *failing, *output).await,
        Some(Command::Deploy { app, on, git_ref, output }) => {
            let a = cmd::app_action("app-deploy", on, &[("app", Some(app)), ("ref", git_ref.as_deref())], *output)?;
            cmd::run::run(&bundle(cli).await?, &a).await
        }
        Some(Command::Rollback { app, on, to, output }) => {
            let a = cmd::app_action("app-rollback", on, &[("app", Some(app)), ("to", to.as_deref())], *output)?;
            cmd::run::run(&bundle(cli).await?, &a).await
        }
        Some(Command::Fleet) | None => {
            let b = bundle(cli).await?;
            let app = outpost_console::state::App::new(&b.meta.hub, &b.meta.name, &b.meta.role);
            outpost_console::app::run(app, b.channel()?).await.map(|()| String::new())
        }
    }
}

/// A write to a closed pipe (streamed `run`/`watch` output into `head`).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

#[tokio::main]
async fn main() -> ExitCode {
    outpost_common::install_crypto_provider();
    let cli = Cli::parse();
    match dispatch(&cli).await {
        Ok(out) => {
            use std::io::Write;
            // `outpost servers | head` closes the pipe early: that is not an error worth a message.
            // Table output is inert already; JSON gets its dangerous characters as JSON escapes.
            let out = outpost_common::text::json_inert(&out);
            match std::io::stdout().lock().write_all(out.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("outpost: cannot write the output: {e}");
                    ExitCode::FAILURE
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("outpost: {error:#}");
            ExitCode::FAILURE
        }
    }
}
