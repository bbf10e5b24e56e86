//! The `queue` repository on PostgreSQL.

use super::*;

#[async_trait]
impl Queue for PgStore {
    async fn submit_job(&self, mut job: QueuedJob, mut audit: AuditEntry) -> Result<Submitted> {
        self.in_tx(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_QUEUE]).await.map_err(|e| self.err(e))?;
            if !job.idempotency_key.is_empty() {
                let row = tx
                    .query_opt("SELECT record::text FROM jobs WHERE idempotency_key = $1", &[&job.idempotency_key])
                    .await
                    .map_err(|e| self.err(e))?;
                if let Some(row) = row {
                    let existing: QueuedJob = decode("jobs", &job.idempotency_key, row.get(0))?;
                    return crate::store::queue_rules::reused_key(existing, &job);
                }
            }
            let id: i64 = tx.query_one("SELECT nextval('job_ids')", &[]).await.map_err(|e| self.err(e))?.get(0);
            job.id = id as u64;
            job.state = JobState::Pending;
            audit.job_id = job.id.to_string();
            self.put_job(tx, &job).await?;
            self.audit_in(tx, audit).await?;
            Ok(Submitted::New(job))
        })
        .await
    }

    async fn claim_job(&self, owner: &str, now_ms: i64, lease_ms: i64) -> Result<Option<QueuedJob>> {
        self.in_tx(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_QUEUE]).await.map_err(|e| self.err(e))?;
            let rows = tx.query("SELECT id, record::text FROM jobs WHERE open", &[]).await.map_err(|e| self.err(e))?;
            let open = rows
                .iter()
                .map(|row| decode::<QueuedJob>("jobs", &row.get::<_, i64>(0).to_string(), row.get(1)))
                .collect::<Result<Vec<_>>>()?;
            let Some(job) = crate::store::queue_rules::claim(open, owner, now_ms, lease_ms) else { return Ok(None) };
            self.put_job(tx, &job).await?;
            Ok(Some(job))
        })
        .await
    }

    async fn update_job(&self, job: &QueuedJob, owner: &str, audit: Option<AuditEntry>) -> Result<()> {
        self.in_tx(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_QUEUE]).await.map_err(|e| self.err(e))?;
            let job = crate::store::queue_rules::update(self.job_in(tx, job.id).await?, job, owner)?;
            self.put_job(tx, &job).await?;
            if let Some(audit) = audit {
                self.audit_in(tx, audit).await?;
            }
            Ok(())
        })
        .await
    }

    async fn cancel_job(&self, id: u64, audit: AuditEntry) -> Result<Option<QueuedJob>> {
        self.in_tx(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_QUEUE]).await.map_err(|e| self.err(e))?;
            let Some(mut job) = self.job_in(tx, id).await? else { return Ok(None) };
            if !crate::store::queue_rules::cancel(&mut job, outpost_common::now_ms()) {
                return Ok(Some(job));
            }
            self.put_job(tx, &job).await?;
            self.audit_in(tx, audit).await?;
            Ok(Some(job))
        })
        .await
    }

    async fn job(&self, id: u64) -> Result<Option<QueuedJob>> {
        let rows = self.rows("SELECT record::text FROM jobs WHERE id = $1", &[&(id as i64)]).await?;
        rows.first().map(|r| decode("jobs", &id.to_string(), r.get(0))).transpose()
    }

    async fn jobs(&self, limit: usize) -> Result<Vec<QueuedJob>> {
        let limit = if limit == 0 { i64::MAX } else { limit as i64 };
        let rows = self.rows("SELECT id, record::text FROM jobs ORDER BY id DESC LIMIT $1", &[&limit]).await?;
        rows.iter().map(|r| decode("jobs", &r.get::<_, i64>(0).to_string(), r.get(1))).collect()
    }

    async fn trim_jobs(&self, cutoff_ms: i64) -> Result<usize> {
        self.in_tx(async |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_QUEUE]).await.map_err(|e| self.err(e))?;
            let n = tx
                .execute("DELETE FROM jobs WHERE NOT open AND (record->>'finished_ms')::bigint < $1", &[&cutoff_ms])
                .await
                .map_err(|e| self.err(e))?;
            Ok(n as usize)
        })
        .await
    }
}
