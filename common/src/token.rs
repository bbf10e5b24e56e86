//! The join-token string an operator copies into cloud-init or `agentd enroll --token`.
//!
//! Format: `outpost-join-v1.` followed by base64url (no padding) of a small JSON object
//! `{"hub": "https://host:port", "pin": "sha256:<hex>", "secret": "<hex>"}`. One string carries everything an
//! agent needs: where the hub is, which CA to trust (the pin), and the one-time secret. Only the secret is
//! sent to the hub; the hub stores only its SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "outpost-join-v1.";
/// Upper bound on a token string; real ones are ~250 characters.
const MAX_TOKEN_LEN: usize = 2048;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    /// `https://host:port` of the hub's agent port.
    pub hub: String,
    /// `sha256:<hex>` of the fleet CA certificate.
    pub pin: String,
    /// The one-time secret, hex.
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("hub", &self.hub).field("pin", &self.pin).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "not an Outpost join token: it must start with {PREFIX:?}; copy the whole string `hubd token create` printed"
    )]
    Prefix,
    #[error("the join token is damaged ({0}); copy the whole string `hubd token create` printed")]
    Damaged(String),
    #[error(
        "the join token is longer than {MAX_TOKEN_LEN} characters; copy only the string `hubd token create` printed"
    )]
    TooLong,
}

impl JoinToken {
    /// SHA-256 of the secret, hex: the only form the hub stores.
    pub fn hash_secret(secret: &str) -> String {
        crate::cert::hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a struct of strings serialises");
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let s = s.trim();
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let body = s.strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|e| TokenError::Damaged(format!("base64: {e}")))?;
        let token: JoinToken =
            serde_json::from_slice(&json).map_err(|e| TokenError::Damaged(format!("contents: {e}")))?;
        if !token.hub.starts_with("https://") {
            return Err(TokenError::Damaged(format!("hub address {:?} is not https://", token.hub)));
        }
        let pin_ok = token
            .pin
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !pin_ok {
            return Err(TokenError::Damaged("CA pin is not sha256:<64 hex digits>".into()));
        }
        if token.secret.len() < 32 || !token.secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Damaged("secret is not at least 32 hex digits".into()));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JoinToken {
        JoinToken {
            hub: "https://127.0.0.1:7443".into(),
            pin: format!("sha256:{}", "ab".repeat(32)),
            secret: "cd".repeat(16),
        }
    }

    #[test]
    fn round_trips() {
        let t = sample();
        assert_eq!(JoinToken::parse(&t.encode()), Ok(t));
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", sample()).contains(&"cd".repeat(16)));
    }

    #[test]
    fn rejects_damage_precisely() {
        assert_eq!(JoinToken::parse("hello"), Err(TokenError::Prefix));
        assert!(
            matches!(JoinToken::parse("outpost-join-v1.!!!"), Err(TokenError::Damaged(m)) if m.starts_with("base64"))
        );
        let mut t = sample();
        t.hub = "http://127.0.0.1:1".into();
        assert!(matches!(JoinToken::parse(&t.encode()), Err(TokenError::Damaged(m)) if m.contains("not https")));
        let mut t = sample();
        t.pin = "md5:00".into();
        assert!(matches!(JoinToken::parse(&t.encode()), Err(TokenError::Damaged(m)) if m.contains("CA pin")));
        assert_eq!(JoinToken::parse(&"x".repeat(5000)), Err(TokenError::TooLong));
    }
}
