//! Action jobs (not the lifecycle jobs of `crate::lifecycle`): one action on the servers a selector matches, in batches (an optional canary first), stopping
//! when the failure rate passes a threshold. Requests are checked and audited here before anything is sent.
//!
//! Everything here is in the domain's terms: a request ([`ActionRequest`]), refusals ([`HubError`]), the
//! events a job produces ([`JobEvent`]). The operator API converts them to and from the wire.

mod recover;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_common::Role;
use outpost_common::actions::{Action, ActionSpec, redacted};
use outpost_common::selector::Selector;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::{self, Audit, AuditEntry, Kind};
use crate::command::CommandResult;
use crate::error::HubError;
use crate::fleet::{Fleet, Liveness};
use crate::relay::Relay;
use crate::runtime::Runtime;
use crate::store::Commands;

/// Targets per batch when the request does not say.
const DEFAULT_BATCH: usize = 10;
const MAX_BATCH: usize = 1000;
/// Server names one selector may list.
const MAX_SELECTOR_NAMES: usize = 10_000;
/// Jobs running at once on one hub.
const MAX_JOBS: usize = 256;
/// Longest a command may wait for an offline server.
const MAX_QUEUE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long past a command's deadline the hub waits for the agent's answer before giving up on it.
const ANSWER_GRACE: Duration = Duration::from_secs(10);

/// Events queued for a job's caller. With output flow control this bounds what a slow caller holds at the
/// hub (at most this many output chunks of up to 16 KiB); beyond it the commands themselves wait.
pub const EVENT_QUEUE: usize = 64;

/// What an operator asks for.
#[derive(Clone, Debug, Default)]
pub struct ActionRequest {
    pub action: String,
    pub args: BTreeMap<String, String>,
    pub selector: Selector,
    /// Targets per batch (0: the default).
    pub batch: u32,
    /// Targets in a first batch of their own (0: none).
    pub canary: u32,
    /// The job stops when more than this share of finished targets failed.
    pub max_failure_rate: f64,
    /// Wall clock (0: the action's default deadline).
    pub deadline_ms: i64,
    /// How long a command waits for an offline server (0: not at all).
    pub queue_secs: u32,
    /// For a destructive action: the server name, or the number of targets.
    pub confirm: String,
    /// A daily maintenance window (`HH:MM-HH:MM`, UTC) a batch must start in; empty: any time.
    pub window: String,
}

/// The caller, as the audit log names it.
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// Cancelled when the caller's operator is revoked: its jobs are cancelled with it (None: the hub's
    /// own jobs).
    pub session: Option<CancellationToken>,
}

/// Where one target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    Pending,
    /// Waiting for an offline server to come back.
    Queued,
    Sent,
    Running,
    Done,
}

/// What a job tells its caller.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    Plan { job_id: String, action: String, targets: Vec<String>, batches: Vec<u32>, audit_id: u64 },
    Progress(Progress),
    Target(TargetEvent),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub total: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub running: u32,
    pub pending: u32,
    pub skipped: u32,
    pub finished: bool,
    /// Why the job stopped early, if it did.
    pub stopped: String,
    /// Why the next batch waits (paused, its window closed), while it does.
    pub waiting: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TargetEvent {
    pub server: String,
    pub command_id: String,
    pub state: TargetState,
    pub output: String,
    pub result: Option<CommandResult>,
    pub batch: u32,
}

/// A request that passed every check.
struct Job {
    id: String,
    action: String,
    args: BTreeMap<String, String>,
    targets: Vec<String>,
    batches: Vec<usize>,
    max_failure_rate: f64,
    run_for: Duration,
    hard_deadline: Option<Instant>,
    queue: Option<Duration>,
    operator: String,
    audit_id: u64,
    window: Option<outpost_common::when::Window>,
    /// Targets that succeeded / failed before this run (a job resumed after a restart): they count towards
    /// the failure threshold.
    succeeded_before: u32,
    failed_before: u32,
}

/// Where a job's events go: its caller, or nowhere (a job resumed after a restart has no caller; the
/// audit log has its outcome).
#[derive(Clone)]
struct Events(Option<mpsc::Sender<JobEvent>>);

impl Events {
    async fn send(&self, e: JobEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(e).await;
        }
    }

    /// Sends without waiting; `false` when there was no room (the caller is slow).
    fn try_send(&self, e: JobEvent) -> bool {
        self.0.as_ref().is_none_or(|tx| !matches!(tx.try_send(e), Err(mpsc::error::TrySendError::Full(_))))
    }

    /// Room for one event: `None` at once when nobody listens any more.
    async fn reserve(&self) -> Option<mpsc::Permit<'_, JobEvent>> {
        match &self.0 {
            Some(tx) => tx.reserve().await.ok(),
            None => None,
        }
    }
}

/// Batch sizes: the canary (if any) first, then `batch` at a time.
fn plan_batches(n: usize, batch: usize, canary: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = n;
    if canary > 0 && left > 0 {
        out.push(canary.min(left));
        left -= canary.min(left);
    }
    while left > 0 {
        out.push(batch.min(left));
        left -= batch.min(left);
    }
    out
}

/// The role an action needs (admin for an action the catalog does not know).
pub fn action_role(action: &str) -> Role {
    outpost_common::actions::lookup(action).map_or(Role::Admin, |a| a.role)
}

/// The job engine: checks, audits, runs and cancels jobs, and resumes them after a restart.
pub struct Actions {
    fleet: Arc<Fleet>,
    relay: Arc<Relay>,
    audit: Arc<Audit>,
    store: Arc<dyn Commands>,
    rt: Runtime,
    /// Running jobs: their cancel token, and the role their action needs (the role needed to cancel them).
    live: Mutex<HashMap<String, (CancellationToken, Role)>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// This hub's replica id when hubs share the store (see `set_hub`).
    hub: std::sync::OnceLock<String>,
    /// Secret-bearing arguments are sealed in the pending and plan records (`crate::seal`).
    sealer: Arc<crate::seal::Sealer>,
    /// Where the agentd releases are (`agent-update` needs its version there).
    releases: std::sync::OnceLock<std::path::PathBuf>,
    /// Running jobs an operator paused (true) or not: a paused job starts no further batch.
    paused: Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>,
}

impl Actions {
    pub fn new(
        fleet: Arc<Fleet>,
        relay: Arc<Relay>,
        audit: Arc<Audit>,
        store: Arc<dyn Commands>,
        rt: Runtime,
        metrics: Arc<crate::metrics::Metrics>,
        sealer: Arc<crate::seal::Sealer>,
    ) -> Actions {
        Actions {
            fleet,
            relay,
            audit,
            store,
            rt,
            live: Mutex::default(),
            metrics,
            hub: Default::default(),
            sealer,
            releases: Default::default(),
            paused: Mutex::default(),
        }
    }

    /// What seals the secrets the hub holds (command arguments here; the lifecycle's archives).
    pub fn sealer(&self) -> &Arc<crate::seal::Sealer> {
        &self.sealer
    }

    /// Hubs share the store: the commands and plans this hub writes carry its replica id, so another
    /// replica can take them over if this one dies.
    pub fn set_hub(&self, id: String) {
        let _ = self.hub.set(id);
    }

    /// Where `agent-update` finds the releases it may roll out.
    pub fn set_releases_dir(&self, dir: std::path::PathBuf) {
        let _ = self.releases.set(dir);
    }

    pub(super) fn hub(&self) -> &str {
        self.hub.get().map_or("", String::as_str)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, (CancellationToken, Role)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a job, unless `MAX_JOBS` run already: the check and the insert are one step.
    fn register(&self, id: &str, role: Role) -> Result<CancellationToken, HubError> {
        let mut live = self.live();
        if live.len() >= MAX_JOBS {
            return Err(HubError::Busy(format!(
                "{MAX_JOBS} jobs are running on this hub; wait for one to finish (or cancel one) and try again"
            )));
        }
        let cancel = self.rt.stopping().child_token();
        live.insert(id.to_string(), (cancel.clone(), role));
        Ok(cancel)
    }

    fn unregister(&self, id: &str) {
        self.live().remove(id);
        self.pauses().remove(id);
    }

    fn pauses(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::sync::watch::Sender<bool>>> {
        self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows whether job `id` is paused.
    fn pause_watch(&self, id: &str) -> tokio::sync::watch::Receiver<bool> {
        self.pauses().entry(id.to_string()).or_insert_with(|| tokio::sync::watch::Sender::new(false)).subscribe()
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.live().len()
    }

    /// Checks a request, audits it (accepted or refused) and starts the job. Returns its events.
    pub async fn submit(
        self: &Arc<Self>,
        caller: &Caller,
        req: ActionRequest,
    ) -> Result<mpsc::Receiver<JobEvent>, HubError> {
        let mut entry = AuditEntry {
            operator: caller.name.clone(),
            role: caller.role.to_string(),
            action: req.action.chars().take(64).collect(),
            // Bounded: a refused request may carry up to a whole message of junk.
            args: redacted(&req.action, &req.args).into_iter().take(32).collect(),
            selector: req.selector.to_string().chars().take(1024).collect(),
            ..Default::default()
        };
        let id = outpost_common::random_hex::<8>();
        let checked = self.check(caller, &req, &mut entry).and_then(|(spec, targets)| {
            let cancel = self.register(&id, spec.role)?;
            Ok((spec, targets, cancel))
        });
        let window = match req.window.trim() {
            "" => None,
            w => w.parse().ok(), // checked in `check`
        };
        let (spec, targets, cancel) = match checked {
            Ok(ok) => ok,
            Err(refusal) => {
                entry.kind = Kind::Refused;
                entry.outcome = audit::Outcome::Refused;
                entry.message = refusal.to_string();
                self.audit.append(entry).await?;
                return Err(refusal);
            }
        };
        let batch = if req.batch == 0 { DEFAULT_BATCH } else { req.batch as usize };
        let now = Instant::now();
        let hard_deadline = (req.deadline_ms > 0)
            .then(|| now + Duration::from_millis((req.deadline_ms - outpost_common::now_ms()).max(0) as u64));
        let run_for = hard_deadline.map_or(spec.default_deadline, |d| (d - now).min(spec.max_deadline));
        entry.kind = Kind::Requested;
        entry.servers = targets.clone();
        entry.job_id = id.clone();
        entry.message = format!("{} target(s), batch {batch}, canary {}", targets.len(), req.canary);
        if let Some(w) = window {
            entry.message.push_str(&format!(", window {w}"));
        }
        // Durable before anything is dispatched.
        let audit_id = match self.audit.append(entry).await {
            Ok(id) => id,
            Err(e) => {
                self.unregister(&id);
                return Err(e.into());
            }
        };
        let job = Job {
            id,
            action: spec.name.to_string(),
            batches: plan_batches(targets.len(), batch, req.canary as usize),
            targets,
            args: req.args,
            max_failure_rate: req.max_failure_rate,
            run_for,
            hard_deadline,
            queue: (req.queue_secs > 0).then(|| Duration::from_secs(u64::from(req.queue_secs))),
            operator: caller.name.clone(),
            audit_id,
            window,
            succeeded_before: 0,
            failed_before: 0,
        };
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let span = tracing::info_span!("job", job = %job.id, action = %job.action, operator = %caller.name);
        tracing::info!(parent: &span, targets = job.targets.len(), "job accepted");
        let engine = self.clone();
        let session = caller.session.clone();
        let run = async move {
            let stop = cancel.clone();
            let run = engine.run(job, Events(Some(tx)), cancel);
            tokio::pin!(run);
            if let Some(session) = session {
                tokio::select! {
                    () = &mut run => return,
                    () = session.cancelled() => {
                        tracing::warn!("the operator was revoked; their job is cancelled");
                        stop.cancel();
                    }
                }
            }
            run.await
        };
        self.rt.spawn(run.instrument(span));
        Ok(rx)
    }

    fn check(
        &self,
        caller: &Caller,
        req: &ActionRequest,
        entry: &mut AuditEntry,
    ) -> Result<(&'static ActionSpec, Vec<String>), HubError> {
        let sel = &req.selector;
        let (action, spec) = Action::parse(&req.action, &req.args).map_err(|e| HubError::Invalid(e.to_string()))?;
        if let Action::AgentUpdate { version, .. } = &action {
            outpost_common::release::Skew::rollout(env!("CARGO_PKG_VERSION"), version).map_err(HubError::Invalid)?;
            let dir = self.releases.get();
            let stored = dir.is_some_and(|d| {
                crate::lifecycle::artifacts::ARCHES.iter().any(|a| d.join(format!("agentd-{version}-{a}")).is_file())
            });
            if !stored {
                return Err(HubError::NotFound(format!(
                    "no agentd {version} is stored on this hub: add it with `hubd release add FILE` (see `hubd release list`)"
                )));
            }
        }
        if caller.role < spec.role {
            return Err(HubError::Denied(format!(
                "operator {} has role {}; {} needs role {} or higher",
                caller.name, caller.role, spec.name, spec.role
            )));
        }
        if sel.is_empty() {
            return Err(HubError::Invalid(
                "the selector is empty: name servers, or use customer:, plan:, label:, status: or all".into(),
            ));
        }
        if let Some(bad) = sel.status.iter().find(|s| s.parse::<Liveness>().is_err()) {
            return Err(HubError::Invalid(format!("selector status {bad} is not one of {}", Liveness::words())));
        }
        if let Some(bad) = sel.names.iter().find(|n| !outpost_common::cert::valid_name(n)) {
            let bad: String = bad.chars().take(64).collect();
            return Err(HubError::Invalid(format!("selector name {bad:?} is not a server name")));
        }
        let text_len = sel.customer.iter().chain(&sel.plan).chain(sel.labels.keys()).chain(sel.labels.values());
        if sel.names.len() > MAX_SELECTOR_NAMES || sel.labels.len() > 64 || text_len.map(String::len).any(|l| l > 256) {
            return Err(HubError::Invalid(format!(
                "the selector is too large: at most {MAX_SELECTOR_NAMES} names, 64 labels, 256 bytes per value"
            )));
        }
        if req.deadline_ms != 0 && req.deadline_ms <= outpost_common::now_ms() {
            return Err(HubError::Invalid(format!(
                "the deadline {} is in the past; give a future time (or none for the action's default of {} s)",
                outpost_common::when::rfc3339(req.deadline_ms),
                spec.default_deadline.as_secs()
            )));
        }
        if req.deadline_ms > outpost_common::now_ms() + spec.max_deadline.as_millis() as i64 {
            return Err(HubError::Invalid(format!(
                "the deadline is more than {} s away; {} allows at most that",
                spec.max_deadline.as_secs(),
                spec.name
            )));
        }
        if !req.window.trim().is_empty() {
            req.window
                .trim()
                .parse::<outpost_common::when::Window>()
                .map_err(|e| HubError::Invalid(format!("window: {e}")))?;
        }
        if req.batch as usize > MAX_BATCH {
            return Err(HubError::Invalid(format!("batch {} is over the limit of {MAX_BATCH}", req.batch)));
        }
        if !(0.0..=1.0).contains(&req.max_failure_rate) {
            return Err(HubError::Invalid(format!(
                "max_failure_rate {} must be between 0.0 and 1.0",
                req.max_failure_rate
            )));
        }
        if Duration::from_secs(u64::from(req.queue_secs)) > MAX_QUEUE {
            return Err(HubError::Invalid(format!("queue time {} s is over 7 days", req.queue_secs)));
        }
        let targets = self.fleet.resolve(sel);
        entry.servers = targets.clone();
        if targets.is_empty() {
            return Err(HubError::NotFound(format!("selector {sel:?} matches no server", sel = sel.to_string())));
        }
        if spec.destructive {
            let expected = outpost_common::actions::confirmation(&targets);
            if req.confirm != expected {
                let what = if targets.len() == 1 { "the server name" } else { "the number of targets" };
                return Err(HubError::Unconfirmed(format!(
                    "{} is destructive: confirm with {what} ({expected}); got {:?}",
                    spec.name, req.confirm
                )));
            }
        }
        Ok((spec, targets))
    }

    /// Cancels a running job. Needs role support, and the role of the job's action (stopping a job
    /// interferes with it as much as starting one). Audited, refusals too.
    pub async fn cancel(&self, caller: &Caller, job_id: &str) -> Result<(), HubError> {
        let mut entry = AuditEntry {
            operator: caller.name.clone(),
            role: caller.role.to_string(),
            kind: Kind::Cancel,
            job_id: job_id.chars().take(64).collect(),
            ..Default::default()
        };
        let running = self.live().get(job_id).cloned();
        let refusal = if caller.role < Role::Support {
            Some(HubError::Denied(format!(
                "operator {} has role {}; cancelling a job needs role support or higher",
                caller.name, caller.role
            )))
        } else {
            match &running {
                None => Some(HubError::NotFound(format!(
                    "no running job {} (it finished, or never existed)",
                    outpost_common::text::excerpt(job_id, 64)
                ))),
                Some((_, need)) if caller.role < *need => Some(HubError::Denied(format!(
                    "operator {} has role {}; cancelling this job needs role {need}, as its action does",
                    caller.name, caller.role
                ))),
                Some(_) => None,
            }
        };
        if let Some(refusal) = refusal {
            entry.kind = Kind::Refused;
            entry.action = "cancel".into();
            entry.outcome = audit::Outcome::Refused;
            entry.message = refusal.to_string();
            self.audit.append(entry).await?;
            return Err(refusal);
        }
        self.audit.append(entry).await?;
        if let Some((t, _)) = running {
            t.cancel();
        }
        Ok(())
    }
}

impl Actions {
    /// Pauses (no further batch starts; running commands go on) or resumes a running job. Needs the role
    /// of the job's action, as cancelling does; audited, refusals too.
    pub async fn pause(&self, caller: &Caller, job_id: &str, paused: bool) -> Result<(), HubError> {
        let verb = if paused { "pause" } else { "resume" };
        let mut entry = AuditEntry {
            operator: caller.name.clone(),
            role: caller.role.to_string(),
            kind: Kind::Pause,
            action: verb.into(),
            job_id: job_id.chars().take(64).collect(),
            ..Default::default()
        };
        let running = self.live().get(job_id).map(|(_, role)| *role);
        let refusal = match running {
            None => Some(HubError::NotFound(format!(
                "no running job {} on this hub (it finished, or never existed)",
                outpost_common::text::excerpt(job_id, 64)
            ))),
            Some(need) if caller.role < need.max(Role::Support) => Some(HubError::Denied(format!(
                "operator {} has role {}; to {verb} this job needs role {need}, as its action does",
                caller.name, caller.role
            ))),
            Some(_) => None,
        };
        if let Some(refusal) = refusal {
            entry.kind = Kind::Refused;
            entry.outcome = audit::Outcome::Refused;
            entry.message = refusal.to_string();
            self.audit.append(entry).await?;
            return Err(refusal);
        }
        self.audit.append(entry).await?;
        self.pause_watch(job_id);
        if let Some(tx) = self.pauses().get(job_id) {
            tx.send_replace(paused);
        }
        // Kept with the plan, so a restarted hub resumes the job paused (a job on its last batch has none).
        if let Err(error) = self.store.set_plan_paused(job_id, paused).await {
            tracing::error!(%error, job = %job_id, "cannot record the pause; a restart would resume the job unpaused");
        }
        Ok(())
    }

    /// Before a batch: why job `job` must wait (paused, or outside its maintenance window), if it must.
    /// `paused` is the job's [`Actions::pause_watch`]: what it says is taken as seen.
    fn held(&self, job: &Job, paused: &mut tokio::sync::watch::Receiver<bool>) -> Option<String> {
        let now = outpost_common::now_ms();
        if *paused.borrow_and_update() {
            return Some(format!("paused by an operator; resume with `outpost rollout resume {}`", job.id));
        }
        let w = job.window.filter(|w| !w.contains(now))?;
        Some(format!(
            "waiting for its maintenance window {w}: the next batch starts at {}",
            outpost_common::when::utc(w.next_open(now))
        ))
    }

    /// Waits until what holds `job` may have changed: a pause or resume, the window opening, a cancel.
    async fn hold_changed(
        &self,
        job: &Job,
        cancel: &CancellationToken,
        paused: &mut tokio::sync::watch::Receiver<bool>,
    ) {
        let now = outpost_common::now_ms();
        let wake = job.window.map_or(now + 3_600_000, |w| w.next_open(now));
        let sleep = Duration::from_millis((wake - now).clamp(1000, 3_600_000) as u64);
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = paused.changed() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_put_the_canary_first() {
        assert_eq!(plan_batches(50, 10, 5), [5, 10, 10, 10, 10, 5]);
        assert_eq!(plan_batches(3, 10, 0), [3]);
        assert_eq!(plan_batches(2, 10, 5), [2]);
        assert_eq!(plan_batches(0, 10, 0), Vec::<usize>::new());
        assert_eq!(run::batch_of(&[5, 10, 10], 4), 0);
        assert_eq!(run::batch_of(&[5, 10, 10], 5), 1);
        assert_eq!(run::batch_of(&[5, 10, 10], 24), 2);
    }
}
