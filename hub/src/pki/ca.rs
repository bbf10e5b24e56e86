//! The fleet certificate authority.
//!
//! Architecture invariant: this is the only module that signs. The hub, never the requester, decides every
//! name, usage and lifetime in a certificate it issues; nothing requested in a CSR is copied through.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_common::{CertInfo, Identity, ca_pin};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

/// Largest CSR accepted, PEM bytes. A P-256 CSR is about 400 bytes.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Clock skew tolerated between hub and agents: certificates start up to this long before issuance
/// (at most a tenth of their lifetime, so "two thirds of not_before..not_after" stays meaningful for the
/// seconds-long certificates of renewal tests).
const BACKDATE: Duration = Duration::from_secs(300);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {what} {path}: {error}")]
    Io { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("CA key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("CA material in {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why a CSR was refused. Each message says what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("csr_pem is {0} bytes; the limit is {MAX_CSR_BYTES}")]
    TooLarge(usize),
    #[error("csr_pem is not a PEM-encoded PKCS#10 certificate request")]
    NotPem,
    #[error("the CSR could not be parsed as PKCS#10")]
    Unparseable,
    #[error("the CSR signature does not verify; generate the CSR with the key it names")]
    BadSignature,
    #[error("the CSR key is {0}; agents must use ECDSA P-256 keys")]
    KeyType(String),
    #[error("the CSR requests subject {0:?}; leave the subject empty: the hub assigns names")]
    Subject(String),
    #[error("the CSR requests extensions (names or usages); send none: the hub assigns names and usages")]
    Extensions,
}

/// What one issued certificate is.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf then CA.
    pub chain_pem: String,
    pub info: CertInfo,
}

pub struct FleetCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    pin: String,
    /// The key secrets the hub must keep are sealed with (`crate::seal`), derived from the CA key.
    seal_secret: [u8; 32],
}

impl FleetCa {
    /// Loads the CA from `cert`/`key`, or creates one in `dir` on first start (key written 0600).
    pub fn load_or_create(dir: &Path, external: Option<(&Path, &Path)>) -> Result<FleetCa, CaError> {
        let (cert_path, key_path) = paths(dir, external);
        if external.is_none() && !cert_path.exists() && !key_path.exists() {
            create_dir(dir)?;
            let (params, key) = ca_params("Outpost fleet CA")?;
            let cert = params.self_signed(&key).map_err(|e| CaError::Sign(e.to_string()))?;
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_public(&cert_path, cert.pem().as_bytes())?;
            tracing::info!(path = %cert_path.display(), "created fleet CA");
        }
        Self::load(dir, external)
    }

    /// A new CA in `cert_path`/`key_path` (the next one of a rotation), and its certificate signed by this
    /// CA too (PEM): a party that trusts only this CA still verifies what the new one signed, through it.
    /// Its name carries the time, so that the two CAs' names differ.
    pub fn create_successor(&self, cert_path: &Path, key_path: &Path) -> Result<(FleetCa, String), CaError> {
        let stamp = OffsetDateTime::now_utc();
        let cn = format!(
            "Outpost fleet CA {:04}{:02}{:02}{:02}{:02}{:02}",
            stamp.year(),
            u8::from(stamp.month()),
            stamp.day(),
            stamp.hour(),
            stamp.minute(),
            stamp.second()
        );
        let (params, key) = ca_params(&cn)?;
        let cert = params.self_signed(&key).map_err(|e| CaError::Sign(e.to_string()))?;
        let cross = params.signed_by(&key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        write_private(key_path, key.serialize_pem().as_bytes())?;
        write_public(cert_path, cert.pem().as_bytes())?;
        let next = Self::load_files(cert_path, key_path)?;
        Ok((next, cross.pem()))
    }

    /// Loads an existing CA (never creates one).
    pub fn load(dir: &Path, external: Option<(&Path, &Path)>) -> Result<FleetCa, CaError> {
        let (cert_path, key_path) = paths(dir, external);
        Self::load_files(&cert_path, &key_path)
    }

    /// Loads the CA certificate `cert_path` with its key `key_path` (which must be 0600).
    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<FleetCa, CaError> {
        let (cert_path, key_path) = (cert_path.to_path_buf(), key_path.to_path_buf());
        let cert_pem = read(&cert_path)?;
        check_private(&key_path)?;
        let key_pem = read(&key_path)?;
        let invalid = |path: &Path, reason: String| CaError::Invalid { path: path.to_path_buf(), reason };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(&key_path, e.to_string()))?;
        let seal_secret = seal_secret(&key.serialize_der());
        let cert_der = outpost_common::cert::first_cert_der(&cert_pem)
            .ok_or_else(|| invalid(&cert_path, "no CERTIFICATE block".into()))?;
        let issuer =
            Issuer::from_ca_cert_der(&cert_der.clone().into(), key).map_err(|e| invalid(&cert_path, e.to_string()))?;
        let pin = ca_pin(&cert_der);
        Ok(FleetCa { cert_pem, cert_der, issuer, pin, seal_secret })
    }

    /// The seal secret of a CA key kept after its CA was retired (`ca/retired/KID.key`): it only opens what
    /// was sealed before the rotation.
    pub fn seal_secret_of(key_path: &Path) -> Result<[u8; 32], CaError> {
        check_private(key_path)?;
        let key_pem = read(key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| CaError::Invalid { path: key_path.to_path_buf(), reason: e.to_string() })?;
        Ok(seal_secret(&key.serialize_der()))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// `sha256:<hex>` of the CA certificate: what join tokens carry.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The secret the hub seals what it must hold with: HKDF-SHA256 of the CA's private key, so it lives
    /// where the CA key lives (a file kept apart from the store, 0600) and every replica sharing the CA
    /// shares it. Never stored.
    pub fn seal_secret(&self) -> [u8; 32] {
        self.seal_secret
    }

    /// Checks a CSR against the agent policy and returns its verified public key.
    pub fn check_csr(csr_pem: &str) -> Result<rcgen::PublicKey, CsrError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge(csr_pem.len()));
        }
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|_| CsrError::NotPem)?;
        let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|_| CsrError::Unparseable)?;
        // The key type first: a weak RSA key whose signature the verifier will not even check must be told
        // what is wrong with it, not "the signature does not verify".
        let info = &parsed.certification_request_info;
        let key_oid = info.subject_pki.algorithm.algorithm.to_id_string();
        let curve =
            info.subject_pki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
        // id-ecPublicKey with prime256v1.
        if key_oid != "1.2.840.10045.2.1" || curve.as_deref() != Some("1.2.840.10045.3.1.7") {
            return Err(CsrError::KeyType(key_name(&key_oid, curve.as_deref())));
        }
        parsed.verify_signature().map_err(|_| CsrError::BadSignature)?;
        if info.subject.iter().next().is_some() {
            return Err(CsrError::Subject(info.subject.to_string()));
        }
        if parsed.requested_extensions().is_some_and(|mut e| e.next().is_some()) {
            return Err(CsrError::Extensions);
        }
        let params = CertificateSigningRequestParams::from_der(&der).map_err(|_| CsrError::BadSignature)?;
        Ok(params.public_key)
    }

    /// Issues an agent client certificate for `agent_id` from a checked CSR.
    pub fn sign_agent(&self, csr_pem: &str, agent_id: &str, ttl: Duration) -> Result<Issued, SignError> {
        let public_key = Self::check_csr(csr_pem)?;
        let identity = Identity::Agent { id: agent_id.to_string() };
        self.issue(&public_key, &identity, agent_id, ttl).map_err(SignError::Ca)
    }

    /// Issues an operator certificate for a checked CSR (an operator renewing its own bundle).
    pub fn sign_operator(
        &self,
        csr_pem: &str,
        name: &str,
        role: outpost_common::Role,
        ttl: Duration,
    ) -> Result<Issued, SignError> {
        let public_key = Self::check_csr(csr_pem)?;
        let identity = Identity::Operator { name: name.to_string(), role };
        self.issue(&public_key, &identity, name, ttl).map_err(SignError::Ca)
    }

    /// Issues an operator certificate with a fresh key; returns (chain, key PEM).
    pub fn issue_operator(
        &self,
        name: &str,
        role: outpost_common::Role,
        ttl: Duration,
    ) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let identity = Identity::Operator { name: name.to_string(), role };
        let issued = self.issue(&key, &identity, name, ttl)?;
        Ok((issued, key.serialize_pem()))
    }

    fn issue(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        identity: &Identity,
        cn: &str,
        ttl: Duration,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let uri = |u: String| u.try_into().map_err(|e: rcgen::Error| CaError::Sign(e.to_string()));
        params.subject_alt_names = vec![
            SanType::URI(uri(identity.uri())?),
            SanType::URI(uri(outpost_common::cert::issued_uri(outpost_common::now_ms()))?),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE.min(ttl / 10);
        params.not_after = now + ttl;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(public_key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        let info = CertInfo::from_der(cert.der()).map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Issued { chain_pem: format!("{}{}", cert.pem(), self.cert_pem), info })
    }

    /// The hub's own server certificate (fresh key each start; the key never touches disk), for 90 days.
    pub fn issue_server(&self, names: &[String]) -> Result<(String, String), CaError> {
        self.issue_server_for(names, SERVER_CERT_VALIDITY)
    }

    /// The hub's own server certificate for `validity` (a fresh key each time, never on disk).
    pub fn issue_server_for(&self, names: &[String], validity: Duration) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| CaError::Sign(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "outpost hubd");
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|e: rcgen::Error| CaError::Sign(format!("tls name {name:?}: {e}")))?,
                ),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((format!("{}{}", cert.pem(), self.cert_pem), key.serialize_pem()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Ca(CaError),
}

fn paths(dir: &Path, external: Option<(&Path, &Path)>) -> (PathBuf, PathBuf) {
    match external {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
        None => (dir.join("ca.pem"), dir.join("ca.key")),
    }
}

/// A CA's parameters (ten years, may sign leaf certificates only) and a fresh key.
fn ca_params(cn: &str) -> Result<(CertificateParams, KeyPair), CaError> {
    let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial());
    Ok((params, key))
}

fn key_name(oid: &str, curve: Option<&str>) -> String {
    match (oid, curve) {
        ("1.2.840.113549.1.1.1", _) => "RSA".into(),
        ("1.3.101.112", _) => "Ed25519".into(),
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => "ECDSA P-384".into(),
        ("1.2.840.10045.2.1", c) => format!("ECDSA on curve {}", c.unwrap_or("?")),
        (o, _) => format!("algorithm {o}"),
    }
}

/// 128 random bits with the top bit clear (serials must be positive).
fn random_serial() -> SerialNumber {
    let mut bytes = outpost_common::random_bytes::<16>();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01 << 6; // never a leading zero byte, so the hex serial has a stable width
    SerialNumber::from_slice(&bytes)
}

/// HKDF-SHA256 of `key_der` for the seal key (info "outpost seal v1").
fn seal_secret(key_der: &[u8]) -> [u8; 32] {
    struct Len32;
    impl ring::hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"outpost-hub").extract(key_der);
    prk.expand(&[b"outpost seal v1"], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|error| CaError::Io { what: "read", path: path.into(), error })
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    fs::create_dir_all(dir).map_err(|error| CaError::Io { what: "create", path: dir.into(), error })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|error| CaError::Io {
        what: "chmod",
        path: dir.into(),
        error,
    })
}

fn check_private(path: &Path) -> Result<(), CaError> {
    let meta = fs::metadata(path).map_err(|error| CaError::Io { what: "read", path: path.into(), error })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyTooOpen { path: path.into(), mode });
    }
    Ok(())
}

/// Writes a secret: created 0600 before any byte is written, replaced atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write_atomic(path, bytes, 0o600)
}

pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    write_atomic(path, bytes, 0o644)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let io = |what, error| CaError::Io { what, path: path.into(), error };
    let _ = fs::remove_file(&tmp);
    let mut f =
        fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(|e| io("create", e))?;
    f.write_all(bytes).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (tempfile::TempDir, FleetCa) {
        let dir = tempfile::tempdir().unwrap();
        let ca = FleetCa::load_or_create(&dir.path().join("ca"), None).unwrap();
        (dir, ca)
    }

    fn csr(key: &KeyPair, params: CertificateParams) -> String {
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn empty_params() -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p
    }

    #[test]
    fn key_is_private_and_ca_reloads_with_same_pin() {
        let (dir, ca) = ca();
        let mode = fs::metadata(dir.path().join("ca/ca.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = FleetCa::load_or_create(&dir.path().join("ca"), None).unwrap();
        assert_eq!(ca.pin(), again.pin());
    }

    #[test]
    fn open_key_is_refused() {
        let (dir, _) = ca();
        let key = dir.path().join("ca/ca.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = FleetCa::load_or_create(&dir.path().join("ca"), None).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn hub_decides_names_usages_and_lifetime() {
        let (_d, ca) = ca();
        let key = KeyPair::generate().unwrap();
        let issued = ca.sign_agent(&csr(&key, empty_params()), "abc123", Duration::from_secs(600)).unwrap();
        assert_eq!(issued.info.identity, Identity::Agent { id: "abc123".into() });
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!((issued.info.not_after - now - 600).abs() <= 2);
        let der = outpost_common::cert::first_cert_der(&issued.chain_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
    }

    #[test]
    fn bad_csrs_are_refused_precisely() {
        let (_d, ca) = ca();
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert_eq!(FleetCa::check_csr(&csr(&ed, empty_params())).unwrap_err(), CsrError::KeyType("Ed25519".into()));
        let key = KeyPair::generate().unwrap();
        let named = CertificateParams::default(); // rcgen's default has a CN
        assert!(matches!(FleetCa::check_csr(&csr(&key, named)), Err(CsrError::Subject(_))));
        let sans = {
            let mut p = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
            p.distinguished_name = DistinguishedName::new();
            p
        };
        assert_eq!(FleetCa::check_csr(&csr(&key, sans)).unwrap_err(), CsrError::Extensions);
        assert_eq!(FleetCa::check_csr("hello").unwrap_err(), CsrError::NotPem);
        let garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(FleetCa::check_csr(garbage).unwrap_err(), CsrError::Unparseable);
        assert!(matches!(FleetCa::check_csr(&"x".repeat(MAX_CSR_BYTES + 1)), Err(CsrError::TooLarge(_))));
        let _ = ca;
    }
}
