//! The fleet CA's rotation, driven: what each phase asks of the agents, how far they are, and when the hub
//! may move on (the phases themselves and their files are `pki::rotation`).
//!
//! A phase is done for a server when its agent trusts what it must (`ca_pins`, from its Hello and its
//! renewals), holds a certificate from the CA that signs now (`cert_issuer`, recorded at issuance) and, in
//! `update_servers`, has opened a stream since the hub began serving with the new CA (it verified it). The
//! hub tells connected agents what they lack as a phase begins and as each stream opens. `advance` waits
//! for every connected agent; an offline one never blocks a phase (it catches up when it comes back), except
//! the end of the rotation, which would strand it: that needs `--force`, and the stranded agent comes back
//! with a join token.

use std::sync::Arc;
use std::time::Duration;

use crate::api::tls::ServerTls;
use crate::error::HubError;
use crate::fleet::Fleet;
use crate::pki::ca::CaError;
use crate::pki::rotation::{Keys, Phase, Pki, Push, RotateError};
use crate::relay::Relay;
use crate::seal::Sealer;
use crate::store::ServerRecord;

/// The names and lifetime of the hub's own serving certificate.
#[derive(Clone)]
pub struct Serving {
    pub names: Vec<String>,
    pub validity: Duration,
}

impl Serving {
    /// A fresh serving certificate and key from the CA that serves now, with the chain the phase needs.
    pub fn issue(&self, keys: &Keys) -> Result<(String, String), CaError> {
        let (chain, key) = keys.serving().issue_server_for(&self.names, self.validity)?;
        Ok((keys.serving_chain(&chain), key))
    }

    /// Puts a fresh certificate (and the CAs trusted now) into `tls`.
    pub fn renew(&self, keys: &Keys, tls: &ServerTls) -> Result<(), String> {
        let (chain, key) = self.issue(keys).map_err(|e| e.to_string())?;
        tls.set(&chain, &key, &keys.trust_pem())
    }
}

/// How far the fleet is in the current phase.
#[derive(Debug, Default)]
pub struct Progress {
    pub servers: usize,
    pub done: usize,
    /// Connected and not done.
    pub lagging: Vec<String>,
    /// Offline and not done.
    pub offline: Vec<String>,
}

pub struct CaRotation {
    pki: Arc<Pki>,
    fleet: Arc<Fleet>,
    relay: Arc<Relay>,
    tls: Arc<ServerTls>,
    sealer: Arc<Sealer>,
    serving: Serving,
    replicated: bool,
    /// One phase change at a time.
    changing: tokio::sync::Mutex<()>,
}

pub struct Parts {
    pub pki: Arc<Pki>,
    pub fleet: Arc<Fleet>,
    pub relay: Arc<Relay>,
    pub tls: Arc<ServerTls>,
    pub sealer: Arc<Sealer>,
    pub serving: Serving,
    pub replicated: bool,
}

fn refused(e: RotateError) -> HubError {
    match e {
        RotateError::Refused(why) => HubError::Invalid(why),
        RotateError::Ca(e) => HubError::Internal(e.to_string()),
    }
}

impl CaRotation {
    pub fn new(p: Parts) -> CaRotation {
        let Parts { pki, fleet, relay, tls, sealer, serving, replicated } = p;
        CaRotation { pki, fleet, relay, tls, sealer, serving, replicated, changing: Default::default() }
    }

    pub fn keys(&self) -> Arc<Keys> {
        self.pki.keys()
    }

    /// What an agent whose stream just opened must be told, if anything: the CAs to trust, and whether
    /// that is all (`true`) or it must also renew.
    pub fn on_connect(&self, record: &ServerRecord) -> Option<(String, bool)> {
        let keys = self.pki.keys();
        keys.needs(&record.ca_pins, &record.cert_issuer).map(|push| (keys.trust_pem(), push == Push::TrustOnly))
    }

    fn done(keys: &Keys, r: &ServerRecord) -> bool {
        let phase_ms = keys.rotation.as_ref().map_or(0, |r| r.phase_ms);
        keys.needs(&r.ca_pins, &r.cert_issuer).is_none()
            && (keys.phase() != Phase::UpdateServers || r.connected_ms >= phase_ms)
    }

    /// The enrolled servers' progress in the current phase.
    pub fn progress(&self) -> Progress {
        let keys = self.pki.keys();
        let registry = self.fleet.registry();
        let mut p = Progress::default();
        for v in registry.list() {
            let r = &v.record;
            if r.agent_id.is_empty() || r.revoked_ms != 0 {
                continue;
            }
            p.servers += 1;
            if Self::done(&keys, r) {
                p.done += 1;
            } else if registry.is_attached(&r.name) {
                p.lagging.push(r.name.clone());
            } else {
                p.offline.push(r.name.clone());
            }
        }
        p.lagging.sort();
        p.offline.sort();
        p
    }

    /// `init`: a new CA, trusted from now on next to the current one.
    pub async fn start(&self, by: &str) -> Result<String, HubError> {
        if self.replicated {
            return Err(HubError::Invalid(
                "rotating the CA of replicas sharing a PostgreSQL store is not supported yet: every replica holds the CA's files; stop all but one replica, rotate, then copy DATA/ca to the others".into(),
            ));
        }
        let _one = self.changing.lock().await;
        let r = self.pki.start(by).map_err(refused)?;
        tracing::warn!(by, next = %r.next_pin, "fleet CA rotation started: both CAs are trusted");
        let asked = self.apply()?;
        Ok(format!("rotation started: new CA {}; {asked} connected agents asked to trust it", r.next_pin))
    }

    /// The next phase, when every connected agent has done this one (and, at the end, every offline one
    /// too, unless `force`).
    pub async fn advance(&self, by: &str, force: bool) -> Result<String, HubError> {
        let _one = self.changing.lock().await;
        let keys = self.pki.keys();
        let phase = keys.phase();
        let next = match phase {
            Phase::Init => Phase::UpdateClients,
            Phase::UpdateClients => Phase::UpdateServers,
            Phase::UpdateServers | Phase::Rollback => Phase::Standby,
            _ => {
                return Err(HubError::Invalid(
                    "no rotation is in progress; start one with `hubd ca rotate start`".into(),
                ));
            }
        };
        let p = self.progress();
        // A connected agent that never follows (a broken or hostile one) must not hold the rotation up
        // forever: --force goes on without it.
        if !p.lagging.is_empty() && !force {
            let asked = self.push(&keys, &p.lagging);
            return Err(HubError::Unconfirmed(format!(
                "{} connected servers have not finished phase {} ({}); {asked} were asked again: run advance again in a moment, or with --force to go on without them",
                p.lagging.len(),
                phase.as_str(),
                names(&p.lagging)
            )));
        }
        if next == Phase::Standby && !p.offline.is_empty() && !force {
            return Err(HubError::Unconfirmed(format!(
                "{} offline servers have not caught up ({}): ending the rotation now strands them (they would need a join token to come back). Wait for them, or advance with --force",
                p.offline.len(),
                names(&p.offline)
            )));
        }
        self.pki.set_phase(next).map_err(refused)?;
        let asked = self.apply()?;
        let keys = self.pki.keys();
        let said = match (phase, next) {
            (Phase::Rollback, _) => format!("rotation rolled back: the fleet CA stays {}", keys.current().pin()),
            (_, Phase::Standby) => format!(
                "rotation finished: the fleet CA is {}; the old one is no longer trusted{}",
                keys.current().pin(),
                {
                    let stranded: Vec<String> = p.offline.iter().chain(&p.lagging).cloned().collect();
                    if stranded.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} servers stranded: {})", stranded.len(), names(&stranded))
                    }
                }
            ),
            _ => format!("phase {}: {asked} connected agents asked to follow", next.as_str()),
        };
        tracing::warn!(by, from = phase.as_str(), to = next.as_str(), "fleet CA rotation advanced");
        Ok(said)
    }

    /// Back to the current CA (from any phase before the end): agents get certificates from it again, then
    /// `advance` drops the new one.
    pub async fn rollback(&self, by: &str) -> Result<String, HubError> {
        let _one = self.changing.lock().await;
        self.pki.set_phase(Phase::Rollback).map_err(refused)?;
        let asked = self.apply()?;
        tracing::warn!(by, "fleet CA rotation rolling back");
        Ok(format!(
            "rolling back: the hub serves and signs with {} again; {asked} connected agents asked to follow; advance when they have",
            self.pki.keys().current().pin()
        ))
    }

    /// Puts the phase into effect: the hub's TLS (trusted CAs, serving certificate), the seal key, and
    /// every connected agent told what it lacks. Returns how many were told.
    fn apply(&self) -> Result<usize, HubError> {
        let keys = self.pki.keys();
        self.serving.renew(&keys, &self.tls).map_err(HubError::Internal)?;
        self.sealer.follow(&keys);
        let registry = self.fleet.registry();
        let attached: Vec<String> = registry.attached().into_iter().collect();
        let mut told = self.push(&keys, &attached);
        if keys.phase() == Phase::UpdateServers {
            // Each agent proves it verifies the new serving certificate by opening a stream to it, spread
            // over a few seconds per thousand agents.
            let spread = (attached.len() / 500).clamp(1, 60) as u32;
            for name in &attached {
                let after_secs = u32::from_le_bytes(outpost_common::random_bytes::<4>()) % (spread + 1);
                let why = "the hub now serves with the new fleet CA; reconnect to verify it";
                told += usize::from(self.relay.ask_reconnect(name, after_secs, why));
            }
        }
        Ok(told)
    }

    /// Tells each of `servers` (connected) what it lacks; how many were told.
    fn push(&self, keys: &Keys, servers: &[String]) -> usize {
        let registry = self.fleet.registry();
        let bundle = keys.trust_pem();
        servers
            .iter()
            .filter_map(|name| registry.get(name))
            .filter_map(|v| keys.needs(&v.record.ca_pins, &v.record.cert_issuer).map(|p| (v, p)))
            .filter(|(v, push)| self.relay.ask_trust(&v.record.name, &bundle, *push == Push::TrustOnly))
            .count()
    }
}

/// The first names of a list, for a message.
fn names(list: &[String]) -> String {
    let mut s = list.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > 10 {
        s.push_str(&format!(" and {} more", list.len() - 10));
    }
    s
}
