//! `outpost provision | jobs`: queue lifecycle jobs and follow them with a progress bar that survives a hub
//! restart (the job is durable: the watch re-attaches by id).

use std::time::Duration;

use clap::{Args, Subcommand};
use outpost_common::bundle::Bundle;
use outpost_common::text::inert;
use outpost_proto::v1 as pb;

use crate::cli::{Output, client, rpc};
use crate::format::clock;

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
pub enum JobsCmd {
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

pub async fn jobs(bundle: &Bundle, cmd: &JobsCmd) -> anyhow::Result<String> {
    let mut c = client(bundle)?;
    match cmd {
        JobsCmd::List { limit, output } => {
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
        JobsCmd::Show { id, output } => {
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
        JobsCmd::Watch { id, output } => follow(bundle, *id, *output).await,
        JobsCmd::Cancel { id } => {
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

/// `outpost alerts`.
pub async fn alerts(bundle: &Bundle, output: Output) -> anyhow::Result<String> {
    let mut c = client(bundle)?;
    let r = c.list_alerts(pb::ListAlertsRequest {}).await.map_err(|s| rpc(bundle, s))?.into_inner();
    Ok(match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = r
                .alerts
                .iter()
                .map(|a| {
                    let labels: std::collections::BTreeMap<_, _> = a.labels.iter().collect();
                    serde_json::json!({"labels": labels, "state": a.state, "since_ms": a.since_ms,
                        "fired_ms": a.fired_ms, "value": a.value, "summary": a.summary, "action": a.action})
                })
                .collect();
            format!("{}\n", serde_json::Value::Array(v))
        }
        Output::Table if r.alerts.is_empty() => "no alerts: nothing pending or firing\n".into(),
        Output::Table => {
            let mut out = format!(
                "{:<8} {:<9} {:<22} {:<20} {:<17} {}\n",
                "STATE", "SEVERITY", "ALERT", "SERVER", "SINCE", "SUMMARY"
            );
            for a in &r.alerts {
                let l = |k: &str| a.labels.get(k).map(|v| inert(v).into_owned()).unwrap_or_else(|| "-".into());
                out.push_str(&format!(
                    "{:<8} {:<9} {:<22} {:<20} {:<17} {}\n",
                    a.state,
                    l("severity"),
                    l("alertname"),
                    l("server"),
                    clock(a.since_ms),
                    inert(&a.summary)
                ));
            }
            out
        }
    })
}

fn silence_line(s: &pb::SilenceInfo) -> String {
    let matchers: std::collections::BTreeMap<_, _> = s.matchers.iter().collect();
    let m: Vec<String> = matchers.iter().map(|(k, v)| format!("{k}={}", inert(v))).collect();
    format!(
        "{}  {}  until {}  by {}: {}\n",
        inert(&s.id),
        m.join(","),
        clock(s.expires_ms),
        inert(&s.creator),
        inert(&s.comment)
    )
}

/// `outpost silence`.
pub async fn silence(bundle: &Bundle, matchers: &[String], duration: &str, comment: &str) -> anyhow::Result<String> {
    let mut m = std::collections::HashMap::new();
    for x in matchers {
        let (k, v) = x
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--match {x:?}: give LABEL=VALUE, e.g. alertname=disk_full"))?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    let d = outpost_common::parse_duration_ms(duration).map_err(|e| anyhow::anyhow!("--for {duration:?}: {e}"))?;
    let req = pb::SilenceRequest {
        matchers: m,
        duration_secs: u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
        comment: comment.to_string(),
    };
    let s = client(bundle)?.silence(req).await.map_err(|s| rpc(bundle, s))?.into_inner();
    Ok(format!("silenced: {}", silence_line(&s)))
}

/// `outpost silences`.
pub async fn silences(bundle: &Bundle) -> anyhow::Result<String> {
    let r = client(bundle)?.list_silences(pb::ListSilencesRequest {}).await.map_err(|s| rpc(bundle, s))?.into_inner();
    if r.silences.is_empty() {
        return Ok("no silence in force\n".into());
    }
    Ok(r.silences.iter().map(silence_line).collect())
}

/// `outpost unsilence`.
pub async fn unsilence(bundle: &Bundle, id: &str) -> anyhow::Result<String> {
    let s = client(bundle)?
        .expire_silence(pb::ExpireSilenceRequest { id: id.to_string() })
        .await
        .map_err(|s| rpc(bundle, s))?
        .into_inner();
    Ok(format!("ended: {}", silence_line(&s)))
}

/// `outpost ack`.
pub async fn ack(bundle: &Bundle, alertname: &str, server: &str) -> anyhow::Result<String> {
    let req = pb::AckAlertRequest { alertname: alertname.to_string(), server: server.to_string() };
    let r = client(bundle)?.ack_alert(req).await.map_err(|s| rpc(bundle, s))?.into_inner();
    Ok(format!("acknowledged {} alert(s)\n", r.acknowledged))
}
