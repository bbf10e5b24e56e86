//! The live console: one `select!` loop over keys, hub events and a render tick; redraws only when
//! something changed; the terminal is restored on exit and on panic.

use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::conn::{self, ConnEvent};
use crate::state::{Action, Conn, Fleet};
use crate::view;

/// Restores the terminal however the loop ends (ratatui::init also restores on panic).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

pub fn keymap(code: KeyCode, mods: KeyModifiers) -> Option<Action> {
    Some(match code {
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char('j') | KeyCode::Down => Action::Down,
        KeyCode::Char('k') | KeyCode::Up => Action::Up,
        KeyCode::Char('g') | KeyCode::Home => Action::Top,
        KeyCode::Char('G') | KeyCode::End => Action::Bottom,
        KeyCode::Char(' ') => Action::TogglePause,
        _ => return None,
    })
}

pub async fn run(mut fleet: Fleet, channel: Channel) -> anyhow::Result<()> {
    let color = std::env::var_os("NO_COLOR").is_none();
    let mut terminal = ratatui::init();
    let _restore = Restore;
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(8192);
    let conn = tokio::spawn(conn::watch(channel, tx, stop.clone()));
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1)); // "last seen" ages
    let mut dirty = true;
    let result = loop {
        if dirty {
            if let Err(e) = terminal.draw(|f| view::render(f, &fleet, outpost_common::now_ms(), color)) {
                break Err(e.into());
            }
            dirty = false;
        }
        tokio::select! {
            k = keys.next() => match k {
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => {
                    if let Some(a) = keymap(k.code, k.modifiers) {
                        if !fleet.act(a) {
                            break Ok(());
                        }
                        dirty = true;
                    }
                }
                Some(Ok(Event::Resize(..))) => dirty = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e.into()),
                None => break Ok(()),
            },
            Some(first) = rx.recv() => {
                // Apply everything that is waiting, then draw once.
                let mut next = Some(first);
                while let Some(ev) = next {
                    match ev {
                        ConnEvent::Live => fleet.conn = Conn::Live,
                        ConnEvent::Fleet(e) => fleet.apply(*e),
                        ConnEvent::Down { error, retry_in } => fleet.conn = Conn::Reconnecting { error, retry_in_ms: retry_in.as_millis() as u64 },
                    }
                    next = rx.try_recv().ok();
                }
                dirty = true;
            }
            _ = tick.tick() => dirty = true,
        }
    };
    stop.cancel();
    let _ = conn.await;
    result
}
