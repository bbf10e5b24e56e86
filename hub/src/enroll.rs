//! Enrollment: a one-time join token and a CSR become a short-lived agent certificate.

use outpost_common::JoinToken;
use outpost_common::cert::hex;

use crate::audit::{AuditEntry, Kind};
use crate::ca::{FleetCa, SignError, random_bytes};
use crate::error::{HubError, rfc3339_ms};
use crate::state::HubState;
use crate::store::{BurnedToken, Op, Revoked, ServerRecord, TokenRecord, Tree, now_ms};

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
            if v.len() > 256 || !outpost_common::text::is_printable(v) {
                return Err(HubError::Invalid(format!(
                    "{field} must be at most 256 bytes without control, bidi or invisible characters"
                )));
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
        // Every certificate the previous identity could still use dies with this enrollment (its agent id no
        // longer maps to the server).
        let superseded: Vec<String> =
            [&record.cert_serial, &record.prev_serial].into_iter().filter(|s| !s.is_empty()).cloned().collect();
        let previous_agent = (!record.agent_id.is_empty()).then(|| record.agent_id.clone());
        record.agent_id = agent_id.clone();
        record.cert_serial = issued.info.serial.clone();
        record.prev_serial = String::new();
        record.revoked_ms = 0;
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
        record.refused_reports = 0;
        let mut ops = vec![
            Op::Del(Tree::Tokens, hash.clone().into_bytes()),
            Op::put_json(
                Tree::Burned,
                hash,
                &BurnedToken { server: record.name.clone(), burned_ms: now, agent_id: agent_id.clone() },
            ),
        ];
        ops.push(Op::put_json(Tree::Servers, record.name.clone(), &record));
        // A takeover (the server had an identity) is audited in the same write as the enrollment.
        let takeover = previous_agent.as_ref().map(|old| AuditEntry {
            operator: format!("token of {}", token.created_by),
            role: "admin".into(),
            kind: Kind::Revoke,
            action: "takeover".into(),
            servers: vec![record.name.clone()],
            message: format!(
                "enrolled agent {agent_id} with a join token created by {} at {}; it replaces agent {old} (certificates {} revoked)",
                token.created_by,
                rfc3339_ms(token.created_ms),
                superseded.join(", ")
            ),
            ..Default::default()
        });
        match takeover {
            Some(entry) => {
                self.audit.append_with(entry, ops).await?;
            }
            None => self.store.commit(ops).await?,
        }
        self.registry.close_server(&record.name);
        let server = record.name.clone();
        self.registry.put_record(record);
        match previous_agent {
            Some(old) => {
                tracing::warn!(server = %server, %agent_id, replaced = %old, serial = %issued.info.serial, "agent enrolled, replacing the previous identity (audited)")
            }
            None => tracing::info!(server = %server, %agent_id, serial = %issued.info.serial, "agent enrolled"),
        }
        Ok(Enrolled { agent_id, server, chain_pem: issued.chain_pem, ca_pem: self.ca.cert_pem().to_string() })
    }

    /// Revokes the server's identity: every certificate it ever held is refused from now on, at connect and
    /// at renewal, and its live stream is closed. Only a new enrollment (a new join token) brings it back.
    /// Returns the serial of its current certificate.
    pub async fn revoke_server(&self, name: &str, by: &str) -> Result<String, HubError> {
        let _server = self.lock_server(name).await;
        let view = self.registry.get(name).ok_or_else(|| {
            HubError::NotFound(format!("no server named {}", outpost_common::text::excerpt(name, 64)))
        })?;
        let mut record = view.record.clone();
        if record.agent_id.is_empty() {
            return Err(HubError::Invalid(format!("server {name} has no certificate to revoke (never enrolled)")));
        }
        let serial = record.cert_serial.clone();
        let now = now_ms();
        let serials: Vec<String> =
            [&record.cert_serial, &record.prev_serial].into_iter().filter(|s| !s.is_empty()).cloned().collect();
        let mut ops: Vec<Op> = serials
            .iter()
            .map(|s| {
                Op::put_json(Tree::Revoked, s.clone(), &Revoked { server: name.into(), revoked_ms: now, by: by.into() })
            })
            .collect();
        if record.revoked_ms == 0 {
            record.revoked_ms = now;
        }
        record.prev_serial.clear();
        ops.push(Op::put_json(Tree::Servers, name.to_string(), &record));
        self.store.commit(ops).await?;
        self.revoked.write().unwrap_or_else(|p| p.into_inner()).extend(serials);
        self.registry.put_record(record);
        let closed = self.registry.close_server(name);
        tracing::warn!(server = name, %serial, by, closed, "identity revoked");
        Ok(serial)
    }

    /// Whether `serial` may still speak for `server`'s identity: the identity is not revoked and `serial` is
    /// its current certificate or the one the last renewal replaced (until the new one is used).
    pub fn check_serial(&self, record: &ServerRecord, serial: &str) -> Result<(), HubError> {
        if record.revoked_ms != 0 || self.is_revoked(serial) {
            return Err(HubError::Denied(format!(
                "the identity of server {} was revoked at {} (certificate {serial}); enroll this agent again with a new join token (`hubd token create --server {}`)",
                record.name,
                rfc3339_ms(record.revoked_ms),
                record.name
            )));
        }
        if serial != record.cert_serial && serial != record.prev_serial {
            return Err(HubError::Denied(format!(
                "certificate {serial} of server {} was superseded by a renewal (current: {}); use the newest certificate, or enroll again with a new join token",
                record.name, record.cert_serial
            )));
        }
        Ok(())
    }
}
