//! The app actions: apply a spec, deploy (fetch, render, apply, watch the rollout, roll back on failure),
//! roll back, restart, scale, logs, remove, repo-sync and k3s-status. Each is idempotent under redelivery
//! (the command journal already makes it run at most once; a deploy of what already runs is a no-op that
//! says so) and one app's actions run one at a time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::AsyncBufReadExt;
use futures::StreamExt;
use outpost_common::actions::Action;
use outpost_common::app::{AppSpec, Fit, Footprint, PlanLimits, RepoRoots};
use outpost_proto::v1::{CommandResult, Outcome};
use tokio::sync::watch;

use super::{Ctx, result};
use crate::apps::{AppStore, DeployStatus, Deployment};
use crate::config::AgentConfig;
use crate::k3s::render::{self, Revision};
use crate::k3s::{K3s, Rollout};
use crate::repos::{GitCli, RepoState, Repos};

/// Where an app action tells what it does: the command's output (streamed to the operator), or the log
/// (the agent's own work, such as an auto-deploy); and its deadline and cancel.
pub struct Progress<'a> {
    out: Option<&'a mut super::Output>,
    pub deadline: Instant,
    pub cancel: tokio_util::sync::CancellationToken,
}

impl Progress<'_> {
    pub async fn line(&mut self, s: &str) {
        match self.out.as_mut() {
            Some(o) => o.line(s).await,
            None => tracing::info!(progress = %s),
        }
    }
}

/// Where this server belongs, as the hub says in Welcome.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    pub customer: String,
    pub plan: String,
}

pub struct Apps {
    store: AppStore,
    repos: Repos<GitCli>,
    roots: RepoRoots,
    /// Deploy keys live here (0700) for the length of one git run.
    keys: PathBuf,
    kubeconfig: PathBuf,
    poll: Duration,
    k3s: tokio::sync::Mutex<Option<K3s>>,
    placement: watch::Receiver<Placement>,
    auto_rollback: bool,
    rollout_deadline: Duration,
    /// What each plan allows (the server's plan comes from the hub).
    plans: std::collections::BTreeMap<String, PlanLimits>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The API's last Ready answer, for the health report's K3s state.
    cluster_seen: crate::collect::ClusterSeen,
}

fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}

fn failed(message: impl Into<String>) -> CommandResult {
    result(Outcome::Failed, -1, message)
}

fn refused(message: impl Into<String>) -> CommandResult {
    result(Outcome::Refused, -1, message)
}

macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

impl Apps {
    pub fn new(config: &AgentConfig, store: AppStore, placement: watch::Receiver<Placement>) -> Apps {
        let git = GitCli {
            program: config.git.clone(),
            timeout: Duration::from_secs(300),
            home: config.data_dir.join("git-home"),
        };
        let roots = RepoRoots(config.repo_roots.clone());
        Apps {
            store,
            repos: Repos::new(git, config.data_dir.join("repos"), roots.clone(), config.repo_budget_mib << 20),
            roots,
            keys: config.data_dir.join("keys"),
            kubeconfig: config.kubeconfig.clone(),
            poll: Duration::from_millis(config.rollout_poll_ms),
            k3s: tokio::sync::Mutex::new(None),
            placement,
            auto_rollback: config.auto_rollback,
            plans: config.plans.clone(),
            rollout_deadline: Duration::from_secs(config.rollout_deadline_secs),
            locks: Mutex::default(),
            cluster_seen: Default::default(),
        }
    }

    pub fn store(&self) -> &AppStore {
        &self.store
    }

    async fn k3s(&self) -> Result<K3s, CommandResult> {
        let mut k = self.k3s.lock().await;
        if let Some(k) = k.as_ref() {
            return Ok(k.clone());
        }
        let client = K3s::connect(&self.kubeconfig, self.poll).await.map_err(|e| failed(e.to_string()))?;
        *k = Some(client.clone());
        Ok(client)
    }

    /// The project (the customer's namespace) and the plan's limits.
    fn placement(&self) -> Result<(String, Option<PlanLimits>), CommandResult> {
        let p = self.placement.borrow().clone();
        if !outpost_common::cert::valid_name(&p.customer) || p.customer == "default" || p.customer.starts_with("kube-")
        {
            return Err(refused(format!(
                "this server has no usable customer ({:?}); apps run in the customer's namespace: set it with `hubd token create --customer NAME` (or in the provisioning request)",
                p.customer
            )));
        }
        let plan = match p.plan.as_str() {
            "" => None,
            name => Some(self.plans.get(name).copied().ok_or_else(|| {
                let known: Vec<&str> = self.plans.keys().map(String::as_str).collect();
                refused(format!(
                    "plan {name:?} is not in this agent's plans ({}); add it under [plans] in agentd.toml",
                    known.join(", ")
                ))
            })?),
        };
        Ok((p.customer, plan))
    }

    async fn lock(&self, app: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(app.to_string()).or_default().clone();
        lock.lock_owned().await
    }

    fn app(&self, name: &str) -> Result<(String, AppSpec), CommandResult> {
        match self.store.app(name) {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Err(failed(format!("no app named {name} on this server; apply its spec first (app-apply)"))),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// How `spec` at `replicas` rolls out within the plan beside the project's other deployed apps.
    fn fit(&self, project: &str, plan: &PlanLimits, spec: &AppSpec, replicas: u32) -> Result<Fit, String> {
        let mut others = Footprint::default();
        for r in self.store.apps().unwrap_or_default() {
            if r.project != project || r.spec.name == spec.name || !matches!(self.store.live(&r.spec.name), Ok(Some(_)))
            {
                continue;
            }
            others = others.plus(u64::from(r.spec.replicas.max(1)), r.spec.pod_limits(plan));
        }
        spec.rollout_fit(plan, others, replicas)
    }

    pub async fn execute(&self, action: &Action, operator: &str, ctx: &mut Ctx<'_>) -> CommandResult {
        let _app = match action.app() {
            Some(app) => Some(self.lock(app).await),
            None => None,
        };
        let mut pr = Progress { out: Some(&mut ctx.out), deadline: ctx.deadline, cancel: ctx.cancel.clone() };
        let pr = &mut pr;
        match action {
            Action::AppApply { spec } => self.apply(spec, operator).await,
            Action::AppDeploy { app, git_ref } => self.deploy(app, git_ref.as_deref(), operator, None, pr).await,
            Action::AppRollback { app, to } => self.rollback(app, to.as_deref(), operator, pr).await,
            Action::AppRestart { app } => self.restart(app, pr).await,
            Action::AppScale { app, replicas } => self.scale(app, *replicas, operator, pr).await,
            Action::AppLogs { app, lines, follow } => self.logs(app, *lines, *follow, pr).await,
            Action::AppRemove { app } => self.remove(app, operator).await,
            Action::RepoSync { app } => self.repo_sync(app).await,
            Action::K3sStatus => self.k3s_status(pr).await,
            Action::InstanceExport => self.export(pr).await,
            other => refused(format!("{other:?} is not an app action")),
        }
    }

    /// The managed apps' pods and each project's claimed storage, for usage; nothing without K3s.
    pub async fn usage_inputs(&self) -> (Vec<crate::usage::PodOwner>, HashMap<String, u64>) {
        if !self.kubeconfig.exists() {
            return Default::default();
        }
        let Ok(k3s) = self.k3s().await else { return Default::default() };
        k3s.usage_inputs().await.unwrap_or_else(|error| {
            tracing::debug!(%error, "no usage from the cluster this round");
            Default::default()
        })
    }

    /// Where the cluster's last Ready answer is kept (see [`crate::collect::ClusterSeen`]).
    pub fn cluster_seen(&self) -> crate::collect::ClusterSeen {
        self.cluster_seen.clone()
    }

    /// What runs on this server, for a report: every app with its deployment, rollout and repository, and the
    /// cluster. `None` when there is nothing to tell (no apps and no K3s kubeconfig).
    pub async fn state(&self) -> Option<outpost_proto::v1::AppsState> {
        use outpost_proto::v1 as pb;
        let records = self.store.apps().unwrap_or_default();
        if records.is_empty() && !self.kubeconfig.exists() {
            return None;
        }
        let k3s = self.k3s().await.ok();
        let overview = match &k3s {
            Some(k) => k.overview().await.map_err(|e| e.to_string()),
            None => Err(format!("no Kubernetes API: cannot use {}", self.kubeconfig.display())),
        };
        if let Ok((c, _)) = &overview {
            let mut seen = self.cluster_seen.lock().unwrap_or_else(|p| p.into_inner());
            *seen = c.ready.then(|| {
                let ready = c.nodes.len();
                (std::time::Instant::now(), format!("{}, {ready} node(s) Ready", c.version))
            });
        }
        let (cluster, statuses) = match overview {
            Ok((c, statuses)) => (
                pb::ClusterState {
                    ready: c.ready,
                    version: c.version,
                    nodes: c.nodes.len() as u32,
                    pods_running: c.pods_running,
                    pods_pending: c.pods_pending,
                    pods_failed: c.pods_failed,
                    problems: c
                        .nodes
                        .iter()
                        .flat_map(|n| n.problems.iter().map(move |p| format!("node {}: {p}", n.name)))
                        .chain(c.system_problems.iter().map(|p| format!("system pod {p}")))
                        .collect(),
                },
                statuses,
            ),
            Err(e) => (pb::ClusterState { problems: vec![e], ..Default::default() }, Default::default()),
        };
        let mut apps = Vec::new();
        for r in records {
            let name = r.spec.name.clone();
            let deployments = self.store.deployments(&name).unwrap_or_default();
            let live = deployments.iter().find(|d| d.status == DeployStatus::Available).cloned();
            let newest = deployments.first().cloned();
            let crate::k3s::AppStatus { desired, ready, restarts, problem } = statuses
                .get(&(r.project.clone(), name.clone()))
                .cloned()
                .unwrap_or(crate::k3s::AppStatus { desired: r.spec.replicas, ..Default::default() });
            let newest_status = newest.as_ref().map(|d| d.status);
            let phase = match (newest_status, &live) {
                (None, _) => "not_deployed",
                (Some(DeployStatus::Pending | DeployStatus::RollingOut), _) => "rolling_out",
                (_, None) => "failed",
                (_, Some(_)) if ready >= desired && problem.is_none() => "available",
                (_, Some(_)) => "degraded",
            };
            let last_error = problem
                .or_else(|| {
                    newest
                        .as_ref()
                        .filter(|d| matches!(d.status, DeployStatus::Failed | DeployStatus::RolledBack))
                        .map(|d| format!("{}: {}", d.id, d.reason))
                })
                .unwrap_or_default();
            let repo = self.store.repo(&name).ok().flatten().map(|s| pb::RepoState {
                url: s.url,
                git_ref: s.git_ref,
                head: s.head,
                remote_head: s.remote_head,
                behind: s.behind,
                dirty: s.dirty,
                last_fetch_ms: s.last_fetch_ms,
                last_error: s.last_error,
                note: s.note,
            });
            let history = deployments
                .iter()
                .take(outpost_common::report::MAX_HISTORY)
                .map(|d| pb::DeploymentSummary {
                    id: d.id.clone(),
                    commit: d.commit.clone(),
                    status: serde_json::to_value(d.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    reason: d.reason.clone(),
                    operator: d.operator.clone(),
                    started_ms: d.started_ms,
                    finished_ms: d.finished_ms,
                })
                .collect();
            let live = live.unwrap_or_default();
            apps.push(pb::AppState {
                history,
                name,
                project: r.project,
                desired_replicas: desired,
                ready_replicas: ready,
                restarts,
                phase: phase.into(),
                deployment: live.id,
                commit: live.commit,
                image: live.image,
                last_error,
                repo,
                deployed_ms: live.finished_ms,
            });
        }
        let mut state = pb::AppsState { apps, cluster: Some(cluster) };
        outpost_common::report::conform_apps(&mut state);
        Some(state)
    }

    /// Apps with `auto_deploy` follow their tracked branch: when it moved since the agent last looked, the new
    /// commit is deployed (by "auto-deploy"), with the same rollout watch and automatic rollback as an
    /// operator's deploy. Only apps an operator deployed once are followed, and an operator's deploy of
    /// another ref is not undone: the branch must move. Returns what was deployed.
    pub async fn auto_deploy(&self) -> Vec<String> {
        let Ok((project, _)) = self.placement() else { return Vec::new() };
        let Ok(records) = self.store.apps() else { return Vec::new() };
        let mut deployed = Vec::new();
        for r in records.into_iter().filter(|r| r.project == project && r.spec.auto_deploy) {
            let name = r.spec.name.clone();
            let _app = self.lock(&name).await;
            let (Ok(Some(_live)), Ok((_, spec))) = (self.store.live(&name), self.app(&name)) else { continue };
            let prev = self.store.repo(&name).ok().flatten();
            let Ok(key) = self.deploy_key(&name, &spec) else { continue };
            let ssh = key.as_ref().map(|k| k.ssh_command());
            let state = self.repos.sync(&name, &spec.repo, ssh.as_deref(), prev.as_ref()).await;
            drop(key);
            let _ = self.store.put_repo(&name, &state).await;
            let seen = prev.filter(|p| p.git_ref == spec.repo.git_ref).map(|p| p.remote_head).unwrap_or_default();
            if !state.last_error.is_empty() || seen.is_empty() || state.remote_head == seen {
                continue; // not readable, first look at this branch, or it did not move
            }
            let mut pr = Progress {
                out: None,
                deadline: Instant::now() + self.rollout_deadline + Duration::from_secs(60),
                cancel: tokio_util::sync::CancellationToken::new(),
            };
            tracing::info!(app = %name, from = short(&seen), to = short(&state.remote_head), "tracked branch moved; auto-deploying");
            let r = self.deploy(&name, None, "auto-deploy", None, &mut pr).await;
            deployed.push(format!("{name}: {}", r.message));
        }
        deployed
    }

    /// Desired state again: every app with a live deployment is compared with the cluster, and what drifted
    /// (an object deleted or edited by hand) is applied again and recorded. Returns what was repaired.
    pub async fn reconcile(&self) -> Vec<String> {
        let Ok((project, plan)) = self.placement() else { return Vec::new() };
        let Ok(records) = self.store.apps() else { return Vec::new() };
        let mut repaired = Vec::new();
        // One read of what Outpost manages in the project, for every app's check.
        let mut managed: Option<crate::k3s::Managed> = None;
        for r in records.into_iter().filter(|r| r.project == project) {
            let name = r.spec.name.clone();
            let _app = self.lock(&name).await;
            let (Ok(Some(live)), Ok((_, spec))) = (self.store.live(&name), self.app(&name)) else { continue };
            let Ok(k3s) = self.k3s().await else { return repaired };
            if managed.is_none() {
                managed = match k3s.managed(&project).await {
                    Ok(m) => Some(m),
                    Err(error) => {
                        tracing::warn!(%error, "cannot check for drift");
                        return repaired;
                    }
                };
            }
            let one_at_a_time =
                plan.and_then(|plan| self.fit(&project, &plan, &spec, spec.replicas).ok()).is_some_and(|f| !f.surge());
            let rev = Revision {
                deployment_id: live.id.clone(),
                commit: live.commit.clone(),
                one_at_a_time,
                ..Default::default()
            };
            let m = render::app(&project, &spec, &rev);
            let found = managed.as_ref().map(|x| x.drift(&name, &m)).unwrap_or_default();
            if found.is_empty() {
                continue;
            }
            match k3s.apply_app(&project, &name, &m, &render::app_policy(&project, &spec)).await {
                Ok(()) => {
                    let what = format!("drift repaired: {}", found.join("; "));
                    tracing::warn!(app = %name, %what, "managed objects changed outside Outpost; applied again");
                    let _ = self.store.note(&name, what.clone()).await;
                    repaired.push(format!("{name}: {what}"));
                }
                Err(error) => tracing::error!(app = %name, %error, "cannot repair drift"),
            }
        }
        repaired
    }

    async fn apply(&self, text: &str, operator: &str) -> CommandResult {
        let (project, plan) = attempt!(self.placement());
        let spec = attempt!(AppSpec::parse(text, plan, &self.roots).map_err(|e| refused(e.to_string())));
        let _app = self.lock(&spec.name).await;
        match self.store.put_app(&project, &spec, operator).await {
            Ok(true) => result(
                Outcome::Succeeded,
                0,
                format!("{}: spec stored in project {project}; deploy it with app-deploy", spec.name),
            ),
            Ok(false) => result(
                Outcome::Succeeded,
                0,
                format!("{}: the same spec is already stored; nothing changed", spec.name),
            ),
            Err(e) => failed(e.to_string()),
        }
    }

    /// Fetches `git_ref` (or the tracked ref), renders, applies and watches the rollout.
    async fn deploy(
        &self,
        name: &str,
        git_ref: Option<&str>,
        operator: &str,
        note: Option<String>,
        pr: &mut Progress<'_>,
    ) -> CommandResult {
        let (project, plan) = attempt!(self.placement());
        let (_, mut spec) = attempt!(self.app(name));
        let mut repo = spec.repo.clone();
        if let Some(r) = git_ref {
            repo.git_ref = r.to_string();
        }
        let key = attempt!(self.deploy_key(name, &spec));
        let prev = self.store.repo(name).ok().flatten();
        let ssh = key.as_ref().map(|k| k.ssh_command());
        let state = self.repos.sync(name, &repo, ssh.as_deref(), prev.as_ref()).await;
        drop(key);
        if let Err(e) = self.store.put_repo(name, &state).await {
            return failed(e.to_string());
        }
        if !state.last_error.is_empty() {
            return failed(format!("{name}: {}", state.last_error));
        }
        pr.line(&format!("fetched {} of {} at {}", repo.git_ref, repo.url, short(&state.head))).await;
        if !state.note.is_empty() {
            pr.line(&state.note).await;
        }
        // The repository's own outpost.toml, under the operator's spec.
        let own = self.repos.path_of(name).join(&spec.repo.path).join("outpost.toml");
        if let Ok(text) = std::fs::read_to_string(&own) {
            let operator_spec = toml::to_string(&spec).expect("specs serialise");
            spec = attempt!(
                AppSpec::merged(&text, &operator_spec, plan, &self.roots)
                    .map_err(|e| failed(format!("{name}: the repository's outpost.toml: {e}")))
            );
            pr.line("merged the repository's outpost.toml under the stored spec").await;
        }
        if let Err(e) = spec.validate(plan, &self.roots) {
            return refused(format!("{name}: {e}"));
        }
        let k3s = attempt!(self.k3s().await);
        let digest =
            render::app(&project, &spec, &Revision { commit: state.head.clone(), ..Default::default() }).digest();
        if let Ok(Some(live)) = self.store.live(name)
            && live.commit == state.head
            && live.manifest_digest == digest
            && note.is_none()
        {
            return result(
                Outcome::Succeeded,
                0,
                format!(
                    "{}: {} already runs commit {} with this spec; nothing to do",
                    name,
                    live.id,
                    short(&live.commit)
                ),
            );
        }
        // A rollout that cannot fit the plan is refused here, in words, before anything changes.
        if let Some(plan) = plan
            && let Err(why) = self.fit(&project, &plan, &spec, spec.replicas)
        {
            return refused(format!("{name}: {why}"));
        }
        let d = Deployment {
            app: name.into(),
            commit: state.head.clone(),
            image: spec.image_for(&state.head),
            manifest_digest: digest,
            operator: note.clone().unwrap_or_else(|| operator.to_string()),
            ..Default::default()
        };
        let d = attempt!(self.store.begin_deployment(d).await.map_err(|e| failed(e.to_string())));
        pr.line(&format!("deployment {}: image {}", d.id, d.image)).await;
        let rev = Revision { deployment_id: d.id.clone(), commit: d.commit.clone(), ..Default::default() };
        let _ = self.store.set_status(&d.id, DeployStatus::RollingOut, "").await;
        match self.roll(&k3s, &project, plan, &spec, &rev, pr).await {
            Ok(()) => {
                let _ = self.store.set_status(&d.id, DeployStatus::Available, "").await;
                result(
                    Outcome::Succeeded,
                    0,
                    format!("{name}: {} is live (commit {}, {} replica(s))", d.id, short(&d.commit), spec.replicas),
                )
            }
            Err(why) => self.failed_rollout(&k3s, &project, plan, &spec, &d, why, pr).await,
        }
    }

    /// Applies the project and the app at `rev` and watches the rollout. `Err` is why it failed.
    async fn roll(
        &self,
        k3s: &K3s,
        project: &str,
        plan: Option<PlanLimits>,
        spec: &AppSpec,
        rev: &Revision,
        pr: &mut Progress<'_>,
    ) -> Result<(), String> {
        let mut rev = rev.clone();
        if let Some(plan) = plan {
            match self.fit(project, &plan, spec, rev.replicas.unwrap_or(spec.replicas))? {
                Fit::Surge => {}
                Fit::OneAtATime(why) => {
                    pr.line(&format!("no surge pod: {why}")).await;
                    rev.one_at_a_time = true;
                }
            }
            k3s.apply_project(&render::project(project, &plan)).await.map_err(|e| e.to_string())?;
        }
        let m = render::app(project, spec, &rev);
        k3s.apply_app(project, &spec.name, &m, &render::app_policy(project, spec)).await.map_err(|e| e.to_string())?;
        pr.line("applied; watching the rollout").await;
        let left = pr.deadline.saturating_duration_since(Instant::now()).saturating_sub(Duration::from_secs(5));
        let deadline = left.min(self.rollout_deadline);
        let watched = tokio::select! {
            r = k3s.rollout(project, &spec.name, &rev.deployment_id, deadline) => r.map_err(|e| e.to_string())?,
            _ = pr.cancel.cancelled() => return Err("cancelled while the rollout was watched; the cluster keeps rolling it out".into()),
        };
        match watched {
            Rollout::Available => Ok(()),
            Rollout::Failed(why) => Err(why),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn failed_rollout(
        &self,
        k3s: &K3s,
        project: &str,
        plan: Option<PlanLimits>,
        spec: &AppSpec,
        d: &Deployment,
        why: String,
        pr: &mut Progress<'_>,
    ) -> CommandResult {
        pr.line(&format!("rollout of {} failed: {why}", d.id)).await;
        let previous = self.store.live(&spec.name).ok().flatten();
        match previous.filter(|_| self.auto_rollback) {
            Some(p) => {
                pr.line(&format!("restoring {} (commit {})", p.id, short(&p.commit))).await;
                let rev = Revision { deployment_id: p.id.clone(), commit: p.commit.clone(), ..Default::default() };
                let restored = self.roll(k3s, project, plan, spec, &rev, pr).await;
                let (status, message) = match &restored {
                    Ok(()) => (DeployStatus::RolledBack, format!("{why}; {} restored", p.id)),
                    Err(again) => (DeployStatus::Failed, format!("{why}; restoring {} failed too: {again}", p.id)),
                };
                let _ = self.store.set_status(&d.id, status, &message).await;
                if restored.is_ok() {
                    let _ = self.store.set_status(&p.id, DeployStatus::Available, "restored").await;
                }
                failed(format!("{}: {} failed ({message})", spec.name, d.id))
            }
            None => {
                let _ = self.store.set_status(&d.id, DeployStatus::Failed, &why).await;
                failed(format!("{}: {} failed: {why}", spec.name, d.id))
            }
        }
    }

    async fn rollback(&self, name: &str, to: Option<&str>, operator: &str, pr: &mut Progress<'_>) -> CommandResult {
        let all = attempt!(self.store.deployments(name).map_err(|e| failed(e.to_string())));
        let target = match to {
            Some(id) => all
                .iter()
                .find(|d| d.id == id)
                .cloned()
                .ok_or_else(|| failed(format!("{name} has no deployment {id}; `outpost apps` lists them"))),
            None => {
                let live = all.iter().position(|d| d.status == DeployStatus::Available);
                live.and_then(|i| {
                    all[i + 1..].iter().find(|d| matches!(d.status, DeployStatus::Superseded | DeployStatus::Available))
                })
                .cloned()
                .ok_or_else(|| failed(format!("{name} has no earlier good deployment to roll back to")))
            }
        };
        let target = attempt!(target);
        pr.line(&format!("rolling back to {} (commit {})", target.id, short(&target.commit))).await;
        self.deploy(name, Some(&target.commit), operator, Some(format!("{operator}: rollback to {}", target.id)), pr)
            .await
    }

    /// Re-applies what runs with `change` made to it (a restart stamp, a replica count).
    async fn reapply(&self, name: &str, spec: &AppSpec, rev: Revision, pr: &mut Progress<'_>) -> CommandResult {
        let (project, plan) = attempt!(self.placement());
        let k3s = attempt!(self.k3s().await);
        match self.roll(&k3s, &project, plan, spec, &rev, pr).await {
            Ok(()) => result(
                Outcome::Succeeded,
                0,
                format!("{name}: rolled out ({} replica(s))", rev.replicas.unwrap_or(spec.replicas)),
            ),
            Err(why) => failed(format!("{name}: {why}")),
        }
    }

    /// The app's deploy key on disk (0600) for one git run, when its spec has one.
    fn deploy_key(&self, name: &str, spec: &AppSpec) -> Result<Option<crate::repos::DeployKey>, CommandResult> {
        let Some(secret) = &spec.repo.deploy_key else { return Ok(None) };
        let key = spec.secrets.get(secret).ok_or_else(|| {
            refused(format!("{name}: repo.deploy_key names the secret {secret}, which the spec does not have"))
        })?;
        let hosts = spec.repo.known_hosts.as_deref().unwrap_or_default();
        crate::repos::DeployKey::write(&self.keys.join(name), key, hosts)
            .map(Some)
            .map_err(|e| failed(format!("{name}: cannot write the deploy key for git: {e}")))
    }

    fn live(&self, name: &str) -> Result<Deployment, CommandResult> {
        match self.store.live(name) {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(failed(format!("{name} has no live deployment; deploy it first (app-deploy)"))),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    async fn restart(&self, name: &str, pr: &mut Progress<'_>) -> CommandResult {
        let (_, spec) = attempt!(self.app(name));
        let live = attempt!(self.live(name));
        let rev = Revision {
            deployment_id: live.id,
            commit: live.commit,
            restarted_at: Some(outpost_common::when::stamp(outpost_common::now_ms())),
            ..Default::default()
        };
        self.reapply(name, &spec, rev, pr).await
    }

    async fn scale(&self, name: &str, replicas: u32, operator: &str, pr: &mut Progress<'_>) -> CommandResult {
        let (project, plan) = attempt!(self.placement());
        let (_, mut spec) = attempt!(self.app(name));
        let live = attempt!(self.live(name));
        spec.replicas = replicas;
        if let Err(e) = spec.validate(plan, &self.roots) {
            return refused(format!("{name}: {e}"));
        }
        if let Some(plan) = plan
            && let Err(why) = self.fit(&project, &plan, &spec, replicas)
        {
            return refused(format!("{name}: {why}"));
        }
        if let Err(e) = self.store.put_app(&project, &spec, operator).await {
            return failed(e.to_string());
        }
        self.reapply(name, &spec, Revision { deployment_id: live.id, commit: live.commit, ..Default::default() }, pr)
            .await
    }

    async fn logs(&self, name: &str, lines: u32, follow: bool, pr: &mut Progress<'_>) -> CommandResult {
        let (project, _) = attempt!(self.placement());
        let k3s = attempt!(self.k3s().await);
        let pod = match k3s.app_pod(&project, name).await {
            Ok(Some(p)) => p,
            Ok(None) => return failed(format!("{name} has no pods")),
            Err(e) => return failed(e.to_string()),
        };
        let reader =
            attempt!(k3s.logs(&project, &pod, i64::from(lines), follow).await.map_err(|e| failed(e.to_string())));
        let mut lines_in = reader.lines();
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = pr.cancel.cancelled() => return result(Outcome::Cancelled, -1, "cancelled"),
                _ = tokio::time::sleep_until(pr.deadline.into()) => return result(Outcome::Succeeded, 0, format!("{n} line(s) of {pod}; followed until the deadline")),
                l = lines_in.next() => match l {
                    Some(Ok(l)) => { pr.line(&l).await; n += 1; }
                    Some(Err(e)) => return failed(format!("reading the log of {pod}: {e}")),
                    None => return result(Outcome::Succeeded, 0, format!("{n} line(s) of {pod}")),
                },
            }
        }
    }

    async fn remove(&self, name: &str, operator: &str) -> CommandResult {
        let (project, _) = attempt!(self.placement());
        if matches!(self.store.app_record(name), Ok(None)) {
            return result(Outcome::Succeeded, 0, format!("{name}: no such app on this server; nothing to remove"));
        }
        let k3s = attempt!(self.k3s().await);
        let n = attempt!(k3s.prune_app(&project, name).await.map_err(|e| failed(e.to_string())));
        if let Err(e) = self.store.remove_app(name, operator).await {
            return failed(e.to_string());
        }
        let _ = std::fs::remove_dir_all(self.repos.path_of(name));
        result(Outcome::Succeeded, 0, format!("{name}: removed ({n} object(s) deleted from the cluster)"))
    }

    async fn repo_sync(&self, name: &str) -> CommandResult {
        let (_, spec) = attempt!(self.app(name));
        let prev = self.store.repo(name).ok().flatten();
        let key = attempt!(self.deploy_key(name, &spec));
        let ssh = key.as_ref().map(|k| k.ssh_command());
        let state: RepoState = self.repos.sync(name, &spec.repo, ssh.as_deref(), prev.as_ref()).await;
        drop(key);
        if let Err(e) = self.store.put_repo(name, &state).await {
            return failed(e.to_string());
        }
        if !state.last_error.is_empty() {
            return failed(format!("{name}: {}", state.last_error));
        }
        let mut message = format!("{name}: {} at {}", spec.repo.git_ref, short(&state.head));
        if !state.note.is_empty() {
            message.push_str(&format!("; {}", state.note));
        }
        result(Outcome::Succeeded, 0, message)
    }

    /// Every app as data, one JSON document on one line: the specs with their secrets (to apply them again
    /// elsewhere), the deployments and the recent activity. What a deprovision archives at the hub.
    async fn export(&self, pr: &mut Progress<'_>) -> CommandResult {
        let records = attempt!(self.store.apps().map_err(|e| failed(e.to_string())));
        let mut apps = Vec::new();
        for r in records {
            let (project, spec) = attempt!(self.app(&r.spec.name));
            let toml = attempt!(toml::to_string(&spec).map_err(|e| failed(format!("{}: {e}", spec.name))));
            let deployments = attempt!(self.store.deployments(&spec.name).map_err(|e| failed(e.to_string())));
            let live = attempt!(self.store.live(&spec.name).map_err(|e| failed(e.to_string())));
            apps.push(serde_json::json!({
                "name": spec.name, "project": project, "spec": toml,
                "live": live.map(|d| serde_json::json!({"id": d.id, "commit": d.commit})),
                "deployments": deployments,
            }));
        }
        let activity = attempt!(self.store.recent_activity(1000).map_err(|e| failed(e.to_string())));
        let doc = serde_json::json!({
            "format": "outpost-instance-export/1",
            "exported_ms": outpost_common::now_ms(),
            "apps": apps,
            "activity": activity,
        })
        .to_string();
        let cap = outpost_common::actions::DEFAULT_OUTPUT_CAP as usize;
        if doc.len() + 1 > cap {
            return failed(format!("the export is {} bytes, over the {cap}-byte output limit", doc.len()));
        }
        pr.line(&doc).await;
        result(Outcome::Succeeded, 0, format!("exported {} app(s), {} bytes", apps.len(), doc.len()))
    }

    async fn k3s_status(&self, pr: &mut Progress<'_>) -> CommandResult {
        let k3s = attempt!(self.k3s().await);
        let s = attempt!(k3s.state().await.map_err(|e| failed(e.to_string())));
        pr.line(&format!("Kubernetes {}", s.version)).await;
        for n in &s.nodes {
            pr.line(&format!(
                "node {}: {} ({}){}",
                n.name,
                if n.ready { "Ready" } else { "NOT READY" },
                n.kubelet_version,
                if n.problems.is_empty() { String::new() } else { format!(": {}", n.problems.join("; ")) }
            ))
            .await;
        }
        pr.line(&format!("pods: {} running, {} pending, {} failed", s.pods_running, s.pods_pending, s.pods_failed))
            .await;
        for p in &s.system_problems {
            pr.line(&format!("system pod {p}")).await;
        }
        if s.ready && s.system_problems.is_empty() {
            result(Outcome::Succeeded, 0, format!("K3s {} ready", s.version))
        } else {
            failed(format!(
                "K3s {}: {}",
                s.version,
                if s.ready { "system pods unhealthy" } else { "a node is not Ready" }
            ))
        }
    }
}
