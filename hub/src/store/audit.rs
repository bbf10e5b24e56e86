//! The append-only audit log.

use async_trait::async_trait;

use super::error::Result;
use super::records::{AuditEntry, AuditQuery};

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
