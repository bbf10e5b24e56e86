//! hubd: the Outpost hub.
//!
//! One TLS port serves three gRPC services: `Enrollment` (server-auth TLS only), `AgentLink` and `Operator`
//! (mTLS, identity from the peer certificate). State lives in the store ([`store`], sled by default) and,
//! live, in the fleet registry ([`fleet`]). [`start`] is the composition root. See ARCHITECTURE.md for the
//! map and the invariants.

pub mod actions;
pub mod admin;
pub mod alerts;
pub mod api;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod command;
pub mod config;
pub mod error;
pub mod fleet;
pub mod init;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod pki;
pub mod relay;
pub mod replicas;
pub mod runtime;
pub mod seal;
pub mod store;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use api::agent_link::AgentApi;
use api::auth::Auth;
use api::operator::OperatorApi;
pub use config::HubConfig;
use fleet::identities::Identities;
use fleet::registry::Registry;
use fleet::reports::ReportIntake;
use fleet::{Fleet, tokens};
use pki::ca;
use pki::operators::Operators;
use pki::rotation::Pki;
use runtime::Runtime;
use store::HubStore;
use store::sled::SledStore;

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
    #[error(
        "cannot listen on {addr} for the admin endpoint (/metrics, /healthz, /readyz): {error}; set [admin] listen = \"127.0.0.1:PORT\" to a free port in hubd.toml, or [admin] enabled = false"
    )]
    AdminBind { addr: SocketAddr, error: std::io::Error },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    #[error("{0}")]
    Admin(String),
}

/// A running hub.
pub struct Hub {
    pub addr: SocketAddr,
    /// `https://host:port` for tokens and bundles.
    pub advertise: String,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`), when on.
    pub admin: Option<SocketAddr>,
    identities: Arc<Identities>,
    reports: Arc<ReportIntake>,
    agents: AgentApi,
    /// The embedded store's writer, to wait for its last write at shutdown.
    writer: Option<tokio::task::JoinHandle<()>>,
    store: Arc<dyn HubStore>,
    rt: Runtime,
    serve: tokio::task::JoinHandle<Result<(), String>>,
}

/// Validates the config, binds, opens the store and the CA, and starts serving. Returns once the port is
/// bound; `shutdown` stops it (then call [`Hub::wait`]).
///
/// This is the composition root: every service is built here from the parts it uses, and nowhere else.
pub async fn start(config: HubConfig, shutdown: CancellationToken) -> Result<Hub, StartError> {
    config.validate()?;
    // Bind first: with the port taken, nothing (no data directory, CA or store) is created.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| StartError::Bind { addr: config.listen, error })?;
    let addr = listener.local_addr().map_err(|error| StartError::Bind { addr: config.listen, error })?;
    let admin_listener = match config.admin.enabled {
        true => Some(
            tokio::net::TcpListener::bind(config.admin.listen)
                .await
                .map_err(|error| StartError::AdminBind { addr: config.admin.listen, error })?,
        ),
        false => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let data_dir = &config.data_dir;
    outpost_common::private_dir(data_dir)
        .map_err(|error| StartError::DataDir { path: data_dir.display().to_string(), error })?;
    let rt = Runtime::new(shutdown.clone());
    let external = config.external_ca();
    let ca = Arc::new(Pki::open(&data_dir.join("ca"), external)?);
    let (redb_path, sled_dir) = (data_dir.join("store.redb"), data_dir.join("store"));
    let (store, writer, pg): (Arc<dyn HubStore>, _, _) = match config.store.kind {
        config::StoreKind::Redb => {
            let redb = store::redb::open_migrating(&redb_path, &sled_dir, config.store.cache_mib)?
                .with_commit_gap(config.store.commit_gap_ms);
            let writer = redb.writer_task();
            (Arc::new(redb), writer, None)
        }
        config::StoreKind::Sled => {
            if redb_path.exists() && !sled_dir.join("db").exists() {
                return Err(store::StoreError::Open {
                    path: sled_dir.display().to_string(),
                    error: format!(
                        "[store] kind = \"sled\", but this data_dir holds the hub's redb store ({}): a sled store \
                         here would start empty. Remove kind = \"sled\" to use it",
                        redb_path.display()
                    ),
                }
                .into());
            }
            let power = config.store.durability == config::Durability::Power;
            let sled = SledStore::open_durable(&sled_dir, config.store.cache_mib, power)?
                .with_commit_gap(config.store.commit_gap_ms);
            let writer = sled.writer_task();
            (Arc::new(sled), writer, None)
        }
        config::StoreKind::Postgres => {
            let options = config
                .store
                .postgres
                .options()
                .map_err(|error| store::StoreError::Open { path: "store.postgres".into(), error })?;
            let pg = Arc::new(store::postgres::PgStore::connect(&options).await?);
            (pg.clone(), None, Some(pg))
        }
    };

    let records = store.servers().await?;
    let mut latest = std::collections::HashMap::with_capacity(records.len());
    for r in &records {
        latest.insert(r.name.clone(), ReportIntake::latest(&*store, &r.name).await);
    }
    let registry = Registry::new(records, |name| latest.remove(name).unwrap_or_default(), config.grace());
    let fleet = Arc::new(Fleet::new(registry));
    let advertise = config.advertise_url(addr);
    let metrics = Arc::new(metrics::Metrics::new());
    let identities = Arc::new(
        Identities::new(
            fleet.clone(),
            store.clone(),
            ca.clone(),
            advertise.clone(),
            Duration::from_secs(config.agents.cert_ttl_secs),
            metrics.clone(),
        )
        .await?,
    );
    let server_types = config.provision.plans.iter().map(|(k, v)| (k.clone(), v.server_type.clone())).collect();
    let usage = Arc::new(usage::UsageBook::new(config.usage.clone(), store.clone(), server_types, metrics.clone()));
    usage.spawn(&rt);
    let reports = Arc::new(ReportIntake::new(
        fleet.clone(),
        store.clone(),
        config.store.history_len,
        metrics.clone(),
        usage.clone(),
    ));
    let audit = Arc::new(audit::Audit::new(store.clone()));
    let operators = Arc::new(Operators::load(store.clone()).await?);
    let relay = Arc::new(relay::Relay::default());
    let sealer = Arc::new(seal::Sealer::of(&ca.keys()));
    let actions = Arc::new(actions::Actions::new(
        fleet.clone(),
        relay.clone(),
        audit.clone(),
        store.clone(),
        rt.clone(),
        metrics.clone(),
        sealer.clone(),
    ));
    actions.set_releases_dir(config.artifacts_dir());
    let mut peers = None;
    let replicated = pg.is_some();
    if let Some(pg) = pg {
        // One id per process: a restarted replica is a new one (the old one's streams are gone, its jobs
        // are taken over by a live replica: see `replicas`).
        let me = format!("{}-{}", addr, outpost_common::random_hex::<8>());
        let url = replica_url(addr, &advertise);
        actions.set_hub(me.clone());
        let replication = replicas::Replication::new(replicas::ReplicationParts {
            store: pg,
            me: me.clone(),
            url: url.clone(),
            fleet: fleet.clone(),
            identities: identities.clone(),
            operators: operators.clone(),
            actions: actions.clone(),
            grace: config.grace(),
        });
        peers = Some(Arc::new(api::peer::Peers::new(replication.placement(), ca.clone())));
        Arc::new(replication).spawn(&rt);
        rt.share_leases(store.clone(), me.clone());
        identities.share_store();
        tracing::info!(replica = %me, %url, "replica of a hub on PostgreSQL");
    }
    let auth =
        Arc::new(Auth::new(identities.clone(), operators, Duration::from_secs(config.operators.cert_max_ttl_secs)));

    let mut names = config.tls_names.clone();
    // Every replica's name: the CA is shared, any replica may answer for the hub.
    let adv_hosts = outpost_common::tls::HubAddr::parse_list(&advertise).map(|a| a.into_iter().map(|a| a.host));
    names.extend(adv_hosts.into_iter().flatten());
    names.extend(["localhost".into(), "127.0.0.1".into(), "::1".into()]);
    names.sort();
    names.dedup();
    let validity = Duration::from_secs(config.server_cert_validity_secs);
    let serving = fleet::rotation::Serving { names, validity };
    let tls = {
        let keys = ca.keys();
        let (chain, key) = serving.issue(&keys)?;
        Arc::new(api::tls::ServerTls::new(&chain, &key, &keys.trust_pem()).map_err(StartError::Tls)?)
    };
    let rotation = Arc::new(fleet::rotation::CaRotation::new(fleet::rotation::Parts {
        pki: ca.clone(),
        fleet: fleet.clone(),
        relay: relay.clone(),
        tls: tls.clone(),
        sealer,
        serving: serving.clone(),
        replicated,
    }));
    {
        // The serving certificate renewed two thirds into its life, while the hub runs; open connections
        // keep theirs.
        let (tls, ca, serving) = (tls.clone(), ca.clone(), serving.clone());
        let every = (validity / 30).clamp(Duration::from_secs(1), Duration::from_secs(3600));
        rt.every("serving certificate renewal", every, move || {
            let (tls, ca, serving) = (tls.clone(), ca.clone(), serving.clone());
            async move {
                if !tls.renewal_due(outpost_common::now_secs()) {
                    return;
                }
                match serving.renew(&ca.keys(), &tls) {
                    Ok(()) => tracing::info!(not_after = tls.not_after(), "serving certificate renewed"),
                    Err(error) => tracing::error!(%error, "cannot renew the serving certificate; trying again"),
                }
            }
        });
    }

    // Replicas: the commands of a replica that died are taken over by a live one (`replicas`), never
    // all of them by whichever starts.
    if !replicated {
        let recovered = actions.recover().await?;
        if recovered > 0 {
            tracing::info!(recovered, "commands pending before the restart are delivered again");
        }
    }
    audit.spawn_retention(&rt, Duration::from_secs(u64::from(config.audit.retention_days) * 86_400));
    fleet.spawn_sweeper(&rt);

    let enroll_limit =
        limits::RateLimiter::new(config.agents.enroll_rate_per_source, config.agents.enroll_burst_per_source);
    let agents = AgentApi::new(api::agent_link::AgentParts {
        auth: auth.clone(),
        fleet: fleet.clone(),
        identities: identities.clone(),
        reports: reports.clone(),
        relay,
        rotation: rotation.clone(),
        rt: rt.clone(),
        enroll_limit,
    });
    let artifacts_dir = config.artifacts_dir();
    let artifacts = Arc::new(
        lifecycle::artifacts::Artifacts::scan(&artifacts_dir)
            .map_err(|error| StartError::DataDir { path: artifacts_dir.display().to_string(), error })?
            .counting_into(metrics.artifact_bytes()),
    );
    let clock = lifecycle::Clock::from_env();
    let pins = lifecycle::provision::HubParts {
        advertise: advertise.clone(),
        pki: ca.clone(),
        release_keys: config.releases.public_keys.clone(),
    };
    let provisioner = provisioner(&config, artifacts.clone(), pins, &clock);
    if let Err(why) = &provisioner {
        tracing::info!(%why, "provisioning is off");
    }
    let mut lifecycle_config = config.lifecycle.clone();
    lifecycle_config.archive_dir.get_or_insert_with(|| data_dir.join("archive"));
    let p = &config.provision;
    let ssh = lifecycle::ssh::SshEnroll::new(
        artifacts.clone(),
        p.agent_version.clone(),
        ca.clone(),
        lifecycle::ssh::EnrollSettings {
            key_file: p.ssh_private_key_file.clone(),
            root: p.enroll_root.clone(),
            start: p.enroll_start.clone(),
        },
    );
    let lifecycle = Arc::new(lifecycle::Lifecycle::new(lifecycle::LifecycleParts {
        store: store.clone(),
        fleet: fleet.clone(),
        identities: identities.clone(),
        actions: actions.clone(),
        config: lifecycle_config,
        ssh,
        provisioner,
        clock,
    }));
    lifecycle.spawn(&rt);
    let alerts = Arc::new(
        alerts::Alerts::new(alerts::AlertsParts {
            config: config.alerts.clone(),
            fleet: fleet.clone(),
            lifecycle: lifecycle.clone(),
            audit: audit.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            usage: usage.clone(),
        })
        .await,
    );
    alerts.spawn(&rt);
    if let Some(l) = admin_listener {
        // Checked by `validate`; read again here so a file that changed since is not served unread.
        let token = config.admin.bearer_token().map_err(StartError::Admin)?;
        match (&token, l.local_addr().map(|a| a.ip().is_loopback()).unwrap_or(true)) {
            (Some(_), _) => tracing::info!("the admin listener's /metrics requires the bearer token"),
            (None, false) => tracing::warn!(
                admin = ?l.local_addr().ok(),
                "the admin listener serves /metrics without authentication on a non-loopback address (admin.allow_remote_without_auth)"
            ),
            (None, true) => {}
        }
        let routes = admin::router(admin::AdminParts {
            metrics: metrics.clone(),
            fleet: fleet.clone(),
            lifecycle: lifecycle.clone(),
            alerts: alerts.clone(),
            stopping: shutdown.clone(),
            token,
        });
        let stop = shutdown.clone();
        rt.spawn(async move {
            let served = axum::serve(l, routes).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            if let Err(error) = served {
                tracing::error!(%error, "the admin listener failed");
            }
        });
    }
    let snapshots = Arc::new(backup::Snapshots::new(store.clone(), data_dir));
    if config.backup.every_secs > 0 {
        let schedule = Arc::new(backup::Schedule {
            snapshots: snapshots.clone(),
            ca_dir: data_dir.join("ca"),
            config: config.source.clone(),
            dir: config.backup.dir.clone().unwrap_or_else(|| data_dir.join("scheduled-backups")),
            keep: config.backup.keep,
            // Checked by `HubConfig::validate`.
            recipients: config.backup.recipients.iter().filter_map(|r| r.parse().ok()).collect(),
        });
        metrics.backup_schedule(config.backup.max_age());
        let m = metrics.clone();
        rt.every("scheduled backup", Duration::from_secs(config.backup.every_secs), move || {
            let (schedule, m) = (schedule.clone(), m.clone());
            async move {
                match schedule.run().await {
                    Ok(path) => {
                        m.backup_done(outpost_common::now_ms());
                        tracing::info!(path = %path.display(), "scheduled backup written");
                    }
                    Err(error) => {
                        m.backup_failed();
                        tracing::error!(error = %format!("{error:#}"), "scheduled backup failed");
                    }
                }
            }
        });
    }
    let operator = OperatorApi::new(api::operator::OperatorParts {
        auth,
        fleet,
        reports: reports.clone(),
        identities: identities.clone(),
        actions,
        lifecycle,
        alerts,
        usage,
        audit,
        rotation,
        snapshots: snapshots.clone(),
        rt: rt.clone(),
    });
    let operator = match peers {
        Some(p) => operator.with_peers(p),
        None => operator,
    };
    let serve = api::serve(api::ServeParts {
        listener,
        tls,
        agents: agents.clone(),
        operator,
        http: artifacts.router(),
        shutdown: shutdown.clone(),
    })
    .map_err(StartError::Tls)?;
    tracing::info!(%addr, %advertise, pin = %ca.keys().token_pin(), admin = ?admin_addr, "hubd listening");
    Ok(Hub { addr, advertise, admin: admin_addr, identities, reports, agents, writer, store: store.clone(), rt, serve })
}

/// The provisioner, or why provisioning is off (no break-glass key, no API token).
fn provisioner(
    config: &HubConfig,
    artifacts: Arc<lifecycle::artifacts::Artifacts>,
    hub: lifecycle::provision::HubParts,
    clock: &lifecycle::Clock,
) -> Result<Arc<lifecycle::provision::Provisioner>, String> {
    let p = &config.provision;
    if p.ssh_public_key.is_empty() {
        return Err("set provision.ssh_public_key (the break-glass key every server gets) in hubd.toml".into());
    }
    let token = p.token()?;
    let retry = lifecycle::cloud::Retry {
        attempts: p.api_attempts,
        initial: Duration::from_millis(p.api_backoff_initial_ms),
        max: Duration::from_millis(p.api_backoff_max_ms),
        rate_per_sec: p.api_rate_per_sec,
        burst: p.api_burst,
    };
    let cloud = Arc::new(lifecycle::cloud::Hetzner::new(&p.api_url, &token, retry));
    Ok(Arc::new(lifecycle::provision::Provisioner::new(cloud, p.clone(), artifacts, hub, clock.clone())))
}

impl Hub {
    /// The fleet CA and its rotation (its pin goes into tokens; bundles are signed with it).
    pub fn pki(&self) -> &Arc<Pki> {
        self.identities.pki()
    }

    /// Creates a join token, as `hubd token create` does through the API (for embedders: the demo).
    pub async fn create_token(&self, req: tokens::TokenRequest, by: &str) -> Result<tokens::Created, error::HubError> {
        self.identities.create_token(req, by).await
    }

    /// The hub's store, for embedders that bring history with them (the demo seeds a week of usage).
    pub fn store(&self) -> Arc<dyn HubStore> {
        self.store.clone()
    }

    /// Waits until the hub has stopped (after `shutdown` is cancelled), draining with a deadline.
    pub async fn wait(self) -> anyhow::Result<()> {
        let Hub { identities, reports, agents, writer, store, rt, serve, .. } = self;
        rt.stopping().cancelled().await;
        // Counted, not logged one by one (metrics will expose them): what a flood or a churn cost.
        tracing::info!(agents_gone = agents.agents_gone(), reports_refused = reports.refused_count(), "hub stopping");
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async move {
            let served = serve.await; // the services (and their store handles) are gone after this
            rt.drain().await;
            drop((identities, reports, agents, store, rt)); // the last store handles: the writer flushes and stops
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
    match hub.admin {
        Some(a) => println!("READY {} {} http://{a}", hub.advertise, hub.pki().keys().token_pin()),
        None => println!("READY {} {}", hub.advertise, hub.pki().keys().token_pin()),
    }
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

/// The address other replicas reach this one at: the bound address, or, when it listens on every address,
/// the entry of the advertised list with its port.
fn replica_url(bound: std::net::SocketAddr, advertise: &str) -> String {
    if !bound.ip().is_unspecified() {
        return format!("https://{bound}");
    }
    let listed = outpost_common::tls::HubAddr::parse_list(advertise).unwrap_or_default();
    match listed.into_iter().find(|a| a.port == bound.port()) {
        Some(a) => a.url,
        None => format!("https://127.0.0.1:{}", bound.port()),
    }
}
