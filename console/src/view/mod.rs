//! Widgets. No tonic here: the view reads the [`crate::state::App`] model only. Only the visible rows are
//! built, so a 10,000-server fleet costs what one screen costs. Status is always a symbol and a word, never
//! colour alone; with `NO_COLOR` there is no colour at all.

mod action;
mod fleet;
mod queue;
mod server;
mod usage;
mod widgets;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Row, Table};

pub use widgets::{Theme, ago, status_symbol};
use widgets::{app_table, facts};

use crate::state::keymap::{KEYMAP, Scope, key_label};
use crate::state::{App, COMMANDS, Conn, Mode, Screen};

pub fn render(frame: &mut Frame, app: &mut App, now_ms: i64, theme: Theme) {
    let [header, counts, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)])
            .areas(frame.area());
    render_header(frame, app, header, counts, theme);
    match app.screen.clone() {
        Screen::Fleet => fleet::render(frame, app, body, now_ms, theme),
        Screen::Server(name) => server::render(frame, app, &name, body, now_ms, theme),
        Screen::Job => action::render_job(frame, app, body, theme),
        Screen::Audit => action::render_audit(frame, app, body, theme),
        Screen::Apps => render_apps(frame, app, body, theme),
        Screen::App(server, name) => render_app(frame, app, &server, &name, body, now_ms, theme),
        Screen::Queue => queue::render_queue(frame, app, body, now_ms, theme),
        Screen::QueueJob(id) => queue::render_queue_job(frame, app, id, body, theme),
        Screen::Alerts => queue::render_alerts(frame, app, body, now_ms, theme),
        Screen::Usage => usage::render(frame, app, body, theme),
        Screen::Rollouts => render_rollouts(frame, app, body, now_ms, theme),
    }
    render_footer(frame, app, footer, theme);
    match &app.mode {
        Mode::Help => render_help(frame, app, theme),
        Mode::Actions(m) => action::render_menu(frame, m, theme),
        Mode::Args(f) => action::render_args(frame, f, theme),
        Mode::Confirm(c) => action::render_confirm(frame, c, theme),
        _ => {}
    }
}

fn render_header(frame: &mut Frame, app: &mut App, header: Rect, counts: Rect, theme: Theme) {
    let (conn, style) = match &app.conn {
        Conn::Connecting => ("… connecting".to_string(), theme.fg(Color::Yellow)),
        Conn::Live if app.fleet.paused => ("⏸ paused".to_string(), theme.fg(Color::Yellow)),
        Conn::Live => ("● live".to_string(), theme.fg(Color::Green)),
        Conn::Reconnecting { retry_in_ms, .. } => {
            (format!("✖ offline, retry in {}s", retry_in_ms.div_ceil(1000)), theme.fg(Color::Red))
        }
    };
    let ro = if app.read_only() { " read-only" } else { "" };
    let line = Line::from(vec![
        Span::styled(" Outpost ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("│ {} │ {} ({}{ro}) │ ", app.hub, app.operator, app.role)),
        Span::styled(conn, style),
    ]);
    frame.render_widget(line, header);
    let c = app.fleet.counts();
    let shown = if app.fleet.filter.is_empty() { c.total } else { app.fleet.rows().len() };
    let mut spans = vec![
        Span::raw(if shown == c.total {
            format!(" {} servers  ", c.total)
        } else {
            format!(" {shown} of {} servers  ", c.total)
        }),
        Span::styled(format!("● {} connected  ", c.connected), theme.fg(Color::Green)),
        Span::styled(format!("◐ {} disconnected  ", c.disconnected), theme.fg(Color::Yellow)),
        Span::styled(format!("✖ {} lost  ", c.lost), theme.fg(Color::Red)),
        // Enrolling or provisioning (shown when there are any): the figures add up to the total.
        Span::styled(
            if c.pending > 0 { format!("○ {} pending  ", c.pending) } else { String::new() },
            theme.fg(Color::Cyan),
        ),
        // The hub's firing alerts once known; until then the servers that need a look.
        Span::styled(
            format!("⚠ {} alerts", if app.alerts.loaded { app.alerts.firing() } else { c.alerts }),
            theme.fg(Color::Magenta),
        ),
    ];
    if let Some(r) = app.ca_rotation.as_ref().filter(|r| r.phase != "standby") {
        let offline = if r.offline > 0 { format!(", {} offline", r.offline) } else { String::new() };
        spans.push(Span::styled(
            format!(
                "  ⟳ CA rotation: {} {}/{} done{offline}",
                outpost_common::text::inert(&r.phase),
                r.done,
                r.servers
            ),
            theme.fg(Color::Cyan),
        ));
    }
    if let Conn::Reconnecting { error, .. } = &app.conn {
        spans.push(Span::styled(format!("  │ last known state; hub: {error}"), theme.fg(Color::Red)));
    } else if !app.fleet.filter.is_empty() {
        spans.push(Span::raw(format!("  │ filter: {}", app.fleet.filter.text())));
    }
    frame.render_widget(Line::from(spans), counts);
}

fn render_footer(frame: &mut Frame, app: &App, area: Rect, theme: Theme) {
    let line = match &app.mode {
        Mode::Filter(buf) => Line::from(format!("/{buf}▏  (enter keep · esc clear)")),
        Mode::Command(buf) => {
            let hint: Vec<&str> =
                COMMANDS.iter().map(|(c, _)| *c).filter(|c| c.starts_with(buf.as_str()) && !buf.is_empty()).collect();
            Line::from(format!(
                ":{buf}▏  {}",
                if hint.is_empty() { "(tab completes)".to_string() } else { hint.join(" ") }
            ))
        }
        _ => match &app.message {
            Some(m) if m.error => {
                Line::styled(format!(" {}", m.text), theme.fg(Color::Red).add_modifier(Modifier::BOLD))
            }
            Some(m) => Line::from(format!(" {}", m.text)),
            None => Line::from(match app.screen {
                // The most needed first: a narrow terminal cuts the end, never `q quit`.
                Screen::Fleet => {
                    " q quit  ? help  / filter  : command  enter open  a actions  s sort  m mark  space pause"
                }
                Screen::Server(_) => " q quit  esc back  a actions  ? help  : command  space pause",
                Screen::Job => " q quit  esc back  c cancel  ? help  : command",
                Screen::Audit => " q quit  esc back  r refresh  ? help  : command",
                Screen::Apps => {
                    " q quit  esc back  j/k move  enter open  a actions  / filter (app: status:failing customer:)  : command"
                }
                Screen::App(..) => {
                    " q quit  esc back  a actions (app-deploy, app-rollback, app-logs…)  ? help  : command"
                }
                Screen::Queue => " q quit  esc back  j/k move  enter open  r refresh  ? help  : command",
                Screen::QueueJob(_) => " q quit  esc back  ? help  : command",
                Screen::Alerts | Screen::Usage | Screen::Rollouts => " q quit  esc back  r refresh  ? help  : command",
            }),
        },
    };
    frame.render_widget(line, area);
}

/// Generated from the real keymap and command table.
fn render_help(frame: &mut Frame, app: &App, theme: Theme) {
    let area = frame.area();
    let w = area.width.saturating_sub(4).min(76);
    let h = area.height.saturating_sub(2).min((KEYMAP.len() + 4) as u16);
    let popup = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    frame.render_widget(Clear, popup);
    let rows: Vec<Row> = KEYMAP
        .iter()
        .map(|b| {
            let keys = b.keys.iter().map(|k| key_label(*k)).collect::<Vec<_>>().join(" ");
            let scope = if b.scope == Scope::Fleet { " (fleet)" } else { "" };
            Row::new(vec![keys, format!("{}{scope}", b.help)])
        })
        .collect();
    // The commands on the bottom border (`help` and `quit` are keys above): always visible, even when a
    // short terminal cuts the key list.
    let commands: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).filter(|c| !["help", "quit"].contains(c)).collect();
    let bottom = format!(" :{} ", commands.join(" :"));
    let bottom = if bottom.chars().count() + 2 <= w as usize { bottom } else { format!(" :{} ", commands.join(" ")) };
    let title = format!(" help · {} as {} · any key closes ", app.hub, app.role);
    let table = Table::new(rows, [Constraint::Length(16), Constraint::Min(10)])
        .block(Block::bordered().title(title).title_bottom(Line::from(bottom)).border_style(theme.fg(Color::Cyan)));
    frame.render_widget(table, popup);
}

#[cfg(test)]
mod tests;

/// Renders the fleet, server (the first server), job and audit screens of `app` into an off-screen buffer
/// of `width`×`height` and returns each as text: for tests and tools that check what an operator would see.
pub fn render_all_for_test(app: &mut App, width: u16, height: u16) -> Vec<(&'static str, String)> {
    let first = app.fleet.rows().first().cloned();
    let mut screens = vec![
        ("fleet", Screen::Fleet),
        ("job", Screen::Job),
        ("audit", Screen::Audit),
        ("apps", Screen::Apps),
        ("jobs", Screen::Queue),
        ("alerts", Screen::Alerts),
        ("rollouts", Screen::Rollouts),
    ];
    if let Some(name) = first {
        screens.push(("server", Screen::Server(name)));
    }
    let now = outpost_common::now_ms();
    screens
        .into_iter()
        .map(|(label, screen)| {
            app.screen = screen;
            let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))
                .expect("an in-memory terminal");
            terminal.draw(|f| render(f, app, now, Theme { color: true })).expect("drawing into memory");
            let text: String = terminal.backend().buffer().content().iter().map(|c| c.symbol()).collect();
            (label, text)
        })
        .collect()
}

/// `:rollouts`: the agentd versions of the servers the fleet filter matches (a bar each), and every server
/// reporting an update: under way first, then rolled back (with why), then healthy.
fn render_rollouts(frame: &mut Frame, app: &App, area: Rect, now_ms: i64, theme: Theme) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::widgets::{Block, Row, Table};
    let (versions, updates) = app.fleet.rollouts();
    let total: usize = versions.iter().map(|(_, n)| n).sum::<usize>().max(1);
    let top = (versions.len() as u16 + 2).min(area.height / 2).max(3);
    let [vers, list] = Layout::vertical([Constraint::Length(top), Constraint::Min(3)]).areas(area);
    let width = vers.width.saturating_sub(34) as usize;
    let lines: Vec<Line> = versions
        .iter()
        .map(|(v, n)| {
            let filled = n * width / total;
            Line::from(format!(" {:<14} {:>6} {:>4}%  {}", v, n, n * 100 / total, "█".repeat(filled)))
        })
        .collect();
    let title = format!(" rollouts · agentd versions of {} server(s) ", versions.iter().map(|(_, n)| n).sum::<usize>());
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), vers);
    let visible = list.height.saturating_sub(3) as usize;
    let rows = updates.iter().take(visible).map(|(s, u)| {
        let phase = crate::format::update_phase(u);
        let row = Row::new([
            s.name.clone(),
            phase.to_string(),
            format!("{} → {}", u.from_version, u.to_version),
            ago(now_ms, u.at_ms),
            u.reason.clone(),
        ]);
        match u.phase.as_str() {
            "rolled_back" => row.style(theme.fg(Color::Red)),
            "committed" => row,
            _ => row.style(theme.fg(Color::Yellow)),
        }
    });
    let under_way = updates.iter().filter(|(_, u)| !matches!(u.phase.as_str(), "committed" | "rolled_back")).count();
    let rolled = updates.iter().filter(|(_, u)| u.phase == "rolled_back").count();
    let title = format!(" updates · {under_way} under way · {rolled} rolled back (the last day) ");
    let header = Row::new(["SERVER", "PHASE", "UPDATE", "WHEN", "WHY"])
        .style(ratatui::style::Style::new().add_modifier(ratatui::style::Modifier::BOLD));
    let table = Table::new(
        rows,
        [
            Constraint::Length(18),
            Constraint::Length(13),
            Constraint::Length(17),
            Constraint::Length(9),
            Constraint::Min(20),
        ],
    )
    .header(header)
    .block(Block::bordered().title(title));
    frame.render_widget(table, list);
}

/// `:apps`: every app on every server the fleet filter matches, failing first.
fn render_apps(frame: &mut Frame, app: &App, area: Rect, theme: Theme) {
    use ratatui::widgets::{Block, Row};
    let apps = app.fleet.apps();
    let visible = area.height.saturating_sub(3) as usize;
    let cursor = app.apps_page.cursor(&app.fleet);
    let first = cursor.saturating_sub(visible.saturating_sub(1));
    let rows = apps.iter().enumerate().skip(first).take(visible).map(|(i, (s, a))| {
        let row = Row::new([s.name.clone(), s.customer.clone()].into_iter().chain(crate::format::app_cells(a)));
        let row = if crate::format::app_failing(a) { row.style(theme.fg(Color::Red)) } else { row };
        if i == cursor { row.style(theme.selected()) } else { row }
    });
    let failing = apps.iter().filter(|(_, a)| crate::format::app_failing(a)).count();
    let filter =
        if app.fleet.filter.is_empty() { String::new() } else { format!(" · filter {}", app.fleet.filter.text()) };
    let title = format!(" apps · {} on {} server(s) · {failing} failing{filter} ", apps.len(), {
        let mut names: Vec<&str> = apps.iter().map(|(s, _)| s.name.as_str()).collect();
        names.dedup();
        names.len()
    });
    frame.render_widget(
        app_table(rows, &[("SERVER", 16), ("CUSTOMER", 10)]).block(Block::bordered().title(title)),
        area,
    );
}

/// One app: what runs, its repository, and its deployment history (newest first).
fn render_app(frame: &mut Frame, app: &App, server: &str, name: &str, area: Rect, now_ms: i64, theme: Theme) {
    let found =
        app.fleet.server(server).and_then(|s| s.apps.as_ref()).and_then(|a| a.apps.iter().find(|x| x.name == name));
    let Some(a) = found else {
        frame.render_widget(Paragraph::new(format!(" {name} on {server} is no longer reported (esc goes back)")), area);
        return;
    };
    let repo = a.repo.clone().unwrap_or_default();
    let mut lines = vec![
        ("app".to_string(), format!("{name} on {server} · project {}", a.project)),
        (
            "phase".into(),
            format!("{} · {}/{} ready · {} restart(s)", a.phase, a.ready_replicas, a.desired_replicas, a.restarts),
        ),
        (
            "live".into(),
            if a.deployment.is_empty() {
                "nothing deployed".into()
            } else {
                format!(
                    "{} · commit {} · since {} ago",
                    a.deployment,
                    crate::format::short_commit(&a.commit),
                    ago(now_ms, a.deployed_ms)
                )
            },
        ),
        ("image".into(), if a.image.is_empty() { "-".into() } else { a.image.clone() }),
        (
            "repo".into(),
            if repo.url.is_empty() {
                "-".into()
            } else {
                format!(
                    "{} @ {} · head {}{}{}",
                    repo.url,
                    repo.git_ref,
                    crate::format::short_commit(&repo.head),
                    if repo.behind { " · behind" } else { "" },
                    if repo.dirty { " · local edits" } else { "" }
                )
            },
        ),
    ];
    // The app's alerts: those labelled with it, and its server's usage over the plan.
    let alerts: Vec<_> = app
        .alerts
        .of_server(server)
        .into_iter()
        .filter(|x| {
            x.labels.get("app").is_some_and(|a| a == name)
                || x.labels.get("alertname").is_some_and(|n| n == "usage_over_plan")
        })
        .collect();
    lines.push(("alerts".into(), crate::state::AlertsPage::line(&alerts, now_ms)));
    if !a.last_error.is_empty() {
        lines.push(("problem".into(), a.last_error.clone()));
    }
    if !repo.last_error.is_empty() {
        lines.push(("repo error".into(), repo.last_error.clone()));
    }
    if !repo.note.is_empty() {
        lines.push(("repo note".into(), repo.note.clone()));
    }
    let [top, history] = Layout::vertical([Constraint::Length(lines.len() as u16 + 2), Constraint::Min(3)]).areas(area);
    let failing = crate::format::app_failing(a);
    let block = Block::bordered().title(format!(" {name} ")).border_style(if failing {
        theme.fg(Color::Red)
    } else {
        Style::new()
    });
    frame.render_widget(facts(lines).block(block), top);
    let rows = a.history.iter().map(|d| {
        let row = Row::new(vec![
            d.id.clone(),
            d.status.clone(),
            crate::format::short_commit(&d.commit).to_string(),
            if d.started_ms == 0 { "-".into() } else { format!("{} ago", ago(now_ms, d.started_ms)) },
            d.operator.clone(),
            d.reason.clone(),
        ]);
        if matches!(d.status.as_str(), "failed" | "rolled_back") { row.style(theme.fg(Color::Red)) } else { row }
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(10),
            Constraint::Length(24),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(["DEPLOYMENT", "STATUS", "COMMIT", "STARTED", "BY", "REASON"]))
    .block(Block::bordered().title(" deployments, newest first "));
    frame.render_widget(table, history);
}
