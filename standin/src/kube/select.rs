//! Label and field selectors as the API server parses them: equality (`k=v`, `k==v`, `k!=v`), existence
//! (`k`, `!k`) and sets (`k in (a,b)`, `k notin (a)`), comma-separated, all of which must hold. A selector
//! that does not parse is refused (400), never read as "nothing matches".

use serde_json::Value;

#[derive(Debug, PartialEq)]
pub(crate) enum Term {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// Splits on commas outside parentheses.
fn terms(s: &str) -> Result<Vec<&str>, String> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unable to parse requirement: unbalanced parentheses in {s:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unable to parse requirement: unbalanced parentheses in {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out.into_iter().map(str::trim).filter(|t| !t.is_empty()).collect())
}

fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    let ok = !k.is_empty()
        && k.len() <= 317
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok { Ok(k.to_string()) } else { Err(format!("unable to parse requirement: invalid label key {k:?}")) }
}

fn set(rest: &str) -> Result<Vec<String>, String> {
    let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(|| {
        format!("unable to parse requirement: expected '(' … ')' after a set operator, found {rest:?}")
    })?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

/// Parses a label selector (the empty one selects everything).
pub(crate) fn parse_labels(s: &str) -> Result<Vec<Term>, String> {
    terms(s)?
        .into_iter()
        .map(|t| {
            if let Some(k) = t.strip_prefix('!') {
                return Ok(Term::Absent(key(k)?));
            }
            if let Some((k, v)) = t.split_once("!=") {
                return Ok(Term::Ne(key(k)?, v.trim().into()));
            }
            if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                return Ok(Term::Eq(key(k)?, v.trim().into()));
            }
            if let Some((k, rest)) = t.split_once(" notin ") {
                return Ok(Term::NotIn(key(k)?, set(rest)?));
            }
            if let Some((k, rest)) = t.split_once(" in ") {
                return Ok(Term::In(key(k)?, set(rest)?));
            }
            Ok(Term::Exists(key(t)?))
        })
        .collect()
}

/// Whether `get(key)` satisfies every term.
pub(crate) fn holds<'a>(terms: &[Term], get: impl Fn(&str) -> Option<&'a str>) -> bool {
    terms.iter().all(|t| match t {
        Term::Eq(k, v) => get(k) == Some(v.as_str()),
        Term::Ne(k, v) => get(k) != Some(v.as_str()),
        Term::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Term::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Term::Exists(k) => get(k).is_some(),
        Term::Absent(k) => get(k).is_none(),
    })
}

pub(crate) fn labels_hold(terms: &[Term], obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    holds(terms, |k| labels.get(k).and_then(Value::as_str))
}

/// The fields a resource can be selected by: every resource by its name and namespace, as the API server
/// allows; pods also by phase and node, events by their object.
fn field_supported(plural: &str, field: &str) -> bool {
    matches!(field, "metadata.name" | "metadata.namespace")
        || (plural == "pods" && matches!(field, "status.phase" | "spec.nodeName" | "spec.restartPolicy"))
        || (plural == "events" && (field.starts_with("involvedObject.") || field == "reason" || field == "type"))
        || (plural == "secrets" && field == "type")
}

/// Parses a field selector for `plural`: only `=`, `==` and `!=`, on the fields the resource supports.
pub(crate) fn parse_fields(plural: &str, s: &str) -> Result<Vec<Term>, String> {
    terms(s)?
        .into_iter()
        .map(|t| {
            let (k, v, ne) = if let Some((k, v)) = t.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (k, v, false)
            } else {
                return Err(format!("invalid selector: '{t}'; can't understand '{t}'"));
            };
            let k = k.trim();
            if !field_supported(plural, k) {
                return Err(format!("field label not supported: {k}"));
            }
            Ok(if ne { Term::Ne(k.into(), v.trim().into()) } else { Term::Eq(k.into(), v.trim().into()) })
        })
        .collect()
}

pub(crate) fn fields_hold(terms: &[Term], obj: &Value) -> bool {
    holds(terms, |path| path.split('.').try_fold(obj, |o, k| o.get(k)).and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_parse_as_the_api_server_parses_them() {
        let o =
            json!({"metadata": {"name": "a", "labels": {"app": "web", "tier": "x"}}, "status": {"phase": "Running"}});
        let l = |s: &str| labels_hold(&parse_labels(s).unwrap(), &o);
        assert!(l("app=web,tier") && l("app==web") && l("app!=api") && l("!gone") && l(""));
        assert!(l("app in (web, api)") && l("tier notin (y)") && l("gone notin (y)") && l("app in (api,web),tier=x"));
        assert!(!l("app in (api)") && !l("app notin (web)") && !l("gone in (x)") && !l("!app"));
        assert!(parse_labels("app in web").is_err() && parse_labels("app in (web").is_err());
        let f = |s: &str| fields_hold(&parse_fields("pods", s).unwrap(), &o);
        assert!(f("metadata.name=a") && f("status.phase!=Pending") && !f("metadata.name=b"));
        assert!(parse_fields("deployments", "status.phase=Running").unwrap_err().contains("not supported"));
    }
}
