//! A command's output: streamed to the hub in chunks, cut at the action's cap, with a bounded tail kept for
//! the journal (a redelivered command answers with it).

use std::time::Instant;

use outpost_common::actions::Action;
use outpost_proto::v1::CommandUpdate;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Output kept in the journal for a replay.
const TAIL: usize = 64 * 1024;
/// Output cap of actions that do not set one (diagnostics, logs, service-*).
const DEFAULT_CAP: u64 = 4 * 1024 * 1024;

pub struct Output {
    id: String,
    tx: mpsc::Sender<CommandUpdate>,
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

    /// Sends `s` (or the part of it under the cap). Waits while the link is behind (backpressure), but not
    /// past cancel or the deadline.
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
        let u = CommandUpdate { command_id: self.id.clone(), output: s.to_string(), ..Default::default() };
        tokio::select! {
            _ = self.tx.send(u) => {}
            _ = self.cancel.cancelled() => self.dropped += s.len() as u64,
            _ = tokio::time::sleep_until(self.deadline.into()) => self.dropped += s.len() as u64,
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
        let mut out = Output::new("id", tx, CancellationToken::new(), far, &action);
        let e = "é".as_bytes();
        out.bytes(&[b'a', e[0]]).await;
        out.bytes(&[e[1], b'b', b'c', b'd', b'e']).await;
        let (tail, dropped) = out.finish().await;
        assert_eq!(rx.recv().await.unwrap().output, "a");
        assert_eq!(rx.recv().await.unwrap().output, "ébc", "whole character, cut at 5 bytes");
        assert_eq!((tail.as_str(), dropped), ("aébc", 2));
    }
}
