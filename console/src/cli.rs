//! The `outpost` command line: the live console and scriptable subcommands.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use outpost_common::bundle::Bundle;
use outpost_proto::v1::operator_client::OperatorClient;
use outpost_proto::v1::{FleetEvent, GetServerRequest, ListServersRequest, Server, WatchFleetRequest, fleet_event};
use serde::Deserialize;

use crate::format::{disk_pct, k3s_word, mem_pct, status_word};

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
    /// A local fleet in one command: embedded hub, real agents, the live console.

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
    Run(crate::run::RunArgs),
    /// The audit log, newest first.
    Audit(crate::run::AuditArgs),
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
    Provision(crate::lifecycle::ProvisionArgs),
    /// Deprovision a customer: apps stopped and servers suspended at once; data archived and servers deleted
    /// after [lifecycle] archive_after_secs (7 days); the archive deleted after delete_after_secs (30 days).
    /// Admin; confirm with `--yes CUSTOMER`.
    Deprovision(crate::lifecycle::CustomerArgs),
    /// Bring a deprovisioned customer back: before the archive, its apps; after it, a new server with the
    /// archive restored. Admin.
    Reactivate(crate::lifecycle::CustomerArgs),
    /// Enroll a server the customer brings, once, over SSH: agentd, its config, a join token and the unit
    /// are uploaded, agentd is started, and from then on no SSH. The host key must be known. Admin.
    EnrollSsh(crate::lifecycle::EnrollSshArgs),
    /// The lifecycle job queue (provision, deprovision, ...).
    #[command(subcommand)]
    Jobs(crate::lifecycle::JobsCmd),
    /// A customer's usage in a month against the plan, with its cost: `outpost usage --customer acme
    /// --month 2026-11 --output csv`.
    Usage(crate::usage::UsageArgs),
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
    /// The action catalog: names, required role, arguments.
    Actions,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// `$XDG_CONFIG_HOME/outpost/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleConfig {
    /// Operator bundle directory.
    bundle: Option<PathBuf>,
}

fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("outpost"))
}

pub fn bundle_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(b) = &cli.bundle {
        return Ok(b.clone());
    }
    let dir =
        config_dir().ok_or_else(|| anyhow::anyhow!("no --bundle given and neither XDG_CONFIG_HOME nor HOME is set"))?;
    let path = dir.join("config.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let c: ConsoleConfig = outpost_common::config::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{} is invalid: {e}", path.display()))?;
            Ok(c.bundle.unwrap_or_else(|| dir.join("bundle")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir.join("bundle")),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

pub fn load_bundle(cli: &Cli) -> anyhow::Result<Bundle> {
    let dir = bundle_dir(cli)?;
    Bundle::load(&dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(get a bundle with `hubd operator issue --name NAME --role viewer --out DIR`, then pass --bundle DIR)"
        )
    })
}

pub fn client(bundle: &Bundle) -> anyhow::Result<OperatorClient<tonic::transport::Channel>> {
    Ok(OperatorClient::new(bundle.channel()?).max_decoding_message_size(256 << 20))
}

pub fn rpc(bundle: &Bundle, s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::Unavailable {
        let reason = outpost_common::tls::transport_reason(&s);
        return anyhow::anyhow!(
            "hub not reachable at {} ({reason}) — is hubd running? (`systemctl status outpost-hubd`)",
            bundle.meta.hub
        );
    }
    anyhow::anyhow!("hub {}: {}", bundle.meta.hub, outpost_common::text::inert(s.message()))
}

pub fn server_json(s: &Server) -> serde_json::Value {
    let h = s.health.clone().unwrap_or_default();
    serde_json::json!({
        "name": s.name, "customer": s.customer, "plan": s.plan, "labels": s.labels,
        "status": status_word(s), "status_since_ms": s.liveness_since_ms,
        "agent_id": s.agent_id, "agent_version": s.agent_version,
        "cert_serial": s.cert_serial, "cert_not_after": s.cert_not_after,
        "first_seen_ms": s.first_seen_ms, "last_seen_ms": s.last_seen_ms,
        "last_seq": s.last_seq, "reports_received": s.reports_received, "connections": s.connections,
        "dropped_reports": s.dropped_reports,
        "health": s.health.as_ref().map(|_| serde_json::json!({
            "cpu_percent": h.cpu_percent, "load1": h.load1, "load5": h.load5, "load15": h.load15,
            "mem_used_bytes": h.mem_used_bytes, "mem_total_bytes": h.mem_total_bytes,
            "swap_used_bytes": h.swap_used_bytes, "swap_total_bytes": h.swap_total_bytes,
            "disks": h.disks.iter().map(|d| serde_json::json!({"mount": d.mount, "total_bytes": d.total_bytes, "available_bytes": d.available_bytes})).collect::<Vec<_>>(),
            "net_rx_bytes": h.net_rx_bytes, "net_tx_bytes": h.net_tx_bytes, "uptime_secs": h.uptime_secs,
            "process_count": h.process_count, "k3s": k3s_word(&h),
        })),
    })
}

fn pct(v: Option<f64>) -> String {
    v.map(|p| format!("{p:.0}%")).unwrap_or_else(|| "-".into())
}

fn table(servers: &[Server]) -> String {
    let mut out = format!(
        "{:<24} {:<13} {:<12} {:<8} {:>5} {:>5} {:>5} {:<8} {:<8}\n",
        "NAME", "STATUS", "CUSTOMER", "PLAN", "CPU", "MEM", "DISK", "K3S", "VERSION"
    );
    for s in servers {
        let h = s.health.clone().unwrap_or_default();
        let cpu = if s.health.is_some() { format!("{:.0}%", h.cpu_percent) } else { "-".into() };
        out.push_str(&format!(
            "{:<24} {:<13} {:<12} {:<8} {:>5} {:>5} {:>5} {:<8} {:<8}\n",
            s.name,
            status_word(s),
            s.customer,
            s.plan,
            cpu,
            pct(mem_pct(&h)),
            pct(disk_pct(&h)),
            k3s_word(&h),
            s.agent_version
        ));
    }
    out
}

pub async fn servers(bundle: &Bundle, output: Output) -> anyhow::Result<String> {
    let servers =
        client(bundle)?.list_servers(ListServersRequest {}).await.map_err(|s| rpc(bundle, s))?.into_inner().servers;
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&servers.iter().map(server_json).collect::<Vec<_>>())? + "\n",
        Output::Table => outpost_common::text::inert_lines(&table(&servers)).into_owned(),
    })
}

pub async fn server(bundle: &Bundle, name: &str, output: Output, history: u32) -> anyhow::Result<String> {
    let d = client(bundle)?
        .get_server(GetServerRequest { name: name.to_string(), history })
        .await
        .map_err(|s| rpc(bundle, s))?
        .into_inner();
    let s = d.server.unwrap_or_default();
    Ok(match output {
        Output::Json => {
            let mut v = server_json(&s);
            v["history"] = d
                .history
                .iter()
                .map(|p| {
                    let h = p.health.clone().unwrap_or_default();
                    serde_json::json!({"seq": p.seq, "taken_at_ms": p.taken_at_ms, "cpu_percent": h.cpu_percent, "mem_used_bytes": h.mem_used_bytes})
                })
                .collect();
            serde_json::to_string_pretty(&v)? + "\n"
        }
        Output::Table => {
            let mut out = table(std::slice::from_ref(&s));
            let now = outpost_common::now_ms();
            out.push_str(&format!(
                "\nagent {} · cert {} until {} · last seq {} · {} reports · {} connections\n",
                s.agent_id,
                s.cert_serial,
                outpost_common::when::utc_and_relative(now, s.cert_not_after * 1000),
                s.last_seq,
                s.reports_received,
                s.connections
            ));
            if s.revoked_ms != 0 {
                out.push_str(&format!("identity revoked at {}\n", outpost_common::when::utc(s.revoked_ms)));
            }
            if !s.log_files.is_empty() {
                out.push_str(&format!("log files: {}\n", s.log_files.join(", ")));
            }
            for p in &d.history {
                let h = p.health.clone().unwrap_or_default();
                out.push_str(&format!(
                    "{:>8} {} cpu {:>5.1}% mem {}\n",
                    p.seq,
                    outpost_common::when::utc(p.taken_at_ms),
                    h.cpu_percent,
                    pct(mem_pct(&h))
                ));
            }
            outpost_common::text::inert_lines(&out).into_owned()
        }
    })
}

/// One JSON line per event, flushed as it arrives (for `jq`, runbooks and CI).
pub async fn watch(bundle: &Bundle) -> anyhow::Result<String> {
    let mut stream = client(bundle)?.watch_fleet(WatchFleetRequest {}).await.map_err(|s| rpc(bundle, s))?.into_inner();
    let mut out = std::io::stdout().lock();
    loop {
        let line = match stream.message().await.map_err(|s| rpc(bundle, s))? {
            None => return Ok(String::new()),
            Some(FleetEvent { event: None }) => continue,
            Some(FleetEvent { event: Some(e) }) => match e {
                fleet_event::Event::Snapshot(s) => serde_json::json!({
                    "type": "snapshot", "part": s.part, "last": s.last,
                    "servers": s.servers.iter().map(server_json).collect::<Vec<_>>()
                }),
                fleet_event::Event::Upsert(s) => serde_json::json!({"type": "upsert", "server": server_json(&s)}),
                fleet_event::Event::Removed(n) => serde_json::json!({"type": "removed", "name": n}),
            },
        };
        if writeln!(out, "{}", outpost_common::text::json_inert(&line.to_string())).and_then(|()| out.flush()).is_err()
        {
            return Ok(String::new()); // the reader went away (e.g. `| head`)
        }
    }
}

/// The servers `on` selects, with every app they reported (filtered to failing ones with `failing`).
pub async fn apps(bundle: &Bundle, on: &str, failing: bool, output: Output) -> anyhow::Result<String> {
    let sel: outpost_common::selector::Selector = on.parse().map_err(|e| anyhow::anyhow!("--on: {e}"))?;
    let servers =
        client(bundle)?.list_servers(ListServersRequest {}).await.map_err(|s| rpc(bundle, s))?.into_inner().servers;
    let mut rows = Vec::new();
    for s in &servers {
        let label = |k: &str| s.labels.get(k).map(String::as_str);
        let c = outpost_common::selector::Candidate {
            name: &s.name,
            customer: &s.customer,
            plan: &s.plan,
            status: status_word(s),
            label: &label,
        };
        if !sel.matches(&c) {
            continue;
        }
        for a in s.apps.iter().flat_map(|x| x.apps.iter()).filter(|a| !failing || crate::format::app_failing(a)) {
            rows.push((s, a));
        }
    }
    Ok(match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|(s, a)| {
                    let r = a.repo.clone().unwrap_or_default();
                    serde_json::json!({
                        "server": s.name, "customer": s.customer, "app": a.name, "project": a.project, "phase": a.phase,
                        "ready_replicas": a.ready_replicas, "desired_replicas": a.desired_replicas, "restarts": a.restarts,
                        "deployment": a.deployment, "commit": a.commit, "image": a.image, "last_error": a.last_error,
                        "deployed_ms": a.deployed_ms,
                        "repo": {"url": r.url, "ref": r.git_ref, "head": r.head, "behind": r.behind, "dirty": r.dirty, "last_error": r.last_error, "note": r.note},
                    })
                })
                .collect();
            outpost_common::text::json_inert(&(serde_json::to_string_pretty(&v)? + "\n")).into_owned()
        }
        Output::Table => {
            let mut out = format!(
                "{:<20} {:<16} {:<13} {:>7} {:<14} {:<12} {}\n",
                "SERVER", "APP", "PHASE", "READY", "DEPLOYMENT", "COMMIT", "PROBLEM"
            );
            for (s, a) in &rows {
                let [name, phase, ready, deployment, commit, problem] = crate::format::app_cells(a);
                let dash = |v: String| if v.is_empty() { "-".to_string() } else { v };
                out.push_str(&format!(
                    "{:<20} {name:<16} {phase:<13} {ready:>7} {:<14} {:<12} {problem}\n",
                    s.name,
                    dash(deployment),
                    dash(commit),
                ));
            }
            if rows.is_empty() {
                out.push_str(if failing { "(no failing apps)\n" } else { "(no apps reported)\n" });
            }
            outpost_common::text::inert_lines(&out).into_owned()
        }
    })
}

/// `run` arguments for an app action on one server.
pub fn app_action(
    action: &str,
    server: &str,
    args: &[(&str, Option<&str>)],
    output: Output,
) -> anyhow::Result<crate::run::RunArgs> {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        run: crate::run::RunArgs,
    }
    let mut argv = vec!["outpost".to_string(), action.to_string(), format!("--on={server}")];
    for (k, v) in args {
        if let Some(v) = v {
            argv.push(format!("--arg={k}={v}"));
        }
    }
    let mut run = <Wrap as clap::Parser>::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?.run;
    run.output = output;
    Ok(run)
}

pub fn completions(shell: clap_complete::Shell) -> String {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "outpost", &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
