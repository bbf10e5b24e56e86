//! One server: identity, charts of the recent window, K3s, disks, events, certificate, and what this
//! operator may do.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Color;
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table};

use super::widgets::{Theme, ago, facts, status_symbol};
use crate::format::{bytes, disk_pct, k3s_word, mem_pct, status_word};
use crate::state::App;

/// The cluster as the agent's last apps report describes it.
fn cluster_line(s: &outpost_proto::v1::Server) -> String {
    match s.apps.as_ref().and_then(|a| a.cluster.as_ref()) {
        None => "-".into(),
        Some(c) if c.ready && c.problems.is_empty() => {
            format!("{} · {} node(s) Ready · {} pods running", c.version, c.nodes, c.pods_running)
        }
        Some(c) => format!(
            "{}{}",
            if c.ready { "Ready, but: " } else { "NOT READY: " },
            c.problems.first().cloned().unwrap_or_else(|| "no node".into())
        ),
    }
}

pub fn render(frame: &mut Frame, app: &App, name: &str, area: Rect, now_ms: i64, theme: Theme) {
    let Some(s) = app.fleet.server(name) else {
        frame.render_widget(Paragraph::new(format!(" {name} is no longer in the fleet (esc goes back)")), area);
        return;
    };
    let h = s.health.clone().unwrap_or_default();
    let word = status_word(s);
    let [left, right] = Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(area);

    let labels = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    let host = s.host.clone().unwrap_or_default();
    let cert_left = s.cert_not_after - now_ms / 1000;
    let cert = if s.cert_not_after == 0 {
        "none".to_string()
    } else if cert_left <= 0 {
        format!("EXPIRED ({}) — re-enroll with a new token", s.cert_serial)
    } else {
        format!("{} left ({})", ago(s.cert_not_after * 1000, now_ms), &s.cert_serial[..s.cert_serial.len().min(8)])
    };
    let actions = if app.read_only() {
        "none: read-only (viewer)".to_string()
    } else {
        "a: service-status/restart, diagnostics, logs, rotate-cert… (by role)".to_string()
    };
    let mut lines = vec![
        ("server".to_string(), s.name.clone()),
        ("status".into(), format!("{} {word} for {}", status_symbol(word), ago(now_ms, s.liveness_since_ms))),
        ("customer".into(), format!("{} · plan {}", s.customer, s.plan)),
        ("labels".into(), if labels.is_empty() { "-".into() } else { labels }),
        ("host".into(), format!("{} {} {}", host.hostname, host.os, host.arch)),
        ("agent".into(), format!("{} v{}", s.agent_id, s.agent_version)),
        (
            "last seen".into(),
            format!("{} ago (seq {}, {} reports)", ago(now_ms, s.last_seen_ms), s.last_seq, s.reports_received),
        ),
        ("k3s".into(), format!("{} {}", k3s_word(&h), h.k3s.as_ref().map(|k| k.detail.as_str()).unwrap_or(""))),
        ("cluster".into(), cluster_line(s)),
        ("certificate".into(), cert),
        ("alerts".into(), crate::state::AlertsPage::line(&app.alerts.of_server(&s.name), now_ms)),
        ("actions".into(), actions),
    ];
    if s.dropped_reports > 0 {
        lines.push(("dropped".into(), format!("{} reports (outbox was full)", s.dropped_reports)));
    }
    let app_list: Vec<&outpost_proto::v1::AppState> = s.apps.iter().flat_map(|a| a.apps.iter()).collect();
    let [info, apps, disks, events] = Layout::vertical([
        Constraint::Length(lines.len() as u16 + 2),
        Constraint::Length(if app_list.is_empty() { 0 } else { app_list.len().min(8) as u16 + 3 }),
        Constraint::Min(3),
        Constraint::Min(3),
    ])
    .areas(left);
    if !app_list.is_empty() {
        let rows = app_list.iter().map(|a| {
            let row = Row::new(crate::format::app_cells(a));
            if crate::format::app_failing(a) { row.style(theme.fg(Color::Red)) } else { row }
        });
        frame.render_widget(super::widgets::app_table(rows, &[]).block(Block::bordered().title(" apps ")), apps);
    }
    frame.render_widget(facts(lines).block(Block::bordered().title(" identity ")), info);

    let disk_rows = h.disks.iter().map(|d| {
        let used = d.total_bytes - d.available_bytes.min(d.total_bytes);
        Row::new(vec![
            d.mount.clone(),
            bytes(d.total_bytes),
            format!("{:.0}%", used as f64 * 100.0 / d.total_bytes.max(1) as f64),
        ])
    });
    let disk_table = Table::new(disk_rows, [Constraint::Min(8), Constraint::Length(10), Constraint::Length(5)])
        .header(Row::new(["MOUNT", "SIZE", "USED"]))
        .block(Block::bordered().title(" disks "));
    frame.render_widget(disk_table, disks);
    let ev: Vec<ratatui::text::Line> = app
        .fleet
        .events(name)
        .rev()
        .map(|(t, e)| ratatui::text::Line::from(format!("{} ago  {e}", ago(now_ms, *t))))
        .collect();
    let ev =
        if ev.is_empty() { vec![ratatui::text::Line::from("no changes seen since the console started")] } else { ev };
    frame.render_widget(Paragraph::new(ev).block(Block::bordered().title(" recent events ")), events);

    // Charts of the window the hub keeps, plus what arrived live since.
    let points: Vec<_> =
        app.detail.as_ref().filter(|d| d.name == name).map(|d| d.points.iter().collect()).unwrap_or_default();
    let loading = app.detail.as_ref().is_some_and(|d| !d.loaded);
    let cpu: Vec<u64> = points.iter().map(|(_, h)| h.cpu_percent.round() as u64).collect();
    let mem: Vec<u64> = points.iter().map(|(_, h)| mem_pct(h).unwrap_or(0.0).round() as u64).collect();
    let disk: Vec<u64> = points.iter().map(|(_, h)| disk_pct(h).unwrap_or(0.0).round() as u64).collect();
    let net: Vec<u64> = points
        .windows(2)
        .map(|w| {
            let secs = ((w[1].0 - w[0].0) as f64 / 1000.0).max(0.001);
            let d =
                (w[1].1.net_rx_bytes + w[1].1.net_tx_bytes).saturating_sub(w[0].1.net_rx_bytes + w[0].1.net_tx_bytes);
            (d as f64 / secs) as u64
        })
        .collect();
    let charts = Layout::vertical([Constraint::Ratio(1, 4); 4]).split(right);
    let now_net = net.last().copied().unwrap_or(0);
    let specs = [
        (format!(" cpu {:.0}% ", h.cpu_percent), cpu, Some(100), Color::Green),
        (
            format!(" memory {:.0}% of {} ", mem_pct(&h).unwrap_or(0.0), bytes(h.mem_total_bytes)),
            mem,
            Some(100),
            Color::Blue,
        ),
        (format!(" disk (fullest) {:.0}% ", disk_pct(&h).unwrap_or(0.0)), disk, Some(100), Color::Magenta),
        (format!(" network {}/s ", bytes(now_net)), net, None, Color::Cyan),
    ];
    for ((title, data, max, color), area) in specs.into_iter().zip(charts.iter()) {
        let title = if loading { format!("{title}(loading history…) ") } else { title };
        // Right-align: the newest point at the right edge, as much history as fits.
        let fit = area.width.saturating_sub(2) as usize;
        let data = &data[data.len().saturating_sub(fit)..];
        // The scale on the right of the title, the time axis along the bottom: from the oldest point shown
        // to now.
        let scale = match max {
            Some(m) => format!(" 0–{m}% "),
            None => format!(" 0–{}/s ", bytes(data.iter().copied().max().unwrap_or(0))),
        };
        let oldest = points.get(points.len().saturating_sub(data.len())).map(|(t, _)| *t);
        let mut block = Block::bordered().title(title).title_top(Line::from(scale).right_aligned());
        if let Some(t) = oldest.filter(|_| !data.is_empty()) {
            block = block
                .title_bottom(Line::from(format!(" {} ago ", ago(now_ms, t))))
                .title_bottom(Line::from(" now ").right_aligned());
        }
        let mut spark = Sparkline::default().block(block).data(data.iter().copied()).style(theme.fg(color));
        if let Some(m) = max {
            spark = spark.max(m);
        }
        frame.render_widget(spark, *area);
    }
}
