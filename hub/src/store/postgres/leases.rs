//! The `leases` repository on PostgreSQL.

use super::*;

#[async_trait]
impl crate::store::Leases for PgStore {
    async fn hold_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool> {
        let rows = self
            .rows(
                "INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
                 SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms \
                 WHERE leases.holder = EXCLUDED.holder OR leases.until_ms < $4 RETURNING holder",
                &[&name, &holder, &(now_ms + ttl_ms), &now_ms],
            )
            .await?;
        Ok(!rows.is_empty())
    }
}

#[async_trait]
impl crate::store::Snapshot for PgStore {
    async fn snapshot(&self, _out: &std::path::Path) -> crate::store::Result<u64> {
        Err(crate::store::StoreError::Write(
            "the hub's store is PostgreSQL: back it up with pg_dump, and DATA/ca and hubd.toml with it (README, \"Backup and restore\")".into(),
        ))
    }
}
