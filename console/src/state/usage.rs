//! The `:usage [CUSTOMER [YYYY-MM]]` screen: a customer's month against the plan, as the hub computed it.

use super::pages::*;
use super::{App, Request, Screen};
use outpost_common::text::inert;
use outpost_proto::v1 as pb;

impl App {
    pub fn apply_usage(&mut self, mut r: pb::GetUsageResponse) {
        if r.customer != self.usage.customer {
            return; // the operator asked for another customer since
        }
        for s in [&mut r.customer, &mut r.month, &mut r.plan, &mut r.currency] {
            *s = inert(s).into_owned();
        }
        for x in &mut r.rows {
            x.server = inert(&x.server).into_owned();
            x.scope = inert(&x.scope).into_owned();
        }
        for p in &mut r.plan_use {
            p.what = inert(&p.what).into_owned();
            p.words = inert(&p.words).into_owned();
        }
        self.usage.data = Some(r);
    }

    /// `:usage` (the open or selected server's customer), `:usage CUSTOMER`, `:usage CUSTOMER YYYY-MM`.
    pub(super) fn usage_command(&mut self, cmd: &str) {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        let here = match &self.screen {
            Screen::Server(name) | Screen::App(name, _) => Some(name.clone()),
            _ => self.fleet.selected(),
        }
        .and_then(|n| self.fleet.server(&n).map(|s| s.customer.clone()))
        .filter(|c| !c.is_empty());
        let (customer, month) = match (words.as_slice(), here) {
            (["usage"], Some(c)) => (c, String::new()),
            (["usage", c], _) => (c.to_string(), String::new()),
            (["usage", c, m], _) => (c.to_string(), m.to_string()),
            _ => return self.say("usage: :usage [CUSTOMER [YYYY-MM]] (default: the selected server's customer)", true),
        };
        if !month.is_empty() && !crate::format::is_month(&month) {
            return self.say(format!("month {month:?}: give YYYY-MM, e.g. 2026-11"), true);
        }
        self.usage = UsagePage { customer: customer.clone(), month: month.clone(), data: None };
        self.screen = Screen::Usage;
        self.detail = None;
        self.requests.push(Request::Usage { customer, month });
    }
}
