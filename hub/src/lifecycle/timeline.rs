//! The deprovision timeline and its way back.
//!
//! - `deprovision` (at once): apps stopped (scaled to 0, their replicas remembered), the server's unused
//!   join tokens burned, the server marked suspended; an `archive` job is scheduled.
//! - `archive` (after `archive_after_secs`, 7 days by default): the agent exports its apps as data
//!   (`instance-export`), written to the hub's archive directory (0600, SHA-256 and size recorded); then the
//!   cloud server is deleted and the agent's identity revoked; a `delete` job is scheduled.
//! - `delete` (after `delete_after_secs`, 30 days): the archive is deleted for good and the record forgotten
//!   (its revoked serials stay revoked).
//! - `reactivate`: before the archive, the apps come back (the archive job is cancelled); after it, a new
//!   server is provisioned and the archive restored onto it (each app applied and deployed at its commit).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_common::Role;
use outpost_common::selector::Selector;

use super::{JobCtx, JobError, Lifecycle, max_attempts};
use crate::actions::{ActionRequest, Caller, JobEvent};
use crate::error::HubError;
use crate::store::{JobKind, JobState, Outcome, QueuedJob, ServerRecord};

/// The label that shows a server's place in the timeline.
pub const LIFECYCLE_LABEL: &str = "lifecycle";

/// What an action run by the lifecycle gave.
struct Ran {
    outcome: Outcome,
    message: String,
    output: String,
}

impl Lifecycle {
    /// Queues a deprovision of every server of `customer` that is in service.
    pub async fn deprovision(&self, customer: &str, by: &str) -> Result<Vec<QueuedJob>, HubError> {
        let servers: Vec<ServerRecord> = self
            .fleet
            .registry()
            .list()
            .iter()
            .filter(|v| v.record.customer == customer)
            .map(|v| v.record.clone())
            .collect();
        if servers.is_empty() {
            return Err(HubError::NotFound(format!(
                "customer {} has no servers",
                outpost_common::text::excerpt(customer, 64)
            )));
        }
        let live: Vec<&ServerRecord> = servers.iter().filter(|s| s.suspended_ms == 0).collect();
        if live.is_empty() {
            return Err(HubError::Invalid(format!(
                "every server of {customer} is deprovisioned already; `outpost reactivate --customer {customer}` brings them back"
            )));
        }
        let mut jobs = Vec::new();
        for s in live {
            if let Some(j) = self.open_job_for(&s.name).await? {
                return Err(HubError::Invalid(format!(
                    "job {} ({}) for {} is still {}; wait for it or cancel it",
                    j.id,
                    j.kind.as_str(),
                    s.name,
                    j.state.as_str()
                )));
            }
            let job =
                self.new_job(JobKind::Deprovision, s, by, 0, [("customer".to_string(), customer.to_string())].into());
            jobs.push(self.submit(job, by).await?.0);
        }
        Ok(jobs)
    }

    /// Queues the way back for every deprovisioned server of `customer`.
    pub async fn reactivate(&self, customer: &str, by: &str) -> Result<Vec<QueuedJob>, HubError> {
        let suspended: Vec<ServerRecord> = self
            .fleet
            .registry()
            .list()
            .iter()
            .filter(|v| v.record.customer == customer && v.record.suspended_ms > 0)
            .map(|v| v.record.clone())
            .collect();
        if suspended.is_empty() {
            return Err(HubError::NotFound(format!(
                "customer {} has no deprovisioned server (after {} days the archive is gone: provision anew)",
                outpost_common::text::excerpt(customer, 64),
                self.config.delete_after_secs / 86_400
            )));
        }
        let mut jobs = Vec::new();
        for s in &suspended {
            if let Some(j) = self.open_job_for(&s.name).await?
                && !matches!(j.kind, JobKind::Archive | JobKind::Delete)
            {
                return Err(HubError::Invalid(format!(
                    "job {} ({}) for {} is still {}; wait for it",
                    j.id,
                    j.kind.as_str(),
                    s.name,
                    j.state.as_str()
                )));
            }
            let job =
                self.new_job(JobKind::Reactivate, s, by, 0, [("customer".to_string(), customer.to_string())].into());
            jobs.push(self.submit(job, by).await?.0);
        }
        Ok(jobs)
    }

    fn new_job(
        &self,
        kind: JobKind,
        s: &ServerRecord,
        by: &str,
        not_before_ms: i64,
        mut params: BTreeMap<String, String>,
    ) -> QueuedJob {
        let now = self.clock.now_ms();
        params.insert("server".into(), s.name.clone());
        QueuedJob {
            kind,
            priority: self.priority(&s.plan),
            idempotency_key: format!("{}/{}/{}", kind.as_str(), s.name, outpost_common::random_hex::<6>()),
            params,
            target: s.name.clone(),
            customer: s.customer.clone(),
            submitted_by: by.into(),
            created_ms: now,
            updated_ms: now,
            not_before_ms,
            max_attempts: max_attempts(kind),
            ..Default::default()
        }
    }

    fn priority(&self, plan: &str) -> u8 {
        match &self.provisioner {
            Ok(p) => p.plan_priority(plan),
            Err(_) => 0,
        }
    }

    /// Runs `action` on `server` as the lifecycle (an admin), waiting up to five minutes for it to be online.
    async fn run_action(&self, server: &str, action: &str, args: &[(&str, &str)]) -> Result<Ran, JobError> {
        let caller = Caller { name: "lifecycle".into(), role: Role::Admin, session: None };
        let req = ActionRequest {
            action: action.into(),
            args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            selector: Selector { names: vec![server.to_string()], ..Default::default() },
            batch: 0,
            canary: 0,
            max_failure_rate: 1.0,
            deadline_ms: 0,
            queue_secs: 300,
            confirm: server.to_string(),
            window: String::new(),
        };
        let mut events =
            self.actions.submit(&caller, req).await.map_err(|e| JobError::Fail(format!("{action}: {e}")))?;
        let (mut output, mut result) = (String::new(), None);
        while let Some(e) = events.recv().await {
            if let JobEvent::Target(t) = e {
                output.push_str(&t.output);
                if let Some(r) = t.result {
                    result = Some(r);
                }
            }
        }
        let r =
            result.ok_or_else(|| JobError::Retry(format!("{action} on {server}: no result (the hub is stopping?)")))?;
        Ok(Ran { outcome: r.outcome, message: r.message, output })
    }

    async fn update_record(&self, name: &str, change: impl FnOnce(&mut ServerRecord)) -> Result<(), JobError> {
        let _lock = self.fleet.lock(name).await;
        let mut record = self.fleet.record(name).map_err(|e| JobError::Fail(e.to_string()))?;
        change(&mut record);
        self.store.put_server(&record).await?;
        self.fleet.registry().put_record(record);
        Ok(())
    }

    fn archive_dir(&self) -> PathBuf {
        self.config.archive_dir.clone().unwrap_or_else(|| PathBuf::from("archive"))
    }

    pub(super) async fn run_deprovision(&self, ctx: &JobCtx) -> Result<String, JobError> {
        let job = ctx.snapshot().await;
        let name = job.target.clone();
        ctx.step("stop-apps", || async {
            let apps = self
                .fleet
                .registry()
                .get(&name)
                .and_then(|v| v.apps.clone())
                .map(|a| a.apps.clone())
                .unwrap_or_default();
            let mut stopped = Vec::new();
            for app in apps.iter().filter(|a| a.desired_replicas > 0) {
                let replicas = app.desired_replicas.to_string();
                ctx.set_fact(&format!("replicas.{}", app.name), replicas.clone()).await?;
                ctx.progress(format!("scaling {} to 0", app.name)).await?;
                let ran = self.run_action(&name, "app-scale", &[("app", &app.name), ("replicas", "0")]).await?;
                if ran.outcome != Outcome::Succeeded {
                    return Err(JobError::Retry(format!("stopping {}: {}", app.name, ran.message)));
                }
                stopped.push(format!("{} (was {replicas})", app.name));
            }
            Ok(if stopped.is_empty() { "no app was running".into() } else { format!("stopped {}", stopped.join(", ")) })
        })
        .await?;
        ctx.step("burn-tokens", || async {
            let n = self.store.drop_tokens(&name).await?;
            Ok(format!("{n} unused join token(s) burned"))
        })
        .await?;
        let now = self.clock.now_ms();
        ctx.step("suspend", || async {
            self.update_record(&name, |r| {
                if r.suspended_ms == 0 {
                    r.suspended_ms = now;
                }
                r.labels.insert(LIFECYCLE_LABEL.into(), "suspended".into());
            })
            .await?;
            Ok(format!("{name} suspended"))
        })
        .await?;
        ctx.step("schedule-archive", || async {
            let record = self.fleet.record(&name).map_err(|e| JobError::Fail(e.to_string()))?;
            let at = record.suspended_ms + (self.config.archive_after_secs * 1000) as i64;
            let params = [("deprovision".to_string(), job.id.to_string())].into();
            let archive = self.new_job(JobKind::Archive, &record, &job.submitted_by, at, params);
            let (archive, _) =
                self.submit(archive, &job.submitted_by).await.map_err(|e| JobError::Retry(e.to_string()))?;
            ctx.set_fact("archive_job", archive.id.to_string()).await?;
            Ok(format!("archive (job {}) at {}", archive.id, outpost_common::when::rfc3339(at)))
        })
        .await?;
        Ok(format!("{name} suspended; its data is archived and the server deleted at the scheduled time"))
    }

    pub(super) async fn run_archive(&self, ctx: &JobCtx) -> Result<String, JobError> {
        let job = ctx.snapshot().await;
        let name = job.target.clone();
        let record = self.fleet.record(&name).map_err(|e| JobError::Fail(e.to_string()))?;
        if record.suspended_ms == 0 {
            return Err(JobError::Fail(format!("{name} was reactivated; nothing to archive")));
        }
        ctx.step("export", || async {
            if record.agent_id.is_empty() || record.revoked_ms > 0 {
                return Ok("no agent to export from".into());
            }
            ctx.progress("the agent exports its apps").await?;
            let ran = self.run_action(&name, "instance-export", &[]).await?;
            if ran.outcome != Outcome::Succeeded {
                return Err(JobError::Retry(format!("instance-export: {}", ran.message)));
            }
            let doc = ran.output.trim_end();
            serde_json::from_str::<serde_json::Value>(doc)
                .map_err(|e| JobError::Retry(format!("the export is not a whole JSON document ({e})")))?;
            // The export holds the apps' secrets: what is written is sealed, never the clear document.
            let sealed = self.actions.sealer().seal(doc.as_bytes(), &archive_purpose(&name));
            let path = self.archive_dir().join(format!("{name}-{}.sealed", record.suspended_ms));
            let sha = write_private(&path, sealed.as_bytes()).map_err(|e| JobError::Retry(e.to_string()))?;
            let bytes = sealed.len() as u64;
            self.update_record(&name, |r| {
                r.archive = path.display().to_string();
                r.archive_sha256 = sha.clone();
                r.archive_bytes = bytes;
            })
            .await?;
            Ok(format!("archived to {} ({bytes} bytes, sha256 {sha})", path.display()))
        })
        .await?;
        ctx.step("delete-server", || async {
            match &self.provisioner {
                Ok(p) => p.delete_cloud_server(&name).await,
                Err(_) => Ok("provisioning is not configured: no cloud server to delete".into()),
            }
        })
        .await?;
        ctx.step("revoke", || async {
            let r = self.fleet.record(&name).map_err(|e| JobError::Fail(e.to_string()))?;
            if r.agent_id.is_empty() || r.revoked_ms > 0 {
                return Ok("no identity to revoke".into());
            }
            let serial =
                self.identities.revoke_server(&name, "lifecycle").await.map_err(|e| JobError::Retry(e.to_string()))?;
            Ok(format!("revoked certificate {serial}"))
        })
        .await?;
        ctx.step("schedule-delete", || async {
            self.update_record(&name, |r| {
                r.labels.insert(LIFECYCLE_LABEL.into(), "archived".into());
            })
            .await?;
            let r = self.fleet.record(&name).map_err(|e| JobError::Fail(e.to_string()))?;
            let at = r.suspended_ms + (self.config.delete_after_secs * 1000) as i64;
            let del = self.new_job(JobKind::Delete, &r, &job.submitted_by, at, BTreeMap::new());
            let (del, _) = self.submit(del, &job.submitted_by).await.map_err(|e| JobError::Retry(e.to_string()))?;
            ctx.set_fact("delete_job", del.id.to_string()).await?;
            Ok(format!("archive deleted (job {}) at {}", del.id, outpost_common::when::rfc3339(at)))
        })
        .await?;
        Ok(format!("{name} archived, its cloud server deleted and its identity revoked"))
    }

    pub(super) async fn run_delete(&self, ctx: &JobCtx) -> Result<String, JobError> {
        let name = ctx.snapshot().await.target;
        let record = self.fleet.record(&name).map_err(|e| JobError::Fail(e.to_string()))?;
        if record.suspended_ms == 0 {
            return Err(JobError::Fail(format!("{name} was reactivated; nothing to delete")));
        }
        ctx.step("delete-archive", || async {
            if record.archive.is_empty() {
                return Ok("no archive".into());
            }
            match std::fs::remove_file(&record.archive) {
                Ok(()) => Ok(format!("deleted {}", record.archive)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(format!("{} was gone already", record.archive))
                }
                Err(e) => Err(JobError::Retry(format!("deleting {}: {e}", record.archive))),
            }
        })
        .await?;
        ctx.step("forget", || async {
            let _lock = self.fleet.lock(&name).await;
            self.store.remove_server(&name).await?;
            self.fleet.registry().remove(&name);
            Ok(format!("{name} forgotten (its certificates stay revoked)"))
        })
        .await?;
        Ok(format!("{name}'s archive deleted for good"))
    }

    pub(super) async fn run_reactivate(&self, ctx: &JobCtx) -> Result<String, JobError> {
        let job = ctx.snapshot().await;
        let name = job.target.clone();
        let record = self.fleet.record(&name).map_err(|e| JobError::Fail(e.to_string()))?;
        // The scheduled step that would run next is called off first.
        ctx.step("cancel-schedule", || async {
            let mut called_off = Vec::new();
            for j in self.store.jobs(0).await? {
                if j.target == name && matches!(j.kind, JobKind::Archive | JobKind::Delete) && !j.state.is_final() {
                    if j.state == JobState::Running {
                        return Err(JobError::Retry(format!(
                            "{} job {} is running; retrying after it",
                            j.kind.as_str(),
                            j.id
                        )));
                    }
                    self.cancel(j.id, "lifecycle").await.map_err(|e| JobError::Retry(e.to_string()))?;
                    called_off.push(format!("{} job {}", j.kind.as_str(), j.id));
                }
            }
            Ok(if called_off.is_empty() {
                "nothing scheduled".into()
            } else {
                format!("cancelled {}", called_off.join(", "))
            })
        })
        .await?;
        if record.archive.is_empty() {
            // Before the archive: the server and its agent are still there.
            ctx.step("start-apps", || async {
                let mut started = Vec::new();
                for (app, replicas) in &self.stopped_replicas(&name).await? {
                    let ran = self.run_action(&name, "app-scale", &[("app", app), ("replicas", replicas)]).await?;
                    if ran.outcome != Outcome::Succeeded {
                        return Err(JobError::Retry(format!("starting {app}: {}", ran.message)));
                    }
                    started.push(format!("{app} ({replicas})"));
                }
                Ok(if started.is_empty() {
                    "no app to start".into()
                } else {
                    format!("started {}", started.join(", "))
                })
            })
            .await?;
        } else {
            // After it: a new server, and the archive restored onto it.
            let archive = record.archive.clone();
            let check = record.archive_sha256.clone();
            ctx.step("provision", || async {
                self.provisioner.as_ref().map_err(|why| JobError::Fail(why.clone()))?;
                if ctx.fact("provision_job").await.is_none() {
                    {
                        let _lock = self.fleet.lock(&name).await;
                        self.store.remove_server(&name).await?;
                        self.fleet.registry().remove(&name);
                    }
                    let req = super::ProvisionRequest {
                        customer: record.customer.clone(),
                        plan: record.plan.clone(),
                        name: name.clone(),
                        location: String::new(),
                        idempotency_key: format!("reactivate/{}", job.id),
                    };
                    let (p, _) = self
                        .provision_for(req, &job.submitted_by, Some(job.id))
                        .await
                        .map_err(|e| JobError::Fail(e.to_string()))?;
                    ctx.set_fact("provision_job", p.id.to_string()).await?;
                }
                let id: u64 = ctx.fact("provision_job").await.and_then(|v| v.parse().ok()).unwrap_or_default();
                loop {
                    let p = self
                        .store
                        .job(id)
                        .await?
                        .ok_or_else(|| JobError::Fail(format!("provision job {id} vanished")))?;
                    match p.state {
                        JobState::Succeeded => return Ok(format!("new server {name} online (provision job {id})")),
                        JobState::Failed | JobState::Cancelled => {
                            return Err(JobError::Fail(format!(
                                "provision job {id} {}: {}",
                                p.state.as_str(),
                                p.error
                            )));
                        }
                        _ => ctx.progress(format!("provision job {id}: {}", p.progress)).await?,
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await?;
            ctx.step("restore", || async {
                let bytes = std::fs::read(&archive).map_err(|e| JobError::Fail(format!("reading {archive}: {e}")))?;
                let sha = outpost_common::cert::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
                if sha != check {
                    return Err(JobError::Fail(format!("{archive} does not match its recorded SHA-256 {check}")));
                }
                let text = String::from_utf8_lossy(&bytes);
                // Sealed by this hub; an archive an older hub wrote in the clear is read as it is.
                let plain = if crate::seal::Sealer::is_sealed(&text) {
                    self.actions
                        .sealer()
                        .open(text.trim_end(), &archive_purpose(&name))
                        .map_err(|e| JobError::Fail(format!("{archive}: {e}")))?
                } else {
                    bytes.clone()
                };
                let doc: serde_json::Value =
                    serde_json::from_slice(&plain).map_err(|e| JobError::Fail(format!("{archive}: {e}")))?;
                let replicas = self.stopped_replicas(&name).await?;
                let mut restored = Vec::new();
                for app in doc["apps"].as_array().cloned().unwrap_or_default() {
                    let (Some(app_name), Some(spec)) = (app["name"].as_str(), app["spec"].as_str()) else { continue };
                    ctx.progress(format!("restoring {app_name}")).await?;
                    // The archive was taken with the apps stopped: they come back at their replicas from before.
                    let spec = match replicas.get(app_name) {
                        Some(n) => with_replicas(spec, n).map_err(JobError::Fail)?,
                        None => spec.to_string(),
                    };
                    let ran = self.run_action(&name, "app-apply", &[("spec", &spec)]).await?;
                    if ran.outcome != Outcome::Succeeded {
                        return Err(JobError::Retry(format!("app-apply {app_name}: {}", ran.message)));
                    }
                    let commit = app["live"]["commit"].as_str().unwrap_or_default();
                    let ran = self.run_action(&name, "app-deploy", &[("app", app_name), ("ref", commit)]).await?;
                    if ran.outcome != Outcome::Succeeded {
                        return Err(JobError::Retry(format!("app-deploy {app_name}: {}", ran.message)));
                    }
                    restored.push(app_name.to_string());
                }
                Ok(format!("restored {} app(s) from {archive}: {}", restored.len(), restored.join(", ")))
            })
            .await?;
        }
        ctx.step("unsuspend", || async {
            self.update_record(&name, |r| {
                r.suspended_ms = 0;
                r.labels.remove(LIFECYCLE_LABEL);
            })
            .await?;
            Ok(format!("{name} in service"))
        })
        .await?;
        Ok(format!("{name} is back"))
    }
}

/// `spec` (an app spec, TOML) with `replicas`.
fn with_replicas(spec: &str, replicas: &str) -> Result<String, String> {
    let mut t: toml::Table = toml::from_str(spec).map_err(|e| format!("an archived spec: {e}"))?;
    let n: i64 = replicas.parse().map_err(|e| format!("replicas {replicas:?}: {e}"))?;
    t.insert("replicas".into(), toml::Value::Integer(n));
    toml::to_string(&t).map_err(|e| e.to_string())
}

impl Lifecycle {
    /// The replicas each app had before the newest deprovision of `server` stopped it.
    async fn stopped_replicas(&self, server: &str) -> Result<BTreeMap<String, String>, JobError> {
        let facts = self
            .store
            .jobs(0)
            .await?
            .into_iter()
            .find(|j| j.target == server && j.kind == JobKind::Deprovision && j.state == JobState::Succeeded)
            .map(|j| j.facts)
            .unwrap_or_default();
        Ok(facts.into_iter().filter_map(|(k, v)| Some((k.strip_prefix("replicas.")?.to_string(), v))).collect())
    }
}

/// Writes `bytes` to `path` (0600, through a temporary file and a rename, synced); returns its SHA-256.
/// What a server's archive is sealed for (a sealed archive opens only as that server's).
fn archive_purpose(name: &str) -> String {
    format!("archive/{name}")
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        outpost_common::private_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(outpost_common::cert::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()))
}

/// An enroll-ssh request as asked.
#[derive(Clone, Debug, Default)]
pub struct EnrollSshRequest {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub known_hosts: String,
    pub fingerprint: String,
    /// An OpenSSH private key (held in memory for the job only); empty: the hub's own.
    pub private_key: String,
    pub name: String,
    pub customer: String,
    pub plan: String,
}

impl Lifecycle {
    /// Queues the enrollment of a server the customer brings, over SSH.
    pub async fn enroll_ssh(&self, r: EnrollSshRequest, by: &str) -> Result<QueuedJob, HubError> {
        let mut problems = Vec::new();
        for (what, v) in [("name", &r.name), ("customer", &r.customer)] {
            if !super::config::valid_dns_label(v) {
                problems.push(format!("{what} {} is not a DNS label", outpost_common::text::excerpt(v, 64)));
            }
        }
        if r.host.is_empty()
            || r.host.len() > 253
            || !r.host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        {
            problems.push(format!("host {} is not a host name or address", outpost_common::text::excerpt(&r.host, 64)));
        }
        if r.user.is_empty()
            || r.user.len() > 32
            || !r.user.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            problems.push(format!("user {} is not a user name", outpost_common::text::excerpt(&r.user, 64)));
        }
        match (r.known_hosts.is_empty(), r.fingerprint.is_empty()) {
            (true, true) => {
                problems.push("the host key must be known: give --known-hosts FILE or --fingerprint SHA256:…".into())
            }
            (false, false) => problems.push("give --known-hosts or --fingerprint, not both".into()),
            (true, false) if !r.fingerprint.starts_with("SHA256:") || r.fingerprint.len() != 50 => {
                problems.push(format!(
                    "fingerprint {} is not SHA256:<43 base64 characters> (`ssh-keygen -lf`)",
                    outpost_common::text::excerpt(&r.fingerprint, 64)
                ))
            }
            _ => {}
        }
        if r.known_hosts.len() > 64 * 1024 {
            problems.push("known_hosts is over 64 KiB".into());
        }
        if r.private_key.is_empty() && !self.ssh.has_key_file() {
            problems.push("no SSH key: give --identity KEY, or set provision.ssh_private_key_file on the hub".into());
        }
        if !r.private_key.is_empty() && russh::keys::decode_secret_key(&r.private_key, None).is_err() {
            problems.push("the --identity key cannot be read: an unencrypted OpenSSH private key is needed".into());
        }
        if self.fleet.registry().get(&r.name).is_some() {
            problems.push(format!("a server named {} exists already", r.name));
        }
        if !problems.is_empty() {
            return Err(HubError::Invalid(problems.join("; ")));
        }
        let params: BTreeMap<String, String> = [
            ("user", r.user.clone()),
            ("host", r.host.clone()),
            ("port", r.port.to_string()),
            ("known_hosts", r.known_hosts.clone()),
            ("fingerprint", r.fingerprint.clone()),
            ("customer", r.customer.clone()),
            ("plan", r.plan.clone()),
            ("name", r.name.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let record = ServerRecord {
            name: r.name.clone(),
            customer: r.customer.clone(),
            plan: r.plan.clone(),
            ..Default::default()
        };
        let mut job = self.new_job(JobKind::EnrollSsh, &record, by, 0, params);
        job.params.remove("server");
        let before = (!r.private_key.is_empty()).then(|| self.ssh.hold_key(&r.name, r.private_key.clone()));
        let submitted = self.submit(job, by).await;
        if submitted.is_err() {
            // Refused: the key of another request for this server (if any) stays as it was.
            match before {
                Some(Some(previous)) => drop(self.ssh.hold_key(&r.name, previous)),
                Some(None) => self.ssh.drop_key(&r.name),
                None => {}
            }
        }
        Ok(submitted?.0)
    }

    pub(super) async fn run_enroll_ssh(&self, ctx: &JobCtx) -> Result<String, JobError> {
        let job = ctx.snapshot().await;
        let p = |k: &str| job.params.get(k).cloned().unwrap_or_default();
        let name = p("name");
        let target = super::ssh::Target {
            user: p("user"),
            host: p("host"),
            port: p("port").parse().unwrap_or(22),
            known_hosts: p("known_hosts"),
            fingerprint: p("fingerprint"),
        };
        let token_req = crate::fleet::tokens::TokenRequest {
            server: name.clone(),
            ttl: Duration::from_secs(3600),
            customer: p("customer"),
            plan: p("plan"),
            labels: [("enrolled-by".to_string(), format!("ssh-job-{}", job.id))].into(),
            replace: false,
        };
        ctx.step("install", || async {
            let token = self
                .identities
                .create_token(token_req.clone(), &job.submitted_by)
                .await
                .map_err(|e| JobError::Fail(e.to_string()))?
                .token;
            self.ssh.install(ctx, job.id, &target, &name, &token).await
        })
        .await?;
        ctx.step("online", || async {
            let deadline = self.clock.now_ms() + 300_000;
            loop {
                let v = self.fleet.registry().get(&name);
                if let Some(v) = &v
                    && !v.record.agent_id.is_empty()
                    && v.liveness == outpost_common::Liveness::Connected
                {
                    return Ok(format!("agent {} online", v.record.agent_version));
                }
                ctx.progress("waiting for the agent to enroll and connect").await?;
                if self.clock.now_ms() > deadline {
                    return Err(JobError::Fail(format!(
                        "{name}'s agent did not come online within 300s (see its log in /var/log/outpost-agentd)"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await?;
        Ok(format!("{name} enrolled over SSH; from now on no SSH"))
    }
}
