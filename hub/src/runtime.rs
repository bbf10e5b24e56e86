//! What every long-running part of the hub shares: the task tracker shutdown waits on, the shutdown token,
//! and the limiter for repeated log lines. Parts spawn through [`Runtime::spawn`] and stop when
//! [`Runtime::stopping`] is cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::LogLimiter;
use crate::store::Leases;

#[derive(Clone)]
pub struct Runtime {
    tasks: TaskTracker,
    shutdown: CancellationToken,
    log_limit: Arc<LogLimiter>,
    /// Where [`Runtime::every_once`] takes its leases, and as whom (set when hubs share a store).
    leases: Arc<std::sync::OnceLock<(Arc<dyn Leases>, String)>>,
}

impl Runtime {
    pub fn new(shutdown: CancellationToken) -> Runtime {
        Runtime { tasks: TaskTracker::new(), shutdown, log_limit: Arc::default(), leases: Arc::default() }
    }

    /// Hubs share `leases` (several on one store): work started with [`Runtime::every_once`] runs on one
    /// of them at a time, the one holding its lease, as `holder`.
    pub fn share_leases(&self, leases: Arc<dyn Leases>, holder: String) {
        let _ = self.leases.set((leases, holder));
    }

    /// As [`Runtime::every`], for work that must not run on two hubs of one store at once (evaluating
    /// alerts, retention, the orphan check): a tick runs only while this hub holds the lease `what`, which
    /// it keeps by running (a lease runs out three periods after its holder's last tick).
    pub fn every_once<F: FnMut() -> Fut + Send + 'static, Fut: Future<Output = ()> + Send>(
        &self,
        what: &'static str,
        period: Duration,
        mut tick: F,
    ) {
        let leases = self.leases.clone();
        let ttl = (period * 3).max(Duration::from_secs(5)).as_millis() as i64;
        let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.every(what, period, move || {
            let lease = leases.get().cloned();
            let run = async move {
                if let Some((leases, holder)) = lease {
                    match leases.hold_lease(what, &holder, outpost_common::now_ms(), ttl).await {
                        Ok(true) => {}
                        Ok(false) => return None,
                        Err(error) => {
                            tracing::warn!(task = what, %error, "cannot take the lease; not running this time");
                            return None;
                        }
                    }
                }
                Some(())
            };
            let tick_now = tick();
            let held = held.clone();
            async move {
                let ran = match run.await {
                    Some(()) => {
                        tick_now.await;
                        true
                    }
                    None => false,
                };
                if held.swap(ran, std::sync::atomic::Ordering::Relaxed) != ran {
                    tracing::info!(task = what, holds = ran, "this hub's share of periodic work changed");
                }
            }
        });
    }

    /// Spawns a task that shutdown waits for (up to the drain deadline).
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.tasks.spawn(task);
    }

    /// Runs `tick` every `period` until shutdown (the first run is at once).
    pub fn every<F: FnMut() -> Fut + Send + 'static, Fut: Future<Output = ()> + Send>(
        &self,
        what: &'static str,
        period: Duration,
        mut tick: F,
    ) {
        let stop = self.shutdown.clone();
        self.tasks.spawn(async move {
            let mut timer = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = timer.tick() => tick().await,
                }
            }
            tracing::debug!(task = what, "stopped");
        });
    }

    /// Cancelled when the hub shuts down.
    pub fn stopping(&self) -> &CancellationToken {
        &self.shutdown
    }

    pub fn is_stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    pub fn log_limit(&self) -> &LogLimiter {
        &self.log_limit
    }

    /// Stops accepting tasks and waits for the running ones.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}
