//! Servers on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> Servers for KvStore<E> {
    async fn servers(&self) -> Result<Vec<ServerRecord>> {
        let mut out = Vec::new();
        for (name, mut r) in self.all_json::<ServerRecord>(Tree::Servers)? {
            if let Some(p) = self.get(Tree::Progress, name.as_bytes())? {
                apply_progress(&mut r, &p);
            }
            out.push(r);
        }
        let log = self.unfolded();
        out.iter_mut().for_each(|r| log.merge(r));
        Ok(out)
    }

    async fn server(&self, name: &str) -> Result<Option<ServerRecord>> {
        let Some(mut r) = self.get_json::<ServerRecord>(Tree::Servers, name.as_bytes())? else { return Ok(None) };
        if let Some(p) = self.get(Tree::Progress, name.as_bytes())? {
            apply_progress(&mut r, &p);
        }
        self.unfolded().merge(&mut r);
        Ok(Some(r))
    }

    async fn server_of_agent(&self, agent_id: &str) -> Result<Option<ServerRecord>> {
        // A scan: one hub owns a sled store, and its fleet view already maps every agent; this is for
        // completeness, not a path that runs.
        Ok(self.servers().await?.into_iter().find(|r| !agent_id.is_empty() && r.agent_id == agent_id))
    }

    async fn put_server(&self, record: &ServerRecord) -> Result<()> {
        let _gate = self.gate.read().await;
        let record = self.forward(record).await?;
        self.commit_server(&record.name, self.server_ops(&record, true), false).await
    }

    async fn remove_server(&self, name: &str) -> Result<()> {
        let _gate = self.gate.read().await;
        let mut ops = vec![Op::DropTokenOf(name.to_string())];
        // Its reports in the log go too (a fold that has not reached them yet skips a removed server).
        ops.extend(self.unfolded().ids(name).into_iter().map(|id| Op::Del(Tree::Log, log::key(id))));
        let (from, to) = (history_key(name, 0), history_key(name, u64::MAX));
        ops.push(Op::DelRange(Tree::History, from, to));
        ops.push(Op::Del(Tree::Apps, name.as_bytes().to_vec()));
        // Its usage buckets stay (they carry the customer); the counters' cursor goes with the server.
        ops.push(Op::Del(Tree::Usage, cursor_key(name)));
        ops.push(Op::Del(Tree::Progress, name.as_bytes().to_vec()));
        ops.push(Op::Del(Tree::Servers, name.as_bytes().to_vec()));
        self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.commit(ops).await?;
        self.unfolded().forget(name);
        Ok(())
    }
}
