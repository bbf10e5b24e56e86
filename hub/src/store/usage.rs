//! Usage rollups.

use async_trait::async_trait;

use super::error::Result;
use super::records::{Resolution, ServerRecord, UsageBucket, UsageCursor};

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
