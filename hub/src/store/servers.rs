//! Servers: their records (identity, facts, counters).

use async_trait::async_trait;

use super::error::Result;
use super::records::ServerRecord;

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
