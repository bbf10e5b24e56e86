//! The admin listener: `/metrics` (OpenMetrics, or the classic text format), `/healthz`, `/readyz`. The
//! one place that knows the fleet, the lifecycle queue, the alerts and the metrics together: at scrape it
//! counts the first three into plain figures for the metrics (a leaf), then renders (linkerd2-proxy's
//! admin server over its composition root is the model).

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::alerts::Alerts;
use crate::fleet::Fleet;
use crate::lifecycle::Lifecycle;
use crate::metrics::{FleetFigures, Metrics, QueueFigures, classic_text};

/// What the admin listener serves from, by name.
pub struct AdminParts {
    pub metrics: Arc<Metrics>,
    pub fleet: Arc<Fleet>,
    pub lifecycle: Arc<Lifecycle>,
    pub alerts: Arc<Alerts>,
    /// Cancelled when the hub stops (`/readyz` then answers 503).
    pub stopping: tokio_util::sync::CancellationToken,
    /// The bearer token `/metrics` requires (`[admin] bearer_token_file`), if any.
    pub token: Option<String>,
}

/// The fleet counted for the gauges.
fn fleet_figures(fleet: &Fleet) -> FleetFigures {
    let mut f = FleetFigures::default();
    for v in fleet.registry().list() {
        *f.servers.entry((v.liveness.to_string(), v.record.plan.clone())).or_default() += 1;
        f.streams += i64::from(v.liveness == outpost_common::Liveness::Connected);
        if !v.record.agent_id.is_empty() && v.record.revoked_ms == 0 && v.record.cert_not_after > 0 {
            let soonest = f.soonest_cert_expiry_secs.get_or_insert(v.record.cert_not_after);
            *soonest = (*soonest).min(v.record.cert_not_after);
        }
    }
    f
}

/// Whether `headers` carry `Authorization: Bearer <token>` (compared in constant time).
fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    got.len() == token.len() && got.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The admin listener's routes.
pub fn router(parts: AdminParts) -> axum::Router {
    let AdminParts { metrics, fleet, lifecycle, alerts, stopping, token } = parts;
    // OpenMetrics to those who ask for it (Prometheus does); the classic text format to everyone else
    // (curl, `promtool check metrics`).
    let scrape = move |headers: axum::http::HeaderMap| {
        let (metrics, fleet, lifecycle, alerts) = (metrics.clone(), fleet.clone(), lifecycle.clone(), alerts.clone());
        let allowed = token.as_deref().is_none_or(|t| bearer_matches(&headers, t));
        async move {
            if !allowed {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "a bearer token is required (admin.bearer_token_file)\n".to_string(),
                )
                    .into_response();
            }
            metrics.set_alerts(&alerts.firing_by_severity());
            metrics.set_fleet(&fleet_figures(&fleet));
            if let Ok(s) = lifecycle.stats().await {
                metrics.set_queue(&QueueFigures {
                    pending: s.pending,
                    running: s.running,
                    failed_last_hour: s.failed_last_hour,
                });
            }
            let body = metrics.render();
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if accept.contains("application/openmetrics-text") {
                ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
                    .into_response()
            } else {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], classic_text(&body))
                    .into_response()
            }
        }
    };
    axum::Router::new().route("/metrics", get(scrape)).route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            let stopping = stopping.is_cancelled();
            async move {
                if stopping {
                    (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response()
                } else {
                    (StatusCode::OK, "ready\n").into_response()
                }
            }
        }),
    )
}
