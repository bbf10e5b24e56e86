//! Pure formatting shared by the TUI (`state/`, `view/`) and the command line (`cli`, `run`): words for
//! statuses, outcomes and K3s states, percentages, progress bars, audit lines and times. It imports neither
//! the TUI nor the CLI, so neither depends on the other through it.

use outpost_common::text::inert;
use outpost_proto::v1 as pb;
use pb::{Health, Liveness, Server, k3s};

pub fn liveness(s: &Server) -> Liveness {
    Liveness::try_from(s.liveness).unwrap_or(Liveness::Unspecified)
}

/// Status as a word (the filter's `status:` values).
pub fn status_word(s: &Server) -> &'static str {
    outpost_common::Liveness::try_from(s.liveness).map_or("unknown", outpost_common::Liveness::as_str)
}

/// Highest disk use in percent, if any disk is known.
pub fn disk_pct(h: &Health) -> Option<f64> {
    h.disks
        .iter()
        .filter(|d| d.total_bytes > 0)
        .map(|d| (d.total_bytes - d.available_bytes.min(d.total_bytes)) as f64 * 100.0 / d.total_bytes as f64)
        .max_by(|a, b| a.total_cmp(b))
}

pub fn mem_pct(h: &Health) -> Option<f64> {
    (h.mem_total_bytes > 0).then(|| h.mem_used_bytes as f64 * 100.0 / h.mem_total_bytes as f64)
}

pub fn k3s_word(h: &Health) -> &'static str {
    match h.k3s.as_ref().map(|k| k3s::State::try_from(k.state).unwrap_or(k3s::State::Unspecified)) {
        Some(k3s::State::Absent) => "absent",
        Some(k3s::State::Active) => "active",
        Some(k3s::State::Inactive) => "inactive",
        Some(k3s::State::Failed) => "FAILED",
        Some(k3s::State::Activating) => "starting",
        _ => "-",
    }
}

pub fn needs_attention(s: &Server) -> bool {
    let h = s.health.as_ref();
    liveness(s) == Liveness::Lost
        || h.is_some_and(|h| k3s_word(h) == "FAILED" || disk_pct(h).is_some_and(|d| d >= 90.0))
        || s.apps.as_ref().is_some_and(|a| a.apps.iter().any(app_failing))
}

pub fn outcome_word(o: i32) -> &'static str {
    match pb::Outcome::try_from(o).unwrap_or_default() {
        pb::Outcome::Unspecified => "unknown",
        pb::Outcome::Succeeded => "succeeded",
        pb::Outcome::Failed => "failed",
        pb::Outcome::Refused => "refused",
        pb::Outcome::Cancelled => "cancelled",
        pb::Outcome::TimedOut => "timed out",
        pb::Outcome::Interrupted => "interrupted",
        pb::Outcome::Expired => "expired",
        pb::Outcome::Skipped => "skipped",
    }
}

pub fn summary(p: &pb::JobProgress) -> String {
    format!(
        "{} succeeded · {} failed · {} skipped · {} total{}",
        p.succeeded,
        p.failed,
        p.skipped,
        p.total,
        if p.stopped.is_empty() { String::new() } else { format!(" · stopped: {}", p.stopped) }
    )
}

/// `[#####-----] 12/50 · 10 ok · 2 failed · 5 running · 33 pending`
pub fn bar(p: &pb::JobProgress) -> String {
    const W: u32 = 30;
    let done = p.succeeded + p.failed + p.skipped;
    let filled = (done * W).checked_div(p.total).unwrap_or(W).min(W);
    format!(
        "[{}{}] {done}/{} · {} ok · {} failed · {} running · {} pending",
        "#".repeat(filled as usize),
        "-".repeat((W - filled) as usize),
        p.total,
        p.succeeded,
        p.failed,
        p.running,
        p.pending
    )
}

/// One line of an audit table.
pub fn audit_line(r: &pb::AuditRecord) -> String {
    let servers = match r.servers.len() {
        0 => "-".to_string(),
        1..=3 => r.servers.join(","),
        n => format!("{},… ({n})", r.servers[..2].join(",")),
    };
    let outcome = if r.outcome == 0 { "" } else { outcome_word(r.outcome) };
    // Stored for good in the audit log, possibly with what a hostile agent said: one line, inert.
    let line = format!(
        "{:>6} {:<20} {:<12} {:<9} {:<16} {:<24} {:<11} {}",
        r.id,
        clock(r.at_ms),
        r.operator,
        r.kind,
        r.action,
        servers,
        outcome,
        r.message
    );
    inert(&line).into_owned()
}

/// `2026-11-22 10:11:12` (UTC) for a unix-ms time.
pub fn clock(ms: i64) -> String {
    outpost_common::when::stamp(ms)
}

/// "ok/total" of a server's apps ("-" when it reports none).
pub fn apps_word(s: &outpost_proto::v1::Server) -> String {
    match s.apps.as_ref().filter(|a| !a.apps.is_empty()) {
        Some(a) => format!("{}/{}", a.apps.iter().filter(|x| x.phase == "available").count(), a.apps.len()),
        None => "-".into(),
    }
}

/// An app that needs a look: failed, degraded, or its repository cannot be read.
pub fn app_failing(a: &outpost_proto::v1::AppState) -> bool {
    matches!(a.phase.as_str(), "failed" | "degraded") || a.repo.as_ref().is_some_and(|r| !r.last_error.is_empty())
}

/// The first 12 characters of a commit.
pub fn short_commit(c: &str) -> &str {
    &c[..c.len().min(12)]
}

/// What is wrong with an app, in words: its own last error, else its repository's.
pub fn app_problem(a: &outpost_proto::v1::AppState) -> String {
    if a.last_error.is_empty() {
        a.repo.as_ref().map(|r| r.last_error.clone()).unwrap_or_default()
    } else {
        a.last_error.clone()
    }
}

/// An app's cells in every app table: name, phase, ready/desired, live deployment, commit, problem.
pub fn app_cells(a: &outpost_proto::v1::AppState) -> [String; 6] {
    [
        a.name.clone(),
        a.phase.clone(),
        format!("{}/{}", a.ready_replicas, a.desired_replicas),
        a.deployment.clone(),
        short_commit(&a.commit).to_string(),
        app_problem(a),
    ]
}

/// Bytes for people: `1.5 GiB`.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// `YYYY-MM` with a month 01–12 (the hub checks it again, with the calendar).
pub fn is_month(m: &str) -> bool {
    m.len() == 7
        && m.as_bytes()[4] == b'-'
        && m[..4].bytes().all(|b| b.is_ascii_digit())
        && m[5..].parse::<u32>().is_ok_and(|x| (1..=12).contains(&x))
}

/// The step running now, or the last one.
pub fn current_step(j: &pb::LifecycleJob) -> String {
    match j.steps.last() {
        Some(s) if s.ended_ms == 0 => {
            if j.progress.is_empty() {
                s.name.clone()
            } else {
                format!("{}: {}", s.name, inert(&j.progress))
            }
        }
        Some(s) => format!("{} ({})", s.name, if s.ok { "done" } else { "failed" }),
        None => "-".into(),
    }
}

/// An agent's update phase for people (`committed` is `healthy`: it reconnected and reported).
pub fn update_phase(u: &outpost_proto::v1::UpdateStatus) -> &'static str {
    match u.phase.as_str() {
        "downloading" => "downloading",
        "staged" => "restarting",
        "trying" => "on probation",
        "committed" => "healthy",
        "rolled_back" => "rolled back",
        _ => "unknown",
    }
}
