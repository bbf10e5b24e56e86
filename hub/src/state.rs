//! The hub's shared state: everything a request handler needs, behind one `Arc`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Audit;
use crate::ca::FleetCa;
use crate::config::HubConfig;
use crate::jobs::Jobs;
use crate::limits::{LogLimiter, RateLimiter};
use crate::operators::Operators;
use crate::registry::Registry;
use crate::relay::Relay;
use crate::store::Store;

pub struct HubState {
    pub ca: FleetCa,
    pub store: Store,
    pub registry: Registry,
    pub relay: Relay,
    pub audit: Audit,
    pub jobs: Jobs,
    /// Serials refused at connect. Loaded from the store at start; written through on revoke.
    pub revoked: RwLock<HashSet<String>>,
    /// `https://host:port` that goes into tokens and bundles.
    pub advertise: String,
    pub agent_cert_ttl: Duration,
    pub history_len: u32,
    /// Cancelled on shutdown: every stream ends.
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// Enrollment is rare; serialising it makes "single use" trivially true.
    pub enroll_lock: tokio::sync::Mutex<()>,
    /// One lock per server around read-modify-write of its record (report, renew, token, revoke).
    server_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Repeated failures of one peer are logged once per interval, then summarised.
    pub log_limit: LogLimiter,
    /// Enroll calls per source address.
    pub enroll_limit: RateLimiter,
    /// Longest operator certificate lifetime this hub accepts (and `hubd operator issue` gives).
    pub operator_cert_max_ttl: Duration,
    /// Agents whose stream went away while the hub was sending to them (not an error; counted).
    pub agents_gone: AtomicU64,
    /// Reports refused as invalid (the agent drops them).
    pub reports_refused: AtomicU64,
    /// Operators seen, revoked operator names, their live sessions.
    pub operators: Operators,
}

impl HubState {
    #[allow(clippy::too_many_arguments)] // built once, in one place (lib::start); issue 9 splits it into services
    pub fn new(
        ca: FleetCa,
        store: Store,
        audit: Audit,
        registry: Registry,
        operators: Operators,
        revoked: HashSet<String>,
        advertise: String,
        config: &HubConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> HubState {
        HubState {
            ca,
            store,
            registry,
            relay: Relay::default(),
            audit,
            jobs: Jobs::default(),
            revoked: RwLock::new(revoked),
            advertise,
            agent_cert_ttl: Duration::from_secs(config.agent_cert_ttl_secs),
            history_len: config.history_len,
            shutdown,
            tasks,
            enroll_lock: tokio::sync::Mutex::new(()),
            server_locks: Mutex::new(HashMap::new()),
            log_limit: LogLimiter::default(),
            enroll_limit: RateLimiter::new(config.enroll_rate_per_source, config.enroll_burst_per_source),
            operator_cert_max_ttl: Duration::from_secs(config.operator_cert_max_ttl_secs),
            agents_gone: AtomicU64::new(0),
            reports_refused: AtomicU64::new(0),
            operators,
        }
    }

    pub async fn lock_server(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.server_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(name.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(serial)
    }
}
