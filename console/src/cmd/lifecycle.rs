//! `outpost provision | jobs`: queue lifecycle jobs and follow them with a progress bar that survives a hub
//! restart (the job is durable: the watch re-attaches by id).

use std::time::Duration;

use outpost_common::bundle::Bundle;
use outpost_common::text::inert;
use outpost_proto::v1 as pb;

use crate::args::{CustomerArgs, EnrollSshArgs, LifecycleCmd, Output, ProvisionArgs};
use crate::client::{client, rpc};
use crate::format::{clock, current_step};

/// The steps of each kind, for the progress bar's length.
fn step_count(kind: &str) -> u64 {
    match kind {
        "provision" => 5,
        "deprovision" | "archive" => 4,
        "delete" => 2,
        "reactivate" => 4,
        "enroll-ssh" => 2,
        _ => 1,
    }
}

/// `outpost enroll-ssh`: queue the enrollment, then follow it.
pub async fn enroll_ssh(bundle: &Bundle, a: &EnrollSshArgs) -> anyhow::Result<String> {
    let (user, host) = a
        .target
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("{}: give the target as USER@HOST (e.g. root@203.0.113.7)", a.target))?;
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", p.display()))
    };
    let private_key = match &a.identity {
        Some(p) => read(p, "SSH key")?,
        None => String::new(),
    };
    let known_hosts = match &a.known_hosts {
        Some(p) => read(p, "known_hosts file")?,
        None => String::new(),
    };
    let req = pb::EnrollSshRequest {
        user: user.into(),
        host: host.into(),
        port: u32::from(a.port),
        known_hosts,
        fingerprint: a.fingerprint.clone().unwrap_or_default(),
        private_key,
        name: a.name.clone().unwrap_or_else(|| a.customer.clone()),
        customer: a.customer.clone(),
        plan: a.plan.clone(),
    };
    let mut c = client(bundle)?;
    let job = c.enroll_ssh(req).await.map_err(|s| rpc(bundle, s))?.into_inner().job.unwrap_or_default();
    if a.detach {
        return Ok(match a.output {
            Output::Json => format!("{}\n", job_json(&job)),
            Output::Table => format!("job {} queued: enroll-ssh {}\n", job.id, inert(&job.target)),
        });
    }
    follow(bundle, job.id, a.output).await
}

/// `outpost deprovision` and `outpost reactivate`: queue, then follow each job.
pub async fn customer_jobs(bundle: &Bundle, a: &CustomerArgs, reactivate: bool) -> anyhow::Result<String> {
    let mut c = client(bundle)?;
    let jobs = if reactivate {
        c.reactivate(pb::ReactivateRequest { customer: a.customer.clone() }).await
    } else {
        let confirm = a.yes.clone().unwrap_or_default();
        c.deprovision(pb::DeprovisionRequest { customer: a.customer.clone(), confirm }).await
    }
    .map_err(|s| rpc(bundle, s))?
    .into_inner()
    .jobs;
    let mut out = String::new();
    for j in &jobs {
        if a.detach {
            out.push_str(&match a.output {
                Output::Json => format!("{}\n", job_json(j)),
                Output::Table => format!("job {} queued: {} {}\n", j.id, j.kind, inert(&j.target)),
            });
        } else {
            out.push_str(&follow(bundle, j.id, a.output).await?);
        }
    }
    Ok(out)
}

pub fn job_json(j: &pb::LifecycleJob) -> serde_json::Value {
    serde_json::json!({
        "id": j.id, "kind": j.kind, "state": j.state, "target": j.target, "customer": j.customer,
        "attempt": j.attempt, "max_attempts": j.max_attempts, "not_before_ms": j.not_before_ms,
        "progress": j.progress, "error": j.error, "created_ms": j.created_ms, "updated_ms": j.updated_ms,
        "finished_ms": j.finished_ms, "submitted_by": j.submitted_by, "params": j.params,
        "cancel_requested": j.cancel_requested, "priority": j.priority,
        "steps": j.steps.iter().map(|s| serde_json::json!({"name": s.name, "started_ms": s.started_ms,
            "ended_ms": s.ended_ms, "ok": s.ok, "message": s.message})).collect::<Vec<_>>(),
    })
}

fn list_table(r: &pb::ListLifecycleJobsResponse) -> String {
    let s = r.stats.unwrap_or_default();
    let mut out = format!(
        "queue: {} pending, {} running; last hour: {} ended, {} failed\n",
        s.pending, s.running, s.finished_last_hour, s.failed_last_hour
    );
    out.push_str(&format!(
        "{:>6}  {:<11} {:<10} {:<20} {:>7}  {:<8}  {}\n",
        "ID", "KIND", "STATE", "TARGET", "ATTEMPT", "RETRY", "STEP"
    ));
    for j in &r.jobs {
        let retry = if j.state == "pending" && j.not_before_ms > 0 { clock(j.not_before_ms) } else { "-".into() };
        out.push_str(&format!(
            "{:>6}  {:<11} {:<10} {:<20} {:>3}/{:<3}  {:<8}  {}\n",
            j.id,
            j.kind,
            j.state,
            inert(&j.target),
            j.attempt,
            j.max_attempts,
            retry,
            current_step(j)
        ));
    }
    out
}

pub fn show_table(j: &pb::LifecycleJob) -> String {
    let mut out = format!(
        "job {} {} {}: {} (attempt {}/{}, by {})\n",
        j.id,
        j.kind,
        inert(&j.target),
        j.state,
        j.attempt,
        j.max_attempts,
        inert(&j.submitted_by)
    );
    let sorted: std::collections::BTreeMap<_, _> = j.params.iter().collect();
    let params: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={}", inert(v))).collect();
    out.push_str(&format!("  {}\n", params.join(" ")));
    for s in &j.steps {
        let mark = match (s.ended_ms, s.ok) {
            (0, _) => "…",
            (_, true) => "✓",
            (_, false) => "✗",
        };
        let took =
            if s.ended_ms > 0 { format!("{:.1}s", (s.ended_ms - s.started_ms) as f64 / 1000.0) } else { "".into() };
        out.push_str(&format!("  {mark} {:<12} {} {:>7}  {}\n", s.name, clock(s.started_ms), took, inert(&s.message)));
    }
    if !j.progress.is_empty() {
        out.push_str(&format!("  now: {}\n", inert(&j.progress)));
    }
    if !j.error.is_empty() {
        out.push_str(&format!("  error: {}\n", inert(&j.error)));
    }
    out
}

pub async fn provision(bundle: &Bundle, a: &ProvisionArgs) -> anyhow::Result<String> {
    let mut c = client(bundle)?;
    let req = pb::ProvisionRequest {
        customer: a.customer.clone(),
        plan: a.plan.clone(),
        location: a.location.clone().unwrap_or_default(),
        name: a.name.clone().unwrap_or_default(),
        idempotency_key: a.idempotency_key.clone().unwrap_or_default(),
    };
    let r = c.provision(req).await.map_err(|s| rpc(bundle, s))?.into_inner();
    let job = r.job.unwrap_or_default();
    if !r.created {
        eprintln!("job {} had this idempotency key already: following it", job.id);
    }
    if a.detach {
        return Ok(match a.output {
            Output::Json => format!("{}\n", job_json(&job)),
            Output::Table => format!("job {} queued: provision {}\n", job.id, inert(&job.target)),
        });
    }
    follow(bundle, job.id, a.output).await
}

pub async fn jobs(bundle: &Bundle, cmd: &LifecycleCmd) -> anyhow::Result<String> {
    let mut c = client(bundle)?;
    match cmd {
        LifecycleCmd::List { limit, output } => {
            let r = c
                .list_lifecycle_jobs(pb::ListLifecycleJobsRequest { limit: *limit })
                .await
                .map_err(|s| rpc(bundle, s))?
                .into_inner();
            Ok(match output {
                Output::Table => list_table(&r),
                Output::Json => {
                    let s = r.stats.unwrap_or_default();
                    format!(
                        "{}\n",
                        serde_json::json!({"stats": {"pending": s.pending, "running": s.running,
                        "finished_last_hour": s.finished_last_hour, "failed_last_hour": s.failed_last_hour},
                        "jobs": r.jobs.iter().map(job_json).collect::<Vec<_>>()})
                    )
                }
            })
        }
        LifecycleCmd::Show { id, output } => {
            let mut s = c
                .watch_lifecycle_job(pb::WatchLifecycleJobRequest { id: *id })
                .await
                .map_err(|s| rpc(bundle, s))?
                .into_inner();
            let job = s.message().await.map_err(|s| rpc(bundle, s))?.unwrap_or_default();
            Ok(match output {
                Output::Table => show_table(&job),
                Output::Json => format!("{}\n", job_json(&job)),
            })
        }
        LifecycleCmd::Watch { id, output } => follow(bundle, *id, *output).await,
        LifecycleCmd::Cancel { id } => {
            let j = c
                .cancel_lifecycle_job(pb::CancelLifecycleJobRequest { id: *id })
                .await
                .map_err(|s| rpc(bundle, s))?
                .into_inner();
            Ok(match j.state.as_str() {
                "cancelled" => format!("job {id} cancelled\n"),
                "running" => format!("job {id} is running: it stops at its next step and undoes what it created\n"),
                s => format!("job {id} had ended already ({s})\n"),
            })
        }
    }
}

/// Follows job `id` with a progress bar until it ends; when the hub goes away, waits for it and
/// re-attaches. The exit status says whether the job succeeded.
pub async fn follow(bundle: &Bundle, id: u64, output: Output) -> anyhow::Result<String> {
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} job {prefix} [{bar:20}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(id.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut outage: Option<std::time::Instant> = None;
    let last = loop {
        let stream = match client(bundle) {
            Ok(mut c) => c.watch_lifecycle_job(pb::WatchLifecycleJobRequest { id }).await,
            Err(e) => return Err(e),
        };
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                let since = *outage.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(600) {
                    bar.abandon();
                    return Err(rpc(bundle, s));
                }
                bar.set_message(format!("hub unreachable for {}s; re-attaching…", since.elapsed().as_secs()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(s) => {
                bar.abandon();
                return Err(rpc(bundle, s));
            }
        };
        outage = None;
        let mut ended = None;
        // The stream ending or breaking means the hub went away: re-attach.
        while let Ok(Some(j)) = stream.message().await {
            bar.set_length(step_count(&j.kind));
            bar.set_position(j.steps.iter().filter(|s| s.ok).count() as u64);
            let retry = if j.state == "pending" && !j.error.is_empty() {
                format!(" — retrying at {} after: {}", clock(j.not_before_ms), inert(&j.error))
            } else {
                String::new()
            };
            bar.set_message(format!("{} {} {}{retry}", j.state, inert(&j.target), current_step(&j)));
            if ["succeeded", "failed", "cancelled"].contains(&j.state.as_str()) {
                ended = Some(j);
                break;
            }
        }
        if let Some(j) = ended {
            break j;
        }
    };
    bar.finish_and_clear();
    let text = match output {
        Output::Table => show_table(&last),
        Output::Json => format!("{}\n", job_json(&last)),
    };
    if last.state == "succeeded" {
        Ok(text)
    } else {
        print!("{}", outpost_common::text::json_inert(&text));
        anyhow::bail!("job {id} {}: {}", last.state, inert(&last.error))
    }
}
