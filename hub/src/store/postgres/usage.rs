//! The `usage` repository on PostgreSQL.

use super::*;

fn decode_bucket(key: &str, v: &[u8]) -> Result<UsageBucket> {
    use prost::Message as _;
    UsageBucket::decode(v).map_err(|e| StoreError::Corrupt {
        table: "usage_buckets",
        key: key.to_string(),
        error: e.to_string(),
    })
}

#[async_trait]
impl Usage for PgStore {
    async fn usage_cursor(&self, server: &str) -> Result<Option<UsageCursor>> {
        let rows = self.rows("SELECT cursor::text FROM usage_cursors WHERE server = $1", &[&server]).await?;
        rows.first().map(|r| decode("usage_cursors", server, r.get(0))).transpose()
    }

    async fn usage_bucket(
        &self,
        res: Resolution,
        start_ms: i64,
        customer: &str,
        server: &str,
    ) -> Result<Option<UsageBucket>> {
        let rows = self
            .rows(
                "SELECT bucket FROM usage_buckets WHERE res = $1 AND start_ms = $2 AND customer = $3 AND server = $4",
                &[&res_key(res), &start_ms, &customer, &server],
            )
            .await?;
        rows.first().map(|r| decode_bucket(server, r.get(0))).transpose()
    }

    async fn record_usage(
        &self,
        server: &ServerRecord,
        cursor: &UsageCursor,
        buckets: &[(Resolution, i64, UsageBucket)],
    ) -> Result<()> {
        use prost::Message as _;
        let record = self.record_to_write(server, false);
        let [a, b, c, d, e] = progress(server);
        let r = self
            .in_tx(async |tx| {
                let st = tx
                    .prepare_cached(
                        "INSERT INTO usage_buckets (res, start_ms, customer, server, bucket) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (res, start_ms, customer, server) DO UPDATE SET bucket = EXCLUDED.bucket",
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                for (res, start, bucket) in buckets {
                    let params: [&(dyn ToSql + Sync); 5] =
                        [&res_key(*res), start, &bucket.customer, &server.name, &bucket.encode_to_vec()];
                    tx.execute(&st, &params).await.map_err(|e| self.err(e))?;
                }
                tx.execute(
                    "INSERT INTO usage_cursors (server, cursor) VALUES ($1, $2::text::jsonb) \
                     ON CONFLICT (server) DO UPDATE SET cursor = EXCLUDED.cursor",
                    &[&server.name, &json(cursor)],
                )
                .await
                .map_err(|e| self.err(e))?;
                let st = tx.prepare_cached(UPDATE_PROGRESS).await.map_err(|e| self.err(e))?;
                let moved = match &record {
                    None => tx.execute(&st, &[&server.name, &record, &a, &b, &c, &d, &e]).await.map_err(|e| self.err(e))?,
                    Some(_) => 0,
                };
                if moved == 0 {
                    self.upsert_server(tx, server).await?;
                }
                Ok(())
            })
            .await;
        if r.is_err() {
            self.forget(&server.name);
        }
        r
    }

    async fn usage_between(
        &self,
        res: Resolution,
        from_ms: i64,
        to_ms: i64,
        customer: Option<&str>,
    ) -> Result<Vec<(i64, String, UsageBucket)>> {
        let rows = self
            .rows(
                "SELECT start_ms, server, bucket FROM usage_buckets WHERE res = $1 AND start_ms >= $2 AND start_ms < $3 \
                 AND ($4::text IS NULL OR customer = $4) ORDER BY start_ms, customer, server",
                &[&res_key(res), &from_ms, &to_ms, &customer],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let server: String = r.get(1);
                let bucket = decode_bucket(&server, r.get(2))?;
                Ok((r.get(0), server, bucket))
            })
            .collect()
    }

    async fn trim_usage(&self, res: Resolution, cutoff_ms: i64) -> Result<usize> {
        let n = self
            .exec("DELETE FROM usage_buckets WHERE res = $1 AND start_ms < $2", &[&res_key(res), &cutoff_ms])
            .await?;
        Ok(n as usize)
    }
}
