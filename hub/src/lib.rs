//! hubd: the Outpost hub.
//!
//! One TLS port serves three gRPC services: `Enrollment` (server-auth TLS only), `AgentLink` and `Operator`
//! (mTLS, identity from the peer certificate). State lives in sled ([`store`]) and, live, in the
//! [`registry`]. See ARCHITECTURE.md for the map and the invariants.

pub mod audit;
pub mod auth;
pub mod ca;
pub mod cli;
pub mod config;
pub mod enroll;
pub mod error;
pub mod gateway;
pub mod jobs;
pub mod limits;
pub mod operator;
pub mod operators;
pub mod registry;
pub mod relay;
pub mod reports;
pub mod state;
pub mod store;
pub mod tokens;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_proto::MAX_MESSAGE_BYTES;
use outpost_proto::v1::{
    agent_link_server::AgentLinkServer, enrollment_server::EnrollmentServer, operator_server::OperatorServer,
};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use config::HubConfig;
use state::HubState;
use store::{Revoked, ServerRecord, Store, Tree};

/// How long shutdown waits for streams to drain before it stops waiting.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot create data directory {path} (or make it private, 0700): {error}")]
    DataDir { path: String, error: std::io::Error },
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

/// A running hub.
pub struct Hub {
    pub addr: SocketAddr,
    /// `https://host:port` for tokens and bundles.
    pub advertise: String,
    pub state: Arc<HubState>,
    serve: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Validates the config, binds, opens the store and the CA, and starts serving. Returns once the port is
/// bound; `shutdown` stops it (then call [`Hub::wait`]).
pub async fn start(config: HubConfig, shutdown: CancellationToken) -> Result<Hub, StartError> {
    config.validate()?;
    // Bind first: with the port taken, nothing (no data directory, CA or store) is created.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| StartError::Bind { addr: config.listen, error })?;
    let addr = listener.local_addr().map_err(|error| StartError::Bind { addr: config.listen, error })?;
    let data_dir = &config.data_dir;
    outpost_common::private_dir(data_dir)
        .map_err(|error| StartError::DataDir { path: data_dir.display().to_string(), error })?;
    let tasks = TaskTracker::new();
    let external = config.ca_cert.as_deref().zip(config.ca_key.as_deref());
    let ca = ca::FleetCa::load_or_create(&data_dir.join("ca"), external)?;
    let store = Store::open(&data_dir.join("store"), config.cache_mib)?;
    let records: Vec<ServerRecord> = store.all_json(Tree::Servers)?.into_iter().map(|(_, r)| r).collect();
    let revoked: HashSet<String> = store.all_json::<Revoked>(Tree::Revoked)?.into_iter().map(|(k, _)| k).collect();
    let latest = |name: &str| {
        store
            .scan_prefix_last(Tree::History, &store::history_prefix(name), 1)
            .ok()
            .and_then(|v| v.into_iter().next())
            .and_then(|v| outpost_proto::v1::HistoryPoint::decode(v.as_ref()).ok())
            .and_then(|p| p.health)
    };
    let registry = registry::Registry::new(records, latest, config.grace());

    let advertise = config.advertise_url(addr);
    let mut names = config.tls_names.clone();
    let adv_host = outpost_common::tls::HubAddr::parse(&advertise).map(|a| a.host).unwrap_or_default();
    names.extend([adv_host, "localhost".into(), "127.0.0.1".into(), "::1".into()]);
    let (chain, key) = ca.issue_server(&names)?;
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(ca.cert_pem()))
        // Enroll runs before the agent has a certificate; every other RPC demands one (auth::peer).
        .client_auth_optional(true)
        .timeout(Duration::from_secs(10));

    let audit = audit::Audit::open(store.clone())?;
    let operators = operators::Operators::load(&store)?;
    let state = Arc::new(HubState::new(
        ca,
        store,
        audit,
        registry,
        operators,
        revoked,
        advertise.clone(),
        &config,
        shutdown.clone(),
        tasks.clone(),
    ));
    let recovered = jobs::recover(&state)?;
    if recovered > 0 {
        tracing::info!(recovered, "commands pending before the restart are delivered again");
    }
    let auditor = state.clone();
    let retention = Duration::from_secs(u64::from(config.audit_retention_days) * 86_400);
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = auditor.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let cutoff = outpost_common::now_ms() - retention.as_millis() as i64;
                    match auditor.audit.trim(cutoff).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(removed = n, "audit records past their retention removed"),
                        Err(error) => tracing::error!(%error, "audit retention failed"),
                    }
                }
            }
        }
        tracing::debug!("audit retention stopped");
    });
    let sweeper = state.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(sweeper.registry.sweep_every());
        loop {
            tokio::select! {
                _ = sweeper.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    sweeper.registry.sweep();
                    sweeper.log_limit.flush();
                }
            }
        }
        tracing::debug!("liveness sweeper stopped");
    });

    let gateway = gateway::Gateway { state: state.clone() };
    let operator = operator::OperatorApi { state: state.clone() };
    let router = Server::builder()
        .tls_config(tls)
        .map_err(|e| StartError::Tls(e.to_string()))?
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(
            EnrollmentServer::new(gateway.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AgentLinkServer::new(gateway)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            // Answers grow with the fleet (ListServers is ~500 B a server) until it is paginated; requests stay
            // bounded at 1 MiB. The watch stream sends its snapshot in bounded parts.
            OperatorServer::new(operator)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(64 << 20),
        );
    // `tcp_nodelay` on the builder applies only to sockets tonic accepts itself, not to this stream: without
    // it, Nagle plus delayed ACKs added ~40 ms to every small message (measured: action round trip 44 ms).
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
        s.and_then(|s| s.set_nodelay(true).map(|()| s))
    });
    let stop = shutdown.clone();
    let serve = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await }));
    tracing::info!(%addr, %advertise, pin = %state.ca.pin(), "hubd listening");
    Ok(Hub { addr, advertise, state, serve })
}

impl Hub {
    /// Waits until the hub has stopped (after `shutdown` is cancelled), draining with a deadline.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Hub { state, serve, .. } = self;
        state.shutdown.cancelled().await;
        // Counted, not logged one by one (metrics will expose them): what a flood or a churn cost.
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            agents_gone = load(&state.agents_gone),
            reports_refused = load(&state.reports_refused),
            "hub stopping"
        );
        let tasks = state.tasks.clone();
        tasks.close();
        let writer = state.store.writer_task();
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async move {
            let served = serve.await; // the services (and their Store clones) are gone after this
            tasks.wait().await;
            drop(state); // the last Store clone: the writer flushes and stops
            if let Some(w) = writer {
                let _ = w.await;
            }
            served
        })
        .await;
        match drained {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(anyhow::anyhow!("server error: {e}")),
            Ok(Err(e)) => Err(anyhow::anyhow!("server task failed: {e}")),
            Err(_) => {
                tracing::warn!(deadline_secs = DRAIN_DEADLINE.as_secs(), "drain deadline passed; stopping anyway");
                Ok(())
            }
        }
    }
}

/// Runs a hub until `shutdown`; prints `READY <url>` on stdout once serving (for scripts and tests) and
/// tells systemd (`Type=notify`).
pub async fn run(config: HubConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let hub = start(config, shutdown).await?;
    println!("READY {} {}", hub.advertise, hub.state.ca.pin());
    sd_notify_ready();
    hub.wait().await
}

/// `READY=1` to `$NOTIFY_SOCKET` when run under systemd with `Type=notify`.
pub fn sd_notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(error) => return tracing::warn!(%error, "sd_notify: no socket"),
    };
    if let Err(error) = sock.send_to(b"READY=1", &path) {
        tracing::warn!(%error, "sd_notify failed");
    }
}
