//! The relay: commands down the agents' streams, their updates back to whoever waits for them.
//!
//! Architecture invariant: a command stays pending here until its result arrives or the waiter gives up;
//! while it is pending, every new stream of its server gets it again (redelivery). The agent's journal
//! turns that at-least-once delivery into at-most-once execution.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use outpost_proto::OUTPUT_UPDATE_COST;
use outpost_proto::v1 as pb;
use pb::{CancelCommand, CommandUpdate, HubMessage, OutputCredit, hub_message};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::command::{Command, CommandResult, Outcome};

/// What goes to an agent's stream. Boxed: a channel allocates its first block of 32 slots when made, and
/// every connected agent has one (32 × 128 bytes unboxed).
pub type AgentTx = mpsc::Sender<Result<Box<HubMessage>, Status>>;

/// What happens to a command before its result.
#[derive(Debug, Clone, PartialEq)]
pub enum CmdEvent {
    Sent,
    Started,
    Output(String),
}

/// A dispatched command: its events, and its result (exactly once).
pub struct Dispatch {
    pub events: mpsc::UnboundedReceiver<CmdEvent>,
    pub done: oneshot::Receiver<CommandResult>,
    /// The server was offline: the command waits for its next stream.
    pub queued: bool,
}

/// Output flow control (`Welcome.output_window`): bytes of a command's output the agent may send before the
/// hub grants more, which it does as the waiter passes output on to its caller ([`Relay::passed_on`]).
pub const OUTPUT_WINDOW: u64 = 256 * 1024;
/// Credit is granted in steps of this much. Never stalls: an agent waiting for credit has at least
/// `OUTPUT_WINDOW - GRANT_STEP` (more than its 16 KiB piece) sent and not granted, so the waiter holds a step.
const GRANT_STEP: u64 = OUTPUT_WINDOW / 8;
/// Output buffered per command for its waiter, counted as the window counts. An agent that keeps to its
/// window never reaches it; beyond it (an agent without flow control) chunks are dropped and counted.
const BUFFER_LIMIT: u64 = 2 * OUTPUT_WINDOW;
/// An agent with this much output sent beyond its window has its stream closed: it ignores flow control.
const WINDOW_ABUSE: u64 = 2 * OUTPUT_WINDOW;

/// Why an update was not taken.
#[derive(Debug)]
pub enum Rejected {
    /// Not a command this hub sent to this server (stale after a restart, or forged); ignored.
    Stale(String),
    /// The agent keeps sending output far beyond the window the hub announced: its stream is closed.
    Window(String),
}

struct Pending {
    server: String,
    command: pb::Command,
    run_for: Duration,
    /// The caller's absolute deadline, if it gave one.
    hard_deadline: Option<Instant>,
    /// Set when first sent: the command must have ended by then.
    deadline: Option<Instant>,
    cancelled: bool,
    events: mpsc::UnboundedSender<CmdEvent>,
    done: Option<oneshot::Sender<CommandResult>>,
    /// Output dropped at the hub (past the window, the action's output cap or the buffer), in bytes.
    dropped: u64,
    /// The action's output cap, enforced here too: an agent that ignores it loses the excess.
    cap: u64,
    /// Output bytes received for this command, in all.
    received: u64,
    /// Output cost received on the current stream and not yet granted back: at most `OUTPUT_WINDOW` for an
    /// agent that keeps to its window.
    in_flight: u64,
    /// Output in `events` not yet passed on by the waiter (with overhead), and bytes passed on not yet granted.
    buffered: u64,
    owed: u64,
}

impl Pending {
    /// The message to send now, with the time left; `None` when the deadline passed.
    fn message(&mut self, now: Instant) -> Option<HubMessage> {
        let deadline = *self
            .deadline
            .get_or_insert_with(|| self.hard_deadline.map_or(now + self.run_for, |h| h.min(now + self.run_for)));
        let left = deadline.checked_duration_since(now).filter(|d| !d.is_zero())?;
        let command = pb::Command { timeout_ms: left.as_millis() as u64, ..self.command.clone() };
        Some(HubMessage { body: Some(hub_message::Body::Command(command)) })
    }
}

struct Link {
    conn_id: u64,
    tx: AgentTx,
}

#[derive(Default)]
pub struct Relay {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    links: HashMap<String, Link>,
    pending: HashMap<String, Pending>,
}

/// The CAs to trust (a CA rotation), and a renewal unless `trust_only`.
pub fn trust_message(bundle_pem: &str, trust_only: bool) -> HubMessage {
    let body = hub_message::Body::RenewCertificate(pb::RenewCertificate {
        reason: "the fleet CA is being rotated".into(),
        ca_bundle_pem: bundle_pem.into(),
        trust_only,
    });
    HubMessage { body: Some(body) }
}

pub fn cancel_message(id: &str) -> HubMessage {
    HubMessage { body: Some(hub_message::Body::Cancel(CancelCommand { command_id: id.to_string() })) }
}

/// The most of an agent's result message the hub keeps (it is audited, logged and shown): the agent's
/// own messages are one line; the output is where long text goes.
pub const RESULT_MESSAGE_MAX: usize = 4096;

/// An agent's answer in the domain's terms. An outcome this hub does not know is `failed`: the command
/// ran, or may have, and did not succeed as far as the hub can tell. Its message is bounded here, at the
/// edge, so every record made of it is.
fn result_from_agent(r: pb::CommandResult) -> CommandResult {
    let outcome = match pb::Outcome::try_from(r.outcome) {
        Ok(pb::Outcome::Succeeded) => Outcome::Succeeded,
        Ok(pb::Outcome::Refused) => Outcome::Refused,
        Ok(pb::Outcome::Cancelled) => Outcome::Cancelled,
        Ok(pb::Outcome::TimedOut) => Outcome::TimedOut,
        Ok(pb::Outcome::Interrupted) => Outcome::Interrupted,
        Ok(pb::Outcome::Expired) => Outcome::Expired,
        Ok(pb::Outcome::Skipped) => Outcome::Skipped,
        Ok(pb::Outcome::Failed | pb::Outcome::Unspecified) | Err(_) => Outcome::Failed,
    };
    CommandResult {
        outcome,
        exit_code: r.exit_code,
        message: if r.message.len() > RESULT_MESSAGE_MAX {
            format!(
                "{}… (cut by the hub: {} bytes)",
                outpost_common::text::truncate_bytes(&r.message, RESULT_MESSAGE_MAX),
                r.message.len()
            )
        } else {
            r.message
        },
        output_dropped_bytes: r.output_dropped_bytes,
        replayed: r.replayed,
        duration_ms: r.duration_ms,
    }
}

impl Relay {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream of `server` is up: it gets commands from now on. Returns what must be (re)delivered on it:
    /// every pending command of the server whose deadline has not passed (and the cancel of a cancelled one).
    pub fn attach(&self, server: &str, conn_id: u64, tx: AgentTx) -> Vec<HubMessage> {
        let mut inner = self.lock();
        inner.links.insert(server.to_string(), Link { conn_id, tx });
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, p) in inner.pending.iter_mut().filter(|(_, p)| p.server == server) {
            if let Some(m) = p.message(now) {
                tracing::info!(command_id = %id, "delivering a pending command on the new stream");
                out.push(m);
                if p.cancelled {
                    out.push(cancel_message(id));
                }
                let _ = p.events.send(CmdEvent::Sent);
                p.owed = 0; // the agent's window starts full on this stream
                p.in_flight = 0;
            }
        }
        out
    }

    /// Sends `message` on `server`'s stream now, if it has one and room in its queue (a message that can be
    /// sent again later: a full queue drops it). Whether it was queued.
    fn send(&self, server: &str, message: HubMessage) -> bool {
        let inner = self.lock();
        inner.links.get(server).is_some_and(|l| l.tx.try_send(Ok(Box::new(message))).is_ok())
    }

    /// Tells `server`'s agent the CAs to trust from now on (a CA rotation) and, unless `trust_only`, to renew
    /// its certificate. Whether it was queued on a stream.
    pub fn ask_trust(&self, server: &str, bundle_pem: &str, trust_only: bool) -> bool {
        self.send(server, trust_message(bundle_pem, trust_only))
    }

    /// Asks `server`'s agent to reconnect after `after_secs`, saying why. Whether it was queued on a stream.
    pub fn ask_reconnect(&self, server: &str, after_secs: u32, reason: &str) -> bool {
        let body = hub_message::Body::Reconnect(pb::Reconnect { after_secs, reason: reason.into() });
        self.send(server, HubMessage { body: Some(body) })
    }

    pub fn detach(&self, server: &str, conn_id: u64) {
        let mut inner = self.lock();
        if inner.links.get(server).is_some_and(|l| l.conn_id == conn_id) {
            inner.links.remove(server);
        }
    }

    /// Sends `command` to `server` now, or keeps it until the server's next stream when `queue` is set.
    /// `Err` is the result of a command that was never sent (offline and not queued).
    pub async fn dispatch(
        &self,
        server: &str,
        command: Command,
        run_for: Duration,
        hard_deadline: Option<Instant>,
        queue: bool,
    ) -> Result<Dispatch, CommandResult> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (done_tx, done) = oneshot::channel();
        let id = command.id.clone();
        let command = pb::Command {
            command_id: command.id,
            action: command.action,
            args: command.args.into_iter().collect(),
            timeout_ms: 0,
            operator: command.operator,
        };
        let (send, queued) = {
            let mut inner = self.lock();
            let tx = inner.links.get(server).map(|l| l.tx.clone());
            if tx.is_none() && !queue {
                return Err(CommandResult::refused(format!(
                    "{server} is offline; nothing was sent. Run it again when it is connected, or queue it (--queue 10m)"
                )));
            }
            let cap = outpost_common::actions::output_cap(&command.action, &command.args);
            let mut p = Pending {
                server: server.to_string(),
                command,
                run_for,
                hard_deadline,
                deadline: None,
                cancelled: false,
                events: events_tx.clone(),
                done: Some(done_tx),
                dropped: 0,
                cap,
                received: 0,
                in_flight: 0,
                buffered: 0,
                owed: 0,
            };
            let queued = tx.is_none();
            let send = tx.and_then(|tx| p.message(Instant::now()).map(|m| (tx, m)));
            inner.pending.insert(id.clone(), p);
            (send, queued)
        };
        if let Some((tx, m)) = send {
            // A stream that just went away keeps the command pending: its next stream gets it.
            if tx.send(Ok(Box::new(m))).await.is_ok() {
                let _ = events_tx.send(CmdEvent::Sent);
            }
        }
        Ok(Dispatch { events, done, queued })
    }

    /// An update from `server`'s agent. The hub enforces what it announced: output past the window or the
    /// action's cap is dropped and counted (`output_dropped_bytes`), and an agent that keeps ignoring its
    /// window gets [`Rejected::Window`].
    pub fn update(&self, server: &str, u: CommandUpdate) -> Result<(), Rejected> {
        let mut inner = self.lock();
        let Some(p) = inner.pending.get_mut(&u.command_id) else {
            return Err(Rejected::Stale(format!(
                "no pending command {} (finished, abandoned, or never sent)",
                outpost_common::text::excerpt(&u.command_id, 40)
            )));
        };
        if p.server != server {
            return Err(Rejected::Stale(format!(
                "command {} was sent to {}, not to {server}",
                outpost_common::text::excerpt(&u.command_id, 40),
                p.server
            )));
        }
        if u.started {
            let _ = p.events.send(CmdEvent::Started);
        }
        if !u.output.is_empty() {
            let len = u.output.len() as u64;
            let cost = len + OUTPUT_UPDATE_COST;
            p.in_flight += cost;
            let within_cap = p.cap.saturating_sub(p.received);
            p.received += len;
            if p.in_flight > OUTPUT_WINDOW + WINDOW_ABUSE {
                p.dropped += len;
                return Err(Rejected::Window(format!(
                    "the agent sent {} bytes of output for command {} beyond its {OUTPUT_WINDOW}-byte window",
                    p.in_flight - OUTPUT_WINDOW,
                    short(&u.command_id)
                )));
            }
            if p.in_flight > OUTPUT_WINDOW || within_cap == 0 {
                // Past the window or the cap: dropped, and no credit comes back for it.
                p.dropped += len;
            } else if len > within_cap {
                // The cap falls inside this chunk: keep what fits (on a character boundary).
                let keep = outpost_common::text::truncate_bytes(&u.output, within_cap as usize).to_string();
                p.dropped += len - keep.len() as u64;
                if p.events.send(CmdEvent::Output(keep)).is_ok() {
                    p.buffered += cost;
                }
            } else if p.buffered + cost > BUFFER_LIMIT {
                p.dropped += len;
                p.owed += cost; // gone: its credit must come back all the same
            } else if p.events.send(CmdEvent::Output(u.output)).is_ok() {
                p.buffered += cost;
            }
        }
        if let Some(r) = u.result {
            let mut p = inner.pending.remove(&u.command_id).expect("looked up above");
            let mut r = result_from_agent(r);
            r.output_dropped_bytes = r.output_dropped_bytes.saturating_add(p.dropped);
            if let Some(done) = p.done.take() {
                let _ = done.send(r);
            }
        }
        Ok(())
    }

    /// Asks the agent to stop `id`. A command that was never sent ends here and now, as cancelled.
    pub async fn cancel(&self, id: &str) {
        let send = {
            let mut inner = self.lock();
            let Some(p) = inner.pending.get_mut(id) else { return };
            p.cancelled = true;
            if p.deadline.is_none() {
                let mut p = inner.pending.remove(id).expect("looked up above");
                if let Some(done) = p.done.take() {
                    let _ = done.send(CommandResult::not_run(Outcome::Cancelled, "cancelled before it was delivered"));
                }
                return;
            }
            let server = p.server.clone();
            inner.links.get(&server).map(|l| l.tx.clone())
        };
        if let Some(tx) = send {
            let _ = tx.send(Ok(Box::new(cancel_message(id)))).await;
        }
    }

    /// The waiter passed `bytes` of `id`'s output on (or dropped them: its caller went away): the agent gets
    /// that credit back, in steps.
    pub async fn passed_on(&self, id: &str, bytes: u64) {
        let send = {
            let mut inner = self.lock();
            let Some(p) = inner.pending.get_mut(id) else { return };
            let cost = bytes + OUTPUT_UPDATE_COST;
            p.buffered = p.buffered.saturating_sub(cost);
            p.owed += cost;
            if p.owed < GRANT_STEP {
                return;
            }
            let credit = OutputCredit { command_id: id.to_string(), bytes: std::mem::take(&mut p.owed) };
            p.in_flight = p.in_flight.saturating_sub(credit.bytes);
            let server = p.server.clone();
            inner.links.get(&server).map(|l| (l.tx.clone(), credit))
        };
        if let Some((tx, credit)) = send {
            let _ = tx.send(Ok(Box::new(HubMessage { body: Some(hub_message::Body::Credit(credit)) }))).await;
        }
    }

    /// When the agent must have answered `id` by (its deadline, once sent).
    pub fn deadline(&self, id: &str) -> Option<Instant> {
        self.lock().pending.get(id).and_then(|p| p.deadline)
    }

    /// The waiter gives up on `id`. Returns whether it had been sent (`None`: it already ended).
    pub fn abandon(&self, id: &str) -> Option<bool> {
        self.lock().pending.remove(id).map(|p| p.deadline.is_some())
    }

    #[cfg(test)]
    fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }
}

fn short(id: &str) -> String {
    id.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_agents_result_message_is_bounded_at_the_edge() {
        let r = pb::CommandResult { message: "x".repeat(900_000), ..Default::default() };
        let m = result_from_agent(r).message;
        assert!(m.len() <= RESULT_MESSAGE_MAX + 64 && m.ends_with("900000 bytes)"), "{} bytes", m.len());
        let r = pb::CommandResult { message: "ok".into(), ..Default::default() };
        assert_eq!(result_from_agent(r).message, "ok");
    }

    use super::*;

    fn cmd(id: &str) -> Command {
        Command { id: id.into(), action: "diagnostics".into(), ..Default::default() }
    }

    fn refused(message: &str) -> pb::CommandResult {
        pb::CommandResult { outcome: pb::Outcome::Refused as i32, message: message.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn offline_is_refused_queued_is_delivered_on_attach_and_redelivered() {
        let relay = Relay::default();
        let r = relay.dispatch("a", cmd("1"), Duration::from_secs(30), None, false).await.err().unwrap();
        assert!(r.message.contains("a is offline"), "{}", r.message);
        let mut d = relay.dispatch("a", cmd("2"), Duration::from_secs(30), None, true).await.ok().unwrap();
        assert!(d.events.try_recv().is_err(), "queued, not sent");
        let (tx, mut rx) = mpsc::channel(8);
        let first = relay.attach("a", 1, tx.clone());
        assert_eq!(first.len(), 1);
        assert!(
            matches!(&first[0].body, Some(hub_message::Body::Command(c)) if c.command_id == "2" && c.timeout_ms > 29_000)
        );
        relay.detach("a", 1);
        assert_eq!(relay.attach("a", 2, tx).len(), 1, "still pending: redelivered on the next stream");
        // A forged id or another server's id is refused; the real result completes the command once.
        assert!(relay.update("a", CommandUpdate { command_id: "9".into(), ..Default::default() }).is_err());
        assert!(relay.update("b", CommandUpdate { command_id: "2".into(), ..Default::default() }).is_err());
        let done = CommandUpdate { command_id: "2".into(), result: Some(refused("x")), ..Default::default() };
        relay.update("a", done.clone()).unwrap();
        assert_eq!(d.done.try_recv().unwrap().message, "x");
        assert!(relay.update("a", done).is_err(), "a second result is not accepted");
        assert!(rx.try_recv().is_err(), "attach returns messages; it does not send them itself");
        assert_eq!(relay.pending_count(), 0);
    }

    #[tokio::test]
    async fn output_credit_is_granted_as_the_waiter_passes_output_on() {
        let relay = Relay::default();
        let (tx, mut rx) = mpsc::channel(8);
        relay.attach("a", 1, tx);
        let mut d = relay.dispatch("a", cmd("1"), Duration::from_secs(30), None, false).await.ok().unwrap();
        assert!(matches!(rx.recv().await.unwrap().unwrap().body, Some(hub_message::Body::Command(_))));
        let chunk = |n: usize| CommandUpdate { command_id: "1".into(), output: "x".repeat(n), ..Default::default() };
        let credit = |m: Box<HubMessage>| match m.body {
            Some(hub_message::Body::Credit(c)) => (c.command_id, c.bytes),
            other => panic!("{other:?}"),
        };
        for _ in 0..4 {
            relay.update("a", chunk(10_000)).unwrap();
        }
        for _ in 0..3 {
            relay.passed_on("1", 10_000).await;
        }
        assert!(rx.try_recv().is_err(), "credit goes in steps");
        relay.passed_on("1", 10_000).await;
        assert_eq!(credit(rx.try_recv().unwrap().unwrap()), ("1".into(), 4 * (10_000 + OUTPUT_UPDATE_COST)));
        // An agent that ignores its window: buffered output is bounded, the rest dropped and counted.
        for _ in 0..(BUFFER_LIMIT / 10_000 + 5) {
            relay.update("a", chunk(10_000)).unwrap();
        }
        relay
            .update("a", CommandUpdate { command_id: "1".into(), result: Some(refused("x")), ..Default::default() })
            .unwrap();
        let mut kept = 0;
        while let Ok(ev) = d.events.try_recv() {
            if let CmdEvent::Output(o) = ev {
                kept += o.len() as u64;
            }
        }
        kept -= 40_000; // the first four, passed on above (this test plays the waiter without reading)
        let r = d.done.try_recv().unwrap();
        assert!(kept <= BUFFER_LIMIT && r.output_dropped_bytes > 0, "{kept} {r:?}");
        assert_eq!(kept + r.output_dropped_bytes, (BUFFER_LIMIT / 10_000 + 5) * 10_000);
    }

    #[tokio::test]
    async fn cancel_of_an_undelivered_command_ends_it_at_once() {
        let relay = Relay::default();
        let mut d = relay.dispatch("a", cmd("1"), Duration::from_secs(30), None, true).await.ok().unwrap();
        relay.cancel("1").await;
        assert_eq!(d.done.try_recv().unwrap().outcome, Outcome::Cancelled);
        assert_eq!(relay.abandon("1"), None);
    }
}
