//! Storing health reports, idempotent on `(agent_id, seq)`, and reading them back.
//!
//! Reports are kept as the encoded `HistoryPoint` the agent protocol defines: health is plain data, and a
//! parallel domain struct would copy twenty fields for no gain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_proto::v1::{AppsState, Health, HistoryPoint, UsageReport};
use prost::Message;

use super::Fleet;
use crate::error::HubError;
use crate::limits::LogLimiter;
use crate::store::ReportStore;

pub struct ReportIntake {
    fleet: Arc<Fleet>,
    store: Arc<dyn ReportStore>,
    /// Reports kept per server.
    keep: u32,
    /// Reports refused as invalid (the agent drops them).
    refused: AtomicU64,
    metrics: Arc<crate::metrics::Metrics>,
    usage: Arc<crate::usage::UsageBook>,
}

/// One report, checked (`common::report::validate`).
pub struct Report {
    pub seq: u64,
    /// The agent's clock.
    pub taken_at_ms: i64,
    pub body: Body,
}

/// What a report carries: health (kept as history), the apps state (only the latest is kept) or usage
/// (rolled up).
pub enum Body {
    Health(Health),
    Apps(AppsState),
    Usage(UsageReport),
}

impl ReportIntake {
    pub fn new(
        fleet: Arc<Fleet>,
        store: Arc<dyn ReportStore>,
        keep: u32,
        metrics: Arc<crate::metrics::Metrics>,
        usage: Arc<crate::usage::UsageBook>,
    ) -> ReportIntake {
        ReportIntake { fleet, store, keep, refused: AtomicU64::new(0), metrics, usage }
    }

    /// Stores `report` durably unless it is a duplicate. Returns the seq to acknowledge (everything up to it
    /// is stored).
    pub async fn store(&self, server: &str, report: Report, log_limit: &LogLimiter) -> Result<u64, HubError> {
        let arrived = std::time::Instant::now();
        let _server = self.fleet.lock(server).await;
        let mut record = self.fleet.record(server)?;
        if report.seq <= record.last_seq {
            // Already stored: idempotent. The same seq with other content is a broken or hostile agent; the
            // first one stays.
            if let Body::Health(health) = &report.body
                && let Ok(Some(stored)) = self.store.report(server, report.seq).await
                && HistoryPoint::decode(stored.as_ref()).ok().and_then(|p| p.health).as_ref() != Some(health)
                && let Some(repeated) = log_limit.allow("duplicate seq, other content", server)
            {
                tracing::warn!(
                    server,
                    seq = report.seq,
                    repeated,
                    "a report repeats a stored seq with different content; the stored one is kept"
                );
            }
            return Ok(record.last_seq);
        }
        let now = outpost_common::now_ms();
        record.last_seq = report.seq;
        record.reports_received += 1;
        record.last_seen_ms = now;
        if record.first_seen_ms == 0 {
            record.first_seen_ms = now;
        }
        match report.body {
            Body::Health(health) => {
                record.last_report_ms = report.taken_at_ms;
                if !health.agent_version.is_empty() {
                    record.agent_version = health.agent_version.clone();
                }
                let point = HistoryPoint { seq: report.seq, taken_at_ms: report.taken_at_ms, health: Some(health) };
                let t = std::time::Instant::now();
                self.store.record_report(&record, report.seq, point.encode_to_vec(), self.keep).await?;
                self.metrics.report_stored(t.elapsed(), arrived.elapsed());
                // The latest health is the newest history point: no separate write.
                self.fleet.registry().put_report(record, point.health.expect("set just above"));
            }
            Body::Apps(apps) => {
                let t = std::time::Instant::now();
                self.store.record_apps(&record, report.seq, apps.encode_to_vec()).await?;
                self.metrics.report_stored(t.elapsed(), arrived.elapsed());
                self.fleet.registry().put_apps(record, apps);
            }
            Body::Usage(usage) => {
                let t = std::time::Instant::now();
                // The server's view is shared: its apps state is looked at, not copied.
                let view = self.fleet.registry().get(server);
                let apps = view.as_ref().and_then(|v| v.apps.as_deref());
                self.usage.ingest(&record, report.seq, report.taken_at_ms, &usage, apps, log_limit).await?;
                self.metrics.report_stored(t.elapsed(), arrived.elapsed());
                self.fleet.registry().put_record(record);
            }
        }
        Ok(report.seq)
    }

    /// Counts a report refused as invalid.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused_count(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The last `n` history points of a server, oldest first.
    pub async fn history(&self, server: &str, n: usize) -> Result<Vec<HistoryPoint>, HubError> {
        self.store
            .history(server, n)
            .await?
            .iter()
            .map(|v| {
                HistoryPoint::decode(v.as_ref())
                    .map_err(|e| HubError::Internal(format!("history of {server} is corrupt: {e}")))
            })
            .collect()
    }

    /// The newest health and apps state of `server` in the store (to fill the registry at start).
    pub async fn latest(store: &dyn ReportStore, server: &str) -> (Option<Health>, Option<AppsState>) {
        let health = store
            .history(server, 1)
            .await
            .ok()
            .and_then(|v| v.into_iter().next())
            .and_then(|v| HistoryPoint::decode(v.as_ref()).ok())
            .and_then(|p| p.health);
        let apps = store.apps(server).await.ok().flatten().and_then(|v| AppsState::decode(v.as_ref()).ok());
        (health, apps)
    }
}
