//! Enrollment: a one-time join token and a CSR become a short-lived agent certificate.

use outpost_common::JoinToken;
use outpost_common::cert::hex;

use crate::ca::{FleetCa, SignError, random_bytes};
use crate::error::{HubError, rfc3339_ms};
use crate::state::HubState;
use crate::store::{BurnedToken, Op, Revoked, TokenRecord, Tree, now_ms};

/// Facts the agent tells about its host, bounded.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub agent_version: String,
}

impl HostFacts {
    pub fn validate(&self) -> Result<(), HubError> {
        for (field, v) in [
            ("host.hostname", &self.hostname),
            ("host.os", &self.os),
            ("host.kernel", &self.kernel),
            ("host.arch", &self.arch),
            ("host.agent_version", &self.agent_version),
        ] {
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(HubError::Invalid(format!("{field} must be at most 256 printable characters")));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Enrolled {
    pub agent_id: String,
    pub server: String,
    pub chain_pem: String,
    pub ca_pem: String,
}

impl HubState {
    pub async fn enroll(&self, secret: &str, csr_pem: &str, host: HostFacts) -> Result<Enrolled, HubError> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(HubError::Invalid("join_token must be 1-256 characters (the secret part of the token)".into()));
        }
        host.validate()?;
        let _single = self.enroll_lock.lock().await;
        let hash = JoinToken::hash_secret(secret);
        let token: TokenRecord = match self.store.get_json(Tree::Tokens, hash.as_bytes())? {
            Some(t) => t,
            None => {
                return Err(match self.store.get_json::<BurnedToken>(Tree::Burned, hash.as_bytes())? {
                    Some(b) => {
                        HubError::TokenUsed { at: rfc3339_ms(b.burned_ms), agent_id: b.agent_id, server: b.server }
                    }
                    None => HubError::TokenUnknown,
                });
            }
        };
        let now = now_ms();
        if token.expires_ms <= now {
            return Err(HubError::TokenExpired { at: rfc3339_ms(token.expires_ms), server: token.server });
        }
        // A bad CSR does not burn the token: the agent can fix it and retry.
        FleetCa::check_csr(csr_pem)?;
        let _server = self.lock_server(&token.server).await;
        let mut record = self.registry.get(&token.server).map(|v| v.record.clone()).ok_or_else(|| {
            HubError::NotFound(format!("server {} no longer exists; create a new token", token.server))
        })?;
        let agent_id = hex(&random_bytes::<12>());
        let issued = self.ca.sign_agent(csr_pem, &agent_id, self.agent_cert_ttl).map_err(|e| match e {
            SignError::Csr(c) => HubError::Csr(c),
            SignError::Ca(c) => HubError::Internal(c.to_string()),
        })?;
        let superseded = (!record.cert_serial.is_empty()).then(|| record.cert_serial.clone());
        record.agent_id = agent_id.clone();
        record.cert_serial = issued.info.serial.clone();
        record.cert_not_after = issued.info.not_after;
        record.hostname = host.hostname;
        record.os = host.os;
        record.kernel = host.kernel;
        record.arch = host.arch;
        record.agent_version = host.agent_version;
        // A new identity starts its own sequence and counters.
        record.last_seq = 0;
        record.reports_received = 0;
        record.connections = 0;
        record.first_seen_ms = 0;
        let mut ops = vec![
            Op::Del(Tree::Tokens, hash.clone().into_bytes()),
            Op::put_json(
                Tree::Burned,
                hash,
                &BurnedToken { server: record.name.clone(), burned_ms: now, agent_id: agent_id.clone() },
            ),
        ];
        if let Some(old) = &superseded {
            let rev = Revoked { server: record.name.clone(), revoked_ms: now, by: "re-enrollment".into() };
            ops.push(Op::put_json(Tree::Revoked, old.clone(), &rev));
        }
        ops.push(Op::put_json(Tree::Servers, record.name.clone(), &record));
        self.store.commit(ops).await?;
        if let Some(old) = superseded {
            self.revoked.write().unwrap_or_else(|p| p.into_inner()).insert(old.clone());
            self.registry.close_serial(&old);
        }
        let server = record.name.clone();
        self.registry.put_record(record);
        tracing::info!(server = %server, agent_id = %agent_id, serial = %issued.info.serial, "agent enrolled");
        Ok(Enrolled { agent_id, server, chain_pem: issued.chain_pem, ca_pem: self.ca.cert_pem().to_string() })
    }

    /// Revokes the server's current certificate and closes its live stream.
    pub async fn revoke_server(&self, name: &str, by: &str) -> Result<String, HubError> {
        let _server = self.lock_server(name).await;
        let view = self.registry.get(name).ok_or_else(|| HubError::NotFound(format!("no server named {name:?}")))?;
        let serial = view.record.cert_serial.clone();
        if serial.is_empty() {
            return Err(HubError::Invalid(format!("server {name} has no certificate to revoke (never enrolled)")));
        }
        let rev = Revoked { server: name.to_string(), revoked_ms: now_ms(), by: by.to_string() };
        self.store.commit(vec![Op::put_json(Tree::Revoked, serial.clone(), &rev)]).await?;
        self.revoked.write().unwrap_or_else(|p| p.into_inner()).insert(serial.clone());
        let closed = self.registry.close_serial(&serial);
        tracing::warn!(server = name, %serial, by, closed, "certificate revoked");
        Ok(serial)
    }
}
