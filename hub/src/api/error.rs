//! Domain errors become gRPC statuses here, and only here.

use tonic::{Code, Status};

use crate::error::HubError;
use crate::store::StoreError;

/// The status of a domain error.
pub fn status(e: HubError) -> Status {
    let code = match &e {
        HubError::TokenUnknown | HubError::TokenExpired { .. } | HubError::TokenUsed { .. } => Code::Unauthenticated,
        HubError::Csr(_) | HubError::Invalid(_) => Code::InvalidArgument,
        HubError::Denied(_) => Code::PermissionDenied,
        HubError::NotFound(_) => Code::NotFound,
        HubError::Busy(_) => Code::ResourceExhausted,
        HubError::Unconfirmed(_) => Code::FailedPrecondition,
        HubError::Store(StoreError::Closed | StoreError::Unavailable(_)) => Code::Unavailable,
        HubError::Store(_) | HubError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

impl From<HubError> for Status {
    fn from(e: HubError) -> Status {
        status(e)
    }
}

/// A store failure seen by the API (a read, or an audit write).
pub fn store(e: StoreError) -> Status {
    status(HubError::Store(e))
}
