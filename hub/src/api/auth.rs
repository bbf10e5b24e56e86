//! Who is calling: identity and role from the verified peer certificate, revocation, role checks.
//!
//! The TLS layer has already verified the chain against the fleet CA and the validity window; this module
//! adds what TLS cannot: the outpost identity in the SAN, the revoked-serial denylist and the role.

use std::sync::Arc;
use std::time::Duration;

use outpost_common::{CertInfo, Identity, Role};
use tonic::{Request, Status};

use crate::fleet::identities::Identities;
use crate::pki::operators::Operators;

/// Checks callers against what the hub knows: revoked serials, revoked operators, the operator ceiling.
pub struct Auth {
    identities: Arc<Identities>,
    operators: Arc<Operators>,
    /// Longest operator certificate lifetime this hub accepts.
    operator_cert_max_ttl: Duration,
}

impl Auth {
    pub fn new(identities: Arc<Identities>, operators: Arc<Operators>, operator_cert_max_ttl: Duration) -> Auth {
        Auth { identities, operators, operator_cert_max_ttl }
    }

    pub fn operators(&self) -> &Operators {
        &self.operators
    }

    pub fn peer<T>(&self, req: &Request<T>) -> Result<CertInfo, Status> {
        peer(self, req)
    }

    /// An operator with at least `need`. `what` completes "… needs <role> to <what>".
    pub fn operator<T>(&self, req: &Request<T>, need: Role, what: &str) -> Result<(String, Role), Status> {
        operator(self, req, need, what)
    }

    /// As [`Auth::operator`], for a call that stays open: with a token cancelled when the operator is
    /// revoked. The caller is checked again once the token exists, so a revocation that lands between the
    /// check and the token is either seen by the second check or cancels the token: never missed.
    pub fn operator_session<T>(
        &self,
        req: &Request<T>,
        need: Role,
        what: &str,
    ) -> Result<(String, Role, tokio_util::sync::CancellationToken), Status> {
        let (name, _) = operator(self, req, need, what)?;
        let session = self.operators.session(&name);
        let (name, role) = operator(self, req, need, what)?;
        Ok((name, role, session))
    }
}

fn peer<T>(state: &Auth, req: &Request<T>) -> Result<CertInfo, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(
            "this RPC needs a client certificate from the fleet CA (mTLS): use an agent identity or an operator bundle",
        )
    })?;
    let leaf =
        certs.first().ok_or_else(|| Status::unauthenticated("the client presented an empty certificate chain"))?;
    let info = CertInfo::from_der(leaf).map_err(|e| Status::unauthenticated(e.to_string()))?;
    if !info.client_auth {
        return Err(Status::unauthenticated(format!(
            "certificate {} ({}) does not allow TLS client authentication (no clientAuth extended key usage); use a certificate issued by hubd",
            info.serial, info.identity
        )));
    }
    if let Identity::Operator { name, role } = &info.identity {
        if let Some(at) = state.operators.revoked_at(name, info.issued_ms) {
            return Err(Status::permission_denied(format!(
                "operator {name}'s certificates issued until {} were revoked; ask an admin for a new bundle (`hubd operator issue --name {name} …`)",
                outpost_common::when::rfc3339(at)
            )));
        }
        let max = state.operator_cert_max_ttl.as_secs() as i64;
        // The CA backdates by at most five minutes.
        if info.not_after - info.issued_ms / 1000 > max + 300 {
            return Err(Status::permission_denied(format!(
                "operator certificate {} lives {} days, over this hub's ceiling of {} days ([operators] cert_max_ttl_secs); ask an admin for a new bundle",
                info.serial,
                (info.not_after - info.issued_ms / 1000) / 86_400,
                max / 86_400
            )));
        }
        state.operators.seen(name, *role, &info);
    }
    if state.identities.is_revoked(&info.serial) {
        return Err(Status::permission_denied(format!(
            "certificate {} ({}) was revoked; {}",
            info.serial,
            info.identity,
            match info.identity {
                Identity::Agent { .. } =>
                    "enroll this agent again with a new join token (`hubd token create --server NAME`)",
                Identity::Operator { .. } => "ask an admin for a new operator bundle (`hubd operator issue`)",
            }
        )));
    }
    Ok(info)
}

fn operator<T>(state: &Auth, req: &Request<T>, need: Role, what: &str) -> Result<(String, Role), Status> {
    match peer(state, req)?.identity {
        Identity::Operator { name, role } if role >= need => Ok((name, role)),
        Identity::Operator { name, role } => Err(Status::permission_denied(format!(
            "operator {name} has role {role}; {what} needs role {need} or higher"
        ))),
        Identity::Agent { id } => Err(Status::permission_denied(format!(
            "agent {id} presented an agent certificate; the operator API needs an operator certificate"
        ))),
    }
}
