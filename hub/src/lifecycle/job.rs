//! A running lifecycle job as its steps see it: the job context (steps recorded before and after they
//! run, the lease renewed, a cancel request learnt), how a step fails, and the lifecycle's clock. A leaf:
//! the service (`super`) and the steps (`provision`, `ssh`, `timeline`) import it, it imports neither.

use tokio::sync::{Mutex, watch};

use super::cloud;
use crate::store::{HubStore, QueuedJob, StepRecord, StoreError};
use std::sync::Arc;

/// The hub's clock for the lifecycle (schedules, timeouts). Tests of the deprovision timeline move it:
/// with `OUTPOST_TEST_CLOCK_FILE` set, the file holds milliseconds added to the real time.
#[derive(Clone, Default)]
pub struct Clock {
    offset_file: Option<std::path::PathBuf>,
}

impl Clock {
    pub fn from_env() -> Clock {
        Clock { offset_file: std::env::var_os("OUTPOST_TEST_CLOCK_FILE").map(Into::into) }
    }

    pub fn now_ms(&self) -> i64 {
        let offset = self
            .offset_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        outpost_common::now_ms() + offset
    }
}

/// How a job (or a step) did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt later (the kind's maximum permitting).
    #[error("{0}")]
    Retry(String),
    /// Will not get better by retrying.
    #[error("{0}")]
    Fail(String),
    /// An operator cancelled it.
    #[error("cancelled")]
    Cancelled,
    /// Another worker holds the job now (this one stalled past its lease): stop without touching it.
    #[error("another worker holds the job")]
    Lost,
    /// The hub is shutting down: the job goes back to the queue as it is.
    #[error("the hub is stopping")]
    Stopping,
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> JobError {
        match e {
            StoreError::Conflict(_) => JobError::Lost,
            e => JobError::Retry(format!("the hub store: {e}")),
        }
    }
}

impl From<cloud::CloudError> for JobError {
    fn from(e: cloud::CloudError) -> JobError {
        if e.transient() { JobError::Retry(e.to_string()) } else { JobError::Fail(e.to_string()) }
    }
}

/// A running job: the worker's copy, saved (lease renewed) on every change.
pub struct JobCtx {
    pub(super) job: Mutex<QueuedJob>,
    pub(super) owner: String,
    pub(super) store: Arc<dyn HubStore>,
    pub(super) lease_ms: i64,
    pub(super) clock: Clock,
    pub(super) changed: watch::Sender<u64>,
    /// Cancelled when the job's cancel request is seen (at the next lease renewal at the latest): the
    /// running step is dropped wherever it waits (a cloud call, an SSH read), and the job is undone.
    pub(super) cancel: tokio_util::sync::CancellationToken,
}

/// The most of an error text (a cloud's or an SSH server's words, through a step) a job keeps.
const JOB_TEXT_MAX: usize = 2048;

/// `m` bounded and inert for a job's stored step message or error.
pub(super) fn job_text(m: &str) -> String {
    outpost_common::text::for_notifier(m, JOB_TEXT_MAX)
}

impl JobCtx {
    pub async fn snapshot(&self) -> QueuedJob {
        self.job.lock().await.clone()
    }

    pub async fn fact(&self, key: &str) -> Option<String> {
        self.job.lock().await.facts.get(key).cloned()
    }

    /// Stores the job with a renewed lease; learns of a cancel request.
    async fn save_locked(&self, job: &mut QueuedJob) -> Result<(), JobError> {
        let now = self.clock.now_ms();
        job.lease_until_ms = now + self.lease_ms;
        job.updated_ms = now;
        if let Some(stored) = self.store.job(job.id).await? {
            job.cancel_requested |= stored.cancel_requested;
        }
        if job.cancel_requested {
            self.cancel.cancel();
        }
        self.store.update_job(job, &self.owner, None).await?;
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Renews the lease (and learns of a cancel request).
    pub async fn heartbeat(&self) -> Result<(), JobError> {
        let mut job = self.job.lock().await;
        self.save_locked(&mut job).await
    }

    pub async fn set_fact(&self, key: &str, value: impl Into<String>) -> Result<(), JobError> {
        let mut job = self.job.lock().await;
        job.facts.insert(key.to_string(), value.into());
        self.save_locked(&mut job).await
    }

    /// The running step's progress, in words (saved with the lease).
    pub async fn progress(&self, text: impl Into<String>) -> Result<(), JobError> {
        let mut job = self.job.lock().await;
        job.progress = text.into();
        self.save_locked(&mut job).await?;
        if job.cancel_requested { Err(JobError::Cancelled) } else { Ok(()) }
    }

    /// Runs step `name` unless it already ended well (in this attempt or an earlier one). `run` returns what
    /// it did, in words.
    pub async fn step<F, Fut>(&self, name: &str, run: F) -> Result<(), JobError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, JobError>>,
    {
        {
            let mut job = self.job.lock().await;
            if job.done(name) {
                return Ok(());
            }
            if job.cancel_requested {
                return Err(JobError::Cancelled);
            }
            job.steps.push(StepRecord { name: name.into(), started_ms: self.clock.now_ms(), ..Default::default() });
            job.progress.clear();
            self.save_locked(&mut job).await?;
        }
        let result = run().await;
        let mut job = self.job.lock().await;
        let now = self.clock.now_ms();
        if let Some(step) = job.steps.iter_mut().rev().find(|s| s.name == name) {
            step.ended_ms = now;
            match &result {
                Ok(message) => (step.ok, step.message) = (true, message.clone()),
                Err(JobError::Retry(m) | JobError::Fail(m)) => step.message = job_text(m),
                Err(JobError::Cancelled) => step.message = "cancelled".into(),
                Err(JobError::Lost | JobError::Stopping) => return result.map(drop),
            }
        }
        job.progress.clear();
        self.save_locked(&mut job).await?;
        result.map(drop)
    }
}
