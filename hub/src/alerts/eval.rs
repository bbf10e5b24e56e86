//! The evaluation as a pure function: the alerts as they were, the conditions that hold now and the
//! silences in, the alerts as they are and what changed out. No clock, store or network: `Alerts::evaluate`
//! measures the conditions and carries out what a round says (audit, store, notify).
//!
//! An alert is pending from the round its condition first holds, firing once it held for its rule's
//! `for_secs`, and resolved once its condition has been clear for `resolve_after` (a return before that
//! is a flap: it keeps firing). A pending alert whose condition clears is forgotten. A firing alert is
//! notified once, when it fires or when the silence over it ends.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::rules::Rule;
use crate::store::SilenceRecord;

/// Where an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Firing,
}

/// One alert.
#[derive(Clone, Debug)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub state: State,
    /// When the condition started to hold, and when it fired.
    pub since_ms: i64,
    pub fired_ms: i64,
    pub value: f64,
    pub summary: String,
    pub action: String,
    /// The silence that keeps it from being notified, if any.
    pub silenced_by: String,
    /// Who said they are on it.
    pub acked_by: String,
    /// Its firing was notified (webhook): its resolution will be too.
    pub(super) notified: bool,
    /// When its condition last held (a firing alert resolves `resolve_after` after this).
    pub(super) held_ms: i64,
    /// Firing, and its condition did not hold at the last round: it resolves unless the condition returns.
    pub(super) clearing: bool,
}

impl Alert {
    /// Its identity: the labels.
    pub fn key(&self) -> String {
        self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// A rule's condition holding now, for these labels.
#[derive(Clone, Debug)]
pub struct Condition {
    pub rule: Rule,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub summary: String,
}

/// What one round changed.
#[derive(Debug, Default)]
pub struct Round {
    /// Alerts that started firing (to audit and store).
    pub fired: Vec<Alert>,
    /// Firing alerts to notify (new, or out from under a silence).
    pub notify: Vec<Alert>,
    /// Alerts that resolved (to audit, forget, and notify when their firing was).
    pub resolved: Vec<Alert>,
    /// Firing alerts whose condition came back before they could resolve.
    pub flaps: u64,
}

/// One round at `now_ms`.
pub fn step(
    active: &mut HashMap<String, Alert>,
    holding: Vec<Condition>,
    silences: &[(String, SilenceRecord)],
    now_ms: i64,
    resolve_after_ms: i64,
) -> Round {
    let mut round = Round::default();
    let mut seen = HashSet::new();
    for c in holding {
        let alert = Alert {
            labels: c.labels,
            state: State::Pending,
            since_ms: now_ms,
            fired_ms: 0,
            value: c.value,
            summary: c.summary,
            action: c.rule.action.clone(),
            silenced_by: String::new(),
            acked_by: String::new(),
            notified: false,
            held_ms: now_ms,
            clearing: false,
        };
        let key = alert.key();
        seen.insert(key.clone());
        let a = active.entry(key).or_insert(alert.clone());
        if a.clearing {
            // Clear for a while, and back before it could resolve: a flap, not a new alert.
            round.flaps += 1;
            a.clearing = false;
        }
        a.held_ms = now_ms;
        a.value = alert.value;
        a.summary = alert.summary;
        if a.state == State::Pending && now_ms - a.since_ms >= (c.rule.for_secs * 1000) as i64 {
            a.state = State::Firing;
            a.fired_ms = now_ms;
            round.fired.push(a.clone());
        }
    }
    active.retain(|k, a| {
        let held = seen.contains(k);
        let keep = held || (a.state == State::Firing && now_ms - a.held_ms < resolve_after_ms);
        a.clearing = !held && keep;
        if !keep && a.state == State::Firing {
            round.resolved.push(a.clone());
        }
        keep
    });
    for a in active.values_mut() {
        a.silenced_by = silences
            .iter()
            .find(|(_, s)| s.expires_ms > now_ms && s.matchers.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        if a.state == State::Firing && a.silenced_by.is_empty() && !a.notified {
            a.notified = true;
            round.notify.push(a.clone());
        }
    }
    round
}

#[cfg(test)]
mod tests {
    use super::super::rules::{Metric, Op, Severity};
    use super::*;

    fn rule(for_secs: u64) -> Rule {
        Rule {
            name: "disk_full".into(),
            metric: Metric::DiskUsedPercent,
            op: Op::Gt,
            threshold: 90.0,
            for_secs,
            severity: Severity::Warning,
            action: "free some space".into(),
            labels: BTreeMap::new(),
        }
    }

    fn holds(rule: &Rule, server: &str, value: f64) -> Condition {
        let labels = [("alertname", rule.name.as_str()), ("server", server)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Condition { rule: rule.clone(), labels, value, summary: format!("{server} at {value}") }
    }

    fn silence(matchers: &[(&str, &str)], expires_ms: i64) -> (String, SilenceRecord) {
        let matchers = matchers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ("s-1".into(), SilenceRecord { matchers, expires_ms, ..Default::default() })
    }

    const S: i64 = 1000;

    #[test]
    fn an_alert_is_pending_for_its_rules_time_then_fires_and_is_notified_once() {
        let (r, mut active) = (rule(30), HashMap::new());
        let round = step(&mut active, vec![holds(&r, "a", 95.0)], &[], 0, 60 * S);
        assert!(round.fired.is_empty() && round.notify.is_empty());
        assert_eq!(active.values().next().unwrap().state, State::Pending);
        let round = step(&mut active, vec![holds(&r, "a", 96.0)], &[], 29 * S, 60 * S);
        assert!(round.fired.is_empty(), "29 s of a 30 s rule");
        let round = step(&mut active, vec![holds(&r, "a", 97.0)], &[], 30 * S, 60 * S);
        assert_eq!(round.fired.len(), 1);
        assert_eq!(round.notify.len(), 1);
        let a = &round.fired[0];
        assert_eq!((a.since_ms, a.fired_ms, a.value), (0, 30 * S, 97.0));
        let round = step(&mut active, vec![holds(&r, "a", 98.0)], &[], 31 * S, 60 * S);
        assert!(round.fired.is_empty() && round.notify.is_empty(), "fired and notified once");
        assert_eq!(active.values().next().unwrap().value, 98.0, "the value follows");
    }

    #[test]
    fn a_pending_alert_whose_condition_clears_is_forgotten_without_a_word() {
        let (r, mut active) = (rule(30), HashMap::new());
        step(&mut active, vec![holds(&r, "a", 95.0)], &[], 0, 60 * S);
        let round = step(&mut active, vec![], &[], 10 * S, 60 * S);
        assert!(round.resolved.is_empty() && active.is_empty());
    }

    #[test]
    fn a_firing_alert_resolves_after_it_was_clear_for_resolve_after_and_a_return_before_is_a_flap() {
        let (r, mut active) = (rule(0), HashMap::new());
        assert_eq!(step(&mut active, vec![holds(&r, "a", 95.0)], &[], 0, 60 * S).fired.len(), 1);
        // Clear: still firing while the condition is clear for less than 60 s.
        let round = step(&mut active, vec![], &[], 10 * S, 60 * S);
        assert!(round.resolved.is_empty() && active.values().next().unwrap().state == State::Firing);
        // Back: a flap, not a new alert.
        let round = step(&mut active, vec![holds(&r, "a", 95.0)], &[], 20 * S, 60 * S);
        assert_eq!((round.flaps, round.fired.len(), round.notify.len()), (1, 0, 0));
        // Held again at the next round: no flap.
        assert_eq!(step(&mut active, vec![holds(&r, "a", 95.0)], &[], 21 * S, 60 * S).flaps, 0);
        // Clear for 60 s: resolved, notified (its firing was).
        step(&mut active, vec![], &[], 30 * S, 60 * S);
        let round = step(&mut active, vec![], &[], 81 * S, 60 * S);
        assert_eq!(round.resolved.len(), 1);
        assert!(round.resolved[0].notified && active.is_empty());
        // With no damping, a clear round resolves at once.
        assert_eq!(step(&mut active, vec![holds(&r, "a", 95.0)], &[], 90 * S, 0).fired.len(), 1);
        assert_eq!(step(&mut active, vec![], &[], 91 * S, 0).resolved.len(), 1);
    }

    #[test]
    fn a_silenced_alert_fires_unnotified_and_is_notified_when_the_silence_ends() {
        let (r, mut active) = (rule(0), HashMap::new());
        let quiet = [silence(&[("server", "a")], 50 * S)];
        let round = step(&mut active, vec![holds(&r, "a", 95.0), holds(&r, "b", 95.0)], &quiet, 0, 60 * S);
        assert_eq!(round.fired.len(), 2, "both fire");
        let notified: Vec<&str> = round.notify.iter().map(|a| a.labels["server"].as_str()).collect();
        assert_eq!(notified, ["b"], "a is silenced");
        assert_eq!(active.values().find(|a| a.labels["server"] == "a").unwrap().silenced_by, "s-1");
        let round = step(&mut active, vec![holds(&r, "a", 95.0), holds(&r, "b", 95.0)], &quiet, 50 * S, 60 * S);
        let notified: Vec<&str> = round.notify.iter().map(|a| a.labels["server"].as_str()).collect();
        assert_eq!(notified, ["a"], "notified once the silence ended");
        // A silence that matches no label of the alert silences nothing.
        let other = [silence(&[("server", "a"), ("app", "web")], 1000 * S)];
        let mut fresh = HashMap::new();
        assert_eq!(step(&mut fresh, vec![holds(&r, "a", 95.0)], &other, 0, 0).notify.len(), 1);
    }

    #[test]
    fn a_resolved_alert_that_was_never_notified_is_not_notified_resolved() {
        let (r, mut active) = (rule(0), HashMap::new());
        let quiet = [silence(&[("alertname", "disk_full")], 1000 * S)];
        step(&mut active, vec![holds(&r, "a", 95.0)], &quiet, 0, 0);
        let round = step(&mut active, vec![], &quiet, S, 0);
        assert_eq!(round.resolved.len(), 1);
        assert!(!round.resolved[0].notified, "nobody was told it fired");
    }
}
