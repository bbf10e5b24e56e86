//! Storing reports (idempotent on `(agent_id, seq)`) and renewing certificates over the live stream.

use outpost_proto::v1::{Health, Hello, HistoryPoint, Report};
use prost::Message;

use crate::ca::SignError;
use crate::error::HubError;
use crate::state::HubState;
use crate::store::{Op, Tree, history_key, now_ms};

/// History is trimmed once per this many reports of a server.
const TRIM_EVERY: u64 = 32;

/// Checks a report before anything is stored (the same code the agent checks its samples with).
pub fn validate_report(r: &Report) -> Result<&Health, HubError> {
    outpost_common::report::validate(r, now_ms()).map_err(HubError::Invalid)
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
            // Already stored: idempotent. The same seq with other content is a broken or hostile agent; the
            // first one stays.
            if let Ok(Some(stored)) = self.store.get_raw(Tree::History, &history_key(server, report.seq))
                && HistoryPoint::decode(stored.as_ref()).ok().and_then(|p| p.health).as_ref() != Some(&health)
                && let Some(repeated) = self.log_limit.allow("duplicate seq, other content", server)
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

    /// Notes a new stream of `server`, opened with certificate `serial` (its Hello already checked with
    /// `common::report::validate_hello`): the connection counter, the agent's
    /// counters from Hello and, when the agent uses its renewed certificate for the first time, the end of
    /// the one it replaced.
    pub async fn note_connect(&self, server: &str, serial: &str, hello: &Hello) -> Result<u64, HubError> {
        let _server = self.lock_server(server).await;
        let view =
            self.registry.get(server).ok_or_else(|| HubError::NotFound(format!("server {server} was removed")))?;
        let mut record = view.record.clone();
        // Checked again under the lock: a revocation or renewal may have come in between.
        self.check_serial(&record, serial)?;
        record.connections += 1;
        record.dropped_reports = hello.dropped_reports;
        record.refused_reports = hello.refused_reports;
        record.log_files = hello.log_files.clone();
        record.last_seen_ms = now_ms();
        // The agent uses its renewed certificate: the one it replaced is dead from now on (it is not the
        // current or the previous serial any more; no denylist entry is needed).
        if serial == record.cert_serial {
            record.prev_serial.clear();
        }
        self.store.commit(vec![Op::put_json(Tree::Servers, server.to_string(), &record)]).await?;
        let acked = record.last_seq;
        self.registry.put_record(record);
        Ok(acked)
    }

    /// Signs a fresh certificate for the agent of a live stream. Returns (chain, not_after).
    ///
    /// The new certificate becomes the identity's current one and the one it replaces stays valid until the
    /// new one is first used (the answer may be lost on the way); every older certificate stops working, so
    /// a burst of renewals leaves two valid certificates, not one per renewal. The stream itself was checked
    /// when it opened and is closed on revocation or re-enrollment, so a long-lived stream may renew again
    /// after the certificate it opened with was replaced.
    pub async fn renew(&self, server: &str, agent_id: &str, csr_pem: &str) -> Result<(String, i64), HubError> {
        let _server = self.lock_server(server).await;
        let view =
            self.registry.get(server).ok_or_else(|| HubError::NotFound(format!("server {server} was removed")))?;
        let mut record = view.record.clone();
        if record.agent_id != agent_id {
            return Err(HubError::Denied(format!(
                "agent {agent_id} no longer owns server {server}; it was enrolled again"
            )));
        }
        if record.revoked_ms != 0 {
            return Err(HubError::Denied(format!(
                "the identity of server {server} was revoked at {}; enroll again with a new join token",
                crate::error::rfc3339_ms(record.revoked_ms)
            )));
        }
        let issued = self.ca.sign_agent(csr_pem, agent_id, self.agent_cert_ttl).map_err(|e| match e {
            SignError::Csr(c) => HubError::Csr(c),
            SignError::Ca(c) => HubError::Internal(c.to_string()),
        })?;
        // The identity accepts only its current and previous serial: what came before is dead from now on.
        record.prev_serial = std::mem::take(&mut record.cert_serial);
        record.cert_serial = issued.info.serial.clone();
        record.cert_not_after = issued.info.not_after;
        self.store.commit(vec![Op::put_json(Tree::Servers, server.to_string(), &record)]).await?;
        self.registry.put_record(record);
        tracing::info!(server, serial = %issued.info.serial, not_after = issued.info.not_after, "certificate renewed");
        Ok((issued.chain_pem, issued.info.not_after))
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
