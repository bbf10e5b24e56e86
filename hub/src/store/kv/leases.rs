//! Leases on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> crate::store::Leases for KvStore<E> {
    async fn hold_lease(&self, name: &str, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<bool> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let held = leases.get(name).is_some_and(|(h, until)| h != holder && *until >= now_ms);
        if !held {
            leases.insert(name.to_string(), (holder.to_string(), now_ms + ttl_ms));
        }
        Ok(!held)
    }
}

#[async_trait]
impl<E: Engine> crate::store::Snapshot for KvStore<E> {
    async fn snapshot(&self, out: &std::path::Path) -> Result<u64> {
        // A copy of a large store takes a while: off the async threads' turn, where the runtime allows it.
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(|| self.engine.snapshot(out)),
            _ => self.engine.snapshot(out),
        }
    }
}
