//! The `/` filter: space-separated terms, all of which must match.
//!
//! - `status:lost`, `plan:pro`, `customer:acme` (plan and customer match a prefix: `customer:acm`),
//!   `label:env=prod` (or `label:env` for "has the label"), `is:alert` (what the header counts as alerts)
//! - `/regex/` matched against the name, customer, plan and hostname
//! - anything else: case-insensitive substring of the name, customer, plan or hostname
//! - about apps: `app:web` (an app whose name starts so), `status:failing` or an app phase
//!   (`status:degraded`): in the fleet, servers with such an app; in `:apps`, those apps

use outpost_proto::v1::{AppState, Server};

#[derive(Debug)]
enum Term {
    Status(String),
    Plan(String),
    Customer(String),
    Label(String, Option<String>),
    Regex(regex_lite::Regex),
    Text(String),
    /// `is:alert`: what the header counts as alerts.
    Alert,
    /// `app:NAME`: an app whose name starts so.
    App(String),
    /// `status:failing` or `status:PHASE`: an app failing, or in that phase.
    AppStatus(String),
    /// The typed filter does not parse: nothing matches (the console says why).
    Invalid,
}

#[derive(Debug, Default)]
pub struct Filter {
    text: String,
    terms: Vec<Term>,
}

impl Filter {
    /// Parses `text`; the error names the bad term.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut terms = Vec::new();
        for raw in text.split_whitespace() {
            let lower = raw.to_lowercase();
            let term = if let Some(v) = lower.strip_prefix("status:") {
                if v == "failing" || outpost_common::report::APP_PHASES.contains(&v) {
                    Term::AppStatus(v.to_string())
                } else if v.parse::<outpost_common::Liveness>().is_err() {
                    return Err(format!(
                        "status:{v}: expected one of {}, or an app's: failing, {}",
                        outpost_common::Liveness::words(),
                        outpost_common::report::APP_PHASES.join(", ")
                    ));
                } else {
                    Term::Status(v.to_string())
                }
            } else if let Some(v) = lower.strip_prefix("app:") {
                Term::App(v.to_string())
            } else if let Some(v) = lower.strip_prefix("plan:") {
                Term::Plan(v.to_string())
            } else if let Some(v) = lower.strip_prefix("customer:") {
                Term::Customer(v.to_string())
            } else if let Some(v) = raw.strip_prefix("label:") {
                match v.split_once('=') {
                    Some((k, val)) => Term::Label(k.to_string(), Some(val.to_string())),
                    None if !v.is_empty() => Term::Label(v.to_string(), None),
                    None => return Err("label: needs a key, as in label:env=prod".into()),
                }
            } else if lower == "is:alert" || lower == "is:alerts" {
                Term::Alert
            } else if raw.len() >= 2 && raw.starts_with('/') && raw.ends_with('/') {
                let re = regex_lite::Regex::new(&raw[1..raw.len() - 1]).map_err(|e| format!("{raw}: {e}"))?;
                Term::Regex(re)
            } else {
                Term::Text(lower)
            };
            terms.push(term);
        }
        Ok(Filter { text: text.to_string(), terms })
    }

    /// A filter that was typed wrong: shown as typed, matching nothing.
    pub fn invalid(text: &str) -> Filter {
        Filter { text: format!("{text} (invalid)"), terms: vec![Term::Invalid] }
    }

    /// Whether it selects only alerts (for the empty state).
    pub fn is_alerts(&self) -> bool {
        matches!(self.terms.as_slice(), [Term::Alert])
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// In `:apps`: whether app `a` of server `s` is selected (app terms apply to the app, the rest to its
    /// server).
    pub fn matches_app(&self, s: &Server, status: &str, a: &AppState) -> bool {
        self.terms.iter().all(|t| match t {
            Term::App(v) => app_named(a, v),
            Term::AppStatus(v) => app_in(a, v),
            other => self.term_matches(other, s, status),
        })
    }

    pub fn matches(&self, s: &Server, status: &str) -> bool {
        self.terms.iter().all(|t| self.term_matches(t, s, status))
    }

    fn term_matches(&self, t: &Term, s: &Server, status: &str) -> bool {
        let apps = || s.apps.iter().flat_map(|x| x.apps.iter());
        match t {
            Term::App(v) => apps().any(|a| app_named(a, v)),
            Term::AppStatus(v) => apps().any(|a| app_in(a, v)),
            Term::Status(v) => status == v,
            Term::Plan(v) => s.plan.to_lowercase().starts_with(v.as_str()),
            Term::Customer(v) => s.customer.to_lowercase().starts_with(v.as_str()),
            Term::Alert => crate::format::needs_attention(s),
            Term::Invalid => false,
            Term::Label(k, v) => s.labels.get(k).is_some_and(|have| v.as_ref().is_none_or(|want| have == want)),
            Term::Regex(re) => haystack(s).any(|h| re.is_match(h)),
            Term::Text(t) => haystack(s).any(|h| h.to_lowercase().contains(t.as_str())),
        }
    }
}

fn app_named(a: &AppState, prefix: &str) -> bool {
    a.name.starts_with(prefix)
}

fn app_in(a: &AppState, status: &str) -> bool {
    if status == "failing" { crate::format::app_failing(a) } else { a.phase == status }
}

fn haystack(s: &Server) -> impl Iterator<Item = &str> {
    [s.name.as_str(), s.customer.as_str(), s.plan.as_str()]
        .into_iter()
        .chain(s.host.as_ref().map(|h| h.hostname.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, customer: &str, plan: &str) -> Server {
        Server {
            name: name.into(),
            customer: customer.into(),
            plan: plan.into(),
            labels: [("env".to_string(), "prod".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn app_terms_select_servers_in_the_fleet_and_apps_in_the_apps_view() {
        let app = |name: &str, phase: &str| AppState { name: name.into(), phase: phase.into(), ..Default::default() };
        let mut s = server("web-1", "acme", "pro");
        s.apps = Some(outpost_proto::v1::AppsState {
            apps: vec![app("web", "available"), app("worker", "failed")],
            cluster: None,
        });
        let f = Filter::parse("status:failing").unwrap();
        assert!(f.matches(&s, "connected"), "the server has a failing app");
        assert!(f.matches_app(&s, "connected", &s.apps.as_ref().unwrap().apps[1]));
        assert!(!f.matches_app(&s, "connected", &s.apps.as_ref().unwrap().apps[0]));
        let f = Filter::parse("app:wor customer:acme").unwrap();
        assert!(f.matches_app(&s, "connected", &s.apps.as_ref().unwrap().apps[1]));
        assert!(!f.matches_app(&s, "connected", &s.apps.as_ref().unwrap().apps[0]));
        assert!(!Filter::parse("app:api").unwrap().matches(&s, "connected"));
        assert!(Filter::parse("status:available").unwrap().matches(&s, "connected"));
        assert!(Filter::parse("status:bogus").unwrap_err().contains("failing"));
    }

    #[test]
    fn terms_combine_with_and() {
        let s = server("web-1", "Acme", "pro");
        assert!(Filter::parse("").unwrap().matches(&s, "lost"));
        assert!(Filter::parse("acme").unwrap().matches(&s, "lost"));
        assert!(
            Filter::parse("status:lost plan:pro customer:acme label:env=prod label:env").unwrap().matches(&s, "lost")
        );
        assert!(!Filter::parse("status:connected").unwrap().matches(&s, "lost"));
        assert!(!Filter::parse("label:env=dev").unwrap().matches(&s, "lost"));
        assert!(Filter::parse("customer:acm plan:p").unwrap().matches(&s, "lost"), "prefixes match");
        assert!(!Filter::parse("customer:glo").unwrap().matches(&s, "lost"));
        assert!(!Filter::invalid("status:bogus").matches(&s, "lost"));
        assert_eq!(Filter::invalid("status:bogus").text(), "status:bogus (invalid)");
        assert!(Filter::parse("/^web-[0-9]$/").unwrap().matches(&s, "lost"));
        assert!(!Filter::parse("/^db/ acme").unwrap().matches(&s, "lost"));
    }

    #[test]
    fn bad_terms_are_named() {
        assert!(Filter::parse("status:gone").unwrap_err().contains("status:gone"));
        assert!(Filter::parse("/(/").unwrap_err().starts_with("/(/"));
        assert!(Filter::parse("label:").unwrap_err().contains("label:env=prod"));
    }
}
