//! The hub store: repository traits with domain methods, and their backends.
//!
//! Callers say what happened ("this token was burned by this enrollment", "this report was stored") and
//! the backend decides how it is written: which records, in which order, in one atomic and durable write.
//! Crash ordering and single-use are the backend's job, not the caller's. Every method that changes
//! something returns only once the change is durable.
//!
//! Backends: [`sled::SledStore`] (embedded, the default) and [`postgres::PgStore`] (several hubs on one
//! database). Every backend must pass the conformance suite
//! (`conformance`), which is written against these traits only.

pub mod kv;
pub mod postgres;
pub mod records;
pub mod redb;
pub mod sled;

#[cfg(test)]
pub mod conformance;

use async_trait::async_trait;

pub use records::{
    AlertRecord, AuditEntry, AuditQuery, BurnedToken, JobKind, JobState, Kind, OperatorRevocation, Outcome,
    PendingRecord, PlanRecord, QueuedJob, Resolution, Revoked, ScopeUsage, ServerRecord, SilenceRecord, StepRecord,
    TokenRecord, UsageBucket, UsageCounters, UsageCursor,
};

/// History is trimmed once per this many reports of a server (a range delete per report was measurable at
/// 10k reports/s): a server keeps between `keep` and `keep + TRIM_EVERY` points.
pub(crate) const TRIM_EVERY: u64 = 32;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {path}: {error}; is another hubd running on this data_dir?")]
    Open { path: String, error: String },
    #[error("store write failed: {0}")]
    Write(String),
    #[error("store record {key:?} in {table} is corrupt: {error}")]
    Corrupt { table: &'static str, key: String, error: String },
    /// The write lost a race the backend guards against (a token burned by another enrollment).
    #[error("{0}")]
    Conflict(String),
    #[error("the store writer has stopped (the hub is shutting down)")]
    Closed,
    /// The database cannot be reached; nothing was written. Callers answer "store unavailable" and the
    /// writer (an agent, an operator) tries again.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// What a join token's hash refers to.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenState {
    Live(TokenRecord),
    Burned(BurnedToken),
    Unknown,
}

/// Servers: their records (identity, facts, counters).
#[async_trait]
pub trait Servers: Send + Sync {
    async fn servers(&self) -> Result<Vec<ServerRecord>>;
    /// One server's record, as stored now (another hub of the same store may have changed it).
    async fn server(&self, name: &str) -> Result<Option<ServerRecord>>;
    /// The server whose identity is agent `agent_id` now, as stored.
    async fn server_of_agent(&self, agent_id: &str) -> Result<Option<ServerRecord>>;
    /// Replaces (or creates) a record. Its progress (`last_seq`, `reports_received`, `last_seen_ms`,
    /// `last_report_ms`, `first_seen_ms`) only moves forward under one agent identity: a record written
    /// from an older view (another hub of the same store, a second behind) keeps the stored progress where
    /// it is ahead. A new identity (a re-enrollment) starts its own.
    async fn put_server(&self, record: &ServerRecord) -> Result<()>;
    /// Removes a server that never came to be (a failed provision): its record, its unused tokens, its
    /// history, apps state and usage cursor, in one write (its usage buckets stay). Revoked serials and burned tokens stay.
    async fn remove_server(&self, name: &str) -> Result<()>;
}

/// Join tokens and enrollment.
#[async_trait]
pub trait Tokens: Send + Sync {
    async fn token(&self, hash: &str) -> Result<TokenState>;
    /// Stores a new token for `server` and the server's record; every older unused token of that server is
    /// deleted in the same write (one outstanding token per server). Returns how many were deleted.
    async fn issue_token(&self, hash: &str, token: &TokenRecord, server: &ServerRecord) -> Result<usize>;
    /// Burns the token `hash` and stores the enrolled server (and, for a takeover, its audit record) in one
    /// write. A token that is not live any more (burned by a concurrent enrollment) fails with
    /// [`StoreError::Conflict`] and changes nothing: single use holds whatever the callers do.
    async fn enroll(
        &self,
        hash: &str,
        burned: &BurnedToken,
        server: &ServerRecord,
        takeover: Option<AuditEntry>,
    ) -> Result<()>;
    /// Deletes every unused token of `server` (a deprovision); returns how many.
    async fn drop_tokens(&self, server: &str) -> Result<usize>;
}

/// Revoked certificate serials.
#[async_trait]
pub trait Revocations: Send + Sync {
    async fn revoked_serials(&self) -> Result<Vec<String>>;
    /// Marks `serials` revoked and stores the revoked server's record, in one write.
    async fn revoke_identity(&self, server: &ServerRecord, serials: &[String], by: &Revoked) -> Result<()>;
}

/// Health reports: idempotent on `(server, seq)` with the server's high-water mark.
#[async_trait]
pub trait Reports: Send + Sync {
    /// Stores report `seq` of `server` (an encoded `HistoryPoint`) and the server record carrying the new
    /// high-water mark (`server.last_seq == seq`). A crash never leaves the mark ahead of the report. History
    /// per server stays bounded: at least the newest `keep` points are kept, and at most `keep + 64`.
    async fn record_report(&self, server: &ServerRecord, seq: u64, point: Vec<u8>, keep: u32) -> Result<()>;
    /// The stored report `seq` of `server`.
    async fn report(&self, server: &str, seq: u64) -> Result<Option<Vec<u8>>>;
    /// The newest `n` reports of `server`, oldest first.
    async fn history(&self, server: &str, n: usize) -> Result<Vec<Vec<u8>>>;
    /// Stores report `seq` of `server` when it is an apps state (an encoded `AppsState`: only the latest is
    /// kept) with the server record carrying the new high-water mark, in one write.
    async fn record_apps(&self, server: &ServerRecord, seq: u64, apps: Vec<u8>) -> Result<()>;
    /// The latest apps state of `server`.
    async fn apps(&self, server: &str) -> Result<Option<Vec<u8>>>;
}

/// The append-only audit log.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends `entry` with the next id and the current time; returns the id. Ids grow with time and are
    /// never reused, across restarts and retention.
    async fn append_audit(&self, entry: AuditEntry) -> Result<u64>;
    /// Newest first.
    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>>;
    /// Deletes records before `cutoff_ms`, always keeping the newest. Returns how many went.
    async fn trim_audit(&self, cutoff_ms: i64) -> Result<usize>;
}

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
    /// Makes hub `to` the owner of every pending command and plan of hub `from` (a replica that died) and
    /// returns them. Atomic: of several hubs claiming at once, one gets each record.
    async fn claim_commands(&self, from: &str, to: &str) -> Result<Claimed>;
}

/// Revoked operator names.
#[async_trait]
pub trait OperatorStore: Send + Sync {
    async fn operator_revocations(&self) -> Result<Vec<(String, OperatorRevocation)>>;
    async fn revoke_operator(&self, name: &str, revocation: &OperatorRevocation) -> Result<()>;
}

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

/// The refusal of a command or plan that `holder` took over from `hub`.
pub(crate) fn taken_over(what: &str, hub: &str, holder: &str) -> StoreError {
    let hub = if hub.is_empty() { "this hub" } else { hub };
    StoreError::Conflict(format!(
        "{what} was taken over by hub {holder:?} while {hub} could not reach the store; its result is recorded there"
    ))
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

/// Alert silences, and the alerts firing now.
#[async_trait]
pub trait Silences: Send + Sync {
    /// Stores firing alert `key` (`None`: it resolved, forget it). An acknowledgement, once stored, stays
    /// until the alert resolves: a record written without one keeps the stored one (the hub that evaluates
    /// may not have seen an acknowledgement made on another hub of the same store yet).
    async fn put_alert(&self, key: &str, alert: Option<&AlertRecord>) -> Result<()>;
    async fn firing_alerts(&self) -> Result<Vec<(String, AlertRecord)>>;
    /// Stores (or replaces, to expire it early) silence `id`, with its audit record, in one write.
    async fn put_silence(&self, id: &str, silence: &SilenceRecord, audit: AuditEntry) -> Result<()>;
    /// Every silence, expired ones included (callers look at `expires_ms`).
    async fn silences(&self) -> Result<Vec<(String, SilenceRecord)>>;
}

/// Usage rollups: per server a cursor (its counters at the last usage report) and hourly and daily buckets
/// keyed by start time, customer and server.
#[async_trait]
pub trait Usage: Send + Sync {
    async fn usage_cursor(&self, server: &str) -> Result<Option<UsageCursor>>;
    async fn usage_bucket(
        &self,
        res: Resolution,
        start_ms: i64,
        customer: &str,
        server: &str,
    ) -> Result<Option<UsageBucket>>;
    /// Stores `buckets` (resolution, start, bucket; customer and server from the bucket and `server`) and
    /// the cursor in one atomic write, then the server record carrying the new high-water mark.
    async fn record_usage(
        &self,
        server: &ServerRecord,
        cursor: &UsageCursor,
        buckets: &[(Resolution, i64, UsageBucket)],
    ) -> Result<()>;
    /// The buckets at `res` starting in `[from_ms, to_ms)`, of `customer` (every customer when `None`):
    /// (start, server, bucket), oldest first.
    async fn usage_between(
        &self,
        res: Resolution,
        from_ms: i64,
        to_ms: i64,
        customer: Option<&str>,
    ) -> Result<Vec<(i64, String, UsageBucket)>>;
    /// Deletes the buckets at `res` that start before `cutoff_ms`. Returns how many went.
    async fn trim_usage(&self, res: Resolution, cutoff_ms: i64) -> Result<usize>;
}

/// Leases on periodic work that must run on one hub at a time when several share a store.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes or renews lease `name` for `holder` until `now_ms + ttl_ms`. True when `holder` has it now
    /// (it was free, had run out, or was `holder`'s already); false when another holder's is still running.
    async fn hold_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool>;
}

/// What agent identities (enrollment, tokens, renewal, revocation) use.
pub trait IdentityStore: Servers + Tokens + Revocations {}
impl<T: Servers + Tokens + Revocations + ?Sized> IdentityStore for T {}

/// What storing reports uses.
pub trait ReportStore: Servers + Reports + Usage {}
impl<T: Servers + Reports + Usage + ?Sized> ReportStore for T {}

/// A whole hub store: every repository. Services take the narrower trait they use (a `dyn HubStore`
/// coerces to each).
pub trait HubStore:
    IdentityStore + ReportStore + AuditLog + Commands + OperatorStore + Queue + Silences + Leases
{
}

impl<T: IdentityStore + ReportStore + AuditLog + Commands + OperatorStore + Queue + Silences + Leases + ?Sized> HubStore
    for T
{
}
