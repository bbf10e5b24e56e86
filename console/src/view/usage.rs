//! The usage screen: a customer's month against the plan (a gauge per limit), the days as a bar chart of
//! CPU and sparklines of memory and egress, the scopes as a table, and the month's cost.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Bar, BarChart, Block, LineGauge, Paragraph, Row, Table};

use super::widgets::Theme;
use crate::format::bytes;
use crate::state::App;

pub fn render(frame: &mut Frame, app: &App, area: Rect, theme: Theme) {
    let page = &app.usage;
    let title = format!(
        " usage · {} · {} ",
        page.customer,
        if page.month.is_empty() { "this month" } else { page.month.as_str() }
    );
    let Some(u) = &page.data else {
        frame.render_widget(Paragraph::new(" loading…").block(Block::bordered().title(title)), area);
        return;
    };
    let title =
        format!(" usage · {} · {} · plan {} ", u.customer, u.month, if u.plan.is_empty() { "-" } else { &u.plan });
    if u.rows.is_empty() {
        let text = format!(" no usage reported for {} in {} (agents report it every minute)", u.customer, u.month);
        frame.render_widget(Paragraph::new(text).block(Block::bordered().title(title)), area);
        return;
    }
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [gauges, charts, table, cost] = Layout::vertical([
        Constraint::Length(u.plan_use.len() as u16),
        Constraint::Length(10),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(inner);

    // Against the plan: the month's peak use of each limit (per plan when the customer has several).
    let rows = Layout::vertical(vec![Constraint::Length(1); u.plan_use.len()]).split(gauges);
    let width = u.plan_use.iter().map(|p| p.what.chars().count()).max().unwrap_or(8);
    for (p, row) in u.plan_use.iter().zip(rows.iter()) {
        let over = p.percent > 100.0;
        let color = if over {
            Color::Red
        } else if p.percent > 80.0 {
            Color::Yellow
        } else {
            Color::Green
        };
        let label = format!("{:<width$} {:>4.0}%{} ", p.what, p.percent, if over { " OVER" } else { "     " });
        let gauge = LineGauge::default()
            .ratio((p.percent / 100.0).clamp(0.0, 1.0))
            .label(Line::from(format!("{label}{}", p.words)))
            .filled_style(theme.fg(color));
        frame.render_widget(gauge, *row);
    }

    // Per day: CPU (cores, against the plan's line), memory peak and egress.
    let [cpu, mem, egress] = Layout::horizontal([Constraint::Ratio(1, 3); 3]).areas(charts);
    let limit_m = u.plan_cpu_millis.max(1);
    // The newest days that fit (a bar and its gap are 5 columns).
    let fits = (cpu.width.saturating_sub(2) / 5).max(1) as usize;
    let bars: Vec<Bar> = u.days[u.days.len().saturating_sub(fits)..]
        .iter()
        .map(|d| {
            let m = (d.cpu_cores_avg * 1000.0).round() as u64;
            let day = crate::format::clock(d.start_ms).get(8..10).unwrap_or("").to_string();
            Bar::new(m)
                .label(Line::from(day))
                .text_value(format!("{:.2}", d.cpu_cores_avg))
                .style(theme.fg(if m > limit_m { Color::Red } else { Color::Green }))
        })
        .collect();
    let peak = u.days.iter().map(|d| (d.cpu_cores_avg * 1000.0).round() as u64).max().unwrap_or(0);
    frame.render_widget(
        BarChart::vertical(bars).bar_width(4).bar_gap(1).max(limit_m.max(peak)).block(Block::bordered().title(
            format!(
                " CPU cores a day, 0–{:.2} (plan {:.2}) ",
                limit_m.max(peak) as f64 / 1000.0,
                u.plan_cpu_millis as f64 / 1000.0
            ),
        )),
        cpu,
    );
    // Memory peak and egress a day: the same time axis (the day of the month under each bar), the values
    // on the bars and the scale in the title.
    let day_bars = |area: Rect, values: Vec<u64>, over: u64, color: Color| -> Vec<Bar<'static>> {
        let fits = (area.width.saturating_sub(2) / 5).max(1) as usize;
        u.days[u.days.len().saturating_sub(fits)..]
            .iter()
            .zip(values[values.len().saturating_sub(fits)..].iter())
            .map(|(d, v)| {
                let day = crate::format::clock(d.start_ms).get(8..10).unwrap_or("").to_string();
                Bar::new(*v)
                    .label(Line::from(day))
                    .text_value(short_bytes(*v))
                    .style(theme.fg(if over > 0 && *v > over { Color::Red } else { color }))
            })
            .collect()
    };
    let mem_data: Vec<u64> = u.days.iter().map(|d| d.memory_peak_bytes).collect();
    let peak_mem = mem_data.iter().copied().max().unwrap_or(0);
    frame.render_widget(
        BarChart::vertical(day_bars(mem, mem_data, u.plan_memory_bytes, Color::Blue))
            .bar_width(4)
            .bar_gap(1)
            .max(peak_mem.max(u.plan_memory_bytes).max(1))
            .block(Block::bordered().title(format!(
                " memory peak a day, 0–{} (plan {}) ",
                bytes(peak_mem.max(u.plan_memory_bytes)),
                bytes(u.plan_memory_bytes)
            ))),
        mem,
    );
    let egress_data: Vec<u64> = u.days.iter().map(|d| d.egress_bytes).collect();
    let egress_total: u64 = egress_data.iter().sum();
    let egress_max = egress_data.iter().copied().max().unwrap_or(0);
    frame.render_widget(
        BarChart::vertical(day_bars(egress, egress_data, 0, Color::Cyan))
            .bar_width(4)
            .bar_gap(1)
            .max(egress_max.max(1))
            .block(Block::bordered().title(format!(
                " egress a day, 0–{} ({} in all) ",
                bytes(egress_max),
                bytes(egress_total)
            ))),
        egress,
    );

    let rows = u.rows.iter().map(|x| {
        Row::new(vec![
            x.server.clone(),
            x.scope.clone(),
            format!("{:.2}", x.cpu_seconds / 3600.0),
            format!("{:.2}", x.cpu_cores_avg),
            bytes(x.memory_peak_bytes),
            bytes(x.database_bytes),
            bytes(x.egress_bytes),
        ])
    });
    let widths = [
        Constraint::Length(16),
        Constraint::Length(28),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Min(10),
    ];
    frame.render_widget(
        Table::new(rows, widths).header(
            Row::new(["SERVER", "SCOPE", "CPU-H", "CORES", "MEM-PEAK", "DATABASE", "EGRESS"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        ),
        table,
    );
    frame.render_widget(
        Paragraph::new(format!(
            " cost {}: server {:.2} + cpu {:.2} + memory {:.2} + egress {:.2} + database {:.2} = {:.2}",
            u.currency, u.cost_server, u.cost_cpu, u.cost_memory, u.cost_egress, u.cost_database, u.cost_total
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        cost,
    );
}

/// Bytes in at most four characters, for a bar's label (`512M`, `1.7G`).
fn short_bytes(b: u64) -> String {
    let units = [(1u64 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (size, unit) in units {
        if b >= size {
            let v = b as f64 / size as f64;
            return if v < 10.0 { format!("{v:.1}{unit}") } else { format!("{:.0}{unit}", v.min(999.0)) };
        }
    }
    format!("{b}")
}
