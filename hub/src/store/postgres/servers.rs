//! The `servers` repository on PostgreSQL.

use super::*;

#[async_trait]
impl Servers for PgStore {
    async fn servers(&self) -> Result<Vec<ServerRecord>> {
        let rows = self.rows(&format!("SELECT {SERVER_COLUMNS} FROM servers ORDER BY name"), &[]).await?;
        rows.iter().map(server_row).collect()
    }

    async fn server(&self, name: &str) -> Result<Option<ServerRecord>> {
        let rows = self.rows(&format!("SELECT {SERVER_COLUMNS} FROM servers WHERE name = $1"), &[&name]).await?;
        rows.first().map(server_row).transpose()
    }

    async fn server_of_agent(&self, agent_id: &str) -> Result<Option<ServerRecord>> {
        let sql = format!("SELECT {SERVER_COLUMNS} FROM servers WHERE record->>'agent_id' = $1 AND $1 <> ''");
        self.rows(&sql, &[&agent_id]).await?.first().map(server_row).transpose()
    }

    async fn put_server(&self, record: &ServerRecord) -> Result<()> {
        let r = self.in_tx(async |tx| self.upsert_server(tx, record).await).await;
        if r.is_err() {
            self.forget(&record.name);
        }
        r
    }

    async fn remove_server(&self, name: &str) -> Result<()> {
        self.forget(name);
        self.in_tx(async |tx| {
            for sql in [
                "DELETE FROM tokens WHERE server = $1",
                "DELETE FROM history WHERE server = $1",
                "DELETE FROM apps WHERE server = $1",
                "DELETE FROM usage_cursors WHERE server = $1",
                "DELETE FROM servers WHERE name = $1",
            ] {
                tx.execute(sql, &[&name]).await.map_err(|e| self.err(e))?;
            }
            notify(tx, "removed").await.map_err(|e| self.err(e))
        })
        .await
    }
}
