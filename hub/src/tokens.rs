//! Join tokens: created for a named server record, single use, TTL, stored only as a hash, burned on use.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_common::JoinToken;
use outpost_common::cert::{hex, valid_name};

use crate::ca::random_bytes;
use crate::error::HubError;
use crate::state::HubState;
use crate::store::{Op, ServerRecord, TokenRecord, Tree, now_ms};

pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_LABELS: usize = 32;

/// What an admin asks for.
#[derive(Clone, Debug, Default)]
pub struct TokenRequest {
    pub server: String,
    pub ttl: Duration,
    pub customer: String,
    pub plan: String,
    pub labels: BTreeMap<String, String>,
}

impl TokenRequest {
    pub fn validate(&self) -> Result<(), HubError> {
        let mut problems = Vec::new();
        if !valid_name(&self.server) {
            problems.push(format!(
                "server_name {:?} is not a valid name (1-63 of a-z, 0-9 and '-', not starting or ending with '-')",
                self.server
            ));
        }
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            problems.push(format!("ttl {}s is outside 1s..=30d", self.ttl.as_secs()));
        }
        for (field, v) in [("customer", &self.customer), ("plan", &self.plan)] {
            if v.len() > 64 || v.chars().any(char::is_control) {
                problems.push(format!("{field} must be at most 64 printable characters"));
            }
        }
        if self.labels.len() > MAX_LABELS {
            problems.push(format!("{} labels; at most {MAX_LABELS}", self.labels.len()));
        }
        for (k, v) in &self.labels {
            if !valid_label_key(k) || v.len() > 255 || v.chars().any(char::is_control) {
                problems.push(format!("label {k:?}={v:?}: keys are 1-63 of a-z, 0-9, '-', '_', '.', '/'; values at most 255 printable characters"));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(HubError::Invalid(problems.join("; "))) }
    }
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b))
}

impl HubState {
    /// Creates (or updates) the server record and a token for it. Returns the token string and its expiry.
    pub async fn create_token(&self, req: TokenRequest, by: &str) -> Result<(String, i64), HubError> {
        req.validate()?;
        let _server = self.lock_server(&req.server).await;
        let now = now_ms();
        let secret = hex(&random_bytes::<32>());
        let expires_ms = now + req.ttl.as_millis() as i64;
        let mut record = match self.registry.get(&req.server) {
            Some(v) => v.record.clone(),
            None => ServerRecord { name: req.server.clone(), created_ms: now, ..Default::default() },
        };
        if !req.customer.is_empty() {
            record.customer = req.customer.clone();
        }
        if !req.plan.is_empty() {
            record.plan = req.plan.clone();
        }
        record.labels.extend(req.labels.clone());
        let token = TokenRecord { server: req.server.clone(), created_ms: now, expires_ms, created_by: by.to_string() };
        self.store
            .commit(vec![
                Op::put_json(Tree::Tokens, JoinToken::hash_secret(&secret), &token),
                Op::put_json(Tree::Servers, record.name.clone(), &record),
            ])
            .await?;
        self.registry.put_record(record);
        tracing::info!(server = %req.server, ttl_secs = req.ttl.as_secs(), by, "join token created");
        let token = JoinToken { hub: self.advertise.clone(), pin: self.ca.pin().to_string(), secret };
        Ok((token.encode(), expires_ms))
    }
}
