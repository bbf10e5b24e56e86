//! Operator identities: which operators the hub has seen, revocation by name, and their live sessions.
//!
//! Operator bundles are issued next to the hub (`hubd operator issue` signs with the CA on disk), so the
//! hub learns of a bundle when it is first used. Revocation is of a *name* up to a time: every certificate
//! of that operator issued until then (its `outpost://issued/` SAN) is refused, whether or not the hub ever
//! saw it, and a bundle issued afterwards works. Live sessions (fleet watches) of the name are closed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use outpost_common::{CertInfo, Role};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::store::{OperatorRevocation, OperatorStore, StoreError};

/// What the hub knows of one operator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OperatorInfo {
    pub name: String,
    pub role: String,
    pub serial: String,
    pub not_after: i64,
    pub last_seen_ms: i64,
    pub revoked_ms: i64,
}

#[derive(Default)]
struct Seen {
    role: String,
    serial: String,
    not_after: i64,
    last_seen_ms: i64,
}

pub struct Operators {
    store: Arc<dyn OperatorStore>,
    revoked: Mutex<BTreeMap<String, OperatorRevocation>>,
    seen: Mutex<BTreeMap<String, Seen>>,
    sessions: Mutex<BTreeMap<String, CancellationToken>>,
}

impl Operators {
    pub async fn load(store: Arc<dyn OperatorStore>) -> Result<Operators, StoreError> {
        let revoked = store.operator_revocations().await?.into_iter().collect();
        Ok(Operators { store, revoked: Mutex::new(revoked), seen: Mutex::default(), sessions: Mutex::default() })
    }

    /// When `name`'s certificate issued at `issued_ms` was revoked, if it was.
    pub fn revoked_at(&self, name: &str, issued_ms: i64) -> Option<i64> {
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        revoked.get(name).map(|r| r.revoked_ms).filter(|&at| issued_ms <= at)
    }

    /// Notes an authenticated call.
    pub fn seen(&self, name: &str, role: Role, cert: &CertInfo) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let e = seen.entry(name.to_string()).or_default();
        e.role = role.to_string();
        e.serial.clone_from(&cert.serial);
        e.not_after = cert.not_after;
        e.last_seen_ms = outpost_common::now_ms();
    }

    /// A token cancelled when `name` is revoked: live sessions of that operator end with it.
    pub fn session(&self, name: &str) -> CancellationToken {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.entry(name.to_string()).or_default().child_token()
    }

    /// Revokes every certificate of `name` issued until now and closes its sessions. Returns whether a
    /// session was open.
    pub async fn revoke(&self, name: &str, by: &str) -> Result<bool, StoreError> {
        let rev = OperatorRevocation { revoked_ms: outpost_common::now_ms(), by: by.to_string() };
        self.store.revoke_operator(name, &rev).await?;
        self.revoked.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), rev);
        let session = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(session.map(|t| t.cancel()).is_some())
    }

    /// Reads the revocations again (another hub of the same store revoked someone): sessions of newly
    /// revoked operators are closed. Returns how many revocations are new.
    pub async fn reload(&self) -> Result<usize, StoreError> {
        let now: BTreeMap<String, OperatorRevocation> = self.store.operator_revocations().await?.into_iter().collect();
        let mut revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let new: Vec<String> = now.iter().filter(|(n, r)| revoked.get(*n) != Some(r)).map(|(n, _)| n.clone()).collect();
        *revoked = now;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for name in &new {
            if let Some(s) = sessions.remove(name) {
                s.cancel();
            }
        }
        Ok(new.len())
    }

    /// Every operator seen since the hub started, and every revoked one.
    pub fn list(&self) -> Vec<OperatorInfo> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let revoked = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<String, OperatorInfo> = BTreeMap::new();
        for (name, s) in seen.iter() {
            out.insert(
                name.clone(),
                OperatorInfo {
                    name: name.clone(),
                    role: s.role.clone(),
                    serial: s.serial.clone(),
                    not_after: s.not_after,
                    last_seen_ms: s.last_seen_ms,
                    revoked_ms: 0,
                },
            );
        }
        for (name, r) in revoked.iter() {
            let e =
                out.entry(name.clone()).or_insert_with(|| OperatorInfo { name: name.clone(), ..Default::default() });
            e.revoked_ms = r.revoked_ms;
        }
        out.into_values().collect()
    }
}
