//! `outpost run`, `outpost audit` and `outpost actions`: remote actions from a shell or a runbook.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use outpost_common::actions::{self, Action};
use outpost_common::bundle::Bundle;
use outpost_common::selector::Selector;
use outpost_common::text::inert;
use outpost_proto::v1 as pb;
use pb::job_event::Event;

use crate::args::{AuditArgs, Output, RunArgs};
use crate::client::{client, rpc};
use crate::format::{audit_line, bar, outcome_word, summary};

/// The request, checked locally first (the hub checks it again): unknown actions and bad arguments fail
/// before anything is sent.
pub fn request(a: &RunArgs) -> anyhow::Result<(pb::RunActionRequest, Selector)> {
    let mut args = BTreeMap::new();
    for kv in &a.args {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--arg {kv:?} must be KEY=VALUE"))?;
        // KEY=@FILE reads the value from a file (an app spec, for instance).
        let v = match v.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--arg {k}=@{path}: cannot read {path}: {e}"))?,
            None => v.to_string(),
        };
        args.insert(k.to_string(), v);
    }
    if !a.argv.is_empty() {
        args.insert("argv".into(), serde_json::to_string(&a.argv)?);
    }
    Action::parse(&a.action, &args)?;
    let sel: Selector = a.on.parse().map_err(|e| anyhow::anyhow!("--on: {e}"))?;
    let deadline_ms = a.timeout.map(|t| outpost_common::now_ms() + t.as_millis() as i64).unwrap_or(0);
    let req = pb::RunActionRequest {
        action: a.action.clone(),
        args: args.into_iter().collect(),
        selector: Some(selector_to_pb(&sel)),
        batch: a.batch,
        canary: a.canary,
        max_failure_rate: a.max_failure_rate,
        deadline_ms,
        queue_secs: a.queue.map(|q| q.as_secs().min(u64::from(u32::MAX)) as u32).unwrap_or(0),
        confirm: a.yes.clone().unwrap_or_default(),
        window: match &a.window {
            Some(w) => w.parse::<outpost_common::when::Window>().map_err(|e| anyhow::anyhow!("--window: {e}"))?.spec(),
            None => String::new(),
        },
    };
    Ok((req, sel))
}

pub fn selector_to_pb(s: &Selector) -> pb::Selector {
    pb::Selector {
        names: s.names.clone(),
        customer: s.customer.clone().unwrap_or_default(),
        plan: s.plan.clone().unwrap_or_default(),
        labels: s.labels.clone().into_iter().collect(),
        status: s
            .status
            .iter()
            .filter_map(|st| st.parse::<outpost_common::Liveness>().ok())
            .map(|l| pb::Liveness::from(l) as i32)
            .collect(),
        all: s.all,
    }
}

/// The servers `sel` matches in `servers` (the same rule the hub applies).
pub fn matching(sel: &Selector, servers: &[pb::Server]) -> Vec<String> {
    let mut out: Vec<String> = servers
        .iter()
        .filter(|s| {
            let label = |k: &str| s.labels.get(k).map(String::as_str);
            sel.matches(&outpost_common::selector::Candidate {
                name: &s.name,
                customer: &s.customer,
                plan: &s.plan,
                status: crate::format::status_word(s),
                label: &label,
            })
        })
        .map(|s| s.name.clone())
        .collect();
    out.sort();
    out
}

pub async fn run(bundle: &Bundle, a: &RunArgs) -> anyhow::Result<String> {
    let (mut req, sel) = request(a)?;
    let spec = actions::lookup(&a.action).expect("parsed above");
    let mut c = client(bundle)?;
    if spec.destructive && a.yes.is_none() {
        let servers = c.list_servers(pb::ListServersRequest {}).await.map_err(|s| rpc(bundle, s))?.into_inner().servers;
        let targets = matching(&sel, &servers);
        if targets.is_empty() {
            anyhow::bail!("selector {sel} matches no server");
        }
        let expected = actions::confirmation(&targets);
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("{} is destructive: pass --yes {expected} to confirm (no terminal to ask on)", spec.name);
        }
        let shown: Vec<&str> = targets.iter().take(10).map(String::as_str).collect();
        eprint!(
            "{} is destructive and will run on {} server(s): {}{}\nType {expected} to confirm: ",
            spec.name,
            targets.len(),
            shown.join(", "),
            if targets.len() > 10 { ", …" } else { "" }
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if line.trim() != expected {
            anyhow::bail!("not confirmed; nothing was run");
        }
        req.confirm = expected;
    }
    let mut stream = c.run_action(req).await.map_err(|s| rpc(bundle, s))?.into_inner();
    let tty = std::io::stderr().is_terminal() && matches!(a.output, Output::Table);
    let mut job_id = String::new();
    let mut cancelled = false;
    let mut last = pb::JobProgress::default();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut out = std::io::stdout().lock();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        let e = tokio::select! {
            _ = sigint.recv() => {
                if cancelled || job_id.is_empty() {
                    anyhow::bail!("stopped waiting; job {job_id} goes on at the hub (see `outpost audit`)");
                }
                cancelled = true;
                eprintln!("\ncancelling job {job_id} (running commands are stopped; Ctrl-C again to stop waiting)");
                c.cancel_job(pb::CancelJobRequest { job_id: job_id.clone() }).await.map_err(|s| rpc(bundle, s))?;
                continue;
            }
            m = stream.message() => match m.map_err(|s| rpc(bundle, s))? {
                None => break,
                Some(pb::JobEvent { event: None }) => continue,
                Some(pb::JobEvent { event: Some(e) }) => e,
            },
        };
        if matches!(a.output, Output::Json) {
            writeln!(out, "{}", outpost_common::text::json_inert(&event_json(&e).to_string()))?;
            out.flush()?;
        }
        match e {
            Event::Plan(p) => {
                job_id = p.job_id.clone();
                if matches!(a.output, Output::Table) {
                    eprintln!(
                        "job {} · {} on {} server(s) in batches {:?} · audit #{}",
                        p.job_id,
                        p.action,
                        p.targets.len(),
                        p.batches,
                        p.audit_id
                    );
                }
            }
            Event::Target(t) => {
                if matches!(a.output, Output::Table) {
                    if tty {
                        eprint!("\r\x1b[2K");
                    }
                    let server = inert(&t.server);
                    for line in t.output.lines() {
                        writeln!(out, "{server} | {}", inert(line))?;
                    }
                    if let Some(r) = &t.result {
                        let outcome = outcome_word(r.outcome);
                        writeln!(out, "{server} = {outcome}: {}", inert(&r.message))?;
                    }
                    out.flush()?;
                    if tty {
                        eprint!("{}", bar(&last));
                    }
                }
                if let Some(r) = t.result.filter(|r| r.outcome != pb::Outcome::Succeeded as i32) {
                    failed.push((
                        inert(&t.server).into_owned(),
                        format!("{}: {}", outcome_word(r.outcome), inert(&r.message)),
                    ));
                }
            }
            Event::Progress(p) => {
                if !p.waiting.is_empty() && p.waiting != last.waiting && matches!(a.output, Output::Table) {
                    eprintln!("{}job {job_id} waits: {}", if tty { "\r\x1b[2K" } else { "" }, inert(&p.waiting));
                }
                if tty {
                    eprint!("\r\x1b[2K{}", bar(&p));
                }
                last = p;
            }
        }
    }
    if tty {
        eprintln!();
    }
    if !last.finished {
        anyhow::bail!("the hub closed the stream before job {job_id} finished; see `outpost audit`");
    }
    if matches!(a.output, Output::Table) {
        eprintln!("{}", summary(&last));
    }
    if !failed.is_empty() || !last.stopped.is_empty() {
        anyhow::bail!(
            "{} of {} target(s) did not succeed{}",
            failed.len(),
            last.total,
            if last.stopped.is_empty() { String::new() } else { format!("; stopped: {}", inert(&last.stopped)) }
        );
    }
    Ok(String::new())
}

fn event_json(e: &Event) -> serde_json::Value {
    let result = |r: &pb::CommandResult| {
        serde_json::json!({"outcome": outcome_word(r.outcome), "exit_code": r.exit_code, "message": r.message,
            "output_dropped_bytes": r.output_dropped_bytes, "replayed": r.replayed, "duration_ms": r.duration_ms})
    };
    match e {
        Event::Plan(p) => serde_json::json!({"type": "plan", "job_id": p.job_id, "action": p.action,
            "targets": p.targets, "batches": p.batches, "audit_id": p.audit_id}),
        Event::Target(t) => serde_json::json!({"type": "target", "server": t.server, "command_id": t.command_id,
            "batch": t.batch,
            "state": pb::TargetState::try_from(t.state).unwrap_or_default().as_str_name().trim_start_matches("TARGET_STATE_").to_ascii_lowercase(),
            "output": t.output, "result": t.result.as_ref().map(result)}),
        Event::Progress(p) => serde_json::json!({"type": "progress", "total": p.total, "succeeded": p.succeeded,
            "failed": p.failed, "running": p.running, "pending": p.pending, "skipped": p.skipped,
            "finished": p.finished, "stopped": p.stopped, "waiting": p.waiting}),
    }
}

pub fn audit_request(a: &AuditArgs) -> pb::QueryAuditRequest {
    pb::QueryAuditRequest {
        operator: a.operator.clone().unwrap_or_default(),
        server: a.server.clone().unwrap_or_default(),
        action: a.action.clone().unwrap_or_default(),
        since_ms: a.since.map(|d| outpost_common::now_ms() - d.as_millis() as i64).unwrap_or(0),
        until_ms: 0,
        limit: a.limit,
    }
}

pub fn audit_json(r: &pb::AuditRecord) -> serde_json::Value {
    serde_json::json!({"id": r.id, "at_ms": r.at_ms, "operator": r.operator, "role": r.role, "kind": r.kind,
        "action": r.action, "args": r.args, "selector": r.selector, "servers": r.servers, "job_id": r.job_id,
        "command_id": r.command_id, "outcome": if r.outcome == 0 { "" } else { outcome_word(r.outcome) },
        "message": r.message})
}

pub async fn audit(bundle: &Bundle, a: &AuditArgs) -> anyhow::Result<String> {
    let records = client(bundle)?.query_audit(audit_request(a)).await.map_err(|s| rpc(bundle, s))?.into_inner().records;
    Ok(match a.output {
        Output::Json => serde_json::to_string_pretty(&records.iter().map(audit_json).collect::<Vec<_>>())? + "\n",
        Output::Table => {
            let mut out = format!(
                "{:>6} {:<20} {:<12} {:<9} {:<16} {:<24} {:<11} {}\n",
                "ID", "AT", "OPERATOR", "KIND", "ACTION", "SERVERS", "OUTCOME", "MESSAGE"
            );
            for r in &records {
                out.push_str(&audit_line(r));
                out.push('\n');
            }
            out
        }
    })
}

/// The catalog, for `outpost actions`.
pub fn catalog() -> String {
    let mut out = String::new();
    for s in actions::CATALOG {
        out.push_str(&format!(
            "{:<16} {:<8} {:<12} {}\n",
            s.name,
            s.role,
            if s.destructive { "destructive" } else { "" },
            s.summary
        ));
        for a in s.args {
            let d = a.default.map(|d| format!(" (default {d})")).unwrap_or_else(|| " (required)".into());
            out.push_str(&format!("    --arg {}=…  {}{d}\n", a.name, a.help));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: RunArgs,
        }
        let mut v = vec!["t"];
        v.extend_from_slice(extra);
        T::try_parse_from(v).map(|t| t.a).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn requests_are_checked_before_sending() {
        let (r, _) = request(&args(&["exec", "--on", "web-1", "--", "df", "-h"])).unwrap();
        assert_eq!(r.args["argv"], "[\"df\",\"-h\"]");
        let e = |v: &[&str]| request(&args(v)).unwrap_err().to_string();
        assert!(e(&["nope", "--on", "a"]).contains("unknown action \"nope\""));
        assert!(e(&["service-status", "--on", "a"]).contains("argument \"unit\" is required"));
        assert!(e(&["service-status", "--on", "status:up", "--arg", "unit=k3s"]).contains("--on: status:up"));
        assert!(e(&["service-status", "--on", "a", "--arg", "unit"]).contains("KEY=VALUE"));
        assert!(
            e(&["app-apply", "--on", "a", "--arg", "spec=@/nonexistent/web.toml"])
                .contains("cannot read /nonexistent/web.toml")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("web.toml");
        std::fs::write(
            &file,
            "name = \"web\"\nimage = \"nginx\"\nport = 80\n[repo]\nurl = \"https://github.com/a/b.git\"\n",
        )
        .unwrap();
        let (r, _) =
            request(&args(&["app-apply", "--on", "a", "--arg", &format!("spec=@{}", file.display())])).unwrap();
        assert!(r.args["spec"].starts_with("name = \"web\""), "{:?}", r.args);
    }

    #[test]
    fn the_bar_counts() {
        let p = pb::JobProgress { total: 10, succeeded: 4, failed: 1, running: 2, pending: 3, ..Default::default() };
        assert_eq!(bar(&p), "[###############---------------] 5/10 · 4 ok · 1 failed · 2 running · 3 pending");
    }
}
