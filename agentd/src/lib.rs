//! agentd: the Outpost agent on every customer server.
//!
//! It enrolls once ([`identity`]), then keeps one outbound mTLS stream to the hub ([`link`]) over which it
//! sends health reports ([`collect`]) from a durable [`outbox`]. Nothing is acknowledged until the hub has
//! stored it; nothing is deleted until it is acknowledged.

pub mod actions;
pub mod apps;
pub mod cli;
pub mod collect;
pub mod config;
pub mod identity;
pub mod instance;
pub mod k3s;
pub mod link;
pub mod outbox;
pub mod repos;
pub mod update;
pub mod usage;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::AgentConfig;
use identity::AgentIdentity;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Shutdown waits this long for tasks, then stops anyway.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("not enrolled: run `agentd enroll --token TOKEN`, or write a join token to {0}")]
    NotEnrolled(String),
    #[error(transparent)]
    Enroll(#[from] identity::EnrollError),
    #[error("cannot open the instance database in {path}: {error}; is another agentd running on this data_dir?")]
    Store { path: String, error: String },
    #[error("{0}")]
    Collect(String),
    #[error("cannot make the data directory {path} private (0700): {error}")]
    DataDir { path: String, error: std::io::Error },
}

/// Enrolls with the token in `config.token_file` if there is one; deletes the file on success (the token
/// is burned anyway). Returns whether a new identity was saved.
pub async fn try_enroll_from_token_file(config: &AgentConfig) -> bool {
    let Ok(token) = std::fs::read_to_string(&config.token_file) else {
        return false;
    };
    match identity::enroll(token.trim(), config.hub.as_deref())
        .await
        .and_then(|id| id.save(&config.data_dir).map(|()| id))
    {
        Ok(id) => {
            tracing::info!(server = %id.server, agent_id = %id.agent_id, "enrolled from token file");
            if let Err(error) = std::fs::remove_file(&config.token_file) {
                tracing::warn!(%error, path = %config.token_file.display(), "could not delete the used token file");
            }
            true
        }
        Err(error) => {
            tracing::error!(%error, path = %config.token_file.display(), "enrollment from token file failed");
            false
        }
    }
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Stopped,
    /// An update was staged, or the new version failed its probation: start again (`update::restart`).
    Restart,
}

/// Runs the agent until `shutdown`; `probation_until` (unix ms) when this is a new version on trial
/// (`update::launch`).
pub async fn run(
    config: AgentConfig,
    shutdown: CancellationToken,
    probation_until: Option<i64>,
) -> Result<Ended, RunError> {
    let started = std::time::Instant::now();
    if AgentIdentity::load(&config.data_dir)?.is_none() && !try_enroll_from_token_file(&config).await {
        return Err(RunError::NotEnrolled(config.token_file.display().to_string()));
    }
    let store_dir = config.data_dir.join("instance.db");
    outpost_common::private_dir(&config.data_dir)
        .map_err(|error| RunError::DataDir { path: config.data_dir.display().to_string(), error })?;
    let db = update::open_instance(&config.data_dir)
        .await
        .map_err(|e| RunError::Store { path: store_dir.display().to_string(), error: e.to_string() })?;
    let outbox = outbox::Outbox::open(&db, config.outbox_max)
        .map_err(|e| RunError::Store { path: store_dir.display().to_string(), error: e.to_string() })?;
    let journal = actions::journal::Journal::open(&db)
        .map_err(|e| RunError::Store { path: store_dir.display().to_string(), error: e.to_string() })?;
    let mut collector = collect::Collector::new(&config.k3s_unit, &config.systemctl).map_err(RunError::Collect)?;
    let tasks = TaskTracker::new();
    let store_err = |e: String| RunError::Store { path: store_dir.display().to_string(), error: e };
    let sealer = apps::secrets::Sealer::open(&config.data_dir).map_err(|e| store_err(e.to_string()))?;
    let app_store = apps::AppStore::open(&db, sealer).map_err(|e| store_err(e.to_string()))?;
    let (placement_tx, placement) = tokio::sync::watch::channel(actions::apps::Placement::default());
    let app_actions = std::sync::Arc::new(actions::apps::Apps::new(&config, app_store, placement));
    collector = collector.with_cluster(app_actions.cluster_seen());
    let (runner, runner_link) =
        actions::Runner::new(config.clone(), Some(app_actions.clone()), journal, tasks.clone(), shutdown.clone());
    let restart = runner.restart_requested();
    // An update that ended (committed, or rolled back to this version) is answered by the agent that runs.
    if let Some((id, r)) = update::unanswered(&config.data_dir) {
        tracing::info!(command_id = %id, message = %r.message, "answering the update");
        runner.conclude(&id, r).await;
        update::mark_answered(&config.data_dir);
    }
    let (health_seq_tx, health_seq) = tokio::sync::watch::channel(0u64);
    if let Some(until_ms) = probation_until {
        let probation = update::Probation { until_ms, health_seq, acked: outbox.acked() };
        let (dir, runner, restart, stop) = (config.data_dir.clone(), runner.clone(), restart.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = probation.run(&dir, started) => match r {
                    Ok((id, r)) => {
                        tracing::info!(command_id = %id, message = %r.message, "update committed");
                        runner.conclude(&id, r).await;
                        update::mark_answered(&dir);
                    }
                    Err(reason) => {
                        tracing::error!(%reason, "this version failed its probation; the previous one comes back");
                        restart.cancel();
                    }
                },
            }
        });
    }
    let reconcile_stop = shutdown.clone();
    let every = Duration::from_secs(config.reconcile_secs);
    let reconciler = app_actions.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = reconcile_stop.cancelled() => break,
                _ = tick.tick() => { reconciler.reconcile().await; }
            }
        }
    });
    let follow_stop = shutdown.clone();
    let follow_every = Duration::from_secs(config.auto_deploy_secs);
    let follower = app_actions.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(follow_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = follow_stop.cancelled() => break,
                _ = tick.tick() => { follower.auto_deploy().await; }
            }
        }
    });
    // The apps state goes through the outbox like health (exactly once): when it changed, and in full
    // every FULL_APPS_EVERY so the hub's copy never goes stale.
    let apps_stop = shutdown.clone();
    let apps_every = Duration::from_secs(config.apps_report_secs);
    let apps_outbox = outbox.clone();
    let usage_apps = app_actions.clone();
    tasks.spawn(async move {
        const FULL_APPS_EVERY: Duration = Duration::from_secs(600);
        let mut tick = tokio::time::interval(apps_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<(outpost_proto::v1::AppsState, std::time::Instant)> = None;
        loop {
            tokio::select! {
                _ = apps_stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(state) = app_actions.state().await else { continue };
            let due = last.as_ref().is_none_or(|(s, at)| *s != state || at.elapsed() >= FULL_APPS_EVERY);
            if due {
                match apps_outbox.push(outpost_common::now_ms(), state.clone()).await {
                    Ok(seq) => {
                        tracing::debug!(seq, apps = state.apps.len(), "apps state queued");
                        last = Some((state, std::time::Instant::now()));
                    }
                    Err(error) => tracing::error!(%error, "cannot store the apps state"),
                }
            }
        }
    });

    // The certificate's expiry, for the health report: the link publishes it when it connects or renews,
    // so the collector never re-reads the identity file.
    let initial = AgentIdentity::load(&config.data_dir)?.and_then(|i| i.cert().ok()).map_or(0, |c| c.not_after);
    let (cert_tx, cert_rx) = tokio::sync::watch::channel(initial);
    let link = link::Link {
        config: config.clone(),
        outbox: outbox.clone(),
        cert_not_after: cert_tx,
        placement: placement_tx,
        runner,
        runner_link: tokio::sync::Mutex::new(runner_link),
    };
    let link_stop = shutdown.clone();
    tasks.spawn(async move {
        link.run(link_stop).await;
        tracing::info!("hub link stopped");
    });

    // Usage every `usage_interval_secs`, from the newest health sample and the cluster's pods.
    let (health_tx, mut health_rx) = tokio::sync::watch::channel(None::<outpost_proto::v1::Health>);
    let usage_stop = shutdown.clone();
    let usage_outbox = outbox.clone();
    let mut usage = usage::UsageCollector::new(&config);
    let usage_every = Duration::from_secs(config.usage_interval_secs);
    tasks.spawn(async move {
        // The first sample comes one interval after the start (the hub takes it as where the counters
        // start), with a health sample taken by then.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + usage_every, usage_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = usage_stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let health = health_rx.borrow_and_update().clone().unwrap_or_default();
            let (owners, storage) = usage_apps.usage_inputs().await;
            let report = usage.sample(&health, &owners, &storage);
            match usage_outbox.push(outpost_common::now_ms(), report).await {
                Ok(seq) => tracing::debug!(seq, "usage queued"),
                Err(error) => tracing::error!(%error, "cannot store the usage sample"),
            }
        }
    });

    let interval = config.report_interval();
    let collect_stop = shutdown.clone();
    let update_dir = config.data_dir.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; give the CPU counter one interval
        loop {
            tokio::select! {
                _ = collect_stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let not_after = *cert_rx.borrow();
            let mut health = collector.sample(not_after).await;
            health.update = update::status(&update_dir);
            // Shaped by the code the hub checks with: a sample the hub would refuse never enters the outbox.
            outpost_common::report::conform(&mut health);
            health_tx.send_replace(Some(health.clone()));
            match outbox.push(outpost_common::now_ms(), health).await {
                Ok(seq) => {
                    tracing::debug!(seq, "report queued");
                    health_seq_tx.send_replace(seq);
                }
                Err(error) => tracing::error!(%error, "cannot store report"),
            }
        }
        tracing::info!("collector stopped");
    });

    tracing::info!(version = VERSION, "agentd running");
    let ended = tokio::select! {
        _ = shutdown.cancelled() => Ended::Stopped,
        _ = restart.cancelled() => {
            shutdown.cancel();
            Ended::Restart
        }
    };
    tasks.close();
    if tokio::time::timeout(DRAIN_DEADLINE, tasks.wait()).await.is_err() {
        tracing::warn!("tasks did not stop within the drain deadline");
    }
    if let Err(error) = db.flush().await {
        tracing::error!(%error, "final flush failed");
    }
    tracing::info!(?ended, "agentd stopped");
    Ok(ended)
}
