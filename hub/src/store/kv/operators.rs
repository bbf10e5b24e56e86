//! Operator revocations on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> OperatorStore for KvStore<E> {
    async fn operator_revocations(&self) -> Result<Vec<(String, OperatorRevocation)>> {
        self.all_json(Tree::Operators)
    }

    async fn revoke_operator(&self, name: &str, revocation: &OperatorRevocation) -> Result<()> {
        self.commit(vec![put_json(Tree::Operators, name, revocation)]).await
    }
}
