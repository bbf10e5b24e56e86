//! Jobs: one action on the servers a selector matches, in batches (an optional canary first), stopping
//! when the failure rate passes a threshold. Requests are checked and audited here before anything is sent.
//!
//! Job events are the wire type (`outpost.v1.JobEvent`): a job's only product is that stream, so building
//! a parallel domain type would be conversion for its own sake (as with `Health`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use outpost_common::Role;
use outpost_common::actions::{Action, ActionSpec, redacted};
use outpost_common::cert::hex;
use outpost_common::selector::{Candidate, Selector};
use outpost_proto::v1 as pb;
use pb::{CommandResult, Outcome, TargetState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditEntry, Kind};
use crate::ca::random_bytes;
use crate::registry::Liveness;
use crate::relay::{CmdEvent, refused};
use crate::state::HubState;
use crate::store::{Op, Tree};

/// Targets per batch when the request does not say.
const DEFAULT_BATCH: usize = 10;
const MAX_BATCH: usize = 1000;
/// Server names one selector may list.
const MAX_SELECTOR_NAMES: usize = 10_000;
/// Jobs running at once on one hub.
const MAX_JOBS: usize = 256;
/// Longest a command may wait for an offline server.
const MAX_QUEUE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long past a command's deadline the hub waits for the agent's answer before giving up on it.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

pub type EventTx = mpsc::Sender<Result<pb::JobEvent, Status>>;

/// Events queued for a job's caller. With output flow control this bounds what a slow caller holds at the
/// hub (at most this many output chunks of up to 16 KiB); beyond it the commands themselves wait.
pub const EVENT_QUEUE: usize = 64;

/// A request that passed every check.
pub struct Job {
    pub id: String,
    pub action: String,
    pub args: BTreeMap<String, String>,
    pub targets: Vec<String>,
    pub batches: Vec<usize>,
    pub max_failure_rate: f64,
    pub run_for: Duration,
    pub hard_deadline: Option<Instant>,
    pub queue: Option<Duration>,
    pub operator: String,
    pub audit_id: u64,
    /// Targets that succeeded / failed before this run (a job resumed after a restart): they count towards
    /// the failure threshold.
    pub succeeded_before: u32,
    pub failed_before: u32,
}

/// The rest of a fan-out: the batches not dispatched yet, written with each batch's pending records (one
/// write), removed when the job ends. A restarted hub finishes the dispatched batch (its pending commands)
/// and then runs these, so a job outlives a hub restart; the caller is gone, the audit log has the outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRecord {
    pub action: String,
    pub args: BTreeMap<String, String>,
    pub operator: String,
    pub audit_id: u64,
    /// The targets not dispatched yet, in order, and their batch sizes.
    pub targets: Vec<String>,
    pub batches: Vec<usize>,
    pub max_failure_rate: f64,
    pub run_for_ms: u64,
    /// Wall clock: the caller's deadline, if it gave one.
    pub deadline_ms: Option<i64>,
    pub queue_secs: Option<u64>,
    /// Outcomes of the batches before the one dispatched with this record.
    pub succeeded: u32,
    pub failed: u32,
}

/// A dispatched command whose result is not audited yet, kept durably so a restarted hub delivers it
/// again (the agent's journal answers one it already ran) and audits its result. Arguments are kept as
/// sent, in the hub's store (its data directory is 0700), until the result is audited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRecord {
    pub server: String,
    pub job_id: String,
    pub action: String,
    pub args: BTreeMap<String, String>,
    pub operator: String,
    pub run_for_ms: u64,
    /// Wall clock: the caller's deadline; for a command sent at once, when it must have ended.
    pub deadline_ms: Option<i64>,
    /// Wall clock: a queued command waits for its server until then.
    pub queue_until_ms: Option<i64>,
}

/// The caller, as the audit log names it.
pub struct Caller {
    pub name: String,
    pub role: Role,
}

pub fn selector_from_pb(s: Option<pb::Selector>) -> Selector {
    let s = s.unwrap_or_default();
    Selector {
        names: s.names,
        customer: Some(s.customer).filter(|c| !c.is_empty()),
        plan: Some(s.plan).filter(|c| !c.is_empty()),
        labels: s.labels.into_iter().collect(),
        // An unknown value stays in (and matches nothing) rather than vanishing and widening the selection;
        // `check` refuses it by name.
        status: s
            .status
            .into_iter()
            .map(|l| Liveness::try_from(l).map_or_else(|n| format!("invalid({n})"), |l| l.as_str().to_string()))
            .collect(),
        all: s.all,
    }
}

/// The servers `sel` matches, by name.
pub fn resolve(state: &HubState, sel: &Selector) -> Vec<String> {
    state
        .registry
        .list()
        .iter()
        .filter(|v| {
            let r = &v.record;
            let label = |k: &str| r.labels.get(k).map(String::as_str);
            sel.matches(&Candidate {
                name: &r.name,
                customer: &r.customer,
                plan: &r.plan,
                status: Liveness::as_str(v.liveness),
                label: &label,
            })
        })
        .map(|v| v.record.name.clone())
        .collect()
}

/// Batch sizes: the canary (if any) first, then `batch` at a time.
pub fn plan_batches(n: usize, batch: usize, canary: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = n;
    if canary > 0 && left > 0 {
        out.push(canary.min(left));
        left -= canary.min(left);
    }
    while left > 0 {
        out.push(batch.min(left));
        left -= batch.min(left);
    }
    out
}

/// Checks a request, audits it (accepted or refused), and returns the job to run.
pub async fn submit(state: &HubState, caller: &Caller, mut req: pb::RunActionRequest) -> Result<Job, Status> {
    let args: BTreeMap<String, String> = std::mem::take(&mut req.args).into_iter().collect();
    let sel = selector_from_pb(req.selector.take());
    let mut entry = AuditEntry {
        operator: caller.name.clone(),
        role: caller.role.to_string(),
        action: req.action.chars().take(64).collect(),
        // Bounded: a refused request may carry up to a whole message of junk.
        args: redacted(&req.action, &args).into_iter().take(32).collect(),
        selector: sel.to_string().chars().take(1024).collect(),
        ..Default::default()
    };
    let checked = check(state, caller, &req.action, &args, &sel, &mut entry, &req);
    let (spec, targets) = match checked {
        Ok(ok) => ok,
        Err(status) => {
            entry.kind = Kind::Refused;
            entry.outcome = audit::Outcome::Refused;
            entry.message = status.message().to_string();
            state.audit.append(entry).await.map_err(crate::error::HubError::from)?;
            return Err(status);
        }
    };
    let batch = if req.batch == 0 { DEFAULT_BATCH } else { req.batch as usize };
    let now = Instant::now();
    let hard_deadline = (req.deadline_ms > 0)
        .then(|| now + Duration::from_millis((req.deadline_ms - outpost_common::now_ms()).max(0) as u64));
    let run_for = hard_deadline.map_or(spec.default_deadline, |d| (d - now).min(spec.max_deadline));
    let id = hex(&random_bytes::<8>());
    entry.kind = Kind::Requested;
    entry.servers = targets.clone();
    entry.job_id = id.clone();
    entry.message = format!("{} target(s), batch {batch}, canary {}", targets.len(), req.canary);
    // Durable before anything is dispatched.
    let audit_id = state.audit.append(entry).await.map_err(crate::error::HubError::from)?;
    Ok(Job {
        id,
        action: spec.name.to_string(),
        batches: plan_batches(targets.len(), batch, req.canary as usize),
        targets,
        args,
        max_failure_rate: req.max_failure_rate,
        run_for,
        hard_deadline,
        queue: (req.queue_secs > 0).then(|| Duration::from_secs(u64::from(req.queue_secs))),
        operator: caller.name.clone(),
        audit_id,
        succeeded_before: 0,
        failed_before: 0,
    })
}

fn check(
    state: &HubState,
    caller: &Caller,
    action: &str,
    args: &BTreeMap<String, String>,
    sel: &Selector,
    entry: &mut AuditEntry,
    req: &pb::RunActionRequest,
) -> Result<(&'static ActionSpec, Vec<String>), Status> {
    let (_, spec) = Action::parse(action, args).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if caller.role < spec.role {
        return Err(Status::permission_denied(format!(
            "operator {} has role {}; {} needs role {} or higher",
            caller.name, caller.role, spec.name, spec.role
        )));
    }
    if sel.is_empty() {
        return Err(Status::invalid_argument(
            "the selector is empty: name servers, or use customer:, plan:, label:, status: or all",
        ));
    }
    if let Some(bad) = sel.status.iter().find(|s| s.parse::<Liveness>().is_err()) {
        return Err(Status::invalid_argument(format!("selector status {bad} is not one of {}", Liveness::words())));
    }
    if let Some(bad) = sel.names.iter().find(|n| !outpost_common::cert::valid_name(n)) {
        let bad: String = bad.chars().take(64).collect();
        return Err(Status::invalid_argument(format!("selector name {bad:?} is not a server name")));
    }
    let text_len = sel.customer.iter().chain(&sel.plan).chain(sel.labels.keys()).chain(sel.labels.values());
    if sel.names.len() > MAX_SELECTOR_NAMES || sel.labels.len() > 64 || text_len.map(String::len).any(|l| l > 256) {
        return Err(Status::invalid_argument(format!(
            "the selector is too large: at most {MAX_SELECTOR_NAMES} names, 64 labels, 256 bytes per value"
        )));
    }
    if req.deadline_ms != 0 && req.deadline_ms <= outpost_common::now_ms() {
        return Err(Status::invalid_argument(format!(
            "the deadline {} is in the past; give a future time (or none for the action's default of {} s)",
            crate::error::rfc3339_ms(req.deadline_ms),
            spec.default_deadline.as_secs()
        )));
    }
    if req.deadline_ms > outpost_common::now_ms() + spec.max_deadline.as_millis() as i64 {
        return Err(Status::invalid_argument(format!(
            "the deadline is more than {} s away; {} allows at most that",
            spec.max_deadline.as_secs(),
            spec.name
        )));
    }
    if state.jobs.len() >= MAX_JOBS {
        return Err(Status::resource_exhausted(format!(
            "{MAX_JOBS} jobs are running on this hub; wait for one to finish (or cancel one) and try again"
        )));
    }
    if req.batch as usize > MAX_BATCH {
        return Err(Status::invalid_argument(format!("batch {} is over the limit of {MAX_BATCH}", req.batch)));
    }
    if !(0.0..=1.0).contains(&req.max_failure_rate) {
        return Err(Status::invalid_argument(format!(
            "max_failure_rate {} must be between 0.0 and 1.0",
            req.max_failure_rate
        )));
    }
    if Duration::from_secs(u64::from(req.queue_secs)) > MAX_QUEUE {
        return Err(Status::invalid_argument(format!("queue time {} s is over 7 days", req.queue_secs)));
    }
    let targets = resolve(state, sel);
    entry.servers = targets.clone();
    if targets.is_empty() {
        return Err(Status::not_found(format!("selector {sel:?} matches no server", sel = sel.to_string())));
    }
    if spec.destructive {
        let expected = outpost_common::actions::confirmation(&targets);
        if req.confirm != expected {
            let what = if targets.len() == 1 { "the server name" } else { "the number of targets" };
            return Err(Status::failed_precondition(format!(
                "{} is destructive: confirm with {what} ({expected}); got {:?}",
                spec.name, req.confirm
            )));
        }
    }
    Ok((spec, targets))
}

#[derive(Default)]
struct Counts {
    succeeded: u32,
    failed: u32,
    running: u32,
    skipped: u32,
}

fn event(e: pb::job_event::Event) -> Result<pb::JobEvent, Status> {
    Ok(pb::JobEvent { event: Some(e) })
}

/// Runs `job` to its end. The caller may go away; the job and its audit records go on.
pub async fn run(state: Arc<HubState>, job: Job, tx: EventTx, cancel: CancellationToken) {
    let job = Arc::new(job);
    let plan = pb::JobPlan {
        job_id: job.id.clone(),
        targets: job.targets.clone(),
        batches: job.batches.iter().map(|b| *b as u32).collect(),
        audit_id: job.audit_id,
        action: job.action.clone(),
    };
    let _ = tx.send(event(pb::job_event::Event::Plan(plan))).await;
    let total = job.targets.len() as u32 + job.succeeded_before + job.failed_before;
    let mut c = Counts { succeeded: job.succeeded_before, failed: job.failed_before, ..Counts::default() };
    let progress = |c: &Counts, finished: bool, stopped: &str| {
        let pending = total - c.succeeded - c.failed - c.running - c.skipped;
        event(pb::job_event::Event::Progress(pb::JobProgress {
            total,
            succeeded: c.succeeded,
            failed: c.failed,
            running: c.running,
            pending,
            skipped: c.skipped,
            finished,
            stopped: stopped.to_string(),
        }))
    };
    let mut stopped = String::new();
    // A resumed job: the outcomes before the restart may already be over the threshold.
    let before = job.succeeded_before + job.failed_before;
    if job.failed_before > 0 && f64::from(job.failed_before) / f64::from(before) > job.max_failure_rate {
        stopped = format!(
            "failure rate {:.0}% ({} of {before}) before the restart is over the limit of {:.0}%",
            f64::from(job.failed_before) * 100.0 / f64::from(before),
            job.failed_before,
            job.max_failure_rate * 100.0
        );
    }
    let mut next = 0;
    for (bi, &size) in job.batches.iter().enumerate() {
        if cancel.is_cancelled() {
            stopped = if state.shutdown.is_cancelled() { "the hub shut down" } else { "cancelled" }.into();
        }
        if !stopped.is_empty() {
            break;
        }
        let batch = &job.targets[next..next + size];
        next += size;
        c.running = size as u32;
        let _ = tx.send(progress(&c, false, "")).await;
        let ids: Vec<String> = batch.iter().map(|_| hex(&random_bytes::<16>())).collect();
        // What is left after this batch goes to the store with the batch's pending records.
        let rest = (bi + 1 < job.batches.len()).then(|| PlanRecord {
            action: job.action.clone(),
            args: job.args.clone(),
            operator: job.operator.clone(),
            audit_id: job.audit_id,
            targets: job.targets[next..].to_vec(),
            batches: job.batches[bi + 1..].to_vec(),
            max_failure_rate: job.max_failure_rate,
            run_for_ms: job.run_for.as_millis() as u64,
            deadline_ms: job
                .hard_deadline
                .map(|h| outpost_common::now_ms() + h.saturating_duration_since(Instant::now()).as_millis() as i64),
            queue_secs: job.queue.map(|q| q.as_secs()),
            succeeded: c.succeeded,
            failed: c.failed,
        });
        let plan_op = match &rest {
            Some(r) => Op::put_json(Tree::Plans, job.id.clone(), r),
            None => Op::Del(Tree::Plans, job.id.clone().into_bytes()),
        };
        let recorded = record_pending(&state, &job, batch, &ids, plan_op).await;
        let mut running: FuturesUnordered<_> = batch
            .iter()
            .zip(ids)
            .map(|(server, id)| {
                let slot = Slot { id, recorded: recorded.clone() };
                target(&state, &job, server, bi as u32, &tx, &cancel, slot)
            })
            .collect();
        // Never await room in `tx` here while `running` is not polled: its targets wait for room in the same
        // queue, and the slots it frees go to the first waiter; a frozen target holding them would keep
        // this send waiting for ever. Progress is cumulative, so a skipped one is sent when the batch ends.
        let mut owed = false;
        while let Some(r) = running.next().await {
            c.running -= 1;
            if r.outcome == Outcome::Succeeded as i32 {
                c.succeeded += 1;
            } else {
                c.failed += 1;
            }
            owed = tx.try_send(progress(&c, false, "")).is_err();
        }
        if owed {
            let _ = tx.send(progress(&c, false, "")).await;
        }
        let finished = c.succeeded + c.failed;
        let rate = f64::from(c.failed) / f64::from(finished.max(1));
        if c.failed > 0 && rate > job.max_failure_rate && next < job.targets.len() {
            stopped = format!(
                "failure rate {:.0}% ({} of {finished}) after batch {} is over the limit of {:.0}%",
                rate * 100.0,
                c.failed,
                bi + 1,
                job.max_failure_rate * 100.0
            );
        }
    }
    if cancel.is_cancelled() && stopped.is_empty() && next < job.targets.len() {
        stopped = if state.shutdown.is_cancelled() { "the hub shut down" } else { "cancelled" }.into();
    }
    if state.shutdown.is_cancelled() && next < job.targets.len() {
        // The plan stays in the store: the next start runs the remaining batches.
        let why = "the hub shut down; the remaining batches run when it starts again (see `outpost audit`)";
        tracing::info!(job = %job.id, remaining = job.targets.len() - next, "job paused by shutdown");
        let _ = tx.send(progress(&c, true, why)).await;
        state.jobs.remove(&job.id);
        return;
    }
    let skipped = &job.targets[next..];
    if !skipped.is_empty() {
        let why = format!("not run: the job stopped ({stopped})");
        for (i, server) in skipped.iter().enumerate() {
            let r = CommandResult {
                outcome: Outcome::Skipped as i32,
                exit_code: -1,
                message: why.clone(),
                ..Default::default()
            };
            let batch = batch_of(&job.batches, next + i);
            let te = pb::TargetEvent {
                server: server.clone(),
                state: TargetState::Done as i32,
                result: Some(r),
                batch,
                ..Default::default()
            };
            let _ = tx.send(event(pb::job_event::Event::Target(te))).await;
        }
        c.skipped = skipped.len() as u32;
        let entry = AuditEntry {
            operator: job.operator.clone(),
            kind: Kind::Result,
            action: job.action.clone(),
            servers: skipped.to_vec(),
            job_id: job.id.clone(),
            outcome: audit::Outcome::Skipped,
            message: why,
            ..Default::default()
        };
        // Skipped and no plan left, in one write.
        if let Err(error) =
            state.audit.append_with(entry, vec![Op::Del(Tree::Plans, job.id.clone().into_bytes())]).await
        {
            tracing::error!(%error, job = %job.id, "cannot audit skipped targets");
        }
    }
    if !stopped.is_empty() {
        tracing::warn!(job = %job.id, %stopped, "job stopped early");
    }
    let _ = tx.send(progress(&c, true, &stopped)).await;
    state.jobs.remove(&job.id);
    tracing::info!(job = %job.id, action = %job.action, succeeded = c.succeeded, failed = c.failed, skipped = c.skipped, "job finished");
}

fn batch_of(batches: &[usize], index: usize) -> u32 {
    let mut end = 0;
    for (i, b) in batches.iter().enumerate() {
        end += b;
        if index < end {
            return i as u32;
        }
    }
    batches.len().saturating_sub(1) as u32
}

/// One target: dispatch, follow, audit the result.
async fn target(
    state: &HubState,
    job: &Job,
    server: &str,
    batch: u32,
    tx: &EventTx,
    cancel: &CancellationToken,
    slot: Slot,
) -> CommandResult {
    let Slot { id, recorded } = slot;
    let te = |state: TargetState, output: String, result: Option<CommandResult>| {
        event(pb::job_event::Event::Target(pb::TargetEvent {
            server: server.to_string(),
            command_id: id.clone(),
            state: state as i32,
            output,
            result,
            batch,
        }))
    };
    let te_of = |ev| match ev {
        CmdEvent::Sent => te(TargetState::Sent, String::new(), None),
        CmdEvent::Started => te(TargetState::Running, String::new(), None),
        CmdEvent::Output(o) => te(TargetState::Running, o, None),
    };
    let command = pb::Command {
        command_id: id.clone(),
        action: job.action.clone(),
        args: job.args.clone().into_iter().collect(),
        timeout_ms: 0,
        operator: job.operator.clone(),
    };
    let started = Instant::now();
    let mut tail = Vec::new();
    let mut keep_pending = false;
    let dispatched = match recorded {
        Ok(()) => state.relay.dispatch(server, command, job.run_for, job.hard_deadline, job.queue.is_some()).await,
        Err(why) => Err(refused(why)),
    };
    let r = match dispatched {
        Err(r) => r,
        Ok(mut d) => {
            let first = if d.queued { TargetState::Queued } else { TargetState::Pending };
            let _ = tx.send(te(first, String::new(), None)).await;
            // Queued: give up when the queue time is over unless it was sent by then; sent: see `deadline`.
            let mut wake =
                started + if d.queued { job.queue.unwrap_or(job.run_for) } else { job.run_for } + ANSWER_GRACE;
            let mut cancel_sent = false;
            // Output waiting for room in the caller's stream. Its agent gets the credit back only once it is
            // passed on, so a slow caller slows the command down (flow control) instead of losing output;
            // results, cancel and the deadline are still handled meanwhile.
            let mut held: Option<String> = None;
            loop {
                tokio::select! {
                    r = &mut d.done => {
                        // Events sent before the result are still queued: they go out first (after the audit).
                        tail.extend(held.take().map(CmdEvent::Output));
                        tail.extend(std::iter::from_fn(|| d.events.try_recv().ok()));
                        break r.unwrap_or_else(|_| refused("the hub dropped this command (internal error)"));
                    }
                    Some(ev) = d.events.recv(), if held.is_none() => match ev {
                        CmdEvent::Output(o) => held = Some(o),
                        other => { let _ = tx.send(te_of(other)).await; }
                    },
                    permit = tx.reserve(), if held.is_some() => {
                        let o = held.take().expect("guarded");
                        let len = o.len() as u64;
                        if let Ok(permit) = permit {
                            permit.send(te(TargetState::Running, o, None));
                        } // else the caller went away: the job goes on, its output is not wanted
                        state.relay.passed_on(&id, len).await;
                    }
                    _ = cancel.cancelled(), if !cancel_sent => {
                        cancel_sent = true;
                        if state.shutdown.is_cancelled() {
                            // Not the operator's cancel: the hub is stopping. The command goes on (or stays
                            // queued), its durable pending record stays, and the next start delivers it again
                            // and audits its result.
                            state.relay.abandon(&id);
                            keep_pending = true;
                            let message = "the hub is restarting; the command stays pending: the next hub start delivers it again and audits its result (outpost audit)";
                            break CommandResult { outcome: Outcome::Interrupted as i32, exit_code: -1, message: message.into(), ..Default::default() };
                        }
                        state.relay.cancel(&id).await;
                    }
                    _ = tokio::time::sleep_until(wake.into()) => {
                        match state.relay.deadline(&id) {
                            Some(d) if d + ANSWER_GRACE > Instant::now() => wake = d + ANSWER_GRACE,
                            _ => {
                                let (outcome, message) = match state.relay.abandon(&id) {
                                    Some(true) | None => (Outcome::TimedOut, format!("no result from {server} by the deadline; it may still have run (see the agent's journal)")),
                                    Some(false) => (Outcome::Expired, format!("{server} did not come back within the queue time; nothing was sent")),
                                };
                                break CommandResult { outcome: outcome as i32, exit_code: -1, message, ..Default::default() };
                            }
                        }
                    }
                }
            }
        }
    };
    let mut r = r;
    if r.duration_ms == 0 {
        r.duration_ms = started.elapsed().as_millis() as i64;
    }
    let entry = AuditEntry {
        operator: job.operator.clone(),
        kind: Kind::Result,
        action: job.action.clone(),
        servers: vec![server.to_string()],
        job_id: job.id.clone(),
        command_id: id.clone(),
        outcome: audit::Outcome::from_wire(r.outcome),
        message: r.message.clone(),
        ..Default::default()
    };
    // The result and the end of the durable pending record, in one write.
    if keep_pending {
        tracing::info!(%server, command_id = %id, "hub stopping: the command stays pending for the next start");
    } else if let Err(error) =
        state.audit.append_with(entry, vec![Op::Del(Tree::Pending, id.as_bytes().to_vec())]).await
    {
        tracing::error!(%error, %server, command_id = %id, "cannot audit a result");
    }
    for ev in tail {
        let _ = tx.send(te_of(ev)).await;
    }
    let _ = tx.send(te(TargetState::Done, String::new(), Some(r.clone()))).await;
    r
}

/// One command of a job: its id, and whether its pending record is on disk (`Err`: why not; then it is
/// not sent).
struct Slot {
    id: String,
    recorded: Result<(), String>,
}

/// Writes the pending records of a batch, durably, before any of it is sent. `Err` is why nothing may be.
async fn record_pending(state: &HubState, job: &Job, batch: &[String], ids: &[String], plan: Op) -> Result<(), String> {
    let now = Instant::now();
    let wall = |at: Instant| outpost_common::now_ms() + at.saturating_duration_since(now).as_millis() as i64;
    let deadline = match (job.queue, job.hard_deadline) {
        (None, hard) => Some(hard.map_or(now + job.run_for, |h| h.min(now + job.run_for))),
        (Some(_), hard) => hard,
    };
    let ops = batch
        .iter()
        .zip(ids)
        .map(|(server, id)| {
            let r = PendingRecord {
                server: server.clone(),
                job_id: job.id.clone(),
                action: job.action.clone(),
                args: job.args.clone(),
                operator: job.operator.clone(),
                run_for_ms: job.run_for.as_millis() as u64,
                deadline_ms: deadline.map(wall),
                queue_until_ms: job.queue.map(|q| wall(now + q)),
            };
            Op::put_json(Tree::Pending, id.as_bytes().to_vec(), &r)
        })
        .chain([plan])
        .collect();
    state.store.commit(ops).await.map_err(|e| {
        tracing::error!(error = %e, job = %job.id, "cannot record dispatched commands");
        format!("the hub cannot record the command durably ({e}); nothing was sent")
    })
}

/// After a restart: every command dispatched and not answered before the hub stopped is delivered again
/// (the agent's journal answers one it already ran; one it never got runs if its time has not passed), and
/// its result audited, as it would have been. Then the rest of a fan-out job (its stored plan) runs, unless
/// the outcomes so far are over its failure threshold. Returns how many commands were pending.
pub fn recover(state: &Arc<HubState>) -> Result<usize, crate::store::StoreError> {
    let mut by_job: BTreeMap<String, Vec<(String, PendingRecord)>> = BTreeMap::new();
    let mut n = 0;
    for item in state.store.iter_from_start(Tree::Pending) {
        let (k, v) = item?;
        let id = String::from_utf8_lossy(&k).into_owned();
        match serde_json::from_slice::<PendingRecord>(&v) {
            Ok(r) => {
                by_job.entry(r.job_id.clone()).or_default().push((id, r));
                n += 1;
            }
            // Kept, not deleted: it is evidence; everything else is still delivered.
            Err(error) => tracing::error!(command_id = %id, %error, "unreadable pending command; not delivered"),
        }
    }
    let mut plans: BTreeMap<String, PlanRecord> = BTreeMap::new();
    for item in state.store.iter_from_start(Tree::Plans) {
        let (k, v) = item?;
        let id = String::from_utf8_lossy(&k).into_owned();
        match serde_json::from_slice::<PlanRecord>(&v) {
            Ok(p) => {
                by_job.entry(id.clone()).or_default();
                plans.insert(id, p);
            }
            Err(error) => tracing::error!(job = %id, %error, "unreadable job plan; its remaining batches do not run"),
        }
    }
    let now_ms = outpost_common::now_ms();
    let now = Instant::now();
    let at = move |ms: i64| now + Duration::from_millis(ms.saturating_sub(now_ms).max(0) as u64);
    for (job_id, commands) in by_job {
        let cancel = state.shutdown.child_token();
        let plan = plans.remove(&job_id);
        let action = commands.first().map(|(_, r)| r.action.as_str()).or(plan.as_ref().map(|p| p.action.as_str()));
        state.jobs.insert(&job_id, cancel.clone(), action.map_or(Role::Admin, action_role));
        let state = state.clone();
        let span = tracing::info_span!("recovered job", job = %job_id);
        state.tasks.clone().spawn(tracing::Instrument::instrument(
            async move {
                // No caller any more: events go nowhere; results go to the audit log.
                let (tx, _) = mpsc::channel(1);
                let mut running = FuturesUnordered::new();
                for (id, r) in commands {
                    let past = |t: Option<i64>| t.is_some_and(|t| t <= now_ms);
                    if past(r.deadline_ms) || past(r.queue_until_ms) {
                        let message = "its deadline or queue time passed while the hub was down; if it was delivered before, the agent's journal has its outcome";
                        let entry = AuditEntry {
                            operator: r.operator,
                            kind: Kind::Result,
                            action: r.action,
                            servers: vec![r.server],
                            job_id: job_id.clone(),
                            command_id: id.clone(),
                            outcome: audit::Outcome::TimedOut,
                            message: message.into(),
                            ..Default::default()
                        };
                        if let Err(error) = state.audit.append_with(entry, vec![Op::Del(Tree::Pending, id.into_bytes())]).await {
                            tracing::error!(%error, "cannot audit a result");
                        }
                        running.push(Box::pin(async { CommandResult { outcome: Outcome::TimedOut as i32, ..Default::default() } })
                            as std::pin::Pin<Box<dyn std::future::Future<Output = CommandResult> + Send>>);
                        continue;
                    }
                    tracing::info!(command_id = %id, server = %r.server, action = %r.action, "delivering a command pending before the restart");
                    // Wait for the server until the command's queue time (or, sent at once, its deadline) ends.
                    let until = r.queue_until_ms.or(r.deadline_ms).map_or(now, at);
                    let job = Job {
                        id: job_id.clone(),
                        action: r.action,
                        args: r.args,
                        targets: vec![r.server.clone()],
                        batches: vec![1],
                        max_failure_rate: 1.0,
                        run_for: Duration::from_millis(r.run_for_ms),
                        hard_deadline: r.deadline_ms.map(at),
                        queue: Some(until.saturating_duration_since(Instant::now())),
                        operator: r.operator,
                        audit_id: 0,
                        succeeded_before: 0,
                        failed_before: 0,
                    };
                    let (state, tx, cancel) = (state.clone(), tx.clone(), cancel.clone());
                    let slot = Slot { id, recorded: Ok(()) };
                    running.push(Box::pin(async move { target(&state, &job, &r.server, 0, &tx, &cancel, slot).await }));
                }
                let (mut succeeded, mut failed) = (0, 0);
                while let Some(r) = running.next().await {
                    if r.outcome == Outcome::Succeeded as i32 {
                        succeeded += 1;
                    } else {
                        failed += 1;
                    }
                }
                match plan {
                    Some(p) if !state.shutdown.is_cancelled() => {
                        let job = Job {
                            id: job_id.clone(),
                            action: p.action,
                            args: p.args,
                            targets: p.targets,
                            batches: p.batches,
                            max_failure_rate: p.max_failure_rate,
                            run_for: Duration::from_millis(p.run_for_ms),
                            hard_deadline: p.deadline_ms.map(at),
                            queue: p.queue_secs.map(Duration::from_secs),
                            operator: p.operator,
                            audit_id: p.audit_id,
                            succeeded_before: p.succeeded + succeeded,
                            failed_before: p.failed + failed,
                        };
                        tracing::info!(remaining = job.targets.len(), "resuming the remaining batches of a job");
                        // `run` applies the failure threshold to the outcomes so far before each batch.
                        run(state, job, tx, cancel).await;
                    }
                    _ => state.jobs.remove(&job_id),
                }
            },
            span,
        ));
    }
    Ok(n)
}

/// Live jobs, for cancel.
#[derive(Default)]
pub struct Jobs {
    /// Running jobs: their cancel token, and the role their action needs (the role needed to cancel them).
    inner: std::sync::Mutex<HashMap<String, (CancellationToken, Role)>>,
}

/// The role an action needs (admin for an action the catalog does not know).
pub fn action_role(action: &str) -> Role {
    outpost_common::actions::lookup(action).map_or(Role::Admin, |a| a.role)
}

impl Jobs {
    pub fn insert(&self, id: &str, t: CancellationToken, role: Role) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), (t, role));
    }
    pub fn remove(&self, id: &str) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The job's cancel token and the role needed to cancel it.
    pub fn get(&self, id: &str) -> Option<(CancellationToken, Role)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_put_the_canary_first() {
        assert_eq!(plan_batches(50, 10, 5), [5, 10, 10, 10, 10, 5]);
        assert_eq!(plan_batches(3, 10, 0), [3]);
        assert_eq!(plan_batches(2, 10, 5), [2]);
        assert_eq!(plan_batches(0, 10, 0), Vec::<usize>::new());
        assert_eq!(batch_of(&[5, 10, 10], 4), 0);
        assert_eq!(batch_of(&[5, 10, 10], 5), 1);
        assert_eq!(batch_of(&[5, 10, 10], 24), 2);
    }
}
