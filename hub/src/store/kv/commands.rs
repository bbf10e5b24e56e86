//! Pending commands and plans on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> Commands for KvStore<E> {
    async fn dispatch_batch(&self, job_id: &str, batch: &[(String, PendingRecord)], plan: PlanUpdate) -> Result<()> {
        let mut ops: Vec<Op> = batch.iter().map(|(id, r)| put_json(Tree::Pending, id.as_bytes(), r)).collect();
        ops.push(match &plan {
            PlanUpdate::Remaining(p) => put_json(Tree::Plans, job_id, p),
            PlanUpdate::Done => Op::Del(Tree::Plans, job_id.as_bytes().to_vec()),
        });
        self.commit(ops).await
    }

    async fn finish_command(&self, command_id: &str, hub: &str, result: AuditEntry) -> Result<u64> {
        let holder = |r: PendingRecord| r.hub;
        self.finish_held(Tree::Pending, command_id, hub, holder, result).await
    }

    async fn finish_job(&self, job_id: &str, hub: &str, skipped: AuditEntry) -> Result<u64> {
        let holder = |p: PlanRecord| p.hub;
        self.finish_held(Tree::Plans, job_id, hub, holder, skipped).await
    }

    async fn pending_commands(&self) -> Result<Vec<(String, Result<PendingRecord, String>)>> {
        self.each_json(Tree::Pending)
    }

    async fn claim_commands(&self, from: &str, to: &str) -> Result<crate::store::Claimed> {
        // One process owns a sled store; the claim is still what the trait says (for the suite).
        let _queue = self.queue.lock().await;
        let mut ops = Vec::new();
        let mut commands = Vec::new();
        for (id, r) in self.all_json::<PendingRecord>(Tree::Pending)? {
            if r.hub == from {
                let r = PendingRecord { hub: to.to_string(), ..r };
                ops.push(put_json(Tree::Pending, id.as_bytes(), &r));
                commands.push((id, r));
            }
        }
        let mut plans = Vec::new();
        for (id, p) in self.all_json::<PlanRecord>(Tree::Plans)? {
            if p.hub == from {
                let p = PlanRecord { hub: to.to_string(), ..p };
                ops.push(put_json(Tree::Plans, id.as_bytes(), &p));
                plans.push((id, p));
            }
        }
        if !ops.is_empty() {
            self.commit(ops).await?;
        }
        Ok((commands, plans))
    }

    async fn plans(&self) -> Result<Vec<(String, Result<PlanRecord, String>)>> {
        self.each_json(Tree::Plans)
    }

    async fn set_plan_paused(&self, job_id: &str, paused: bool) -> Result<bool> {
        let _queue = self.queue.lock().await;
        let Some((_, p)) = self.all_json::<PlanRecord>(Tree::Plans)?.into_iter().find(|(id, _)| id == job_id) else {
            return Ok(false);
        };
        self.commit(vec![put_json(Tree::Plans, job_id.as_bytes(), &PlanRecord { paused, ..p })]).await?;
        Ok(true)
    }
}
