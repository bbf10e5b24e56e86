//! What leaves the hub about alerts: the webhook (generic JSON or Slack) and Prometheus Alertmanager's v2
//! API. Architecture invariant: everything from outside the hub in a notification (an app's `last_error`
//! in a summary, names in labels) is neutralised for its medium and bounded here.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_common::text;

use super::Alerts;
use super::eval::{Alert, State};
use crate::audit::{AuditEntry, Kind};

/// The most of an alert's summary (which quotes agent text: an app's `last_error`) a notifier gets.
const SUMMARY_MAX: usize = 1024;
/// The most of one label value a notifier gets.
const LABEL_MAX: usize = 128;

/// Labels as a notifier gets them: every value inert and bounded (a server or app name is checked when
/// stored, but what leaves the hub is neutralised here, whatever it came from).
fn notifier_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.iter().map(|(k, v)| (text::for_notifier(k, LABEL_MAX), text::for_notifier(v, LABEL_MAX))).collect()
}

/// The webhook's body for `a` going `status`. Everything in it that did not come from the hub's own words is
/// neutralised for its medium: Slack's `text` is escaped as Slack documents (`&`, `<`, `>`; no mention, no
/// link the hub did not build); the generic JSON has every text inert and bounded.
pub(super) fn webhook_body(format: &str, a: &Alert, status: &str, now_ms: i64) -> serde_json::Value {
    let labels = notifier_labels(&a.labels);
    let l = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let summary = text::for_notifier(&a.summary, SUMMARY_MAX);
    let head = |l: &dyn Fn(&str) -> String| {
        format!(
            "[{} {}] {}{} since {}",
            status.to_uppercase(),
            l("severity"),
            l("alertname"),
            if l("server").is_empty() { String::new() } else { format!(" on {}", l("server")) },
            outpost_common::when::rfc3339(a.since_ms),
        )
    };
    match format {
        "slack" => {
            let s = |k: &str| text::for_slack(&l(k), LABEL_MAX);
            let line = format!(
                "{}: {} — what to do: {}",
                head(&s),
                text::for_slack(&a.summary, SUMMARY_MAX),
                text::for_slack(&a.action, SUMMARY_MAX)
            );
            // `parse: none`: Slack links and mentions nothing in the text by itself.
            serde_json::json!({ "text": line, "parse": "none", "unfurl_links": false, "unfurl_media": false })
        }
        _ => {
            let action = text::for_notifier(&a.action, SUMMARY_MAX);
            let line = format!("{}: {summary} — what to do: {action}", head(&l));
            serde_json::json!({
                "status": status, "labels": labels, "summary": summary, "action": action,
                "since": outpost_common::when::rfc3339(a.since_ms), "at": outpost_common::when::rfc3339(now_ms), "text": line,
            })
        }
    }
}

/// `scheme://host[:port]` of `url`, for logs: a webhook URL's path or query may be its secret (Slack's is).
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}")
}

/// At most `max` bytes of an answer's body, as text: an answer is never read whole.
async fn first_bytes(mut r: reqwest::Response, max: usize) -> String {
    let mut body = Vec::new();
    while body.len() < max {
        match r.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(max - body.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

impl Alerts {
    /// One notification to the webhook, on its own task: retried with exponential backoff and full jitter,
    /// then a dead letter (audited) when it never got through.
    pub(super) fn notify(&self, a: &Alert, status: &str, now_ms: i64) {
        let Some(url) = self.config.webhook_url.clone() else { return };
        let Some(rt) = self.rt.get() else { return };
        let body = webhook_body(&self.config.webhook_format, a, status, now_ms);
        let (client, audit, cfg, alert) = (self.client.clone(), self.audit.clone(), self.config.clone(), a.clone());
        let status = status.to_string();
        rt.spawn(async move {
            let mut last = String::new();
            for attempt in 1..=cfg.webhook_attempts {
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => last = format!("HTTP {}", r.status()),
                    // Without the URL: a Slack webhook's path is its secret.
                    Err(e) => last = e.without_url().to_string(),
                }
                if attempt < cfg.webhook_attempts {
                    let wait = outpost_common::backoff::full_jitter(
                        attempt - 1,
                        Duration::from_millis(cfg.webhook_backoff_initial_ms),
                        Duration::from_millis(cfg.webhook_backoff_max_ms),
                    );
                    tokio::time::sleep(wait).await;
                }
            }
            tracing::error!(webhook = %origin(&url), error = %last, "alert notification undeliverable; recorded as a dead letter");
            let entry = AuditEntry {
                operator: "alerts".into(),
                kind: Kind::Alert,
                action: alert.labels.get("alertname").cloned().unwrap_or_default(),
                args: alert.labels.clone(),
                servers: alert.labels.get("server").cloned().into_iter().collect(),
                message: format!(
                    "dead letter: the {status} notification never reached the webhook after {} attempts ({last})",
                    cfg.webhook_attempts
                ),
                ..Default::default()
            };
            let _ = audit.append(entry).await;
        });
    }

    /// Sends firing alerts, and resolved ones not sent yet, to Alertmanager (`POST /api/v2/alerts`).
    pub async fn deliver(&self) {
        let Some(base) = &self.config.alertmanager_url else { return };
        let firing: Vec<Alert> =
            self.list().into_iter().filter(|a| a.state == State::Firing && a.silenced_by.is_empty()).collect();
        let resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if firing.is_empty() && resolved.is_empty() {
            return;
        }
        let time = |ms: i64| outpost_common::when::rfc3339(ms);
        let body: Vec<serde_json::Value> = firing
            .iter()
            .map(|a| (a, None))
            .chain(resolved.iter().map(|(a, end)| (a, Some(*end))))
            .map(|(a, end)| {
                let mut v = serde_json::json!({
                    "labels": notifier_labels(&a.labels),
                    "annotations": {
                        "summary": text::for_notifier(&a.summary, SUMMARY_MAX),
                        "description": text::for_notifier(&format!("since {}; what to do: {}", time(a.since_ms), a.action), SUMMARY_MAX),
                    },
                    "startsAt": time(a.since_ms),
                    "generatorURL": "",
                });
                if let Some(end) = end {
                    v["endsAt"] = serde_json::json!(time(end));
                }
                v
            })
            .collect();
        let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
        let timeout = Duration::from_secs(self.config.alertmanager_timeout_secs);
        match self.client.post(&url).timeout(timeout).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                self.metrics.alert_delivery("delivered");
                let sent = resolved.len();
                self.resolved.lock().unwrap_or_else(|p| p.into_inner()).drain(..sent);
            }
            Ok(r) => {
                self.metrics.alert_delivery("refused");
                let status = r.status();
                let said = first_bytes(r, 4096).await;
                tracing::warn!(%status, alertmanager = %origin(&url), answer = %outpost_common::text::excerpt(&said, 200), "Alertmanager refused the alerts; they are sent again next round");
            }
            Err(error) => {
                self.metrics.alert_delivery("unreachable");
                let why = if error.is_timeout() {
                    format!("no answer within {}s", timeout.as_secs())
                } else {
                    error.without_url().to_string()
                };
                tracing::warn!(error = %why, alertmanager = %origin(&url), "Alertmanager unreachable; the alerts are sent again next round")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(summary: &str) -> Alert {
        let labels: BTreeMap<String, String> =
            [("alertname", "app_failing"), ("severity", "warning"), ("server", "web-1"), ("app", "<!here>")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        Alert {
            labels,
            state: State::Firing,
            since_ms: 1_700_000_000_000,
            fired_ms: 1_700_000_000_000,
            value: 1.0,
            summary: summary.into(),
            action: "`outpost run app-logs`".into(),
            silenced_by: String::new(),
            acked_by: String::new(),
            notified: false,
            held_ms: 0,
            clearing: false,
        }
    }

    const HOSTILE: &str = "crash: <!channel> <@U123ABC> <!here> @everyone <https://evil.example/login|click to re-auth> \u{1b}]8;;https://evil.example\u{7}";

    #[test]
    fn agent_text_reaches_a_slack_webhook_escaped_bounded_and_without_links_or_mentions() {
        let body = webhook_body("slack", &alert(HOSTILE), "firing", 1_700_000_001_000);
        let text = body["text"].as_str().unwrap();
        for obeyed in ["<!channel>", "<@U123ABC>", "<!here>", "<https://", "@everyone", "https://", "\u{1b}"] {
            assert!(!text.contains(obeyed), "{obeyed:?} reached Slack as is: {text}");
        }
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(text.contains("&lt;!channel&gt;") && text.contains("click to re-auth"), "shown, not obeyed: {text}");
        assert_eq!(body["parse"], "none");
        let long = webhook_body("slack", &alert(&"<".repeat(900_000)), "firing", 0);
        assert!(long["text"].as_str().unwrap().len() < 8 * 1024, "bounded");
    }

    #[test]
    fn logs_name_a_webhook_by_its_origin_only() {
        assert_eq!(origin("https://hooks.slack.com/services/T0/B0/s3cr3t?x=1"), "https://hooks.slack.com");
        assert_eq!(origin("http://user:pw@127.0.0.1:9093/api"), "http://127.0.0.1:9093");
    }

    #[test]
    fn the_generic_webhook_and_alertmanager_get_inert_bounded_text() {
        let body = webhook_body("generic", &alert(&format!("{HOSTILE}{}", "x".repeat(100_000))), "firing", 0);
        let all = body.to_string();
        assert!(all.len() < 8 * 1024, "bounded: {} bytes", all.len());
        for field in ["summary", "text", "action"] {
            let v = body[field].as_str().unwrap();
            assert!(!v.chars().any(text::is_unsafe), "{field}: {v:?}");
        }
        let labels = notifier_labels(&[("app".to_string(), format!("a\u{202e}b{}", "y".repeat(1000)))].into());
        assert!(labels["app"].len() < 200 && !labels["app"].chars().any(text::is_unsafe), "{labels:?}");
    }
}
