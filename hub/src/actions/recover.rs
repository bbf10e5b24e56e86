//! After a restart: every command dispatched and not answered before the hub stopped is delivered again
//! (the agent's journal answers one it already ran; one it never got runs if its time has not passed), and
//! its result audited, as it would have been. Then the rest of a fan-out (its stored plan) runs, unless the
//! outcomes so far are over its failure threshold. Nobody waits for these jobs: their events go nowhere and
//! the audit log tells their outcome.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use outpost_common::Role;

use super::run::Slot;
use super::{Actions, Events, Job, action_role};
use crate::audit::{self, AuditEntry, Kind};
use crate::command::{CommandResult, Outcome};
use crate::store::{PendingRecord, PlanRecord, StoreError};

type Running = Pin<Box<dyn std::future::Future<Output = CommandResult> + Send>>;

/// How long the remaining batches of a resumed job wait for a server that is not connected (yet). Right
/// after a restart every agent is reconnecting (with jittered backoff), so "offline" means nothing for a
/// while: a job that would have refused an offline server waits this long for it instead.
const RECONNECT_WAIT: Duration = Duration::from_secs(60);

impl Actions {
    /// Resumes what the last run of the hub left: pending commands and the remaining batches of fan-outs.
    /// Returns how many commands were pending.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, StoreError> {
        let mut commands = Vec::new();
        for (id, r) in self.store.pending_commands().await? {
            match r {
                Ok(r) => commands.push((id, r)),
                // Kept, not deleted: it is evidence; everything else is still delivered.
                Err(error) => tracing::error!(command_id = %id, %error, "unreadable pending command; not delivered"),
            }
        }
        let mut plans = Vec::new();
        for (id, p) in self.store.plans().await? {
            match p {
                Ok(p) => plans.push((id, p)),
                Err(error) => {
                    tracing::error!(job = %id, %error, "unreadable job plan; its remaining batches do not run")
                }
            }
        }
        Ok(self.resume_all(commands, plans))
    }

    /// Takes over the pending commands and plans of replica `dead` (hubs sharing a store) and resumes them
    /// as after a restart. Returns how many commands it took.
    pub async fn take_over(self: &Arc<Self>, dead: &str) -> Result<usize, StoreError> {
        let (commands, plans) = self.store.claim_commands(dead, self.hub()).await?;
        if commands.is_empty() && plans.is_empty() {
            return Ok(0);
        }
        tracing::warn!(
            replica = dead,
            commands = commands.len(),
            plans = plans.len(),
            "taking over a dead replica's jobs"
        );
        Ok(self.resume_all(commands, plans))
    }

    /// Resumes `commands` and `plans` by job; returns how many commands.
    fn resume_all(
        self: &Arc<Self>,
        commands: Vec<(String, PendingRecord)>,
        stored: Vec<(String, PlanRecord)>,
    ) -> usize {
        let n = commands.len();
        let mut by_job: BTreeMap<String, Vec<(String, PendingRecord)>> = BTreeMap::new();
        for (id, r) in commands {
            by_job.entry(r.job_id.clone()).or_default().push((id, r));
        }
        let mut plans: BTreeMap<String, PlanRecord> = BTreeMap::new();
        for (id, p) in stored {
            by_job.entry(id.clone()).or_default();
            plans.insert(id, p);
        }
        for (job_id, commands) in by_job {
            let plan = plans.remove(&job_id);
            let action = commands.first().map(|(_, r)| r.action.as_str()).or(plan.as_ref().map(|p| p.action.as_str()));
            let role = action.map_or(Role::Admin, action_role);
            let cancel = self.rt.stopping().child_token();
            self.live().insert(job_id.clone(), (cancel.clone(), role));
            let engine = self.clone();
            let span = tracing::info_span!("recovered job", job = %job_id);
            self.rt.spawn(tracing::Instrument::instrument(engine.resume(job_id, commands, plan, cancel), span));
        }
        n
    }

    async fn resume(
        self: Arc<Self>,
        job_id: String,
        commands: Vec<(String, PendingRecord)>,
        plan: Option<PlanRecord>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let now_ms = outpost_common::now_ms();
        let now = Instant::now();
        let at = move |ms: i64| now + Duration::from_millis(ms.saturating_sub(now_ms).max(0) as u64);
        let nobody = Events(None);
        let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
        for (id, mut r) in commands {
            let past = |t: Option<i64>| t.is_some_and(|t| t <= now_ms);
            let opened = self.sealer.open_args(&r.action, std::mem::take(&mut r.args));
            let sealed_error = opened.as_ref().err().map(|e| format!("its sealed arguments cannot be opened: {e}"));
            r.args = opened.unwrap_or_default();
            if past(r.deadline_ms) || past(r.queue_until_ms) || sealed_error.is_some() {
                let (outcome, message) = match &sealed_error {
                    Some(m) => (audit::Outcome::Failed, m.as_str()),
                    None => (
                        audit::Outcome::TimedOut,
                        "its deadline or queue time passed while the hub was down; if it was delivered before, the agent's journal has its outcome",
                    ),
                };
                let entry = AuditEntry {
                    operator: r.operator,
                    kind: Kind::Result,
                    action: r.action,
                    servers: vec![r.server],
                    job_id: job_id.clone(),
                    command_id: id.clone(),
                    outcome,
                    message: message.into(),
                    ..Default::default()
                };
                if let Err(error) = self.store.finish_command(&id, self.hub(), entry).await {
                    tracing::error!(%error, "cannot audit a result");
                }
                running.push(Box::pin(async { CommandResult::not_run(Outcome::TimedOut, "") }));
                continue;
            }
            tracing::info!(command_id = %id, server = %r.server, action = %r.action, "delivering a command pending before the restart");
            // Wait for the server until the command's queue time (or, sent at once, its deadline) ends.
            let until = r.queue_until_ms.or(r.deadline_ms).map_or(now, at);
            // The command as a one-target job of its own (its batch was already planned and recorded).
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
                window: None,
                succeeded_before: 0,
                failed_before: 0,
            };
            let (engine, tx, cancel) = (self.clone(), nobody.clone(), cancel.clone());
            let slot = Slot { id, recorded: Ok(()) };
            running.push(Box::pin(async move { engine.target(&job, &r.server, 0, &tx, &cancel, slot).await }));
        }
        let (mut succeeded, mut failed) = (0, 0);
        while let Some(r) = running.next().await {
            if r.outcome == Outcome::Succeeded {
                succeeded += 1;
            } else {
                failed += 1;
            }
        }
        let plan = plan.and_then(|mut p| match self.sealer.open_args(&p.action, std::mem::take(&mut p.args)) {
            Ok(args) => Some(PlanRecord { args, ..p }),
            Err(error) => {
                tracing::error!(%error, job = %job_id, "the rest of a fan-out cannot be run: its sealed arguments cannot be opened");
                None
            }
        });
        match plan {
            Some(p) if !self.rt.is_stopping() => {
                let job = Job {
                    id: job_id.clone(),
                    action: p.action,
                    args: p.args,
                    targets: p.targets,
                    batches: p.batches,
                    max_failure_rate: p.max_failure_rate,
                    run_for: Duration::from_millis(p.run_for_ms),
                    hard_deadline: p.deadline_ms.map(at),
                    queue: Some(p.queue_secs.map_or(RECONNECT_WAIT, Duration::from_secs).max(RECONNECT_WAIT)),
                    operator: p.operator,
                    audit_id: p.audit_id,
                    window: p.window.parse().ok(),
                    succeeded_before: p.succeeded + succeeded,
                    failed_before: p.failed + failed,
                };
                if p.paused {
                    self.pause_watch(&job_id);
                    if let Some(tx) = self.pauses().get(&job_id) {
                        tx.send_replace(true);
                    }
                    tracing::info!(job = %job_id, "the job was paused before the restart: it waits to be resumed");
                }
                tracing::info!(remaining = job.targets.len(), "resuming the remaining batches of a job");
                // `run` applies the failure threshold to the outcomes so far before each batch.
                self.run(job, nobody, cancel).await;
            }
            _ => self.unregister(&job_id),
        }
    }
}
