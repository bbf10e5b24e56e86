//! Why a store method failed.

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store in {path}: {error}; is another hubd running on this data_dir?")]
    Open { path: String, error: String },
    #[error("store write failed: {0}")]
    Write(String),
    #[error("store record {key:?} in {table} is corrupt: {error}")]
    Corrupt { table: &'static str, key: String, error: String },
    /// The write lost a race the backend guards against (a token burned by another enrollment).
    #[error("{0}")]
    Conflict(String),
    #[error("the store writer has stopped (the hub is shutting down)")]
    Closed,
    /// The database cannot be reached; nothing was written. Callers answer "store unavailable" and the
    /// writer (an agent, an operator) tries again.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}
