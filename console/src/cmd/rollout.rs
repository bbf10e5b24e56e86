//! `outpost rollout`: agent releases put on the fleet as `agent-update` fan-out jobs, and where the fleet
//! stands (versions, and each server's latest update as its agent reports it).

use std::collections::BTreeMap;

use outpost_common::bundle::Bundle;
use outpost_common::text::inert;
use outpost_proto::v1 as pb;

use crate::args::{Output, RolloutCmd, RolloutStartArgs, RunArgs};
use crate::client::{client, rpc};
use crate::format::update_phase as phase_word;

pub async fn rollout(bundle: &Bundle, cmd: &RolloutCmd) -> anyhow::Result<String> {
    match cmd {
        RolloutCmd::Start(a) => super::run::run(bundle, &start_args(a)).await,
        RolloutCmd::Status { output } => status(bundle, *output).await,
        RolloutCmd::Pause { job } => pause(bundle, job, true).await,
        RolloutCmd::Resume { job } => pause(bundle, job, false).await,
        RolloutCmd::Abort { job } => {
            let mut c = client(bundle)?;
            c.cancel_job(pb::CancelJobRequest { job_id: job.clone() }).await.map_err(|s| rpc(bundle, s))?;
            Ok(format!(
                "rollout {} aborted: no further batch starts; servers updating now finish or roll back by themselves\n",
                inert(job)
            ))
        }
    }
}

/// A rollout is `outpost run agent-update` with the rollout's words.
pub fn start_args(a: &RolloutStartArgs) -> RunArgs {
    let mut args = vec![format!("version={}", a.version)];
    if a.allow_downgrade {
        args.push("allow_downgrade=true".into());
    }
    RunArgs {
        action: "agent-update".into(),
        on: a.on.clone(),
        args,
        batch: a.batch,
        canary: a.canary,
        max_failure_rate: a.max_failure_rate,
        timeout: None,
        queue: None,
        window: a.window.clone(),
        yes: None,
        output: a.output,
        argv: Vec::new(),
    }
}

async fn pause(bundle: &Bundle, job: &str, paused: bool) -> anyhow::Result<String> {
    let mut c = client(bundle)?;
    c.pause_job(pb::PauseJobRequest { job_id: job.to_string(), paused }).await.map_err(|s| rpc(bundle, s))?;
    Ok(if paused {
        format!("rollout {} paused: no further batch starts until `outpost rollout resume {0}`\n", inert(job))
    } else {
        format!("rollout {} resumed\n", inert(job))
    })
}

/// The fleet by agentd version, newest first: (version, servers).
pub fn versions(servers: &[pb::Server]) -> Vec<(String, Vec<String>)> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in servers {
        let v = if s.agent_version.is_empty() { "unknown".to_string() } else { s.agent_version.clone() };
        by.entry(v).or_default().push(s.name.clone());
    }
    let mut out: Vec<(String, Vec<String>)> = by.into_iter().collect();
    out.sort_by_key(|(v, _)| std::cmp::Reverse(outpost_common::release::parse_version(v)));
    out
}

async fn status(bundle: &Bundle, output: Output) -> anyhow::Result<String> {
    let mut c = client(bundle)?;
    let servers = c.list_servers(pb::ListServersRequest {}).await.map_err(|s| rpc(bundle, s))?.into_inner().servers;
    let updates: Vec<(&pb::Server, &pb::UpdateStatus)> =
        servers.iter().filter_map(|s| s.health.as_ref().and_then(|h| h.update.as_ref()).map(|u| (s, u))).collect();
    if matches!(output, Output::Json) {
        let v = serde_json::json!({
            "versions": versions(&servers).iter().map(|(v, names)| serde_json::json!({"version": v, "servers": names.len()})).collect::<Vec<_>>(),
            "updates": updates.iter().map(|(s, u)| serde_json::json!({"server": s.name, "phase": phase_word(u), "from": u.from_version, "to": u.to_version, "reason": u.reason, "at_ms": u.at_ms})).collect::<Vec<_>>(),
        });
        return Ok(format!("{v}\n"));
    }
    let total = servers.len().max(1);
    let mut out = format!("{:<14} {:>7} {:>6}\n", "AGENTD", "SERVERS", "SHARE");
    for (v, names) in versions(&servers) {
        out.push_str(&format!("{:<14} {:>7} {:>5}%\n", inert(&v), names.len(), names.len() * 100 / total));
    }
    if updates.is_empty() {
        out.push_str("\nno update under way or ended in the last day\n");
        return Ok(out);
    }
    out.push_str(&format!("\n{:<24} {:<13} {:<17} {}\n", "SERVER", "PHASE", "UPDATE", "WHY"));
    for (s, u) in updates {
        out.push_str(&format!(
            "{:<24} {:<13} {:<17} {}\n",
            inert(&s.name),
            phase_word(u),
            format!("{} → {}", inert(&u.from_version), inert(&u.to_version)),
            inert(&u.reason)
        ));
    }
    Ok(out)
}
