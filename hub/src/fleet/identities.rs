//! Identities of agents: enrollment (a one-time join token and a CSR become a short-lived certificate),
//! connection checks, renewal over the live stream, and revocation.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use outpost_common::JoinToken;

use crate::error::HubError;
use crate::fleet::Fleet;
use crate::pki::ca::{FleetCa, SignError};
use crate::pki::rotation::{Keys, Pki};
use crate::store::{AuditEntry, BurnedToken, IdentityStore, Kind, Revoked, ServerRecord, StoreError, TokenState};
use outpost_common::when::rfc3339 as rfc3339_ms;

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

/// What an agent tells when it opens a stream (its Hello, already checked).
#[derive(Clone, Debug, Default)]
pub struct Hello {
    pub dropped_reports: u64,
    pub refused_reports: u64,
    pub log_files: Vec<String>,
    pub ca_pins: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Enrolled {
    pub agent_id: String,
    pub server: String,
    pub chain_pem: String,
    pub ca_pem: String,
}

pub struct Identities {
    pub(super) fleet: Arc<Fleet>,
    pub(super) store: Arc<dyn IdentityStore>,
    pub(super) ca: Arc<Pki>,
    /// `https://host:port` that goes into tokens.
    pub(super) advertise: String,
    agent_cert_ttl: Duration,
    /// Serials refused at connect: loaded at start, written through on revoke.
    revoked: RwLock<HashSet<String>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Set when hubs share the store (`share_store`).
    shared: std::sync::atomic::AtomicBool,
}

impl Identities {
    pub async fn new(
        fleet: Arc<Fleet>,
        store: Arc<dyn IdentityStore>,
        ca: Arc<Pki>,
        advertise: String,
        agent_cert_ttl: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Identities, StoreError> {
        let revoked = RwLock::new(store.revoked_serials().await?.into_iter().collect());
        Ok(Identities { fleet, store, ca, advertise, agent_cert_ttl, revoked, metrics, shared: Default::default() })
    }

    /// The fleet CA (and its rotation).
    pub fn pki(&self) -> &Arc<Pki> {
        &self.ca
    }

    /// Signs with the CA that signs now; returns what it signed and that CA's pin.
    fn sign(&self, keys: &Keys, csr_pem: &str, agent_id: &str) -> Result<(crate::pki::ca::Issued, String), HubError> {
        let ca = keys.signing();
        let issued = ca.sign_agent(csr_pem, agent_id, self.agent_cert_ttl).map_err(|e| match e {
            SignError::Csr(c) => HubError::Csr(c),
            SignError::Ca(c) => HubError::Internal(c.to_string()),
        })?;
        Ok((issued, ca.pin().to_string()))
    }

    pub async fn enroll(&self, secret: &str, csr_pem: &str, host: HostFacts) -> Result<Enrolled, HubError> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(HubError::Invalid("join_token must be 1-256 characters (the secret part of the token)".into()));
        }
        host.validate()?;
        let hash = JoinToken::hash_secret(secret);
        let token = match self.store.token(&hash).await? {
            TokenState::Live(t) => t,
            TokenState::Burned(b) => {
                return Err(HubError::TokenUsed {
                    at: rfc3339_ms(b.burned_ms),
                    agent_id: b.agent_id,
                    server: b.server,
                });
            }
            TokenState::Unknown => return Err(HubError::TokenUnknown),
        };
        let now = outpost_common::now_ms();
        if token.expires_ms <= now {
            return Err(HubError::TokenExpired { at: rfc3339_ms(token.expires_ms), server: token.server });
        }
        // A bad CSR does not burn the token: the agent can fix it and retry.
        FleetCa::check_csr(csr_pem)?;
        let _server = self.fleet.lock(&token.server).await;
        // From the store, not the fleet view: another hub of the same store may have created or changed the
        // server a moment ago.
        let mut record = self.store.server(&token.server).await?.ok_or_else(|| {
            HubError::NotFound(format!("server {} no longer exists; create a new token", token.server))
        })?;
        let agent_id = outpost_common::random_hex::<12>();
        let keys = self.ca.keys();
        let (issued, issuer) = self.sign(&keys, csr_pem, &agent_id)?;
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
        record.cert_issuer = issuer;
        // It is given every CA trusted now.
        record.ca_pins = keys.trust_pins();
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
        // A takeover (the server had an identity) is audited in the same write as the enrollment.
        let takeover = previous_agent.as_ref().map(|old| AuditEntry {
            operator: format!("token of {}", token.created_by),
            role: outpost_common::Role::Admin.to_string(),
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
        let burned = BurnedToken { server: record.name.clone(), burned_ms: now, agent_id: agent_id.clone() };
        // The store burns the token only if it is still live: single use holds across concurrent enrollments.
        match self.store.enroll(&hash, &burned, &record, takeover).await {
            Ok(()) => {}
            // Lost a race for the token: say who won, as for any used token.
            Err(StoreError::Conflict(why)) => {
                return Err(match self.store.token(&hash).await? {
                    TokenState::Burned(b) => {
                        HubError::TokenUsed { at: rfc3339_ms(b.burned_ms), agent_id: b.agent_id, server: b.server }
                    }
                    _ => HubError::Denied(why),
                });
            }
            Err(e) => return Err(e.into()),
        }
        let registry = self.fleet.registry();
        registry.close_server(&record.name);
        let server = record.name.clone();
        registry.put_record(record);
        match previous_agent {
            Some(old) => {
                tracing::warn!(server = %server, %agent_id, replaced = %old, serial = %issued.info.serial, "agent enrolled, replacing the previous identity (audited)")
            }
            None => tracing::info!(server = %server, %agent_id, serial = %issued.info.serial, "agent enrolled"),
        }
        self.metrics.enrolled();
        Ok(Enrolled { agent_id, server, chain_pem: issued.chain_pem, ca_pem: keys.trust_pem() })
    }

    /// Revokes the server's identity: every certificate it ever held is refused from now on, at connect and
    /// at renewal, and its live stream is closed. Only a new enrollment (a new join token) brings it back.
    /// Returns the serial of its current certificate.
    pub async fn revoke_server(&self, name: &str, by: &str) -> Result<String, HubError> {
        let _server = self.fleet.lock(name).await;
        let mut record = self
            .fleet
            .record(name)
            .map_err(|_| HubError::NotFound(format!("no server named {}", outpost_common::text::excerpt(name, 64))))?;
        if record.agent_id.is_empty() {
            return Err(HubError::Invalid(format!("server {name} has no certificate to revoke (never enrolled)")));
        }
        let serial = record.cert_serial.clone();
        let now = outpost_common::now_ms();
        let serials: Vec<String> =
            [&record.cert_serial, &record.prev_serial].into_iter().filter(|s| !s.is_empty()).cloned().collect();
        if record.revoked_ms == 0 {
            record.revoked_ms = now;
        }
        record.prev_serial.clear();
        let by_whom = Revoked { server: name.into(), revoked_ms: now, by: by.into() };
        self.store.revoke_identity(&record, &serials, &by_whom).await?;
        self.revoked.write().unwrap_or_else(|p| p.into_inner()).extend(serials);
        let registry = self.fleet.registry();
        registry.put_record(record);
        let closed = registry.close_server(name);
        tracing::warn!(server = name, %serial, by, closed, "identity revoked");
        Ok(serial)
    }

    /// Hubs share the store: an agent this hub's fleet view does not know yet is looked up in the store
    /// (it enrolled on another hub a moment ago) before it is refused.
    pub fn share_store(&self) {
        self.shared.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The server agent `agent_id` speaks for, as a stream of it opens. With a shared store the record
    /// is read from the store and put into the fleet view first: the agent may have enrolled on another hub
    /// a moment ago, or reported there until now (the high-water mark this hub welcomes it with, and the
    /// counters it goes on from, must be the stored ones).
    pub async fn server_of_agent(&self, agent_id: &str) -> Result<Option<String>, HubError> {
        if !self.shared.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(self.fleet.registry().server_of_agent(agent_id));
        }
        let Some(record) = self.store.server_of_agent(agent_id).await? else { return Ok(None) };
        let name = record.name.clone();
        let _server = self.fleet.lock(&name).await;
        self.fleet.registry().put_record(record);
        Ok(Some(name))
    }

    /// Reads the revoked serials again (another hub of the same store revoked an identity).
    pub async fn reload_revoked(&self) -> Result<(), crate::store::StoreError> {
        let serials: HashSet<String> = self.store.revoked_serials().await?.into_iter().collect();
        *self.revoked.write().unwrap_or_else(|p| p.into_inner()) = serials;
        Ok(())
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.read().unwrap_or_else(|p| p.into_inner()).contains(serial)
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

    /// Notes a new stream of `server`, opened with certificate `serial`: the connection counter, the agent's
    /// counters from its Hello and, when the agent uses its renewed certificate for the first time, the end
    /// of the one it replaced. Returns the high-water mark of its stored reports.
    pub async fn connect(&self, server: &str, serial: &str, hello: Hello) -> Result<u64, HubError> {
        let _server = self.fleet.lock(server).await;
        let mut record = self.fleet.record(server)?;
        // Checked again under the lock: a revocation or renewal may have come in between.
        self.check_serial(&record, serial)?;
        record.connections += 1;
        record.dropped_reports = hello.dropped_reports;
        record.ca_pins = hello.ca_pins;
        record.connected_ms = outpost_common::now_ms();
        record.refused_reports = hello.refused_reports;
        record.log_files = hello.log_files;
        record.last_seen_ms = outpost_common::now_ms();
        // The agent uses its renewed certificate: the one it replaced is dead from now on (it is not the
        // current or the previous serial any more; no denylist entry is needed).
        if serial == record.cert_serial {
            record.prev_serial.clear();
        }
        self.store.put_server(&record).await?;
        let acked = record.last_seq;
        self.fleet.registry().put_record(record);
        Ok(acked)
    }

    /// Signs a fresh certificate for the agent of a live stream. Returns (chain, not_after).
    ///
    /// The new certificate becomes the identity's current one and the one it replaces stays valid until the
    /// new one is first used (the answer may be lost on the way); every older certificate stops working, so
    /// a burst of renewals leaves two valid certificates, not one per renewal. The stream itself was checked
    /// when it opened and is closed on revocation or re-enrollment, so a long-lived stream may renew again
    /// after the certificate it opened with was replaced.
    pub async fn renew(
        &self,
        server: &str,
        agent_id: &str,
        csr_pem: &str,
        ca_pins: Vec<String>,
    ) -> Result<(String, i64), HubError> {
        let _server = self.fleet.lock(server).await;
        let mut record = self.fleet.record(server)?;
        if record.agent_id != agent_id {
            return Err(HubError::Denied(format!(
                "agent {agent_id} no longer owns server {server}; it was enrolled again"
            )));
        }
        if record.revoked_ms != 0 {
            return Err(HubError::Denied(format!(
                "the identity of server {server} was revoked at {}; enroll again with a new join token",
                rfc3339_ms(record.revoked_ms)
            )));
        }
        let (issued, issuer) = self.sign(&self.ca.keys(), csr_pem, agent_id)?;
        // The identity accepts only its current and previous serial: what came before is dead from now on.
        record.prev_serial = std::mem::take(&mut record.cert_serial);
        record.cert_serial = issued.info.serial.clone();
        record.cert_not_after = issued.info.not_after;
        record.cert_issuer = issuer;
        record.ca_pins = ca_pins;
        self.store.put_server(&record).await?;
        self.fleet.registry().put_record(record);
        tracing::info!(server, serial = %issued.info.serial, not_after = issued.info.not_after, "certificate renewed");
        self.metrics.renewed();
        Ok((issued.chain_pem, issued.info.not_after))
    }
}
