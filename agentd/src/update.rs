//! Self-update: a new agentd is downloaded from the hub, verified and staged beside the running one, started
//! on probation, and committed only once it has proved itself; otherwise the previous agentd runs again,
//! with nobody at the machine and without the hub.
//!
//! Who watches (ARCHITECTURE.md, "Updating agentd"): every start of `agentd run` goes through the installed
//! binary (the unit's `ExecStart`), which reads `DATA/update.json` before anything else ([`launch`]):
//! - no update, or one committed to a version not newer than itself: it runs;
//! - an update committed to another version: it execs `DATA/releases/agentd-VERSION`;
//! - a staged update: it marks it trying, copies the instance database aside, and starts the new binary as
//!   its child with a deadline. The child commits (writes `committed`) once it has reconnected to the hub,
//!   replayed its outbox and had a health report acknowledged ([`Probation`]). A child that exits or is
//!   killed before that, or has not committed by the deadline (then it is killed), is rolled back: the
//!   previous version runs again and answers the update command with why;
//! - an update still trying at a start (the machine, the watcher or the unit stopped during the probation):
//!   rolled back.
//!
//! The new binary also watches its own deadline and exits with its parent, so a watcher that dies leaves
//! nothing on probation. The staging agent leaves the command journaled as started; the command is answered
//! by whichever agentd runs after the swap (`unanswered`), so a rollout waits for the proof, not the download.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::VERSION;
use crate::config::AgentConfig;

pub const STATE_FILE: &str = "update.json";
pub const RELEASES_DIR: &str = "releases";
/// The instance database as it was before the new version first opened it.
pub const SNAPSHOT_DIR: &str = "instance.db.pre-update";
/// `agentd run` exits with this to be started again (by its unit, or by its watcher): into a staged update,
/// or back from a failed one.
pub const EXIT_RESTART: u8 = 75;
/// Set on an agentd started from `DATA/releases` (by exec or as a watched child): it runs, never launches.
const ENV_SLOT: &str = "OUTPOST_AGENTD_SLOT";
/// The installed binary every start goes through.
const ENV_BASE: &str = "OUTPOST_AGENTD_BASE";
/// Unix ms: the end of a probation.
const ENV_PROBATION: &str = "OUTPOST_AGENTD_PROBATION_UNTIL_MS";
/// Set on a child its watcher waits for, to the watcher's pid: it exits to restart (the watcher decides), and
/// stops when its parent is no longer that watcher.
const ENV_SUPERVISED: &str = "OUTPOST_AGENTD_SUPERVISED";
/// A child past its deadline gets this long to roll itself back before the watcher kills it.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// The state file is a few hundred bytes; anything larger is not ours.
const MAX_STATE: u64 = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Verified and in `releases/`; the next start tries it.
    Staged,
    /// Running on probation.
    Trying,
    Committed,
    RolledBack,
}

/// `DATA/update.json`: the one update this agent knows of.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateState {
    /// The `agent-update` command this update answers.
    pub command_id: String,
    /// The version that staged it: what runs again on a rollback.
    pub from: String,
    pub to: String,
    pub phase: Phase,
    /// Why it was rolled back, or how it was committed.
    #[serde(default)]
    pub reason: String,
    pub probation_secs: u64,
    /// Unix ms: the end of the probation (while trying).
    #[serde(default)]
    pub deadline_ms: i64,
    /// The command's result is journaled (and on its way to the hub).
    #[serde(default)]
    pub answered: bool,
    /// Unix ms of the last change (written by `save`).
    #[serde(default)]
    pub at_ms: i64,
}

impl UpdateState {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(STATE_FILE)
    }

    pub fn load(data_dir: &Path) -> Result<Option<UpdateState>, String> {
        let path = Self::path(data_dir);
        let bytes = match outpost_common::release::read_bounded(&path, MAX_STATE) {
            Ok(b) => b,
            Err(_) if !path.exists() => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{} is not an update state: {e}", path.display()))
    }

    /// Written aside, synced and renamed: a crash leaves the old state or the new one.
    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        let stamped = UpdateState { at_ms: outpost_common::now_ms(), ..self.clone() };
        write_atomic(&Self::path(data_dir), &serde_json::to_vec_pretty(&stamped).expect("plain data serialises"), 0o600)
    }
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let fail = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", tmp.display());
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| fail("create", e))?;
    f.write_all(bytes).map_err(|e| fail("write", e))?;
    f.sync_all().map_err(|e| fail("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Where a staged version's binary is.
pub fn binary_of(data_dir: &Path, version: &str) -> PathBuf {
    data_dir.join(RELEASES_DIR).join(format!("agentd-{version}"))
}

fn newer(a: &str, b: &str) -> bool {
    outpost_common::release::parse_version(a) > outpost_common::release::parse_version(b)
}

/// What a start does.
#[derive(Debug, PartialEq)]
pub enum Launch {
    /// Run the agent in this process; on probation until this unix ms when it is a new version on trial.
    Here { probation_until: Option<i64> },
    /// Exit with this code (the agent ran as a watched child, or was stopped).
    Exit(u8),
}

/// The start of `agentd run`: which agentd runs, after what the update state says (module docs).
pub async fn launch(config: &AgentConfig) -> Launch {
    if std::env::var_os(ENV_SLOT).is_some() {
        let probation_until = std::env::var(ENV_PROBATION).ok().and_then(|v| v.parse().ok());
        return Launch::Here { probation_until };
    }
    let dir = &config.data_dir;
    let mut state = match UpdateState::load(dir) {
        Ok(Some(s)) => s,
        Ok(None) => return Launch::Here { probation_until: None },
        Err(error) => {
            let aside = dir.join(format!("{STATE_FILE}.unreadable"));
            let _ = std::fs::rename(UpdateState::path(dir), &aside);
            tracing::error!(%error, moved_to = %aside.display(), "the update state is unreadable; running the installed agentd {VERSION}");
            return Launch::Here { probation_until: None };
        }
    };
    match state.phase {
        Phase::Committed => run_version(dir, &state.to),
        Phase::RolledBack => run_version(dir, &state.from),
        Phase::Trying => {
            let reason = format!(
                "agentd {} was interrupted during its probation (the machine restarted, or agentd was stopped or killed) before it was committed",
                state.to
            );
            rollback(dir, &mut state, reason, false)
        }
        Phase::Staged => supervise(dir, state).await,
    }
}

/// Runs `version`: here when it is this binary (or this binary is newer: a package installed over an update
/// wins), else by exec of its staged binary.
fn run_version(dir: &Path, version: &str) -> Launch {
    if version == VERSION || newer(VERSION, version) {
        return Launch::Here { probation_until: None };
    }
    let path = binary_of(dir, version);
    if !path.is_file() {
        tracing::error!(path = %path.display(), "agentd {version} should run but its binary is missing; running the installed agentd {VERSION}");
        return Launch::Here { probation_until: None };
    }
    tracing::info!(path = %path.display(), "starting agentd {version}");
    let error = exec(&path, &[(ENV_SLOT, version)]);
    tracing::error!(%error, path = %path.display(), "cannot start agentd {version}; running the installed agentd {VERSION}");
    Launch::Here { probation_until: None }
}

/// Replaces this process with `path`, same arguments; returns only on failure.
fn exec(path: &Path, env: &[(&str, &str)]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let base = std::env::var_os(ENV_BASE).map(PathBuf::from).or_else(|| std::env::current_exe().ok());
    let mut cmd = std::process::Command::new(path);
    cmd.args(std::env::args_os().skip(1));
    for var in [ENV_SLOT, ENV_PROBATION, ENV_SUPERVISED] {
        cmd.env_remove(var);
    }
    if let Some(base) = base {
        cmd.env(ENV_BASE, base);
    }
    cmd.envs(env.iter().copied());
    cmd.exec()
}

/// After `agentd run` asked to be started again: a watched child exits (its watcher decides), under systemd
/// the unit starts it again, otherwise the installed binary is exec'd.
pub fn restart() -> u8 {
    if supervised() || under_systemd() {
        return EXIT_RESTART;
    }
    let Some(base) = std::env::var_os(ENV_BASE).map(PathBuf::from).or_else(|| std::env::current_exe().ok()) else {
        tracing::error!("cannot find the installed agentd to start again");
        return EXIT_RESTART;
    };
    let error = exec(&base, &[]);
    tracing::error!(%error, path = %base.display(), "cannot start the installed agentd again");
    EXIT_RESTART
}

/// Whether systemd started this process as a service (it restarts the unit on [`EXIT_RESTART`]).
fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some() && std::os::unix::process::parent_id() == 1
}

/// Whether this process runs under a watcher that exits when it does.
pub fn supervised() -> bool {
    std::env::var_os(ENV_SUPERVISED).is_some()
}

/// The pid of this process's watcher, when it has one.
pub fn watcher() -> Option<u32> {
    std::env::var(ENV_SUPERVISED).ok()?.parse().ok()
}

fn rollback(dir: &Path, state: &mut UpdateState, reason: String, stopping: bool) -> Launch {
    tracing::warn!(from = %state.to, to = %state.from, %reason, "update rolled back");
    state.phase = Phase::RolledBack;
    state.reason = reason;
    state.answered = false;
    if let Err(error) = state.save(dir) {
        tracing::error!(%error, "cannot record the rollback");
    }
    if state.to != state.from {
        let _ = std::fs::remove_file(binary_of(dir, &state.to));
    }
    if stopping { Launch::Exit(0) } else { run_version(dir, &state.from) }
}

/// Starts the staged version as a child on probation and watches it (module docs).
async fn supervise(dir: &Path, mut state: UpdateState) -> Launch {
    let path = binary_of(dir, &state.to);
    if !path.is_file() {
        let reason = format!("the staged binary {} is missing", path.display());
        return rollback(dir, &mut state, reason, false);
    }
    if let Err(error) = snapshot(dir) {
        let reason = format!("cannot keep a copy of the instance database before the update: {error}");
        return rollback(dir, &mut state, reason, false);
    }
    state.phase = Phase::Trying;
    state.deadline_ms = outpost_common::now_ms() + state.probation_secs as i64 * 1000;
    if let Err(error) = state.save(dir) {
        let reason = format!("cannot record the update's probation: {error}");
        return rollback(dir, &mut state, reason, false);
    }
    let base = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("agentd"));
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV_SLOT, &state.to)
        .env(ENV_PROBATION, state.deadline_ms.to_string())
        .env(ENV_SUPERVISED, std::process::id().to_string())
        .env(ENV_BASE, &base);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("cannot start agentd {}: {e}", state.to);
            return rollback(dir, &mut state, reason, false);
        }
    };
    let pid = child.id().unwrap_or(0);
    tracing::info!(
        pid,
        probation_secs = state.probation_secs,
        "agentd {} started on probation; agentd {VERSION} watches it",
        state.to
    );
    let (mut term, mut int) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return rollback(dir, &mut state, "the watcher cannot take signals".into(), false);
        }
    };
    let forward = |pid: u32| {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    };
    let mut committed = false;
    let mut stopping = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            status = child.wait() => {
                let now = UpdateState::load(dir).ok().flatten();
                let code = status.as_ref().ok().and_then(|s| s.code());
                if committed || now.as_ref().is_some_and(|s| proven(s, &state)) {
                    return match code {
                        Some(c) if c == i32::from(EXIT_RESTART) && !stopping => Launch::Exit(restart()),
                        Some(c) => Launch::Exit(c.clamp(0, 255) as u8),
                        None => Launch::Exit(1),
                    };
                }
                let reason = match now {
                    Some(s) if s.phase == Phase::RolledBack && !s.reason.is_empty() => s.reason,
                    _ if stopping => format!("agentd was stopped during the probation of agentd {}", state.to),
                    _ => format!("agentd {} {} before it was committed", state.to, describe_exit(&status)),
                };
                return rollback(dir, &mut state, reason, stopping);
            }
            _ = term.recv() => { stopping = true; forward(pid); }
            _ = int.recv() => { stopping = true; forward(pid); }
            _ = tick.tick(), if !committed => {
                if UpdateState::load(dir).ok().flatten().is_some_and(|s| proven(&s, &state)) {
                    committed = true;
                    tracing::info!("agentd {} is committed; agentd {VERSION} stays its parent until it exits", state.to);
                } else if outpost_common::now_ms() > state.deadline_ms + KILL_GRACE.as_millis() as i64 {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    let reason = format!(
                        "agentd {} had not committed {} s after its start (hung, or neither reconnected nor had a health report acknowledged); it was killed",
                        state.to, state.probation_secs
                    );
                    return rollback(dir, &mut state, reason, stopping);
                }
            }
        }
    }
}

/// Whether the update state `now` shows that the version on trial (`ours`) was committed: it says so, or
/// it is already another update (only a committed version stages the next one).
fn proven(now: &UpdateState, ours: &UpdateState) -> bool {
    now.command_id != ours.command_id || now.phase == Phase::Committed
}

fn describe_exit(status: &std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exited with status {c}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended".into(),
        },
        Err(e) => format!("could not be waited for ({e})"),
    }
}

/// Copies the instance database aside (nobody has it open: the watcher runs before any agent).
fn snapshot(dir: &Path) -> std::io::Result<()> {
    let from = dir.join("instance.db");
    let to = dir.join(SNAPSHOT_DIR);
    if to.exists() {
        std::fs::remove_dir_all(&to)?;
    }
    if from.exists() { copy_dir(&from, &to) } else { Ok(()) }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Opens the instance database; one written by a newer agentd that was rolled back is set aside and the copy
/// from before the update opened instead (the new version migrated it before it failed).
pub async fn open_instance(dir: &Path) -> Result<crate::instance::InstanceDb, crate::instance::InstanceError> {
    let path = dir.join("instance.db");
    // An agentd that was just stopped (a watched child whose watcher died, a process being restarted) may
    // still hold the database's lock for a moment.
    let until = Instant::now() + Duration::from_secs(5);
    let mut opened = crate::instance::InstanceDb::open(&path);
    while matches!(opened, Err(crate::instance::InstanceError::Open { .. })) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        opened = crate::instance::InstanceDb::open(&path);
    }
    match opened {
        Err(crate::instance::InstanceError::Newer { found, .. }) if dir.join(SNAPSHOT_DIR).is_dir() => {
            let aside = dir.join(format!("instance.db.schema-{found}"));
            tracing::warn!(aside = %aside.display(), "the instance database was migrated by a newer agentd that was rolled back; opening the copy from before the update (reports that version queued and did not send are in the one set aside)");
            if std::fs::rename(&path, &aside).and_then(|()| std::fs::rename(dir.join(SNAPSHOT_DIR), &path)).is_err() {
                tracing::error!("cannot swap the instance database back");
            }
            crate::instance::InstanceDb::open(&path)
        }
        r => r,
    }
}

/// The update command to answer now, if an update ended (committed or rolled back) and its result has not
/// been journaled: the agent that runs after a swap answers it.
pub fn unanswered(dir: &Path) -> Option<(String, outpost_proto::v1::CommandResult)> {
    use outpost_proto::v1::Outcome;
    let s = UpdateState::load(dir).ok().flatten()?;
    if s.answered || s.command_id.is_empty() {
        return None;
    }
    match s.phase {
        Phase::Committed if s.to == VERSION => {
            Some((s.command_id, crate::actions::result(Outcome::Succeeded, 0, format!("healthy: {}", s.reason))))
        }
        Phase::RolledBack if s.from == VERSION => Some((
            s.command_id,
            crate::actions::result(Outcome::Failed, 1, format!("rolled back to agentd {}: {}", s.from, s.reason)),
        )),
        _ => None,
    }
}

pub fn mark_answered(dir: &Path) {
    if let Ok(Some(mut s)) = UpdateState::load(dir) {
        s.answered = true;
        if let Err(error) = s.save(dir) {
            tracing::error!(%error, "cannot record that the update was answered");
        }
    }
}

/// Whether `command_id` is an update on its way (staged or on probation): its answer comes when it ends.
pub fn in_flight(dir: &Path, command_id: &str) -> bool {
    UpdateState::load(dir)
        .ok()
        .flatten()
        .is_some_and(|s| s.command_id == command_id && matches!(s.phase, Phase::Staged | Phase::Trying))
}

/// A download under way (the version), for the health report: the state file knows only what was staged.
static DOWNLOADING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// How long an ended update is still reported.
const REPORT_ENDED_FOR_MS: i64 = 24 * 3600 * 1000;

/// The update this agent reports in its health: one under way, or one that ended within the last day.
pub fn status(dir: &Path) -> Option<outpost_proto::v1::UpdateStatus> {
    let now = outpost_common::now_ms();
    if let Some(to) = DOWNLOADING.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        let from = VERSION.to_string();
        return Some(outpost_proto::v1::UpdateStatus {
            phase: "downloading".into(),
            from_version: from,
            to_version: to,
            reason: String::new(),
            at_ms: now,
        });
    }
    let s = UpdateState::load(dir).ok().flatten()?;
    let under_way = matches!(s.phase, Phase::Staged | Phase::Trying);
    if !under_way && now - s.at_ms > REPORT_ENDED_FOR_MS {
        return None;
    }
    let phase = match s.phase {
        Phase::Staged => "staged",
        Phase::Trying => "trying",
        Phase::Committed => "committed",
        Phase::RolledBack => "rolled_back",
    };
    Some(outpost_proto::v1::UpdateStatus {
        phase: phase.into(),
        from_version: s.from,
        to_version: s.to,
        reason: s.reason,
        at_ms: s.at_ms,
    })
}

/// Marks a download under way until dropped.
struct Downloading;

impl Downloading {
    fn start(version: &str) -> Downloading {
        *DOWNLOADING.lock().unwrap_or_else(|p| p.into_inner()) = Some(version.to_string());
        Downloading
    }
}

impl Drop for Downloading {
    fn drop(&mut self) {
        *DOWNLOADING.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// What a new version on probation must show before it is committed.
pub struct Probation {
    pub until_ms: i64,
    /// The seq of each health report queued.
    pub health_seq: tokio::sync::watch::Receiver<u64>,
    /// The highest seq the hub acknowledged.
    pub acked: tokio::sync::watch::Receiver<u64>,
}

impl Probation {
    /// Waits for the proof (a health report queued after the start, acknowledged: the stream is up and
    /// everything before it was replayed), then commits and returns the update command's answer; or rolls
    /// back at the deadline and says why (the agent must then restart).
    pub async fn run(
        mut self,
        dir: &Path,
        started: Instant,
    ) -> Result<(String, outpost_proto::v1::CommandResult), String> {
        let left = Duration::from_millis((self.until_ms - outpost_common::now_ms()).max(0) as u64);
        let deadline = tokio::time::Instant::now() + left;
        let proof = async {
            let target = *self.health_seq.wait_for(|s| *s > 0).await.map_err(|_| "stopped")?;
            self.acked.wait_for(|a| *a >= target).await.map_err(|_| "stopped")?;
            Ok::<u64, &str>(target)
        };
        let proven = tokio::select! {
            r = proof => r.ok(),
            _ = tokio::time::sleep_until(deadline) => None,
        };
        let mut state = UpdateState::load(dir)?.ok_or("the update state is gone")?;
        match proven {
            Some(seq) => {
                state.phase = Phase::Committed;
                state.reason = format!(
                    "agentd {} committed {:.1} s after its start: reconnected, outbox replayed, health report #{seq} acknowledged",
                    state.to,
                    started.elapsed().as_secs_f64()
                );
                state.save(dir)?;
                let _ = std::fs::remove_dir_all(dir.join(SNAPSHOT_DIR));
                prune_releases(dir, &[&state.to, &state.from]);
                let r = crate::actions::result(
                    outpost_proto::v1::Outcome::Succeeded,
                    0,
                    format!("healthy: {}", state.reason),
                );
                Ok((state.command_id, r))
            }
            None => {
                let stage = if *self.acked.borrow() > 0 {
                    "reconnected, but no health report of it was acknowledged"
                } else if *self.health_seq.borrow() > 0 {
                    "took a health report but had none acknowledged by the hub (could not reach it?)"
                } else {
                    "took no health report"
                };
                state.phase = Phase::RolledBack;
                state.reason =
                    format!("agentd {} {stage} within its probation of {} s", state.to, state.probation_secs);
                state.answered = false;
                state.save(dir)?;
                Err(state.reason)
            }
        }
    }
}

/// How `stage` ended well.
#[derive(Debug)]
pub enum Staged {
    /// Verified and staged: the agent restarts into it.
    Ready(String),
    /// This version already runs here.
    Current(String),
}

/// Stalls longer than this break a download (it resumes where it stopped).
const STALL: Duration = Duration::from_secs(60);
/// Attempts per hub address before the next one, with backoff between them (a hub restarting meanwhile is
/// back within them).
const ATTEMPTS: u32 = 6;

/// `agent-update`: downloads `version` from the hub (zstd-compressed when the hub has it, resuming a broken
/// transfer with a range request), verifies it against the pinned release keys, its version, this machine's
/// architecture and the no-downgrade rule, stores it in `releases/` and records it staged. `Err` is the
/// outcome and why; nothing is staged then.
pub async fn stage(
    config: &AgentConfig,
    command_id: &str,
    version: &str,
    allow_downgrade: bool,
    out: &mut crate::actions::Output,
) -> Result<Staged, (outpost_proto::v1::Outcome, String)> {
    use outpost_common::release::{PublicKey, Release, Signature};
    use outpost_proto::v1::Outcome;
    let refused = |m: String| (Outcome::Refused, m);
    let failed = |m: String| (Outcome::Failed, m);
    if version == VERSION {
        return Ok(Staged::Current(format!("healthy: agentd {VERSION} already runs here")));
    }
    let keys: Vec<PublicKey> = config.release_keys.iter().filter_map(|k| PublicKey::parse(k).ok()).collect();
    if keys.is_empty() {
        return Err(refused("no release key is pinned on this agent (release_keys in agentd.toml, written by cloud-init from the hub's [releases] public_keys): it installs no update".into()));
    }
    if !allow_downgrade && newer(VERSION, version) {
        return Err(refused(format!(
            "agentd {version} is older than the running {VERSION}; a downgrade must be asked for (allow_downgrade)"
        )));
    }
    let dir = &config.data_dir;
    if let Ok(Some(s)) = UpdateState::load(dir)
        && matches!(s.phase, Phase::Staged | Phase::Trying)
        && s.command_id != command_id
    {
        return Err(refused(format!("an update to agentd {} is already under way here", s.to)));
    }
    let id = crate::identity::AgentIdentity::load(dir)
        .map_err(|e| failed(e.to_string()))?
        .ok_or_else(|| failed("not enrolled".into()))?;
    let addrs = id.addrs(config.hub.as_deref()).map_err(|e| failed(e.to_string()))?;
    let arch = std::env::consts::ARCH;
    let releases = dir.join(RELEASES_DIR);
    outpost_common::private_dir(&releases).map_err(|e| failed(format!("cannot create {}: {e}", releases.display())))?;
    let zst_part = releases.join(format!(".agentd-{version}.zst.part"));
    let bin_part = releases.join(format!(".agentd-{version}.part"));
    let url = format!("/artifacts/agentd/{version}/{arch}");
    out.line(&format!("phase: downloading agentd {version} for {arch} from the hub")).await;
    let _downloading = Downloading::start(version);
    let mut last_error = String::new();
    let mut fetched = None;
    'addrs: for addr in &addrs {
        let mut channel = match addr.channel(&id.ca_pem, Some((&id.cert_pem, &id.key_pem))) {
            Ok(c) => c,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        for attempt in 0..ATTEMPTS {
            match fetch(&mut channel, &url, &zst_part, &bin_part, out).await {
                Ok(f) => {
                    fetched = Some(f);
                    break 'addrs;
                }
                Err(Fetch::NotFound) => {
                    return Err(failed(format!(
                        "the hub has no agentd {version} for {arch}: add it with `hubd release add` (see `hubd release list`)"
                    )));
                }
                Err(Fetch::Broken(e)) => {
                    last_error = format!("{}: {e}", addr.url);
                    if attempt + 1 < ATTEMPTS {
                        let wait = outpost_common::backoff::full_jitter(
                            attempt + 1,
                            Duration::from_millis(500),
                            Duration::from_secs(15),
                        );
                        out.line(&format!(
                            "download interrupted ({last_error}); resuming in {} ms (attempt {} of {ATTEMPTS})",
                            wait.as_millis(),
                            attempt + 2
                        ))
                        .await;
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }
    let Some(fetched) = fetched else {
        return Err(failed(format!("cannot download agentd {version}: {last_error}")));
    };
    let discard = || {
        let _ = std::fs::remove_file(&zst_part);
        let _ = std::fs::remove_file(&bin_part);
    };
    if fetched.compressed {
        let (from, to) = (zst_part.clone(), bin_part.clone());
        let unpacked = tokio::task::spawn_blocking(move || unzstd(&from, &to)).await;
        if let Err(e) = unpacked.map_err(|e| e.to_string()).and_then(|r| r) {
            discard();
            return Err(failed(format!("agentd {version} refused: {e}")));
        }
    }
    let signature = Signature::parse(&fetched.signature).map_err(|e| {
        discard();
        refused(format!("agentd {version} refused: {e}"))
    })?;
    let (path, keys_c, sig_c) = (bin_part.clone(), keys.clone(), signature.clone());
    let checked = tokio::task::spawn_blocking(move || sig_c.verify_file(&path, &keys_c).map(str::to_string))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .and_then(|comment| Release::from_comment(&comment).map_err(|e| e.to_string()))
        .and_then(|r| {
            if r.version != version {
                return Err(format!("it is signed as agentd {}, not {version}", r.version));
            }
            r.installable(arch, VERSION, allow_downgrade).map(|()| r).map_err(|e| e.to_string())
        });
    let release = match checked {
        Ok(r) => r,
        Err(e) => {
            discard();
            return Err(refused(format!("agentd {version} refused: {e}")));
        }
    };
    let target = binary_of(dir, version);
    let placed = (|| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin_part, std::fs::Permissions::from_mode(0o700))?;
        std::fs::File::open(&bin_part)?.sync_all()?;
        std::fs::rename(&bin_part, &target)
    })();
    let _ = std::fs::remove_file(&zst_part);
    if let Err(e) = placed {
        discard();
        return Err(failed(format!("cannot store {}: {e}", target.display())));
    }
    let size = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    out.line(&format!(
        "phase: staged agentd {} for {} ({size} bytes, {} transferred), signed by release key {}",
        release.version,
        release.arch,
        fetched.transferred,
        signature.key_id_hex()
    ))
    .await;
    let state = UpdateState {
        command_id: command_id.to_string(),
        from: VERSION.to_string(),
        to: version.to_string(),
        phase: Phase::Staged,
        reason: String::new(),
        probation_secs: config.update_probation_secs,
        deadline_ms: 0,
        answered: false,
        at_ms: 0,
    };
    out.line(&format!(
        "phase: restarting into agentd {version}; it is committed once it reconnects, replays its outbox and has a health report acknowledged within {} s, else agentd {VERSION} comes back",
        config.update_probation_secs
    ))
    .await;
    // Nothing awaits after this: a cancel or deadline that stops `stage` leaves it staged or not, never half.
    state.save(dir).map_err(failed)?;
    Ok(Staged::Ready(format!("staged agentd {version}")))
}

struct Fetched {
    signature: String,
    compressed: bool,
    /// Bytes that came over the network for the binary.
    transferred: u64,
}

enum Fetch {
    NotFound,
    Broken(String),
}

/// The signature, then the binary: its `.zst` form when the hub has one (into `zst_part`), else the plain
/// binary (into `bin_part`); a partial file from an earlier attempt is resumed with a range request.
async fn fetch(
    channel: &mut tonic::transport::Channel,
    url: &str,
    zst_part: &Path,
    bin_part: &Path,
    out: &mut crate::actions::Output,
) -> Result<Fetched, Fetch> {
    let mut sig = Vec::new();
    download(channel, &format!("{url}.minisig"), None, &mut sig, outpost_common::release::MAX_SIGNATURE as u64).await?;
    let signature = String::from_utf8(sig).map_err(|_| Fetch::Broken("the signature is not text".into()))?;
    let (compressed, transferred) = match download_file(channel, &format!("{url}.zst"), zst_part, out).await {
        Ok(n) => (true, n),
        Err(Fetch::NotFound) => (false, download_file(channel, url, bin_part, out).await?),
        Err(e) => return Err(e),
    };
    Ok(Fetched { signature, compressed, transferred })
}

/// Appends `url` to `part` from where it stops; returns the bytes transferred by this call.
async fn download_file(
    channel: &mut tonic::transport::Channel,
    url: &str,
    part: &Path,
    out: &mut crate::actions::Output,
) -> Result<u64, Fetch> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if have > 0 {
        out.line(&format!("resuming at byte {have}")).await;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|e| Fetch::Broken(format!("cannot write {}: {e}", part.display())))?;
    let max = outpost_common::release::MAX_BINARY;
    download(channel, url, Some(have), &mut file, max).await
}

/// GETs `path` (from byte `from` when set: a server that ignores the range restarts the file) into `sink`,
/// at most `max` bytes in all; each chunk must come within [`STALL`].
async fn download(
    channel: &mut tonic::transport::Channel,
    path: &str,
    from: Option<u64>,
    sink: &mut impl DownloadSink,
    max: u64,
) -> Result<u64, Fetch> {
    use tonic::codegen::{Body as _, Service as _};
    let broken = |e: String| Fetch::Broken(e);
    let mut req = tonic::codegen::http::Request::builder().method("GET").uri(path);
    let from = from.unwrap_or(0);
    if from > 0 {
        req = req.header("range", format!("bytes={from}-"));
    }
    let req = req.body(tonic::body::Body::empty()).map_err(|e| broken(e.to_string()))?;
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| broken(chain(&e)))?;
    let resp = tokio::time::timeout(STALL, channel.call(req))
        .await
        .map_err(|_| broken("no answer".into()))?
        .map_err(|e| broken(chain(&e)))?;
    let status = resp.status().as_u16();
    match status {
        404 => return Err(Fetch::NotFound),
        200 if from > 0 => sink.restart().map_err(broken)?,
        200 | 206 => {}
        416 => return Ok(0), // nothing past what we have: complete
        s => return Err(broken(format!("the hub answered HTTP {s}"))),
    }
    let mut body = resp.into_body();
    let mut total = 0u64;
    loop {
        let frame =
            tokio::time::timeout(STALL, std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)))
                .await
                .map_err(|_| broken(format!("no data for {} s", STALL.as_secs())))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if sink.len() + data.len() as u64 > max {
            return Err(broken(format!("the answer is over {} MiB", max >> 20)));
        }
        sink.put(&data).map_err(broken)?;
    }
    Ok(total)
}

/// An error with its causes, for a person.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// GETs `path` from the hub on `channel` and counts its bytes, keeping none (the fleet simulator's download).
pub async fn fetch_len(channel: &mut tonic::transport::Channel, path: &str) -> Result<u64, String> {
    let mut sink = Discard(0);
    download(channel, path, None, &mut sink, outpost_common::release::MAX_BINARY).await.map_err(|e| match e {
        Fetch::NotFound => format!("{path}: not found"),
        Fetch::Broken(e) => e,
    })
}

struct Discard(u64);

impl DownloadSink for Discard {
    fn put(&mut self, data: &[u8]) -> Result<(), String> {
        self.0 += data.len() as u64;
        Ok(())
    }
    fn len(&self) -> u64 {
        self.0
    }
    fn restart(&mut self) -> Result<(), String> {
        self.0 = 0;
        Ok(())
    }
}

/// Where a download goes: memory (the signature) or a file.
trait DownloadSink {
    fn put(&mut self, data: &[u8]) -> Result<(), String>;
    fn len(&self) -> u64;
    fn restart(&mut self) -> Result<(), String>;
}

impl DownloadSink for Vec<u8> {
    fn put(&mut self, data: &[u8]) -> Result<(), String> {
        self.extend_from_slice(data);
        Ok(())
    }
    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }
    fn restart(&mut self) -> Result<(), String> {
        self.clear();
        Ok(())
    }
}

impl DownloadSink for std::fs::File {
    fn put(&mut self, data: &[u8]) -> Result<(), String> {
        std::io::Write::write_all(self, data).map_err(|e| format!("cannot write the download: {e}"))
    }
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn restart(&mut self) -> Result<(), String> {
        self.set_len(0).map_err(|e| format!("cannot restart the download: {e}"))
    }
}

/// Decompresses `from` into `to`, at most [`outpost_common::release::MAX_BINARY`] bytes.
fn unzstd(from: &Path, to: &Path) -> Result<(), String> {
    use std::io::Read;
    let max = outpost_common::release::MAX_BINARY;
    let input = std::fs::File::open(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let decoder = zstd::stream::read::Decoder::new(input).map_err(|e| format!("not zstd: {e}"))?;
    let mut output = std::fs::File::create(to).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    let n = std::io::copy(&mut decoder.take(max + 1), &mut output)
        .map_err(|e| format!("the compressed binary is damaged: {e}"))?;
    if n > max {
        return Err(format!("it unpacks to over {} MiB", max >> 20));
    }
    Ok(())
}

/// Removes staged binaries and partial downloads other than `keep`.
fn prune_releases(dir: &Path, keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir.join(RELEASES_DIR)) else { return };
    let keep: Vec<String> = keep.iter().map(|v| format!("agentd-{v}")).collect();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(phase: Phase) -> UpdateState {
        UpdateState {
            command_id: "c".into(),
            from: VERSION.into(),
            to: "99.0.0".into(),
            phase,
            reason: String::new(),
            probation_secs: 60,
            deadline_ms: 0,
            answered: false,
            at_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_start_during_a_probation_rolls_back_and_answers_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig { data_dir: dir.path().into(), ..Default::default() };
        assert_eq!(launch(&config).await, Launch::Here { probation_until: None });
        state(Phase::Trying).save(dir.path()).unwrap();
        assert_eq!(launch(&config).await, Launch::Here { probation_until: None });
        let s = UpdateState::load(dir.path()).unwrap().unwrap();
        assert_eq!(s.phase, Phase::RolledBack);
        assert!(s.reason.contains("interrupted during its probation"), "{}", s.reason);
        let (id, r) = unanswered(dir.path()).unwrap();
        assert_eq!(id, "c");
        assert!(r.message.starts_with(&format!("rolled back to agentd {VERSION}")), "{}", r.message);
        mark_answered(dir.path());
        assert!(unanswered(dir.path()).is_none());
        assert!(!in_flight(dir.path(), "c"));
    }

    #[tokio::test]
    async fn a_missing_staged_binary_or_an_unreadable_state_runs_the_installed_agent() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig { data_dir: dir.path().into(), ..Default::default() };
        state(Phase::Staged).save(dir.path()).unwrap();
        assert!(in_flight(dir.path(), "c"));
        assert_eq!(launch(&config).await, Launch::Here { probation_until: None });
        let s = UpdateState::load(dir.path()).unwrap().unwrap();
        assert!(s.reason.contains("is missing"), "{}", s.reason);
        // A committed update to a missing binary: the installed one runs; an older committed one never does.
        state(Phase::Committed).save(dir.path()).unwrap();
        assert_eq!(launch(&config).await, Launch::Here { probation_until: None });
        std::fs::write(UpdateState::path(dir.path()), b"{not json").unwrap();
        assert_eq!(launch(&config).await, Launch::Here { probation_until: None });
        assert!(dir.path().join("update.json.unreadable").exists());
    }

    #[test]
    fn a_watcher_takes_a_commit_or_a_newer_update_as_proof() {
        let ours = state(Phase::Trying);
        assert!(!proven(&ours, &ours));
        assert!(proven(&UpdateState { phase: Phase::Committed, ..ours.clone() }, &ours));
        assert!(!proven(&UpdateState { phase: Phase::RolledBack, ..ours.clone() }, &ours));
        // The committed version staged the next update before the watcher looked.
        let next = UpdateState { command_id: "d".into(), phase: Phase::Staged, ..ours.clone() };
        assert!(proven(&next, &ours));
    }

    #[tokio::test]
    async fn a_database_migrated_by_a_rolled_back_version_is_swapped_for_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::instance::InstanceDb::open(&dir.path().join("instance.db")).unwrap());
        snapshot(dir.path()).unwrap();
        crate::instance::InstanceDb::set_schema_for_test(&dir.path().join("instance.db"), 99);
        // The handle's background flusher lets go of the file lock shortly after the drop.
        let deadline = Instant::now() + Duration::from_secs(10);
        let db = loop {
            match open_instance(dir.path()).await {
                Err(crate::instance::InstanceError::Open { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                r => break r.unwrap(),
            }
        };
        assert_eq!(db.schema_version(), crate::instance::SCHEMA_VERSION);
        assert!(dir.path().join("instance.db.schema-99").is_dir());
    }
}
