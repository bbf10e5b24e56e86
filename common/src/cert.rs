//! Reading identities out of certificates.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// URI scheme prefix of every identity the fleet CA issues.
const AGENT_PREFIX: &str = "outpost://agent/";
const OPERATOR_PREFIX: &str = "outpost://operator/";
/// A second SAN URI carries when the certificate was issued (unix ms): an operator's revocation refuses
/// every certificate of that name issued until then, including ones the hub never saw.
const ISSUED_PREFIX: &str = "outpost://issued/";

/// The SAN URI that records the issue time `ms`.
pub fn issued_uri(ms: i64) -> String {
    format!("{ISSUED_PREFIX}{ms}")
}

/// What an operator may do. Ordered: a higher role can do everything a lower one can.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read-only.
    Viewer,
    /// Actions on servers.
    Support,
    /// Tokens, provisioning, revocation.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Support => "support",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "support" => Ok(Role::Support),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}; expected viewer, support or admin")),
        }
    }
}

/// Who is on the other end of an mTLS connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Agent { id: String },
    Operator { name: String, role: Role },
}

impl Identity {
    /// The SAN URI that carries this identity.
    pub fn uri(&self) -> String {
        match self {
            Identity::Agent { id } => format!("{AGENT_PREFIX}{id}"),
            Identity::Operator { name, role } => format!("{OPERATOR_PREFIX}{name}?role={role}"),
        }
    }

    fn from_uri(uri: &str) -> Option<Identity> {
        if let Some(id) = uri.strip_prefix(AGENT_PREFIX) {
            return valid_name(id).then(|| Identity::Agent { id: id.to_string() });
        }
        let rest = uri.strip_prefix(OPERATOR_PREFIX)?;
        let (name, role) = rest.split_once("?role=")?;
        let role = role.parse().ok()?;
        valid_name(name).then(|| Identity::Operator { name: name.to_string(), role })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Agent { id } => write!(f, "agent {id}"),
            Identity::Operator { name, role } => write!(f, "operator {name} ({role})"),
        }
    }
}

/// Names of servers, operators and agent ids: 1–63 characters of `[a-z0-9-]`, not starting or ending with
/// `-` (a DNS label, so a name is safe in a URI, a path and a hostname).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the certificate could not be parsed: {0}")]
    Unparseable(String),
    #[error(
        "the certificate carries no outpost identity (expected a SAN URI outpost://agent/<id> or outpost://operator/<name>?role=<role>)"
    )]
    NoIdentity,
}

/// The facts the hub needs from a verified peer certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub identity: Identity,
    /// Lower-case hex, no separators.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix ms when the CA issued it (from its `outpost://issued/` SAN; `not_before` for older certificates).
    pub issued_ms: i64,
    /// Whether the extended key usage allows TLS client authentication.
    pub client_auth: bool,
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<CertInfo, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::Unparseable(e.to_string()))?;
        let san = cert.subject_alternative_name().ok().flatten();
        let uris = || {
            san.iter().flat_map(|san| san.value.general_names.iter()).filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
        };
        let identity = uris().find_map(Identity::from_uri).ok_or(IdentityError::NoIdentity)?;
        let not_before = cert.validity().not_before.timestamp();
        let issued_ms = uris()
            .find_map(|u| u.strip_prefix(ISSUED_PREFIX).and_then(|ms| ms.parse().ok()))
            .unwrap_or(not_before * 1000);
        let client_auth = cert.extended_key_usage().ok().flatten().is_some_and(|e| e.value.client_auth);
        Ok(CertInfo {
            identity,
            serial: hex(cert.raw_serial()),
            not_before,
            not_after: cert.validity().not_after.timestamp(),
            issued_ms,
            client_auth,
        })
    }

    /// Parses the first certificate of a PEM chain.
    pub fn from_pem(pem: &str) -> Result<CertInfo, IdentityError> {
        let der =
            first_cert_der(pem).ok_or_else(|| IdentityError::Unparseable("no CERTIFICATE block in PEM".into()))?;
        CertInfo::from_der(&der)
    }
}

/// The DER of the first `CERTIFICATE` block of a PEM text.
pub fn first_cert_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok().map(|c| c.to_vec())
}

/// The CA pin: `sha256:` and the lower-case hex SHA-256 of the CA certificate's DER.
pub fn ca_pin(ca_der: &[u8]) -> String {
    format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, ca_der).as_ref()))
}

/// The most bytes a CA bundle may have (two P-256 CAs are about 1.2 KB).
pub const MAX_CA_BUNDLE: usize = 32 * 1024;

/// The pins of a bundle of CA certificates from the hub (a CA rotation's trust): 1 to
/// [`crate::report::MAX_CA_PINS`] certificates, each one a CA, within [`MAX_CA_BUNDLE`] bytes.
pub fn check_ca_bundle(pem: &str) -> Result<Vec<String>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    if pem.len() > MAX_CA_BUNDLE {
        return Err(format!("the CA bundle is {} bytes; at most {MAX_CA_BUNDLE}", pem.len()));
    }
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA bundle is not PEM certificates: {e}"))?;
    if certs.is_empty() || certs.len() > crate::report::MAX_CA_PINS {
        return Err(format!("the CA bundle holds {} certificates; 1 to {}", certs.len(), crate::report::MAX_CA_PINS));
    }
    certs
        .iter()
        .map(|der| {
            let (_, cert) =
                X509Certificate::from_der(der).map_err(|e| format!("a certificate of the CA bundle: {e}"))?;
            match cert.basic_constraints() {
                Ok(Some(bc)) if bc.value.ca => Ok(ca_pin(der)),
                _ => Err("the CA bundle holds a certificate that is not a CA".to_string()),
            }
        })
        .collect()
}

/// A fresh P-256 key and a CSR for it with nothing in it (the hub decides names and usages): what agents
/// enroll and renew with, and what an operator renews its bundle with.
pub fn key_and_csr() -> Result<(rcgen::KeyPair, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).and_then(|c| c.pem()).map_err(|e| e.to_string())?;
    Ok((key, csr))
}

/// The pins of the certificates in `pem` (those that parse).
pub fn pins_of(pem: &str) -> Vec<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).flatten().map(|c| ca_pin(&c)).collect()
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A CA rotation's status in words (`hubd ca rotate status`, `outpost ca status`). The hub's names are
/// server names (validated at enrollment), printed as they are.
pub fn rotation_summary(s: &outpost_proto::v1::CaRotationStatus) -> String {
    use crate::when::rfc3339;
    let mut out = String::new();
    if !s.message.is_empty() {
        out.push_str(&format!("{}\n", crate::text::Inert(&s.message)));
    }
    if s.phase == "standby" {
        out.push_str(&format!("no rotation in progress; the fleet CA is {}\n", s.current_pin));
        return out;
    }
    out.push_str(&format!(
        "phase {} since {} (rotation started {} by {})\ncurrent CA {}\nnext CA    {}\n",
        s.phase,
        rfc3339(s.phase_ms),
        rfc3339(s.started_ms),
        crate::text::Inert(&s.by),
        s.current_pin,
        s.next_pin
    ));
    let list = |n: u32, names: &[String]| {
        let mut l = names.join(", ");
        if n as usize > names.len() {
            l.push_str(&format!(" and {} more", n as usize - names.len()));
        }
        l
    };
    out.push_str(&format!("servers {}: {} done", s.servers, s.done));
    if s.lagging > 0 {
        out.push_str(&format!(", {} connected and not yet done ({})", s.lagging, list(s.lagging, &s.lagging_names)));
    }
    if s.offline > 0 {
        out.push_str(&format!(", {} offline ({})", s.offline, list(s.offline, &s.offline_names)));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip() {
        for id in [
            Identity::Agent { id: "a1b2".into() },
            Identity::Operator { name: "alice".into(), role: Role::Viewer },
            Identity::Operator { name: "bob-2".into(), role: Role::Admin },
        ] {
            assert_eq!(Identity::from_uri(&id.uri()), Some(id));
        }
    }

    #[test]
    fn foreign_or_malformed_uris_are_not_identities() {
        for uri in [
            "spiffe://agent/x",
            "outpost://agent/",
            "outpost://agent/UPPER",
            "outpost://operator/alice",
            "outpost://operator/alice?role=root",
            "outpost://agent/a/../b",
        ] {
            assert_eq!(Identity::from_uri(uri), None, "{uri}");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Support && Role::Support < Role::Admin);
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert!("root".parse::<Role>().unwrap_err().contains("viewer, support or admin"));
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(valid_name("web-1"));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_ca_bundle_from_the_hub_holds_one_to_four_ca_certificates_and_nothing_else() {
        let cert = |ca: bool| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec!["x.example".to_string()]).unwrap();
            if ca {
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            }
            p.self_signed(&key).unwrap().pem()
        };
        let (a, b) = (cert(true), cert(true));
        let pins = check_ca_bundle(&format!("{a}{b}")).unwrap();
        assert_eq!(pins, pins_of(&format!("{a}{b}")));
        assert_eq!(pins.len(), 2);
        let err = check_ca_bundle(&format!("{a}{}", cert(false))).unwrap_err();
        assert!(err.contains("not a CA"), "{err}");
        assert!(check_ca_bundle(&a.repeat(5)).unwrap_err().contains("1 to 4"));
        assert!(check_ca_bundle("").unwrap_err().contains("1 to 4"));
        assert!(check_ca_bundle(&"x".repeat(MAX_CA_BUNDLE + 1)).unwrap_err().contains("bytes"));
        let (key, csr) = key_and_csr().unwrap();
        assert!(csr.contains("CERTIFICATE REQUEST") && !key.serialize_pem().is_empty());
    }
}
