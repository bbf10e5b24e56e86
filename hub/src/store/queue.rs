//! The durable lifecycle job queue and its rules.

use async_trait::async_trait;

use super::error::{Result, StoreError};
use super::records::{AuditEntry, JobState, QueuedJob};

/// What submitting a job did.
#[derive(Clone, Debug, PartialEq)]
pub enum Submitted {
    /// A new job, with its id.
    New(QueuedJob),
    /// The idempotency key was used before with the same parameters: that job.
    Existing(QueuedJob),
}

/// The durable job queue (provisioning and the server lifecycle). Claiming is atomic: one job is held by
/// one worker at a time, by its lease; every update checks the lease, so a worker that lost it (it stalled
/// and another took the job up) cannot overwrite the job.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Stores `job` as pending with the next id. A job with the same idempotency key is returned instead
    /// when its kind and parameters are the same, and refused ([`StoreError::Conflict`]) when not.
    async fn submit_job(&self, job: QueuedJob, audit: AuditEntry) -> Result<Submitted>;
    /// Takes the job that should run next at `now_ms`: a pending one whose time has come, or a running one
    /// whose lease ran out; highest priority first, then the oldest. It becomes running, held by `owner`
    /// until `now_ms + lease_ms`, with its attempt counted.
    async fn claim_job(&self, owner: &str, now_ms: i64, lease_ms: i64) -> Result<Option<QueuedJob>>;
    /// Replaces the job held by `owner` (steps, facts, lease, state) and appends `audit` in the same write.
    /// A job no longer held by `owner` is refused ([`StoreError::Conflict`]) and nothing is written.
    async fn update_job(&self, job: &QueuedJob, owner: &str, audit: Option<AuditEntry>) -> Result<()>;
    /// Cancels a pending job at once; marks a running one `cancel_requested` (its worker stops at the next
    /// step). Returns the job as it now is, `None` when there is no such job.
    async fn cancel_job(&self, id: u64, audit: AuditEntry) -> Result<Option<QueuedJob>>;
    async fn job(&self, id: u64) -> Result<Option<QueuedJob>>;
    /// Every job, newest first, at most `limit` (0: all).
    async fn jobs(&self, limit: usize) -> Result<Vec<QueuedJob>>;
    /// Deletes final jobs that finished before `cutoff_ms` (and their idempotency keys). Returns how many.
    async fn trim_jobs(&self, cutoff_ms: i64) -> Result<usize>;
}

/// The queue's rules, the same in every backend; a backend applies them inside its serialised write.
pub(crate) mod queue_rules {
    use super::{JobState, QueuedJob, Result, StoreError, Submitted};

    /// A submitted job whose idempotency key names `existing`: that job when it is the same request,
    /// refused when not.
    pub fn reused_key(existing: QueuedJob, job: &QueuedJob) -> Result<Submitted> {
        if existing.kind != job.kind || existing.params != job.params {
            return Err(StoreError::Conflict(format!(
                "idempotency key {:?} was used by job {} ({} {}) with other parameters; use a new key for a new request",
                job.idempotency_key,
                existing.id,
                existing.kind.as_str(),
                existing.target
            )));
        }
        Ok(Submitted::Existing(existing))
    }

    /// Of the open jobs, the one to run next at `now_ms` (pending and due, or running with its lease run
    /// out; highest priority, then oldest), claimed by `owner` for `lease_ms`.
    pub fn claim(
        open: impl IntoIterator<Item = QueuedJob>,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Option<QueuedJob> {
        let ready = |j: &QueuedJob| match j.state {
            JobState::Pending => j.not_before_ms <= now_ms,
            JobState::Running => j.lease_until_ms < now_ms,
            _ => false,
        };
        let rank = |j: &QueuedJob| (j.priority, -j.created_ms, -(j.id as i64));
        let mut job = open.into_iter().filter(ready).max_by_key(rank)?;
        job.state = JobState::Running;
        job.attempt += 1;
        job.lease_owner = owner.to_string();
        job.lease_until_ms = now_ms + lease_ms;
        job.updated_ms = now_ms;
        Some(job)
    }

    /// `job` as its holder `owner` writes it over `stored`: refused when `owner` does not hold it any more;
    /// a cancel that came in while it held the job is kept.
    pub fn update(stored: Option<QueuedJob>, job: &QueuedJob, owner: &str) -> Result<QueuedJob> {
        let held = stored.as_ref().is_some_and(|s| s.state == JobState::Running && s.lease_owner == owner);
        if !held {
            return Err(StoreError::Conflict(format!(
                "job {} is no longer held by worker {owner} (its lease ran out and it was taken up again, or it ended)",
                job.id
            )));
        }
        let mut job = job.clone();
        job.cancel_requested |= stored.is_some_and(|s| s.cancel_requested);
        Ok(job)
    }

    /// A pending job is cancelled at once, a running one asked to stop; `false` for one that has ended
    /// (nothing to write).
    /// A pending job that never ran ends at once. One that ran and waits for a retry may have left
    /// something (a cloud server, a record and token) its undo must remove: it is asked to stop and made
    /// due now, so the next worker claims it, sees the request and undoes it.
    pub fn cancel(job: &mut QueuedJob, now_ms: i64) -> bool {
        match job.state {
            JobState::Pending if job.attempt > 0 => {
                job.cancel_requested = true;
                job.not_before_ms = 0;
            }
            JobState::Pending => {
                job.state = JobState::Cancelled;
                job.finished_ms = now_ms;
            }
            JobState::Running => job.cancel_requested = true,
            _ => return false,
        }
        job.updated_ms = now_ms;
        true
    }
}
