//! K3s through kube-rs: the cluster's state for reports, applying an app's manifests with server-side apply
//! (field manager `outpost`), pruning what a removed app left, watching a rollout to Available or to a
//! failure with the reason a person needs, and pod logs.
//!
//! The kubeconfig is K3s's (`/etc/rancher/k3s/k3s.yaml`) unless the agent's config says otherwise. Tests
//! run this code, unchanged, against the stand-in API server in the test harness.

pub mod render;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::core::v1::{LimitRange, ResourceQuota};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::{Deserialize, Serialize};

use render::{AppManifests, DEPLOYMENT_LABEL, INSTANCE, MANAGED_BY, ProjectManifests};

pub const DEFAULT_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
const FIELD_MANAGER: &str = "outpost";

#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    #[error("cannot read the kubeconfig {path}: {error}; is K3s installed (or kubeconfig set in agentd.toml)?")]
    Config { path: String, error: String },
    #[error("the Kubernetes API refused {what}: {error}")]
    Api { what: String, error: String },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> K3sError {
    let what = what.into();
    move |e| K3sError::Api { what, error: e.to_string() }
}

/// The cluster as a report shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterState {
    /// Every node is Ready.
    pub ready: bool,
    pub nodes: Vec<NodeState>,
    /// The API server's version.
    pub version: String,
    pub pods_running: u32,
    pub pods_pending: u32,
    pub pods_failed: u32,
    /// kube-system pods not running (or not ready): "name: why".
    pub system_problems: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeState {
    pub name: String,
    pub ready: bool,
    pub kubelet_version: String,
    /// Conditions that say something is wrong: "DiskPressure: …", or why it is not Ready.
    pub problems: Vec<String>,
}

/// One app's Deployment as the cluster has it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppStatus {
    pub desired: u32,
    pub ready: u32,
    /// Container restarts across its pods.
    pub restarts: u32,
    /// What is wrong with its pods, in words, if anything.
    pub problem: Option<String>,
}

/// What Outpost manages in one namespace (see [`K3s::managed`]).
pub struct Managed {
    deployments: HashMap<String, Deployment>,
    services: HashSet<String>,
    config_maps: HashSet<String>,
    secrets: HashSet<String>,
    ingresses: HashSet<String>,
}

impl Managed {
    /// The app's objects that are missing, or that differ from `m` in what Outpost sets.
    pub fn drift(&self, app: &str, m: &AppManifests) -> Vec<String> {
        let mut found = Vec::new();
        match self.deployments.get(app) {
            None => found.push(format!("deployment {app} was deleted")),
            Some(d) => {
                let want = m.deployment.spec.as_ref();
                let have = d.spec.as_ref();
                if want.and_then(|s| s.replicas) != have.and_then(|s| s.replicas) {
                    found.push(format!("deployment {app}: replicas changed"));
                }
                let image = |s: Option<&k8s_openapi::api::apps::v1::DeploymentSpec>| {
                    s.and_then(|s| s.template.spec.as_ref())
                        .and_then(|p| p.containers.first())
                        .and_then(|c| c.image.clone())
                };
                if image(want) != image(have) {
                    found.push(format!("deployment {app}: image changed"));
                }
            }
        }
        let name = |meta: &kube::api::ObjectMeta| meta.name.clone().unwrap_or_default();
        if !self.services.contains(app) {
            found.push(format!("service {app} was deleted"));
        }
        let cm = name(&m.config_map.metadata);
        if !self.config_maps.contains(&cm) {
            found.push(format!("config map {cm} was deleted"));
        }
        let secret = name(&m.secret.metadata);
        if !self.secrets.contains(&secret) {
            found.push(format!("secret {secret} was deleted"));
        }
        if m.ingress.is_some() && !self.ingresses.contains(app) {
            found.push(format!("ingress {app} was deleted"));
        }
        found
    }
}

/// How a rollout ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Rollout {
    Available,
    Failed(String),
}

/// A Kubernetes client for this server's K3s.
#[derive(Clone)]
pub struct K3s {
    client: Client,
    /// A rollout is watched (each change looked at when it happens); this is the longest wait between looks
    /// when no change comes.
    poll: Duration,
}

impl K3s {
    /// A client from `kubeconfig` (K3s writes one with an admin client certificate).
    pub async fn connect(kubeconfig: &Path, poll: Duration) -> Result<K3s, K3sError> {
        let err = |error: String| K3sError::Config { path: kubeconfig.display().to_string(), error };
        let file = Kubeconfig::read_from(kubeconfig).map_err(|e| err(e.to_string()))?;
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|e| err(e.to_string()))?;
        let client = Client::try_from(config).map_err(|e| err(e.to_string()))?;
        Ok(K3s { client, poll })
    }

    /// Nodes, pods and system pods.
    pub async fn state(&self) -> Result<ClusterState, K3sError> {
        Ok(self.overview().await?.0)
    }

    /// The cluster's state and every managed app's status (desired, ready, restarts, problem) by
    /// (namespace, app), from four requests whatever the number of apps: version, nodes, pods, deployments.
    pub async fn overview(&self) -> Result<(ClusterState, HashMap<(String, String), AppStatus>), K3sError> {
        let version = self.client.apiserver_version().await.map_err(api_err("the version request"))?;
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing nodes"))?;
        let mut out = ClusterState { version: version.git_version, ..Default::default() };
        for n in nodes {
            let status = n.status.unwrap_or_default();
            let mut node = NodeState {
                name: n.metadata.name.unwrap_or_default(),
                kubelet_version: status.node_info.map(|i| i.kubelet_version).unwrap_or_default(),
                ..Default::default()
            };
            for c in status.conditions.unwrap_or_default() {
                let why =
                    || format!("{}: {}", c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default());
                match (c.type_.as_str(), c.status.as_str()) {
                    ("Ready", "True") => node.ready = true,
                    ("Ready", _) => node.problems.push(format!("not Ready ({})", why())),
                    (kind, "True") => node.problems.push(format!("{kind} ({})", why())),
                    _ => {}
                }
            }
            out.nodes.push(node);
        }
        out.ready = !out.nodes.is_empty() && out.nodes.iter().all(|n| n.ready);
        let pods =
            Api::<Pod>::all(self.client.clone()).list(&ListParams::default()).await.map_err(api_err("listing pods"))?;
        let lp = ListParams::default().labels(&format!("{MANAGED_BY}=outpost"));
        let deployments =
            Api::<Deployment>::all(self.client.clone()).list(&lp).await.map_err(api_err("listing deployments"))?;
        let mut apps: HashMap<(String, String), AppStatus> = HashMap::new();
        for d in deployments {
            let key = (d.metadata.namespace.clone().unwrap_or_default(), d.metadata.name.clone().unwrap_or_default());
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
            let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0).max(0) as u32;
            apps.insert(key, AppStatus { desired, ready, restarts: 0, problem: None });
        }
        for p in pods {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            let app = p.metadata.labels.as_ref().and_then(|l| l.get(INSTANCE)).cloned();
            let status = p.status.unwrap_or_default();
            let phase = status.phase.clone().unwrap_or_default();
            match phase.as_str() {
                "Running" => out.pods_running += 1,
                "Pending" => out.pods_pending += 1,
                "Failed" => out.pods_failed += 1,
                _ => {}
            }
            let containers = status.container_statuses.unwrap_or_default();
            if let Some(a) = app.and_then(|app| apps.get_mut(&(ns.clone(), app))) {
                for c in &containers {
                    a.restarts = a.restarts.saturating_add(c.restart_count.max(0) as u32);
                    if a.problem.is_none() {
                        a.problem = failure(c);
                    }
                }
            }
            if ns == "kube-system" && phase != "Succeeded" {
                let unready: Vec<String> = containers
                    .into_iter()
                    .filter(|c| !c.ready)
                    .map(|c| waiting_reason(&c).unwrap_or_else(|| format!("{} not ready", c.name)))
                    .collect();
                if phase != "Running" || !unready.is_empty() {
                    let why = if unready.is_empty() { phase } else { unready.join(", ") };
                    out.system_problems.push(format!("{name}: {why}"));
                }
            }
        }
        Ok((out, apps))
    }

    /// What usage needs from the cluster: every managed app's pods (uid, project, app) and the storage
    /// bound to each project's persistent volume claims.
    pub async fn usage_inputs(&self) -> Result<(Vec<crate::usage::PodOwner>, HashMap<String, u64>), K3sError> {
        let pods =
            Api::<Pod>::all(self.client.clone()).list(&ListParams::default()).await.map_err(api_err("listing pods"))?;
        let owners = pods
            .into_iter()
            .filter_map(|p| {
                let app = p.metadata.labels.as_ref()?.get(INSTANCE)?.clone();
                Some(crate::usage::PodOwner { uid: p.metadata.uid?, project: p.metadata.namespace?, app })
            })
            .collect();
        let claims = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing persistent volume claims"))?;
        let mut storage: HashMap<String, u64> = HashMap::new();
        for c in claims {
            let bytes = c
                .status
                .and_then(|s| s.capacity)
                .and_then(|c| c.get("storage").and_then(|q| outpost_common::app::bytes(&q.0).ok()))
                .unwrap_or(0);
            *storage.entry(c.metadata.namespace.unwrap_or_default()).or_default() += bytes;
        }
        Ok((owners, storage))
    }

    async fn apply<K>(&self, api: Api<K>, obj: &K, what: &str) -> Result<(), K3sError>
    where
        K: kube::Resource + Clone + std::fmt::Debug + Serialize + serde::de::DeserializeOwned,
    {
        let name = obj.meta().name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj))
            .await
            .map_err(api_err(format!("applying {what} {name}")))?;
        Ok(())
    }

    /// The project's namespace, quota, limits and default-deny policy.
    pub async fn apply_project(&self, p: &ProjectManifests) -> Result<(), K3sError> {
        let ns = p.namespace.metadata.name.clone().unwrap_or_default();
        let c = &self.client;
        self.apply(Api::<Namespace>::all(c.clone()), &p.namespace, "namespace").await?;
        self.apply(Api::<ResourceQuota>::namespaced(c.clone(), &ns), &p.quota, "resource quota").await?;
        self.apply(Api::<LimitRange>::namespaced(c.clone(), &ns), &p.limits, "limit range").await?;
        self.apply(Api::<NetworkPolicy>::namespaced(c.clone(), &ns), &p.network_policy, "network policy").await
    }

    /// The app's objects; an Ingress the spec no longer asks for is deleted.
    pub async fn apply_app(
        &self,
        ns: &str,
        app: &str,
        m: &AppManifests,
        policy: &NetworkPolicy,
    ) -> Result<(), K3sError> {
        let c = &self.client;
        self.apply(Api::<NetworkPolicy>::namespaced(c.clone(), ns), policy, "network policy").await?;
        self.apply(Api::<ConfigMap>::namespaced(c.clone(), ns), &m.config_map, "config map").await?;
        self.apply(Api::<Secret>::namespaced(c.clone(), ns), &m.secret, "secret").await?;
        self.apply(Api::<Service>::namespaced(c.clone(), ns), &m.service, "service").await?;
        let ingresses = Api::<Ingress>::namespaced(c.clone(), ns);
        match &m.ingress {
            Some(i) => self.apply(ingresses, i, "ingress").await?,
            None => gone(
                ingresses.delete(app, &DeleteParams::default()).await.map(drop),
                &format!("deleting ingress {app}"),
            )?,
        }
        self.apply(Api::<Deployment>::namespaced(c.clone(), ns), &m.deployment, "deployment").await
    }

    /// Deletes everything Outpost made for `app` in `ns`. Returns how many objects went.
    pub async fn prune_app(&self, ns: &str, app: &str) -> Result<usize, K3sError> {
        let lp = ListParams::default().labels(&format!("{MANAGED_BY}=outpost,{INSTANCE}={app}"));
        let c = &self.client;
        let mut n = 0;
        macro_rules! prune {
            ($k:ty, $what:expr) => {{
                let api = Api::<$k>::namespaced(c.clone(), ns);
                let gone = api
                    .delete_collection(&DeleteParams::default(), &lp)
                    .await
                    .map_err(api_err(format!("deleting the {} of {app}", $what)))?;
                n += gone.left().map_or(0, |l| l.items.len());
            }};
        }
        prune!(Deployment, "deployments");
        prune!(Service, "services");
        prune!(Ingress, "ingresses");
        prune!(ConfigMap, "config maps");
        prune!(Secret, "secrets");
        prune!(NetworkPolicy, "network policies");
        Ok(n)
    }

    /// What Outpost manages in `ns`, read with one list per kind (for drift checks of every app at once).
    pub async fn managed(&self, ns: &str) -> Result<Managed, K3sError> {
        let lp = ListParams::default().labels(&format!("{MANAGED_BY}=outpost"));
        let c = &self.client;
        let names = |items: Vec<kube::api::ObjectMeta>| -> HashSet<String> {
            items.into_iter().filter_map(|m| m.name).collect()
        };
        let deployments = Api::<Deployment>::namespaced(c.clone(), ns)
            .list(&lp)
            .await
            .map_err(api_err(format!("listing the deployments of {ns}")))?
            .items
            .into_iter()
            .map(|d| (d.metadata.name.clone().unwrap_or_default(), d))
            .collect();
        macro_rules! listed {
            ($k:ty, $what:expr) => {
                names(
                    Api::<$k>::namespaced(c.clone(), ns)
                        .list(&lp)
                        .await
                        .map_err(api_err(format!("listing the {} of {ns}", $what)))?
                        .items
                        .into_iter()
                        .map(|o| o.metadata)
                        .collect(),
                )
            };
        }
        Ok(Managed {
            deployments,
            services: listed!(Service, "services"),
            config_maps: listed!(ConfigMap, "config maps"),
            secrets: listed!(Secret, "secrets"),
            ingresses: listed!(Ingress, "ingresses"),
        })
    }

    /// Which of the app's objects are missing, or differ from `m` in what Outpost sets (drift). Returns
    /// what it found, in words.
    pub async fn drift(&self, ns: &str, app: &str, m: &AppManifests) -> Result<Vec<String>, K3sError> {
        Ok(self.managed(ns).await?.drift(app, m))
    }

    /// Watches deployment `app` (revision `deployment_id`) until it is Available or fails, for at most
    /// `deadline`. The Deployment and its pods are watched (the API's watch, through kube-rs): each change
    /// is looked at when it happens; `poll` is only the longest wait when none comes (a watch that ends is
    /// opened again).
    pub async fn rollout(
        &self,
        ns: &str,
        app: &str,
        deployment_id: &str,
        deadline: Duration,
    ) -> Result<Rollout, K3sError> {
        let deployments = Api::<Deployment>::namespaced(self.client.clone(), ns);
        let pods = Api::<Pod>::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().labels(&format!("{DEPLOYMENT_LABEL}={deployment_id}"));
        let until = Instant::now() + deadline;
        let dwp = WatchParams::default().fields(&format!("metadata.name={app}")).timeout(290);
        let pwp = WatchParams::default().labels(&format!("{DEPLOYMENT_LABEL}={deployment_id}")).timeout(290);
        let mut changes: Option<futures::stream::BoxStream<'static, ()>> = None;
        let mut first = true;
        loop {
            if !first {
                if changes.is_none() {
                    // Both watches from "any version": what exists now comes first, then every change.
                    let d = deployments.watch_metadata(&dwp, "0").await.map(|s| s.map(|_| ()).boxed());
                    let p = pods.watch_metadata(&pwp, "0").await.map(|s| s.map(|_| ()).boxed());
                    changes = match (d, p) {
                        (Ok(d), Ok(p)) => Some(futures::stream::select(d, p).boxed()),
                        (Err(error), _) | (_, Err(error)) => {
                            tracing::debug!(%error, "cannot watch the rollout; looking every poll interval");
                            None
                        }
                    };
                }
                let left = until.saturating_duration_since(Instant::now());
                let wait = self.poll.min(left).max(Duration::from_millis(10));
                match &mut changes {
                    Some(stream) => {
                        if let Ok(None) = tokio::time::timeout(wait, stream.next()).await {
                            changes = None; // the watch ended: opened again next time
                        }
                    }
                    None => tokio::time::sleep(wait).await,
                }
            }
            first = false;
            let d = deployments.get(app).await.map_err(api_err(format!("reading deployment {app}")))?;
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let generation = d.metadata.generation.unwrap_or(0);
            let status = d.status.unwrap_or_default();
            let conditions = status.conditions.unwrap_or_default();
            let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
            if let Some(c) =
                condition("Progressing").filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            {
                return Ok(Rollout::Failed(format!(
                    "ProgressDeadlineExceeded: {}",
                    c.message.clone().unwrap_or_else(|| "the rollout made no progress".into())
                )));
            }
            for p in pods.list(&lp).await.map_err(api_err(format!("listing the pods of {app}")))? {
                let statuses = p.status.and_then(|s| s.container_statuses).unwrap_or_default();
                if let Some(why) = statuses.iter().find_map(failure) {
                    return Ok(Rollout::Failed(why));
                }
            }
            let updated = status.updated_replicas.unwrap_or(0);
            let available = status.available_replicas.unwrap_or(0);
            let observed = status.observed_generation.unwrap_or(0) >= generation;
            let unavailable = status.unavailable_replicas.unwrap_or(0);
            if observed
                && condition("Available").is_some_and(|c| c.status == "True")
                && updated >= want
                && available >= want
                && unavailable == 0
            {
                return Ok(Rollout::Available);
            }
            if Instant::now() >= until {
                // The cluster's own words on why no pod could be made (a quota refusing one), when it has any.
                let refused = condition("ReplicaFailure")
                    .filter(|c| c.status == "True")
                    .and_then(|c| c.message.clone())
                    .map(|m| format!("; {}", outpost_common::text::excerpt(&m, 300)))
                    .unwrap_or_default();
                return Ok(Rollout::Failed(format!(
                    "the rollout did not finish within {} s: {available} of {want} replica(s) available, {updated} updated{refused}",
                    deadline.as_secs()
                )));
            }
        }
    }

    /// The newest pod of `app`, for logs.
    pub async fn app_pod(&self, ns: &str, app: &str) -> Result<Option<String>, K3sError> {
        let lp = ListParams::default().labels(&format!("{INSTANCE}={app}"));
        let mut pods = Api::<Pod>::namespaced(self.client.clone(), ns)
            .list(&lp)
            .await
            .map_err(api_err(format!("listing the pods of {app}")))?
            .items;
        pods.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        Ok(pods.pop().and_then(|p| p.metadata.name))
    }

    /// The last `tail` lines of `pod`'s log (or, with `follow`, a stream of it).
    pub async fn logs(
        &self,
        ns: &str,
        pod: &str,
        tail: i64,
        follow: bool,
    ) -> Result<impl futures::AsyncBufRead + use<>, K3sError> {
        let lp = LogParams { tail_lines: Some(tail), follow, ..Default::default() };
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .log_stream(pod, &lp)
            .await
            .map_err(api_err(format!("reading the log of {pod}")))
    }
}

/// A 404 on a delete is what we wanted.
fn gone(r: Result<(), kube::Error>, what: &str) -> Result<(), K3sError> {
    match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(K3sError::Api { what: what.into(), error: e.to_string() }),
    }
}

fn waiting_reason(c: &k8s_openapi::api::core::v1::ContainerStatus) -> Option<String> {
    let w = c.state.as_ref()?.waiting.as_ref()?;
    Some(format!("{} {}", c.name, w.reason.clone().unwrap_or_default()))
}

/// Why a container will not come up, in words a person can act on.
fn failure(c: &k8s_openapi::api::core::v1::ContainerStatus) -> Option<String> {
    let w = c.state.as_ref()?.waiting.as_ref()?;
    match w.reason.as_deref()? {
        r @ ("ImagePullBackOff" | "ErrImagePull" | "InvalidImageName") => Some(format!(
            "{r}: image {} cannot be pulled{}",
            c.image,
            w.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
        )),
        "CrashLoopBackOff" => {
            let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
            let why = match last {
                Some(t) => {
                    let msg = t.message.clone().filter(|m| !m.trim().is_empty());
                    let msg = msg.unwrap_or_else(|| t.reason.clone().unwrap_or_else(|| "no message".into()));
                    format!("exit code {}: {}", t.exit_code, msg.trim())
                }
                None => "it keeps exiting".into(),
            };
            Some(format!(
                "CrashLoopBackOff: container {} crashes ({why}), restarted {} time(s)",
                c.name, c.restart_count
            ))
        }
        r @ ("CreateContainerConfigError" | "RunContainerError") => {
            Some(format!("{r}: {}", w.message.clone().unwrap_or_default()))
        }
        _ => None,
    }
}
