//! Health reports, idempotent on `(server, seq)` with the server's high-water mark.

use async_trait::async_trait;

use super::error::Result;
use super::records::ServerRecord;

/// History is trimmed once per this many reports of a server (a range delete per report was measurable at
/// 10k reports/s): a server keeps between `keep` and `keep + TRIM_EVERY` points.
pub(crate) const TRIM_EVERY: u64 = 32;

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
