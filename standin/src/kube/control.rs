//! The Deployment controller the demo and some tests run: a rolling update as Kubernetes does it. Pods
//! of the current template are created through admission (so a ResourceQuota can refuse one, which the
//! Deployment then shows as `ReplicaFailure`/`FailedCreate`), never more than `replicas + maxSurge` pods
//! exist, old pods go only while `replicas - maxUnavailable` stay ready, and a rollout that makes no
//! progress for `progressDeadlineSeconds` is `ProgressDeadlineExceeded`. Pods are ready at once unless
//! their image was marked failing ([`super::KubeStandIn::fail_image`]): those crash-loop.

use std::time::Instant;

use serde_json::{Value, json};

use super::{Store, Target};

/// A rolling update's `maxSurge`/`maxUnavailable`: a count or a percentage of `replicas`.
fn amount(v: &Value, replicas: i64, round_up: bool) -> i64 {
    match (v.as_i64(), v.as_str().and_then(|s| s.strip_suffix('%')).and_then(|p| p.parse::<i64>().ok())) {
        (Some(n), _) => n,
        (_, Some(p)) if round_up => (replicas * p + 99) / 100,
        (_, Some(p)) => replicas * p / 100,
        _ => {
            if round_up {
                (replicas * 25 + 99) / 100
            } else {
                replicas * 25 / 100
            }
        }
    }
}

fn ready(pod: &Value) -> bool {
    pod["status"]["containerStatuses"].as_array().is_some_and(|c| !c.is_empty() && c.iter().all(|c| c["ready"] == true))
}

/// A short stable hash of the pod template (as `pod-template-hash`).
fn template_hash(template: &Value) -> String {
    let text = template.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

impl Store {
    /// One pass over every Deployment (repeated until nothing changes).
    pub(super) fn control(&mut self) {
        let deployments: Vec<String> =
            self.objects.keys().filter(|k| k.starts_with("apis/apps/v1/deployments/")).cloned().collect();
        for key in deployments {
            for _ in 0..32 {
                if !self.step(&key) {
                    break;
                }
            }
            self.report(&key);
        }
        // Pods whose Deployment is gone go with it.
        let orphans: Vec<String> =
            self.owners.iter().filter(|(_, d)| !self.objects.contains_key(*d)).map(|(p, _)| p.clone()).collect();
        for p in orphans {
            self.remove(&p);
        }
    }

    fn pods_of(&self, key: &str) -> Vec<(String, Value)> {
        self.owners
            .iter()
            .filter(|(_, d)| d.as_str() == key)
            .filter_map(|(p, _)| self.objects.get(p).map(|v| (p.clone(), v.clone())))
            .collect()
    }

    /// One change towards the Deployment's desired state; false when there is nothing to do.
    fn step(&mut self, key: &str) -> bool {
        let Some(d) = self.objects.get(key).cloned() else { return false };
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let template = &d["spec"]["template"];
        let hash = template_hash(template);
        let rolling = &d["spec"]["strategy"]["rollingUpdate"];
        let recreate = d["spec"]["strategy"]["type"] == "Recreate";
        let mut surge = if recreate { 0 } else { amount(&rolling["maxSurge"], replicas, true) };
        let unavailable = if recreate { replicas } else { amount(&rolling["maxUnavailable"], replicas, false) };
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        let pods = self.pods_of(key);
        let (new, old): (Vec<_>, Vec<_>) = pods
            .iter()
            .partition(|(_, p)| p["metadata"]["labels"]["pod-template-hash"].as_str() == Some(hash.as_str()));
        let ready_total = pods.iter().filter(|(_, p)| ready(p)).count() as i64;
        // Too many of the new revision (scaled down): the newest go.
        if new.len() as i64 > replicas {
            let (k, _) = new.iter().max_by_key(|(k, _)| k.clone()).expect("not empty");
            self.remove(k);
            return true;
        }
        // Scale the new revision up, within replicas + maxSurge (Recreate: once the old are gone).
        let may_start = !recreate || old.is_empty();
        if may_start && (new.len() as i64) < replicas && (pods.len() as i64) < replicas + surge {
            return match self.create_pod(key, &d, &hash) {
                Ok(()) => true,
                Err(why) => {
                    self.set_failure(key, Some(why));
                    false
                }
            };
        }
        // Old pods go while enough stay ready: an unready one at once, a ready one only above the minimum.
        let min_available = replicas - unavailable;
        if let Some((k, _)) = old.iter().find(|(_, p)| !ready(p)) {
            self.remove(k);
            return true;
        }
        if let Some((k, _)) = old.first()
            && (ready_total > min_available || recreate)
        {
            self.remove(k);
            return true;
        }
        false
    }

    fn create_pod(&mut self, key: &str, d: &Value, hash: &str) -> Result<(), String> {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = d["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let pod_name = format!("{name}-{hash}-{:05x}", self.next_pod + 1);
        let mut labels = d["spec"]["template"]["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["pod-template-hash"] = json!(hash);
        let mut pod = json!({"metadata": {"name": pod_name, "labels": labels,
                "annotations": d["spec"]["template"]["metadata"]["annotations"].clone(),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-{hash}"),
                    "uid": format!("rs-{hash}"), "controller": true}]},
            "spec": d["spec"]["template"]["spec"].clone()});
        let t = Target {
            prefix: "api/v1".into(),
            plural: "pods".into(),
            namespace: Some(ns.clone()),
            name: Some(pod_name.clone()),
            sub: None,
        };
        // The admission's words, as the ReplicaSet controller reports them.
        self.admit(&t, &pod_name, &mut pod).map_err(|r| r.2)?;
        self.next_pod += 1;
        let containers = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
        let failing = containers.iter().any(|c| {
            c["image"]
                .as_str()
                .is_some_and(|i| self.failing_images.contains(i) || self.failing_images.contains(&format!("{ns}/{i}")))
        });
        let statuses: Vec<Value> = containers
            .iter()
            .map(|c| {
                let state = if failing {
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}})
                } else {
                    json!({"running": {"startedAt": super::now_rfc3339()}})
                };
                json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": !failing,
                       "restartCount": if failing { 3 } else { 0 }, "state": state})
            })
            .collect();
        pod["status"] = json!({"phase": "Running", "containerStatuses": statuses,
            "conditions": [{"type": "Ready", "status": if failing { "False" } else { "True" }}]});
        self.stamp(&mut pod, None, &t);
        let pod_key = t.key(&pod_name);
        self.write(pod_key.clone(), pod);
        self.owners.insert(pod_key, key.to_string());
        self.logs.insert(
            (ns.clone(), pod_name.clone()),
            if failing {
                format!("{name}: starting\n{name}: fatal: cannot read configuration (stand-in crash)\n")
            } else {
                format!("{name}: listening on :8080 (stand-in)\n{name}: GET /healthz 200\n")
            },
        );
        self.refresh_quotas(&ns);
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
        self.progress.insert(key.to_string(), (generation, Instant::now()));
        self.set_failure(key, None);
        Ok(())
    }

    /// Sets or clears the `ReplicaFailure` condition (kept until the next report).
    fn set_failure(&mut self, key: &str, why: Option<String>) {
        let Some(mut d) = self.objects.get(key).cloned() else { return };
        let mut conditions: Vec<Value> = d["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let had = conditions.iter().find(|c| c["type"] == "ReplicaFailure").cloned();
        conditions.retain(|c| c["type"] != "ReplicaFailure");
        if let Some(why) = &why {
            conditions
                .push(json!({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": why}));
        }
        let now = conditions.iter().find(|c| c["type"] == "ReplicaFailure").cloned();
        if had.map(|c| c["message"].clone()) != now.map(|c| c["message"].clone()) {
            d["status"]["conditions"] = json!(conditions);
            let t = Target::parse(&deployment_path(key)).expect("a deployment key");
            self.stamp(&mut d, self.objects.get(key).cloned().as_ref(), &t);
            self.write(key.to_string(), d);
        }
    }

    /// The Deployment's status from its pods.
    fn report(&mut self, key: &str) {
        let Some(d) = self.objects.get(key).cloned() else { return };
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let hash = template_hash(&d["spec"]["template"]);
        let unavailable_allowed = amount(&d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], replicas, false);
        let pods = self.pods_of(key);
        let updated =
            pods.iter().filter(|(_, p)| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str()).count() as i64;
        let available = pods.iter().filter(|(_, p)| ready(p)).count() as i64;
        let complete = updated == replicas && pods.len() as i64 == replicas && available == replicas;
        // Progress is timed from the last pod made, or from the spec's last change.
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
        let entry = self.progress.entry(key.to_string()).or_insert((generation, Instant::now()));
        if entry.0 != generation {
            *entry = (generation, Instant::now());
        }
        let since = entry.1;
        let deadline = d["spec"]["progressDeadlineSeconds"].as_u64().unwrap_or(600);
        let old: Vec<Value> = d["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let progressing = if complete {
            json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                   "message": format!("ReplicaSet \"{}-{hash}\" has successfully progressed.", d["metadata"]["name"].as_str().unwrap_or_default())})
        } else if since.elapsed().as_secs() >= deadline {
            json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                   "message": format!("ReplicaSet \"{}-{hash}\" has timed out progressing.", d["metadata"]["name"].as_str().unwrap_or_default())})
        } else {
            json!({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                   "message": format!("ReplicaSet \"{}-{hash}\" is progressing.", d["metadata"]["name"].as_str().unwrap_or_default())})
        };
        let mut conditions = vec![
            json!({"type": "Available", "status": if available >= replicas - unavailable_allowed { "True" } else { "False" },
                   "reason": if available >= replicas - unavailable_allowed { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }}),
            progressing,
        ];
        conditions.extend(old.into_iter().filter(|c| c["type"] == "ReplicaFailure"));
        let status = json!({"observedGeneration": d["metadata"]["generation"], "replicas": pods.len(),
            "updatedReplicas": updated, "readyReplicas": available, "availableReplicas": available,
            "unavailableReplicas": (replicas - available).max(0), "conditions": conditions});
        if d["status"] != status {
            let mut obj = d.clone();
            obj["status"] = status;
            let t = Target::parse(&deployment_path(key)).expect("a deployment key");
            self.stamp(&mut obj, Some(&d), &t);
            self.write(key.to_string(), obj);
        }
    }
}

/// `apis/apps/v1/deployments/NS/NAME` → its API path.
fn deployment_path(key: &str) -> String {
    let parts: Vec<&str> = key.split('/').collect();
    format!("apis/apps/v1/namespaces/{}/deployments/{}", parts[4], parts[5])
}
