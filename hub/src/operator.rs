//! The operator API (gRPC edge): fleet reads and watch for every role, tokens and revocation for admins.

use std::sync::Arc;
use std::time::Duration;

use outpost_common::Role;
use outpost_proto::v1 as pb;
use outpost_proto::v1::operator_server::Operator;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::audit::{self, AuditEntry, Kind};
use crate::auth;
use crate::error::HubError;
use crate::jobs;
use crate::registry::{FleetDelta, ServerView};
use crate::state::HubState;
use crate::tokens::TokenRequest;

/// Servers per snapshot part: ~500 B each, so a part stays far below the 1 MiB message limit.
const SNAPSHOT_PART: usize = 500;

/// Most history points one GetServer returns.
const MAX_HISTORY: u32 = 2_000; // ~150 B a point: well inside the 1 MiB message limit

/// Most audit records one query returns.
const MAX_AUDIT: u32 = 1_000;

#[derive(Clone)]
pub struct OperatorApi {
    pub state: Arc<HubState>,
}

impl From<&ServerView> for pb::Server {
    fn from(v: &ServerView) -> Self {
        let r = &v.record;
        pb::Server {
            name: r.name.clone(),
            labels: r.labels.clone().into_iter().collect(),
            customer: r.customer.clone(),
            plan: r.plan.clone(),
            agent_id: r.agent_id.clone(),
            cert_serial: r.cert_serial.clone(),
            cert_not_after: r.cert_not_after,
            agent_version: r.agent_version.clone(),
            first_seen_ms: r.first_seen_ms,
            last_seen_ms: r.last_seen_ms,
            last_report_ms: r.last_report_ms,
            liveness: pb::Liveness::from(v.liveness) as i32,
            liveness_since_ms: v.liveness_since_ms,
            health: v.health.clone(),
            last_seq: r.last_seq,
            reports_received: r.reports_received,
            connections: r.connections,
            dropped_reports: r.dropped_reports,
            refused_reports: r.refused_reports,
            log_files: r.log_files.clone(),
            revoked_ms: r.revoked_ms,
            host: Some(pb::HostFacts {
                hostname: r.hostname.clone(),
                os: r.os.clone(),
                kernel: r.kernel.clone(),
                arch: r.arch.clone(),
                agent_version: r.agent_version.clone(),
            }),
        }
    }
}

impl From<AuditEntry> for pb::AuditRecord {
    fn from(e: AuditEntry) -> Self {
        pb::AuditRecord {
            id: e.id,
            at_ms: e.at_ms,
            operator: e.operator,
            role: e.role,
            kind: e.kind.as_str().to_string(),
            action: e.action,
            args: e.args.into_iter().collect(),
            selector: e.selector,
            servers: e.servers,
            job_id: e.job_id,
            command_id: e.command_id,
            outcome: e.outcome.to_wire(),
            message: e.message,
        }
    }
}

impl OperatorApi {
    /// Records an admin operation that was done (join token, revocation).
    async fn audit_admin(
        &self,
        by: String,
        kind: Kind,
        action: &str,
        server: String,
        message: String,
    ) -> Result<(), Status> {
        let entry = AuditEntry {
            operator: by,
            role: Role::Admin.to_string(),
            kind,
            action: action.into(),
            servers: vec![server],
            message,
            ..Default::default()
        };
        self.state.audit.append(entry).await.map_err(HubError::from)?;
        Ok(())
    }

    /// Any operator (the role is checked per action, so a refusal can be audited with who asked).
    async fn caller<T>(&self, req: &Request<T>) -> Result<jobs::Caller, Status> {
        let (name, role) = auth::operator(&self.state, req, Role::Viewer, "running actions")?;
        Ok(jobs::Caller { name, role })
    }
}

#[tonic::async_trait]
impl Operator for OperatorApi {
    async fn list_servers(
        &self,
        req: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        auth::operator(&self.state, &req, Role::Viewer, "listing servers")?;
        let servers = self.state.registry.list().iter().map(|v| pb::Server::from(v.as_ref())).collect();
        Ok(Response::new(pb::ListServersResponse { servers }))
    }

    async fn get_server(&self, req: Request<pb::GetServerRequest>) -> Result<Response<pb::ServerDetail>, Status> {
        auth::operator(&self.state, &req, Role::Viewer, "reading a server")?;
        let r = req.into_inner();
        if r.history > MAX_HISTORY {
            return Err(Status::invalid_argument(format!(
                "history {} is over the limit of {MAX_HISTORY} points",
                r.history
            )));
        }
        let view = self.state.registry.get(&r.name).ok_or_else(|| {
            Status::not_found(format!("no server named {}", outpost_common::text::excerpt(&r.name, 64)))
        })?;
        let history = self.state.history(&r.name, r.history as usize)?;
        Ok(Response::new(pb::ServerDetail { server: Some(pb::Server::from(view.as_ref())), history }))
    }

    type WatchFleetStream = ReceiverStream<Result<pb::FleetEvent, Status>>;

    async fn watch_fleet(
        &self,
        req: Request<pb::WatchFleetRequest>,
    ) -> Result<Response<Self::WatchFleetStream>, Status> {
        let (name, _) = auth::operator(&self.state, &req, Role::Viewer, "watching the fleet")?;
        let (tx, rx) = mpsc::channel(1024);
        let state = self.state.clone();
        let span = tracing::info_span!("watch", operator = %name);
        let session = self.state.operators.session(&name);
        self.state.tasks.spawn(watch(state, tx, session).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let (by, _) = auth::operator(&self.state, &req, Role::Admin, "creating join tokens")?;
        let r = req.into_inner();
        let request = TokenRequest {
            server: r.server_name,
            ttl: Duration::from_secs(u64::from(r.ttl_secs)),
            customer: r.customer,
            plan: r.plan,
            labels: r.labels.into_iter().collect(),
            replace: r.replace,
        };
        let server = request.server.clone();
        let created = self.state.create_token(request, &by).await?;
        let mut message = format!("expires {}", crate::error::rfc3339_ms(created.expires_ms));
        if created.invalidated > 0 {
            message.push_str(&format!("; {} older unused token(s) of this server invalidated", created.invalidated));
        }
        if created.replaces_live_agent {
            message.push_str("; --replace: enrolling with it replaces the connected agent");
        }
        self.audit_admin(by, Kind::Token, "create-join-token", server, message).await?;
        let (token, expires_at_ms) = (created.token, created.expires_ms);
        Ok(Response::new(pb::CreateJoinTokenResponse { token, expires_at_ms }))
    }

    async fn revoke_server(
        &self,
        req: Request<pb::RevokeServerRequest>,
    ) -> Result<Response<pb::RevokeServerResponse>, Status> {
        let (by, _) = auth::operator(&self.state, &req, Role::Admin, "revoking certificates")?;
        let name = req.into_inner().name;
        let serial = self.state.revoke_server(&name, &by).await?;
        self.audit_admin(by, Kind::Revoke, "revoke", name, format!("revoked certificate {serial}")).await?;
        Ok(Response::new(pb::RevokeServerResponse { revoked_serial: serial }))
    }

    async fn list_operators(
        &self,
        req: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        auth::operator(&self.state, &req, Role::Admin, "listing operators")?;
        let operators = self
            .state
            .operators
            .list()
            .into_iter()
            .map(|o| pb::OperatorInfo {
                name: o.name,
                role: o.role,
                serial: o.serial,
                not_after: o.not_after,
                last_seen_ms: o.last_seen_ms,
                revoked_ms: o.revoked_ms,
            })
            .collect();
        Ok(Response::new(pb::ListOperatorsResponse { operators }))
    }

    async fn revoke_operator(
        &self,
        req: Request<pb::RevokeOperatorRequest>,
    ) -> Result<Response<pb::RevokeOperatorResponse>, Status> {
        let (by, _) = auth::operator(&self.state, &req, Role::Admin, "revoking operators")?;
        let name = req.into_inner().name;
        if !outpost_common::cert::valid_name(&name) {
            return Err(Status::invalid_argument(format!(
                "operator name {} must be 1-63 of a-z, 0-9 and '-'",
                outpost_common::text::excerpt(&name, 64)
            )));
        }
        if name == by {
            return Err(Status::invalid_argument("an operator cannot revoke itself; ask another admin"));
        }
        let closed = self.state.operators.revoke(&self.state.store, &name, &by).await.map_err(HubError::from)?;
        tracing::warn!(operator = %name, by = %by, closed, "operator revoked");
        self.audit_admin(by, Kind::Revoke, "revoke-operator", String::new(), format!("revoked operator {name}"))
            .await?;
        Ok(Response::new(pb::RevokeOperatorResponse { sessions_closed: u32::from(closed) }))
    }

    type RunActionStream = ReceiverStream<Result<pb::JobEvent, Status>>;

    async fn run_action(&self, req: Request<pb::RunActionRequest>) -> Result<Response<Self::RunActionStream>, Status> {
        let caller = self.caller(&req).await?;
        let job = jobs::submit(&self.state, &caller, req.into_inner()).await?;
        let (tx, rx) = mpsc::channel(jobs::EVENT_QUEUE);
        let cancel = self.state.shutdown.child_token();
        self.state.jobs.insert(&job.id, cancel.clone(), jobs::action_role(&job.action));
        let span = tracing::info_span!("job", job = %job.id, action = %job.action, operator = %caller.name);
        tracing::info!(parent: &span, targets = job.targets.len(), "job accepted");
        self.state.tasks.spawn(jobs::run(self.state.clone(), job, tx, cancel).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = self.caller(&req).await?;
        let job_id = req.into_inner().job_id;
        let mut entry = AuditEntry {
            operator: caller.name.clone(),
            role: caller.role.to_string(),
            kind: Kind::Cancel,
            job_id: job_id.chars().take(64).collect(),
            ..Default::default()
        };
        let refusal = if caller.role < Role::Support {
            Some(Status::permission_denied(format!(
                "operator {} has role {}; cancelling a job needs role support or higher",
                caller.name, caller.role
            )))
        } else {
            match self.state.jobs.get(&job_id) {
                None => Some(Status::not_found(format!(
                    "no running job {} (it finished, or never existed)",
                    outpost_common::text::excerpt(&job_id, 64)
                ))),
                // Stopping a job interferes with it as much as starting one: it needs the action's role.
                Some((_, need)) if caller.role < need => Some(Status::permission_denied(format!(
                    "operator {} has role {}; cancelling this job needs role {need}, as its action does",
                    caller.name, caller.role
                ))),
                Some(_) => None,
            }
        };
        if let Some(status) = refusal {
            entry.kind = Kind::Refused;
            entry.action = "cancel".into();
            entry.outcome = audit::Outcome::Refused;
            entry.message = status.message().to_string();
            self.state.audit.append(entry).await.map_err(HubError::from)?;
            return Err(status);
        }
        self.state.audit.append(entry).await.map_err(HubError::from)?;
        if let Some((t, _)) = self.state.jobs.get(&job_id) {
            t.cancel();
        }
        Ok(Response::new(pb::CancelJobResponse {}))
    }

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<pb::QueryAuditResponse>, Status> {
        auth::operator(&self.state, &req, Role::Support, "reading the audit log")?;
        let r = req.into_inner();
        if r.limit > MAX_AUDIT {
            return Err(Status::invalid_argument(format!("limit {} is over the limit of {MAX_AUDIT}", r.limit)));
        }
        let q = audit::Query {
            operator: r.operator,
            server: r.server,
            action: r.action,
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            limit: if r.limit == 0 { 100 } else { r.limit as usize },
        };
        let records = self.state.audit.query(&q).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::QueryAuditResponse { records: records.into_iter().map(pb::AuditRecord::from).collect() }))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let (name, role) = auth::operator(&self.state, &req, Role::Viewer, "asking who you are")?;
        Ok(Response::new(pb::WhoAmIResponse { name, role: role.to_string() }))
    }
}

/// A snapshot as bounded parts (at least one, even for an empty fleet).
fn snapshot(views: &[Arc<ServerView>]) -> Vec<pb::FleetEvent> {
    let chunks: Vec<&[Arc<ServerView>]> =
        if views.is_empty() { vec![&[]] } else { views.chunks(SNAPSHOT_PART).collect() };
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| pb::FleetEvent {
            event: Some(pb::fleet_event::Event::Snapshot(pb::FleetSnapshot {
                servers: c.iter().map(|v| pb::Server::from(v.as_ref())).collect(),
                part: i as u32,
                last: i + 1 == n,
            })),
        })
        .collect()
}

/// Snapshot, then deltas. A watcher that falls behind gets a fresh snapshot instead of a gap.
async fn watch(state: Arc<HubState>, tx: mpsc::Sender<Result<pb::FleetEvent, Status>>, session: CancellationToken) {
    let (views, mut rx) = state.registry.watch();
    for part in snapshot(&views) {
        if tx.send(Ok(part)).await.is_err() {
            return;
        }
    }
    drop(views);
    loop {
        let delta = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = tx.closed() => break,
            _ = session.cancelled() => {
                let _ = tx.send(Err(Status::permission_denied("this operator was revoked; the session is closed"))).await;
                break;
            }
            d = rx.recv() => d,
        };
        let out = match delta {
            Ok(FleetDelta::Upsert(v)) => {
                vec![pb::FleetEvent { event: Some(pb::fleet_event::Event::Upsert(pb::Server::from(v.as_ref()))) }]
            }
            Ok(FleetDelta::Removed(name)) => {
                vec![pb::FleetEvent { event: Some(pb::fleet_event::Event::Removed(name)) }]
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "watcher fell behind; sending a fresh snapshot");
                let (views, fresh) = state.registry.watch();
                rx = fresh;
                snapshot(&views)
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        for e in out {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
    }
    tracing::debug!("watch ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Liveness;
    use crate::store::ServerRecord;

    #[test]
    fn snapshots_come_in_bounded_parts() {
        let views: Vec<Arc<ServerView>> = (0..1201)
            .map(|i| {
                Arc::new(ServerView {
                    record: ServerRecord { name: format!("s{i}"), ..Default::default() },
                    liveness: Liveness::Pending,
                    liveness_since_ms: 0,
                    health: None,
                })
            })
            .collect();
        let parts: Vec<(usize, u32, bool)> = snapshot(&views)
            .into_iter()
            .map(|e| match e.event {
                Some(pb::fleet_event::Event::Snapshot(s)) => (s.servers.len(), s.part, s.last),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(parts, [(500, 0, false), (500, 1, false), (201, 2, true)]);
        let empty: Vec<_> = snapshot(&[]).into_iter().map(|e| e.event).collect();
        assert!(
            matches!(empty.as_slice(), [Some(pb::fleet_event::Event::Snapshot(s))] if s.last && s.servers.is_empty())
        );
    }
}
