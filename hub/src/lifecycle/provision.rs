//! The provision job: a record and a join token, cloud-init user-data, a Hetzner server, and waiting until
//! its agent enrolled and reports K3s Ready. Steps: `register`, `cloud-setup`, `create`, `boot`, `ready`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::artifacts::Artifacts;
use super::cloud::{ActionState, Cloud, CloudError, NewServer};
use super::config::{PlanConfig, ProvisionConfig, valid_dns_label};
use super::job::{Clock, JobCtx, JobError};
use super::userdata::UserData;
use crate::error::HubError;
use crate::fleet::Fleet;
use crate::fleet::identities::Identities;
use crate::fleet::tokens::TokenRequest;
use crate::runtime::Runtime;
use crate::store::{AuditEntry, HubStore, Kind};
use outpost_common::liveness::Liveness;

/// The label every server this hub creates carries, and the one naming its record.
pub const MANAGED: (&str, &str) = ("managed-by", "outpost");
pub const ID_LABEL: &str = "outpost-id";

pub struct Provisioner {
    cloud: Arc<dyn Cloud>,
    config: ProvisionConfig,
    artifacts: Arc<Artifacts>,
    /// The hub's URL (`https://host:port`) and its CA, for the user-data.
    advertise: String,
    pki: Arc<crate::pki::rotation::Pki>,
    /// The release public keys new agents pin (`[releases] public_keys`).
    release_keys: Vec<String>,
    clock: Clock,
}

/// What a new server is told of its hub: where it is, and its CA (the pin comes from it).
pub struct HubParts {
    pub advertise: String,
    /// The fleet CA: new servers trust the CAs trusted when their user-data is written.
    pub pki: Arc<crate::pki::rotation::Pki>,
    /// The release public keys new agents pin, as `[releases] public_keys` gives them.
    pub release_keys: Vec<String>,
}

impl Provisioner {
    pub fn new(
        cloud: Arc<dyn Cloud>,
        config: ProvisionConfig,
        artifacts: Arc<Artifacts>,
        hub: HubParts,
        clock: Clock,
    ) -> Provisioner {
        let HubParts { advertise, pki, release_keys } = hub;
        Provisioner { cloud, config, artifacts, advertise, pki, release_keys, clock }
    }

    /// Checks a request; returns its plan.
    pub fn check(&self, customer: &str, plan: &str, location: &str, name: &str) -> Result<&PlanConfig, HubError> {
        let mut problems = Vec::new();
        if !valid_dns_label(customer) {
            problems.push(format!(
                "customer {} is not a DNS label (1-63 of a-z, 0-9 and '-', not starting or ending with '-')",
                outpost_common::text::excerpt(customer, 64)
            ));
        }
        if !valid_dns_label(name) {
            problems.push(format!(
                "name {} is not a DNS label (1-63 of a-z, 0-9 and '-')",
                outpost_common::text::excerpt(name, 64)
            ));
        }
        let found = self.config.plans.get(plan);
        match found {
            None => problems.push(format!(
                "unknown plan {}; plans: {}",
                outpost_common::text::excerpt(plan, 64),
                self.config.plans.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Some(p) if !location.is_empty() && !p.locations.iter().any(|l| l == location) => problems.push(format!(
                "location {} is not one of plan {plan}'s locations ({})",
                outpost_common::text::excerpt(location, 64),
                p.locations.join(", ")
            )),
            Some(p) => {
                if self.artifacts.get(&self.config.agent_version, &p.arch).is_none() {
                    problems.push(format!(
                        "this hub has no agentd {} for {} to give new servers (it has: {}); put agentd-{}-{} into the artifacts directory and restart hubd",
                        self.config.agent_version,
                        p.arch,
                        self.artifacts.known(),
                        self.config.agent_version,
                        p.arch
                    ));
                }
            }
        }
        match (problems.is_empty(), found) {
            (true, Some(p)) => Ok(p),
            _ => Err(HubError::Invalid(problems.join("; "))),
        }
    }

    /// The queue priority of `plan` (0 for a plan not in the config).
    pub fn plan_priority(&self, plan: &str) -> u8 {
        self.config.plans.get(plan).map_or(0, |p| p.priority)
    }

    /// Deletes the cloud server of record `name`, found by its label (none: nothing to do).
    pub async fn delete_cloud_server(&self, name: &str) -> Result<String, JobError> {
        match self.find(name).await? {
            Some(s) => {
                self.cloud.delete_server(s.id).await?;
                Ok(format!("deleted cloud server {} ({})", s.id, s.name))
            }
            None => Ok("no cloud server carries its label".into()),
        }
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.config.poll_ms)
    }

    /// Runs (or resumes) a provision.
    pub async fn run(&self, ctx: &JobCtx, identities: &Identities, fleet: &Fleet) -> Result<String, JobError> {
        let job = ctx.snapshot().await;
        let p = |k: &str| job.params.get(k).cloned().unwrap_or_default();
        let (name, customer, plan_name) = (p("name"), p("customer"), p("plan"));
        let plan = self
            .config
            .plans
            .get(&plan_name)
            .ok_or_else(|| JobError::Fail(format!("plan {plan_name} is not in hubd's config any more")))?
            .clone();
        let labels: BTreeMap<String, String> = [
            (MANAGED.0.to_string(), MANAGED.1.to_string()),
            (ID_LABEL.to_string(), name.clone()),
            ("customer".to_string(), customer.clone()),
            ("plan".to_string(), plan_name.clone()),
        ]
        .into();
        let ttl = Duration::from_secs(self.config.ready_timeout_secs);
        let token_req = TokenRequest {
            server: name.clone(),
            ttl,
            customer: customer.clone(),
            plan: plan_name.clone(),
            labels: [("provisioned-by".to_string(), format!("job-{}", job.id))].into(),
            replace: false,
        };
        // The token's secret lives only in this attempt's memory (and the user-data); a resumed job that
        // still has to create the server issues a new one (the old one stops working).
        let mut secret: Option<String> = None;
        ctx.step("register", || async {
            let created = identities.create_token(token_req.clone(), &job.submitted_by).await.map_err(hub_err)?;
            secret = Some(created.token);
            Ok(format!("server record {name} and a single-use join token (valid {}s)", ttl.as_secs()))
        })
        .await?;

        ctx.step("cloud-setup", || async {
            let key = self.cloud.ensure_ssh_key(&self.config.ssh_key_name, &self.config.ssh_public_key).await?;
            let fw = self.cloud.ensure_firewall(&self.config.firewall_name).await?;
            ctx.set_fact("firewall", fw.to_string()).await?;
            Ok(format!(
                "break-glass SSH key {key}; firewall {} (id {fw}) admits TCP 80 and 443 only",
                self.config.firewall_name
            ))
        })
        .await?;

        ctx.step("create", || async {
            // Look before creating: an earlier attempt may have created it and died before recording it.
            if let Some(s) = self.find(&name).await? {
                ctx.set_fact("cloud_id", s.id.to_string()).await?;
                return Ok(format!("found server {} (id {}) created by an earlier attempt", s.name, s.id));
            }
            let token = match secret.take() {
                Some(t) => t,
                None => identities.create_token(token_req.clone(), &job.submitted_by).await.map_err(hub_err)?.token,
            };
            let artifact = self.artifacts.get(&self.config.agent_version, &plan.arch).ok_or_else(|| {
                JobError::Fail(format!("no agentd {} for {} on this hub", self.config.agent_version, plan.arch))
            })?;
            let url = format!("{}{}", self.advertise, Artifacts::url_path(&self.config.agent_version, &plan.arch));
            let ca_pem = self.pki.keys().trust_pem();
            let user_data = UserData {
                server: &name,
                job: job.id,
                token: &token,
                ca_pem: &ca_pem,
                release_keys: &self.release_keys,
                k3s_version: &self.config.k3s_version,
                k3s_installer: &self.config.k3s_installer,
                k3s_flags: &plan.k3s_flags,
                agentd_url: &url,
                agentd_sha256: &artifact.sha256,
            }
            .render()
            .map_err(JobError::Fail)?;
            let firewall: i64 = ctx.fact("firewall").await.and_then(|f| f.parse().ok()).unwrap_or_default();
            let first = job.params.get("location").cloned().unwrap_or_default();
            // The asked location first, then the plan's others: a type sold out in one moves on.
            let mut locations = vec![first.clone()];
            locations.extend(plan.locations.iter().filter(|l| **l != first).cloned());
            let mut sold_out = Vec::new();
            for location in locations {
                let new = NewServer {
                    name: name.clone(),
                    server_type: plan.server_type.clone(),
                    image: self.config.image.clone(),
                    location: location.clone(),
                    labels: labels.clone(),
                    user_data: user_data.clone(),
                    ssh_key: self.config.ssh_key_name.clone(),
                    firewall,
                };
                ctx.progress(format!("creating {} in {location}", plan.server_type)).await?;
                match self.cloud.create_server(&new).await {
                    Ok((s, action)) => {
                        ctx.set_fact("cloud_id", s.id.to_string()).await?;
                        ctx.set_fact("action", action.to_string()).await?;
                        ctx.set_fact("location", location.clone()).await?;
                        return Ok(format!("server {} (id {}, {}) in {location}", s.name, s.id, plan.server_type));
                    }
                    Err(CloudError::ResourceUnavailable(m)) => sold_out.push(format!("{location}: {m}")),
                    Err(CloudError::Uniqueness(m)) => {
                        // Created a moment ago by this job (a lost answer), or a stranger's server of that name.
                        if let Some(s) = self.find(&name).await? {
                            ctx.set_fact("cloud_id", s.id.to_string()).await?;
                            return Ok(format!("found server {} (id {}) after a lost answer", s.name, s.id));
                        }
                        return Err(JobError::Fail(format!(
                            "the cloud project has a server called {name} that this hub did not create ({m}); rename or delete it, or provision with another --name"
                        )));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(JobError::Retry(format!(
                "server type {} is unavailable in every location of plan {plan_name}: {}",
                plan.server_type,
                sold_out.join("; ")
            )))
        })
        .await?;

        let deadline = job.created_ms + (self.config.ready_timeout_secs * 1000) as i64;
        ctx.step("boot", || async {
            let cloud_id: i64 = ctx.fact("cloud_id").await.and_then(|v| v.parse().ok()).unwrap_or_default();
            loop {
                match ctx.fact("action").await.and_then(|a| a.parse::<i64>().ok()) {
                    Some(action) => match self.cloud.action(action).await? {
                        ActionState::Succeeded => return Ok(format!("server {cloud_id} is running")),
                        ActionState::Failed(why) => {
                            return Err(JobError::Fail(format!("creating server {cloud_id} failed: {why}")));
                        }
                        ActionState::Running(pct) => ctx.progress(format!("cloud creating the server: {pct}%")).await?,
                    },
                    None => match self.find(&name).await? {
                        Some(s) if s.status == "running" => return Ok(format!("server {cloud_id} is running")),
                        Some(s) => ctx.progress(format!("cloud server status: {}", s.status)).await?,
                        None => return Err(JobError::Retry(format!("server {name} vanished from the cloud"))),
                    },
                }
                if self.clock.now_ms() > deadline {
                    return Err(JobError::Fail(format!(
                        "server {cloud_id} was not running within {}s",
                        self.config.ready_timeout_secs
                    )));
                }
                tokio::time::sleep(self.poll()).await;
            }
        })
        .await?;

        ctx.step("ready", || async {
            loop {
                let view = fleet.registry().get(&name);
                let (enrolled, connected, k3s) = match &view {
                    Some(v) => (
                        !v.record.agent_id.is_empty(),
                        v.liveness == Liveness::Connected,
                        v.apps.as_ref().and_then(|a| a.cluster.as_ref()).map(|c| (c.ready, c.problems.join("; "))),
                    ),
                    None => (false, false, None),
                };
                match (enrolled, connected, &k3s) {
                    (true, true, Some((true, _))) => {
                        let v = view.expect("seen above");
                        return Ok(format!("agent {} online; K3s Ready", v.record.agent_version));
                    }
                    (false, _, _) => ctx.progress("waiting for the agent to enroll").await?,
                    (true, false, _) => ctx.progress("agent enrolled; waiting for its stream").await?,
                    (true, true, None) => ctx.progress("agent online; waiting for its first cluster report").await?,
                    (true, true, Some((false, why))) => ctx.progress(format!("agent online; K3s not Ready: {why}")).await?,
                }
                if self.clock.now_ms() > deadline {
                    let status = match self.find(&name).await {
                        Ok(Some(s)) => format!("cloud status {}", s.status),
                        Ok(None) => "not in the cloud".into(),
                        Err(e) => format!("cloud status unknown ({e})"),
                    };
                    let seen = match (&view, enrolled) {
                        (_, false) => "the agent never enrolled (check /var/log/cloud-init-output.log on the server through the break-glass key)".to_string(),
                        (Some(v), true) => format!(
                            "the agent enrolled ({:?}); K3s: {}",
                            v.liveness,
                            k3s.as_ref().map_or("no cluster report".to_string(), |(r, p)| if *r { "Ready".into() } else { format!("not Ready: {p}") })
                        ),
                        (None, true) => "the record is gone".into(),
                    };
                    return Err(JobError::Fail(format!(
                        "server {name} was not ready within {}s: {status}; {seen}",
                        self.config.ready_timeout_secs
                    )));
                }
                tokio::time::sleep(self.poll()).await;
            }
        })
        .await?;
        Ok(format!("{name} is online"))
    }

    /// The cloud server of record `name`, by its label.
    async fn find(&self, name: &str) -> Result<Option<super::cloud::CloudServer>, JobError> {
        let selector = format!("{}={},{ID_LABEL}={name}", MANAGED.0, MANAGED.1);
        // Checked here too, whatever `Cloud` is: a server is adopted or deleted only when its own labels
        // say it is this record's.
        // A server the cloud is already deleting is going: never adopted, never deleted twice.
        Ok(self.cloud.servers(&selector).await?.into_iter().filter(|s| s.status != "deleting").find(|s| {
            s.labels.get(ID_LABEL).is_some_and(|id| id == name)
                && s.labels.get(MANAGED.0).is_some_and(|m| m == MANAGED.1)
        }))
    }

    /// Undoes a provision that failed or was cancelled: deletes the cloud server (found by label, so one
    /// created by a lost answer goes too), revokes an enrolled agent, removes the record and its token.
    pub async fn undo(&self, ctx: &JobCtx, identities: &Identities, fleet: &Fleet) -> Result<String, String> {
        let job = ctx.snapshot().await;
        let name = job.target.clone();
        let mut done = Vec::new();
        let found = self.find(&name).await.map_err(|e| e.to_string())?;
        if let Some(s) = found {
            self.cloud.delete_server(s.id).await.map_err(|e| e.to_string())?;
            done.push(format!("deleted cloud server {}", s.id));
        }
        let _lock = fleet.lock(&name).await;
        if let Some(view) = fleet.registry().get(&name) {
            if !view.record.agent_id.is_empty() && view.record.revoked_ms == 0 {
                drop(_lock);
                identities.revoke_server(&name, "provisioner").await.map_err(|e| e.to_string())?;
                done.push("revoked its agent".into());
            }
            ctx.store.remove_server(&name).await.map_err(|e| e.to_string())?;
            fleet.registry().remove(&name);
            done.push("removed its record and token".into());
        }
        Ok(done.join(", "))
    }

    /// Compares servers carrying this hub's labels with the records every `reap_secs`: an orphan (no record,
    /// no open job) is reported, or deleted with `reap_delete`.
    pub fn spawn_reaper(self: &Arc<Self>, rt: &Runtime, store: Arc<dyn HubStore>) {
        if self.config.reap_secs == 0 {
            return;
        }
        let me = self.clone();
        let fleet_names = store.clone();
        rt.every_once("orphan check", Duration::from_secs(self.config.reap_secs), move || {
            let (me, store) = (me.clone(), fleet_names.clone());
            async move {
                if let Err(error) = me.reap(&*store).await {
                    tracing::warn!(%error, "orphan check failed");
                }
            }
        });
    }

    /// One orphan check; returns the orphans' cloud ids.
    pub async fn reap(&self, store: &dyn HubStore) -> Result<Vec<i64>, String> {
        let selector = format!("{}={}", MANAGED.0, MANAGED.1);
        let servers = self.cloud.servers(&selector).await.map_err(|e| e.to_string())?;
        let records: std::collections::BTreeSet<String> =
            store.servers().await.map_err(|e| e.to_string())?.into_iter().map(|s| s.name).collect();
        let open: std::collections::BTreeSet<String> = store
            .jobs(0)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|j| !j.state.is_final())
            .map(|j| j.target)
            .collect();
        let mut orphans = Vec::new();
        for s in servers {
            let id = s.labels.get(ID_LABEL).cloned().unwrap_or_default();
            if s.labels.get(MANAGED.0).is_none_or(|m| m != MANAGED.1) || id.is_empty() {
                continue; // not ours, whatever the answer says
            }
            if records.contains(&id) || open.contains(&id) || s.status == "deleting" {
                continue;
            }
            orphans.push(s.id);
            let deleted = self.config.reap_delete && self.cloud.delete_server(s.id).await.is_ok();
            tracing::warn!(cloud_id = s.id, name = %s.name, outpost_id = %id, deleted, "orphan cloud server: labelled by outpost, no record or job");
            let _ = store
                .append_audit(AuditEntry {
                    operator: "reaper".into(),
                    kind: Kind::Job,
                    action: "reap".into(),
                    message: format!(
                        "cloud server {} ({}) carries outpost labels but no record or job knows it{}",
                        s.id,
                        s.name,
                        if deleted { "; deleted" } else { "; set provision.reap_delete to delete such servers" }
                    ),
                    ..Default::default()
                })
                .await;
        }
        Ok(orphans)
    }
}

fn hub_err(e: HubError) -> JobError {
    match e {
        HubError::Store(m) => JobError::Retry(m.to_string()),
        e => JobError::Fail(e.to_string()),
    }
}
