//! Servers that create and retire themselves: the durable job queue's workers and the jobs they run
//! (provision; the deprovision timeline: suspend, archive, delete; reactivate).
//!
//! A job is a list of named steps. Each step is recorded in the job (start, end, result) before and after it
//! runs, so a job taken up again (after a retry, or by a worker after a hub crash) skips the steps that ended
//! well and continues where it stopped. Steps that create things look before they create (a cloud server
//! is found by its `outpost-id` label first), so no step repeats a non-idempotent cloud call.
//!
//! Failures: a transient one (the cloud API unavailable or rate limited) retries the job later with
//! exponential backoff and full jitter, up to the kind's maximum attempts; a permanent one (a bad token, a
//! server that never became ready) fails it at once. A provision that fails or is cancelled deletes what it
//! created: the cloud server, the record and its token. Nothing half-created is left behind.

pub mod artifacts;
pub mod cloud;
pub mod config;
pub mod job;
pub mod provision;
pub mod ssh;
pub mod timeline;
pub mod userdata;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Notify, watch};

use crate::actions::Actions;
use crate::error::HubError;
use crate::fleet::Fleet;
use crate::fleet::identities::Identities;
use crate::runtime::Runtime;
use crate::store::{AuditEntry, HubStore, JobKind, JobState, Kind, Outcome, QueuedJob, StoreError, Submitted};
pub use config::{LifecycleConfig, PlanConfig, ProvisionConfig};
use job::job_text;
pub use job::{Clock, JobCtx, JobError};
use provision::Provisioner;

/// Attempts per kind before a job fails for good.
pub fn max_attempts(kind: JobKind) -> u32 {
    match kind {
        JobKind::Provision | JobKind::Reactivate => 5,
        JobKind::EnrollSsh => 3,
        JobKind::Deprovision | JobKind::Archive | JobKind::Delete => 10,
    }
}

/// The queue's counters for the console, the API and (later) the alerts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    pub pending: u64,
    pub running: u64,
    /// Jobs that ended in the last hour, and how many of them failed.
    pub finished_last_hour: u64,
    pub failed_last_hour: u64,
    /// Of those, provisions.
    pub provisions_failed_last_hour: u64,
}

/// The lifecycle service: submits jobs, runs them on workers, answers what the queue holds.
pub struct Lifecycle {
    store: Arc<dyn HubStore>,
    fleet: Arc<Fleet>,
    identities: Arc<Identities>,
    /// Runs actions on agents (stop apps, export, restore).
    actions: Arc<Actions>,
    ssh: ssh::SshEnroll,
    config: LifecycleConfig,
    provisioner: Result<Arc<Provisioner>, String>,
    clock: Clock,
    /// This hub process, as the holder of leases.
    owner: String,
    wake: Notify,
    changed: watch::Sender<u64>,
}

/// A provision as asked.
#[derive(Clone, Debug, Default)]
pub struct ProvisionRequest {
    pub customer: String,
    pub plan: String,
    pub location: String,
    pub name: String,
    pub idempotency_key: String,
}

/// What the lifecycle service is built from.
pub struct LifecycleParts {
    pub store: Arc<dyn HubStore>,
    pub fleet: Arc<Fleet>,
    pub identities: Arc<Identities>,
    /// Runs actions on agents (stop apps, export, restore).
    pub actions: Arc<Actions>,
    pub config: LifecycleConfig,
    pub ssh: ssh::SshEnroll,
    /// `Err(why)` when provisioning is not configured.
    pub provisioner: Result<Arc<Provisioner>, String>,
    pub clock: Clock,
}

impl Lifecycle {
    pub fn new(parts: LifecycleParts) -> Lifecycle {
        let LifecycleParts { store, fleet, identities, actions, config, ssh, provisioner, clock } = parts;
        let owner = format!("hub-{}", outpost_common::random_hex::<6>());
        Lifecycle {
            store,
            fleet,
            identities,
            actions,
            ssh,
            config,
            provisioner,
            clock,
            owner,
            wake: Notify::new(),
            changed: watch::channel(0).0,
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Bumped on every change of any job (for watchers).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn provisioner(&self) -> Result<&Arc<Provisioner>, HubError> {
        self.provisioner.as_ref().map_err(|why| HubError::Invalid(format!("provisioning is not configured: {why}")))
    }

    /// Validates and queues a provision. The same idempotency key returns the job it created.
    pub async fn provision(&self, req: ProvisionRequest, by: &str) -> Result<(QueuedJob, bool), HubError> {
        self.provision_for(req, by, None).await
    }

    /// A provision, for job `within` (a reactivation) when it comes from one: that job does not block it.
    async fn provision_for(
        &self,
        req: ProvisionRequest,
        by: &str,
        within: Option<u64>,
    ) -> Result<(QueuedJob, bool), HubError> {
        let prov = self.provisioner()?;
        let name = if req.name.is_empty() { req.customer.clone() } else { req.name.clone() };
        let plan = prov.check(&req.customer, &req.plan, &req.location, &name)?;
        let location = if req.location.is_empty() { plan.locations[0].clone() } else { req.location.clone() };
        let params: BTreeMap<String, String> = [
            ("customer".to_string(), req.customer.clone()),
            ("plan".to_string(), req.plan.clone()),
            ("location".to_string(), location),
            ("name".to_string(), name.clone()),
        ]
        .into();
        let key = if req.idempotency_key.is_empty() {
            format!("provision/{}", outpost_common::random_hex::<8>())
        } else {
            req.idempotency_key.clone()
        };
        if key.len() > 128 || !outpost_common::text::is_printable(&key) {
            return Err(HubError::Invalid("idempotency key: at most 128 printable characters".into()));
        }
        // One scan: a repeated key returns its job (the store decides); otherwise the name must be free.
        let jobs = self.store.jobs(0).await?;
        if !jobs.iter().any(|j| j.idempotency_key == key) {
            if self.fleet.registry().get(&name).is_some() {
                return Err(HubError::Invalid(format!(
                    "a server named {name} exists already; pick another with --name, or deprovision it first"
                )));
            }
            let open = jobs.into_iter().find(|j| j.target == name && !j.state.is_final() && Some(j.id) != within);
            if let Some(j) = open {
                return Err(HubError::Invalid(format!(
                    "job {} ({}) for {name} is still {}; wait for it or cancel it (`outpost lifecycle cancel {}`)",
                    j.id,
                    j.kind.as_str(),
                    j.state.as_str(),
                    j.id
                )));
            }
        }
        let now = self.clock.now_ms();
        let job = QueuedJob {
            kind: JobKind::Provision,
            priority: plan.priority,
            idempotency_key: key,
            params,
            target: name.clone(),
            customer: req.customer.clone(),
            submitted_by: by.into(),
            created_ms: now,
            updated_ms: now,
            max_attempts: max_attempts(JobKind::Provision),
            ..Default::default()
        };
        self.submit(job, by).await
    }

    async fn open_job_for(&self, target: &str) -> Result<Option<QueuedJob>, HubError> {
        Ok(self.store.jobs(0).await?.into_iter().find(|j| j.target == target && !j.state.is_final()))
    }

    async fn submit(&self, job: QueuedJob, by: &str) -> Result<(QueuedJob, bool), HubError> {
        let audit = AuditEntry {
            operator: by.into(),
            role: "admin".into(),
            kind: Kind::Job,
            action: job.kind.as_str().into(),
            args: job.params.clone(),
            servers: vec![job.target.clone()],
            message: format!("queued for {}", job.target),
            ..Default::default()
        };
        let (job, new) = match self.store.submit_job(job, audit).await {
            Ok(Submitted::New(j)) => (j, true),
            Ok(Submitted::Existing(j)) => (j, false),
            Err(StoreError::Conflict(m)) => return Err(HubError::Invalid(m)),
            Err(e) => return Err(e.into()),
        };
        if new {
            tracing::info!(job = job.id, kind = job.kind.as_str(), target = %job.target, by, "job queued");
            self.changed.send_modify(|v| *v += 1);
            self.wake.notify_waiters();
        }
        Ok((job, new))
    }

    pub async fn job(&self, id: u64) -> Result<QueuedJob, HubError> {
        self.store.job(id).await?.ok_or_else(|| HubError::NotFound(format!("no job {id}")))
    }

    pub async fn jobs(&self, limit: usize) -> Result<Vec<QueuedJob>, HubError> {
        Ok(self.store.jobs(limit).await?)
    }

    pub async fn cancel(&self, id: u64, by: &str) -> Result<QueuedJob, HubError> {
        let audit = AuditEntry {
            operator: by.into(),
            role: "admin".into(),
            kind: Kind::Cancel,
            action: "job".into(),
            job_id: id.to_string(),
            message: format!("cancel job {id}"),
            ..Default::default()
        };
        let job = self.store.cancel_job(id, audit).await?.ok_or_else(|| HubError::NotFound(format!("no job {id}")))?;
        self.changed.send_modify(|v| *v += 1);
        // A job that ran and waits for a retry is made due to be undone: a worker takes it now.
        self.wake.notify_waiters();
        Ok(job)
    }

    pub async fn stats(&self) -> Result<QueueStats, HubError> {
        let hour_ago = self.clock.now_ms() - 3_600_000;
        let mut s = QueueStats::default();
        for j in self.store.jobs(0).await? {
            match j.state {
                JobState::Pending => s.pending += 1,
                JobState::Running => s.running += 1,
                _ if j.finished_ms >= hour_ago => {
                    s.finished_last_hour += 1;
                    s.failed_last_hour += u64::from(j.state == JobState::Failed);
                    s.provisions_failed_last_hour +=
                        u64::from(j.state == JobState::Failed && j.kind == JobKind::Provision);
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// Starts the workers (and the provisioner's reaper).
    pub fn spawn(self: &Arc<Self>, rt: &Runtime) {
        for _ in 0..self.config.workers {
            let me = self.clone();
            let stop = rt.stopping().clone();
            rt.spawn(async move {
                loop {
                    me.drain(&stop).await;
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = me.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            });
        }
        if let Ok(p) = &self.provisioner {
            p.spawn_reaper(rt, self.store.clone());
        }
        let (store, clock) = (self.store.clone(), self.clock.clone());
        let keep_ms = i64::from(self.config.job_retention_days) * 86_400_000;
        rt.every_once("job retention", Duration::from_secs(3600), move || {
            let (store, cutoff) = (store.clone(), clock.now_ms() - keep_ms);
            async move {
                match store.trim_jobs(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "ended jobs past their retention deleted"),
                    Err(error) => tracing::warn!(%error, "job retention failed"),
                }
            }
        });
    }

    /// Runs jobs until none is ready.
    async fn drain(&self, stop: &tokio_util::sync::CancellationToken) {
        while !stop.is_cancelled() {
            let lease_ms = (self.config.lease_secs * 1000) as i64;
            let job = match self.store.claim_job(&self.owner, self.clock.now_ms(), lease_ms).await {
                Ok(Some(j)) => j,
                Ok(None) => return,
                Err(error) => {
                    tracing::error!(%error, "cannot claim a job");
                    return;
                }
            };
            tracing::info!(job = job.id, kind = job.kind.as_str(), target = %job.target, attempt = job.attempt, "job started");
            self.changed.send_modify(|v| *v += 1);
            let ctx = Arc::new(JobCtx {
                job: Mutex::new(job),
                owner: self.owner.clone(),
                store: self.store.clone(),
                lease_ms,
                clock: self.clock.clone(),
                changed: self.changed.clone(),
                cancel: tokio_util::sync::CancellationToken::new(),
            });
            // The lease is renewed while the job runs, whatever it waits for.
            let beat = {
                let ctx = ctx.clone();
                let every = Duration::from_millis((lease_ms / 3).max(500) as u64);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        if ctx.heartbeat().await == Err(JobError::Lost) {
                            return;
                        }
                    }
                })
            };
            let result = tokio::select! {
                r = self.run(&ctx) => r,
                () = stop.cancelled() => Err(JobError::Stopping),
                () = ctx.cancel.cancelled() => Err(JobError::Cancelled),
            };
            beat.abort();
            if let Err(error) = self.finish(&ctx, result).await {
                tracing::error!(%error, "cannot record the end of a job");
            }
        }
    }

    async fn run(&self, ctx: &JobCtx) -> Result<String, JobError> {
        let job = ctx.snapshot().await;
        if job.cancel_requested {
            return Err(JobError::Cancelled);
        }
        match job.kind {
            JobKind::Provision => {
                let prov = self.provisioner.as_ref().map_err(|why| JobError::Fail(why.clone()))?;
                prov.run(ctx, &self.identities, &self.fleet).await
            }
            JobKind::Deprovision => self.run_deprovision(ctx).await,
            JobKind::Archive => self.run_archive(ctx).await,
            JobKind::Delete => self.run_delete(ctx).await,
            JobKind::Reactivate => self.run_reactivate(ctx).await,
            JobKind::EnrollSsh => {
                let r = self.run_enroll_ssh(ctx).await;
                if !matches!(r, Err(JobError::Retry(_) | JobError::Lost | JobError::Stopping)) {
                    self.ssh.drop_key(&ctx.snapshot().await.target);
                }
                r
            }
        }
    }

    /// Removes a record that never got an agent (an enroll-ssh that failed), with its token.
    async fn forget_unenrolled(&self, name: &str) -> Result<String, String> {
        let _lock = self.fleet.lock(name).await;
        match self.fleet.registry().get(name) {
            Some(v) if v.record.agent_id.is_empty() => {
                self.store.remove_server(name).await.map_err(|e| e.to_string())?;
                self.fleet.registry().remove(name);
                Ok("removed its record and token".into())
            }
            _ => Ok(String::new()),
        }
    }

    /// Records how the attempt ended: done, retried later, or failed (after cleaning up).
    async fn finish(&self, ctx: &JobCtx, result: Result<String, JobError>) -> Result<(), StoreError> {
        let mut job = ctx.snapshot().await;
        let now = self.clock.now_ms();
        let final_error = match result {
            Err(JobError::Lost) => {
                tracing::warn!(job = job.id, "lost the job's lease; another worker has it");
                return Ok(());
            }
            Err(JobError::Stopping) => {
                // Handed back at once (the attempt not counted): the next hub continues at this step
                // without waiting for the lease to run out.
                job.state = JobState::Pending;
                job.lease_until_ms = 0;
                job.attempt = job.attempt.saturating_sub(1);
                job.not_before_ms = 0;
                ctx.store.update_job(&job, &ctx.owner, None).await?;
                tracing::info!(job = job.id, "hub stopping: job handed back to the queue");
                return Ok(());
            }
            Ok(message) => {
                job.state = JobState::Succeeded;
                job.progress = message;
                job.error.clear();
                None
            }
            Err(JobError::Retry(m)) if job.attempt < job.max_attempts => {
                let wait = outpost_common::backoff::full_jitter(
                    job.attempt.saturating_sub(1),
                    Duration::from_millis(self.config.retry_initial_ms),
                    Duration::from_millis(self.config.retry_max_ms),
                );
                job.state = JobState::Pending;
                job.not_before_ms = now + wait.as_millis() as i64;
                job.error = job_text(&m);
                job.lease_until_ms = 0;
                tracing::warn!(job = job.id, attempt = job.attempt, error = %job.error, retry_in_ms = wait.as_millis() as u64, "job will be retried");
                ctx.store.update_job(&job, &ctx.owner, None).await?;
                self.changed.send_modify(|v| *v += 1);
                return Ok(());
            }
            Err(JobError::Retry(m)) => {
                Some((JobState::Failed, format!("{} (gave up after {} attempts)", job_text(&m), job.attempt)))
            }
            Err(JobError::Fail(m)) => Some((JobState::Failed, job_text(&m))),
            Err(JobError::Cancelled) => Some((JobState::Cancelled, "cancelled by an operator".to_string())),
        };
        if let Some((state, message)) = final_error {
            // Undo what the job created; a cleanup that fails is said in the job, and the reaper finds what
            // was left in the cloud.
            let undone = match (job.kind, &self.provisioner) {
                (JobKind::Provision, Ok(p)) => p.undo(ctx, &self.identities, &self.fleet).await,
                (JobKind::EnrollSsh, _) => self.forget_unenrolled(&job.target).await,
                _ => Ok(String::new()),
            };
            job = ctx.snapshot().await;
            job.state = state;
            job.error = match undone {
                Ok(u) if u.is_empty() => message,
                Ok(u) => format!("{message}; {u}"),
                Err(e) => format!("{message}; cleaning up failed: {e}"),
            };
        }
        job.finished_ms = now;
        job.lease_until_ms = 0;
        let (outcome, message) = match job.state {
            JobState::Succeeded => (Outcome::Succeeded, job.progress.clone()),
            JobState::Cancelled => (Outcome::Cancelled, job.error.clone()),
            _ => (Outcome::Failed, job.error.clone()),
        };
        let audit = AuditEntry {
            operator: job.submitted_by.clone(),
            kind: Kind::Job,
            action: job.kind.as_str().into(),
            servers: vec![job.target.clone()],
            job_id: job.id.to_string(),
            outcome,
            message: message.clone(),
            ..Default::default()
        };
        ctx.store.update_job(&job, &ctx.owner, Some(audit)).await?;
        self.changed.send_modify(|v| *v += 1);
        tracing::info!(job = job.id, kind = job.kind.as_str(), target = %job.target, state = job.state.as_str(), %message, "job ended");
        Ok(())
    }
}
