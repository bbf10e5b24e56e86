//! What every screen draws with: the theme (colour or none), status symbols, ages, `label: value` facts
//! and the apps table. A leaf: the screens and `view` use it, it uses neither.

use ratatui::layout::Constraint;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table};

/// Rendering choices that do not belong to the model.
#[derive(Clone, Copy, Debug)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    pub fn from_env() -> Theme {
        Theme { color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) }
    }

    pub(crate) fn fg(&self, c: Color) -> Style {
        if self.color { Style::new().fg(c) } else { Style::new() }
    }

    pub(crate) fn selected(&self) -> Style {
        if self.color {
            Style::new().bg(Color::Blue).fg(Color::White)
        } else {
            Style::new().add_modifier(Modifier::REVERSED)
        }
    }
}

/// Status as symbol and word.
pub fn status_symbol(word: &str) -> &'static str {
    match word {
        "connected" => "●",
        "disconnected" => "◐",
        "lost" => "✖",
        "pending" => "…",
        _ => "?",
    }
}

pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A paragraph of `label: value` lines.
pub(super) fn facts(lines: Vec<(String, String)>) -> Paragraph<'static> {
    Paragraph::new(
        lines
            .into_iter()
            .map(|(k, v)| {
                Line::from(vec![
                    Span::styled(format!("{k:<12}"), Style::new().add_modifier(Modifier::BOLD)),
                    Span::raw(v),
                ])
            })
            .collect::<Vec<_>>(),
    )
}

/// A table of apps (cells from `format::app_cells`), after `lead` columns (title, width) of its own.
pub(super) fn app_table<'a>(rows: impl IntoIterator<Item = Row<'a>>, lead: &[(&'a str, u16)]) -> Table<'a> {
    const APP: [(&str, u16); 6] =
        [("APP", 14), ("PHASE", 12), ("READY", 6), ("DEPLOY", 10), ("COMMIT", 12), ("PROBLEM", 0)];
    let cols: Vec<(&str, u16)> = lead.iter().copied().chain(APP).collect();
    let widths = cols.iter().map(|(_, w)| if *w == 0 { Constraint::Min(10) } else { Constraint::Length(*w) });
    Table::new(rows, widths).header(Row::new(cols.iter().map(|(t, _)| *t)))
}
