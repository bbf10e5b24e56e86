//! Remote actions in the console: the actions menu (for the open server, or the marked servers of the
//! fleet), argument entry, confirmation by typing the target for destructive actions, the job screen that
//! streams output and progress, and the audit view.

use super::pages::*;
use super::{App, Key, Mode, Request, Screen};
use outpost_common::Role;
use outpost_common::actions::{self, Action as CatalogAction, ArgKind};
use outpost_common::text::inert;
use outpost_proto::v1 as pb;
use std::collections::BTreeMap;

/// The most a form reads from an `@FILE` value.
const MAX_FILE_VALUE: u64 = 256 << 10;

/// The content of `@PATH` in a form field: a text file of at most 256 KiB.
fn read_value(path: &str) -> Result<String, String> {
    use std::io::Read;
    let path = path.trim();
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read @{path}: {e}"))?;
    let mut text = String::new();
    f.take(MAX_FILE_VALUE + 1).read_to_string(&mut text).map_err(|e| format!("cannot read @{path} as text: {e}"))?;
    if text.len() as u64 > MAX_FILE_VALUE {
        return Err(format!("@{path} is over {} KiB", MAX_FILE_VALUE >> 10));
    }
    Ok(text)
}

impl App {
    fn role(&self) -> Role {
        self.role.parse().unwrap_or(Role::Viewer)
    }

    /// `a`: the actions menu for the open server, or for the marked (else the selected) servers.
    pub(super) fn open_actions(&mut self) {
        if self.read_only() {
            return self.say("read-only (viewer): actions need role support or admin", true);
        }
        let targets = match &self.screen {
            Screen::Server(name) | Screen::App(name, _) => vec![name.clone()],
            Screen::Apps => self.apps_page.selected(&self.fleet).map(|(s, _)| s).into_iter().collect(),
            Screen::Fleet if !self.fleet.marked.is_empty() => self.fleet.marked.iter().cloned().collect(),
            Screen::Fleet => self.fleet.selected().into_iter().collect(),
            _ => Vec::new(),
        };
        if targets.is_empty() {
            return self.say("no server selected: open one, or mark servers with m", true);
        }
        let role = self.role();
        let items = actions::CATALOG.iter().filter(|s| s.role <= role).map(|s| s.name).collect();
        self.mode = Mode::Actions(Menu { targets, items, cursor: 0 });
    }

    pub(super) fn toggle_mark(&mut self) {
        let Some(name) = self.fleet.selected() else { return };
        if !self.fleet.marked.remove(&name) {
            self.fleet.marked.insert(name);
        }
        let n = self.fleet.marked.len();
        self.say(format!("{n} marked (a: actions on them · m: unmark)"), false);
    }

    pub(super) fn menu_key(&mut self, mut m: Menu, k: Key) {
        match k {
            Key::Esc | Key::Char('q') => self.mode = Mode::Normal,
            Key::Up | Key::Char('k') => {
                m.cursor = m.cursor.saturating_sub(1);
                self.mode = Mode::Actions(m);
            }
            Key::Down | Key::Char('j') => {
                m.cursor = (m.cursor + 1).min(m.items.len().saturating_sub(1));
                self.mode = Mode::Actions(m);
            }
            Key::Char('g') | Key::Home => {
                m.cursor = 0;
                self.mode = Mode::Actions(m);
            }
            Key::Char('G') | Key::End => {
                m.cursor = m.items.len().saturating_sub(1);
                self.mode = Mode::Actions(m);
            }
            Key::Enter => {
                let Some(name) = m.items.get(m.cursor).copied() else { return };
                let spec = actions::lookup(name).expect("menu items come from the catalog");
                if spec.args.is_empty() {
                    self.proceed(name, m.targets, BTreeMap::new());
                } else {
                    let choices = self.choices(spec, &m.targets);
                    let fields = spec
                        .args
                        .iter()
                        .map(|a| {
                            let offered = choices.get(a.name).and_then(|c| c.first()).cloned();
                            (a.name, a.default.map(str::to_string).or(offered).unwrap_or_default())
                        })
                        .collect();
                    self.mode = Mode::Args(ArgsForm { action: name, targets: m.targets, fields, at: 0, choices });
                }
            }
            _ => self.mode = Mode::Actions(m),
        }
    }

    pub(super) fn args_key(&mut self, mut f: ArgsForm, k: Key) {
        match k {
            Key::Esc => {
                self.mode = Mode::Normal;
                return;
            }
            Key::Tab | Key::Down => f.at = (f.at + 1) % f.fields.len(),
            Key::Up => f.at = (f.at + f.fields.len() - 1) % f.fields.len(),
            Key::Backspace => {
                f.fields[f.at].1.pop();
            }
            Key::Ctrl('u') => f.fields[f.at].1.clear(),
            Key::Ctrl(c @ ('n' | 'p')) => {
                let (name, value) = &mut f.fields[f.at];
                if let Some(options) = f.choices.get(name).filter(|o| !o.is_empty()) {
                    let i = options.iter().position(|o| o == value);
                    let n = options.len();
                    let next = match (i, c) {
                        (None, _) => 0,
                        (Some(i), 'n') => (i + 1) % n,
                        (Some(i), _) => (i + n - 1) % n,
                    };
                    *value = options[next].clone();
                }
            }
            Key::Char(c) => f.fields[f.at].1.push(c),
            Key::Enter => {
                let spec = actions::lookup(f.action).expect("catalog action");
                let mut args = BTreeMap::new();
                for (name, value) in &f.fields {
                    if value.is_empty() {
                        continue;
                    }
                    // `@PATH`: the value is the file's content (an app spec is many lines).
                    let value = match value.strip_prefix('@').map(read_value) {
                        Some(Ok(text)) => text,
                        Some(Err(e)) => {
                            self.say(format!("{name}: {e}"), true);
                            self.mode = Mode::Args(f);
                            return;
                        }
                        None => value.clone(),
                    };
                    let kind = spec.args.iter().find(|a| a.name == *name).map(|a| a.kind);
                    let value = if kind == Some(ArgKind::Argv) && !value.trim_start().starts_with('[') {
                        serde_json::to_string(&value.split_whitespace().collect::<Vec<_>>()).unwrap_or_default()
                    } else {
                        value.clone()
                    };
                    args.insert(name.to_string(), value);
                }
                match CatalogAction::parse(f.action, &args) {
                    Ok(_) => return self.proceed(f.action, f.targets, args),
                    Err(e) => self.say(e.to_string(), true),
                }
            }
            _ => {}
        }
        self.mode = Mode::Args(f);
    }

    /// What to offer for each argument of `spec` on `targets`.
    fn choices(&self, spec: &actions::ActionSpec, targets: &[String]) -> BTreeMap<&'static str, Vec<String>> {
        let units = || vec!["k3s".to_string(), "outpost-agentd".to_string()];
        let mut out = BTreeMap::new();
        for a in spec.args {
            match a.kind {
                ArgKind::Unit => {
                    out.insert(a.name, units());
                }
                ArgKind::LogSource => {
                    // Files every target allows (an agent announces its log_files in Hello), then units.
                    let mut files: Option<Vec<String>> = None;
                    for t in targets {
                        let mine = self.fleet.server(t).map(|s| s.log_files.clone()).unwrap_or_default();
                        files = Some(match files {
                            None => mine,
                            Some(f) => f.into_iter().filter(|x| mine.contains(x)).collect(),
                        });
                    }
                    let mut offered: Vec<String> =
                        files.unwrap_or_default().into_iter().map(|f| format!("file:{f}")).collect();
                    offered.extend(units());
                    out.insert(a.name, offered);
                }
                ArgKind::AppSpec => {
                    out.insert(a.name, self.spec_files.iter().map(|p| format!("@{p}")).collect());
                }
                ArgKind::AppName => {
                    // The apps the targets report; the open app first.
                    let mut apps: Vec<String> = Vec::new();
                    if let Screen::App(_, app) = &self.screen {
                        apps.push(app.clone());
                    }
                    for t in targets {
                        for a in self
                            .fleet
                            .server(t)
                            .and_then(|s| s.apps.as_ref())
                            .map(|a| a.apps.as_slice())
                            .unwrap_or_default()
                        {
                            if !apps.contains(&a.name) {
                                apps.push(a.name.clone());
                            }
                        }
                    }
                    out.insert(a.name, apps);
                }
                _ => {}
            }
        }
        out
    }

    fn proceed(&mut self, action: &'static str, targets: Vec<String>, args: BTreeMap<String, String>) {
        let spec = actions::lookup(action).expect("catalog action");
        if spec.destructive {
            self.mode = Mode::Confirm(Confirm { action, targets, args, typed: String::new() });
        } else {
            self.submit(action, targets, args, String::new());
        }
    }

    pub(super) fn confirm_key(&mut self, mut c: Confirm, k: Key) {
        match k {
            Key::Esc => {
                self.mode = Mode::Normal;
                return self.say(format!("{} not run", c.action), false);
            }
            Key::Backspace => {
                c.typed.pop();
            }
            Key::Char(ch) => c.typed.push(ch),
            Key::Enter if c.typed == c.expected() => {
                let typed = c.typed.clone();
                return self.submit(c.action, c.targets, c.args, typed);
            }
            Key::Enter => self.say(format!("type {} exactly to confirm (esc: do not run)", c.expected()), true),
            _ => {}
        }
        self.mode = Mode::Confirm(c);
    }

    fn submit(&mut self, action: &str, targets: Vec<String>, args: BTreeMap<String, String>, confirm: String) {
        let req = pb::RunActionRequest {
            action: action.to_string(),
            args: args.into_iter().collect(),
            selector: Some(pb::Selector { names: targets.clone(), ..Default::default() }),
            batch: 10,
            confirm,
            ..Default::default()
        };
        self.requests.push(Request::Run(Box::new(req)));
        self.job = Some(JobView { action: action.to_string(), targets, ..Default::default() });
        self.screen = Screen::Job;
        self.mode = Mode::Normal;
        self.fleet.marked.clear();
        self.message = None;
    }

    pub(super) fn cancel_job(&mut self) {
        match self.job.as_mut() {
            Some(j) if self.screen == Screen::Job && !j.finished() && !j.job_id.is_empty() => {
                j.cancelling = true;
                let id = j.job_id.clone();
                self.requests.push(Request::CancelJob(id));
                self.say("cancelling: running commands are being stopped", false);
            }
            _ => self.say("no running job to cancel here", true),
        }
    }

    /// One event of the job this console started.
    pub fn apply_job(&mut self, e: pb::JobEvent) {
        let Some(job) = self.job.as_mut() else { return };
        match e.event {
            Some(pb::job_event::Event::Plan(p)) => {
                job.job_id = p.job_id;
                job.progress.total = p.targets.len() as u32;
            }
            Some(pb::job_event::Event::Target(t)) => {
                let server = inert(&t.server).into_owned();
                for l in t.output.lines() {
                    job.push_line(format!("{server} | {}", inert(l)));
                }
                if let Some(r) = t.result {
                    job.results.push((server, crate::format::outcome_word(r.outcome), inert(&r.message).into_owned()));
                }
            }
            Some(pb::job_event::Event::Progress(p)) => job.progress = p,
            None => {}
        }
    }

    pub fn job_refused(&mut self, message: String) {
        if let Some(j) = self.job.as_mut() {
            j.error = Some(inert(&message).into_owned());
        }
    }

    pub fn apply_audit(&mut self, mut records: Vec<pb::AuditRecord>) {
        for r in &mut records {
            for f in [&mut r.operator, &mut r.action, &mut r.selector, &mut r.message, &mut r.job_id, &mut r.command_id]
            {
                *f = inert(f).into_owned();
            }
            r.servers.iter_mut().for_each(|s| *s = inert(s).into_owned());
            r.args = std::mem::take(&mut r.args)
                .into_iter()
                .map(|(k, v)| (inert(&k).into_owned(), inert(&v).into_owned()))
                .collect();
        }
        self.audit.records = records;
        self.audit.loaded = true;
    }

    pub(super) fn open_audit(&mut self) {
        if self.read_only() {
            return self.say("the audit log needs role support or admin", true);
        }
        self.screen = Screen::Audit;
        self.audit.loaded = false;
        self.requests.push(Request::Audit);
    }
}
