//! Storing reports (idempotent on `(agent_id, seq)`) and renewing certificates over the live stream.

use outpost_proto::v1::{Health, HistoryPoint, Report};
use prost::Message;

use crate::ca::SignError;
use crate::error::HubError;
use crate::state::HubState;
use crate::store::{Op, Tree, history_key, now_ms};

/// History is trimmed once per this many reports of a server.
const TRIM_EVERY: u64 = 32;

/// Bounds on what one report may carry.
pub const MAX_DISKS: usize = 64;
const MAX_TEXT: usize = 256;

/// Checks a report before anything is stored.
pub fn validate_report(r: &Report) -> Result<&Health, HubError> {
    if r.seq == 0 {
        return Err(HubError::Invalid("report.seq must be at least 1 (sequences start at 1)".into()));
    }
    let h = r.health.as_ref().ok_or_else(|| HubError::Invalid(format!("report {} has no health", r.seq)))?;
    if h.disks.len() > MAX_DISKS {
        return Err(HubError::Invalid(format!("report {} lists {} disks; at most {MAX_DISKS}", r.seq, h.disks.len())));
    }
    let texts = h.disks.iter().map(|d| &d.mount).chain([&h.agent_version]).chain(h.k3s.iter().map(|k| &k.detail));
    for t in texts {
        if t.len() > MAX_TEXT {
            return Err(HubError::Invalid(format!("report {} has a text field over {MAX_TEXT} bytes", r.seq)));
        }
    }
    if !h.cpu_percent.is_finite() || !(0.0..=100.0 * 1024.0).contains(&h.cpu_percent) {
        return Err(HubError::Invalid(format!("report {}: cpu_percent {} is not a percentage", r.seq, h.cpu_percent)));
    }
    if h.mem_used_bytes > h.mem_total_bytes || h.swap_used_bytes > h.swap_total_bytes {
        return Err(HubError::Invalid(format!("report {}: used memory exceeds total", r.seq)));
    }
    Ok(h)
}

impl HubState {
    /// Stores `report` durably unless it is a duplicate. Returns the seq to acknowledge (everything up to it
    /// is stored).
    pub async fn store_report(&self, server: &str, report: &Report) -> Result<u64, HubError> {
        let health = validate_report(report)?.clone();
        let _server = self.lock_server(server).await;
        let view =
            self.registry.get(server).ok_or_else(|| HubError::NotFound(format!("server {server} was removed")))?;
        let mut record = view.record.clone();
        if report.seq <= record.last_seq {
            return Ok(record.last_seq); // already stored: idempotent
        }
        let now = now_ms();
        record.last_seq = report.seq;
        record.reports_received += 1;
        record.last_seen_ms = now;
        record.last_report_ms = report.taken_at_ms;
        if record.first_seen_ms == 0 {
            record.first_seen_ms = now;
        }
        if !health.agent_version.is_empty() {
            record.agent_version = health.agent_version.clone();
        }
        let point = HistoryPoint { seq: report.seq, taken_at_ms: report.taken_at_ms, health: Some(health) };
        // The latest health is the newest history point: no separate write.
        let mut ops = vec![Op::Put(Tree::History, history_key(server, report.seq), point.encode_to_vec())];
        let health = point.health.expect("set just above");
        // Trim every TRIM_EVERY reports (a range scan per report was measurable at 10k reports/s): a
        // server keeps between history_len and history_len + TRIM_EVERY points.
        let keep = u64::from(self.history_len);
        if report.seq > keep && report.seq.is_multiple_of(TRIM_EVERY) {
            ops.push(Op::DelRange(Tree::History, history_key(server, 0), history_key(server, report.seq + 1 - keep)));
        }
        // Last: the high-water mark, so any recovered prefix of this batch is safe.
        ops.push(Op::put_json(Tree::Servers, server.to_string(), &record));
        self.store.commit(ops).await?;
        self.registry.put_report(record, health);
        Ok(report.seq)
    }

    /// Notes a new stream of `server` (connection counter, host facts from Hello).
    pub async fn note_connect(&self, server: &str, dropped_reports: u64) -> Result<u64, HubError> {
        let _server = self.lock_server(server).await;
        let view =
            self.registry.get(server).ok_or_else(|| HubError::NotFound(format!("server {server} was removed")))?;
        let mut record = view.record.clone();
        record.connections += 1;
        record.dropped_reports = dropped_reports;
        record.last_seen_ms = now_ms();
        self.store.commit(vec![Op::put_json(Tree::Servers, server.to_string(), &record)]).await?;
        let acked = record.last_seq;
        self.registry.put_record(record);
        Ok(acked)
    }

    /// Signs a fresh certificate for the agent of a live stream. Returns (chain, serial, not_after).
    pub async fn renew(&self, server: &str, agent_id: &str, csr_pem: &str) -> Result<(String, String, i64), HubError> {
        let _server = self.lock_server(server).await;
        let view =
            self.registry.get(server).ok_or_else(|| HubError::NotFound(format!("server {server} was removed")))?;
        let mut record = view.record.clone();
        if record.agent_id != agent_id {
            return Err(HubError::Denied(format!(
                "agent {agent_id} no longer owns server {server}; it was enrolled again"
            )));
        }
        let issued = self.ca.sign_agent(csr_pem, agent_id, self.agent_cert_ttl).map_err(|e| match e {
            SignError::Csr(c) => HubError::Csr(c),
            SignError::Ca(c) => HubError::Internal(c.to_string()),
        })?;
        record.cert_serial = issued.info.serial.clone();
        record.cert_not_after = issued.info.not_after;
        self.store.commit(vec![Op::put_json(Tree::Servers, server.to_string(), &record)]).await?;
        self.registry.put_record(record);
        tracing::info!(server, serial = %issued.info.serial, not_after = issued.info.not_after, "certificate renewed");
        Ok((issued.chain_pem, issued.info.serial, issued.info.not_after))
    }

    /// The last `n` history points of a server, oldest first.
    pub fn history(&self, server: &str, n: usize) -> Result<Vec<HistoryPoint>, HubError> {
        let raw = self.store.scan_prefix_last(Tree::History, &crate::store::history_prefix(server), n)?;
        raw.iter()
            .map(|v| {
                HistoryPoint::decode(v.as_ref())
                    .map_err(|e| HubError::Internal(format!("history of {server} is corrupt: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ill_formed_reports_are_named() {
        let ok = Report { seq: 1, taken_at_ms: 1, health: Some(Health::default()) };
        assert!(validate_report(&ok).is_ok());
        let e = validate_report(&Report { seq: 0, ..ok.clone() }).unwrap_err().to_string();
        assert!(e.contains("seq must be at least 1"), "{e}");
        let e = validate_report(&Report { health: None, ..ok.clone() }).unwrap_err().to_string();
        assert!(e.contains("has no health"), "{e}");
        let h = Health { mem_used_bytes: 2, ..Default::default() };
        let e = validate_report(&Report { health: Some(h), ..ok.clone() }).unwrap_err().to_string();
        assert!(e.contains("exceeds total"), "{e}");
        let h = Health { cpu_percent: f32::NAN, ..Default::default() };
        assert!(validate_report(&Report { health: Some(h), ..ok }).is_err());
    }
}
