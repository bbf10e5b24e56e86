//! What every long-running part of the hub shares: the task tracker shutdown waits on, the shutdown token,
//! and the limiter for repeated log lines. Parts spawn through [`Runtime::spawn`] and stop when
//! [`Runtime::stopping`] is cancelled.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::LogLimiter;

#[derive(Clone)]
pub struct Runtime {
    tasks: TaskTracker,
    shutdown: CancellationToken,
    log_limit: Arc<LogLimiter>,
}

impl Runtime {
    pub fn new(shutdown: CancellationToken) -> Runtime {
        Runtime { tasks: TaskTracker::new(), shutdown, log_limit: Arc::default() }
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
