//! The live console: one `select!` loop over keys, hub events and a render tick. Redraws only when
//! something changed, at most every 50 ms under a flood of deltas (keys redraw at once); the terminal is
//! restored on exit and on panic.

use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures::StreamExt;
use outpost_proto::v1::operator_client::OperatorClient;
use outpost_proto::v1::{CancelJobRequest, GetServerRequest, ListLifecycleJobsRequest, QueryAuditRequest};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::conn::{self, ConnEvent};
use crate::state::{App, Conn, DETAIL_POINTS, Key, Message, Request};
use crate::view::{self, Theme};

/// Most frames per second while deltas stream in.
const FRAME: Duration = Duration::from_millis(50);
/// Deltas applied per wake-up before drawing (keeps keys responsive under 10k updates/s).
const BATCH: usize = 20_000;

/// Restores the terminal however the loop ends (`ratatui::init` also restores on panic).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

pub fn key(k: KeyEvent) -> Option<Key> {
    Some(match k.code {
        KeyCode::Char(c) if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Ctrl(c),
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab => Key::Tab,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// Applies one connection event to the model.
pub fn apply(app: &mut App, ev: ConnEvent) {
    match ev {
        ConnEvent::Live => app.conn = Conn::Live,
        ConnEvent::Fleet(e) => app.apply(*e, outpost_common::now_ms()),
        ConnEvent::Detail(d) => app.apply_detail(*d),
        ConnEvent::Error(text) => app.message = Some(Message { text, error: true }),
        ConnEvent::Job(e) => app.apply_job(*e),
        ConnEvent::JobRefused(text) => app.job_refused(text),
        ConnEvent::Audit(records) => app.apply_audit(records),
        ConnEvent::Queue(r) => app.apply_queue(*r),
        ConnEvent::Alerts(a) => app.apply_alerts(a),
        ConnEvent::Usage(u) => app.apply_usage(*u),
        ConnEvent::CaRotation(r) => app.ca_rotation = Some(*r),
        ConnEvent::Info(text) => {
            app.message = Some(Message { text: outpost_common::text::inert(&text).into_owned(), error: false })
        }
        ConnEvent::Down { error, retry_in } => {
            app.conn = Conn::Reconnecting { error, retry_in_ms: retry_in.as_millis() as u64 }
        }
    }
}

pub async fn run(mut app: App, channel: Channel) -> anyhow::Result<()> {
    let theme = Theme::from_env();
    let mut terminal = ratatui::init();
    let _restore = Restore;
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(BATCH);
    let mut tasks = JoinSet::new();
    tasks.spawn(conn::watch(channel.clone(), tx.clone(), stop.clone()));
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1)); // "last seen" ages
    let mut dirty = true;
    let mut next_frame = Instant::now();
    let result = loop {
        if dirty && Instant::now() >= next_frame {
            if let Err(e) = terminal.draw(|f| view::render(f, &mut app, outpost_common::now_ms(), theme)) {
                break Err(e.into());
            }
            dirty = false;
            next_frame = Instant::now() + FRAME;
        }
        for r in app.requests.drain(..) {
            tasks.spawn(request(channel.clone(), tx.clone(), r));
        }
        tokio::select! {
            k = keys.next() => match k {
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => {
                    if let Some(k) = key(k) {
                        if !app.key(k) {
                            break Ok(());
                        }
                        dirty = true;
                        next_frame = Instant::now();
                    }
                }
                Some(Ok(Event::Resize(..))) => { dirty = true; next_frame = Instant::now(); }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e.into()),
                None => break Ok(()),
            },
            Some(first) = rx.recv() => {
                apply(&mut app, first);
                let mut n = 1;
                while n < BATCH && let Ok(ev) = rx.try_recv() {
                    apply(&mut app, ev);
                    n += 1;
                }
                dirty = true;
            }
            _ = tokio::time::sleep_until(next_frame), if dirty => {}
            _ = tick.tick() => {
                app.tick();
                dirty = true;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    stop.cancel();
    tasks.shutdown().await;
    result
}

/// Runs one request of the model against the hub; what comes back goes into the loop's channel.
async fn request(ch: Channel, tx: mpsc::Sender<ConnEvent>, r: Request) {
    let mut client = OperatorClient::new(ch);
    match r {
        Request::Detail(name) => {
            let req = GetServerRequest { name, history: DETAIL_POINTS as u32 };
            let ev = match client.get_server(req).await {
                Ok(d) => ConnEvent::Detail(Box::new(d.into_inner())),
                Err(s) => ConnEvent::Error(format!("server detail: {}", s.message())),
            };
            let _ = tx.send(ev).await;
        }
        Request::Run(req) => {
            let mut stream = match client.run_action(*req).await {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    let _ = tx.send(ConnEvent::JobRefused(s.message().to_string())).await;
                    return;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(e)) => {
                        if tx.send(ConnEvent::Job(Box::new(e))).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(s) => {
                        let msg =
                            format!("lost the job stream ({}); the job goes on at the hub: see :audit", s.message());
                        let _ = tx.send(ConnEvent::JobRefused(msg)).await;
                        return;
                    }
                }
            }
        }
        Request::CancelJob(job_id) => {
            if let Err(s) = client.cancel_job(CancelJobRequest { job_id }).await {
                let _ = tx.send(ConnEvent::Error(format!("cancel: {}", s.message()))).await;
            }
        }
        Request::Provision { customer, plan, name, location } => {
            let req = outpost_proto::v1::ProvisionRequest { customer, plan, name, location, ..Default::default() };
            let ev = match client.provision(req).await {
                Ok(r) => {
                    let j = r.into_inner().job.unwrap_or_default();
                    ConnEvent::Info(format!("job {} queued: provision {} (enter on it for its steps)", j.id, j.target))
                }
                Err(s) => ConnEvent::Error(format!("provision: {}", s.message())),
            };
            let _ = tx.send(ev).await;
        }
        Request::Ack { name, server } => {
            let req = outpost_proto::v1::AckAlertRequest { alertname: name.clone(), server };
            let ev = match client.ack_alert(req).await {
                Ok(r) => ConnEvent::Info(format!("acknowledged {} {name} alert(s)", r.into_inner().acknowledged)),
                Err(s) => ConnEvent::Error(format!("ack: {}", s.message())),
            };
            let _ = tx.send(ev).await;
        }
        Request::Silence { name, server, secs, reason } => {
            let matchers = [("alertname".to_string(), name.clone()), ("server".to_string(), server.clone())].into();
            let req = outpost_proto::v1::SilenceRequest { matchers, duration_secs: secs, comment: reason };
            let ev = match client.silence(req).await {
                Ok(r) => ConnEvent::Info(format!("{name} on {server} silenced ({})", r.into_inner().id)),
                Err(s) => ConnEvent::Error(format!("silence: {}", s.message())),
            };
            let _ = tx.send(ev).await;
        }
        Request::CancelQueueJob(id) => {
            let ev = match client.cancel_lifecycle_job(outpost_proto::v1::CancelLifecycleJobRequest { id }).await {
                Ok(j) => ConnEvent::Info(match j.into_inner().state.as_str() {
                    "cancelled" => format!("job {id} cancelled"),
                    "running" => format!("job {id} stops at its next step and undoes what it created"),
                    s => format!("job {id} had ended already ({s})"),
                }),
                Err(s) => ConnEvent::Error(format!("cancel job {id}: {}", s.message())),
            };
            let _ = tx.send(ev).await;
        }
        Request::Alerts => {
            // An older hub without alerts: the header keeps its own count, and nothing is said.
            if let Ok(r) = client.list_alerts(outpost_proto::v1::ListAlertsRequest {}).await {
                let _ = tx.send(ConnEvent::Alerts(r.into_inner().alerts)).await;
            }
            // The header's other hub-wide figure: a CA rotation's progress (nothing from an older hub).
            let req = outpost_proto::v1::CaRotationRequest { action: "status".into(), force: false };
            if let Ok(r) = client.ca_rotation(req).await {
                let _ = tx.send(ConnEvent::CaRotation(Box::new(r.into_inner()))).await;
            }
        }
        Request::Usage { customer, month } => {
            let req = outpost_proto::v1::GetUsageRequest { customer, month };
            let ev = match client.get_usage(req).await {
                Ok(r) => ConnEvent::Usage(Box::new(r.into_inner())),
                Err(s) => ConnEvent::Error(format!("usage: {}", s.message())),
            };
            let _ = tx.send(ev).await;
        }
        Request::Queue => {
            let ev = match client.list_lifecycle_jobs(ListLifecycleJobsRequest { limit: 500 }).await {
                Ok(r) => ConnEvent::Queue(Box::new(r.into_inner())),
                Err(s) => ConnEvent::Error(format!("jobs: {}", s.message())),
            };
            let _ = tx.send(ev).await;
        }
        Request::Audit => {
            let ev = match client.query_audit(QueryAuditRequest { limit: 500, ..Default::default() }).await {
                Ok(r) => ConnEvent::Audit(r.into_inner().records),
                Err(s) => ConnEvent::Error(format!("audit: {}", s.message())),
            };
            let _ = tx.send(ev).await;
        }
    }
}
