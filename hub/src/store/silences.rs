//! Alert silences, and the alerts firing now.

use async_trait::async_trait;

use super::error::Result;
use super::records::{AlertRecord, AuditEntry, SilenceRecord};

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
