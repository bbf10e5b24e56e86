//! The hub link: one outbound mTLS `Connect` stream, replaying the outbox in order, renewing the
//! certificate over the stream, reconnecting with capped exponential backoff and full jitter.

use std::time::{Duration, Instant};

use outpost_common::tls::TlsError;
use outpost_proto::v1::agent_link_client::AgentLinkClient;
use outpost_proto::v1::{AgentMessage, Hello, HubMessage, RenewRequest, agent_message, hub_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use outpost_common::backoff::full_jitter;

use crate::actions::{RenewWaiter, Runner, RunnerLink};
use crate::config::AgentConfig;
use crate::identity::{AgentIdentity, EnrollError, new_key_and_csr};
use crate::outbox::{Outbox, OutboxError};

/// Reports sent but not yet acknowledged, at most.
const WINDOW: u64 = 256;
/// A session that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
/// After a refused renewal, try again this much later.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// After a refused renewal the hub asked for, try again this much later.
const HUB_ASKED_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("hub refused the stream: {}", outpost_common::text::Inert(.0.message()))]
    Refused(tonic::Status),
    #[error("hub not reachable ({0})")]
    Down(String),
    #[error("stream broke: {0}")]
    Broken(String),
    #[error("hub broke the protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error(transparent)]
    Identity(#[from] EnrollError),
}

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    Shutdown,
    /// The hub asked us to come back after a while.
    Reconnect(Duration, String),
}

pub struct Link {
    pub config: AgentConfig,
    pub outbox: Outbox,
    /// The current certificate's expiry (unix seconds), published on connect and renewal.
    pub cert_not_after: tokio::sync::watch::Sender<i64>,
    /// Where the hub says this server belongs (customer, plan), published on every Welcome.
    pub placement: tokio::sync::watch::Sender<crate::actions::apps::Placement>,
    pub runner: Runner,
    /// Held by the current session: command updates to send, renewals `rotate-cert` asked for.
    pub runner_link: tokio::sync::Mutex<RunnerLink>,
}

impl Link {
    /// Runs until `shutdown`. Never gives up: a hub outage only grows the outbox.
    pub async fn run(&self, shutdown: CancellationToken) {
        let initial = Duration::from_millis(self.config.backoff_initial_ms);
        let max = Duration::from_millis(self.config.backoff_max_ms);
        let mut attempt = 0u32;
        // Which hub replica to try: picked by the agent id at first (agents spread), the next one after
        // every failed session.
        let mut turn = None::<usize>;
        let mut expired_logged = false;
        while !shutdown.is_cancelled() {
            let identity = match AgentIdentity::load(&self.config.data_dir) {
                Ok(Some(id)) => id,
                Ok(None) => {
                    tracing::error!("no identity: enroll with `agentd enroll --token TOKEN`");
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot load identity");
                    return;
                }
            };
            let cert = match identity.cert() {
                Ok(c) => c,
                Err(error) => {
                    tracing::error!(%error, "identity certificate unreadable");
                    return;
                }
            };
            if cert.not_after <= outpost_common::now_secs() {
                if !expired_logged {
                    tracing::error!(
                        not_after = cert.not_after,
                        "certificate expired while offline; this agent cannot reconnect by itself. Recover: create a new \
                         join token (`hubd token create --server {}`) and run `agentd enroll --token TOKEN` (or write it \
                         to {}); reports keep accumulating in the outbox meanwhile",
                        identity.server,
                        self.config.token_file.display()
                    );
                    expired_logged = true;
                }
                if crate::try_enroll_from_token_file(&self.config).await {
                    expired_logged = false;
                    continue;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => continue,
                }
            }
            let started = Instant::now();
            let turn_now = *turn.get_or_insert_with(|| crate::identity::spread(&identity.agent_id, usize::MAX));
            let delay = match self.session(identity, turn_now, &shutdown).await {
                Ok(Ended::Shutdown) => return,
                Ok(Ended::Reconnect(after, reason)) => {
                    tracing::info!(%reason, after_ms = after.as_millis() as u64, "hub asked us to reconnect");
                    attempt = 0;
                    turn = turn.map(|t| t.wrapping_add(1)); // a replica going away: the next one
                    after
                }
                Err(LinkError::Refused(status)) if status.code() == tonic::Code::PermissionDenied => {
                    // Revoked or replaced: only a new join token helps. The documented recovery writes one to
                    // the token file; pick it up as soon as it is there.
                    if crate::try_enroll_from_token_file(&self.config).await {
                        attempt = 0;
                        continue;
                    }
                    let d = full_jitter(attempt, initial, max);
                    attempt = attempt.saturating_add(1);
                    tracing::error!(
                        error = %outpost_common::text::Inert(status.message()),
                        retry_in_ms = d.as_millis() as u64,
                        "hub refused this agent's identity. Recover: create a new join token (`hubd token create --server NAME`) and write it to {} (picked up by the running agent) or run `agentd enroll --token TOKEN`",
                        self.config.token_file.display()
                    );
                    d
                }
                Err(error) => {
                    // The hub and this agent trust different CAs: the fleet CA was rotated while this agent
                    // was away. Only a new join token helps (picked up from the token file as above).
                    let untrusted = matches!(&error, LinkError::Down(why) if why.contains("UnknownIssuer") || why.contains("UnknownCA"));
                    if untrusted && crate::try_enroll_from_token_file(&self.config).await {
                        attempt = 0;
                        continue;
                    }
                    if started.elapsed() >= STABLE {
                        attempt = 0;
                    }
                    turn = turn.map(|t| t.wrapping_add(1));
                    let d = full_jitter(attempt, initial, max);
                    attempt = attempt.saturating_add(1);
                    if untrusted {
                        tracing::error!(
                            %error,
                            retry_in_ms = d.as_millis() as u64,
                            "the hub and this agent do not trust the same fleet CA: it was rotated while this agent was offline. Recover: create a new join token (`hubd token create --server {}`) and write it to {} (picked up by the running agent) or run `agentd enroll --token TOKEN`",
                            identity_server(&self.config),
                            self.config.token_file.display()
                        );
                    } else {
                        tracing::warn!(%error, retry_in_ms = d.as_millis() as u64, attempt, "hub link down");
                    }
                    d
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &self,
        mut identity: AgentIdentity,
        turn: usize,
        shutdown: &CancellationToken,
    ) -> Result<Ended, LinkError> {
        let addrs = identity.addrs(self.config.hub.as_deref())?;
        let addr = &addrs[turn % addrs.len()];
        let channel = addr.channel(&identity.ca_pem, Some((&identity.cert_pem, &identity.key_pem)))?;
        let mut client = AgentLinkClient::new(channel)
            .max_decoding_message_size(outpost_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(outpost_proto::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<AgentMessage>(WINDOW as usize + 16);
        let hello = Hello {
            agent_version: crate::VERSION.to_string(),
            host: Some(crate::identity::host_facts()),
            last_seq: self.outbox.last_seq(),
            dropped_reports: self.outbox.dropped(),
            refused_reports: self.outbox.refused_count(),
            log_files: self.config.log_files.iter().map(|f| f.display().to_string()).collect(),
            ca_pins: outpost_common::cert::pins_of(&identity.ca_pem),
        };
        let send = |body| AgentMessage { body: Some(body) };
        tx.send(send(agent_message::Body::Hello(hello)))
            .await
            .map_err(|_| LinkError::Broken("sender closed".into()))?;
        let mut inbound = tokio::select! {
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            r = client.connect(ReceiverStream::new(rx)) => r.map_err(|s| match s.code() {
                // Connection refused, reset, DNS, TLS: the hub is down or unreachable, it refused nothing.
                tonic::Code::Unavailable | tonic::Code::Unknown => LinkError::Down(format!("{} at {}", outpost_common::tls::transport_reason(&s), addr.url)),
                _ => LinkError::Refused(s),
            })?.into_inner(),
        };
        let welcome = match next(&mut inbound, shutdown).await? {
            None => return Ok(Ended::Shutdown),
            Some(hub_message::Body::Welcome(w)) => w,
            Some(other) => {
                return Err(LinkError::Protocol(format!("expected Welcome, got {other:?}")));
            }
        };
        let mut acked = welcome.acked_seq;
        if self.outbox.advance_to(acked).await? {
            tracing::warn!(acked, "the hub has reports beyond this outbox (was it lost?); continuing after them");
        }
        self.outbox.ack(acked)?;
        self.runner.new_stream(welcome.output_window);
        let placement =
            crate::actions::apps::Placement { customer: welcome.customer.clone(), plan: welcome.plan.clone() };
        self.placement.send_if_modified(|p| std::mem::replace(p, placement.clone()) != placement);
        let mut next_seq = acked + 1;
        tracing::info!(server = %welcome.server_name, acked, backlog = self.outbox.len(), "connected to hub");

        let mut cert = identity.cert()?;
        self.cert_not_after.send_replace(cert.not_after);
        let mut renew_at = renewal_instant(cert.not_before, cert.not_after);
        let mut pending_key: Option<rcgen::KeyPair> = None;
        // The hub asked for this renewal (a CA rotation): a refusal (at most one renewal a second) is retried
        // soon, not at RENEW_RETRY.
        let mut hub_asked = false;
        let mut renew_waiters: Vec<RenewWaiter> = Vec::new();
        let mut runner_link = self.runner_link.lock().await;
        let RunnerLink { updates, renewals } = &mut *runner_link;
        loop {
            // Fill the window from the outbox, in order.
            while next_seq <= self.outbox.last_seq() && next_seq - acked - 1 < WINDOW {
                let batch = self.outbox.pending_from(next_seq, (WINDOW - (next_seq - acked - 1)) as usize)?;
                let Some(last) = batch.last().map(|r| r.seq) else {
                    next_seq = self.outbox.last_seq() + 1; // evicted while we were away
                    break;
                };
                for r in batch {
                    tx.send(send(agent_message::Body::Report(r)))
                        .await
                        .map_err(|_| LinkError::Broken("stream closed".into()))?;
                }
                next_seq = last + 1;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                _ = self.outbox.pushed.notified() => {}
                Some(u) = updates.recv() => {
                    tx.send(send(agent_message::Body::CommandUpdate(u))).await.map_err(|_| LinkError::Broken("stream closed".into()))?;
                }
                Some(w) = renewals.recv() => {
                    renew_waiters.push(w);
                    if pending_key.is_none() {
                        renew_at = Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(renew_at.into()), if pending_key.is_none() => {
                    let (key, csr_pem) = new_key_and_csr()?;
                    tracing::info!(not_after = cert.not_after, "renewing certificate over the stream");
                    let ca_pins = outpost_common::cert::pins_of(&identity.ca_pem);
                    tx.send(send(agent_message::Body::Renew(RenewRequest { csr_pem, ca_pins }))).await.map_err(|_| LinkError::Broken("stream closed".into()))?;
                    pending_key = Some(key);
                }
                m = next(&mut inbound, shutdown) => match m? {
                    None => return Ok(Ended::Shutdown),
                    Some(hub_message::Body::Ack(a)) => {
                        if a.up_to_seq > acked {
                            acked = a.up_to_seq.min(next_seq - 1);
                            self.outbox.ack(acked)?;
                        }
                    }
                    Some(hub_message::Body::Refused(r)) => {
                        // The hub will never take this report: dropping it (counted, reported in Hello) keeps
                        // it from blocking every report behind it.
                        tracing::warn!(seq = r.seq, reason = %outpost_common::text::Inert(&r.reason), refused_total = self.outbox.refused_count() + 1, "hub refused a report as invalid; dropped");
                        if r.seq > acked && r.seq < next_seq {
                            acked = r.seq;
                            self.outbox.refused(r.seq)?;
                        }
                    }
                    Some(hub_message::Body::Renewed(r)) => {
                        let Some(key) = pending_key.take() else {
                            return Err(LinkError::Protocol("Renewed without a renewal request".into()));
                        };
                        if !r.error.is_empty() {
                            tracing::warn!(error = %r.error, "hub refused renewal; retrying later");
                            for w in renew_waiters.drain(..) {
                                let _ = w.send(Err(r.error.clone()));
                            }
                            renew_at = Instant::now() + if hub_asked { HUB_ASKED_RETRY } else { RENEW_RETRY };
                            continue;
                        }
                        let mut renewed = identity.clone();
                        renewed.cert_pem = r.cert_chain_pem;
                        renewed.key_pem = key.serialize_pem();
                        let info = renewed.cert()?;
                        if info.identity != (outpost_common::Identity::Agent { id: identity.agent_id.clone() }) {
                            return Err(LinkError::Protocol(format!("renewed certificate is for {}", info.identity)));
                        }
                        renewed.save(&self.config.data_dir)?;
                        hub_asked = false;
                        tracing::info!(serial = %info.serial, not_after = info.not_after, "certificate renewed; the stream stays up");
                        renew_at = renewal_instant(info.not_before, info.not_after);
                        for w in renew_waiters.drain(..) {
                            let _ = w.send(Ok(info.serial.clone()));
                        }
                        self.cert_not_after.send_replace(info.not_after);
                        cert = info;
                        identity = renewed;
                    }
                    Some(hub_message::Body::RenewCertificate(r)) => {
                        if !r.ca_bundle_pem.is_empty() {
                            // A CA rotation: what to trust from now on, stored before anything else.
                            let pins = outpost_common::cert::check_ca_bundle(&r.ca_bundle_pem).map_err(LinkError::Protocol)?;
                            identity.ca_pem = r.ca_bundle_pem;
                            identity.save(&self.config.data_dir)?;
                            tracing::info!(?pins, "the hub rotates the fleet CA: trusting these CAs from now on");
                        }
                        if !r.trust_only {
                            tracing::info!(reason = %outpost_common::text::Inert(&r.reason), "hub asked for renewal");
                            renew_at = Instant::now();
                            hub_asked = true;
                        }
                    }
                    Some(hub_message::Body::Reconnect(r)) => {
                        return Ok(Ended::Reconnect(Duration::from_secs(u64::from(r.after_secs.min(3600))), r.reason));
                    }
                    Some(hub_message::Body::Command(c)) => self.runner.handle(c),
                    Some(hub_message::Body::Cancel(c)) => self.runner.cancel(&c.command_id),
                    Some(hub_message::Body::Credit(c)) => self.runner.credit(&c.command_id, c.bytes),
                    Some(hub_message::Body::Welcome(_)) => return Err(LinkError::Protocol("a second Welcome".into())),
                },
            }
        }
    }
}

/// The next message body; `None` on shutdown.
async fn next(
    inbound: &mut tonic::Streaming<HubMessage>,
    shutdown: &CancellationToken,
) -> Result<Option<hub_message::Body>, LinkError> {
    tokio::select! {
        _ = shutdown.cancelled() => Ok(None),
        m = inbound.message() => match m {
            Ok(Some(HubMessage { body: Some(b) })) => Ok(Some(b)),
            Ok(Some(HubMessage { body: None })) => Err(LinkError::Protocol("a message without a body".into())),
            Ok(None) => Err(LinkError::Broken("hub closed the stream".into())),
            Err(s) if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::InvalidArgument) => Err(LinkError::Refused(s)),
            Err(s) => Err(LinkError::Broken(s.to_string())),
        }
    }
}

/// The server name of the stored identity (for a message).
fn identity_server(config: &crate::config::AgentConfig) -> String {
    AgentIdentity::load(&config.data_dir).ok().flatten().map_or_else(|| "NAME".into(), |i| i.server)
}

/// About two thirds into the certificate's life.
fn renewal_instant(not_before: i64, not_after: i64) -> Instant {
    let at = not_before + (not_after - not_before) * 2 / 3;
    Instant::now() + Duration::from_secs((at - outpost_common::now_secs()).max(0) as u64)
}
