//! Remote actions on the agent: commands arrive over the hub stream, are checked against the shared catalog
//! and this agent's own allow-lists, journaled, run, and answered with streamed output and one result.
//!
//! Architecture invariant: an action runs at most once per command id. [`journal::Journal::start`] is
//! durable before anything runs; a repeat of a known id is answered from the journal (`done`: the recorded
//! result; `started`: interrupted, because agentd died while it ran) and never runs again.

pub mod apps;
pub mod journal;
mod output;
mod process;
mod system;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_common::actions::Action;
use outpost_proto::v1::{Command, CommandResult, CommandUpdate, Outcome};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::AgentConfig;
use journal::{Entry, Journal};
use output::Credit;
pub use output::Output;

/// Updates waiting for the link; a full queue slows the action's output down (backpressure), never drops a
/// result (results are journaled first and replayed on redelivery).
const UPDATE_QUEUE: usize = 256;

/// Commands running at once on one agent (it shares a small server with K3s).
const MAX_RUNNING: usize = 16;

/// A request to renew the certificate now (from `rotate-cert`), answered with the new serial.
pub type RenewWaiter = oneshot::Sender<Result<String, String>>;

/// The link's side of the runner: what it must send, and renewals it must start.
pub struct RunnerLink {
    pub updates: mpsc::Receiver<CommandUpdate>,
    pub renewals: mpsc::Receiver<RenewWaiter>,
}

#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

struct Running {
    cancel: CancellationToken,
    credit: Arc<Credit>,
}

#[derive(Default)]
struct Commands {
    running: HashMap<String, Running>,
    /// Cancels that arrived before their command was admitted (the hub sends Command then Cancel; admission
    /// runs in its own task, so the cancel can win the race).
    cancelled_early: std::collections::HashSet<String>,
}

struct Inner {
    config: AgentConfig,
    /// The app actions (none when the instance database has no app store, as in some tests).
    apps: Option<Arc<apps::Apps>>,
    journal: Journal,
    updates: mpsc::Sender<CommandUpdate>,
    renew: mpsc::Sender<RenewWaiter>,
    /// One lock for both, so a cancel either finds its command running or is remembered before admission
    /// looks: never lost in between (admission awaits the journal's fsync after registering).
    commands: Mutex<Commands>,
    admission: tokio::sync::Mutex<()>,
    /// The current stream's output window (`Welcome.output_window`).
    window: AtomicUsize,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Cancelled when an update is staged: the agent stops and starts again into it.
    restart: CancellationToken,
}

/// What an action gets to work with.
pub struct Ctx<'a> {
    pub config: &'a AgentConfig,
    pub apps: Option<Arc<apps::Apps>>,
    /// Who asked (from the command), for the app's records.
    pub operator: String,
    pub out: Output,
    pub cancel: CancellationToken,
    pub deadline: Instant,
    renew: mpsc::Sender<RenewWaiter>,
}

pub fn result(outcome: Outcome, exit_code: i32, message: impl Into<String>) -> CommandResult {
    CommandResult { outcome: outcome as i32, exit_code, message: message.into(), ..Default::default() }
}

fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Runner {
    pub fn new(
        config: AgentConfig,
        apps: Option<Arc<apps::Apps>>,
        journal: Journal,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> (Runner, RunnerLink) {
        let (updates, updates_rx) = mpsc::channel(UPDATE_QUEUE);
        let (renew, renewals) = mpsc::channel(4);
        let inner = Inner {
            config,
            apps,
            journal,
            updates,
            renew,
            commands: Mutex::default(),
            admission: tokio::sync::Mutex::new(()),
            window: AtomicUsize::new(0),
            tasks,
            shutdown,
            restart: CancellationToken::new(),
        };
        (Runner { inner: Arc::new(inner) }, RunnerLink { updates: updates_rx, renewals })
    }

    /// Cancelled when the agent must stop and start again (an update was staged).
    pub fn restart_requested(&self) -> CancellationToken {
        self.inner.restart.clone()
    }

    /// Answers `id` now (journaled, then sent): an update's result, given by the agent that runs after it.
    pub async fn conclude(&self, id: &str, r: CommandResult) {
        self.finish(id, String::new(), r).await;
    }

    fn commands(&self) -> std::sync::MutexGuard<'_, Commands> {
        self.inner.commands.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a command from the hub; returns at once. The link must never wait here: it is the only reader
    /// of the update queue the runner writes to.
    pub fn handle(&self, c: Command) {
        let runner = self.clone();
        self.inner.tasks.spawn(async move { runner.admit(c).await });
    }

    /// Journal check, agent rules, journal start, then the run in a task of its own. One command at a time
    /// passes here, so a redelivery racing the first delivery still finds the id running or journaled.
    async fn admit(&self, c: Command) {
        let _admission = self.inner.admission.lock().await;
        let id = c.command_id.clone();
        if !valid_id(&id) {
            tracing::warn!(command_id = %id.chars().take(40).collect::<String>(), "ignoring a command with an ill-formed id");
            return;
        }
        if self.commands().running.contains_key(&id) {
            tracing::info!(command_id = %id, "command redelivered while it runs; its result follows when it ends");
            self.send(CommandUpdate { command_id: id, started: true, ..Default::default() }).await;
            return;
        }
        if crate::update::in_flight(&self.inner.config.data_dir, &id) {
            tracing::info!(command_id = %id, "update redelivered while it is on probation; its result follows when it is committed or rolled back");
            self.send(CommandUpdate { command_id: id, started: true, ..Default::default() }).await;
            return;
        }
        match self.inner.journal.get(&id) {
            Ok(Some(Entry::Done(mut last))) => {
                tracing::info!(command_id = %id, "command redelivered after it ran; answering from the journal");
                if let Some(r) = last.result.as_mut() {
                    r.replayed = true;
                }
                self.send(last).await;
                return;
            }
            Ok(Some(Entry::Started)) => {
                let mut r = result(
                    Outcome::Interrupted,
                    -1,
                    "agentd stopped while this command ran; it was not run again (its effect is unknown: check the server)",
                );
                r.replayed = true;
                self.finish(&id, String::new(), r).await;
                return;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, command_id = %id, "cannot read the command journal; refusing the command");
                let r = result(Outcome::Refused, -1, format!("the agent cannot read its command journal: {error}"));
                self.send(CommandUpdate { command_id: id, result: Some(r), ..Default::default() }).await;
                return;
            }
        }
        let args = c.args.into_iter().collect();
        let action = match Action::parse(&c.action, &args) {
            Ok((a, _)) => a,
            Err(e) => return self.finish(&id, String::new(), result(Outcome::Refused, -1, e.to_string())).await,
        };
        if let Err(why) = system::allowed(&self.inner.config, &action) {
            return self.finish(&id, String::new(), result(Outcome::Refused, -1, why)).await;
        }
        if c.timeout_ms == 0 {
            let r = result(Outcome::Refused, -1, "its deadline passed before it could start");
            return self.finish(&id, String::new(), r).await;
        }
        // Registered before the first await, under the lock `cancel` takes.
        let registered = {
            let mut commands = self.commands();
            let busy = commands.running.len();
            if commands.cancelled_early.remove(&id) {
                Err(result(Outcome::Cancelled, -1, "cancelled by the operator before it started"))
            } else if busy >= MAX_RUNNING {
                Err(result(
                    Outcome::Refused,
                    -1,
                    format!("the agent is busy: {busy} commands are running; try again later"),
                ))
            } else {
                let cancel = self.inner.shutdown.child_token();
                let credit = Arc::new(Credit::new(self.inner.window.load(Ordering::Relaxed)));
                commands.running.insert(id.clone(), Running { cancel: cancel.clone(), credit: credit.clone() });
                Ok((cancel, credit))
            }
        };
        let (cancel, credit) = match registered {
            Ok(registered) => registered,
            Err(r) => return self.finish(&id, String::new(), r).await,
        };
        if let Err(error) = self.inner.journal.start(&id).await {
            self.commands().running.remove(&id);
            tracing::error!(%error, command_id = %id, "cannot journal the command; not running it");
            let r = result(Outcome::Refused, -1, format!("the agent cannot write its command journal: {error}"));
            self.send(CommandUpdate { command_id: id, result: Some(r), ..Default::default() }).await;
            return;
        }
        let deadline = Instant::now() + Duration::from_millis(c.timeout_ms.min(24 * 3600 * 1000));
        tracing::info!(command_id = %id, action = %c.action, operator = %c.operator, timeout_ms = c.timeout_ms, "running command");
        self.send(CommandUpdate { command_id: id.clone(), started: true, ..Default::default() }).await;
        let runner = self.clone();
        let operator = c.operator.clone();
        let span = tracing::info_span!("command", command_id = %id, action = %c.action);
        self.inner.tasks.spawn(
            async move {
                let started = Instant::now();
                let mut ctx = Ctx {
                    config: &runner.inner.config,
                    apps: runner.inner.apps.clone(),
                    operator: operator.clone(),
                    out: Output::new(&id, runner.inner.updates.clone(), credit.clone(), cancel.clone(), deadline, &action),
                    cancel: cancel.clone(),
                    deadline,
                    renew: runner.inner.renew.clone(),
                };
                let mut r = if cancel.is_cancelled() {
                    result(Outcome::Cancelled, -1, "cancelled before it started") // replaced below when stopping
                } else if let Action::AgentUpdate { version, allow_downgrade } = &action {
                    // The download is bounded by the command's deadline and its cancel, however the hub trickles.
                    let staged = tokio::select! {
                        r = crate::update::stage(ctx.config, &id, version, *allow_downgrade, &mut ctx.out) => r,
                        _ = cancel.cancelled() => Err((Outcome::Cancelled, "cancelled before the release was staged; nothing was swapped".into())),
                        _ = tokio::time::sleep_until(deadline.into()) => Err((Outcome::TimedOut, "the deadline passed before the release was staged; nothing was swapped (a new update resumes the download)".into())),
                    };
                    match staged {
                        Ok(crate::update::Staged::Ready(what)) => {
                            // Answered by the agent that runs after the restart (`update::unanswered`).
                            tracing::info!(%what, "restarting into the update");
                            ctx.out.finish().await;
                            runner.flush_updates().await;
                            // Its phases reach the operator before the restart: the hub has passed every byte
                            // of output on once all the credit is back (bounded: output is not worth a stall).
                            let _ = tokio::time::timeout(Duration::from_secs(3), credit.settled()).await;
                            runner.commands().running.remove(&id);
                            runner.inner.restart.cancel();
                            return;
                        }
                        Ok(crate::update::Staged::Current(m)) => result(Outcome::Succeeded, 0, m),
                        Err((outcome, m)) => result(outcome, 1, m),
                    }
                } else {
                    system::execute(&action, &mut ctx).await
                };
                if cancel.is_cancelled() && r.outcome != Outcome::Succeeded as i32 {
                    r = if runner.inner.shutdown.is_cancelled() {
                        result(Outcome::Interrupted, r.exit_code, "agentd is stopping; the command was stopped")
                    } else {
                        result(Outcome::Cancelled, r.exit_code, "cancelled by the operator")
                    };
                }
                r.duration_ms = started.elapsed().as_millis() as i64;
                let (tail, dropped) = ctx.out.finish().await;
                r.output_dropped_bytes = dropped;
                tracing::info!(outcome = ?Outcome::try_from(r.outcome).unwrap_or_default(), message = %r.message, "command ended");
                runner.finish(&id, tail, r).await;
                runner.commands().running.remove(&id);
            }
            .instrument(span),
        );
    }

    /// Stops a running command (it then ends as cancelled). Unknown ids are ignored: it may have ended.
    pub fn cancel(&self, id: &str) {
        let mut commands = self.commands();
        match commands.running.get(id) {
            Some(r) => {
                tracing::info!(command_id = %id, "cancelling command");
                r.cancel.cancel();
            }
            None if valid_id(id) => {
                tracing::debug!(command_id = %id, "cancel for a command not running (yet): remembered");
                let early = &mut commands.cancelled_early;
                if early.len() >= 1024 {
                    early.clear(); // bounded; a stale entry only matters for an id that never arrives
                }
                early.insert(id.to_string());
            }
            None => {}
        }
    }

    /// A new stream to the hub: its output window applies to every command, and starts full.
    pub fn new_stream(&self, output_window: u64) {
        let window = output_window.min(usize::MAX as u64) as usize;
        self.inner.window.store(window, Ordering::Relaxed);
        for r in self.commands().running.values() {
            r.credit.reset(window);
        }
    }

    /// The hub passed `bytes` of `id`'s output on. Unknown ids are ignored: it may have ended.
    pub fn credit(&self, id: &str, bytes: u64) {
        if let Some(r) = self.commands().running.get(id) {
            r.credit.grant(bytes);
        }
    }

    /// Journals the final update, then sends it.
    async fn finish(&self, id: &str, tail: String, r: CommandResult) {
        let last = CommandUpdate { command_id: id.to_string(), output: tail, result: Some(r), started: false };
        if let Err(error) = self.inner.journal.finish(id, &last).await {
            tracing::error!(%error, command_id = %id, "cannot journal the result; a redelivery will report it interrupted");
        }
        // The output was streamed already; the journaled tail is for a replay only.
        self.send(CommandUpdate { output: String::new(), ..last }).await;
    }

    /// Waits (at most 3 s) until the link has taken every queued update.
    async fn flush_updates(&self) {
        let until = Instant::now() + Duration::from_secs(3);
        while self.inner.updates.capacity() < self.inner.updates.max_capacity() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn send(&self, u: CommandUpdate) {
        if self.inner.updates.send(u).await.is_err() {
            tracing::debug!("update dropped: the agent is stopping");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn final_update(link: &mut RunnerLink) -> CommandUpdate {
        loop {
            let u = tokio::time::timeout(Duration::from_secs(30), link.updates.recv()).await.unwrap().unwrap();
            if u.result.is_some() {
                return u;
            }
        }
    }

    /// A runner with exec enabled, its journal in `dir`.
    fn exec_runner(dir: &std::path::Path) -> (Runner, RunnerLink) {
        let db = crate::instance::InstanceDb::open(&dir.join("db")).unwrap();
        let config = AgentConfig { exec_enabled: true, data_dir: dir.into(), ..Default::default() };
        Runner::new(config, None, Journal::open(&db).unwrap(), TaskTracker::new(), CancellationToken::new())
    }

    #[tokio::test]
    async fn a_repeated_command_is_answered_from_the_journal_and_never_runs_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (runner, mut link) = exec_runner(dir.path());
        let counter = dir.path().join("count");
        let script = format!("echo ran >> {}; echo out", counter.display());
        let command = Command {
            command_id: "0123456789abcdef0123456789abcdef".into(),
            action: "exec".into(),
            args: [("argv".to_string(), serde_json::to_string(&["sh", "-c", &script]).unwrap())].into(),
            timeout_ms: 30_000,
            operator: "test".into(),
        };
        runner.handle(command.clone());
        let first = final_update(&mut link).await;
        let r = first.result.unwrap();
        assert_eq!((r.outcome, r.replayed), (Outcome::Succeeded as i32, false), "{r:?}");
        runner.handle(command);
        let again = final_update(&mut link).await;
        let r2 = again.result.unwrap();
        assert_eq!((r2.outcome, r2.replayed, again.output.as_str()), (Outcome::Succeeded as i32, true, "out\n"));
        assert_eq!(std::fs::read_to_string(&counter).unwrap(), "ran\n");
    }

    /// The cancel is sent at every point of admission (sweeping a delay after `handle`): none may be lost,
    /// which one was while admission awaited the journal between its check and its registration.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_racing_admission_is_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (runner, mut link) = exec_runner(dir.path());
        let started = Instant::now();
        for i in 0..60u32 {
            let id = format!("{i:032x}");
            runner.handle(Command {
                command_id: id.clone(),
                action: "exec".into(),
                args: [("argv".to_string(), r#"["sleep","30"]"#.to_string())].into(),
                timeout_ms: 60_000,
                operator: "test".into(),
            });
            for _ in 0..i * 20 {
                tokio::task::yield_now().await;
            }
            runner.cancel(&id);
            let u = final_update(&mut link).await;
            assert_eq!(u.command_id, id);
            let r = u.result.unwrap();
            assert_eq!(r.outcome, Outcome::Cancelled as i32, "cancel after {} yields was lost: {r:?}", i * 20);
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn an_expired_command_or_a_bad_id_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::instance::InstanceDb::open(&dir.path().join("db")).unwrap();
        let (runner, mut link) = Runner::new(
            AgentConfig::default(),
            None,
            Journal::open(&db).unwrap(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let c = Command {
            command_id: "ffffffffffffffffffffffffffffffff".into(),
            action: "diagnostics".into(),
            timeout_ms: 0,
            ..Default::default()
        };
        runner.handle(Command { command_id: "../../etc".into(), ..c.clone() });
        runner.handle(c);
        let u = final_update(&mut link).await;
        assert_eq!(u.command_id, "ffffffffffffffffffffffffffffffff", "the ill-formed id got no answer");
        assert!(u.result.unwrap().message.contains("deadline passed before it could start"));
    }
}
