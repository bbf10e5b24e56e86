//! The command line's arguments: every subcommand and its options, as clap reads them. A leaf: it imports
//! nothing of the crate; the commands (`cmd`), the client and `main` use it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "The Outpost console: a live view of the fleet, and scriptable subcommands."
)]
pub struct Cli {
    /// Operator bundle directory (from `hubd operator issue`). Default: `bundle` in
    /// $XDG_CONFIG_HOME/outpost/config.toml, else $XDG_CONFIG_HOME/outpost/bundle.
    #[arg(long, global = true, env = "OUTPOST_BUNDLE")]
    pub bundle: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The live fleet console (the default).
    Fleet,
    /// List the fleet.
    Servers {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One server, with its recent history.
    Server {
        name: String,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// History points to include (newest last).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=2000))]
        history: u32,
    },
    /// Stream the fleet as JSON lines: one snapshot, then one line per change.
    Watch,
    /// Run an action on the servers a selector matches, in batches, with a progress bar.
    ///
    /// Examples: `outpost run service-status --on web-1 --arg unit=k3s`;
    /// `outpost run service-restart --on customer:acme --arg unit=k3s --canary 1 --batch 10 --max-failure-rate 10%`;
    /// `outpost run exec --on web-1 --yes web-1 -- df -h`. Exit status 1 when any target did not succeed.
    Run(RunArgs),
    /// The audit log, newest first.
    Audit(AuditArgs),
    /// Every app on the servers a selector matches (default: all), as the agents last reported them.
    Apps {
        /// Which servers (as for `run --on`).
        #[arg(long = "on", value_name = "SELECTOR", default_value = "all")]
        on: String,
        /// Only failing apps (failed, degraded, or a repository that cannot be read).
        #[arg(long)]
        failing: bool,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Deploy an app on a server: `app-deploy` with a progress bar (see `outpost run`).
    Deploy {
        /// The app's name.
        app: String,
        /// The server.
        #[arg(long = "on", value_name = "SERVER")]
        on: String,
        /// Branch, tag or commit (default: the spec's repo.ref).
        #[arg(long = "ref")]
        git_ref: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Run an earlier deployment of an app again: `app-rollback`.
    Rollback {
        app: String,
        #[arg(long = "on", value_name = "SERVER")]
        on: String,
        /// The deployment (e.g. web-3); default: the one before the live one.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Create a server for a customer (Hetzner Cloud, cloud-init, K3s, agentd) and follow the job until it
    /// is online. Admin.
    Provision(ProvisionArgs),
    /// Deprovision a customer: apps stopped and servers suspended at once; data archived and servers deleted
    /// after [lifecycle] archive_after_secs (7 days); the archive deleted after delete_after_secs (30 days).
    /// Admin; confirm with `--yes CUSTOMER`.
    Deprovision(CustomerArgs),
    /// Bring a deprovisioned customer back: before the archive, its apps; after it, a new server with the
    /// archive restored. Admin.
    Reactivate(CustomerArgs),
    /// Enroll a server the customer brings, once, over SSH: agentd, its config, a join token and the unit
    /// are uploaded, agentd is started, and from then on no SSH. The host key must be known. Admin.
    EnrollSsh(EnrollSshArgs),
    /// Lifecycle jobs: the queue of provision, deprovision, reactivate, enroll-ssh, archive and delete jobs
    /// (`outpost run` starts action jobs, which are another thing). `outpost jobs` is the old name.
    #[command(subcommand, visible_alias = "jobs")]
    Lifecycle(LifecycleCmd),
    /// A customer's usage in a month against the plan, with its cost: `outpost usage --customer acme
    /// --month 2026-11 --output csv`.
    Usage(UsageArgs),
    /// The alerts pending and firing now, firing first.
    Alerts {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Silence alerts whose labels include every matcher: `outpost silence --match alertname=disk_full
    /// --match server=web-1 --for 2h --comment "disk being resized"`. Support or admin.
    Silence {
        /// LABEL=VALUE (alertname, severity, server, customer, plan); at least one.
        #[arg(long = "match", value_name = "LABEL=VALUE", required = true)]
        matchers: Vec<String>,
        /// How long: 30m, 2h, 1d (1 minute to 30 days).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why (shown to everyone, audited).
        #[arg(long)]
        comment: String,
    },
    /// The silences in force.
    Silences,
    /// End a silence now.
    Unsilence { id: String },
    /// Say you are on a firing alert: `outpost ack disk_full [--server web-1]`. Support or admin.
    Ack {
        alertname: String,
        #[arg(long)]
        server: Option<String>,
    },
    /// Agent rollouts: a signed agentd release put on the servers a selector matches, as a fan-out job
    /// (canary, batches, failure threshold, maintenance window); each server installs it beside the running
    /// one and rolls back by itself if the new one does not reconnect and report healthy. Admin.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// The fleet CA's rotation: the phase and how far the servers are (`hubd ca rotate` drives it).
    #[command(subcommand)]
    Ca(CaCmd),
    /// The action catalog: names, required role, arguments.
    Actions,
    /// Install an operator bundle (a directory from `hubd operator issue` or `hubd init`) where the console
    /// looks ($XDG_CONFIG_HOME/outpost/bundle, or --bundle), and check it with the hub.
    Login {
        /// The bundle directory you were given.
        from: std::path::PathBuf,
        /// Replace a bundle already there (for another operator or hub).
        #[arg(long)]
        force: bool,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Start one: `outpost rollout start agentd 0.2.0 --on plan:pro --canary 2 --batch 50
    /// --max-failure-rate 5% --window 22:00-06:00`. Follows it with a progress bar; Ctrl-C aborts it.
    Start(RolloutStartArgs),
    /// The fleet's agentd versions and each server's latest update (phase, and why one failed).
    Status {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Start no further batch of a rollout (updates under way finish).
    Pause { job: String },
    /// Let a paused rollout go on.
    Resume { job: String },
    /// Stop a rollout: no further batch; servers already updating finish or roll back by themselves.
    Abort { job: String },
}

/// What a rollout installs.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Component {
    Agentd,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RolloutStartArgs {
    /// What to roll out (agentd).
    #[arg(value_enum)]
    pub component: Component,
    /// The release version (`hubd release list` shows what the hub has).
    pub version: String,
    /// Which servers (as for `run --on`).
    #[arg(long = "on", value_name = "SELECTOR")]
    pub on: String,
    /// Servers updated first, alone, as a canary batch.
    #[arg(long, default_value_t = 0)]
    pub canary: u32,
    /// Servers per batch.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// Stop after a batch when failed/finished exceeds this: 0.05 or 5%. Default 0: stop at any failure.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub max_failure_rate: f64,
    /// Start batches only inside this daily window, HH:MM-HH:MM in UTC.
    #[arg(long, value_name = "HH:MM-HH:MM")]
    pub window: Option<String>,
    /// Install a version older than the running one.
    #[arg(long)]
    pub allow_downgrade: bool,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The action (see `outpost actions`).
    pub action: String,
    /// Which servers: NAME[,NAME…], customer:X, plan:X, label:K=V, status:S, all (space or comma separated).
    #[arg(long = "on", value_name = "SELECTOR")]
    pub on: String,
    /// An argument of the action, KEY=VALUE (repeatable); KEY=@FILE reads the value from FILE.
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    pub args: Vec<String>,
    /// Targets per batch.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// Run this many targets first, alone, as a canary batch.
    #[arg(long, default_value_t = 0)]
    pub canary: u32,
    /// Stop after a batch when failed/finished exceeds this: 0.2 or 20%. Default 0: stop at any failure.
    #[arg(long, default_value = "0", value_parser = parse_rate)]
    pub max_failure_rate: f64,
    /// How long each command may run (e.g. 30s, 5m). Default: the action's own.
    #[arg(long, value_parser = outpost_common::parse_duration)]
    pub timeout: Option<Duration>,
    /// Queue commands for offline servers for this long (e.g. 10m) instead of refusing them.
    #[arg(long, value_parser = outpost_common::parse_duration)]
    pub queue: Option<Duration>,
    /// Start batches only inside this daily maintenance window, HH:MM-HH:MM in UTC (e.g. 22:00-06:00).
    #[arg(long, value_name = "HH:MM-HH:MM")]
    pub window: Option<String>,
    /// Confirm a destructive action without a prompt: the server name (one target) or the target count.
    #[arg(long, value_name = "NAME|COUNT")]
    pub yes: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// For exec: the program and its arguments, after `--`.
    #[arg(last = true)]
    pub argv: Vec<String>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, scale) = match s.strip_suffix('%') {
        Some(p) => (p, 100.0),
        None => (s, 1.0),
    };
    let v: f64 = n.trim().parse().map_err(|_| format!("{s:?} is not a rate like 0.2 or 20%"))?;
    let v = v / scale;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{s:?} is outside 0..=100%")) }
}

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    #[arg(long)]
    pub operator: Option<String>,
    #[arg(long)]
    pub server: Option<String>,
    #[arg(long)]
    pub action: Option<String>,
    /// Only records newer than this (e.g. 1h, 7d).
    #[arg(long, value_parser = outpost_common::parse_duration)]
    pub since: Option<Duration>,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Debug, Args)]
pub struct ProvisionArgs {
    /// The customer (a DNS label: a-z, 0-9, '-').
    #[arg(long)]
    pub customer: String,
    /// The plan (a plan of hubd's [provision.plans]).
    #[arg(long)]
    pub plan: String,
    /// Where (default: the plan's first location; a sold-out one moves on to the plan's next).
    #[arg(long)]
    pub location: Option<String>,
    /// The server's name (default: the customer's).
    #[arg(long)]
    pub name: Option<String>,
    /// Submitting the same key again returns the same job (safe retries from scripts).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Print the job id and return at once instead of following it.
    #[arg(long)]
    pub detach: bool,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Debug, Args)]
pub struct EnrollSshArgs {
    /// USER@HOST of the server (the user must be root or able to write /etc and /usr/local/bin).
    pub target: String,
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    /// An unencrypted OpenSSH private key; it is sent to the hub for this job only, never stored.
    /// Default: the hub's provision.ssh_private_key_file.
    #[arg(long, value_name = "KEY")]
    pub identity: Option<std::path::PathBuf>,
    /// A known_hosts file holding the server's host key.
    #[arg(long, value_name = "FILE", conflicts_with = "fingerprint")]
    pub known_hosts: Option<std::path::PathBuf>,
    /// The server's host key fingerprint, `SHA256:…` (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`).
    #[arg(long, required_unless_present = "known_hosts")]
    pub fingerprint: Option<String>,
    #[arg(long)]
    pub customer: String,
    #[arg(long)]
    pub plan: String,
    /// The server's name (default: the customer's).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub detach: bool,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Debug, Args)]
pub struct CustomerArgs {
    #[arg(long)]
    pub customer: String,
    /// Confirms a deprovision: the customer's name again.
    #[arg(long, value_name = "CUSTOMER")]
    pub yes: Option<String>,
    /// Print the job ids and return at once instead of following them.
    #[arg(long)]
    pub detach: bool,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Debug, Subcommand)]
pub enum LifecycleCmd {
    /// The queue, newest first, with its counters.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One job with its steps.
    Show {
        id: u64,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Follow a job until it ends (re-attaches when the hub restarts).
    Watch {
        id: u64,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Cancel a job: a pending one at once; a running one at its next step, undoing what it created.
    Cancel { id: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UsageOutput {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Debug, Args)]
pub struct UsageArgs {
    /// The customer (a DNS label: a-z, 0-9, '-').
    #[arg(long)]
    pub customer: String,
    /// The month, YYYY-MM (UTC); default: this month.
    #[arg(long)]
    pub month: Option<String>,
    #[arg(long, value_enum, default_value_t = UsageOutput::Table)]
    pub output: UsageOutput,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_rates_are_fractions_or_percentages() {
        assert!((parse_rate("20%").unwrap() - 0.2).abs() < 1e-9);
        assert!(parse_rate("150%").is_err());
    }
}

#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// The rotation's phase, and which servers are lagging or offline.
    Status,
}
