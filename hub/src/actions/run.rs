//! Running a job: batches, each durably recorded before it is sent, the failure threshold, and one target
//! followed from dispatch to its audited result with output flow control.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{ANSWER_GRACE, Actions, Events, Job, JobEvent, Progress, TargetEvent, TargetState};
use crate::audit::{self, AuditEntry, Kind};
use crate::command::{Command, CommandResult, Outcome};
use crate::relay::CmdEvent;
use crate::store::StoreError;
use crate::store::{PendingRecord, PlanRecord, PlanUpdate};

#[derive(Default)]
struct Counts {
    succeeded: u32,
    failed: u32,
    running: u32,
    skipped: u32,
}

/// One command of a job: its id, and whether its pending record is on disk (`Err`: why not; then it is
/// not sent).
pub(super) struct Slot {
    pub id: String,
    pub recorded: Result<(), String>,
}

pub(super) fn batch_of(batches: &[usize], index: usize) -> u32 {
    let mut end = 0;
    for (i, b) in batches.iter().enumerate() {
        end += b;
        if index < end {
            return i as u32;
        }
    }
    batches.len().saturating_sub(1) as u32
}

impl Actions {
    /// Runs `job` to its end. The caller may go away; the job and its audit records go on.
    pub(super) async fn run(self: Arc<Self>, job: Job, tx: Events, cancel: CancellationToken) {
        let job = Arc::new(job);
        tx.send(JobEvent::Plan {
            job_id: job.id.clone(),
            action: job.action.clone(),
            targets: job.targets.clone(),
            batches: job.batches.iter().map(|b| *b as u32).collect(),
            audit_id: job.audit_id,
        })
        .await;
        let total = job.targets.len() as u32 + job.succeeded_before + job.failed_before;
        let mut c = Counts { succeeded: job.succeeded_before, failed: job.failed_before, ..Counts::default() };
        let progress = |c: &Counts, finished: bool, stopped: &str| {
            JobEvent::Progress(Progress {
                total,
                succeeded: c.succeeded,
                failed: c.failed,
                running: c.running,
                pending: total - c.succeeded - c.failed - c.running - c.skipped,
                skipped: c.skipped,
                finished,
                stopped: stopped.to_string(),
                waiting: String::new(),
            })
        };
        let stopping = || if self.rt.is_stopping() { "the hub shut down" } else { "cancelled" }.to_string();
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
        let mut paused = self.pause_watch(&job.id);
        // The plan of the batches from `from` (targets from `at`) on, as the store keeps it.
        let plan_from = |at: usize, from: usize, c: &Counts, paused: bool| PlanRecord {
            action: job.action.clone(),
            args: self.sealer.seal_args(&job.action, &job.args),
            operator: job.operator.clone(),
            audit_id: job.audit_id,
            targets: job.targets[at..].to_vec(),
            batches: job.batches[from..].to_vec(),
            max_failure_rate: job.max_failure_rate,
            run_for_ms: job.run_for.as_millis() as u64,
            deadline_ms: job
                .hard_deadline
                .map(|h| outpost_common::now_ms() + h.saturating_duration_since(Instant::now()).as_millis() as i64),
            queue_secs: job.queue.map(|q| q.as_secs()),
            succeeded: c.succeeded,
            failed: c.failed,
            hub: self.hub().to_string(),
            window: job.window.map(|w| w.spec()).unwrap_or_default(),
            paused,
        };
        for (bi, &size) in job.batches.iter().enumerate() {
            let mut held_once = false;
            while stopped.is_empty() && !cancel.is_cancelled() {
                let Some(why) = self.held(&job, &mut paused) else { break };
                if !held_once && bi == 0 {
                    // A job that waits before its first batch has no plan in the store yet: a restart meanwhile
                    // would lose it. Its whole plan goes there now (no command with it).
                    held_once = true;
                    let plan = PlanUpdate::Remaining(Box::new(plan_from(next, bi, &c, *paused.borrow())));
                    if let Err(error) = self.store.dispatch_batch(&job.id, &[], plan).await {
                        tracing::error!(%error, job = %job.id, "cannot record the plan of a waiting job");
                    }
                }
                if let JobEvent::Progress(mut p) = progress(&c, false, "") {
                    p.waiting = why;
                    tx.send(JobEvent::Progress(p)).await;
                }
                self.hold_changed(&job, &cancel, &mut paused).await;
            }
            if cancel.is_cancelled() {
                stopped = stopping();
            }
            if !stopped.is_empty() {
                break;
            }
            let batch = &job.targets[next..next + size];
            next += size;
            c.running = size as u32;
            tx.send(progress(&c, false, "")).await;
            let ids: Vec<String> = batch.iter().map(|_| outpost_common::random_hex::<16>()).collect();
            // What is left after this batch goes to the store with the batch's pending records.
            let plan = if bi + 1 < job.batches.len() {
                PlanUpdate::Remaining(Box::new(plan_from(next, bi + 1, &c, *paused.borrow())))
            } else {
                PlanUpdate::Done
            };
            let recorded = self.record_pending(&job, batch, &ids, plan).await;
            let mut running: FuturesUnordered<_> = batch
                .iter()
                .zip(ids)
                .map(|(server, id)| {
                    let slot = Slot { id, recorded: recorded.clone() };
                    self.target(&job, server, bi as u32, &tx, &cancel, slot)
                })
                .collect();
            // Never await room in `tx` here while `running` is not polled: its targets wait for room in the
            // same queue, and the slots it frees go to the first waiter; a frozen target holding them would
            // keep this send waiting for ever. Progress is cumulative, so a skipped one is sent at the end.
            let mut owed = false;
            while let Some(r) = running.next().await {
                c.running -= 1;
                if r.outcome == Outcome::Succeeded {
                    c.succeeded += 1;
                } else {
                    c.failed += 1;
                }
                owed = !tx.try_send(progress(&c, false, ""));
            }
            if owed {
                tx.send(progress(&c, false, "")).await;
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
            stopped = stopping();
        }
        if self.rt.is_stopping() && next < job.targets.len() {
            // The plan stays in the store: the next start runs the remaining batches.
            let why = "the hub shut down; the remaining batches run when it starts again (see `outpost audit`)";
            tracing::info!(job = %job.id, remaining = job.targets.len() - next, "job paused by shutdown");
            tx.send(progress(&c, true, why)).await;
            self.unregister(&job.id);
            return;
        }
        let skipped = &job.targets[next..];
        if !skipped.is_empty() {
            let why = format!("not run: the job stopped ({stopped})");
            for (i, server) in skipped.iter().enumerate() {
                tx.send(JobEvent::Target(TargetEvent {
                    server: server.clone(),
                    command_id: String::new(),
                    state: TargetState::Done,
                    output: String::new(),
                    result: Some(CommandResult::not_run(Outcome::Skipped, why.clone())),
                    batch: batch_of(&job.batches, next + i),
                }))
                .await;
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
            match self.store.finish_job(&job.id, self.hub(), entry).await {
                Ok(_) => {}
                Err(StoreError::Conflict(why)) => {
                    tracing::warn!(job = %job.id, %why, "skipped targets not audited here")
                }
                Err(error) => tracing::error!(%error, job = %job.id, "cannot audit skipped targets"),
            }
        }
        if !stopped.is_empty() {
            tracing::warn!(job = %job.id, %stopped, "job stopped early");
        }
        tx.send(progress(&c, true, &stopped)).await;
        self.unregister(&job.id);
        tracing::info!(job = %job.id, action = %job.action, succeeded = c.succeeded, failed = c.failed, skipped = c.skipped, "job finished");
    }

    /// One target: dispatch, follow, audit the result.
    pub(super) async fn target(
        &self,
        job: &Job,
        server: &str,
        batch: u32,
        tx: &Events,
        cancel: &CancellationToken,
        slot: Slot,
    ) -> CommandResult {
        let Slot { id, recorded } = slot;
        let te = |state: TargetState, output: String, result: Option<CommandResult>| {
            JobEvent::Target(TargetEvent {
                server: server.to_string(),
                command_id: id.clone(),
                state,
                output,
                result,
                batch,
            })
        };
        let te_of = |ev| match ev {
            CmdEvent::Sent => te(TargetState::Sent, String::new(), None),
            CmdEvent::Started => te(TargetState::Running, String::new(), None),
            CmdEvent::Output(o) => te(TargetState::Running, o, None),
        };
        let command = Command {
            id: id.clone(),
            action: job.action.clone(),
            args: job.args.clone(),
            operator: job.operator.clone(),
        };
        let started = Instant::now();
        let mut tail = Vec::new();
        let mut keep_pending = false;
        let relay = &self.relay;
        let was_recorded = recorded.is_ok();
        let dispatched = match recorded {
            Ok(()) => relay.dispatch(server, command, job.run_for, job.hard_deadline, job.queue.is_some()).await,
            Err(why) => Err(CommandResult::refused(why)),
        };
        let mut r = match dispatched {
            // Not sent because the hub is stopping (it closes the agents' streams first): its durable pending
            // record stays, and the next start delivers it, as for a command the stop interrupted.
            Err(_) if was_recorded && self.rt.is_stopping() => {
                keep_pending = true;
                CommandResult::not_run(
                    Outcome::Interrupted,
                    "the hub is restarting; the command stays pending: the next hub start delivers it (outpost audit)",
                )
            }
            Err(r) => r,
            Ok(mut d) => {
                let first = if d.queued { TargetState::Queued } else { TargetState::Pending };
                tx.send(te(first, String::new(), None)).await;
                // Queued: give up when the queue time is over unless it was sent by then; sent: see `deadline`.
                let mut wake =
                    started + if d.queued { job.queue.unwrap_or(job.run_for) } else { job.run_for } + ANSWER_GRACE;
                let mut cancel_sent = false;
                // Output waiting for room in the caller's stream. Its agent gets the credit back only once it
                // is passed on, so a slow caller slows the command down (flow control) instead of losing
                // output; results, cancel and the deadline are still handled meanwhile.
                let mut held: Option<String> = None;
                loop {
                    tokio::select! {
                        r = &mut d.done => {
                            // Events sent before the result are still queued: they go out first (after the audit).
                            tail.extend(held.take().map(CmdEvent::Output));
                            tail.extend(std::iter::from_fn(|| d.events.try_recv().ok()));
                            break r.unwrap_or_else(|_| CommandResult::refused("the hub dropped this command (internal error)"));
                        }
                        Some(ev) = d.events.recv(), if held.is_none() => match ev {
                            CmdEvent::Output(o) => held = Some(o),
                            other => tx.send(te_of(other)).await,
                        },
                        permit = tx.reserve(), if held.is_some() => {
                            let o = held.take().expect("guarded");
                            let len = o.len() as u64;
                            if let Some(permit) = permit {
                                permit.send(te(TargetState::Running, o, None));
                            } // else the caller went away: the job goes on, its output is not wanted
                            relay.passed_on(&id, len).await;
                        }
                        _ = cancel.cancelled(), if !cancel_sent => {
                            cancel_sent = true;
                            if self.rt.is_stopping() {
                                // Not the operator's cancel: the hub is stopping. The command goes on (or stays
                                // queued), its durable pending record stays, and the next start delivers it
                                // again and audits its result.
                                relay.abandon(&id);
                                keep_pending = true;
                                break CommandResult::not_run(Outcome::Interrupted, "the hub is restarting; the command stays pending: the next hub start delivers it again and audits its result (outpost audit)");
                            }
                            relay.cancel(&id).await;
                        }
                        _ = tokio::time::sleep_until(wake.into()) => {
                            match relay.deadline(&id) {
                                Some(d) if d + ANSWER_GRACE > Instant::now() => wake = d + ANSWER_GRACE,
                                _ => break match relay.abandon(&id) {
                                    Some(true) | None => CommandResult::not_run(Outcome::TimedOut, format!("no result from {server} by the deadline; it may still have run (see the agent's journal)")),
                                    Some(false) => CommandResult::not_run(Outcome::Expired, format!("{server} did not come back within the queue time; nothing was sent")),
                                },
                            }
                        }
                    }
                }
            }
        };
        if r.duration_ms == 0 {
            r.duration_ms = started.elapsed().as_millis() as i64;
        }
        if !keep_pending {
            let outcome =
                serde_json::to_value(r.outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            self.metrics.action_done(&outcome, started.elapsed());
        }
        let entry = AuditEntry {
            operator: job.operator.clone(),
            kind: Kind::Result,
            action: job.action.clone(),
            servers: vec![server.to_string()],
            job_id: job.id.clone(),
            command_id: id.clone(),
            outcome: r.outcome,
            message: r.message.clone(),
            ..Default::default()
        };
        // The result and the end of the durable pending record, in one write.
        if keep_pending {
            tracing::info!(%server, command_id = %id, "hub stopping: the command stays pending for the next start");
        } else {
            match self.store.finish_command(&id, self.hub(), entry).await {
                Ok(_) => {}
                Err(StoreError::Conflict(why)) => {
                    tracing::warn!(%server, command_id = %id, %why, "result not audited here")
                }
                Err(error) => tracing::error!(%error, %server, command_id = %id, "cannot audit a result"),
            }
        }
        for ev in tail {
            tx.send(te_of(ev)).await;
        }
        tx.send(te(TargetState::Done, String::new(), Some(r.clone()))).await;
        r
    }

    /// Writes the pending records of a batch, durably, before any of it is sent. `Err` is why nothing may be.
    async fn record_pending(
        &self,
        job: &Job,
        batch: &[String],
        ids: &[String],
        plan: PlanUpdate,
    ) -> Result<(), String> {
        let now = Instant::now();
        let wall = |at: Instant| outpost_common::now_ms() + at.saturating_duration_since(now).as_millis() as i64;
        let deadline = match (job.queue, job.hard_deadline) {
            (None, hard) => Some(hard.map_or(now + job.run_for, |h| h.min(now + job.run_for))),
            (Some(_), hard) => hard,
        };
        let args = self.sealer.seal_args(&job.action, &job.args);
        let records: Vec<(String, PendingRecord)> = batch
            .iter()
            .zip(ids)
            .map(|(server, id)| {
                let r = PendingRecord {
                    server: server.clone(),
                    job_id: job.id.clone(),
                    action: job.action.clone(),
                    args: args.clone(),
                    operator: job.operator.clone(),
                    run_for_ms: job.run_for.as_millis() as u64,
                    deadline_ms: deadline.map(wall),
                    queue_until_ms: job.queue.map(|q: Duration| wall(now + q)),
                    hub: self.hub().to_string(),
                };
                (id.clone(), r)
            })
            .collect();
        self.store.dispatch_batch(&job.id, &records, plan).await.map_err(|e| {
            tracing::error!(error = %e, job = %job.id, "cannot record dispatched commands");
            format!("the hub cannot record the command durably ({e}); nothing was sent")
        })
    }
}
