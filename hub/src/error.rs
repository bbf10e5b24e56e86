//! Hub domain errors. The operator and agent APIs turn them into gRPC statuses in one place
//! (`api::error`); nothing else in the hub builds a status.

use crate::pki::ca::CsrError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("join token not recognised: this hub never issued it; create one with `hubd token create --server NAME`")]
    TokenUnknown,
    #[error("join token expired at {at}; create a new one with `hubd token create --server {server}`")]
    TokenExpired { at: String, server: String },
    #[error(
        "join token was already used at {at} by agent {agent_id}; tokens are single-use: create a new one with `hubd token create --server {server}`"
    )]
    TokenUsed { at: String, agent_id: String, server: String },
    #[error("invalid CSR: {0}")]
    Csr(#[from] CsrError),
    /// The request is malformed or out of bounds.
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (role, revoked identity, ownership).
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    /// A limit of the hub is reached right now; retrying later may work.
    #[error("{0}")]
    Busy(String),
    /// The request is well-formed but its precondition does not hold (a destructive action not confirmed).
    #[error("{0}")]
    Unconfirmed(String),
    #[error("the hub could not store this: {0}; nothing was changed, retry")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}
