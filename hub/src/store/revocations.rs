//! Revoked certificate serials.

use async_trait::async_trait;

use super::error::Result;
use super::records::{Revoked, ServerRecord};

/// Revoked certificate serials.
#[async_trait]
pub trait Revocations: Send + Sync {
    async fn revoked_serials(&self) -> Result<Vec<String>>;
    /// Marks `serials` revoked and stores the revoked server's record, in one write.
    async fn revoke_identity(&self, server: &ServerRecord, serials: &[String], by: &Revoked) -> Result<()>;
}
