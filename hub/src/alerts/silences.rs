//! Silences (matchers over an alert's labels, for a while, with a comment) and acknowledgements (who is on
//! it). Both are stored and audited; every replica lists the same.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Alerts;
use super::eval::{Alert, State};
use crate::audit::{AuditEntry, Kind};

use super::rules::SILENCE_LABELS;

impl Alerts {
    /// Silences alerts whose labels include every matcher, for `duration`.
    pub async fn silence(
        &self,
        matchers: BTreeMap<String, String>,
        duration: Duration,
        comment: &str,
        by: &str,
    ) -> Result<(String, crate::store::SilenceRecord), crate::error::HubError> {
        let mut problems = Vec::new();
        if matchers.is_empty() {
            problems.push("a silence needs at least one matcher (e.g. alertname=disk_full); an empty one would silence everything".to_string());
        }
        for (k, v) in &matchers {
            if !SILENCE_LABELS.contains(&k.as_str()) {
                problems.push(format!("matcher label {:?}: one of {}", k, SILENCE_LABELS.join(", ")));
            }
            if v.is_empty() || v.len() > 128 || !outpost_common::text::is_printable(v) {
                problems.push(format!("matcher {k}: a value of 1-128 printable characters"));
            }
        }
        if duration < Duration::from_secs(60) || duration > Duration::from_secs(30 * 86_400) {
            problems.push(format!(
                "duration {}s: between 1 minute and 30 days (an expiry in the past silences nothing)",
                duration.as_secs()
            ));
        }
        if comment.trim().is_empty() || comment.len() > 500 || !outpost_common::text::is_printable(comment) {
            problems.push("comment: say why (1-500 printable characters)".into());
        }
        if !problems.is_empty() {
            return Err(crate::error::HubError::Invalid(problems.join("; ")));
        }
        let now = outpost_common::now_ms();
        let id = format!("s-{}", outpost_common::random_hex::<6>());
        let record = crate::store::SilenceRecord {
            matchers,
            starts_ms: now,
            expires_ms: now + duration.as_millis() as i64,
            creator: by.into(),
            comment: comment.into(),
        };
        self.put(
            &id,
            &record,
            by,
            format!("silenced until {}: {comment}", outpost_common::when::rfc3339(record.expires_ms)),
        )
        .await?;
        Ok((id, record))
    }

    /// Ends silence `id` now.
    pub async fn expire_silence(
        &self,
        id: &str,
        by: &str,
    ) -> Result<crate::store::SilenceRecord, crate::error::HubError> {
        let found = self
            .silences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, s)| s.clone());
        let mut record = found.ok_or_else(|| {
            crate::error::HubError::NotFound(format!("no silence {}", outpost_common::text::excerpt(id, 32)))
        })?;
        record.expires_ms = record.expires_ms.min(outpost_common::now_ms());
        self.put(id, &record, by, "silence ended".into()).await?;
        Ok(record)
    }

    async fn put(
        &self,
        id: &str,
        record: &crate::store::SilenceRecord,
        by: &str,
        message: String,
    ) -> Result<(), crate::error::HubError> {
        let audit = AuditEntry {
            operator: by.into(),
            kind: Kind::Alert,
            action: "silence".into(),
            args: record.matchers.clone(),
            message: format!("{id}: {message}"),
            ..Default::default()
        };
        self.store.put_silence(id, record, audit).await?;
        let mut all = self.silences.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(i, _)| i != id);
        all.push((id.to_string(), record.clone()));
        Ok(())
    }

    /// The silences not expired yet.
    pub fn active_silences(&self) -> Vec<(String, crate::store::SilenceRecord)> {
        let now = outpost_common::now_ms();
        self.silences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, s)| s.expires_ms > now)
            .cloned()
            .collect()
    }

    /// Marks the firing alerts `alertname` (on `server`, when given) acknowledged by `by`. Returns how many.
    pub async fn ack(&self, alertname: &str, server: &str, by: &str) -> Result<usize, crate::error::HubError> {
        let acked: Vec<Alert> = {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            active
                .values_mut()
                .filter(|a| {
                    a.state == State::Firing
                        && a.labels.get("alertname").map(String::as_str) == Some(alertname)
                        && (server.is_empty() || a.labels.get("server").map(String::as_str) == Some(server))
                })
                .map(|a| {
                    a.acked_by = by.to_string();
                    a.clone()
                })
                .collect()
        };
        if acked.is_empty() {
            return Err(crate::error::HubError::NotFound(format!(
                "no firing alert {}{}",
                outpost_common::text::excerpt(alertname, 64),
                if server.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", outpost_common::text::excerpt(server, 64))
                }
            )));
        }
        for a in &acked {
            self.keep(a, true).await;
            let entry = AuditEntry {
                operator: by.into(),
                kind: Kind::Alert,
                action: alertname.into(),
                args: a.labels.clone(),
                servers: a.labels.get("server").cloned().into_iter().collect(),
                message: format!("acknowledged: {}", a.summary),
                ..Default::default()
            };
            self.audit.append(entry).await?;
        }
        Ok(acked.len())
    }
}
