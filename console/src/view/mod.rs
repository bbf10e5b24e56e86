//! Widgets. No tonic here: the view reads the [`crate::state::Fleet`] model only. Only the visible rows
//! are built, so a 10,000-server fleet costs what one screen costs.

use outpost_proto::v1::{Liveness, Server, k3s};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Row, Table, TableState};

use crate::state::{Conn, Fleet};

/// Status as symbol and word: colour is never the only signal.
pub fn status(s: &Server) -> (&'static str, &'static str) {
    match Liveness::try_from(s.liveness).unwrap_or(Liveness::Unspecified) {
        Liveness::Connected => ("●", "connected"),
        Liveness::Disconnected => ("◐", "disconnected"),
        Liveness::Lost => ("✖", "lost"),
        Liveness::Pending => ("…", "pending"),
        Liveness::Unspecified => ("?", "unknown"),
    }
}

fn pct(used: u64, total: u64) -> String {
    if total == 0 { "-".into() } else { format!("{:.0}%", used as f64 * 100.0 / total as f64) }
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    let s = (now_ms - then_ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

fn row(s: &Server, now_ms: i64) -> Row<'static> {
    let (sym, word) = status(s);
    let h = s.health.clone().unwrap_or_default();
    let disk = h
        .disks
        .iter()
        .map(|d| pct(d.total_bytes - d.available_bytes.min(d.total_bytes), d.total_bytes))
        .max_by_key(|p| p.trim_end_matches('%').parse::<u32>().unwrap_or(0))
        .unwrap_or_else(|| "-".into());
    let k3s = match h.k3s.map(|k| k3s::State::try_from(k.state).unwrap_or(k3s::State::Unspecified)) {
        Some(k3s::State::Absent) => "absent",
        Some(k3s::State::Active) => "active",
        Some(k3s::State::Inactive) => "inactive",
        Some(k3s::State::Failed) => "FAILED",
        Some(k3s::State::Activating) => "starting",
        _ => "-",
    };
    let cert = if s.cert_not_after == 0 {
        "-".into()
    } else {
        format!("{}h", (s.cert_not_after - now_ms / 1000).max(0) / 3600)
    };
    Row::new(vec![
        s.name.clone(),
        s.customer.clone(),
        s.plan.clone(),
        format!("{sym} {word}"),
        if s.health.is_some() { format!("{:.0}%", h.cpu_percent) } else { "-".into() },
        pct(h.mem_used_bytes, h.mem_total_bytes),
        disk,
        format!("{:.2}", h.load1),
        k3s.into(),
        s.agent_version.clone(),
        cert,
        ago(now_ms, s.last_seen_ms),
    ])
}

pub fn render(frame: &mut Frame, f: &Fleet, now_ms: i64, color: bool) {
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(1), Constraint::Length(1)]).areas(frame.area());
    let c = f.counts();
    let conn = match &f.conn {
        Conn::Connecting => "connecting…".to_string(),
        Conn::Live if f.paused => "⏸ paused".to_string(),
        Conn::Live => "● live".to_string(),
        Conn::Reconnecting { error, retry_in_ms } => {
            format!("✖ hub unreachable ({error}); last known state; retry in {}s", retry_in_ms / 1000)
        }
    };
    let title = format!(
        " Outpost │ {} as {} ({}) │ {} servers: {} connected, {} disconnected, {} lost │ {conn}",
        f.hub, f.operator, f.role, c.total, c.connected, c.disconnected, c.lost
    );
    frame.render_widget(Line::from(title).add_modifier(Modifier::BOLD), header);

    // Only the window that fits is built.
    let visible = body.height.saturating_sub(1) as usize;
    let first = f.selected.saturating_sub(visible.saturating_sub(1));
    let rows = f.servers.values().skip(first).take(visible).map(|s| row(s, now_ms));
    let widths = [
        Constraint::Min(10),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(14),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(6),
    ];
    let head = Row::new([
        "NAME", "CUSTOMER", "PLAN", "STATUS", "CPU", "MEM", "DISK", "LOAD", "K3S", "VERSION", "CERT", "SEEN",
    ])
    .add_modifier(Modifier::BOLD);
    let highlight = if color { Style::new().reversed().blue() } else { Style::new().reversed() };
    let table = Table::new(rows, widths).header(head).row_highlight_style(highlight).highlight_symbol("▶ ");
    let mut ts = TableState::default().with_selected((!f.servers.is_empty()).then_some(f.selected - first));
    frame.render_stateful_widget(table, body, &mut ts);
    frame.render_widget(Line::from(" q quit │ ↑↓/jk move │ g/G top/bottom │ space pause"), footer);
}
