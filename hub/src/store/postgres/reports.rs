//! The `reports` repository on PostgreSQL.

use super::*;

#[async_trait]
impl Reports for PgStore {
    async fn record_report(&self, server: &ServerRecord, seq: u64, point: Vec<u8>, keep: u32) -> Result<()> {
        // One statement, so one implicit transaction and one round trip: the point, the trim (every
        // TRIM_EVERY reports), the progress.
        let keep = u64::from(keep);
        let trim_below = if seq > keep && seq.is_multiple_of(TRIM_EVERY) { (seq + 1 - keep) as i64 } else { 0 };
        let ctes = "WITH p AS (INSERT INTO history (server, seq, point) VALUES ($1, $8, $9) \
                    ON CONFLICT (server, seq) DO UPDATE SET point = EXCLUDED.point), \
                    t AS (DELETE FROM history WHERE server = $1 AND seq < $10)";
        self.with_progress(server, ctes, &[&(seq as i64), &point, &trim_below]).await
    }

    async fn report(&self, server: &str, seq: u64) -> Result<Option<Vec<u8>>> {
        let rows =
            self.rows("SELECT point FROM history WHERE server = $1 AND seq = $2", &[&server, &(seq as i64)]).await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    async fn history(&self, server: &str, n: usize) -> Result<Vec<Vec<u8>>> {
        let rows = self
            .rows(
                "SELECT point FROM (SELECT seq, point FROM history WHERE server = $1 ORDER BY seq DESC LIMIT $2) p \
                 ORDER BY seq",
                &[&server, &(n as i64)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn record_apps(&self, server: &ServerRecord, _seq: u64, apps: Vec<u8>) -> Result<()> {
        let ctes = "WITH s AS (INSERT INTO apps (server, state) VALUES ($1, $8) ON CONFLICT (server) DO UPDATE SET state = EXCLUDED.state)";
        self.with_progress(server, ctes, &[&apps]).await
    }

    async fn apps(&self, server: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.rows("SELECT state FROM apps WHERE server = $1", &[&server]).await?.first().map(|r| r.get(0)))
    }
}
