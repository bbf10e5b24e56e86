//! What agents call (gRPC edge): `Enrollment.Enroll` and the `AgentLink.Connect` stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outpost_common::Identity;
use outpost_proto::v1::agent_link_server::AgentLink;
use outpost_proto::v1::enrollment_server::Enrollment;
use outpost_proto::v1::{
    Ack, AgentMessage, EnrollRequest, EnrollResponse, HubMessage, Reconnect, Renewed, ReportRefused, Welcome,
    agent_message, hub_message, report,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Auth;
use super::convert;
use crate::error::HubError;
use crate::fleet::Fleet;
use crate::fleet::identities::Identities;
use crate::fleet::reports::{Body as ReportBody, Report, ReportIntake};
use crate::fleet::rotation::CaRotation;
use crate::limits::RateLimiter;
use crate::relay::{Rejected, Relay};
use crate::runtime::Runtime;

/// How long an agent has to send Hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards one agent before the hub waits for it.
const OUTBOUND_QUEUE: usize = 64;
/// Output per CommandUpdate, at most (agents send chunks of 8 KiB).
const MAX_UPDATE_OUTPUT: usize = 256 * 1024;
/// Renewals on one stream, at most one per this long.
const RENEW_EVERY: Duration = Duration::from_secs(1);

struct AgentState {
    auth: Arc<Auth>,
    fleet: Arc<Fleet>,
    identities: Arc<Identities>,
    reports: Arc<ReportIntake>,
    relay: Arc<Relay>,
    rotation: Arc<CaRotation>,
    rt: Runtime,
    /// Enroll calls per source address.
    enroll_limit: RateLimiter,
    /// Agents whose stream went away while the hub was sending to them (not an error; counted).
    agents_gone: AtomicU64,
}

/// What the agent API is made of.
pub struct AgentParts {
    pub auth: Arc<Auth>,
    pub fleet: Arc<Fleet>,
    pub identities: Arc<Identities>,
    pub reports: Arc<ReportIntake>,
    pub relay: Arc<Relay>,
    pub rotation: Arc<CaRotation>,
    pub rt: Runtime,
    pub enroll_limit: RateLimiter,
}

/// `Enrollment` and `AgentLink`: what agents call.
#[derive(Clone)]
pub struct AgentApi {
    state: Arc<AgentState>,
}

impl AgentApi {
    pub fn new(p: AgentParts) -> AgentApi {
        let AgentParts { auth, fleet, identities, reports, relay, rotation, rt, enroll_limit } = p;
        let state = AgentState {
            auth,
            fleet,
            identities,
            reports,
            relay,
            rotation,
            rt,
            enroll_limit,
            agents_gone: AtomicU64::new(0),
        };
        AgentApi { state: Arc::new(state) }
    }

    /// Agents whose stream went away while the hub answered them.
    pub fn agents_gone(&self) -> u64 {
        self.state.agents_gone.load(Ordering::Relaxed)
    }
}

#[tonic::async_trait]
impl Enrollment for AgentApi {
    async fn enroll(&self, req: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let source = req.remote_addr().map(|a| a.ip());
        let peer = source.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        if let Some(ip) = source
            && let Err(wait) = self.state.enroll_limit.check(ip)
        {
            if let Some(repeated) = self.state.rt.log_limit().allow("enroll rate limit", &peer) {
                tracing::warn!(%peer, repeated, "enrollment rate limit reached for this source address");
            }
            return Err(Status::resource_exhausted(format!(
                "too many enrollment attempts from {peer}; retry in {} ms",
                wait.as_millis().max(1)
            )));
        }
        let r = req.into_inner();
        let host = r.host.map(convert::host_facts).unwrap_or_default();
        let e = self.state.identities.enroll(&r.join_token, &r.csr_pem, host).await.inspect_err(|error| {
            if let Some(repeated) = self.state.rt.log_limit().allow("enrollment refused", &peer) {
                tracing::warn!(%peer, repeated, error = %outpost_common::text::Inert(&error.to_string()), "enrollment refused");
            }
        })?;
        Ok(Response::new(EnrollResponse {
            agent_id: e.agent_id,
            server_name: e.server,
            cert_chain_pem: e.chain_pem,
            ca_bundle_pem: e.ca_pem,
        }))
    }
}

fn msg(body: hub_message::Body) -> Result<Box<HubMessage>, Status> {
    Ok(Box::new(HubMessage { body: Some(body) }))
}

/// An agent's outbound stream: the session's channel, unboxed for tonic.
type Outbound = tokio_stream::adapters::Map<
    ReceiverStream<Result<Box<HubMessage>, Status>>,
    fn(Result<Box<HubMessage>, Status>) -> Result<HubMessage, Status>,
>;

#[tonic::async_trait]
impl AgentLink for AgentApi {
    type ConnectStream = Outbound;

    async fn connect(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Self::ConnectStream>, Status> {
        let state = &self.state;
        let cert = state.auth.peer(&req)?;
        let Identity::Agent { id: agent_id } = cert.identity.clone() else {
            return Err(Status::permission_denied("an operator certificate cannot open an agent stream"));
        };
        let registry = state.fleet.registry();
        let server = state.identities.server_of_agent(&agent_id).await?.ok_or_else(|| {
            Status::permission_denied(format!(
                "agent {agent_id} is not enrolled at this hub (or a newer enrollment replaced it); enroll again with a new join token"
            ))
        })?;
        let record = state.fleet.record(&server)?;
        state.identities.check_serial(&record, &cert.serial)?;
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10 s of opening the stream"))??;
        let hello = match first.and_then(|m| m.body) {
            Some(agent_message::Body::Hello(h)) => h,
            Some(_) => {
                return Err(Status::invalid_argument("the first message on Connect must be Hello"));
            }
            None => {
                return Err(Status::invalid_argument("the stream ended (or sent an empty message) before Hello"));
            }
        };
        outpost_common::report::validate_hello(&hello).map_err(Status::invalid_argument)?;
        let acked = state.identities.connect(&server, &cert.serial, convert::hello(&hello)).await?;
        let (conn_id, close) = registry
            .attach(&server, state.rt.stopping())
            .ok_or_else(|| Status::not_found(format!("server {server} was removed")))?;
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let welcome = Welcome {
            agent_id: agent_id.clone(),
            server_name: server.clone(),
            acked_seq: acked,
            report_interval_secs: 0,
            output_window: crate::relay::OUTPUT_WINDOW,
            customer: record.customer.clone(),
            plan: record.plan.clone(),
        };
        tx.send(msg(hub_message::Body::Welcome(welcome))).await.map_err(|_| Status::cancelled("agent went away"))?;
        tracing::info!(%server, %agent_id, conn_id, acked, backlog = hello.last_seq.saturating_sub(acked), refused_reports = hello.refused_reports, "agent connected");
        let session =
            Session { state: state.clone(), server: server.clone(), agent_id, conn_id, last_renewal: None, tx };
        // Commands pending for this server (queued while it was away, or unanswered on its last stream). Sent
        // by the session task: here, before the response is returned, nobody reads the channel yet.
        let mut pending = state.relay.attach(&server, conn_id, session.tx.clone());
        // A CA rotation in progress: what this agent still lacks (its record as `connect` left it).
        if let Some((bundle, trust_only)) = state.fleet.record(&server).ok().and_then(|r| state.rotation.on_connect(&r))
        {
            pending.insert(0, crate::relay::trust_message(&bundle, trust_only));
        }
        // No span: entering one on every poll costs ~1 % of the hub's CPU at 10,000 reports a second; the
        // session's log lines name the server and the stream themselves.
        state.rt.spawn(session.run(inbound, close, cert.not_after, pending));
        let unbox: fn(Result<Box<HubMessage>, Status>) -> Result<HubMessage, Status> = |m| m.map(|m| *m);
        Ok(Response::new(tokio_stream::StreamExt::map(ReceiverStream::new(rx), unbox)))
    }
}

struct Session {
    state: Arc<AgentState>,
    server: String,
    agent_id: String,
    conn_id: u64,
    last_renewal: Option<Instant>,
    tx: crate::relay::AgentTx,
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<AgentMessage>,
        close: tokio_util::sync::CancellationToken,
        not_after: i64,
        pending: Vec<HubMessage>,
    ) {
        for m in pending {
            if self.tx.send(Ok(Box::new(m))).await.is_err() {
                break; // the agent went away; the loop below sees the stream end
            }
        }
        // Made once, not on every message: each would register with the timer and the token again.
        let expiry = tokio::time::sleep_until(deadline(not_after).into());
        let cancelled = close.cancelled();
        tokio::pin!(expiry, cancelled);
        let ended = loop {
            tokio::select! {
                _ = &mut cancelled => break self.closed().await,
                _ = &mut expiry => {
                    let r = Reconnect { after_secs: 0, reason: "the certificate of this stream expired; reconnect with the renewed one".into() };
                    let _ = self.tx.send(msg(hub_message::Body::Reconnect(r))).await;
                    break "certificate expired";
                }
                m = inbound.message() => match m {
                    // Boxed: a message's handling (a store write, a renewal) is a large future, and kept
                    // inline it would make every idle stream's task as large (~4 KB an agent).
                    Ok(Some(m)) => match Box::pin(self.handle(m)).await {
                        Ok(Some(not_after)) => expiry.as_mut().reset(deadline(not_after).into()),
                        Ok(None) => {}
                        Err(Close::Gone) => {
                            self.state.agents_gone.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(server = %self.server, conn_id = self.conn_id, "the agent went away while the hub was answering it");
                            break "agent went away";
                        }
                        Err(Close::Bad(status)) => {
                            if let Some(repeated) = self.state.rt.log_limit().allow("bad message", &self.server) {
                                tracing::warn!(server = %self.server, conn_id = self.conn_id, repeated, error = %outpost_common::text::Inert(status.message()), "closing stream on a bad message");
                            }
                            let _ = self.tx.send(Err(status)).await;
                            break "bad message";
                        }
                    },
                    Ok(None) => break "agent closed the stream",
                    Err(status) => {
                        tracing::debug!(server = %self.server, conn_id = self.conn_id, error = %status, "stream error");
                        break "stream error";
                    }
                },
            }
        };
        self.state.relay.detach(&self.server, self.conn_id);
        self.state.fleet.registry().detach(&self.server, self.conn_id);
        tracing::info!(server = %self.server, conn_id = self.conn_id, reason = ended, "agent stream ended");
    }

    async fn closed(&self) -> &'static str {
        if self.state.rt.is_stopping() {
            let r = Reconnect { after_secs: 1, reason: "hub shutting down".into() };
            let _ = self.tx.send(msg(hub_message::Body::Reconnect(r))).await;
            "hub shutdown"
        } else if let Some(v) = self
            .state
            .fleet
            .registry()
            .get(&self.server)
            .filter(|v| v.record.revoked_ms != 0 || v.record.agent_id != self.agent_id)
        {
            let why = if v.record.revoked_ms != 0 {
                format!(
                    "the identity of server {} was revoked; enroll this agent again with a new join token",
                    self.server
                )
            } else {
                format!("server {} was enrolled again by another agent; this identity no longer exists", self.server)
            };
            let _ = self.tx.send(Err(Status::permission_denied(why))).await;
            "revoked"
        } else {
            let r = Reconnect { after_secs: 0, reason: "replaced by a newer stream of the same agent".into() };
            let _ = self.tx.send(msg(hub_message::Body::Reconnect(r))).await;
            "replaced"
        }
    }

    /// Returns the new certificate expiry after a renewal.
    async fn handle(&mut self, m: AgentMessage) -> Result<Option<i64>, Close> {
        match m.body {
            Some(agent_message::Body::Report(r)) => {
                // Checked with the code the agent checks its samples with; then the body is moved, not copied.
                let seq = r.seq;
                let checked = match outpost_common::report::validate(&r, outpost_common::now_ms()).map(|_| ()) {
                    Err(reason) => Err(HubError::Invalid(reason)),
                    Ok(()) => {
                        let body = match r.body {
                            Some(report::Body::Health(h)) => Ok(ReportBody::Health(h)),
                            Some(report::Body::Apps(a)) => Ok(ReportBody::Apps(a)),
                            Some(report::Body::Usage(u)) => Ok(ReportBody::Usage(u)),
                            None => Err(HubError::Invalid(format!("report {seq} has no body"))),
                        };
                        body.map(|body| Report { seq, taken_at_ms: r.taken_at_ms, body })
                    }
                };
                let stored = match checked {
                    Ok(report) => self.state.reports.store(&self.server, report, self.state.rt.log_limit()).await,
                    Err(e) => Err(e),
                };
                match stored {
                    Ok(up_to_seq) => {
                        self.send(hub_message::Body::Ack(Ack { up_to_seq })).await?;
                        Ok(None)
                    }
                    Err(HubError::Invalid(reason)) => {
                        // Never accepted, so never worth sending again: the agent drops it and goes on with
                        // the reports behind it.
                        self.state.reports.refused();
                        if let Some(repeated) = self.state.rt.log_limit().allow("report refused", &self.server) {
                            tracing::warn!(server = %self.server, seq, repeated, reason = %outpost_common::text::Inert(&reason), "report refused as invalid; the agent drops it");
                        }
                        self.send(hub_message::Body::Refused(ReportRefused { seq, reason })).await?;
                        Ok(None)
                    }
                    // Not stored, not acked: the agent keeps it and sends it again on the next stream.
                    Err(e) => Err(Close::Bad(Status::unavailable(e.to_string()))),
                }
            }
            Some(agent_message::Body::Renew(r)) => {
                let now = Instant::now();
                let result = match self.last_renewal {
                    // Renewal signs a certificate: at most one a second per stream (a burst would only burn CPU;
                    // each renewal supersedes the one before it anyway).
                    Some(at) if now.duration_since(at) < RENEW_EVERY => {
                        Err(HubError::Denied("renewals on one stream are at most one a second; try again later".into()))
                    }
                    _ => {
                        self.last_renewal = Some(now);
                        match outpost_common::report::check_ca_pins(&r.ca_pins) {
                            Ok(()) => {
                                self.state.identities.renew(&self.server, &self.agent_id, &r.csr_pem, r.ca_pins).await
                            }
                            Err(e) => Err(HubError::Invalid(format!("RenewRequest: {e}"))),
                        }
                    }
                };
                match result {
                    Ok((chain, not_after)) => {
                        self.send(hub_message::Body::Renewed(Renewed { cert_chain_pem: chain, error: String::new() }))
                            .await?;
                        Ok(Some(not_after))
                    }
                    Err(error) => {
                        if let Some(repeated) = self.state.rt.log_limit().allow("renewal refused", &self.server) {
                            tracing::warn!(server = %self.server, %error, repeated, "renewal refused");
                        }
                        self.send(hub_message::Body::Renewed(Renewed {
                            cert_chain_pem: String::new(),
                            error: error.to_string(),
                        }))
                        .await?;
                        Ok(None)
                    }
                }
            }
            Some(agent_message::Body::CommandUpdate(u)) => {
                if u.output.len() > MAX_UPDATE_OUTPUT {
                    return Err(Close::Bad(Status::invalid_argument(format!(
                        "a CommandUpdate carries {} bytes of output; at most {MAX_UPDATE_OUTPUT} per update",
                        u.output.len()
                    ))));
                }
                match self.state.relay.update(&self.server, u) {
                    Ok(()) => {}
                    // Stale after a hub restart, or forged: never applied to another server's command.
                    Err(Rejected::Stale(why)) => {
                        if let Some(repeated) = self.state.rt.log_limit().allow("stale command update", &self.server) {
                            tracing::warn!(server = %self.server, %why, repeated, "ignoring a command update");
                        }
                    }
                    Err(Rejected::Window(why)) => return Err(Close::Bad(Status::resource_exhausted(why))),
                }
                Ok(None)
            }
            Some(agent_message::Body::Hello(_)) => {
                Err(Close::Bad(Status::invalid_argument("Hello may be sent only once, as the first message")))
            }
            None => Err(Close::Bad(Status::invalid_argument(
                "an AgentMessage must carry a body (hello, report, command_update or renew)",
            ))),
        }
    }

    async fn send(&self, body: hub_message::Body) -> Result<(), Close> {
        self.tx.send(msg(body)).await.map_err(|_| Close::Gone)
    }
}

/// Why a session ends early.
enum Close {
    /// The agent's side is gone (the answer could not be sent): not a protocol error.
    Gone,
    /// The agent broke the protocol or a bound: it gets this status.
    Bad(Status),
}

/// The instant a certificate with `not_after` (unix seconds) stops being valid.
fn deadline(not_after: i64) -> Instant {
    let now = outpost_common::now_secs();
    Instant::now() + Duration::from_secs((not_after - now).max(0) as u64 + 1)
}
