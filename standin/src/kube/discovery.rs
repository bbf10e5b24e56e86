//! What the API server says about itself: `/version`, `/api`, `/apis` and each group version's resource
//! list, so that `kubectl` and the official clients find their way (they map kinds to paths from these).

use serde_json::{Value, json};

/// A resource the stand-in serves.
pub(crate) struct Resource {
    /// `api/v1` or `apis/GROUP/VERSION`.
    pub gv: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short: &'static [&'static str],
    /// Subresources served (`log`, `status`).
    pub subs: &'static [&'static str],
}

const fn r(
    gv: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    subs: &'static [&'static str],
) -> Resource {
    Resource { gv, plural, singular, kind, namespaced, short, subs }
}

pub(crate) const RESOURCES: &[Resource] = &[
    r("api/v1", "namespaces", "namespace", "Namespace", false, &["ns"], &["status"]),
    r("api/v1", "nodes", "node", "Node", false, &["no"], &["status"]),
    r("api/v1", "pods", "pod", "Pod", true, &["po"], &["log", "status"]),
    r("api/v1", "services", "service", "Service", true, &["svc"], &["status"]),
    r("api/v1", "configmaps", "configmap", "ConfigMap", true, &["cm"], &[]),
    r("api/v1", "secrets", "secret", "Secret", true, &[], &[]),
    r("api/v1", "resourcequotas", "resourcequota", "ResourceQuota", true, &["quota"], &["status"]),
    r("api/v1", "limitranges", "limitrange", "LimitRange", true, &["limits"], &[]),
    r("api/v1", "events", "event", "Event", true, &["ev"], &[]),
    r(
        "api/v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        &["status"],
    ),
    r("api/v1", "serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], &[]),
    r("apis/apps/v1", "deployments", "deployment", "Deployment", true, &["deploy"], &["status"]),
    r("apis/apps/v1", "replicasets", "replicaset", "ReplicaSet", true, &["rs"], &["status"]),
    r("apis/networking.k8s.io/v1", "ingresses", "ingress", "Ingress", true, &["ing"], &["status"]),
    r("apis/networking.k8s.io/v1", "networkpolicies", "networkpolicy", "NetworkPolicy", true, &["netpol"], &[]),
];

pub(crate) fn resource(gv: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.gv == gv && r.plural == plural)
}

/// `v1` or `apps/v1`: the apiVersion objects of this group version carry.
pub(crate) fn api_version(gv: &str) -> &str {
    gv.strip_prefix("api/").or_else(|| gv.strip_prefix("apis/")).unwrap_or(gv)
}

const VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// The discovery document at `path`, if it is one.
pub(crate) fn document(path: &str) -> Option<Value> {
    let path = path.trim_end_matches('/');
    match path {
        "/version" => Some(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.5+k3s1",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2025-10-01T00:00:00Z", "goVersion": "go1.24.6", "compiler": "gc", "platform": "linux/amd64"})),
        "/api" => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]})),
        "/apis" => {
            let mut groups: Vec<&str> = RESOURCES.iter().map(|r| r.gv).filter(|g| g.starts_with("apis/")).collect();
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let gv = api_version(g);
                    let (name, version) = gv.split_once('/').unwrap_or((gv, "v1"));
                    let v = json!({"groupVersion": gv, "version": version});
                    json!({"name": name, "versions": [v], "preferredVersion": v})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        _ => {
            let gv = path.trim_start_matches('/');
            let of: Vec<&Resource> = RESOURCES.iter().filter(|r| r.gv == gv).collect();
            if of.is_empty() {
                return None;
            }
            let mut resources = Vec::new();
            for r in of {
                resources.push(json!({"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": VERBS, "shortNames": r.short}));
                for s in r.subs {
                    let (kind, verbs) =
                        if *s == "log" { ("Pod", vec!["get"]) } else { (r.kind, vec!["get", "patch", "update"]) };
                    resources.push(json!({"name": format!("{}/{s}", r.plural), "singularName": "",
                        "namespaced": r.namespaced, "kind": kind, "verbs": verbs}));
                }
            }
            Some(
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version(gv), "resources": resources}),
            )
        }
    }
}
