//! The `audit` repository on PostgreSQL.

use super::*;

#[async_trait]
impl AuditLog for PgStore {
    async fn append_audit(&self, entry: AuditEntry) -> Result<u64> {
        self.in_tx(async |tx| self.audit_in(tx, entry).await).await
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let rows = self
            .rows(
                "SELECT id, at_ms, entry::text FROM audit WHERE ($1::bigint = 0 OR at_ms >= $1) \
                 AND ($2::bigint = 0 OR at_ms <= $2) AND ($3::text = '' OR entry->>'operator' = $3) \
                 AND ($4::text = '' OR entry->>'action' = $4) AND ($5::text = '' OR entry->'servers' ? $5) \
                 ORDER BY id DESC LIMIT $6::bigint",
                &[&q.since_ms, &q.until_ms, &q.operator, &q.action, &q.server, &(q.limit.max(1) as i64).min(SCAN_MAX)],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.get(0);
            let mut e: AuditEntry = decode("audit", &id.to_string(), row.get(2))?;
            (e.id, e.at_ms) = (id as u64, row.get(1));
            if q.matches(&e) {
                out.push(e);
            }
        }
        Ok(out)
    }

    async fn trim_audit(&self, cutoff_ms: i64) -> Result<usize> {
        let n =
            self.exec("DELETE FROM audit WHERE at_ms < $1 AND id < (SELECT max(id) FROM audit)", &[&cutoff_ms]).await?;
        Ok(n as usize)
    }
}
