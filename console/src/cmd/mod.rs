//! The `outpost` subcommands (everything but the live console): each reads the hub through `client` and
//! prints a table or JSON. The TUI (`state`, `view`, `app`, `conn`) and these never import each other.

pub mod alerts;
pub mod lifecycle;
pub mod rollout;
pub mod run;
pub mod usage;

use std::io::Write;

use outpost_common::bundle::Bundle;
use outpost_proto::v1::{FleetEvent, GetServerRequest, ListServersRequest, Server, WatchFleetRequest, fleet_event};

use crate::args::{Cli, Output};
use crate::client::{client, rpc};
use crate::format::{disk_pct, k3s_word, mem_pct, status_word};

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

/// `outpost login DIR`: the bundle checked, copied where the console looks (0700, key 0600), and tried.
pub async fn login(cli: &Cli, from: &std::path::Path, force: bool) -> anyhow::Result<String> {
    let bundle = Bundle::load(from).map_err(|e| {
        anyhow::anyhow!("{e}\n(give the directory `hubd operator issue --out DIR` or `hubd init` wrote)")
    })?;
    let dest = crate::client::bundle_dir(cli)?;
    if let Ok(there) = Bundle::load(&dest)
        && !force
        && (there.meta.name != bundle.meta.name || there.meta.hub != bundle.meta.hub)
    {
        anyhow::bail!(
            "{} already holds the bundle of {} for {}; --force replaces it",
            dest.display(),
            outpost_common::text::inert(&there.meta.name),
            outpost_common::text::inert(&there.meta.hub)
        );
    }
    bundle.write(&dest)?;
    let inert = outpost_common::text::inert;
    let mut out = format!(
        "installed the bundle of {} for {} in {}\n",
        inert(&bundle.meta.name),
        inert(&bundle.meta.hub),
        dest.display()
    );
    let who = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        client(&bundle)?.who_am_i(outpost_proto::v1::WhoAmIRequest {}).await.map_err(|s| rpc(&bundle, s))
    })
    .await;
    match who {
        Ok(Ok(w)) => {
            let w = w.into_inner();
            out.push_str(&format!(
                "the hub knows you as {} ({}); run `outpost` for the console\n",
                inert(&w.name),
                inert(&w.role)
            ));
        }
        Ok(Err(e)) => out.push_str(&format!("warning: the hub did not answer: {e}\n")),
        Err(_) => out.push_str("warning: the hub did not answer within 15 s\n"),
    }
    Ok(out)
}

/// `outpost ca status`.
pub async fn ca_status(bundle: &Bundle) -> anyhow::Result<String> {
    let req = outpost_proto::v1::CaRotationRequest { action: "status".into(), force: false };
    let s = client(bundle)?.ca_rotation(req).await.map_err(|s| rpc(bundle, s))?.into_inner();
    Ok(outpost_common::cert::rotation_summary(&s))
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
) -> anyhow::Result<crate::args::RunArgs> {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        run: crate::args::RunArgs,
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
