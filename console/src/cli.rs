//! The `outpost` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use outpost_common::bundle::Bundle;
use outpost_proto::v1::operator_client::OperatorClient;
use outpost_proto::v1::{ListServersRequest, Server};

#[derive(Debug, Parser)]
#[command(
    name = "outpost",
    version,
    about = "The Outpost console: a live view of the fleet, and scriptable subcommands."
)]
pub struct Cli {
    /// Operator bundle directory (from `hubd operator issue`). Default: $XDG_CONFIG_HOME/outpost/bundle.
    #[arg(long, global = true, env = "OUTPOST_BUNDLE")]
    pub bundle: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// A local fleet in one command: embedded hub, real agents, the live console.
    Demo(crate::demo::DemoArgs),
    /// The live fleet view (the default).
    Fleet,
    /// List the fleet.
    Servers {
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

pub fn bundle_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(b) = &cli.bundle {
        return Ok(b.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .ok_or_else(|| anyhow::anyhow!("no --bundle given and neither XDG_CONFIG_HOME nor HOME is set"))?;
    Ok(base.join("outpost").join("bundle"))
}

pub fn load_bundle(cli: &Cli) -> anyhow::Result<Bundle> {
    let dir = bundle_dir(cli)?;
    Bundle::load(&dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(get a bundle with `hubd operator issue --name NAME --role viewer --out DIR`, then pass --bundle DIR)"
        )
    })
}

fn liveness(s: &Server) -> &'static str {
    crate::view::status(s).1
}

pub fn server_json(s: &Server) -> serde_json::Value {
    let h = s.health.clone().unwrap_or_default();
    serde_json::json!({
        "name": s.name, "customer": s.customer, "plan": s.plan, "labels": s.labels,
        "status": liveness(s), "status_since_ms": s.liveness_since_ms,
        "agent_id": s.agent_id, "agent_version": s.agent_version,
        "cert_serial": s.cert_serial, "cert_not_after": s.cert_not_after,
        "first_seen_ms": s.first_seen_ms, "last_seen_ms": s.last_seen_ms,
        "last_seq": s.last_seq, "reports_received": s.reports_received, "connections": s.connections,
        "cpu_percent": h.cpu_percent, "mem_used_bytes": h.mem_used_bytes, "mem_total_bytes": h.mem_total_bytes,
        "load1": h.load1,
    })
}

pub async fn servers(bundle: &Bundle, output: Output) -> anyhow::Result<String> {
    let mut client = OperatorClient::new(bundle.channel()?).max_decoding_message_size(64 << 20);
    let servers = client
        .list_servers(ListServersRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("hub {}: {}", bundle.meta.hub, s.message()))?
        .into_inner()
        .servers;
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&servers.iter().map(server_json).collect::<Vec<_>>())?,
        Output::Table => {
            let mut out = format!(
                "{:<24} {:<13} {:<12} {:<8} {:>5} {:>5} {:<8}\n",
                "NAME", "STATUS", "CUSTOMER", "PLAN", "CPU", "MEM", "VERSION"
            );
            for s in &servers {
                let h = s.health.clone().unwrap_or_default();
                let mem = if h.mem_total_bytes == 0 {
                    "-".into()
                } else {
                    format!("{:.0}%", h.mem_used_bytes as f64 * 100.0 / h.mem_total_bytes as f64)
                };
                let cpu = if s.health.is_some() { format!("{:.0}%", h.cpu_percent) } else { "-".into() };
                out.push_str(&format!(
                    "{:<24} {:<13} {:<12} {:<8} {:>5} {:>5} {:<8}\n",
                    s.name,
                    liveness(s),
                    s.customer,
                    s.plan,
                    cpu,
                    mem,
                    s.agent_version
                ));
            }
            out
        }
    })
}
