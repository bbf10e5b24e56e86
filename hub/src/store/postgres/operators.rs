//! The `operators` repository on PostgreSQL.

use super::*;

#[async_trait]
impl OperatorStore for PgStore {
    async fn operator_revocations(&self) -> Result<Vec<(String, OperatorRevocation)>> {
        self.all("operator_revocations", "SELECT name, record::text FROM operator_revocations ORDER BY name").await
    }

    async fn revoke_operator(&self, name: &str, revocation: &OperatorRevocation) -> Result<()> {
        self.in_tx(async |tx| {
            tx.execute(
                "INSERT INTO operator_revocations (name, record) VALUES ($1, $2::text::jsonb) \
                 ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                &[&name, &json(revocation)],
            )
            .await
            .map_err(|e| self.err(e))?;
            notify(tx, "operators").await.map_err(|e| self.err(e))
        })
        .await
    }
}
