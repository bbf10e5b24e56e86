//! Admission as a real API server does it, for what the product relies on: object names (DNS-1123 labels
//! for namespaces and services, subdomains for the rest), the namespace existing, and on pods the
//! LimitRange defaults and maxima and the ResourceQuota totals (`exceeded quota: …`, 403).

use serde_json::{Value, json};

/// A quantity in thousandths of its unit ("250m" → 250, "1" → 1000, "256Mi" → 268435456000).
pub(crate) fn milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: i128 = match suffix {
        "" => 1000,
        "m" => 1,
        "k" => 1_000_000,
        "M" => 1_000_000_000,
        "G" => 1_000_000_000_000,
        "T" => 1_000_000_000_000_000,
        "Ki" => 1024 * 1000,
        "Mi" => (1 << 20) * 1000,
        "Gi" => (1 << 30) * 1000,
        "Ti" => (1i128 << 40) * 1000,
        _ => return None,
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 9 {
        return None;
    }
    let whole: i128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let frac_v: i128 = if frac.is_empty() { 0 } else { frac.parse().ok()? };
    let scale = 10i128.pow(frac.len() as u32);
    Some(whole * mult + frac_v * mult / scale)
}

/// A quantity for messages: cpu in millicores, memory in Mi when whole.
fn show(resource: &str, m: i128) -> String {
    if resource.ends_with("cpu") {
        if m % 1000 == 0 { format!("{}", m / 1000) } else { format!("{m}m") }
    } else if resource == "pods" || resource == "count/pods" {
        format!("{}", m / 1000)
    } else {
        let bytes = m / 1000;
        if bytes % (1 << 20) == 0 { format!("{}Mi", bytes >> 20) } else { format!("{bytes}") }
    }
}

pub(crate) fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `None` when `name` is a valid name for `plural`; else the API server's message.
pub(crate) fn name_problem(plural: &str, name: &str) -> Option<String> {
    let label = matches!(plural, "namespaces" | "services");
    let ok = if label { is_label(name) } else { name.len() <= 253 && name.split('.').all(is_label) };
    (!ok).then(|| {
        if label {
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
            )
        } else {
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
            )
        }
    })
}

/// One label as the API server (and the Hetzner API, which has the same rules) checks it.
pub(crate) fn label_problem(k: &str, v: &str) -> Option<String> {
    let (prefix, name) = k.rsplit_once('/').map_or((None, k), |(p, n)| (Some(p), n));
    let part_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if !part_ok(name) || !prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_label)) {
        return Some(format!(
            "label key {k:?}: a name of at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric, with an optional DNS subdomain prefix and '/'"
        ));
    }
    if !(v.is_empty() || part_ok(v)) {
        return Some(format!(
            "label value {v:?}: empty, or at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    None
}

/// Label keys and values as the API server checks them.
pub(crate) fn labels_problem(obj: &Value) -> Option<String> {
    let labels = obj["metadata"]["labels"].as_object()?;
    labels
        .iter()
        .find_map(|(k, v)| label_problem(k, v.as_str().unwrap_or("")))
        .map(|e| format!("metadata.labels: Invalid value: {e}"))
}

/// The LimitRanges' Container defaults applied to a pod, then their maxima checked (403 message on a breach).
pub(crate) fn limit_ranges(pod: &mut Value, ranges: &[&Value]) -> Result<(), String> {
    let Some(containers) = pod["spec"]["containers"].as_array_mut() else { return Ok(()) };
    for r in ranges {
        for item in r["spec"]["limits"].as_array().into_iter().flatten().filter(|i| i["type"] == "Container") {
            for c in containers.iter_mut() {
                if !c["resources"].is_object() {
                    c["resources"] = json!({});
                }
                for (kind, defaults) in [("limits", &item["default"]), ("requests", &item["defaultRequest"])] {
                    for (res, q) in defaults.as_object().into_iter().flatten() {
                        if c["resources"][kind].get(res).is_none() {
                            if !c["resources"][kind].is_object() {
                                c["resources"][kind] = json!({});
                            }
                            // A request defaults to the limit when the range gives no default request.
                            c["resources"][kind][res] = q.clone();
                        }
                    }
                }
                // Requests default to limits for what the range left without a request default.
                let limits = c["resources"]["limits"].clone();
                for (res, q) in limits.as_object().into_iter().flatten() {
                    if c["resources"]["requests"].get(res).is_none() {
                        if !c["resources"]["requests"].is_object() {
                            c["resources"]["requests"] = json!({});
                        }
                        c["resources"]["requests"][res] = q.clone();
                    }
                }
                for (res, max) in item["max"].as_object().into_iter().flatten() {
                    let limit = c["resources"]["limits"][res].as_str().and_then(milli);
                    let max_m = max.as_str().and_then(milli).unwrap_or(i128::MAX);
                    if limit.is_some_and(|l| l > max_m) {
                        return Err(format!(
                            "maximum {res} usage per Container is {}, but limit is {}",
                            max.as_str().unwrap_or_default(),
                            c["resources"]["limits"][res].as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// What a pod counts against a quota: `requests.cpu`, `limits.memory`, `pods`… in thousandths.
pub(crate) fn pod_usage(pod: &Value, resource: &str) -> Option<i128> {
    if resource == "pods" || resource == "count/pods" {
        return Some(1000);
    }
    let (kind, res) = match resource.split_once('.') {
        Some((k @ ("requests" | "limits"), r)) => (k, r),
        _ if matches!(resource, "cpu" | "memory") => ("requests", resource),
        _ => return Some(0),
    };
    if !matches!(res, "cpu" | "memory") {
        return Some(0);
    }
    let mut sum = 0;
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        sum += c["resources"][kind][res].as_str().and_then(milli)?;
    }
    Some(sum)
}

/// Whether a pod still counts against quotas (not finished).
pub(crate) fn counts(pod: &Value) -> bool {
    !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// Checks a new pod against one quota, given the pods already counted; `Err` is the API server's message.
pub(crate) fn quota(quota: &Value, pod: &Value, existing: &[&Value]) -> Result<(), String> {
    let name = quota["metadata"]["name"].as_str().unwrap_or_default();
    let Some(hard) = quota["spec"]["hard"].as_object() else { return Ok(()) };
    let mut missing = Vec::new();
    let (mut requested, mut used, mut limited) = (Vec::new(), Vec::new(), Vec::new());
    for (res, h) in hard {
        let Some(h) = h.as_str().and_then(milli) else { continue };
        let Some(want) = pod_usage(pod, res) else {
            missing.push(res.clone());
            continue;
        };
        if want == 0 {
            continue;
        }
        let have: i128 = existing.iter().filter(|p| counts(p)).filter_map(|p| pod_usage(p, res)).sum();
        if have + want > h {
            requested.push(format!("{res}={}", show(res, want)));
            used.push(format!("{res}={}", show(res, have)));
            limited.push(format!("{res}={}", show(res, h)));
        }
    }
    if !missing.is_empty() {
        missing.sort();
        let containers: Vec<&str> =
            pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
        return Err(format!("failed quota: {name}: must specify {}", missing.join(","))
            + &format!(" for: {}", containers.join(",")));
    }
    if requested.is_empty() {
        return Ok(());
    }
    Err(format!(
        "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
        requested.join(","),
        used.join(","),
        limited.join(",")
    ))
}

/// A quota's `status` (hard and used) from the pods it counts.
pub(crate) fn quota_status(quota: &Value, pods: &[&Value]) -> Value {
    let hard = quota["spec"]["hard"].clone();
    let mut used = serde_json::Map::new();
    for res in hard.as_object().into_iter().flatten().map(|(k, _)| k) {
        let sum: i128 = pods.iter().filter(|p| counts(p)).filter_map(|p| pod_usage(p, res)).sum();
        used.insert(res.clone(), json!(show(res, sum)));
    }
    json!({"hard": hard, "used": used})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_names_limits_and_quotas_as_the_api_server_has_them() {
        assert_eq!(milli("250m"), Some(250));
        assert_eq!(milli("0.5"), Some(500));
        assert_eq!(milli("256Mi"), Some(256 * 1024 * 1024 * 1000));
        assert_eq!(milli("1Gi"), milli("1024Mi"));
        assert_eq!(milli("12x"), None);
        assert!(name_problem("namespaces", "acme").is_none() && name_problem("namespaces", "Acme").is_some());
        assert!(name_problem("namespaces", "a.b").is_some() && name_problem("configmaps", "a.b").is_none());
        assert!(name_problem("pods", "-x").is_some() && name_problem("pods", &"x".repeat(254)).is_some());

        let range = json!({"spec": {"limits": [{"type": "Container", "default": {"cpu": "250m", "memory": "256Mi"},
            "defaultRequest": {"cpu": "125m", "memory": "128Mi"}, "max": {"cpu": "500m", "memory": "512Mi"}}]}});
        let mut pod = json!({"spec": {"containers": [{"name": "web"}]}});
        limit_ranges(&mut pod, &[&range]).unwrap();
        assert_eq!(pod["spec"]["containers"][0]["resources"]["limits"]["memory"], "256Mi");
        assert_eq!(pod["spec"]["containers"][0]["resources"]["requests"]["cpu"], "125m");
        let mut big = json!({"spec": {"containers": [{"name": "web", "resources": {"limits": {"memory": "1Gi"}}}]}});
        assert!(limit_ranges(&mut big, &[&range]).unwrap_err().contains("maximum memory usage per Container is 512Mi"));

        let q = json!({"metadata": {"name": "outpost-plan"}, "spec": {"hard": {"limits.memory": "512Mi", "limits.cpu": "500m"}}});
        assert!(quota(&q, &pod, &[&pod]).is_ok());
        let e = quota(&q, &pod, &[&pod, &pod]).unwrap_err();
        assert_eq!(
            e,
            "exceeded quota: outpost-plan, requested: limits.cpu=250m,limits.memory=256Mi, used: limits.cpu=500m,limits.memory=512Mi, limited: limits.cpu=500m,limits.memory=512Mi"
        );
        let bare = json!({"spec": {"containers": [{"name": "web"}]}});
        assert!(
            quota(&q, &bare, &[])
                .unwrap_err()
                .starts_with("failed quota: outpost-plan: must specify limits.cpu,limits.memory")
        );
        assert_eq!(quota_status(&q, &[&pod])["used"]["limits.memory"], "256Mi");
    }
}
