//! Revoked operator names.

use async_trait::async_trait;

use super::error::Result;
use super::records::OperatorRevocation;

/// Revoked operator names.
#[async_trait]
pub trait OperatorStore: Send + Sync {
    async fn operator_revocations(&self) -> Result<Vec<(String, OperatorRevocation)>>;
    async fn revoke_operator(&self, name: &str, revocation: &OperatorRevocation) -> Result<()>;
}
