//! Which servers an action targets: `web-1,web-2`, `customer:acme`, `plan:pro`, `label:env=prod`,
//! `status:connected`, `all`, combined with spaces or commas. Different keys must all match (AND); several
//! names (or statuses) match any of them (OR). Shared by the hub (which resolves it), the CLI and the console
//! (which show the count to confirm before sending).

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub names: Vec<String>,
    pub customer: Option<String>,
    pub plan: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub status: Vec<String>,
    pub all: bool,
}

/// One server as a selector sees it.
pub struct Candidate<'a> {
    pub name: &'a str,
    pub customer: &'a str,
    pub plan: &'a str,
    pub status: &'a str,
    pub label: &'a dyn Fn(&str) -> Option<&'a str>,
}

impl Selector {
    /// Matches nothing: a request must name its targets (or say `all`).
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.names.is_empty()
            && self.customer.is_none()
            && self.plan.is_none()
            && self.labels.is_empty()
            && self.status.is_empty()
    }

    pub fn matches(&self, c: &Candidate<'_>) -> bool {
        !self.is_empty()
            && (self.names.is_empty() || self.names.iter().any(|n| n == c.name))
            && self.customer.as_ref().is_none_or(|x| x == c.customer)
            && self.plan.as_ref().is_none_or(|x| x == c.plan)
            && (self.status.is_empty() || self.status.iter().any(|s| s == c.status))
            && self.labels.iter().all(|(k, v)| (c.label)(k) == Some(v.as_str()))
    }
}

impl std::str::FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Selector, String> {
        let mut sel = Selector::default();
        for term in s.split([',', ' ']).map(str::trim).filter(|t| !t.is_empty()) {
            match term.split_once(':') {
                None if term == "all" => sel.all = true,
                None if crate::cert::valid_name(term) => sel.names.push(term.to_string()),
                None => return Err(format!("{term:?} is not a server name")),
                Some(("customer", v)) if !v.is_empty() => sel.customer = Some(v.to_string()),
                Some(("plan", v)) if !v.is_empty() => sel.plan = Some(v.to_string()),
                Some(("status", v)) => match v.parse::<crate::Liveness>() {
                    Ok(l) => sel.status.push(l.as_str().to_string()),
                    Err(_) => return Err(format!("status:{v} is not one of {}", crate::Liveness::words())),
                },
                Some(("label", kv)) => {
                    let (k, v) = kv.split_once('=').ok_or_else(|| format!("label:{kv} must be label:KEY=VALUE"))?;
                    sel.labels.insert(k.to_string(), v.to_string());
                }
                Some((k, _)) => {
                    return Err(format!(
                        "{term:?}: unknown key {k:?}; use NAME, customer:X, plan:X, label:K=V, status:S or all"
                    ));
                }
            }
        }
        if sel.is_empty() {
            return Err("the selector is empty: name servers (web-1,web-2), or use customer:, plan:, label:, \
                        status: or all"
                .into());
        }
        Ok(sel)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut terms: Vec<String> = Vec::new();
        if self.all {
            terms.push("all".into());
        }
        terms.extend(self.names.iter().cloned());
        terms.extend(self.customer.iter().map(|c| format!("customer:{c}")));
        terms.extend(self.plan.iter().map(|p| format!("plan:{p}")));
        terms.extend(self.labels.iter().map(|(k, v)| format!("label:{k}={v}")));
        terms.extend(self.status.iter().map(|s| format!("status:{s}")));
        f.write_str(&terms.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand<'a>(name: &'a str, status: &'a str, label: &'a dyn Fn(&str) -> Option<&'a str>) -> Candidate<'a> {
        Candidate { name, customer: "acme", plan: "pro", status, label }
    }

    #[test]
    fn parse_match_and_display() {
        let env = |k: &str| (k == "env").then_some("prod");
        let none = |_: &str| None;
        let s: Selector = "web-1,web-2".parse().unwrap();
        assert!(s.matches(&cand("web-2", "lost", &none)) && !s.matches(&cand("web-3", "connected", &none)));
        let s: Selector = "customer:acme label:env=prod status:connected".parse().unwrap();
        assert!(s.matches(&cand("x", "connected", &env)));
        assert!(!s.matches(&cand("x", "lost", &env)) && !s.matches(&cand("x", "connected", &none)));
        assert_eq!(s.to_string(), "customer:acme label:env=prod status:connected");
        assert!("all".parse::<Selector>().unwrap().matches(&cand("any", "pending", &none)));
        assert!(!Selector::default().matches(&cand("any", "pending", &none)), "empty matches nothing");
    }

    #[test]
    fn bad_selectors_say_what_to_write() {
        let e = |s: &str| s.parse::<Selector>().unwrap_err();
        assert!(e("").contains("the selector is empty"));
        assert!(e("status:up").contains("not one of pending, connected"));
        assert!(e("role:x").contains("unknown key \"role\""));
        assert!(e("label:env").contains("label:KEY=VALUE"));
        assert!(e("Web_1!").contains("not a server name"));
    }
}
