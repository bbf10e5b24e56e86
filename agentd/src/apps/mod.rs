//! What the agent manages on its server, as recorded in the instance database: projects, apps (their
//! specs, secrets sealed), deployments, repositories, and the activity log of what the agent changed.
//!
//! Every change is one atomic write (`InstanceDb::apply`) that includes its activity record, so the
//! database never holds half a change. Reads of an app's spec unseal its secrets; everything that leaves
//! the agent (reports, logs, the audit log) uses [`AppSpec::redacted`] or [`AppRecord`], which hold none.

pub mod secrets;

use std::collections::BTreeMap;

use outpost_common::app::AppSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::instance::{DbError, InstanceDb, Table, Tree, Write};
use crate::repos::RepoState;
use secrets::{Sealer, SecretError};

/// A customer's project: the namespace its apps run in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Project {
    pub name: String,
    pub created_ms: i64,
}

/// An app as stored: its spec without secret values, and the secrets sealed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppRecord {
    pub project: String,
    /// Secret values are `<secret>` here.
    pub spec: AppSpec,
    /// name → sealed value (see `secrets`).
    pub sealed: BTreeMap<String, String>,
    pub updated_ms: i64,
    pub updated_by: String,
}

/// Where a deployment is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// Recorded, not yet applied.
    #[default]
    Pending,
    /// Applied; the rollout is being watched.
    RollingOut,
    /// The rollout finished: this is what runs.
    Available,
    /// The rollout failed (see `reason`).
    Failed,
    /// Failed, and the previous good deployment was restored.
    RolledBack,
    /// A later deployment replaced it.
    Superseded,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deployment {
    /// `APP-N`, N counting up per app.
    pub id: String,
    pub app: String,
    pub commit: String,
    pub image: String,
    /// SHA-256 of the rendered manifests.
    pub manifest_digest: String,
    pub status: DeployStatus,
    /// Why it failed or was rolled back, in words a person can act on.
    pub reason: String,
    /// The operator whose command asked for it (or `auto-deploy`, `rollback of …`).
    pub operator: String,
    pub started_ms: i64,
    pub finished_ms: i64,
}

/// One thing the agent changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Activity {
    pub at_ms: i64,
    pub app: String,
    pub operator: String,
    pub what: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("instance database: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("instance database record {0} is corrupt: {1}")]
    Corrupt(String, String),
    #[error("{0}")]
    NotFound(String),
}

pub struct AppStore {
    db: InstanceDb,
    sealer: Sealer,
    projects: Table,
    apps: Table,
    deployments: Table,
    repos: Table,
    activity: Table,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

fn read<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(String::from_utf8_lossy(key).into_owned(), e.to_string()))
}

fn deployment_key(app: &str, n: u64) -> Vec<u8> {
    let mut k = app.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn deployment_prefix(app: &str) -> Vec<u8> {
    let mut k = app.as_bytes().to_vec();
    k.push(0);
    k
}

impl AppStore {
    pub fn open(db: &InstanceDb, sealer: Sealer) -> Result<AppStore, StoreError> {
        Ok(AppStore {
            db: db.clone(),
            sealer,
            projects: db.table(Tree::Projects)?,
            apps: db.table(Tree::Apps)?,
            deployments: db.table(Tree::Deployments)?,
            repos: db.table(Tree::Repos)?,
            activity: db.table(Tree::Activity)?,
        })
    }

    fn activity(&self, app: &str, operator: &str, what: String) -> Result<Write, StoreError> {
        let next = self
            .activity
            .last_key()?
            .and_then(|k| <[u8; 8]>::try_from(k.as_slice()).ok())
            .map_or(0, u64::from_be_bytes)
            + 1;
        let a = Activity { at_ms: outpost_common::now_ms(), app: app.into(), operator: operator.into(), what };
        Ok(Write::Put(Tree::Activity, next.to_be_bytes().to_vec(), json(&a)))
    }

    /// Stores `spec` (already validated) in `project`, sealing its secrets. Returns whether it changed.
    pub async fn put_app(&self, project: &str, spec: &AppSpec, operator: &str) -> Result<bool, StoreError> {
        let old = self.app_record(&spec.name)?;
        let sealed: BTreeMap<String, String> =
            spec.secrets.iter().map(|(k, v)| (k.clone(), self.sealer.seal(&format!("{}/{k}", spec.name), v))).collect();
        if let Some(old) = &old
            && old.project == project
            && old.spec == spec.redacted()
            && old.sealed.keys().eq(sealed.keys())
            && old.sealed.iter().all(|(k, v)| {
                self.sealer.open_sealed(&format!("{}/{k}", spec.name), v).ok().as_ref() == spec.secrets.get(k)
            })
        {
            return Ok(false);
        }
        let record = AppRecord {
            project: project.into(),
            spec: spec.redacted(),
            sealed,
            updated_ms: outpost_common::now_ms(),
            updated_by: operator.into(),
        };
        let mut writes = vec![Write::Put(Tree::Apps, spec.name.as_bytes().to_vec(), json(&record))];
        if self.projects.get(project)?.is_none() {
            let p = Project { name: project.into(), created_ms: outpost_common::now_ms() };
            writes.push(Write::Put(Tree::Projects, project.as_bytes().to_vec(), json(&p)));
        }
        let what = if old.is_some() { "spec updated" } else { "app created" };
        writes.push(self.activity(&spec.name, operator, what.into())?);
        self.db.apply(&writes).await?;
        Ok(true)
    }

    /// The stored record (no secret values).
    pub fn app_record(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        self.apps.get(name)?.map(|v| read(name.as_bytes(), &v)).transpose()
    }

    /// The app's spec with its secrets unsealed (for rendering it; never for reports or logs).
    pub fn app(&self, name: &str) -> Result<Option<(String, AppSpec)>, StoreError> {
        let Some(r) = self.app_record(name)? else { return Ok(None) };
        let mut spec = r.spec;
        spec.secrets = r
            .sealed
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.sealer.open_sealed(&format!("{name}/{k}"), v)?)))
            .collect::<Result<_, SecretError>>()?;
        Ok(Some((r.project, spec)))
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        self.apps.entries()?.iter().map(|(k, v)| read(k, v)).collect()
    }

    pub fn projects(&self) -> Result<Vec<Project>, StoreError> {
        self.projects.entries()?.iter().map(|(k, v)| read(k, v)).collect()
    }

    /// Removes the app, its deployments and its repository state, in one write.
    pub async fn remove_app(&self, name: &str, operator: &str) -> Result<(), StoreError> {
        if self.apps.get(name)?.is_none() {
            return Err(StoreError::NotFound(format!("no app named {name} on this server")));
        }
        let mut writes =
            vec![Write::Del(Tree::Apps, name.as_bytes().to_vec()), Write::Del(Tree::Repos, name.as_bytes().to_vec())];
        writes.extend(
            self.deployments
                .prefix(deployment_prefix(name))?
                .into_iter()
                .map(|(k, _)| Write::Del(Tree::Deployments, k)),
        );
        writes.push(self.activity(name, operator, "app removed".into())?);
        self.db.apply(&writes).await?;
        Ok(())
    }

    /// Records a new deployment of `app` (status pending) and returns it.
    pub async fn begin_deployment(&self, mut d: Deployment) -> Result<Deployment, StoreError> {
        let n = self
            .deployments
            .prefix(deployment_prefix(&d.app))?
            .last()
            .and_then(|(k, _)| k.len().checked_sub(8).and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok()))
            .map_or(0, u64::from_be_bytes)
            + 1;
        d.id = format!("{}-{n}", d.app);
        d.status = DeployStatus::Pending;
        d.started_ms = outpost_common::now_ms();
        let what = format!("deployment {} of {} started", d.id, &d.commit[..d.commit.len().min(12)]);
        let writes = [
            Write::Put(Tree::Deployments, deployment_key(&d.app, n), json(&d)),
            self.activity(&d.app, &d.operator, what)?,
        ];
        self.db.apply(&writes).await?;
        Ok(d)
    }

    /// Moves a deployment to `status` (with `reason`); a terminal status sets `finished_ms`. When it becomes
    /// available, the one that was available before is superseded in the same write.
    pub async fn set_status(&self, id: &str, status: DeployStatus, reason: &str) -> Result<Deployment, StoreError> {
        let (app, n) = parse_id(id).ok_or_else(|| StoreError::NotFound(format!("no deployment {id}")))?;
        let key = deployment_key(app, n);
        let mut d: Deployment = match self.deployments.get(&key)? {
            Some(v) => read(&key, &v)?,
            None => return Err(StoreError::NotFound(format!("no deployment {id} of {app}"))),
        };
        d.status = status;
        d.reason = reason.into();
        if !matches!(status, DeployStatus::Pending | DeployStatus::RollingOut) {
            d.finished_ms = outpost_common::now_ms();
        }
        let mut writes = vec![Write::Put(Tree::Deployments, key, json(&d))];
        if status == DeployStatus::Available {
            for old in
                self.deployments(app)?.into_iter().filter(|o| o.status == DeployStatus::Available && o.id != d.id)
            {
                let (_, m) = parse_id(&old.id).expect("stored ids parse");
                writes.push(Write::Put(
                    Tree::Deployments,
                    deployment_key(app, m),
                    json(&Deployment { status: DeployStatus::Superseded, ..old }),
                ));
            }
        }
        let what = format!(
            "deployment {id}: {}{}",
            serde_json::to_value(status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            if reason.is_empty() { String::new() } else { format!(" ({reason})") }
        );
        writes.push(self.activity(app, &d.operator, what)?);
        self.db.apply(&writes).await?;
        Ok(d)
    }

    /// The deployments of `app`, newest first.
    pub fn deployments(&self, app: &str) -> Result<Vec<Deployment>, StoreError> {
        let mut out: Vec<Deployment> = self
            .deployments
            .prefix(deployment_prefix(app))?
            .iter()
            .map(|(k, v)| read(k, v))
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    pub fn deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        let Some((app, n)) = parse_id(id) else { return Ok(None) };
        let key = deployment_key(app, n);
        self.deployments.get(&key)?.map(|v| read(&key, &v)).transpose()
    }

    /// What runs now: the newest available deployment.
    pub fn live(&self, app: &str) -> Result<Option<Deployment>, StoreError> {
        Ok(self.deployments(app)?.into_iter().find(|d| d.status == DeployStatus::Available))
    }

    pub async fn put_repo(&self, app: &str, state: &RepoState) -> Result<(), StoreError> {
        self.db.apply(&[Write::Put(Tree::Repos, app.as_bytes().to_vec(), json(state))]).await?;
        Ok(())
    }

    pub fn repo(&self, app: &str) -> Result<Option<RepoState>, StoreError> {
        self.repos.get(app)?.map(|v| read(app.as_bytes(), &v)).transpose()
    }

    /// Records something the agent did to an app outside an operator's command (drift repaired).
    pub async fn note(&self, app: &str, what: String) -> Result<(), StoreError> {
        let w = self.activity(app, "outpost-agentd", what)?;
        self.db.apply(&[w]).await?;
        Ok(())
    }

    /// The newest `n` activity records, newest first.
    pub fn recent_activity(&self, n: usize) -> Result<Vec<Activity>, StoreError> {
        let all = self.activity.entries()?;
        all.iter().rev().take(n).map(|(k, v)| read(k, v)).collect()
    }
}

/// `APP-N` → (APP, N).
fn parse_id(id: &str) -> Option<(&str, u64)> {
    let (app, n) = id.rsplit_once('-')?;
    Some((app, n.parse().ok()?)).filter(|(a, _)| outpost_common::cert::valid_name(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_common::app::{RepoRoots, RepoSpec};

    fn spec(name: &str) -> AppSpec {
        let mut s = AppSpec {
            name: name.into(),
            image: "ghcr.io/acme/web:{commit}".into(),
            port: 8080,
            replicas: 1,
            repo: RepoSpec {
                url: "https://github.com/acme/web.git".into(),
                git_ref: "main".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        s.secrets.insert("DATABASE_URL".into(), "postgres://u:hunter2@db".into());
        s.validate(None, &RepoRoots::default()).unwrap();
        s
    }

    async fn store(dir: &std::path::Path) -> (InstanceDb, AppStore) {
        let db = InstanceDb::open(&dir.join("db")).unwrap();
        let store = AppStore::open(&db, Sealer::open(dir).unwrap()).unwrap();
        (db, store)
    }

    #[tokio::test]
    async fn apps_keep_their_secrets_sealed_and_every_change_is_in_the_activity_log() {
        let dir = tempfile::tempdir().unwrap();
        let (db, s) = store(dir.path()).await;
        assert!(s.put_app("acme", &spec("web"), "alice").await.unwrap());
        assert!(!s.put_app("acme", &spec("web"), "alice").await.unwrap(), "the same spec again changes nothing");
        let (project, back) = s.app("web").unwrap().unwrap();
        assert_eq!((project.as_str(), back.secrets["DATABASE_URL"].as_str()), ("acme", "postgres://u:hunter2@db"));
        assert_eq!(s.projects().unwrap().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["acme"]);
        // Nothing stored holds the secret in the clear.
        for t in [Tree::Apps, Tree::Activity, Tree::Projects] {
            for (_, v) in db.table(t).unwrap().entries().unwrap() {
                assert!(!String::from_utf8_lossy(&v).contains("hunter2"), "{t:?} holds the secret");
            }
        }
        let mut changed = spec("web");
        changed.secrets.insert("DATABASE_URL".into(), "postgres://u:new@db".into());
        assert!(s.put_app("acme", &changed, "bob").await.unwrap(), "a new secret value is a change");
        let log: Vec<String> =
            s.recent_activity(10).unwrap().into_iter().map(|a| format!("{} {}", a.operator, a.what)).collect();
        assert_eq!(log, ["bob spec updated", "alice app created"]);
    }

    #[tokio::test]
    async fn deployments_count_up_supersede_and_go_with_their_app() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, s) = store(dir.path()).await;
        s.put_app("acme", &spec("web"), "alice").await.unwrap();
        let d = |commit: &str| Deployment {
            app: "web".into(),
            commit: commit.into(),
            operator: "alice".into(),
            ..Default::default()
        };
        let one = s.begin_deployment(d("aaaa")).await.unwrap();
        let two = s.begin_deployment(d("bbbb")).await.unwrap();
        assert_eq!((one.id.as_str(), two.id.as_str()), ("web-1", "web-2"));
        s.set_status(&one.id, DeployStatus::Available, "").await.unwrap();
        assert_eq!(s.live("web").unwrap().unwrap().id, "web-1");
        s.set_status(&two.id, DeployStatus::Available, "").await.unwrap();
        let all: Vec<(String, DeployStatus)> =
            s.deployments("web").unwrap().into_iter().map(|d| (d.id, d.status)).collect();
        assert_eq!(all, [("web-2".into(), DeployStatus::Available), ("web-1".into(), DeployStatus::Superseded)]);
        assert!(s.set_status("web-9", DeployStatus::Failed, "x").await.is_err());
        assert!(s.set_status("../x-1", DeployStatus::Failed, "x").await.is_err());
        s.put_repo("web", &RepoState { head: "bbbb".into(), ..Default::default() }).await.unwrap();
        // A sibling whose name extends this one keeps its own deployments.
        s.put_app("acme", &spec("web-api"), "alice").await.unwrap();
        s.begin_deployment(Deployment { app: "web-api".into(), commit: "cccc".into(), ..Default::default() })
            .await
            .unwrap();
        s.remove_app("web", "alice").await.unwrap();
        assert!(
            s.app("web").unwrap().is_none()
                && s.deployments("web").unwrap().is_empty()
                && s.repo("web").unwrap().is_none()
        );
        assert_eq!(s.deployments("web-api").unwrap().len(), 1);
        assert!(s.remove_app("web", "alice").await.unwrap_err().to_string().contains("no app named web"));
    }
}
