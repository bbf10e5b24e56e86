//! The `silences` repository on PostgreSQL.

use super::*;

#[async_trait]
impl Silences for PgStore {
    async fn put_alert(&self, key: &str, alert: Option<&AlertRecord>) -> Result<()> {
        match alert {
            Some(a) => {
                self.exec(
                    "INSERT INTO alerts (key, record) VALUES ($1, $2::text::jsonb) \
                     ON CONFLICT (key) DO UPDATE SET record = CASE \
                       WHEN coalesce(EXCLUDED.record->>'acked_by', '') = '' \
                        AND coalesce(alerts.record->>'acked_by', '') <> '' \
                       THEN jsonb_set(EXCLUDED.record, '{acked_by}', alerts.record->'acked_by') \
                       ELSE EXCLUDED.record END",
                    &[&key, &json(a)],
                )
                .await
            }
            None => self.exec("DELETE FROM alerts WHERE key = $1", &[&key]).await,
        }
        .map(drop)
    }

    async fn firing_alerts(&self) -> Result<Vec<(String, AlertRecord)>> {
        self.all("alerts", "SELECT key, record::text FROM alerts ORDER BY key").await
    }

    async fn put_silence(&self, id: &str, silence: &SilenceRecord, audit: AuditEntry) -> Result<()> {
        self.in_tx(async |tx| {
            tx.execute(
                "INSERT INTO silences (id, record) VALUES ($1, $2::text::jsonb) \
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                &[&id, &json(silence)],
            )
            .await
            .map_err(|e| self.err(e))?;
            notify(tx, "silences").await.map_err(|e| self.err(e))?;
            self.audit_in(tx, audit).await.map(drop)
        })
        .await
    }

    async fn silences(&self) -> Result<Vec<(String, SilenceRecord)>> {
        self.all("silences", "SELECT id, record::text FROM silences ORDER BY id").await
    }
}
