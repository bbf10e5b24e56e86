//! Usage rollups on the embedded store.

use super::*;

#[async_trait]
impl<E: Engine> Usage for KvStore<E> {
    async fn usage_cursor(&self, server: &str) -> Result<Option<UsageCursor>> {
        self.get_json(Tree::Usage, &cursor_key(server))
    }

    async fn usage_bucket(
        &self,
        res: Resolution,
        start_ms: i64,
        customer: &str,
        server: &str,
    ) -> Result<Option<UsageBucket>> {
        let key = usage_key(res, start_ms, customer, server);
        match self.get(Tree::Usage, &key)? {
            None => Ok(None),
            Some(v) => decode_bucket(&key, &v).map(Some),
        }
    }

    async fn record_usage(
        &self,
        server: &ServerRecord,
        cursor: &UsageCursor,
        buckets: &[(Resolution, i64, UsageBucket)],
    ) -> Result<()> {
        use prost::Message as _;
        let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = buckets
            .iter()
            .map(|(res, start, b)| (usage_key(*res, *start, &b.customer, &server.name), b.encode_to_vec()))
            .collect();
        pairs.push((cursor_key(&server.name), serde_json::to_vec(cursor).expect("store records serialise")));
        // The usage in one atomic batch, then the high-water mark: a crash between the two replays the
        // report, and the cursor's seq says it was counted already.
        self.append(server, vec![Op::Atomic(Tree::Usage, pairs)], None).await
    }

    async fn usage_between(
        &self,
        res: Resolution,
        from_ms: i64,
        to_ms: i64,
        customer: Option<&str>,
    ) -> Result<Vec<(i64, String, UsageBucket)>> {
        let mut out = Vec::new();
        let (from, to) = (usage_time_key(res, from_ms), usage_time_key(res, to_ms));
        for (k, v) in self.pairs(Tree::Usage, (Bound::Included(&from), Bound::Excluded(&to)), false, usize::MAX)? {
            let Some(rest) = k.get(9..) else { continue };
            let Some(zero) = rest.iter().position(|b| *b == 0) else { continue };
            if customer.is_some_and(|c| c.as_bytes() != &rest[..zero]) {
                continue;
            }
            let start = u64::from_be_bytes(k[1..9].try_into().expect("9 bytes checked")) as i64;
            let server = String::from_utf8_lossy(&rest[zero + 1..]).into_owned();
            out.push((start, server, decode_bucket(&k, &v)?));
        }
        Ok(out)
    }

    async fn trim_usage(&self, res: Resolution, cutoff_ms: i64) -> Result<usize> {
        let (from, to) = (usage_time_key(res, 0), usage_time_key(res, cutoff_ms));
        let mut n = 0;
        self.engine.scan(Tree::Usage, (Bound::Included(&from), Bound::Excluded(&to)), false, &mut |_, _| {
            n += 1;
            true
        })?;
        if n > 0 {
            self.commit(vec![Op::DelRange(Tree::Usage, from, to)]).await?;
        }
        Ok(n)
    }
}
