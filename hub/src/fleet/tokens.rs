//! Join tokens: created for a named server record, single use, TTL, stored only as a hash, burned on use.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_common::JoinToken;
use outpost_common::cert::valid_name;

use super::Liveness;
use super::identities::Identities;
use crate::error::HubError;
use crate::store::{ServerRecord, TokenRecord};

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
    /// The server is enrolled and connected: the admin confirms the new token replaces its agent.
    pub replace: bool,
}

/// A token created.
pub struct Created {
    pub token: String,
    pub expires_ms: i64,
    /// Older unused tokens of the server that no longer work.
    pub invalidated: usize,
    /// The server is connected right now: enrolling with this token replaces its agent.
    pub replaces_live_agent: bool,
}

impl TokenRequest {
    pub fn validate(&self) -> Result<(), HubError> {
        let mut problems = Vec::new();
        if !valid_name(&self.server) {
            problems.push(format!(
                "server_name {} is not a valid name (1-63 of a-z, 0-9 and '-', not starting or ending with '-')",
                outpost_common::text::excerpt(&self.server, 64)
            ));
        }
        if !(MIN_TTL..=MAX_TTL).contains(&self.ttl) {
            problems.push(format!("ttl {}s is outside 1s..=30d", self.ttl.as_secs()));
        }
        for (field, v) in [("customer", &self.customer), ("plan", &self.plan)] {
            if v.chars().count() > 64 || v.len() > 256 || !outpost_common::text::is_printable(v) {
                problems.push(format!(
                    "{field} must be at most 64 characters without control, bidi or invisible characters"
                ));
            }
        }
        if self.labels.len() > MAX_LABELS {
            problems.push(format!("{} labels; at most {MAX_LABELS}", self.labels.len()));
        }
        for (k, v) in &self.labels {
            if !valid_label_key(k) || v.len() > 255 || !outpost_common::text::is_printable(v) {
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

impl Identities {
    /// Creates (or updates) the server record and a token for it. At most one token per server is
    /// outstanding: older unused ones are invalidated in the same write. A server that is enrolled and
    /// connected needs `replace` (enrolling replaces its agent; the takeover is audited at enrollment).
    pub async fn create_token(&self, req: TokenRequest, by: &str) -> Result<Created, HubError> {
        req.validate()?;
        let _server = self.fleet.lock(&req.server).await;
        let now = outpost_common::now_ms();
        let existing = self.fleet.registry().get(&req.server);
        let live =
            existing.as_ref().is_some_and(|v| v.liveness == Liveness::Connected && !v.record.agent_id.is_empty());
        if live && !req.replace {
            return Err(HubError::Invalid(format!(
                "server {} is enrolled and connected; a token for it would replace its running agent. Pass --replace (replace = true) if that is what you want",
                req.server
            )));
        }
        let secret = outpost_common::random_hex::<32>();
        let expires_ms = now + req.ttl.as_millis() as i64;
        let mut record = match existing {
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
        let invalidated = self.store.issue_token(&JoinToken::hash_secret(&secret), &token, &record).await?;
        self.fleet.registry().put_record(record);
        tracing::info!(server = %req.server, ttl_secs = req.ttl.as_secs(), by, invalidated, replace = live, "join token created");
        let token = JoinToken { hub: self.advertise.clone(), pin: self.ca.keys().token_pin().to_string(), secret };
        Ok(Created { token: token.encode(), expires_ms, invalidated, replaces_live_agent: live })
    }
}
