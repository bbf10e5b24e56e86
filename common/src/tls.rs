//! TLS client set-up shared by agent, console and tools: address validation (no plaintext, ever), the
//! pinned first contact an agent makes before it trusts anything, and mTLS channels.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity, Uri};

use crate::cert::ca_pin;

/// How long a client waits for TCP + TLS before giving up on one attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("hub address {0:?} is not https://HOST:PORT; Outpost never talks plaintext")]
    NotHttps(String),
    #[error("hub address {addr:?} is invalid: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("cannot reach the hub at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "the hub at {addr} did not present a CA matching the pin {expected} (it presented {presented}); the token is for another hub, or the connection is being intercepted: get a fresh token from your hub"
    )]
    PinMismatch { addr: String, expected: String, presented: String },
    #[error("the hub at {addr} presented a certificate that does not verify against the pinned CA: {reason}")]
    BadHubCertificate { addr: String, reason: String },
    #[error("invalid TLS material: {0}")]
    Material(String),
}

/// A validated `https://host:port` hub address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubAddr {
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl HubAddr {
    pub fn parse(addr: &str) -> Result<HubAddr, TlsError> {
        let addr = addr.trim();
        if !addr.starts_with("https://") {
            return Err(TlsError::NotHttps(addr.to_string()));
        }
        let bad = |reason: &str| TlsError::BadAddress { addr: addr.to_string(), reason: reason.to_string() };
        let uri: Uri = addr.parse().map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(&e.to_string()))?;
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().ok_or_else(|| bad("no port (write https://HOST:PORT)"))?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("a hub address has no path"));
        }
        Ok(HubAddr {
            url: format!("https://{host}:{port}"),
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
        })
    }

    /// Several hub addresses (the replicas of one hub), separated by commas: each must parse; at least
    /// one; duplicates are dropped, order is kept. A single address is a list of one.
    pub fn parse_list(addrs: &str) -> Result<Vec<HubAddr>, TlsError> {
        let mut out: Vec<HubAddr> = Vec::new();
        for a in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let a = HubAddr::parse(a)?;
            if !out.contains(&a) {
                out.push(a);
            }
        }
        if out.is_empty() {
            return Err(TlsError::BadAddress { addr: addrs.to_string(), reason: "no address".into() });
        }
        Ok(out)
    }

    /// The list `addrs` written back (what tokens and bundles carry).
    pub fn join(addrs: &[HubAddr]) -> String {
        addrs.iter().map(|a| a.url.as_str()).collect::<Vec<_>>().join(",")
    }

    fn endpoint(&self) -> Result<Endpoint, TlsError> {
        Ok(Endpoint::from_shared(self.url.clone())
            .map_err(|e| TlsError::BadAddress { addr: self.url.clone(), reason: e.to_string() })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true))
    }

    /// A channel that verifies the hub against `ca_pem` and, when given, presents a client identity.
    /// Lazy: the first RPC connects.
    pub fn channel(&self, ca_pem: &str, client: Option<(&str, &str)>) -> Result<Channel, TlsError> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert_pem, key_pem)) = client {
            tls = tls.identity(TlsIdentity::from_pem(cert_pem, key_pem));
        }
        let endpoint = self.endpoint()?.tls_config(tls).map_err(|e| TlsError::Material(e.to_string()))?;
        Ok(endpoint.connect_lazy())
    }
}

/// A TLS client configuration that trusts the certificates in `ca_pem` only (no client certificate): for
/// services other than the hub, such as PostgreSQL.
pub fn client_config(ca_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Material(format!("not a PEM certificate: {e}")))?;
        roots.add(cert).map_err(|e| TlsError::Material(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Material("no CERTIFICATE in the CA file".into()));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Material(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// First contact: connect to the hub, verify its chain against the CA certificate whose SHA-256 equals
/// `pin`, and return that CA as PEM. The handshake completes only if the hub proves possession of a
/// certificate issued by the pinned CA, so a man in the middle learns nothing and gets nothing.
pub async fn fetch_pinned_ca(addr: &HubAddr, pin: &str) -> Result<String, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        Arc::new(PinnedVerifier { pin: pin.to_string(), provider: provider.clone(), outcome: Mutex::new(None) });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Material(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let server_name = ServerName::try_from(addr.host.clone())
        .map_err(|e| TlsError::BadAddress { addr: addr.url.clone(), reason: e.to_string() })?;
    let unreachable = |reason: String| TlsError::Unreachable { addr: addr.url.clone(), reason };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((addr.host.as_str(), addr.port)))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let handshake = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp);
    let result = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| unreachable("TLS handshake timed out".into()))?;
    let outcome = verifier.outcome.lock().expect("verifier lock").take();
    match (result, outcome) {
        (Ok(_stream), Some(Ok(ca_der))) => Ok(pem_encode("CERTIFICATE", &ca_der)),
        (_, Some(Err(e))) => Err(match e {
            PinFailure::Mismatch(presented) => {
                TlsError::PinMismatch { addr: addr.url.clone(), expected: pin.to_string(), presented }
            }
            PinFailure::Invalid(reason) => TlsError::BadHubCertificate { addr: addr.url.clone(), reason },
        }),
        (Err(e), _) => Err(unreachable(e.to_string())),
        (Ok(_), None) => Err(unreachable("the hub's certificate was never checked".into())),
    }
}

enum PinFailure {
    Mismatch(String),
    Invalid(String),
}

struct PinnedVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
    outcome: Mutex<Option<Result<Vec<u8>, PinFailure>>>,
}

impl std::fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedVerifier").field("pin", &self.pin).finish_non_exhaustive()
    }
}

impl PinnedVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<Vec<u8>, PinFailure> {
        let Some(ca) = intermediates.iter().find(|c| ca_pin(c) == self.pin) else {
            let presented = intermediates.iter().map(|c| ca_pin(c)).collect::<Vec<_>>().join(", ");
            return Err(PinFailure::Mismatch(if presented.is_empty() { "no CA".into() } else { presented }));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| PinFailure::Invalid(e.to_string()))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| PinFailure::Invalid(e.to_string()))?;
        webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map_err(|e| PinFailure::Invalid(e.to_string()))?;
        Ok(ca.to_vec())
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let outcome = self.verify(end_entity, intermediates, server_name, ocsp, now);
        let ok = outcome.is_ok();
        *self.outcome.lock().expect("verifier lock") = Some(outcome);
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("hub certificate failed the CA pin check".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// PEM-encodes one DER block.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Why a call failed at the transport, in the words of the innermost error: tonic says "tcp connect
/// error" and keeps the OS error ("Connection refused (os error 111)") at the end of the source chain.
pub fn transport_reason(s: &tonic::Status) -> String {
    let mut reason = s.message().to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = source {
        reason = e.to_string();
        source = e.source();
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_addresses_are_refused() {
        assert!(matches!(HubAddr::parse("http://127.0.0.1:7443"), Err(TlsError::NotHttps(_))));
        assert!(matches!(HubAddr::parse("127.0.0.1:7443"), Err(TlsError::NotHttps(_))));
        let err = HubAddr::parse("https://127.0.0.1").unwrap_err().to_string();
        assert!(err.contains("no port"), "{err}");
        let list = HubAddr::parse_list("https://a:1, https://b:2,https://a:1").unwrap();
        assert_eq!(HubAddr::join(&list), "https://a:1,https://b:2", "parsed, trimmed, duplicates dropped");
        assert!(HubAddr::parse_list(" , ").is_err());
        assert!(matches!(HubAddr::parse_list("https://a:1,http://b:2"), Err(TlsError::NotHttps(_))));
        let a = HubAddr::parse("https://[::1]:7443").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 7443));
    }
}
