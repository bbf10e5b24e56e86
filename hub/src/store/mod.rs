//! The hub store: repository traits with domain methods, and their backends.
//!
//! Callers say what happened ("this token was burned by this enrollment", "this report was stored") and
//! the backend decides how it is written: which records, in which order, in one atomic and durable write.
//! Crash ordering and single-use are the backend's job, not the caller's. Every method that changes
//! something returns only once the change is durable.
//!
//! Backends: the embedded store ([`kv::KvStore`] over redb, the default, or sled) and [`postgres::PgStore`]
//! (several hubs on one database), each mirroring this layout: one module per repository trait. Every
//! backend must pass the conformance suite (`conformance`), which is written against these traits only.

pub mod audit;
pub mod commands;
pub mod error;
pub mod kv;
pub mod leases;
pub mod operators;
pub mod postgres;
pub mod queue;
pub mod records;
pub mod redb;
pub mod reports;
pub mod revocations;
pub mod servers;
pub mod silences;
pub mod sled;
pub mod tokens;
pub mod usage;

#[cfg(test)]
pub mod conformance;

pub use audit::AuditLog;
pub(crate) use commands::taken_over;
pub use commands::{Claimed, Commands, PlanUpdate};
pub use error::{Result, StoreError};
pub use leases::{Leases, Snapshot};
pub use operators::OperatorStore;
pub(crate) use queue::queue_rules;
pub use queue::{Queue, Submitted};
pub use reports::Reports;
pub(crate) use reports::TRIM_EVERY;
pub use revocations::Revocations;
pub use servers::Servers;
pub use silences::Silences;
pub use tokens::{TokenState, Tokens};
pub use usage::Usage;

pub use records::{
    AlertRecord, AuditEntry, AuditQuery, BurnedToken, JobKind, JobState, Kind, OperatorRevocation, Outcome,
    PendingRecord, PlanRecord, QueuedJob, Resolution, Revoked, ScopeUsage, ServerRecord, SilenceRecord, StepRecord,
    TokenRecord, UsageBucket, UsageCounters, UsageCursor,
};

/// What agent identities (enrollment, tokens, renewal, revocation) use.
pub trait IdentityStore: Servers + Tokens + Revocations {}
impl<T: Servers + Tokens + Revocations + ?Sized> IdentityStore for T {}

/// What storing reports uses.
pub trait ReportStore: Servers + Reports + Usage {}
impl<T: Servers + Reports + Usage + ?Sized> ReportStore for T {}

/// A whole hub store: every repository. Services take the narrower trait they use (a `dyn HubStore`
/// coerces to each).
pub trait HubStore:
    IdentityStore + ReportStore + AuditLog + Commands + OperatorStore + Queue + Silences + Leases + Snapshot
{
}

impl<
    T: IdentityStore + ReportStore + AuditLog + Commands + OperatorStore + Queue + Silences + Leases + Snapshot + ?Sized,
> HubStore for T
{
}
