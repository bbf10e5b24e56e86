//! The actions themselves: systemd units, reboot, logs, diagnostics, certificate rotation, exec.
//!
//! The hub checked the request against the catalog; this agent adds what only it knows: which units and
//! log files it allows, and whether `exec` is enabled at all.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use outpost_common::actions::{Action, LogSource};
use outpost_proto::v1::{CommandResult, Outcome};
use tokio::sync::oneshot;

use super::process::{self, Ended};
use super::{Ctx, result};
use crate::config::AgentConfig;

/// Units every agent allows besides its configured ones.
const BUILTIN_UNITS: [&str; 2] = ["k3s", "outpost-agentd"];
/// The first read of a log file looks at most this far back.
const FILE_TAIL_BYTES: u64 = 1024 * 1024;
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// A reboot waits this long so its result reaches the hub first.
const REBOOT_DELAY: Duration = Duration::from_secs(3);

fn unit_allowed(config: &AgentConfig, unit: &str) -> bool {
    let unit = unit.strip_suffix(".service").unwrap_or(unit);
    BUILTIN_UNITS.contains(&unit) || config.k3s_unit == unit || config.allowed_units.iter().any(|u| u == unit)
}

fn allowed_units(config: &AgentConfig) -> String {
    let mut all: Vec<&str> = BUILTIN_UNITS.to_vec();
    all.push(&config.k3s_unit);
    all.extend(config.allowed_units.iter().map(String::as_str));
    all.sort();
    all.dedup();
    all.join(", ")
}

/// This agent's own rules; `Err` says what was refused and how to allow it.
pub fn allowed(config: &AgentConfig, action: &Action) -> Result<(), String> {
    match action {
        Action::ServiceStatus { unit }
        | Action::ServiceRestart { unit }
        | Action::Logs { source: LogSource::Unit(unit), .. }
            if !unit_allowed(config, unit) =>
        {
            Err(format!(
                "unit {unit:?} is not allow-listed on this agent (allowed: {}); add it to allowed_units in agentd.toml",
                allowed_units(config)
            ))
        }
        Action::Logs { source: LogSource::File(path), .. }
            if !config.log_files.iter().any(|f| f == Path::new(path)) =>
        {
            Err(format!("file {path:?} is not in this agent's log_files; add it to log_files in agentd.toml"))
        }
        Action::Exec { .. } if !config.exec_enabled => {
            Err("exec is disabled on this agent; set exec_enabled = true in its agentd.toml to allow it".into())
        }
        _ => Ok(()),
    }
}

pub async fn execute(action: &Action, ctx: &mut Ctx<'_>) -> CommandResult {
    match action {
        Action::ServiceStatus { unit } => status(unit, ctx).await,
        Action::ServiceRestart { unit } => {
            let argv = [ctx.config.systemctl.clone(), "restart".into(), unit.clone()];
            let ended = process::run(&argv, ctx).await;
            match process::describe(&ended) {
                (true, ..) => status(unit, ctx).await,
                (false, code, what) => result(Outcome::Failed, code, format!("systemctl restart {unit}: {what}")),
            }
        }
        Action::Reboot => {
            let systemctl = ctx.config.systemctl.clone();
            // Outlives the command on purpose: the result is journaled and sent first.
            tokio::spawn(async move {
                tokio::time::sleep(REBOOT_DELAY).await;
                tracing::warn!("rebooting on the operator's request");
                if let Err(error) = tokio::process::Command::new(&systemctl).arg("reboot").status().await {
                    tracing::error!(%error, "reboot failed");
                }
            });
            result(Outcome::Succeeded, 0, format!("rebooting in {} s", REBOOT_DELAY.as_secs()))
        }
        Action::Logs { source: LogSource::Unit(unit), lines, follow } => {
            let mut argv = vec![
                ctx.config.journalctl.clone(),
                "-u".into(),
                unit.clone(),
                "-n".into(),
                lines.to_string(),
                "--no-pager".into(),
                "-o".into(),
                "short-iso".into(),
            ];
            if *follow {
                argv.push("-f".into());
            }
            match process::run(&argv, ctx).await {
                Ended::TimedOut if *follow => result(Outcome::Succeeded, 0, "followed until the deadline"),
                ended => from_process(&ended, "journalctl"),
            }
        }
        Action::Logs { source: LogSource::File(path), lines, follow } => file_logs(path, *lines, *follow, ctx).await,
        Action::Diagnostics => diagnostics(ctx).await,
        Action::RotateCert => {
            let (tx, rx) = oneshot::channel();
            if ctx.renew.send(tx).await.is_err() {
                return result(Outcome::Failed, -1, "the hub link is stopping; try again");
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => result(Outcome::Cancelled, -1, "cancelled"),
                _ = tokio::time::sleep_until(ctx.deadline.into()) => result(Outcome::TimedOut, -1, "no renewal before the deadline"),
                r = rx => match r {
                    Ok(Ok(serial)) => result(Outcome::Succeeded, 0, format!("renewed: new certificate serial {serial}")),
                    Ok(Err(e)) => result(Outcome::Failed, -1, format!("renewal refused: {e}")),
                    Err(_) => result(Outcome::Failed, -1, "the stream broke before the renewal finished; run it again"),
                },
            }
        }
        Action::Exec { argv, .. } => from_process(&process::run(argv, ctx).await, &argv[0]),
        // The app actions.
        app => match ctx.apps.clone() {
            Some(apps) => {
                let operator = ctx.operator.clone();
                apps.execute(app, &operator, ctx).await
            }
            None => result(Outcome::Refused, -1, "this agent does not manage apps (no instance database)"),
        },
    }
}

fn from_process(ended: &Ended, what: &str) -> CommandResult {
    let (ok, code, how) = process::describe(ended);
    let outcome = match ended {
        _ if ok => Outcome::Succeeded,
        Ended::Cancelled => Outcome::Cancelled,
        Ended::TimedOut => Outcome::TimedOut,
        _ => Outcome::Failed,
    };
    result(outcome, code, format!("{what}: {how}"))
}

/// `systemctl show`; succeeded when the unit is active.
async fn status(unit: &str, ctx: &mut Ctx<'_>) -> CommandResult {
    let argv = [
        ctx.config.systemctl.clone(),
        "show".into(),
        unit.to_string(),
        "--no-pager".into(),
        "--property=LoadState,ActiveState,SubState,MainPID,NRestarts,ActiveEnterTimestamp".into(),
    ];
    let ended = process::run(&argv, ctx).await;
    if !matches!(ended, Ended::Exited(s) if s.success()) {
        return from_process(&ended, "systemctl show");
    }
    let prop = |k: &str| {
        ctx.out.tail().lines().rev().find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('='))).unwrap_or("")
    };
    let (load, active, sub) = (prop("LoadState"), prop("ActiveState"), prop("SubState"));
    if load == "not-found" {
        return result(Outcome::Failed, 3, format!("{unit}: no such unit on this server"));
    }
    let what = format!("{unit}: {active} ({sub})");
    if active == "active" { result(Outcome::Succeeded, 0, what) } else { result(Outcome::Failed, 3, what) }
}

async fn file_logs(path: &str, lines: u32, follow: bool, ctx: &mut Ctx<'_>) -> CommandResult {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return result(Outcome::Failed, -1, format!("cannot open {path}: {e}")),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(FILE_TAIL_BYTES);
    let mut buf = Vec::new();
    if let Err(e) = file.seek(SeekFrom::Start(start)).and_then(|_| file.read_to_end(&mut buf)) {
        return result(Outcome::Failed, -1, format!("cannot read {path}: {e}"));
    }
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    for l in &all[all.len().saturating_sub(lines as usize)..] {
        ctx.out.line(l).await;
    }
    if !follow {
        return result(Outcome::Succeeded, 0, format!("{} lines of {path}", all.len().min(lines as usize)));
    }
    let mut pos = start + buf.len() as u64;
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return result(Outcome::Cancelled, -1, "cancelled"),
            _ = tokio::time::sleep_until(ctx.deadline.into()) => return result(Outcome::Succeeded, 0, "followed until the deadline"),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            ctx.out.line(&format!("--- {path} was truncated or rotated; reading from its start ---")).await;
            pos = 0;
            if let Ok(f) = std::fs::File::open(path) {
                file = f;
            }
        }
        if len > pos {
            let mut chunk = Vec::new();
            let want = (len - pos).min(FILE_TAIL_BYTES);
            let r = file.seek(SeekFrom::Start(pos)).and_then(|_| (&mut file).take(want).read_to_end(&mut chunk));
            if let Err(e) = r {
                return result(Outcome::Failed, -1, format!("reading {path}: {e}"));
            }
            pos += chunk.len() as u64;
            ctx.out.bytes(&chunk).await;
        }
    }
}

async fn diagnostics(ctx: &mut Ctx<'_>) -> CommandResult {
    let h = crate::identity::host_facts();
    ctx.out.line("== versions").await;
    ctx.out.line(&format!("agentd {}  {} {} ({}) host {}", h.agent_version, h.os, h.kernel, h.arch, h.hostname)).await;
    ctx.out.line("== disks").await;
    let disks: Vec<(String, u64, u64)> = sysinfo::Disks::new_with_refreshed_list()
        .map(|ds| {
            ds.iter()
                .take(64)
                .map(|d| (d.mount_point().display().to_string(), d.total_space(), d.available_space()))
                .collect()
        })
        .unwrap_or_default();
    for (mount, total, avail) in disks {
        let pct = if total == 0 { 0.0 } else { 100.0 * (total - avail.min(total)) as f64 / total as f64 };
        ctx.out.line(&format!("{mount} {pct:.1}% used of {} MiB", total >> 20)).await;
    }
    ctx.out.line("== k3s").await;
    let argv = [ctx.config.systemctl.clone(), "is-active".into(), ctx.config.k3s_unit.clone()];
    let k3s = process::run(&argv, ctx).await;
    if let Ended::Spawn(e) = &k3s {
        ctx.out.line(e).await;
    }
    ctx.out.line("== certificate").await;
    match crate::identity::AgentIdentity::load(&ctx.config.data_dir).map(|i| i.map(|i| i.cert())) {
        Ok(Some(Ok(c))) => {
            let left = c.not_after - outpost_common::now_secs();
            ctx.out.line(&format!("serial {} not_after {} ({left} s left)", c.serial, c.not_after)).await;
        }
        Ok(Some(Err(e))) => ctx.out.line(&format!("unreadable: {e}")).await,
        Ok(None) => ctx.out.line("no identity").await,
        Err(e) => ctx.out.line(&format!("unreadable: {e}")).await,
    }
    ctx.out.line("== recent agentd log").await;
    // The log directory when agentd writes one; otherwise the newest of the files `logs` may read (where a
    // service manager sends agentd's stderr to a file, as the demo does).
    let newest_log_file = || {
        ctx.config
            .log_files
            .iter()
            .filter_map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok().map(|t| (t, f.clone())))
            .max()
            .map(|(_, f)| f)
    };
    match ctx.config.log_dir.as_deref().and_then(newest_file).or_else(newest_log_file) {
        Some(f) => {
            let text = std::fs::read(&f).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines[lines.len().saturating_sub(50)..] {
                ctx.out.line(l).await;
            }
        }
        None => {
            ctx.out.line("(no log_dir or log_files configured; agentd logs to the journal: use the logs action)").await
        }
    }
    result(Outcome::Succeeded, 0, "diagnostics collected")
}

fn newest_file(dir: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}
