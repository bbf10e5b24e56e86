//! What operators call (gRPC edge): fleet reads and watch for every role, actions by role, tokens and
//! revocation for admins.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use outpost_common::Role;
use outpost_proto::v1 as pb;
use outpost_proto::v1::operator_server::Operator;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::auth::Auth;
use super::convert;
use crate::actions::{self, Actions};
use crate::audit::{Audit, AuditEntry, Kind, Query};
use crate::fleet::identities::Identities;
use crate::fleet::reports::ReportIntake;
use crate::fleet::tokens::TokenRequest;
use crate::fleet::{Fleet, FleetDelta, ServerView};
use crate::lifecycle::{Lifecycle, ProvisionRequest};
use crate::runtime::Runtime;

/// Servers per snapshot part: ~500 B each, so a part stays far below the 1 MiB message limit.
const SNAPSHOT_PART: usize = 500;

/// Most history points one GetServer returns.
const MAX_HISTORY: u32 = 2_000; // ~150 B a point: well inside the 1 MiB message limit

/// Most audit records one query returns.
const MAX_AUDIT: u32 = 1_000;

/// The operator API: fleet reads and watch for every role, actions by role, tokens and revocation for admins.
#[derive(Clone)]
pub struct OperatorApi {
    auth: Arc<Auth>,
    fleet: Arc<Fleet>,
    reports: Arc<ReportIntake>,
    identities: Arc<Identities>,
    actions: Arc<Actions>,
    audit: Arc<Audit>,
    lifecycle: Arc<Lifecycle>,
    alerts: Arc<crate::alerts::Alerts>,
    usage: Arc<crate::usage::UsageBook>,
    rotation: Arc<crate::fleet::rotation::CaRotation>,
    snapshots: Arc<crate::backup::Snapshots>,
    rt: Runtime,
    /// The other replicas, when hubs share a store.
    peers: Option<Arc<super::peer::Peers>>,
}

/// What the operator API is built from.
pub struct OperatorParts {
    pub auth: Arc<Auth>,
    pub fleet: Arc<Fleet>,
    pub reports: Arc<ReportIntake>,
    pub identities: Arc<Identities>,
    /// The action jobs.
    pub actions: Arc<Actions>,
    /// The lifecycle jobs.
    pub lifecycle: Arc<Lifecycle>,
    pub alerts: Arc<crate::alerts::Alerts>,
    pub usage: Arc<crate::usage::UsageBook>,
    pub audit: Arc<Audit>,
    pub rotation: Arc<crate::fleet::rotation::CaRotation>,
    pub snapshots: Arc<crate::backup::Snapshots>,
    pub rt: Runtime,
}

impl OperatorApi {
    pub fn new(parts: OperatorParts) -> OperatorApi {
        let OperatorParts {
            auth,
            fleet,
            reports,
            identities,
            actions,
            lifecycle,
            alerts,
            usage,
            audit,
            rotation,
            snapshots,
            rt,
        } = parts;
        OperatorApi {
            auth,
            fleet,
            reports,
            identities,
            actions,
            audit,
            lifecycle,
            alerts,
            usage,
            rotation,
            snapshots,
            rt,
            peers: None,
        }
    }

    /// Actions whose targets are all on another replica run there.
    pub fn with_peers(self, peers: Arc<super::peer::Peers>) -> OperatorApi {
        OperatorApi { peers: Some(peers), ..self }
    }

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
        self.audit.append(entry).await.map_err(super::error::store)?;
        Ok(())
    }

    /// Any operator (the role is checked per action, so a refusal can be audited with who asked).
    fn caller<T>(&self, req: &Request<T>) -> Result<actions::Caller, Status> {
        let (name, role, session) = self.auth.operator_session(req, Role::Viewer, "running actions")?;
        Ok(actions::Caller { name, role, session: Some(session) })
    }
}

fn silence_info(id: String, s: crate::store::SilenceRecord) -> pb::SilenceInfo {
    pb::SilenceInfo {
        id,
        matchers: s.matchers.into_iter().collect(),
        starts_ms: s.starts_ms,
        expires_ms: s.expires_ms,
        creator: s.creator,
        comment: s.comment,
    }
}

#[tonic::async_trait]
impl Operator for OperatorApi {
    async fn list_servers(
        &self,
        req: Request<pb::ListServersRequest>,
    ) -> Result<Response<pb::ListServersResponse>, Status> {
        self.auth.operator(&req, Role::Viewer, "listing servers")?;
        let servers = self.fleet.registry().list().iter().map(|v| convert::server(v)).collect();
        Ok(Response::new(pb::ListServersResponse { servers }))
    }

    async fn get_server(&self, req: Request<pb::GetServerRequest>) -> Result<Response<pb::ServerDetail>, Status> {
        self.auth.operator(&req, Role::Viewer, "reading a server")?;
        let r = req.into_inner();
        if r.history > MAX_HISTORY {
            return Err(Status::invalid_argument(format!(
                "history {} is over the limit of {MAX_HISTORY} points",
                r.history
            )));
        }
        let view = self.fleet.registry().get(&r.name).ok_or_else(|| {
            Status::not_found(format!("no server named {}", outpost_common::text::excerpt(&r.name, 64)))
        })?;
        let history = self.reports.history(&r.name, r.history as usize).await?;
        Ok(Response::new(pb::ServerDetail { server: Some(convert::server(&view)), history }))
    }

    type WatchFleetStream = ReceiverStream<Result<pb::FleetEvent, Status>>;

    async fn watch_fleet(
        &self,
        req: Request<pb::WatchFleetRequest>,
    ) -> Result<Response<Self::WatchFleetStream>, Status> {
        let (name, _, session) = self.auth.operator_session(&req, Role::Viewer, "watching the fleet")?;
        let (tx, rx) = mpsc::channel(1024);
        let span = tracing::info_span!("watch", operator = %name);
        self.rt.spawn(watch(self.fleet.clone(), self.rt.stopping().clone(), tx, session).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Admin, "creating join tokens")?;
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
        let created = self.identities.create_token(request, &by).await?;
        let mut message = format!("expires {}", outpost_common::when::rfc3339(created.expires_ms));
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
        let (by, _) = self.auth.operator(&req, Role::Admin, "revoking certificates")?;
        let name = req.into_inner().name;
        let serial = self.identities.revoke_server(&name, &by).await?;
        self.audit_admin(by, Kind::Revoke, "revoke", name, format!("revoked certificate {serial}")).await?;
        Ok(Response::new(pb::RevokeServerResponse { revoked_serial: serial }))
    }

    async fn list_operators(
        &self,
        req: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        self.auth.operator(&req, Role::Admin, "listing operators")?;
        let operators = self
            .auth
            .operators()
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
        let (by, _) = self.auth.operator(&req, Role::Admin, "revoking operators")?;
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
        let closed = self.auth.operators().revoke(&name, &by).await.map_err(super::error::store)?;
        tracing::warn!(operator = %name, by = %by, closed, "operator revoked");
        self.audit_admin(by, Kind::Revoke, "revoke-operator", String::new(), format!("revoked operator {name}"))
            .await?;
        Ok(Response::new(pb::RevokeOperatorResponse { sessions_closed: u32::from(closed) }))
    }

    async fn provision(
        &self,
        req: Request<pb::ProvisionRequest>,
    ) -> Result<Response<pb::LifecycleJobResponse>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Admin, "provisioning servers")?;
        let r = req.into_inner();
        let req = ProvisionRequest {
            customer: r.customer,
            plan: r.plan,
            location: r.location,
            name: r.name,
            idempotency_key: r.idempotency_key,
        };
        let (job, created) = self.lifecycle.provision(req, &by).await?;
        Ok(Response::new(pb::LifecycleJobResponse { job: Some(convert::lifecycle_job(job)), created }))
    }

    async fn list_lifecycle_jobs(
        &self,
        req: Request<pb::ListLifecycleJobsRequest>,
    ) -> Result<Response<pb::ListLifecycleJobsResponse>, Status> {
        self.auth.operator(&req, Role::Viewer, "listing jobs")?;
        let limit = match req.into_inner().limit {
            0 => 200,
            n => n.min(2_000) as usize,
        };
        let jobs = self.lifecycle.jobs(limit).await?.into_iter().map(convert::lifecycle_job).collect();
        let s = self.lifecycle.stats().await?;
        let stats = pb::QueueStats {
            pending: s.pending,
            running: s.running,
            finished_last_hour: s.finished_last_hour,
            failed_last_hour: s.failed_last_hour,
        };
        Ok(Response::new(pb::ListLifecycleJobsResponse { jobs, stats: Some(stats) }))
    }

    type WatchLifecycleJobStream = ReceiverStream<Result<pb::LifecycleJob, Status>>;

    async fn watch_lifecycle_job(
        &self,
        req: Request<pb::WatchLifecycleJobRequest>,
    ) -> Result<Response<Self::WatchLifecycleJobStream>, Status> {
        let (_, _, session) = self.auth.operator_session(&req, Role::Viewer, "watching jobs")?;
        let id = req.into_inner().id;
        let mut changed = self.lifecycle.subscribe();
        let first = self.lifecycle.job(id).await?;
        let (tx, rx) = mpsc::channel(16);
        let lifecycle = self.lifecycle.clone();
        let stop = self.rt.stopping().clone();
        self.rt.spawn(async move {
            let mut last = first;
            if tx.send(Ok(convert::lifecycle_job(last.clone()))).await.is_err() {
                return;
            }
            while !last.state.is_final() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                    () = session.cancelled() => {
                        let _ = tx.send(Err(Status::permission_denied(REVOKED))).await;
                        return;
                    }
                    r = changed.changed() => if r.is_err() { return },
                }
                let Ok(now) = lifecycle.job(id).await else { return };
                if now != last {
                    last = now;
                    if tx.send(Ok(convert::lifecycle_job(last.clone()))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_lifecycle_job(
        &self,
        req: Request<pb::CancelLifecycleJobRequest>,
    ) -> Result<Response<pb::LifecycleJob>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Admin, "cancelling jobs")?;
        let job = self.lifecycle.cancel(req.into_inner().id, &by).await?;
        Ok(Response::new(convert::lifecycle_job(job)))
    }

    async fn deprovision(
        &self,
        req: Request<pb::DeprovisionRequest>,
    ) -> Result<Response<pb::LifecycleJobsResponse>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Admin, "deprovisioning customers")?;
        let r = req.into_inner();
        if r.confirm != r.customer {
            return Err(Status::failed_precondition(format!(
                "deprovisioning stops every app of {} and deletes its servers after the archive: confirm with the customer's name (--yes {})",
                outpost_common::text::excerpt(&r.customer, 64),
                outpost_common::text::excerpt(&r.customer, 64)
            )));
        }
        let jobs = self.lifecycle.deprovision(&r.customer, &by).await?;
        Ok(Response::new(pb::LifecycleJobsResponse { jobs: jobs.into_iter().map(convert::lifecycle_job).collect() }))
    }

    async fn enroll_ssh(
        &self,
        req: Request<pb::EnrollSshRequest>,
    ) -> Result<Response<pb::LifecycleJobResponse>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Admin, "enrolling servers over SSH")?;
        let r = req.into_inner();
        let port = u16::try_from(r.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Status::invalid_argument(format!("port {} is outside 1..=65535", r.port)))?;
        let r = crate::lifecycle::timeline::EnrollSshRequest {
            user: r.user,
            host: r.host,
            port,
            known_hosts: r.known_hosts,
            fingerprint: r.fingerprint,
            private_key: r.private_key,
            name: r.name,
            customer: r.customer,
            plan: r.plan,
        };
        let job = self.lifecycle.enroll_ssh(r, &by).await?;
        Ok(Response::new(pb::LifecycleJobResponse { job: Some(convert::lifecycle_job(job)), created: true }))
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        self.auth.operator(&req, Role::Viewer, "listing alerts")?;
        let alerts = self
            .alerts
            .list()
            .into_iter()
            .map(|a| pb::AlertInfo {
                labels: a.labels.into_iter().collect(),
                state: if a.state == crate::alerts::State::Firing { "firing" } else { "pending" }.into(),
                since_ms: a.since_ms,
                fired_ms: a.fired_ms,
                value: a.value,
                summary: a.summary,
                action: a.action,
                silenced_by: a.silenced_by,
                acked_by: a.acked_by,
            })
            .collect();
        Ok(Response::new(pb::ListAlertsResponse { alerts }))
    }

    async fn get_usage(&self, req: Request<pb::GetUsageRequest>) -> Result<Response<pb::GetUsageResponse>, Status> {
        self.auth.operator(&req, Role::Viewer, "reading usage")?;
        let r = req.into_inner();
        if !outpost_common::cert::valid_name(&r.customer) {
            return Err(Status::invalid_argument(format!(
                "customer {:?}: a customer name (a-z, 0-9, '-')",
                outpost_common::text::excerpt(&r.customer, 64)
            )));
        }
        let month = if r.month.is_empty() { crate::usage::month_of(outpost_common::now_ms()) } else { r.month };
        let m = self.usage.month(&r.customer, &month).await?;
        Ok(Response::new(super::convert::month_usage(m)))
    }

    async fn silence(&self, req: Request<pb::SilenceRequest>) -> Result<Response<pb::SilenceInfo>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Support, "silencing alerts")?;
        let r = req.into_inner();
        let matchers = r.matchers.into_iter().collect();
        let (id, s) =
            self.alerts.silence(matchers, Duration::from_secs(u64::from(r.duration_secs)), &r.comment, &by).await?;
        Ok(Response::new(silence_info(id, s)))
    }

    async fn list_silences(
        &self,
        req: Request<pb::ListSilencesRequest>,
    ) -> Result<Response<pb::ListSilencesResponse>, Status> {
        self.auth.operator(&req, Role::Viewer, "listing silences")?;
        let silences = self.alerts.active_silences().into_iter().map(|(id, s)| silence_info(id, s)).collect();
        Ok(Response::new(pb::ListSilencesResponse { silences }))
    }

    async fn expire_silence(
        &self,
        req: Request<pb::ExpireSilenceRequest>,
    ) -> Result<Response<pb::SilenceInfo>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Support, "ending silences")?;
        let id = req.into_inner().id;
        let s = self.alerts.expire_silence(&id, &by).await?;
        Ok(Response::new(silence_info(id, s)))
    }

    async fn ack_alert(&self, req: Request<pb::AckAlertRequest>) -> Result<Response<pb::AckAlertResponse>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Support, "acknowledging alerts")?;
        let r = req.into_inner();
        let n = self.alerts.ack(&r.alertname, &r.server, &by).await?;
        Ok(Response::new(pb::AckAlertResponse { acknowledged: n as u32 }))
    }

    async fn reactivate(
        &self,
        req: Request<pb::ReactivateRequest>,
    ) -> Result<Response<pb::LifecycleJobsResponse>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Admin, "reactivating customers")?;
        let jobs = self.lifecycle.reactivate(&req.into_inner().customer, &by).await?;
        Ok(Response::new(pb::LifecycleJobsResponse { jobs: jobs.into_iter().map(convert::lifecycle_job).collect() }))
    }

    type RunActionStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

    async fn run_action(&self, req: Request<pb::RunActionRequest>) -> Result<Response<Self::RunActionStream>, Status> {
        let caller = self.caller(&req)?;
        if let Some(peers) = &self.peers
            && req.metadata().get(super::peer::FORWARDED).is_none()
        {
            let targets = self.fleet.resolve(&convert::action_request(req.get_ref().clone()).selector);
            if let Some(url) = peers.route(&targets, |t| self.fleet.registry().is_attached(t)) {
                let events = peers.run_action(&caller, &url, req.into_inner()).await?;
                return Ok(Response::new(until_revoked(events, caller.session)));
            }
        }
        let events = self.actions.submit(&caller, convert::action_request(req.into_inner())).await?;
        // Lazy: the job's bounded queue is read only as fast as the caller reads (output flow control).
        let stream = ReceiverStream::new(events).map(|e| Ok(convert::job_event(e)));
        Ok(Response::new(until_revoked(stream, caller.session)))
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::CancelJobResponse>, Status> {
        let caller = self.caller(&req)?;
        self.actions.cancel(&caller, &req.into_inner().job_id).await?;
        Ok(Response::new(pb::CancelJobResponse {}))
    }

    async fn pause_job(&self, req: Request<pb::PauseJobRequest>) -> Result<Response<pb::PauseJobResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        self.actions.pause(&caller, &r.job_id, r.paused).await?;
        Ok(Response::new(pb::PauseJobResponse {}))
    }

    async fn query_audit(
        &self,
        req: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<pb::QueryAuditResponse>, Status> {
        self.auth.operator(&req, Role::Support, "reading the audit log")?;
        let r = req.into_inner();
        if r.limit > MAX_AUDIT {
            return Err(Status::invalid_argument(format!("limit {} is over the limit of {MAX_AUDIT}", r.limit)));
        }
        let q = Query {
            operator: r.operator,
            server: r.server,
            action: r.action,
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            limit: if r.limit == 0 { 100 } else { r.limit as usize },
        };
        let records = self.audit.query(&q).await.map_err(super::error::store)?;
        Ok(Response::new(pb::QueryAuditResponse { records: records.into_iter().map(convert::audit_record).collect() }))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let (name, role) = self.auth.operator(&req, Role::Viewer, "asking who you are")?;
        let keys = self.rotation.keys();
        Ok(Response::new(pb::WhoAmIResponse {
            name,
            role: role.to_string(),
            ca_pins: keys.trust_pins(),
            signing_pin: keys.signing().pin().to_string(),
        }))
    }

    async fn renew_operator(
        &self,
        req: Request<pb::RenewOperatorRequest>,
    ) -> Result<Response<pb::RenewOperatorResponse>, Status> {
        let (name, role) = self.auth.operator(&req, Role::Viewer, "renewing its certificate")?;
        let cert = self.auth.peer(&req)?;
        // No longer than the certificate it replaces: a renewal follows the CA, it does not extend a bundle.
        let left = cert.not_after - outpost_common::now_secs();
        if left < 60 {
            return Err(Status::failed_precondition(
                "this certificate ends within a minute; ask an admin for a new bundle (`hubd operator issue`)",
            ));
        }
        let keys = self.rotation.keys();
        let issued = keys
            .signing()
            .sign_operator(&req.get_ref().csr_pem, &name, role, Duration::from_secs(left as u64))
            .map_err(|e| match e {
                crate::pki::ca::SignError::Csr(c) => crate::error::HubError::Csr(c),
                crate::pki::ca::SignError::Ca(c) => crate::error::HubError::Internal(c.to_string()),
            })?;
        tracing::info!(operator = %name, serial = %issued.info.serial, "operator certificate renewed");
        Ok(Response::new(pb::RenewOperatorResponse {
            cert_chain_pem: issued.chain_pem,
            ca_bundle_pem: keys.trust_pem(),
        }))
    }

    async fn snapshot_store(
        &self,
        req: Request<pb::SnapshotStoreRequest>,
    ) -> Result<Response<pb::SnapshotStoreResponse>, Status> {
        let (by, _) = self.auth.operator(&req, Role::Admin, "copying the store for a backup")?;
        let (path, bytes) = self.snapshots.take().await?;
        let message = format!("the store copied for a backup ({bytes} bytes)");
        self.audit_admin(by, Kind::Backup, "snapshot-store", String::new(), message).await?;
        Ok(Response::new(pb::SnapshotStoreResponse { path: path.display().to_string(), bytes }))
    }

    async fn ca_rotation(&self, req: Request<pb::CaRotationRequest>) -> Result<Response<pb::CaRotationStatus>, Status> {
        let action = req.get_ref().action.clone();
        let force = req.get_ref().force;
        let message = if action == "status" {
            self.auth.operator(&req, Role::Viewer, "seeing the CA rotation")?;
            String::new()
        } else {
            let (by, _) = self.auth.operator(&req, Role::Admin, "rotating the fleet CA")?;
            let done = match action.as_str() {
                "start" => self.rotation.start(&by).await,
                "advance" => self.rotation.advance(&by, force).await,
                "rollback" => self.rotation.rollback(&by).await,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "action {} is not one of status, start, advance, rollback",
                        outpost_common::text::excerpt(other, 32)
                    )));
                }
            };
            let message = match done {
                Ok(m) => m,
                Err(e) => {
                    let refused = format!("refused: {e}");
                    self.audit_admin(by, Kind::Ca, &format!("ca-rotate-{action}"), String::new(), refused).await?;
                    return Err(e.into());
                }
            };
            self.audit_admin(by, Kind::Ca, &format!("ca-rotate-{action}"), String::new(), message.clone()).await?;
            message
        };
        let keys = self.rotation.keys();
        // Progress reads every server: only while a rotation runs (the console polls this).
        let p = if keys.rotation.is_some() { self.rotation.progress() } else { Default::default() };
        let r = keys.rotation.clone();
        Ok(Response::new(pb::CaRotationStatus {
            phase: keys.phase().as_str().into(),
            started_ms: r.as_ref().map_or(0, |r| r.started_ms),
            phase_ms: r.as_ref().map_or(0, |r| r.phase_ms),
            by: r.as_ref().map(|r| r.by.clone()).unwrap_or_default(),
            current_pin: keys.current().pin().into(),
            next_pin: keys.next().map(|n| n.pin().to_string()).unwrap_or_default(),
            servers: p.servers as u32,
            done: p.done as u32,
            lagging: p.lagging.len() as u32,
            offline: p.offline.len() as u32,
            lagging_names: p.lagging.into_iter().take(20).collect(),
            offline_names: p.offline.into_iter().take(20).collect(),
            message,
        }))
    }
}

/// What a revoked operator's open calls end with.
const REVOKED: &str = "this operator was revoked; the session is closed";

/// `inner` until `session` is cancelled (the operator was revoked): then one `PERMISSION_DENIED` and the
/// end. Every long-lived operator call (a job's events, a follow, a watch) ends at revocation, not at its
/// own deadline.
fn until_revoked<T: Send + 'static>(
    inner: impl Stream<Item = Result<T, Status>> + Send + 'static,
    session: Option<CancellationToken>,
) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>> {
    let Some(session) = session else { return Box::pin(inner) };
    Box::pin(futures::stream::unfold((Box::pin(inner), Some(session)), |(mut inner, session)| async move {
        let session = session?;
        tokio::select! {
            biased;
            () = session.cancelled() => Some((Err(Status::permission_denied(REVOKED)), (inner, None))),
            item = inner.next() => item.map(|i| (i, (inner, Some(session)))),
        }
    }))
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
                servers: c.iter().map(|v| convert::server(v)).collect(),
                part: i as u32,
                last: i + 1 == n,
            })),
        })
        .collect()
}

/// Snapshot, then deltas. A watcher that falls behind gets a fresh snapshot instead of a gap.
async fn watch(
    fleet: Arc<Fleet>,
    stopping: CancellationToken,
    tx: mpsc::Sender<Result<pb::FleetEvent, Status>>,
    session: CancellationToken,
) {
    let (views, mut rx) = fleet.registry().watch();
    for part in snapshot(&views) {
        if tx.send(Ok(part)).await.is_err() {
            return;
        }
    }
    drop(views);
    loop {
        let delta = tokio::select! {
            _ = stopping.cancelled() => break,
            _ = tx.closed() => break,
            _ = session.cancelled() => {
                let _ = tx.send(Err(Status::permission_denied(REVOKED))).await;
                break;
            }
            d = rx.recv() => d,
        };
        let out = match delta {
            Ok(FleetDelta::Upsert(v)) => {
                vec![pb::FleetEvent { event: Some(pb::fleet_event::Event::Upsert(convert::server(&v))) }]
            }
            Ok(FleetDelta::Removed(name)) => {
                vec![pb::FleetEvent { event: Some(pb::fleet_event::Event::Removed(name)) }]
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "watcher fell behind; sending a fresh snapshot");
                let (views, fresh) = fleet.registry().watch();
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
    use crate::fleet::Liveness;
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
                    apps: None,
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
