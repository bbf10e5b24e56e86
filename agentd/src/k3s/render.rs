//! Manifests from an app spec, as typed k8s-openapi objects: one namespace per customer project with its
//! plan's quota and limits and a default-deny network policy, and per app a Deployment, Service,
//! ConfigMap (env), Secret (secrets) and, with domains, an Ingress. Everything carries
//! `app.kubernetes.io/managed-by=outpost`, so what Outpost manages can be found, repaired and pruned.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, HTTPGetAction, LimitRange, LimitRangeItem,
    LimitRangeSpec, Namespace, PodSpec, PodTemplateSpec, Probe, ResourceQuota, ResourceQuotaSpec, ResourceRequirements,
    Secret, SecretEnvSource, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use outpost_common::app::{AppSpec, PlanLimits};
use serde::Serialize;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const DEPLOYMENT_LABEL: &str = "outpost.dev/deployment";
pub const COMMIT_LABEL: &str = "outpost.dev/commit";
pub const RESTARTED_AT: &str = "outpost.dev/restarted-at";
/// How long Kubernetes gives a rollout before it reports ProgressDeadlineExceeded.
pub const PROGRESS_DEADLINE_SECS: i32 = 120;

/// The namespace-wide objects of a customer project.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ProjectManifests {
    pub namespace: Namespace,
    pub quota: ResourceQuota,
    pub limits: LimitRange,
    pub network_policy: NetworkPolicy,
}

/// The objects of one app at one deployment.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AppManifests {
    pub config_map: ConfigMap,
    pub secret: Secret,
    pub deployment: Deployment,
    pub service: Service,
    pub ingress: Option<Ingress>,
}

impl AppManifests {
    /// SHA-256 of the rendered objects (hex): equal digests, equal manifests. Secret values are left out
    /// (the digest is reported; a hash of a short password could be guessed), their names are in.
    pub fn digest(&self) -> String {
        let mut shown = self.clone();
        if let Some(d) = shown.secret.string_data.as_mut() {
            d.values_mut().for_each(|v| v.clear());
        }
        let bytes = serde_json::to_vec(&shown).expect("manifests serialise");
        outpost_common::cert::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref())
    }
}

/// What one deployment of an app is: its id, commit, and when it was last restarted (restarts roll the pods).
#[derive(Clone, Debug, Default)]
pub struct Revision {
    pub deployment_id: String,
    pub commit: String,
    pub restarted_at: Option<String>,
    /// Overrides the spec's replicas (`app-scale`).
    pub replicas: Option<u32>,
    /// No surge pod: the plan's quota has no room for one (see `AppSpec::rollout_fit`).
    pub one_at_a_time: bool,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn meta(name: &str, namespace: Option<&str>, l: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(String::from),
        labels: Some(l),
        ..Default::default()
    }
}

fn q(s: String) -> Quantity {
    Quantity(s)
}

/// Bytes as a quantity a person reads (`512Mi`).
fn mem(b: u64) -> String {
    if b > 0 && b.is_multiple_of(1 << 20) { format!("{}Mi", b >> 20) } else { b.to_string() }
}

/// The namespace of a project. Projects are DNS labels (checked where they are created).
pub fn project(name: &str, plan: &PlanLimits) -> ProjectManifests {
    let managed = labels(&[(MANAGED_BY, "outpost")]);
    let ns = Some(name);
    let hard: BTreeMap<String, Quantity> = [
        ("requests.cpu", format!("{}m", plan.cpu_millis)),
        ("limits.cpu", format!("{}m", plan.cpu_millis)),
        ("requests.memory", mem(plan.memory_bytes)),
        ("limits.memory", mem(plan.memory_bytes)),
        ("requests.storage", mem(plan.storage_bytes)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), q(v)))
    .collect();
    // A container without its own resources gets a small share of the plan.
    let (default_cpu, default_mem) = plan.container_default();
    ProjectManifests {
        namespace: Namespace { metadata: meta(name, None, managed.clone()), ..Default::default() },
        quota: ResourceQuota {
            metadata: meta("outpost-plan", ns, managed.clone()),
            spec: Some(ResourceQuotaSpec { hard: Some(hard), ..Default::default() }),
            ..Default::default()
        },
        limits: LimitRange {
            metadata: meta("outpost-defaults", ns, managed.clone()),
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    type_: "Container".into(),
                    default: Some(
                        [("cpu", format!("{default_cpu}m")), ("memory", mem(default_mem))]
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), q(v)))
                            .collect(),
                    ),
                    default_request: Some(
                        [("cpu", format!("{}m", (default_cpu / 2).max(1))), ("memory", mem(default_mem / 2))]
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), q(v)))
                            .collect(),
                    ),
                    max: Some(
                        [("cpu", format!("{}m", plan.cpu_millis)), ("memory", mem(plan.memory_bytes))]
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), q(v)))
                            .collect(),
                    ),
                    ..Default::default()
                }],
            }),
        },
        // Deny every ingress into the namespace; each app's own policy opens its port to the ingress controller.
        network_policy: NetworkPolicy {
            metadata: meta("outpost-default-deny", ns, managed),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".into()]),
                ..Default::default()
            }),
        },
    }
}

/// The app's port, opened to the ingress controller (K3s runs Traefik in kube-system).
pub fn app_policy(namespace: &str, spec: &AppSpec) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(
            &format!("{}-ingress", spec.name),
            Some(namespace),
            labels(&[(MANAGED_BY, "outpost"), (INSTANCE, &spec.name)]),
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels(&[(INSTANCE, &spec.name)])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(LabelSelector {
                        match_labels: Some(labels(&[("kubernetes.io/metadata.name", "kube-system")])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(i32::from(spec.port))),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}

/// The app's objects for `rev`. Secret values go into the Secret only.
pub fn app(namespace: &str, spec: &AppSpec, rev: &Revision) -> AppManifests {
    let name = spec.name.as_str();
    let base = labels(&[(MANAGED_BY, "outpost"), (INSTANCE, name), ("app.kubernetes.io/name", name)]);
    let mut pod_labels = base.clone();
    pod_labels.insert(DEPLOYMENT_LABEL.into(), rev.deployment_id.clone());
    pod_labels.insert(COMMIT_LABEL.into(), rev.commit.chars().take(40).collect());
    let ns = Some(namespace);
    let r = &spec.resources;
    let pick = |pairs: [(&str, &Option<String>); 2]| {
        let m: BTreeMap<String, Quantity> =
            pairs.into_iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), q(v.clone())))).collect();
        (!m.is_empty()).then_some(m)
    };
    let resources = ResourceRequirements {
        requests: pick([("cpu", &r.cpu_request), ("memory", &r.memory_request)]),
        limits: pick([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]),
        ..Default::default()
    };
    let health = spec.health.as_ref().map(|h| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(h.path.clone()),
            port: IntOrString::Int(i32::from(h.port.unwrap_or(spec.port))),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    });
    let config_name = format!("{name}-env");
    let secret_name = format!("{name}-secrets");
    let annotations = rev.restarted_at.as_ref().map(|at| [(RESTARTED_AT.to_string(), at.clone())].into());
    let deployment = Deployment {
        metadata: meta(name, ns, base.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(rev.replicas.unwrap_or(spec.replicas) as i32),
            selector: LabelSelector { match_labels: Some(labels(&[(INSTANCE, name)])), ..Default::default() },
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_SECS),
            revision_history_limit: Some(3),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(if rev.one_at_a_time {
                    RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString::Int(1)),
                        max_surge: Some(IntOrString::Int(0)),
                    }
                } else {
                    RollingUpdateDeployment {
                        max_unavailable: Some(IntOrString::Int(0)),
                        max_surge: Some(IntOrString::Int(1)),
                    }
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), annotations, ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: name.into(),
                        image: Some(spec.image_for(&rev.commit)),
                        ports: Some(vec![ContainerPort {
                            container_port: i32::from(spec.port),
                            name: Some("http".into()),
                            ..Default::default()
                        }]),
                        env_from: Some(vec![
                            EnvFromSource {
                                config_map_ref: Some(ConfigMapEnvSource {
                                    name: config_name.clone(),
                                    optional: Some(false),
                                }),
                                ..Default::default()
                            },
                            EnvFromSource {
                                secret_ref: Some(SecretEnvSource { name: secret_name.clone(), optional: Some(false) }),
                                ..Default::default()
                            },
                        ]),
                        resources: Some(resources),
                        readiness_probe: health.clone(),
                        liveness_probe: health,
                        ..Default::default()
                    }],
                    automount_service_account_token: Some(false),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let service = Service {
        metadata: meta(name, ns, base.clone()),
        spec: Some(ServiceSpec {
            selector: Some(labels(&[(INSTANCE, name)])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(i32::from(spec.port))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ingress = (!spec.domains.is_empty()).then(|| Ingress {
        metadata: meta(name, ns, base.clone()),
        spec: Some(IngressSpec {
            rules: Some(
                spec.domains
                    .iter()
                    .map(|d| IngressRule {
                        host: Some(d.clone()),
                        http: Some(HTTPIngressRuleValue {
                            paths: vec![HTTPIngressPath {
                                path: Some("/".into()),
                                path_type: "Prefix".into(),
                                backend: IngressBackend {
                                    service: Some(IngressServiceBackend {
                                        name: name.into(),
                                        port: Some(ServiceBackendPort { number: Some(80), ..Default::default() }),
                                    }),
                                    ..Default::default()
                                },
                            }],
                        }),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    });
    AppManifests {
        config_map: ConfigMap {
            metadata: meta(&config_name, ns, base.clone()),
            data: Some(spec.env.clone()),
            ..Default::default()
        },
        secret: Secret {
            metadata: meta(&secret_name, ns, base),
            string_data: Some(spec.secrets.clone()),
            type_: Some("Opaque".into()),
            ..Default::default()
        },
        deployment,
        service,
        ingress,
    }
}
