//! A command's output: streamed to the hub in chunks, cut at the action's cap, with a bounded tail kept for
//! the journal (a redelivered command answers with it).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use outpost_common::actions::Action;
use outpost_proto::OUTPUT_UPDATE_COST;
use outpost_proto::v1::CommandUpdate;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Output kept in the journal for a replay.
const TAIL: usize = 64 * 1024;
/// Output cap of actions that do not set one (diagnostics, logs, service-*).
const DEFAULT_CAP: u64 = outpost_common::actions::DEFAULT_OUTPUT_CAP;
/// Largest update sent: bigger text goes in pieces, each paid for with credit.
const PIECE: usize = 16 * 1024;
/// "No flow control": more than any output cap.
const UNLIMITED: usize = u32::MAX as usize;
/// Largest window taken from a hub (a larger one is clamped; the semaphore has a bound of its own).
const MAX_WINDOW: usize = 64 << 20;

/// Output flow control (`Welcome.output_window`): bytes a command may still send before the hub says it
/// passed some on to the caller. A slow caller thus slows the action itself: its process blocks on a full
/// pipe, a follow stops reading; nothing is dropped. Window 0 (an older hub): no flow control.
pub struct Credit {
    sem: Semaphore,
    window: AtomicUsize,
}

impl Credit {
    pub fn new(window: usize) -> Credit {
        let c = Credit { sem: Semaphore::new(0), window: AtomicUsize::new(0) };
        c.reset(window);
        c
    }

    /// A new stream: the hub knows nothing of what was sent on the old one, so the window starts full.
    pub fn reset(&self, window: usize) {
        let window = if window == 0 { 0 } else { window.clamp(2 * PIECE, MAX_WINDOW) };
        self.window.store(window, Ordering::Relaxed);
        let target = if window == 0 { UNLIMITED } else { window };
        let have = self.sem.available_permits();
        if have < target {
            self.sem.add_permits(target - have);
        } else {
            self.sem.forget_permits(have - target);
        }
    }

    /// The hub passed `n` bytes on. Never more than the window is outstanding (a duplicate grant is harmless).
    pub fn grant(&self, n: u64) {
        let window = self.window.load(Ordering::Relaxed);
        if window > 0 {
            let room = window.saturating_sub(self.sem.available_permits());
            self.sem.add_permits((n.min(usize::MAX as u64) as usize).min(room));
        }
    }

    /// Resolves once the hub has passed on everything sent (the whole window is back); at once without flow
    /// control.
    pub async fn settled(&self) {
        let window = self.window.load(Ordering::Relaxed);
        if window == 0 {
            return;
        }
        // Every permit at once, then given back.
        let _all = self.sem.acquire_many(window as u32).await;
    }

    async fn take(&self, n: usize) {
        if self.window.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Ok(p) = self.sem.acquire_many(n as u32).await {
            p.forget();
        }
    }
}

pub struct Output {
    id: String,
    tx: mpsc::Sender<CommandUpdate>,
    credit: Arc<Credit>,
    cancel: CancellationToken,
    deadline: Instant,
    cap: u64,
    sent: u64,
    dropped: u64,
    tail: String,
    /// Bytes of a UTF-8 character split across reads.
    partial: Vec<u8>,
}

impl Output {
    pub fn new(
        id: &str,
        tx: mpsc::Sender<CommandUpdate>,
        credit: Arc<Credit>,
        cancel: CancellationToken,
        deadline: Instant,
        action: &Action,
    ) -> Output {
        let cap = match action {
            Action::Exec { output_cap, .. } => *output_cap,
            _ => DEFAULT_CAP,
        };
        Output {
            id: id.to_string(),
            tx,
            credit,
            cancel,
            deadline,
            cap,
            sent: 0,
            dropped: 0,
            tail: String::new(),
            partial: Vec::new(),
        }
    }

    /// Raw bytes from a process; a character split across reads is held back until it is whole.
    pub async fn bytes(&mut self, b: &[u8]) {
        if self.partial.is_empty()
            && let Ok(s) = std::str::from_utf8(b)
        {
            return self.text(s).await; // the common case: no copy
        }
        self.partial.extend_from_slice(b);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(_) => self.partial.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.partial.len(),
        };
        let chunk: Vec<u8> = self.partial.drain(..valid).collect();
        self.text(&String::from_utf8_lossy(&chunk)).await;
    }

    pub async fn line(&mut self, s: &str) {
        self.text(&format!("{s}\n")).await;
    }

    /// Sends `s` (or the part of it under the cap). Waits while the hub has not passed enough on or the link
    /// is behind (backpressure), but not past cancel or the deadline: what is left then is dropped, counted.
    pub async fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        let room = self.cap.saturating_sub(self.sent) as usize;
        let mut cut = s.len().min(room);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.dropped += (s.len() - cut) as u64;
        let s = &s[..cut];
        if s.is_empty() {
            return;
        }
        self.sent += s.len() as u64;
        self.tail.push_str(s);
        if self.tail.len() > 2 * TAIL {
            let mut from = self.tail.len() - TAIL;
            while !self.tail.is_char_boundary(from) {
                from += 1;
            }
            self.tail.drain(..from);
        }
        let mut rest = s;
        while !rest.is_empty() {
            let mut cut = rest.len().min(PIECE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, after) = rest.split_at(cut);
            let u = CommandUpdate { command_id: self.id.clone(), output: piece.to_string(), ..Default::default() };
            let sent = async {
                self.credit.take(piece.len() + OUTPUT_UPDATE_COST as usize).await;
                self.tx.send(u).await.is_ok()
            };
            let stopped = tokio::select! {
                ok = sent => !ok,
                _ = self.cancel.cancelled() => true,
                _ = tokio::time::sleep_until(self.deadline.into()) => true,
            };
            if stopped {
                self.dropped += rest.len() as u64;
                return;
            }
            rest = after;
        }
    }

    /// Whatever is held back, then the tail (at most 64 KiB) and the bytes dropped at the cap.
    pub async fn finish(&mut self) -> (String, u64) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.text(&String::from_utf8_lossy(&rest)).await;
        }
        let mut from = self.tail.len().saturating_sub(TAIL);
        while !self.tail.is_char_boundary(from) {
            from += 1;
        }
        (self.tail[from..].to_string(), self.dropped)
    }

    /// The output so far (at most the last 64–128 KiB), for actions that read what their process printed.
    pub fn tail(&self) -> &str {
        &self.tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn split_characters_and_the_cap() {
        let (tx, mut rx) = mpsc::channel(16);
        let action = Action::Exec { argv: vec!["x".into()], output_cap: 5 };
        let far = Instant::now() + std::time::Duration::from_secs(60);
        let mut out = Output::new("id", tx, Arc::new(Credit::new(0)), CancellationToken::new(), far, &action);
        let e = "é".as_bytes();
        out.bytes(&[b'a', e[0]]).await;
        out.bytes(&[e[1], b'b', b'c', b'd', b'e']).await;
        let (tail, dropped) = out.finish().await;
        assert_eq!(rx.recv().await.unwrap().output, "a");
        assert_eq!(rx.recv().await.unwrap().output, "ébc", "whole character, cut at 5 bytes");
        assert_eq!((tail.as_str(), dropped), ("aébc", 2));
    }

    #[tokio::test]
    async fn output_waits_for_credit_and_goes_in_pieces() {
        let (tx, mut rx) = mpsc::channel(16);
        let action = Action::Exec { argv: vec!["x".into()], output_cap: 1 << 20 };
        let far = Instant::now() + std::time::Duration::from_secs(60);
        let credit = Arc::new(Credit::new(2 * PIECE));
        let mut out = Output::new("id", tx, credit.clone(), CancellationToken::new(), far, &action);
        let big = "x".repeat(2 * PIECE + 10);
        let send = tokio::spawn(async move {
            out.text(&big).await;
            out
        });
        let cost = PIECE + OUTPUT_UPDATE_COST as usize;
        assert_eq!(rx.recv().await.unwrap().output.len(), PIECE, "the first piece fits the window");
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "the second does not: a piece costs its bytes and 64");
        credit.grant(2 * cost as u64 - 2 * PIECE as u64);
        assert_eq!(rx.recv().await.unwrap().output.len(), PIECE);
        credit.grant(1 << 40); // capped at the window
        assert_eq!(rx.recv().await.unwrap().output.len(), 10);
        let out = send.await.unwrap();
        assert_eq!(out.dropped, 0);
        assert_eq!(credit.sem.available_permits(), 2 * PIECE - 74, "never more than the window");
        credit.reset(0);
        assert_eq!(credit.sem.available_permits(), UNLIMITED);
        credit.reset(PIECE);
        assert_eq!(credit.sem.available_permits(), 2 * PIECE, "at least two pieces");
        credit.reset(usize::MAX); // a hub's absurd window does not overflow the semaphore
        assert_eq!(credit.sem.available_permits(), MAX_WINDOW);
    }
}
