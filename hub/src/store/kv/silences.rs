//! Silences and firing alerts on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> Silences for KvStore<E> {
    async fn put_silence(&self, id: &str, silence: &SilenceRecord, audit: AuditEntry) -> Result<()> {
        let (_, audit_op) = self.audit_record(audit);
        self.commit(vec![audit_op, put_json(Tree::Silences, id, silence)]).await
    }

    async fn silences(&self) -> Result<Vec<(String, SilenceRecord)>> {
        self.all_json(Tree::Silences)
    }

    async fn put_alert(&self, key: &str, alert: Option<&AlertRecord>) -> Result<()> {
        // Under a lock, so the acknowledgement read is the one the write replaces.
        let _alerts = self.alerts.lock().await;
        let op = match alert {
            Some(a) if a.acked_by.is_empty() => match self.get_json::<AlertRecord>(Tree::Alerts, key.as_bytes()) {
                Ok(Some(stored)) if !stored.acked_by.is_empty() => {
                    put_json(Tree::Alerts, key, &AlertRecord { acked_by: stored.acked_by, ..a.clone() })
                }
                _ => put_json(Tree::Alerts, key, a),
            },
            Some(a) => put_json(Tree::Alerts, key, a),
            None => Op::Del(Tree::Alerts, key.as_bytes().to_vec()),
        };
        self.commit(vec![op]).await
    }

    async fn firing_alerts(&self) -> Result<Vec<(String, AlertRecord)>> {
        self.all_json(Tree::Alerts)
    }
}
