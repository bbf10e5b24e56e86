//! The `:lifecycle` screen (the lifecycle queue) and one job's steps.

use std::collections::BTreeMap;

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Wrap};

use super::widgets::Theme;
use crate::format::clock;
use crate::format::current_step;
use crate::state::App;

fn state_color(state: &str) -> Color {
    match state {
        "succeeded" => Color::Green,
        "failed" => Color::Red,
        "cancelled" => Color::DarkGray,
        "running" => Color::Cyan,
        _ => Color::Yellow,
    }
}

pub fn render_queue(frame: &mut Frame, app: &App, area: Rect, now_ms: i64, theme: Theme) {
    let s = &app.queue.stats;
    let mut lines = vec![Line::styled(
        format!(
            " {:>5}  {:<11} {:<10} {:<20} {:>7}  {:<8}  {}",
            "ID", "KIND", "STATE", "TARGET", "ATTEMPT", "RETRY", "STEP"
        ),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if !app.queue.loaded {
        lines.push(Line::from(" loading…"));
    } else if app.queue.jobs.is_empty() {
        lines.push(Line::from(" no jobs yet: `outpost provision --customer NAME --plan PLAN` queues one"));
    }
    let cursor = app.queue.cursor();
    let rows = area.height.saturating_sub(3) as usize;
    let first = cursor.saturating_sub(rows.saturating_sub(1));
    for (i, j) in app.queue.jobs.iter().enumerate().skip(first).take(rows) {
        let retry = if j.state == "pending" && j.not_before_ms > now_ms {
            format!("in {}", super::widgets::ago(j.not_before_ms, now_ms))
        } else {
            "-".into()
        };
        let text = format!(
            " {:>5}  {:<11} {:<10} {:<20} {:>3}/{:<3}  {:<8}  {}",
            j.id,
            j.kind,
            j.state,
            j.target,
            j.attempt,
            j.max_attempts,
            retry,
            current_step(j)
        );
        let mut style = theme.fg(state_color(&j.state));
        if i == cursor {
            style = style.add_modifier(Modifier::REVERSED);
        }
        lines.push(Line::styled(text, style));
    }
    let title = format!(
        " jobs · {} pending · {} running · last hour {} ended, {} failed ",
        s.pending, s.running, s.finished_last_hour, s.failed_last_hour
    );
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
}

pub fn render_queue_job(frame: &mut Frame, app: &App, id: u64, area: Rect, theme: Theme) {
    let Some(j) = app.queue.job(id) else {
        let p = Paragraph::new(format!(" job {id} is not among the loaded jobs")).block(Block::bordered());
        return frame.render_widget(p, area);
    };
    let mut lines = vec![
        Line::styled(
            format!(
                " {} {} · {} · attempt {}/{} · by {}",
                j.kind, j.target, j.state, j.attempt, j.max_attempts, j.submitted_by
            ),
            theme.fg(state_color(&j.state)).add_modifier(Modifier::BOLD),
        ),
        // Sorted: the wire map has no order.
        Line::from(format!(
            " {}",
            j.params
                .iter()
                .collect::<BTreeMap<_, _>>()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("  ")
        )),
        Line::from(""),
    ];
    for s in &j.steps {
        let (mark, color) = match (s.ended_ms, s.ok) {
            (0, _) => ("…", Color::Cyan),
            (_, true) => ("✓", Color::Green),
            (_, false) => ("✗", Color::Red),
        };
        let took =
            if s.ended_ms > 0 { format!("{:.1}s", (s.ended_ms - s.started_ms) as f64 / 1000.0) } else { String::new() };
        let msg = if s.ended_ms == 0 && !j.progress.is_empty() { &j.progress } else { &s.message };
        lines.push(Line::styled(
            format!(" {mark} {:<12} {} {:>7}  {msg}", s.name, clock(s.started_ms), took),
            theme.fg(color),
        ));
    }
    if j.state == "pending" && j.not_before_ms > 0 {
        lines.push(Line::from(format!(" next attempt at {}", clock(j.not_before_ms))));
    }
    if !j.error.is_empty() {
        lines.push(Line::styled(format!(" error: {}", j.error), theme.fg(Color::Red)));
    }
    let title = format!(" job {} ", j.id);
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(Block::bordered().title(title)), area);
}

fn severity(s: &str) -> (&'static str, Color) {
    match s {
        "critical" => ("✖ critical", Color::Red),
        "warning" => ("▲ warning", Color::Yellow),
        _ => ("● info", Color::Cyan),
    }
}

/// The hub's alerts: firing first, severity as symbol, word and colour; an empty state when none fire.
pub fn render_alerts(frame: &mut Frame, app: &App, area: Rect, now_ms: i64, theme: Theme) {
    let mut lines = vec![Line::styled(
        format!(" {:<11} {:<8} {:<22} {:<20} {:>6}  {}", "SEVERITY", "STATE", "ALERT", "SERVER", "FOR", "SUMMARY"),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if !app.alerts.loaded {
        lines.push(Line::from(" loading…"));
    } else if app.alerts.alerts.is_empty() {
        lines.push(Line::styled(" ✓ nothing is firing", theme.fg(Color::Green)));
    }
    for a in app.alerts.alerts.iter().take(area.height.saturating_sub(3) as usize) {
        let l = |k: &str| a.labels.get(k).cloned().unwrap_or_else(|| "-".into());
        let (word, color) = severity(&l("severity"));
        let style =
            if a.state == "firing" && a.silenced_by.is_empty() { theme.fg(color) } else { theme.fg(Color::DarkGray) };
        let state = if a.silenced_by.is_empty() { a.state.clone() } else { "silenced".into() };
        let acked = if a.acked_by.is_empty() { String::new() } else { format!(" (ack: {})", a.acked_by) };
        lines.push(Line::styled(
            format!(
                " {:<11} {:<8} {:<22} {:<20} {:>6}  {} — {}{acked}",
                word,
                state,
                l("alertname"),
                l("server"),
                super::widgets::ago(now_ms, a.since_ms),
                a.summary,
                a.action
            ),
            style,
        ));
    }
    let title = format!(
        " alerts · {} firing · {} pending ",
        app.alerts.firing(),
        app.alerts.alerts.len() - app.alerts.firing()
    );
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
}
