//! Join tokens and enrollment.

use async_trait::async_trait;

use super::error::Result;
use super::records::{AuditEntry, BurnedToken, ServerRecord, TokenRecord};

/// What a join token's hash refers to.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenState {
    Live(TokenRecord),
    Burned(BurnedToken),
    Unknown,
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
