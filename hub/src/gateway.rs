//! The agent gateway (gRPC edge): `Enrollment.Enroll` and the `AgentLink.Connect` stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_common::Identity;
use outpost_proto::v1::agent_link_server::AgentLink;
use outpost_proto::v1::enrollment_server::Enrollment;
use outpost_proto::v1::{
    Ack, AgentMessage, EnrollRequest, EnrollResponse, HubMessage, Reconnect, Renewed, Welcome, agent_message,
    hub_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth;
use crate::enroll::HostFacts;
use crate::error::HubError;
use crate::state::HubState;

/// How long an agent has to send Hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued towards one agent before the hub waits for it.
const OUTBOUND_QUEUE: usize = 64;
/// Output per CommandUpdate, at most (agents send chunks of 8 KiB).
const MAX_UPDATE_OUTPUT: usize = 256 * 1024;

#[derive(Clone)]
pub struct Gateway {
    pub state: Arc<HubState>,
}

impl From<outpost_proto::v1::HostFacts> for HostFacts {
    fn from(h: outpost_proto::v1::HostFacts) -> Self {
        HostFacts { hostname: h.hostname, os: h.os, kernel: h.kernel, arch: h.arch, agent_version: h.agent_version }
    }
}

#[tonic::async_trait]
impl Enrollment for Gateway {
    async fn enroll(&self, req: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let r = req.into_inner();
        let host = r.host.map(HostFacts::from).unwrap_or_default();
        let e = self.state.enroll(&r.join_token, &r.csr_pem, host).await.inspect_err(|error| {
            tracing::warn!(%error, "enrollment refused");
        })?;
        Ok(Response::new(EnrollResponse {
            agent_id: e.agent_id,
            server_name: e.server,
            cert_chain_pem: e.chain_pem,
            ca_bundle_pem: e.ca_pem,
        }))
    }
}

fn msg(body: hub_message::Body) -> Result<HubMessage, Status> {
    Ok(HubMessage { body: Some(body) })
}

#[tonic::async_trait]
impl AgentLink for Gateway {
    type ConnectStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn connect(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Self::ConnectStream>, Status> {
        let state = &self.state;
        let cert = auth::peer(state, &req)?;
        let Identity::Agent { id: agent_id } = cert.identity.clone() else {
            return Err(Status::permission_denied("an operator certificate cannot open an agent stream"));
        };
        let server = state.registry.server_of_agent(&agent_id).ok_or_else(|| {
            Status::permission_denied(format!(
                "agent {agent_id} is not enrolled at this hub (or a newer enrollment replaced it); enroll again with a new join token"
            ))
        })?;
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
        let acked = state.note_connect(&server, hello.dropped_reports).await?;
        let (conn_id, close) = state
            .registry
            .attach(&server, &cert.serial, &state.shutdown)
            .ok_or_else(|| Status::not_found(format!("server {server} was removed")))?;
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let welcome = Welcome {
            agent_id: agent_id.clone(),
            server_name: server.clone(),
            acked_seq: acked,
            report_interval_secs: 0,
            output_window: crate::relay::OUTPUT_WINDOW,
        };
        tx.send(msg(hub_message::Body::Welcome(welcome))).await.map_err(|_| Status::cancelled("agent went away"))?;
        tracing::info!(%server, %agent_id, conn_id, acked, backlog = hello.last_seq.saturating_sub(acked), "agent connected");
        let session =
            Session { state: state.clone(), server: server.clone(), agent_id, conn_id, serial: cert.serial, tx };
        // Commands pending for this server (queued while it was away, or unanswered on its last stream). Sent
        // by the session task: here, before the response is returned, nobody reads the channel yet.
        let pending = state.relay.attach(&server, conn_id, session.tx.clone());
        let span = tracing::info_span!("session", %server, conn_id);
        state.tasks.spawn(session.run(inbound, close, cert.not_after, pending).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct Session {
    state: Arc<HubState>,
    server: String,
    agent_id: String,
    conn_id: u64,
    serial: String,
    tx: mpsc::Sender<Result<HubMessage, Status>>,
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
            if self.tx.send(Ok(m)).await.is_err() {
                break; // the agent went away; the loop below sees the stream end
            }
        }
        let mut expires = deadline(not_after);
        let ended = loop {
            tokio::select! {
                _ = close.cancelled() => break self.closed().await,
                _ = tokio::time::sleep_until(expires.into()) => {
                    let r = Reconnect { after_secs: 0, reason: "the certificate of this stream expired; reconnect with the renewed one".into() };
                    let _ = self.tx.send(msg(hub_message::Body::Reconnect(r))).await;
                    break "certificate expired";
                }
                m = inbound.message() => match m {
                    Ok(Some(m)) => match self.handle(m).await {
                        Ok(Some(not_after)) => expires = deadline(not_after),
                        Ok(None) => {}
                        Err(status) => {
                            tracing::warn!(error = %status.message(), "closing stream on a bad message");
                            let _ = self.tx.send(Err(status)).await;
                            break "bad message";
                        }
                    },
                    Ok(None) => break "agent closed the stream",
                    Err(status) => {
                        tracing::debug!(error = %status, "stream error");
                        break "stream error";
                    }
                },
            }
        };
        self.state.relay.detach(&self.server, self.conn_id);
        self.state.registry.detach(&self.server, self.conn_id);
        tracing::info!(reason = ended, "agent stream ended");
    }

    async fn closed(&self) -> &'static str {
        if self.state.shutdown.is_cancelled() {
            let r = Reconnect { after_secs: 1, reason: "hub shutting down".into() };
            let _ = self.tx.send(msg(hub_message::Body::Reconnect(r))).await;
            "hub shutdown"
        } else if self.state.is_revoked(&self.serial) {
            let s = Status::permission_denied(format!(
                "certificate {} was revoked; enroll this agent again with a new join token",
                self.serial
            ));
            let _ = self.tx.send(Err(s)).await;
            "revoked"
        } else {
            let r = Reconnect { after_secs: 0, reason: "replaced by a newer stream of the same agent".into() };
            let _ = self.tx.send(msg(hub_message::Body::Reconnect(r))).await;
            "replaced"
        }
    }

    /// Returns the new certificate expiry after a renewal.
    async fn handle(&mut self, m: AgentMessage) -> Result<Option<i64>, Status> {
        match m.body {
            Some(agent_message::Body::Report(r)) => {
                match self.state.store_report(&self.server, &r).await {
                    Ok(up_to_seq) => {
                        self.send(hub_message::Body::Ack(Ack { up_to_seq })).await?;
                        Ok(None)
                    }
                    Err(e @ HubError::Invalid(_)) => Err(e.into()),
                    // Not stored, not acked: the agent keeps it and sends it again on the next stream.
                    Err(e) => Err(Status::unavailable(e.to_string())),
                }
            }
            Some(agent_message::Body::Renew(r)) => {
                match self.state.renew(&self.server, &self.agent_id, &r.csr_pem).await {
                    Ok((chain, serial, not_after)) => {
                        self.state.registry.set_stream_serial(&self.server, self.conn_id, &serial);
                        self.serial = serial;
                        self.send(hub_message::Body::Renewed(Renewed { cert_chain_pem: chain, error: String::new() }))
                            .await?;
                        Ok(Some(not_after))
                    }
                    Err(error) => {
                        tracing::warn!(%error, "renewal refused");
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
                    return Err(Status::invalid_argument(format!(
                        "a CommandUpdate carries {} bytes of output; at most {MAX_UPDATE_OUTPUT} per update",
                        u.output.len()
                    )));
                }
                if let Err(why) = self.state.relay.update(&self.server, u) {
                    // Stale after a hub restart, or forged: never applied to another server's command.
                    tracing::warn!(%why, "ignoring a command update");
                }
                Ok(None)
            }
            Some(agent_message::Body::Hello(_)) => {
                Err(Status::invalid_argument("Hello may be sent only once, as the first message"))
            }
            None => Err(Status::invalid_argument(
                "an AgentMessage must carry a body (hello, report, command_update or renew)",
            )),
        }
    }

    async fn send(&self, body: hub_message::Body) -> Result<(), Status> {
        self.tx.send(msg(body)).await.map_err(|_| Status::cancelled("agent went away"))
    }
}

/// The instant a certificate with `not_after` (unix seconds) stops being valid.
fn deadline(not_after: i64) -> Instant {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    Instant::now() + Duration::from_secs((not_after - now).max(0) as u64 + 1)
}
