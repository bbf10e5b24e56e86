//! Join tokens and enrollment on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> Tokens for KvStore<E> {
    async fn token(&self, hash: &str) -> Result<TokenState> {
        if let Some(t) = self.get_json(Tree::Tokens, hash.as_bytes())? {
            return Ok(TokenState::Live(t));
        }
        Ok(self.get_json(Tree::Burned, hash.as_bytes())?.map_or(TokenState::Unknown, TokenState::Burned))
    }

    async fn issue_token(&self, hash: &str, token: &TokenRecord, server: &ServerRecord) -> Result<usize> {
        // Found through the index, replaced by the writer: no scan of the tokens, no lock held across the
        // commit (thousands of servers enrolling at once must not queue behind each other's writes).
        let older = usize::from(self.has_token(&token.server)?);
        let token_json = serde_json::to_vec(token).expect("store records serialise");
        let mut ops =
            vec![Op::ReplaceToken { server: token.server.clone(), hash: hash.to_string(), token: token_json }];
        ops.extend(self.server_ops(server, true));
        let _gate = self.gate.read().await;
        self.commit_server(&server.name, ops, false).await?;
        Ok(older)
    }

    async fn enroll(
        &self,
        hash: &str,
        burned: &BurnedToken,
        server: &ServerRecord,
        takeover: Option<AuditEntry>,
    ) -> Result<()> {
        // Burning the token comes first and fails the whole batch when it is not live any more: single use
        // is the writer's, with no lock held across the commit. Then the takeover's audit record, before
        // the enrollment it records.
        let mut ops = vec![Op::TakeToken { server: burned.server.clone(), hash: hash.to_string() }];
        ops.extend(takeover.map(|e| self.audit_record(e).1));
        ops.push(put_json(Tree::Burned, hash, burned));
        ops.extend(self.server_ops(server, true));
        let _gate = self.gate.read().await;
        self.commit_server(&server.name, ops, false).await
    }

    async fn drop_tokens(&self, server: &str) -> Result<usize> {
        let n = usize::from(self.has_token(server)?);
        self.commit(vec![Op::DropTokenOf(server.to_string())]).await?;
        Ok(n)
    }
}
