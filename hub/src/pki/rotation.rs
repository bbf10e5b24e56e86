//! The fleet CA and its rotation in phases (Teleport's model), as files in the CA directory.
//!
//! ```text
//!  standby ──start──▶ init ──advance──▶ update_clients ──advance──▶ update_servers ──advance──▶ standby (new CA)
//!                      │                    │                           │
//!                      └──────rollback──────┴──────────rollback─────────┘──▶ rollback ──advance──▶ standby (old CA)
//! ```
//!
//! | phase          | trusted (hub and agents) | signs certificates | serves the hub's TLS                  |
//! |----------------|--------------------------|--------------------|---------------------------------------|
//! | standby        | current                  | current            | current                               |
//! | init           | current + next           | current            | current                               |
//! | update_clients | current + next           | next               | current                               |
//! | update_servers | current + next           | next               | next, chained to current by a cross-signed certificate |
//! | rollback       | current + next           | current            | current                               |
//!
//! The cross-signed certificate (next's key and name, signed by current) lets a party that slept through
//! `init` and still trusts only the current CA verify the hub in `update_servers`, reconnect, and catch up:
//! only a party that sleeps until the old CA is dropped is stranded (it comes back with a join token).
//!
//! Files, in `DATA/ca`: `ca.pem`/`ca.key` (current), `next.pem`/`next.key`/`cross.pem` (during a rotation),
//! `rotation.json` (the phase; absent in standby), `retired/KID.key` (keys of retired CAs, kept 0600 only to
//! open what was sealed with them). Finishing and abandoning are written as their own phase first, so a
//! crash halfway through is completed at the next start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::ca::{CaError, FleetCa, write_private, write_public};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Standby,
    Init,
    UpdateClients,
    UpdateServers,
    Rollback,
    /// On disk only: the next CA is becoming the current one.
    Finishing,
    /// On disk only: the next CA is being dropped.
    Abandoning,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Standby => "standby",
            Phase::Init => "init",
            Phase::UpdateClients => "update_clients",
            Phase::UpdateServers => "update_servers",
            Phase::Rollback => "rollback",
            Phase::Finishing => "finishing",
            Phase::Abandoning => "abandoning",
        }
    }
}

/// A rotation in progress (`rotation.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    pub phase: Phase,
    pub started_ms: i64,
    /// When the current phase began.
    pub phase_ms: i64,
    /// Who started it.
    pub by: String,
    pub current_pin: String,
    pub next_pin: String,
}

/// What the hub trusts, signs and serves with at one moment: replaced whole at each phase change.
pub struct Keys {
    current: Arc<FleetCa>,
    next: Option<Arc<FleetCa>>,
    pub rotation: Option<Rotation>,
    cross_pem: String,
    /// (seal secret, KID) of retired CAs: open only.
    pub retired: Vec<([u8; 32], String)>,
}

impl Keys {
    /// The CA kept at the end of a rotation unless it is rolled back (in standby, the only one).
    pub fn current(&self) -> &FleetCa {
        &self.current
    }

    /// The CA a rotation makes (none in standby).
    pub fn next(&self) -> Option<&FleetCa> {
        self.next.as_deref()
    }

    pub fn phase(&self) -> Phase {
        self.rotation.as_ref().map_or(Phase::Standby, |r| r.phase)
    }

    /// The CA that signs certificates now.
    pub fn signing(&self) -> &FleetCa {
        match (self.phase(), &self.next) {
            (Phase::UpdateClients | Phase::UpdateServers, Some(next)) => next,
            _ => &self.current,
        }
    }

    /// The CA the hub's own TLS certificate comes from.
    pub fn serving(&self) -> &FleetCa {
        match (self.phase(), &self.next) {
            (Phase::UpdateServers, Some(next)) => next,
            _ => &self.current,
        }
    }

    /// The CAs trusted now, PEM (what agents and bundles are given).
    pub fn trust_pem(&self) -> String {
        let mut out = self.current.cert_pem().to_string();
        if let Some(next) = &self.next {
            out.push_str(next.cert_pem());
        }
        out
    }

    pub fn trust_pins(&self) -> Vec<String> {
        std::iter::once(&self.current).chain(&self.next).map(|c| c.pin().to_string()).collect()
    }

    /// The pin join tokens carry: the current CA's, which the hub's TLS chain holds in every phase.
    pub fn token_pin(&self) -> &str {
        self.current.pin()
    }

    /// The hub's certificate chain for `leaf_chain` (leaf then its CA, from [`FleetCa::issue_server_for`]):
    /// in `update_servers` the leaf, the next CA cross-signed by the current one, and the current CA.
    pub fn serving_chain(&self, leaf_chain: &str) -> String {
        if self.phase() != Phase::UpdateServers {
            return leaf_chain.to_string();
        }
        let leaf = leaf_chain
            .find("-----END CERTIFICATE-----")
            .map_or(leaf_chain.len(), |i| i + "-----END CERTIFICATE-----".len());
        format!("{}\n{}{}", leaf_chain[..leaf].trim_end(), self.cross_pem, self.current.cert_pem())
    }

    /// What an agent that trusts `pins` and holds a certificate from `issuer` must still be given.
    pub fn needs(&self, pins: &[String], issuer: &str) -> Option<Push> {
        let has = |pin: &str| pins.iter().any(|p| p == pin);
        let next = self.next.as_ref().map(|n| n.pin());
        let current = self.current.pin();
        match (self.phase(), next) {
            (Phase::Init, Some(next)) => (!has(next)).then_some(Push::Renew),
            (Phase::UpdateClients | Phase::UpdateServers, Some(next)) => {
                (!has(next) || issuer != next).then_some(Push::Renew)
            }
            (Phase::Rollback, _) => (!has(current) || issuer != current).then_some(Push::Renew),
            // Standby: an agent that still trusts a retired CA is told to drop it (an agent that says
            // nothing of its trust, an older one, is left alone).
            _ => (!pins.is_empty() && pins != [current]).then_some(Push::TrustOnly),
        }
    }
}

/// What an agent is sent on its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Store the trust bundle, then renew (the renewal says what it now trusts).
    Renew,
    /// Store the trust bundle only.
    TrustOnly,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("{0}")]
    Refused(String),
}

/// The fleet CA of a hub, with its rotation.
pub struct Pki {
    dir: PathBuf,
    external: bool,
    /// Only the serving hub writes; an admin command next to it reads.
    writes: bool,
    keys: RwLock<Arc<Keys>>,
}

impl Pki {
    /// Loads the CA in `dir` for the serving hub (creating one on a first start), completes a finishing or
    /// abandoning rotation a crash interrupted, and loads a rotation in progress.
    pub fn open(dir: &Path, external: Option<(&Path, &Path)>) -> Result<Pki, CaError> {
        Self::open_as(dir, external, true)
    }

    /// Reads the CA in `dir` as it is (an admin command next to a running hub: it never writes).
    pub fn read(dir: &Path, external: Option<(&Path, &Path)>) -> Result<Pki, CaError> {
        Self::open_as(dir, external, false)
    }

    fn open_as(dir: &Path, external: Option<(&Path, &Path)>, writes: bool) -> Result<Pki, CaError> {
        let current = match writes {
            true => FleetCa::load_or_create(dir, external)?,
            false => FleetCa::load(dir, external)?,
        };
        let pki = Pki {
            dir: dir.to_path_buf(),
            external: external.is_some(),
            writes,
            keys: RwLock::new(Arc::new(Keys {
                current: Arc::new(current),
                next: None,
                rotation: None,
                cross_pem: String::new(),
                retired: Vec::new(),
            })),
        };
        pki.reload()?;
        Ok(pki)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads the files again (they are the truth; a crash between two writes is completed here).
    fn reload(&self) -> Result<(), CaError> {
        let rotation = self.read_rotation()?;
        let rotation = match rotation.as_ref().map(|r| r.phase) {
            // A reader sees an unfinished end as the phase before it (the hub completes it).
            Some(Phase::Finishing | Phase::Abandoning) if !self.writes => rotation.map(|mut r| {
                r.phase = if r.phase == Phase::Finishing { Phase::UpdateServers } else { Phase::Rollback };
                r
            }),
            Some(Phase::Finishing) => {
                self.promote_next()?;
                None
            }
            Some(Phase::Abandoning) => {
                self.drop_next()?;
                None
            }
            _ => rotation,
        };
        if rotation.is_none() && self.writes {
            // Left by a crash after the rotation file was removed.
            for f in ["next.pem", "next.key", "cross.pem"] {
                let _ = std::fs::remove_file(self.path(f));
            }
        }
        let external = self.external;
        let current = match external {
            // An external CA's files are named in the config; what was loaded stays.
            true => self.keys().current.clone(),
            false => Arc::new(FleetCa::load(&self.dir, None)?),
        };
        let (next, cross_pem) = match &rotation {
            Some(_) => (
                Some(Arc::new(FleetCa::load_files(&self.path("next.pem"), &self.path("next.key"))?)),
                std::fs::read_to_string(self.path("cross.pem")).map_err(|error| CaError::Io {
                    what: "read",
                    path: self.path("cross.pem"),
                    error,
                })?,
            ),
            None => (None, String::new()),
        };
        let mut retired = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.path("retired")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(kid) = name.strip_suffix(".key") {
                    retired.push((FleetCa::seal_secret_of(&e.path())?, kid.to_string()));
                }
            }
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Keys { current, next, rotation, cross_pem, retired });
        Ok(())
    }

    fn read_rotation(&self) -> Result<Option<Rotation>, CaError> {
        let path = self.path("rotation.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CaError::Invalid { path, reason: format!("{e} (the rotation state)") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(CaError::Io { what: "read", path, error }),
        }
    }

    fn write_rotation(&self, r: &Rotation) -> Result<(), CaError> {
        let json = serde_json::to_vec_pretty(r).map_err(|e| CaError::Sign(e.to_string()))?;
        write_public(&self.path("rotation.json"), &json)
    }

    /// What the hub trusts, signs and serves with now.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `init`: a new CA is made (and cross-signed by the current one); both are trusted from now on.
    pub fn start(&self, by: &str) -> Result<Rotation, RotateError> {
        if self.external {
            return Err(RotateError::Refused(
                "the fleet CA is given by ca_cert/ca_key in hubd.toml: rotate it where it is kept, then point the config at the new files".into(),
            ));
        }
        let keys = self.keys();
        if let Some(r) = &keys.rotation {
            return Err(RotateError::Refused(format!(
                "a rotation is already in progress (phase {}, started by {}); advance or roll it back first",
                r.phase.as_str(),
                r.by
            )));
        }
        let (next, _cross) = keys.current.create_successor(&self.path("next.pem"), &self.path("next.key"))?;
        write_public(&self.path("cross.pem"), _cross.as_bytes())?;
        let now = outpost_common::now_ms();
        let r = Rotation {
            phase: Phase::Init,
            started_ms: now,
            phase_ms: now,
            by: by.to_string(),
            current_pin: keys.current.pin().to_string(),
            next_pin: next.pin().to_string(),
        };
        self.write_rotation(&r)?;
        self.reload()?;
        Ok(r)
    }

    /// Moves a rotation to `phase` (`update_clients`, `update_servers` or `rollback`), or ends it
    /// (`standby`: from `update_servers` the next CA becomes the current one, from `rollback` it is dropped).
    pub fn set_phase(&self, phase: Phase) -> Result<(), RotateError> {
        let keys = self.keys();
        let Some(mut r) = keys.rotation.clone() else {
            return Err(RotateError::Refused(
                "no rotation is in progress; start one with `hubd ca rotate start`".into(),
            ));
        };
        let allowed = matches!(
            (r.phase, phase),
            (Phase::Init, Phase::UpdateClients)
                | (Phase::UpdateClients, Phase::UpdateServers)
                | (Phase::UpdateServers, Phase::Standby)
                | (Phase::Init | Phase::UpdateClients | Phase::UpdateServers, Phase::Rollback)
                | (Phase::Rollback, Phase::Standby)
        );
        if !allowed {
            return Err(RotateError::Refused(format!(
                "a rotation in phase {} cannot go to {}",
                r.phase.as_str(),
                phase.as_str()
            )));
        }
        r.phase = match (r.phase, phase) {
            (Phase::UpdateServers, Phase::Standby) => Phase::Finishing,
            (Phase::Rollback, Phase::Standby) => Phase::Abandoning,
            (_, p) => p,
        };
        r.phase_ms = outpost_common::now_ms();
        self.write_rotation(&r)?;
        self.reload()?;
        Ok(())
    }

    /// The next CA becomes the current one; the current one's key is kept in `retired/` (to open what it
    /// sealed), never trusted again. Repeatable: a crash anywhere in it is completed by the next call.
    fn promote_next(&self) -> Result<(), CaError> {
        let (next_pem, next_key) = (self.path("next.pem"), self.path("next.key"));
        let read = |p: &Path| std::fs::read(p).map_err(|error| CaError::Io { what: "read", path: p.into(), error });
        if next_key.exists() {
            let current = FleetCa::load(&self.dir, None)?;
            let kid = kid(current.pin());
            let retired = self.path("retired");
            std::fs::create_dir_all(&retired).map_err(|error| CaError::Io {
                what: "create",
                path: retired.clone(),
                error,
            })?;
            let keep = retired.join(format!("{kid}.key"));
            if current.pin() != FleetCa::load_files(&next_pem, &next_key)?.pin() && !keep.exists() {
                write_private(&keep, &read(&self.path("ca.key"))?)?;
            }
            // The key first: a crash between the two leaves next.* in place and this runs again.
            write_private(&self.path("ca.key"), &read(&next_key)?)?;
            write_public(&self.path("ca.pem"), &read(&next_pem)?)?;
        }
        self.drop_next()
    }

    fn drop_next(&self) -> Result<(), CaError> {
        let rm = |name: &str| match std::fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CaError::Io { what: "remove", path: self.path(name), error: e })
            }
            _ => Ok(()),
        };
        // The rotation file last: while it says finishing or abandoning, a restart completes this.
        rm("next.key")?;
        rm("next.pem")?;
        rm("cross.pem")?;
        rm("rotation.json")
    }
}

/// The key id sealed values carry for a CA's pin (`crate::seal`).
pub fn kid(pin: &str) -> String {
    pin.chars().filter(char::is_ascii_alphanumeric).take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_goes_through_its_phases_on_disk_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let pki = Pki::open(&ca, None).unwrap();
        let old = pki.keys().current.pin().to_string();
        assert_eq!(pki.keys().needs(&[], ""), None, "an agent that says nothing is left alone");
        let r = pki.start("admin").unwrap();
        assert_eq!((r.phase, r.current_pin.as_str()), (Phase::Init, old.as_str()));
        assert!(pki.start("admin").unwrap_err().to_string().contains("already in progress"));
        let keys = pki.keys();
        assert_eq!(keys.trust_pins(), vec![old.clone(), r.next_pin.clone()]);
        assert_eq!(keys.signing().pin(), old);
        assert_eq!(keys.needs(std::slice::from_ref(&old), &old), Some(Push::Renew));
        assert_eq!(keys.needs(&keys.trust_pins(), &old), None);
        // A hub restarted mid-rotation is where it was.
        let again = Pki::open(&ca, None).unwrap();
        assert_eq!(again.keys().rotation, Some(r.clone()));
        assert!(pki.set_phase(Phase::UpdateServers).unwrap_err().to_string().contains("cannot go to"));
        pki.set_phase(Phase::UpdateClients).unwrap();
        assert_eq!(pki.keys().signing().pin(), r.next_pin);
        assert_eq!(pki.keys().serving().pin(), old);
        pki.set_phase(Phase::UpdateServers).unwrap();
        assert_eq!(pki.keys().serving().pin(), r.next_pin);
        pki.set_phase(Phase::Standby).unwrap();
        let keys = pki.keys();
        assert_eq!((keys.phase(), keys.current.pin()), (Phase::Standby, r.next_pin.as_str()));
        assert_eq!(keys.trust_pins(), vec![r.next_pin.clone()]);
        assert_eq!(keys.needs(&[old.clone(), r.next_pin.clone()], &r.next_pin), Some(Push::TrustOnly));
        assert_eq!(keys.retired.len(), 1, "the old key is kept to open what it sealed");
        assert_eq!(keys.retired[0].1, kid(&old));
        for f in ["next.pem", "next.key", "cross.pem", "rotation.json"] {
            assert!(!ca.join(f).exists(), "{f}");
        }
        assert_eq!(Pki::read(&ca, None).unwrap().keys().current.pin(), r.next_pin);
    }

    #[test]
    fn a_rollback_keeps_the_current_ca_and_a_crash_while_finishing_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let pki = Pki::open(&ca, None).unwrap();
        let old = pki.keys().current.pin().to_string();
        pki.start("a").unwrap();
        pki.set_phase(Phase::UpdateClients).unwrap();
        pki.set_phase(Phase::UpdateServers).unwrap();
        pki.set_phase(Phase::Rollback).unwrap();
        assert_eq!((pki.keys().signing().pin(), pki.keys().serving().pin()), (old.as_str(), old.as_str()));
        pki.set_phase(Phase::Standby).unwrap();
        assert_eq!(pki.keys().trust_pins(), vec![old.clone()]);
        assert!(!ca.join("next.key").exists() && !ca.join("retired").exists());

        // Finishing, interrupted after the key was replaced and before the certificate was.
        let r = pki.start("a").unwrap();
        pki.set_phase(Phase::UpdateClients).unwrap();
        pki.set_phase(Phase::UpdateServers).unwrap();
        let mut half = r.clone();
        half.phase = Phase::Finishing;
        std::fs::write(ca.join("rotation.json"), serde_json::to_vec(&half).unwrap()).unwrap();
        std::fs::copy(ca.join("next.key"), ca.join("ca.key")).unwrap();
        let reopened = Pki::open(&ca, None);
        // The copy above went around the retire step: the old key is lost to this test, not to the hub,
        // which writes `retired/` before it touches ca.key.
        let keys = reopened.unwrap().keys();
        assert_eq!(keys.current.pin(), r.next_pin);
        assert!(keys.rotation.is_none());
    }

    #[test]
    fn the_cross_signed_chain_verifies_for_a_party_that_trusts_only_the_old_ca() {
        use rustls::client::WebPkiServerVerifier;
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
        outpost_common::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::open(&dir.path().join("ca"), None).unwrap();
        let old_pem = pki.keys().current.cert_pem().to_string();
        pki.start("a").unwrap();
        pki.set_phase(Phase::UpdateClients).unwrap();
        pki.set_phase(Phase::UpdateServers).unwrap();
        let keys = pki.keys();
        let (leaf_chain, _) =
            keys.serving().issue_server_for(&["hub.example".into()], std::time::Duration::from_secs(3600)).unwrap();
        let chain = keys.serving_chain(&leaf_chain);
        let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(chain.as_bytes()).map(|c| c.unwrap()).collect();
        assert_eq!(certs.len(), 3, "leaf, cross-signed next, current");
        let verify = |trust: &str| {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(trust.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let v = WebPkiServerVerifier::builder(Arc::new(roots)).build().unwrap();
            v.verify_server_cert(
                &certs[0],
                &certs[1..],
                &ServerName::try_from("hub.example").unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
        };
        verify(&old_pem).expect("through the cross-signed certificate");
        verify(keys.next.as_ref().unwrap().cert_pem()).expect("directly");
        verify(&keys.trust_pem()).expect("with both");
        let other = FleetCa::load_or_create(&dir.path().join("other"), None).unwrap();
        assert!(verify(other.cert_pem()).is_err(), "a stranger's CA verifies nothing");
    }
}
