//! The fleet: servers, their identities and their reports.
//!
//! [`Fleet`] holds the live registry and the per-server lock around every read-modify-write of a server
//! record; [`identities::Identities`] enrolls, renews and revokes; [`reports::ReportIntake`] takes reports in and stores health (the store's `Reports` keeps them).
//! The per-server locks assume one hub process (a PostgreSQL store for several hubs must check the record
//! it read is still current when it writes).

pub mod identities;
pub mod registry;
pub mod reports;
pub mod rotation;
pub mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use outpost_common::selector::{Candidate, Selector};

use crate::error::HubError;
use crate::runtime::Runtime;
use crate::store::ServerRecord;
pub use registry::{FleetDelta, Liveness, Registry, ServerView};

pub struct Fleet {
    registry: Registry,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fleet {
    pub fn new(registry: Registry) -> Fleet {
        Fleet { registry, locks: Mutex::default() }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Held around a read-modify-write of `name`'s record (report, renew, token, revoke, enroll).
    pub async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            // Looked up before inserting: a report takes this lock, and the name is not copied for it.
            match locks.get(name) {
                Some(lock) => lock.clone(),
                None => locks.entry(name.to_string()).or_default().clone(),
            }
        };
        lock.lock_owned().await
    }

    /// The record of `name` (take [`Fleet::lock`] first to change it).
    pub fn record(&self, name: &str) -> Result<ServerRecord, HubError> {
        self.registry
            .get(name)
            .map(|v| v.record.clone())
            .ok_or_else(|| HubError::NotFound(format!("server {name} was removed")))
    }

    /// The servers `sel` matches, by name.
    pub fn resolve(&self, sel: &Selector) -> Vec<String> {
        self.registry
            .list()
            .iter()
            .filter(|v| {
                let r = &v.record;
                let label = |k: &str| r.labels.get(k).map(String::as_str);
                sel.matches(&Candidate {
                    name: &r.name,
                    customer: &r.customer,
                    plan: &r.plan,
                    status: Liveness::as_str(v.liveness),
                    label: &label,
                })
            })
            .map(|v| v.record.name.clone())
            .collect()
    }

    /// Moves servers whose grace passed to lost, on a timer, until shutdown.
    pub fn spawn_sweeper(self: &Arc<Self>, rt: &Runtime) {
        let fleet = self.clone();
        let limit = rt.clone();
        rt.every("liveness sweeper", self.registry.sweep_every(), move || {
            fleet.registry.sweep();
            limit.log_limit().flush();
            async {}
        });
    }
}
