//! The `tokens` repository on PostgreSQL.

use super::*;

#[async_trait]
impl Tokens for PgStore {
    async fn token(&self, hash: &str) -> Result<TokenState> {
        let rows = self
            .rows(
                "SELECT true, record::text FROM tokens WHERE hash = $1 UNION ALL \
                 SELECT false, record::text FROM burned_tokens WHERE hash = $1",
                &[&hash],
            )
            .await?;
        Ok(match rows.first() {
            None => TokenState::Unknown,
            Some(r) if r.get::<_, bool>(0) => TokenState::Live(decode("tokens", hash, r.get(1))?),
            Some(r) => TokenState::Burned(decode("burned_tokens", hash, r.get(1))?),
        })
    }

    async fn issue_token(&self, hash: &str, token: &TokenRecord, server: &ServerRecord) -> Result<usize> {
        let r = self
            .in_tx(async |tx| {
                // The server's older token goes; the unique index on `server` makes a concurrent issue for
                // the same server wait for this one and then replace it.
                let older = tx
                    .execute("DELETE FROM tokens WHERE server = $1", &[&token.server])
                    .await
                    .map_err(|e| self.err(e))?;
                tx.execute(
                    "INSERT INTO tokens (hash, server, record) VALUES ($1, $2, $3::text::jsonb) \
                     ON CONFLICT (server) DO UPDATE SET hash = EXCLUDED.hash, record = EXCLUDED.record",
                    &[&hash, &token.server, &json(token)],
                )
                .await
                .map_err(|e| self.err(e))?;
                self.upsert_server(tx, server).await?;
                Ok(older as usize)
            })
            .await;
        if r.is_err() {
            self.forget(&server.name);
        }
        r
    }

    async fn enroll(
        &self,
        hash: &str,
        burned: &BurnedToken,
        server: &ServerRecord,
        takeover: Option<AuditEntry>,
    ) -> Result<()> {
        let r = self
            .in_tx(async |tx| {
                // Only one transaction deletes the row: a concurrent enrollment with the same token waits for
                // this one and then finds nothing.
                let taken =
                    tx.execute("DELETE FROM tokens WHERE hash = $1", &[&hash]).await.map_err(|e| self.err(e))?;
                if taken == 0 {
                    return Err(StoreError::Conflict(
                        "this join token was used or replaced a moment ago; it is single-use: create a new one".into(),
                    ));
                }
                tx.execute(
                    "INSERT INTO burned_tokens (hash, record) VALUES ($1, $2::text::jsonb) \
                     ON CONFLICT (hash) DO UPDATE SET record = EXCLUDED.record",
                    &[&hash, &json(burned)],
                )
                .await
                .map_err(|e| self.err(e))?;
                self.upsert_server(tx, server).await?;
                if let Some(e) = takeover {
                    self.audit_in(tx, e).await?;
                }
                Ok(())
            })
            .await;
        if r.is_err() {
            self.forget(&server.name);
        }
        r
    }

    async fn drop_tokens(&self, server: &str) -> Result<usize> {
        Ok(self.exec("DELETE FROM tokens WHERE server = $1", &[&server]).await? as usize)
    }
}
