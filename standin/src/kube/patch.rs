//! The three patch formats the API server takes besides apply: JSON merge patch (RFC 7386), strategic
//! merge patch (read here as a merge patch: lists are replaced, not merged by key), and JSON patch
//! (RFC 6902). Every failure is an answer, never a panic.

use serde_json::Value;

/// `over` merged into `base`: objects key by key, everything else replaced; `null` removes.
pub(crate) fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn unescape(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

/// Splits a JSON pointer into its parent and last token.
fn parent(path: &str) -> Result<(&str, String), String> {
    let i = path.rfind('/').ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok((&path[..i], unescape(&path[i + 1..])))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (p, last) = parent(path)?;
    match doc.pointer_mut(p) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i =
                if last == "-" { a.len() } else { last.parse().map_err(|_| format!("invalid index in {path:?}"))? };
            if i > a.len() {
                return Err(format!("index out of bounds in {path:?}"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("the path {path:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (p, last) = parent(path)?;
    match doc.pointer_mut(p) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(|| format!("the path {path:?} does not exist")),
        Some(Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("invalid index in {path:?}"))?;
            (i < a.len()).then(|| a.remove(i)).ok_or_else(|| format!("index out of bounds in {path:?}"))
        }
        _ => Err(format!("the path {path:?} does not exist")),
    }
}

/// Applies a JSON patch (a list of operations) to `doc`, all or nothing.
pub(crate) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch is a list of operations")?;
    let mut out = doc.clone();
    for op in ops {
        let path = op["path"].as_str().ok_or("every operation needs a path")?;
        let value = || op.get("value").cloned().ok_or_else(|| format!("{} needs a value", op["op"]));
        let from = || op["from"].as_str().ok_or_else(|| format!("{} needs from", op["op"]));
        match op["op"].as_str() {
            Some("add") => add(&mut out, path, value()?)?,
            Some("remove") => {
                remove(&mut out, path)?;
            }
            Some("replace") => {
                remove(&mut out, path)?;
                add(&mut out, path, value()?)?;
            }
            Some("test") => {
                if out.pointer(path) != Some(&value()?) {
                    return Err(format!("the test of {path:?} failed"));
                }
            }
            Some("move") => {
                let v = remove(&mut out, from()?)?;
                add(&mut out, path, v)?;
            }
            Some("copy") => {
                let v = out.pointer(from()?).cloned().ok_or("copy from a path that does not exist")?;
                add(&mut out, path, v)?;
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    *doc = out;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patches_apply_or_say_why_not() {
        let mut b = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge(&mut b, &json!({"a": {"b": 3, "c": null}, "d": [2, 3]}));
        assert_eq!(b, json!({"a": {"b": 3}, "d": [2, 3]}));
        let mut d = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1, "l": [1, 2]}});
        json_patch(&mut d, &json!([{"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/metadata/labels/b~1c", "value": "2"}, {"op": "add", "path": "/spec/l/-", "value": 3},
            {"op": "remove", "path": "/spec/l/0"}, {"op": "test", "path": "/spec/replicas", "value": 3}]))
        .unwrap();
        assert_eq!(d, json!({"metadata": {"labels": {"a": "1", "b/c": "2"}}, "spec": {"replicas": 3, "l": [2, 3]}}));
        let before = d.clone();
        assert!(
            json_patch(
                &mut d,
                &json!([{"op": "remove", "path": "/spec/replicas"}, {"op": "test", "path": "/x", "value": 1}])
            )
            .is_err()
        );
        assert_eq!(d, before, "a failed patch changes nothing");
        assert!(json_patch(&mut d, &json!({"op": "add"})).is_err());
        assert!(json_patch(&mut d, &json!([{"op": "add", "path": "/nowhere/deep", "value": 1}])).is_err());
    }
}
