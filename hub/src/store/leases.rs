//! Leases on periodic work.

use async_trait::async_trait;

use super::error::Result;

/// Leases on periodic work that must run on one hub at a time when several share a store.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes or renews lease `name` for `holder` until `now_ms + ttl_ms`. True when `holder` has it now
    /// (it was free, had run out, or was `holder`'s already); false when another holder's is still running.
    async fn hold_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool>;
}

/// A consistent copy of the whole store, for backups.
#[async_trait]
pub trait Snapshot: Send + Sync {
    /// Writes everything committed until now, as of one instant, to a new store file `out` (0600); returns
    /// its size. Writes go on meanwhile.
    async fn snapshot(&self, out: &std::path::Path) -> Result<u64>;
}
