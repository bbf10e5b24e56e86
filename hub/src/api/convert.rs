//! Domain types to and from the wire.

use outpost_common::selector::Selector;
use outpost_proto::v1 as pb;

use crate::actions::{ActionRequest, JobEvent, TargetState};
use crate::command::{CommandResult, Outcome};
use crate::fleet::identities::{Hello, HostFacts};
use crate::fleet::{Liveness, ServerView};
use crate::store::AuditEntry;

pub fn server(v: &ServerView) -> pb::Server {
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
        health: v.health.as_deref().cloned(),
        last_seq: r.last_seq,
        reports_received: r.reports_received,
        connections: r.connections,
        dropped_reports: r.dropped_reports,
        refused_reports: r.refused_reports,
        log_files: r.log_files.clone(),
        revoked_ms: r.revoked_ms,
        apps: v.apps.as_deref().cloned(),
        host: Some(pb::HostFacts {
            hostname: r.hostname.clone(),
            os: r.os.clone(),
            kernel: r.kernel.clone(),
            arch: r.arch.clone(),
            agent_version: r.agent_version.clone(),
        }),
    }
}

pub fn outcome(o: Outcome) -> i32 {
    (match o {
        Outcome::None => pb::Outcome::Unspecified,
        Outcome::Succeeded => pb::Outcome::Succeeded,
        Outcome::Failed => pb::Outcome::Failed,
        Outcome::Refused => pb::Outcome::Refused,
        Outcome::Cancelled => pb::Outcome::Cancelled,
        Outcome::TimedOut => pb::Outcome::TimedOut,
        Outcome::Interrupted => pb::Outcome::Interrupted,
        Outcome::Expired => pb::Outcome::Expired,
        Outcome::Skipped => pb::Outcome::Skipped,
    }) as i32
}

pub fn audit_record(e: AuditEntry) -> pb::AuditRecord {
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
        outcome: outcome(e.outcome),
        message: e.message,
    }
}

pub fn command_result(r: CommandResult) -> pb::CommandResult {
    pb::CommandResult {
        outcome: outcome(r.outcome),
        exit_code: r.exit_code,
        message: r.message,
        output_dropped_bytes: r.output_dropped_bytes,
        replayed: r.replayed,
        duration_ms: r.duration_ms,
    }
}

pub fn job_event(e: JobEvent) -> pb::JobEvent {
    use pb::job_event::Event;
    let event = match e {
        JobEvent::Plan { job_id, action, targets, batches, audit_id } => {
            Event::Plan(pb::JobPlan { job_id, targets, batches, audit_id, action })
        }
        JobEvent::Progress(p) => Event::Progress(pb::JobProgress {
            total: p.total,
            succeeded: p.succeeded,
            failed: p.failed,
            running: p.running,
            pending: p.pending,
            skipped: p.skipped,
            finished: p.finished,
            stopped: p.stopped,
            waiting: p.waiting,
        }),
        JobEvent::Target(t) => Event::Target(pb::TargetEvent {
            server: t.server,
            command_id: t.command_id,
            state: (match t.state {
                TargetState::Pending => pb::TargetState::Pending,
                TargetState::Queued => pb::TargetState::Queued,
                TargetState::Sent => pb::TargetState::Sent,
                TargetState::Running => pb::TargetState::Running,
                TargetState::Done => pb::TargetState::Done,
            }) as i32,
            output: t.output,
            result: t.result.map(command_result),
            batch: t.batch,
        }),
    };
    pb::JobEvent { event: Some(event) }
}

pub fn selector(s: Option<pb::Selector>) -> Selector {
    let s = s.unwrap_or_default();
    Selector {
        names: s.names,
        customer: Some(s.customer).filter(|c| !c.is_empty()),
        plan: Some(s.plan).filter(|c| !c.is_empty()),
        labels: s.labels.into_iter().collect(),
        // An unknown value stays in (and matches nothing) rather than vanishing and widening the selection;
        // the job engine refuses it by name.
        status: s
            .status
            .into_iter()
            .map(|l| Liveness::try_from(l).map_or_else(|n| format!("invalid({n})"), |l| l.as_str().to_string()))
            .collect(),
        all: s.all,
    }
}

pub fn action_request(r: pb::RunActionRequest) -> ActionRequest {
    ActionRequest {
        action: r.action,
        args: r.args.into_iter().collect(),
        selector: selector(r.selector),
        batch: r.batch,
        canary: r.canary,
        max_failure_rate: r.max_failure_rate,
        deadline_ms: r.deadline_ms,
        queue_secs: r.queue_secs,
        confirm: r.confirm,
        window: r.window,
    }
}

pub fn host_facts(h: pb::HostFacts) -> HostFacts {
    HostFacts { hostname: h.hostname, os: h.os, kernel: h.kernel, arch: h.arch, agent_version: h.agent_version }
}

pub fn hello(h: &pb::Hello) -> Hello {
    Hello {
        dropped_reports: h.dropped_reports,
        refused_reports: h.refused_reports,
        log_files: h.log_files.clone(),
        ca_pins: h.ca_pins.clone(),
    }
}

pub fn lifecycle_job(j: crate::store::QueuedJob) -> pb::LifecycleJob {
    pb::LifecycleJob {
        id: j.id,
        kind: j.kind.as_str().into(),
        state: j.state.as_str().into(),
        target: j.target,
        customer: j.customer,
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        not_before_ms: j.not_before_ms,
        steps: j
            .steps
            .into_iter()
            .map(|s| pb::LifecycleStep {
                name: s.name,
                started_ms: s.started_ms,
                ended_ms: s.ended_ms,
                ok: s.ok,
                message: s.message,
            })
            .collect(),
        progress: j.progress,
        error: j.error,
        created_ms: j.created_ms,
        updated_ms: j.updated_ms,
        finished_ms: j.finished_ms,
        submitted_by: j.submitted_by,
        params: j.params.into_iter().collect(),
        cancel_requested: j.cancel_requested,
        priority: u32::from(j.priority),
    }
}

/// A customer's month of usage, for the wire.
pub fn month_usage(m: crate::usage::MonthUsage) -> pb::GetUsageResponse {
    let limits =
        m.limits.unwrap_or(outpost_common::app::PlanLimits { cpu_millis: 0, memory_bytes: 0, storage_bytes: 0 });
    let per_sec = |v: f64, secs: f64| if secs > 0.0 { v / secs } else { 0.0 };
    pb::GetUsageResponse {
        rows: m
            .rows
            .into_iter()
            .map(|(server, u)| pb::UsageRow {
                server,
                cpu_cores_avg: per_sec(u.cpu_seconds, u.covered_secs),
                memory_avg_bytes: per_sec(u.memory_byte_seconds, u.covered_secs) as u64,
                cpu_seconds: u.cpu_seconds,
                memory_peak_bytes: u.memory_peak_bytes,
                disk_bytes: u.disk_bytes_max,
                database_bytes: u.database_bytes_max,
                egress_bytes: u.egress_bytes,
                covered_hours: u.covered_secs / 3600.0,
                resets: u.resets,
                scope: u.scope,
            })
            .collect(),
        days: m
            .days
            .into_iter()
            .map(|d| pb::UsageDay {
                start_ms: d.start_ms,
                cpu_cores_avg: per_sec(d.cpu_seconds, d.covered_secs),
                memory_peak_bytes: d.memory_peak_bytes,
                database_bytes: d.database_bytes,
                egress_bytes: d.egress_bytes,
            })
            .collect(),
        plan_use: m.over_plan.into_iter().map(|(what, percent, words)| pb::PlanUse { what, percent, words }).collect(),
        cost_total: m.cost.total(),
        cost_server: m.cost.server,
        cost_cpu: m.cost.cpu,
        cost_memory: m.cost.memory,
        cost_egress: m.cost.egress,
        cost_database: m.cost.database,
        customer: m.customer,
        month: m.month,
        plan: m.plan,
        plan_cpu_millis: limits.cpu_millis,
        plan_memory_bytes: limits.memory_bytes,
        plan_database_bytes: limits.storage_bytes,
        currency: m.currency,
    }
}
