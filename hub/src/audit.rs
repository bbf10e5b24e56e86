//! The audit log: append-only, in the hub store, queryable by operator, server, action and time.
//!
//! Architecture invariant: every action request and job cancel is written here, durably, before anything
//! is dispatched, and so is every refusal of one (role, arguments, selector, deadline, confirmation).
//! Results are appended as records of their own; no record is ever rewritten. Join tokens and revocations
//! are recorded once they are done. Ids and times are given by the store.

use std::sync::Arc;
use std::time::Duration;

use crate::runtime::Runtime;
pub use crate::store::{AuditEntry, AuditQuery as Query, Kind, Outcome};
use crate::store::{AuditLog, StoreError};

pub struct Audit {
    store: Arc<dyn AuditLog>,
}

impl Audit {
    pub fn new(store: Arc<dyn AuditLog>) -> Audit {
        Audit { store }
    }

    /// Writes `e` (with a fresh id and time) and returns its id once it is on disk.
    pub async fn append(&self, e: AuditEntry) -> Result<u64, StoreError> {
        if e.kind == Kind::Refused {
            tracing::info!(operator = %e.operator, action = %e.action, message = %e.message, "request refused (audited)");
        }
        self.store.append_audit(e).await
    }

    /// Newest first.
    pub async fn query(&self, q: &Query) -> Result<Vec<AuditEntry>, StoreError> {
        self.store.query_audit(q).await
    }

    /// Deletes records older than `retention`, hourly, until shutdown. The newest record always stays, so
    /// ids are never reused.
    pub fn spawn_retention(&self, rt: &Runtime, retention: Duration) {
        let store = self.store.clone();
        rt.every_once("audit retention", Duration::from_secs(3600), move || {
            let store = store.clone();
            async move {
                let cutoff = outpost_common::now_ms() - retention.as_millis() as i64;
                match store.trim_audit(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "audit records past their retention removed"),
                    Err(error) => tracing::error!(%error, "audit retention failed"),
                }
            }
        });
    }
}
