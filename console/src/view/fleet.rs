//! The fleet table.

use ratatui::Frame;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState};

use super::widgets::{Theme, ago, status_symbol};
use crate::format::{disk_pct, k3s_word, mem_pct, status_word};
use crate::state::{App, Column};

/// Columns by priority: narrow terminals drop from the end. (column, width)
const LAYOUT: [(Column, u16); 13] = [
    (Column::Name, 16),
    (Column::Status, 14),
    (Column::Cpu, 5),
    (Column::Mem, 5),
    (Column::Disk, 5),
    (Column::Customer, 10),
    (Column::Plan, 8),
    (Column::Seen, 6),
    (Column::K3s, 8),
    (Column::Apps, 5),
    (Column::Load, 6),
    (Column::Version, 8),
    (Column::Cert, 6),
];

fn columns(width: u16) -> Vec<(Column, u16)> {
    let mut used = 2; // highlight symbol
    let mut out = Vec::new();
    for (c, w) in LAYOUT {
        if used + w + 1 > width && !out.is_empty() {
            continue;
        }
        used += w + 1;
        out.push((c, w));
    }
    out
}

fn pct(v: Option<f64>) -> String {
    v.map(|p| format!("{p:.0}%")).unwrap_or_else(|| "-".into())
}

pub fn render(frame: &mut Frame, app: &mut App, area: Rect, now_ms: i64, theme: Theme) {
    let cols = columns(area.width);
    let visible = area.height.saturating_sub(1) as usize;
    app.fleet.page = visible.max(1);
    let total = app.fleet.rows().len();
    if total == 0 {
        let text = if app.fleet.is_empty() {
            " no servers yet: create a join token (hubd token create)"
        } else if app.fleet.filter.is_alerts() {
            " no alerts: every server is connected, K3s is not failing, no disk is 90 % full (esc: whole fleet)"
        } else {
            " nothing matches the filter (esc clears it)"
        };
        frame.render_widget(Paragraph::new(text), area);
        return;
    }
    let cursor = app.fleet.cursor();
    let first = cursor.saturating_sub(visible.saturating_sub(1));
    let names: Vec<String> = app.fleet.rows()[first..(first + visible).min(total)].to_vec();
    let rows = names.iter().filter_map(|n| app.fleet.server(n)).map(|s| {
        let h = s.health.clone().unwrap_or_default();
        let has = s.health.is_some();
        let word = status_word(s);
        let cells = cols.iter().map(|(c, _)| match c {
            Column::Name if app.fleet.marked.contains(&s.name) => Cell::from(format!("✓ {}", s.name)),
            Column::Name => Cell::from(s.name.clone()),
            Column::Status => {
                let color = match word {
                    "connected" => Color::Green,
                    "disconnected" => Color::Yellow,
                    "lost" => Color::Red,
                    _ => Color::Gray,
                };
                Cell::from(format!("{} {word}", status_symbol(word))).style(theme.fg(color))
            }
            Column::Cpu => Cell::from(if has { format!("{:.0}%", h.cpu_percent) } else { "-".into() }),
            Column::Mem => Cell::from(pct(mem_pct(&h))),
            Column::Disk => {
                let d = disk_pct(&h);
                let cell = Cell::from(pct(d));
                if d.is_some_and(|d| d >= 90.0) {
                    cell.style(theme.fg(Color::Red).add_modifier(Modifier::BOLD))
                } else {
                    cell
                }
            }
            Column::Customer => Cell::from(s.customer.clone()),
            Column::Plan => Cell::from(s.plan.clone()),
            Column::Seen => Cell::from(ago(now_ms, s.last_seen_ms)),
            Column::K3s => Cell::from(k3s_word(&h)),
            Column::Apps => {
                let failing = s.apps.as_ref().is_some_and(|a| a.apps.iter().any(crate::format::app_failing));
                let cell = Cell::from(crate::format::apps_word(s));
                if failing { cell.style(theme.fg(Color::Red).add_modifier(Modifier::BOLD)) } else { cell }
            }
            Column::Load => Cell::from(if has { format!("{:.2}", h.load1) } else { "-".into() }),
            Column::Version => Cell::from(s.agent_version.clone()),
            Column::Cert => {
                Cell::from(if s.cert_not_after == 0 { "-".into() } else { ago(s.cert_not_after * 1000, now_ms) })
            }
        });
        Row::new(cells.collect::<Vec<_>>())
    });
    let header = Row::new(cols.iter().map(|(c, _)| {
        let mark = if *c == app.fleet.sort { if app.fleet.descending { "↓" } else { "↑" } } else { "" };
        format!("{}{mark}", c.title())
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let widths: Vec<Constraint> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, w))| if i == 0 { Constraint::Min(*w) } else { Constraint::Length(*w) })
        .collect();
    let table = Table::new(rows, widths).header(header).row_highlight_style(theme.selected()).highlight_symbol("▶ ");
    let mut state = TableState::default().with_selected(Some(cursor - first));
    frame.render_stateful_widget(table, area, &mut state);
}
