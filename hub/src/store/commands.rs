//! Commands dispatched and not audited yet, and the plans of fan-outs.

use async_trait::async_trait;

use super::error::{Result, StoreError};
use super::records::{AuditEntry, PendingRecord, PlanRecord};

/// What happens to a job's stored plan with a batch.
#[derive(Clone, Debug)]
pub enum PlanUpdate {
    /// More batches follow: these.
    Remaining(Box<PlanRecord>),
    /// This is the last batch.
    Done,
}

/// Pending commands and plans taken over from another hub.
pub type Claimed = (Vec<(String, PendingRecord)>, Vec<(String, PlanRecord)>);

/// Commands dispatched and not audited yet, and the stored plans of fan-outs.
#[async_trait]
pub trait Commands: Send + Sync {
    /// Records a batch of commands (id, record) as pending and the job's plan, in one write, before any of
    /// them is sent.
    async fn dispatch_batch(&self, job_id: &str, batch: &[(String, PendingRecord)], plan: PlanUpdate) -> Result<()>;
    /// Audits a command's result and drops its pending record, in one write, when hub `hub` holds the
    /// record (or there is none). Returns the audit id. A record another hub has taken over (it found `hub`
    /// dead: cut off from the store, say) is refused with [`StoreError::Conflict`] and nothing is written:
    /// the hub holding it delivers the command again and records the result the agent's journal gives it,
    /// so a result is audited once.
    async fn finish_command(&self, command_id: &str, hub: &str, result: AuditEntry) -> Result<u64>;
    /// Audits the targets a job will not run and drops its plan, in one write, when hub `hub` holds the
    /// plan (or there is none); refused as [`Commands::finish_command`] is. Returns the audit id.
    async fn finish_job(&self, job_id: &str, hub: &str, skipped: AuditEntry) -> Result<u64>;
    /// Every pending command; an unreadable one is an `Err` with why (kept as evidence).
    async fn pending_commands(&self) -> Result<Vec<(String, Result<PendingRecord, String>)>>;
    /// Every stored plan, by job id.
    async fn plans(&self) -> Result<Vec<(String, Result<PlanRecord, String>)>>;
    /// Marks job `job_id`'s stored plan paused or not (a restarted hub keeps it so); `false` when it has
    /// none (its last batch is under way).
    async fn set_plan_paused(&self, job_id: &str, paused: bool) -> Result<bool>;
    /// Makes hub `to` the owner of every pending command and plan of hub `from` (a replica that died) and
    /// returns them. Atomic: of several hubs claiming at once, one gets each record.
    async fn claim_commands(&self, from: &str, to: &str) -> Result<Claimed>;
}

/// The refusal of a command or plan that `holder` took over from `hub`.
pub(crate) fn taken_over(what: &str, hub: &str, holder: &str) -> StoreError {
    let hub = if hub.is_empty() { "this hub" } else { hub };
    StoreError::Conflict(format!(
        "{what} was taken over by hub {holder:?} while {hub} could not reach the store; its result is recorded there"
    ))
}
