//! The `revocations` repository on PostgreSQL.

use super::*;

#[async_trait]
impl Revocations for PgStore {
    async fn revoked_serials(&self) -> Result<Vec<String>> {
        Ok(self.rows("SELECT serial FROM revoked_serials", &[]).await?.iter().map(|r| r.get(0)).collect())
    }

    async fn revoke_identity(&self, server: &ServerRecord, serials: &[String], by: &Revoked) -> Result<()> {
        let r = self
            .in_tx(async |tx| {
                for s in serials {
                    tx.execute(
                        "INSERT INTO revoked_serials (serial, record) VALUES ($1, $2::text::jsonb) \
                         ON CONFLICT (serial) DO UPDATE SET record = EXCLUDED.record",
                        &[s, &json(by)],
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                }
                notify(tx, "revoked").await.map_err(|e| self.err(e))?;
                self.upsert_server(tx, server).await
            })
            .await;
        if r.is_err() {
            self.forget(&server.name);
        }
        r
    }
}
