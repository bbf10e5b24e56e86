//! Revoked serials on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> Revocations for KvStore<E> {
    async fn revoked_serials(&self) -> Result<Vec<String>> {
        Ok(self.all_json::<Revoked>(Tree::Revoked)?.into_iter().map(|(k, _)| k).collect())
    }

    async fn revoke_identity(&self, server: &ServerRecord, serials: &[String], by: &Revoked) -> Result<()> {
        let mut ops: Vec<Op> = serials.iter().map(|s| put_json(Tree::Revoked, s.clone(), by)).collect();
        let _gate = self.gate.read().await;
        ops.extend(self.server_ops(&self.forward(server).await?, true));
        self.commit_server(&server.name, ops, false).await
    }
}
