//! The audit log on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> AuditLog for KvStore<E> {
    async fn append_audit(&self, entry: AuditEntry) -> Result<u64> {
        let (id, op) = self.audit_record(entry);
        self.commit(vec![op]).await?;
        Ok(id)
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        let (mut seen, mut bad) = (0, None);
        self.engine.scan(Tree::Audit, ALL_KEYS, true, &mut |k, v| {
            seen += 1;
            let e: AuditEntry = match decode(Tree::Audit, k, v) {
                Ok(e) => e,
                Err(e) => {
                    bad = Some(e);
                    return false;
                }
            };
            if q.since_ms > 0 && e.at_ms < q.since_ms {
                return false; // ids grow with time: everything further is older
            }
            if q.matches(&e) {
                out.push(e);
            }
            out.len() < q.limit && seen < SCAN_MAX
        })?;
        bad.map_or(Ok(out), Err)
    }

    async fn trim_audit(&self, cutoff_ms: i64) -> Result<usize> {
        let Some((newest, _)) = self.pairs(Tree::Audit, ALL_KEYS, true, 1)?.pop() else { return Ok(0) };
        let mut n = 0;
        loop {
            let mut ops = Vec::new();
            for (k, v) in self.pairs(Tree::Audit, ALL_KEYS, false, 1000)? {
                let at = serde_json::from_slice::<AuditEntry>(&v).map(|e| e.at_ms).unwrap_or(0);
                if at >= cutoff_ms || k == newest {
                    break;
                }
                ops.push(Op::Del(Tree::Audit, k));
            }
            if ops.is_empty() {
                return Ok(n);
            }
            n += ops.len();
            self.commit(ops).await?;
        }
    }
}
