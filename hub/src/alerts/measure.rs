//! What each metric reads, as pure functions of a server's view (or the lifecycle queue's counters) and the
//! time: `Alerts::conditions` applies them to the fleet, and the tests here pin every metric down.

use super::rules::Metric;
use crate::fleet::ServerView;
use crate::lifecycle::QueueStats;

/// An app phase (as the agent reports it) that counts as failing (`app_failing`, `apps_failing`).
pub fn failing(phase: &str) -> bool {
    phase == "failed" || phase == "degraded"
}

/// What a per-server `metric` reads on `v` at `now_ms` (`None`: nothing to read yet, e.g. no health report;
/// and for the per-app and hub-wide metrics, which are read elsewhere). `over_plan`: the server's
/// customer's highest use of the plan this hour, in percent, when the usage book has one.
pub fn server_value(metric: Metric, v: &ServerView, now_ms: i64, over_plan: Option<f64>) -> Option<f64> {
    let (rec, h) = (&v.record, v.health.as_ref());
    match metric {
        Metric::ServerOfflineSeconds => {
            Some(v.offline_since_ms().map_or(0.0, |since| (now_ms - since).max(0) as f64 / 1000.0))
        }
        Metric::DiskUsedPercent => h.and_then(|h| {
            h.disks
                .iter()
                .filter(|d| d.total_bytes > 0)
                .map(|d| 100.0 * (d.total_bytes - d.available_bytes.min(d.total_bytes)) as f64 / d.total_bytes as f64)
                .reduce(f64::max)
        }),
        Metric::MemoryUsedPercent => {
            h.filter(|h| h.mem_total_bytes > 0).map(|h| 100.0 * h.mem_used_bytes as f64 / h.mem_total_bytes as f64)
        }
        Metric::CertificateExpiresInSeconds => {
            (rec.cert_not_after > 0).then(|| (rec.cert_not_after * 1000 - now_ms) as f64 / 1000.0)
        }
        Metric::K3sReady => v.apps.as_ref().and_then(|a| a.cluster.as_ref()).map(|c| f64::from(u8::from(c.ready))),
        Metric::UsageOverPlanPercent => over_plan,
        Metric::AgentVersionSkew => {
            (!rec.agent_version.is_empty()).then(|| f64::from(u8::from(rec.agent_version != env!("CARGO_PKG_VERSION"))))
        }
        Metric::AppsFailing => v.apps.as_ref().map(|a| a.apps.iter().filter(|x| failing(&x.phase)).count() as f64),
        Metric::AppFailing
        | Metric::JobQueuePending
        | Metric::JobFailureRatePercent
        | Metric::ProvisionsFailedLastHour
        | Metric::BackupOverdue => None,
    }
}

/// What a hub-wide `metric` reads on the lifecycle queue's counters (`None` for a per-server metric).
pub fn hub_value(metric: Metric, s: &QueueStats) -> Option<f64> {
    match metric {
        Metric::JobQueuePending => Some(s.pending as f64),
        Metric::JobFailureRatePercent if s.finished_last_hour > 0 => {
            Some(100.0 * s.failed_last_hour as f64 / s.finished_last_hour as f64)
        }
        Metric::JobFailureRatePercent => Some(0.0),
        Metric::ProvisionsFailedLastHour => Some(s.provisions_failed_last_hour as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use outpost_proto::v1::{AppState, AppsState, ClusterState, Disk, Health};

    use super::*;
    use crate::fleet::Liveness;
    use crate::store::ServerRecord;

    const NOW: i64 = 1_700_000_000_000;

    fn view(liveness: Liveness) -> ServerView {
        ServerView {
            record: ServerRecord { name: "s".into(), ..Default::default() },
            liveness,
            liveness_since_ms: NOW - 600_000,
            health: None,
            apps: None,
        }
    }

    fn app(phase: &str) -> AppState {
        AppState { name: phase.into(), phase: phase.into(), ..Default::default() }
    }

    #[test]
    fn every_per_server_metric_reads_what_it_says() {
        let mut v = view(Liveness::Connected);
        let read = |m: Metric, v: &ServerView| server_value(m, v, NOW, Some(120.0));
        assert_eq!(read(Metric::ServerOfflineSeconds, &v), Some(0.0), "connected: not offline");
        // Nothing reported yet: nothing to read.
        for m in [Metric::DiskUsedPercent, Metric::MemoryUsedPercent, Metric::K3sReady, Metric::AppsFailing] {
            assert_eq!(read(m, &v), None, "{m:?}");
        }
        assert_eq!(read(Metric::CertificateExpiresInSeconds, &v), None, "no certificate yet");
        assert_eq!(read(Metric::AgentVersionSkew, &v), None, "no agent version yet");
        v.health = Some(Arc::new(Health {
            mem_total_bytes: 1000,
            mem_used_bytes: 950,
            disks: vec![
                Disk { mount: "/".into(), total_bytes: 100, available_bytes: 40 },
                Disk { mount: "/data".into(), total_bytes: 200, available_bytes: 10 },
                Disk { mount: "/empty".into(), total_bytes: 0, available_bytes: 0 },
            ],
            ..Default::default()
        }));
        assert_eq!(read(Metric::DiskUsedPercent, &v), Some(95.0), "the fullest disk");
        assert_eq!(read(Metric::MemoryUsedPercent, &v), Some(95.0));
        v.record.cert_not_after = NOW / 1000 + 3600;
        assert_eq!(read(Metric::CertificateExpiresInSeconds, &v), Some(3600.0));
        v.apps = Some(Arc::new(AppsState {
            apps: vec![app("available"), app("failed"), app("degraded"), app("deploying")],
            cluster: Some(ClusterState { ready: false, ..Default::default() }),
        }));
        assert_eq!(read(Metric::AppsFailing, &v), Some(2.0), "failed and degraded");
        assert_eq!(read(Metric::K3sReady, &v), Some(0.0));
        assert_eq!(read(Metric::UsageOverPlanPercent, &v), Some(120.0));
        v.record.agent_version = env!("CARGO_PKG_VERSION").into();
        assert_eq!(read(Metric::AgentVersionSkew, &v), Some(0.0));
        v.record.agent_version = "0.0.1".into();
        assert_eq!(read(Metric::AgentVersionSkew, &v), Some(1.0));
        for m in [Metric::AppFailing, Metric::JobQueuePending, Metric::JobFailureRatePercent] {
            assert_eq!(read(m, &v), None, "{m:?} is read elsewhere");
        }
    }

    #[test]
    fn offline_time_counts_from_the_last_report_or_else_from_liveness() {
        let mut v = view(Liveness::Lost);
        assert_eq!(server_value(Metric::ServerOfflineSeconds, &v, NOW, None), Some(600.0), "never heard from");
        v.record.last_seen_ms = NOW - 30_000;
        assert_eq!(server_value(Metric::ServerOfflineSeconds, &v, NOW, None), Some(30.0));
        v.liveness = Liveness::Disconnected;
        assert_eq!(server_value(Metric::ServerOfflineSeconds, &v, NOW, None), Some(30.0));
    }

    #[test]
    fn every_hub_wide_metric_reads_the_queue() {
        let s = QueueStats {
            pending: 7,
            running: 2,
            finished_last_hour: 20,
            failed_last_hour: 5,
            provisions_failed_last_hour: 3,
        };
        assert_eq!(hub_value(Metric::JobQueuePending, &s), Some(7.0));
        assert_eq!(hub_value(Metric::JobFailureRatePercent, &s), Some(25.0));
        assert_eq!(hub_value(Metric::ProvisionsFailedLastHour, &s), Some(3.0));
        assert_eq!(hub_value(Metric::JobFailureRatePercent, &QueueStats::default()), Some(0.0), "nothing ended");
        assert_eq!(hub_value(Metric::DiskUsedPercent, &s), None);
        assert!(failing("failed") && failing("degraded") && !failing("available"));
    }
}
