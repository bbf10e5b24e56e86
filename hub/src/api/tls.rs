//! The hub's TLS, done here rather than by tonic so that its certificate can be replaced while it serves:
//! the serving certificate is renewed before it expires (`ServerTls::renewal_due`, driven by `hub::start`),
//! and connections open by then keep theirs. Client certificates are optional at this layer (`Enroll` shares
//! the port) and checked against the fleet CA when given; `auth` demands one for every other RPC.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// A handshake must finish within this (a peer that opens a connection and sends nothing holds no task).
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past it, new connections wait to be accepted.
const MAX_HANDSHAKES: usize = 1024;

/// The hub's TLS configuration, replaceable while it serves.
pub struct ServerTls {
    config: RwLock<Arc<ServerConfig>>,
    /// When the serving certificate was put in (its `not_before` is backdated for clock skew) and when it
    /// ends (unix seconds).
    since: AtomicI64,
    not_after: AtomicI64,
}

impl ServerTls {
    /// From the hub's certificate chain and key (PEM) and the CAs client certificates must chain to.
    pub fn new(chain: &str, key: &str, trust_pem: &str) -> Result<ServerTls, String> {
        let (config, na) = build(chain, key, trust_pem)?;
        Ok(ServerTls {
            config: RwLock::new(Arc::new(config)),
            since: AtomicI64::new(outpost_common::now_secs()),
            not_after: AtomicI64::new(na),
        })
    }

    /// Serves `chain` and `key`, and trusts the CAs in `trust_pem`, on every connection from now on.
    pub fn set(&self, chain: &str, key: &str, trust_pem: &str) -> Result<(), String> {
        let (config, na) = build(chain, key, trust_pem)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.since.store(outpost_common::now_secs(), Ordering::Relaxed);
        self.not_after.store(na, Ordering::Relaxed);
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// When the serving certificate expires (unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after.load(Ordering::Relaxed)
    }

    /// Two thirds into the serving certificate's life since it was put in (as agents renew theirs).
    pub fn renewal_due(&self, now_secs: i64) -> bool {
        let (since, na) = (self.since.load(Ordering::Relaxed), self.not_after.load(Ordering::Relaxed));
        now_secs >= since + (na - since) * 2 / 3
    }
}

/// The configuration, and when the certificate ends (unix seconds).
fn build(chain: &str, key: &str, trust_pem: &str) -> Result<(ServerConfig, i64), String> {
    let certs = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the hub's certificate chain: {e}"))?;
    let leaf = certs.first().ok_or("the hub's certificate chain is empty")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("the hub's certificate: {e}"))?;
    let not_after = parsed.validity().not_after.timestamp();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("the hub's key: {e}"))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(trust_pem.as_bytes()) {
        roots.add(ca.map_err(|e| format!("the fleet CA: {e}"))?).map_err(|e| format!("the fleet CA: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| format!("the hub's certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, not_after))
}

/// A connection after its handshake, boxed as tonic boxes its own TLS streams: the TLS state (kilobytes) is
/// held once, at its size, not inline in every layer above it. Its peer certificates reach
/// `Request::peer_certs` as with tonic's TLS.
pub struct Tls(Box<TlsStream<TcpStream>>);

impl tonic::transport::server::Connected for Tls {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

impl tokio::io::AsyncRead for Tls {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tls {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Connections accepted on `listener` after their TLS handshake, each with the configuration current when
/// it arrived; failed handshakes are dropped (the peer sees the TLS error). Ends at `shutdown`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Tls>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else { break };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(error) => {
                    // Out of file descriptors and the like: say so, and do not spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Without it, Nagle plus delayed ACKs added ~40 ms to every small message (action round trip 44 ms).
            let _ = stream.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Tls(Box::new(tls)))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serving_certificate_is_due_two_thirds_into_its_life_and_can_be_replaced() {
        outpost_common::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::ca::FleetCa::load_or_create(dir.path(), None).unwrap();
        let names = ["127.0.0.1".to_string()];
        let day = 86_400;
        let (chain, key) = ca.issue_server_for(&names, Duration::from_secs(30 * day as u64)).unwrap();
        let tls = ServerTls::new(&chain, &key, ca.cert_pem()).unwrap();
        let now = outpost_common::now_secs();
        assert!((tls.not_after() - (now + 30 * day)).abs() <= 5, "{}", tls.not_after() - now);
        assert!(!tls.renewal_due(now) && !tls.renewal_due(now + 19 * day));
        assert!(tls.renewal_due(now + 21 * day));
        let (chain, key) = ca.issue_server_for(&names, Duration::from_secs(60 * day as u64)).unwrap();
        tls.set(&chain, &key, ca.cert_pem()).unwrap();
        assert!(tls.not_after() > now + 59 * day && !tls.renewal_due(now + 21 * day));
        assert!(
            tls.set("not a certificate", &key, ca.cert_pem()).is_err(),
            "a bad certificate is refused and the old kept"
        );
        assert!(tls.not_after() > now + 59 * day);
    }
}
