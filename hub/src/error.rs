//! Hub domain errors, and their one conversion to `tonic::Status`.

use tonic::{Code, Status};

use crate::ca::CsrError;
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
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the hub could not store this: {0}; nothing was changed, retry")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<HubError> for Status {
    fn from(e: HubError) -> Status {
        let code = match &e {
            HubError::TokenUnknown | HubError::TokenExpired { .. } | HubError::TokenUsed { .. } => {
                Code::Unauthenticated
            }
            HubError::Csr(_) | HubError::Invalid(_) => Code::InvalidArgument,
            HubError::Denied(_) => Code::PermissionDenied,
            HubError::NotFound(_) => Code::NotFound,
            HubError::Store(StoreError::Closed) => Code::Unavailable,
            HubError::Store(_) | HubError::Internal(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// RFC 3339 for messages.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}
