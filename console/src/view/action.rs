//! The job screen (progress, results, streamed output), the audit view, and the action overlays.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Wrap};

use super::widgets::Theme;
use crate::state::{App, ArgsForm, Confirm, Menu};

pub fn render_job(frame: &mut Frame, app: &App, area: Rect, theme: Theme) {
    let Some(job) = &app.job else {
        frame.render_widget(Paragraph::new(" no job started from this console yet (a: actions)"), area);
        return;
    };
    let state = if let Some(e) = &job.error {
        Span::styled(format!("✖ refused: {e}"), theme.fg(Color::Red).add_modifier(Modifier::BOLD))
    } else if job.progress.finished && job.progress.stopped.is_empty() && job.progress.failed == 0 {
        Span::styled("✔ finished".to_string(), theme.fg(Color::Green))
    } else if job.progress.finished {
        Span::styled("✖ finished with failures".to_string(), theme.fg(Color::Red))
    } else if job.cancelling {
        Span::styled("… cancelling".to_string(), theme.fg(Color::Yellow))
    } else {
        Span::styled("● running".to_string(), theme.fg(Color::Yellow))
    };
    let job_id = if job.job_id.is_empty() { "…" } else { &job.job_id };
    let title = format!(" {} on {} · job {job_id} ", job.action, on(&job.targets));
    let results_h = (job.results.len().min(8) as u16).max(1);
    let [top, results, output] =
        Layout::vertical([Constraint::Length(4), Constraint::Length(results_h + 2), Constraint::Min(3)]).areas(area);
    let mut head = vec![Line::from(state), Line::from(format!(" {}", crate::format::bar(&job.progress)))];
    if !job.progress.stopped.is_empty() {
        head[0].spans.push(Span::raw(format!(" · stopped: {}", job.progress.stopped)));
    }
    frame.render_widget(Paragraph::new(head).block(Block::bordered().title(title)), top);
    let lines: Vec<Line> = if job.results.is_empty() {
        vec![Line::from(" waiting for results…")]
    } else {
        job.results[job.results.len().saturating_sub(8)..]
            .iter()
            .map(|(server, outcome, message)| {
                let style = if *outcome == "succeeded" { theme.fg(Color::Green) } else { theme.fg(Color::Red) };
                Line::from(vec![
                    Span::raw(format!(" {server:<24} ")),
                    Span::styled(format!("{outcome:<11}"), style),
                    Span::raw(format!(" {message}")),
                ])
            })
            .collect()
    };
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(" results ")), results);
    let h = output.height.saturating_sub(2) as usize;
    let tail: Vec<Line> =
        job.lines.iter().skip(job.lines.len().saturating_sub(h)).map(|l| Line::from(format!(" {l}"))).collect();
    frame.render_widget(Paragraph::new(tail).block(Block::bordered().title(" output ")), output);
}

pub fn render_audit(frame: &mut Frame, app: &App, area: Rect, theme: Theme) {
    let mut lines = vec![Line::styled(
        format!(
            " {:>6} {:<20} {:<12} {:<9} {:<16} {:<24} {:<11} {}",
            "ID", "AT", "OPERATOR", "KIND", "ACTION", "SERVERS", "OUTCOME", "MESSAGE"
        ),
        Style::new().add_modifier(Modifier::BOLD),
    )];
    if !app.audit.loaded {
        lines.push(Line::from(" loading…"));
    }
    for r in app.audit.records.iter().take(area.height.saturating_sub(3) as usize) {
        let style = if r.kind == "refused" { theme.fg(Color::Red) } else { Style::new() };
        lines.push(Line::styled(format!(" {}", crate::format::audit_line(r)), style));
    }
    let title = format!(" audit log · newest first · {} records ", app.audit.records.len());
    frame.render_widget(Paragraph::new(lines).block(Block::bordered().title(title)), area);
}

fn popup(frame: &mut Frame, w: u16, h: u16) -> Rect {
    let area = frame.area();
    let (w, h) = (w.min(area.width.saturating_sub(2)), h.min(area.height.saturating_sub(2)));
    let r = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    frame.render_widget(Clear, r);
    r
}

fn on(targets: &[String]) -> String {
    match targets.len() {
        1 => targets[0].clone(),
        n => format!("{n} servers"),
    }
}

pub fn render_menu(frame: &mut Frame, m: &Menu, theme: Theme) {
    // As wide as the terminal allows (up to 120): descriptions wrap instead of being cut.
    let width = frame.area().width.saturating_sub(4).clamp(40, 120);
    let inner = width.saturating_sub(2) as usize;
    let heights: Vec<u16> = m
        .items
        .iter()
        .map(|name| {
            let spec = outpost_common::actions::lookup(name).expect("catalog");
            (22 + spec.summary.len()).div_ceil(inner.max(1)) as u16
        })
        .collect();
    let rows: u16 = heights.iter().sum();
    let area = popup(frame, width, rows + 2);
    // More actions than the terminal has rows: scroll so the chosen one is in view.
    let visible = area.height.saturating_sub(2);
    let bottom: u16 = heights.iter().take(m.cursor + 1).sum();
    let scroll = bottom.saturating_sub(visible);
    let lines: Vec<Line> = m
        .items
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let spec = outpost_common::actions::lookup(name).expect("catalog");
            let mark = if spec.destructive { "!" } else { " " };
            let text = format!(" {mark} {name:<16} {}", spec.summary);
            if i == m.cursor { Line::styled(text, theme.selected()) } else { Line::from(text) }
        })
        .collect();
    let more = if rows > visible { " (j/k: more)" } else { "" };
    let title = format!(" actions on {}{more} · enter choose · esc close · ! asks to confirm ", on(&m.targets));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((scroll, 0))
            .block(Block::bordered().title(title).border_style(theme.fg(Color::Cyan))),
        area,
    );
}

pub fn render_args(frame: &mut Frame, f: &ArgsForm, theme: Theme) {
    let width = frame.area().width.saturating_sub(4).clamp(40, 120);
    let area = popup(frame, width, f.fields.len() as u16 * 3 + 2);
    let spec = outpost_common::actions::lookup(f.action).expect("catalog");
    let mut lines = Vec::new();
    for (i, (name, value)) in f.fields.iter().enumerate() {
        let help = spec.args.iter().find(|a| a.name == *name).map(|a| a.help).unwrap_or("");
        let cursor = if i == f.at { "▏" } else { "" };
        let text = format!(" {name:<11} {value}{cursor}");
        lines.push(if i == f.at { Line::styled(text, theme.selected()) } else { Line::from(text) });
        let help = match f.choices.get(name).filter(|c| c.len() > 1) {
            Some(c) => format!("{help} · ctrl-n/p: {}", c.join(" · ")),
            None => help.to_string(),
        };
        lines.push(Line::styled(format!("             {help}"), theme.fg(Color::DarkGray)));
    }
    let title = format!(" {} on {} · tab next · ctrl-u clear · enter run · esc ", f.action, on(&f.targets));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title).border_style(theme.fg(Color::Cyan))),
        area,
    );
}

pub fn render_confirm(frame: &mut Frame, c: &Confirm, theme: Theme) {
    let area = popup(frame, 72, 6);
    let shown: Vec<&str> = c.targets.iter().take(6).map(String::as_str).collect();
    let lines = vec![
        Line::from(format!(
            " {} is destructive. It will run on: {}{}",
            c.action,
            shown.join(", "),
            if c.targets.len() > 6 { ", …" } else { "" }
        )),
        Line::from(""),
        Line::from(format!(" type {} to confirm: {}▏", c.expected(), c.typed)),
        Line::styled(" enter run · esc do not run", theme.fg(Color::DarkGray)),
    ];
    let block = Block::bordered().title(" confirm ").border_style(theme.fg(Color::Red));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}
