//! The lifecycle job queue on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> Queue for KvStore<E> {
    async fn submit_job(&self, mut job: QueuedJob, mut audit: AuditEntry) -> Result<Submitted> {
        let _queue = self.queue.lock().await;
        if !job.idempotency_key.is_empty()
            && let Some(id) = self.get(Tree::QueueKeys, job.idempotency_key.as_bytes())?
        {
            let id = <[u8; 8]>::try_from(id.as_slice()).map(u64::from_be_bytes).unwrap_or_default();
            let Some(existing) = self.job(id).await? else {
                return Err(StoreError::Corrupt {
                    table: "queue_keys",
                    key: job.idempotency_key.clone(),
                    error: format!("names job {id}, which does not exist"),
                });
            };
            return crate::store::queue_rules::reused_key(existing, &job);
        }
        job.id = self.queue_next.fetch_add(1, Ordering::Relaxed);
        job.state = crate::store::JobState::Pending;
        audit.job_id = job.id.to_string();
        let (_, audit_op) = self.audit_record(audit);
        let mut ops = vec![audit_op];
        ops.extend(job_ops(&job));
        if !job.idempotency_key.is_empty() {
            ops.push(Op::Put(Tree::QueueKeys, job.idempotency_key.clone().into_bytes(), job.id.to_be_bytes().to_vec()));
        }
        self.commit(ops).await?;
        Ok(Submitted::New(job))
    }

    async fn claim_job(&self, owner: &str, now_ms: i64, lease_ms: i64) -> Result<Option<QueuedJob>> {
        let _queue = self.queue.lock().await;
        let mut open = Vec::new();
        for (key, _) in self.pairs(Tree::QueueOpen, ALL_KEYS, false, usize::MAX)? {
            open.extend(self.get_json::<QueuedJob>(Tree::Queue, &key)?);
        }
        let Some(job) = crate::store::queue_rules::claim(open, owner, now_ms, lease_ms) else { return Ok(None) };
        self.commit(job_ops(&job)).await?;
        Ok(Some(job))
    }

    async fn update_job(&self, job: &QueuedJob, owner: &str, audit: Option<AuditEntry>) -> Result<()> {
        let _queue = self.queue.lock().await;
        let job = crate::store::queue_rules::update(self.job(job.id).await?, job, owner)?;
        let mut ops = Vec::new();
        if let Some(audit) = audit {
            ops.push(self.audit_record(audit).1);
        }
        ops.extend(job_ops(&job));
        self.commit(ops).await
    }

    async fn cancel_job(&self, id: u64, audit: AuditEntry) -> Result<Option<QueuedJob>> {
        let _queue = self.queue.lock().await;
        let Some(mut job) = self.job(id).await? else { return Ok(None) };
        if !crate::store::queue_rules::cancel(&mut job, outpost_common::now_ms()) {
            return Ok(Some(job));
        }
        let mut ops = vec![self.audit_record(audit).1];
        ops.extend(job_ops(&job));
        self.commit(ops).await?;
        Ok(Some(job))
    }

    async fn job(&self, id: u64) -> Result<Option<QueuedJob>> {
        self.get_json(Tree::Queue, &id.to_be_bytes())
    }

    async fn trim_jobs(&self, cutoff_ms: i64) -> Result<usize> {
        let _queue = self.queue.lock().await;
        let mut ops = Vec::new();
        for (k, v) in self.pairs(Tree::Queue, ALL_KEYS, false, usize::MAX)? {
            let job: QueuedJob = decode(Tree::Queue, &k, &v)?;
            if job.state.is_final() && job.finished_ms < cutoff_ms {
                ops.push(Op::Del(Tree::Queue, k));
                if !job.idempotency_key.is_empty() {
                    ops.push(Op::Del(Tree::QueueKeys, job.idempotency_key.into_bytes()));
                }
            }
        }
        let n = ops.iter().filter(|o| matches!(o, Op::Del(Tree::Queue, _))).count();
        if n > 0 {
            self.commit(ops).await?;
        }
        Ok(n)
    }

    async fn jobs(&self, limit: usize) -> Result<Vec<QueuedJob>> {
        let mut out = Vec::new();
        let limit = if limit == 0 { usize::MAX } else { limit };
        for (k, v) in self.pairs(Tree::Queue, ALL_KEYS, true, limit)? {
            out.push(decode(Tree::Queue, &k, &v)?);
        }
        Ok(out)
    }
}
