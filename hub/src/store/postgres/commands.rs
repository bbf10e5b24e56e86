//! The `commands` repository on PostgreSQL.

use super::*;

#[async_trait]
impl Commands for PgStore {
    async fn dispatch_batch(&self, job_id: &str, batch: &[(String, PendingRecord)], plan: PlanUpdate) -> Result<()> {
        self.in_tx(async |tx| {
            let st = tx
                .prepare_cached(
                    "INSERT INTO pending_commands (id, record) VALUES ($1, $2::text::jsonb) \
                     ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                )
                .await
                .map_err(|e| self.err(e))?;
            for (id, r) in batch {
                tx.execute(&st, &[id, &json(r)]).await.map_err(|e| self.err(e))?;
            }
            match &plan {
                PlanUpdate::Remaining(p) => {
                    tx.execute(
                        "INSERT INTO plans (job_id, record) VALUES ($1, $2::text::jsonb) \
                         ON CONFLICT (job_id) DO UPDATE SET record = EXCLUDED.record",
                        &[&job_id, &json(p)],
                    )
                    .await
                }
                PlanUpdate::Done => tx.execute("DELETE FROM plans WHERE job_id = $1", &[&job_id]).await,
            }
            .map_err(|e| self.err(e))?;
            Ok(())
        })
        .await
    }

    async fn finish_command(&self, command_id: &str, hub: &str, result: AuditEntry) -> Result<u64> {
        self.in_tx(async |tx| {
            // The row locked: a claim by another hub lands before this (and is seen) or after (and finds
            // nothing to claim).
            let holder = tx
                .query_opt("SELECT record->>'hub' FROM pending_commands WHERE id = $1 FOR UPDATE", &[&command_id])
                .await
                .map_err(|e| self.err(e))?
                .map(|row| row.get::<_, Option<String>>(0).unwrap_or_default());
            if let Some(holder) = holder.filter(|h| h != hub) {
                return Err(crate::store::taken_over(&format!("command {command_id}"), hub, &holder));
            }
            tx.execute("DELETE FROM pending_commands WHERE id = $1", &[&command_id]).await.map_err(|e| self.err(e))?;
            self.audit_in(tx, result).await
        })
        .await
    }

    async fn finish_job(&self, job_id: &str, hub: &str, skipped: AuditEntry) -> Result<u64> {
        self.in_tx(async |tx| {
            let holder = tx
                .query_opt("SELECT record->>'hub' FROM plans WHERE job_id = $1 FOR UPDATE", &[&job_id])
                .await
                .map_err(|e| self.err(e))?
                .map(|row| row.get::<_, Option<String>>(0).unwrap_or_default());
            if let Some(holder) = holder.filter(|h| h != hub) {
                return Err(crate::store::taken_over(&format!("the plan of job {job_id}"), hub, &holder));
            }
            tx.execute("DELETE FROM plans WHERE job_id = $1", &[&job_id]).await.map_err(|e| self.err(e))?;
            self.audit_in(tx, skipped).await
        })
        .await
    }

    async fn pending_commands(&self) -> Result<Vec<(String, Result<PendingRecord, String>)>> {
        self.each("SELECT id, record::text FROM pending_commands ORDER BY id").await
    }

    async fn claim_commands(&self, from: &str, to: &str) -> Result<crate::store::Claimed> {
        self.in_tx(async |tx| {
            let commands = tx
                .query(
                    "UPDATE pending_commands SET record = jsonb_set(record, '{hub}', to_jsonb($2::text)) \
                     WHERE record->>'hub' = $1 RETURNING id, record::text",
                    &[&from, &to],
                )
                .await
                .map_err(|e| self.err(e))?;
            let plans = tx
                .query(
                    "UPDATE plans SET record = jsonb_set(record, '{hub}', to_jsonb($2::text)) \
                     WHERE record->>'hub' = $1 RETURNING job_id, record::text",
                    &[&from, &to],
                )
                .await
                .map_err(|e| self.err(e))?;
            Ok((decode_rows("pending_commands", &commands)?, decode_rows("plans", &plans)?))
        })
        .await
    }

    async fn plans(&self) -> Result<Vec<(String, Result<PlanRecord, String>)>> {
        self.each("SELECT job_id, record::text FROM plans ORDER BY job_id").await
    }

    async fn set_plan_paused(&self, job_id: &str, paused: bool) -> Result<bool> {
        self.in_tx(async |tx| {
            let n = tx
                .execute(
                    "UPDATE plans SET record = jsonb_set(record, '{paused}', to_jsonb($2::bool)) WHERE job_id = $1",
                    &[&job_id, &paused],
                )
                .await
                .map_err(|e| self.err(e))?;
            Ok(n > 0)
        })
        .await
    }
}
