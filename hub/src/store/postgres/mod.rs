//! The PostgreSQL backend: several hubs on one database.
//!
//! Every method is one transaction (most are one statement), committed before it returns: with
//! PostgreSQL's default `synchronous_commit = on` a method returns only after the commit is on disk, so
//! an acknowledgement means what it means on sled with `durability = "power"`. What sled serialises in its
//! single writer is serialised here by the database: a token is burned by a `DELETE` only one transaction
//! can win; queue writes and audit appends take a transaction-scoped advisory lock, so a job is claimed
//! once across hubs and audit ids grow with time. The schema is `hub/migrations`, applied at start.
//!
//! A database that cannot be reached is [`StoreError::Unavailable`]: nothing was written, the caller
//! answers "store unavailable" and the writer (an agent's outbox) sends again.

mod audit;
mod commands;
mod leases;
mod operators;
mod queue;
mod reports;
mod revocations;
mod servers;
mod silences;
mod tokens;
mod usage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::types::ToSql;

use super::{
    AlertRecord, AuditEntry, AuditLog, AuditQuery, BurnedToken, Commands, JobState, OperatorRevocation, OperatorStore,
    PendingRecord, PlanRecord, PlanUpdate, Queue, QueuedJob, Reports, Resolution, Result, Revocations, Revoked,
    ServerRecord, Servers, SilenceRecord, Silences, StoreError, Submitted, TRIM_EVERY, TokenRecord, TokenState, Tokens,
    Usage, UsageBucket, UsageCursor,
};

/// The schema, in order; each is applied once, in a transaction, recorded in `outpost_migrations`.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "store", include_str!("../../../migrations/0001_store.sql")),
    (2, "replicas", include_str!("../../../migrations/0002_replicas.sql")),
    (3, "agent index", include_str!("../../../migrations/0003_agent_index.sql")),
];

/// The channel replicas LISTEN on; payloads name what changed (`servers`, `revoked`, `operators`,
/// `silences`, `removed`).
pub const CHANNEL: &str = "outpost";

/// Advisory lock keys (transaction-scoped).
const LOCK_MIGRATE: i64 = 0x6f75_7470_0001;
const LOCK_QUEUE: i64 = 0x6f75_7470_0002;
const LOCK_AUDIT: i64 = 0x6f75_7470_0003;

/// Audit records looked at per query at most, so one query cannot walk an unbounded log.
const SCAN_MAX: i64 = 200_000;

/// How to reach the database. Not `Debug`: it holds the password.
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq connection string (`host=… port=… user=… dbname=…`) or URL (`postgresql://…`).
    pub url: String,
    /// The password, when it is not in `url` (it comes from a 0600 file).
    pub password: Option<String>,
    /// Connections at most.
    pub pool_size: usize,
    /// How long to wait for a connection (and for a free one from the pool).
    pub connect_timeout: Duration,
    /// TLS, verified against this CA (PEM); `None`: plain, which the configuration allows only on this host.
    pub tls_ca_pem: Option<String>,
}

/// How connections are made: TLS or not (decided once, at connect).
#[derive(Clone)]
enum Connector {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The first host of `config` that is not this machine (loopback or a Unix socket), if any.
pub fn remote_host(config: &tokio_postgres::Config) -> Option<String> {
    let hosts = config.get_hosts();
    if hosts.is_empty() {
        return None; // libpq's default: the local Unix socket
    }
    hosts.iter().find_map(|h| match h {
        tokio_postgres::config::Host::Unix(_) => None,
        tokio_postgres::config::Host::Tcp(name) => {
            let local = name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            (!local).then(|| name.clone())
        }
    })
}

pub struct PgStore {
    pool: Pool,
    /// For the LISTEN connection, which is not pooled.
    config: tokio_postgres::Config,
    connector: Connector,
    /// Where it is (host and port, no secrets), for errors.
    target: String,
    /// Per server, a hash of its record as this hub last wrote it whole: a report whose record differs
    /// only in progress updates the progress columns, not the record.
    written: Mutex<HashMap<String, u64>>,
}

/// A failure talking to the database: the database cannot be reached or is going away (unavailable:
/// try again), or it refused the statement (a write error).
fn db_err(target: &str, e: tokio_postgres::Error) -> StoreError {
    let unavailable = match e.as_db_error() {
        // Connection exceptions, insufficient resources, operator intervention (shutting down, starting up).
        Some(db) => ["08", "53", "57"].iter().any(|class| db.code().code().starts_with(class)),
        None => {
            e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
                || e.to_string().starts_with("error connecting")
                || e.to_string().contains("timed out")
        }
    };
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    };
    match unavailable {
        true => StoreError::Unavailable(format!("PostgreSQL at {target}: {detail}")),
        false => StoreError::Write(format!("PostgreSQL at {target}: {detail}")),
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("store records serialise")
}

/// `(key, record)` rows, decoded.
fn decode_rows<T: DeserializeOwned>(table: &'static str, rows: &[tokio_postgres::Row]) -> Result<Vec<(String, T)>> {
    rows.iter().map(|r| Ok((r.get::<_, String>(0), decode(table, r.get(0), r.get(1))?))).collect()
}

fn decode<T: DeserializeOwned>(table: &'static str, key: &str, v: &str) -> Result<T> {
    serde_json::from_str(v).map_err(|e| StoreError::Corrupt { table, key: key.to_string(), error: e.to_string() })
}

fn res_key(res: Resolution) -> &'static str {
    match res {
        Resolution::Hour => "h",
        Resolution::Day => "d",
    }
}

/// The progress columns of `r`, as stored (`$3`–`$7` of every server write).
fn progress(r: &ServerRecord) -> [i64; 5] {
    [r.last_seq as i64, r.reports_received as i64, r.last_seen_ms, r.last_report_ms, r.first_seen_ms]
}

/// `column` as written, or the stored value when it is greater and the identity is the same: a server's
/// progress under one agent identity only moves forward, so a writer with an older view (another replica,
/// a second behind) never takes it back. A new identity (re-enrollment) starts its own.
macro_rules! forward {
    ($column:literal, $new:literal, $new_agent:literal) => {
        concat!(
            $column,
            " = CASE WHEN servers.record->>'agent_id' IS NOT DISTINCT FROM ",
            $new_agent,
            " THEN GREATEST(servers.",
            $column,
            ", ",
            $new,
            ") ELSE ",
            $new,
            " END"
        )
    };
}

/// The four growing progress columns, each [`forward`]: `$new` is the prefix of the new values
/// (`EXCLUDED.` or the parameters `$3`…`$6`), `$agent` the new record's agent id.
macro_rules! forward_progress {
    (excluded, $agent:literal) => {
        concat!(
            forward!("last_seq", "EXCLUDED.last_seq", $agent),
            ", ",
            forward!("reports_received", "EXCLUDED.reports_received", $agent),
            ", ",
            forward!("last_seen_ms", "EXCLUDED.last_seen_ms", $agent),
            ", ",
            forward!("last_report_ms", "EXCLUDED.last_report_ms", $agent)
        )
    };
    (params, $agent:literal) => {
        concat!(
            forward!("last_seq", "$3", $agent),
            ", ",
            forward!("reports_received", "$4", $agent),
            ", ",
            forward!("last_seen_ms", "$5", $agent),
            ", ",
            forward!("last_report_ms", "$6", $agent)
        )
    };
}

/// Creates or replaces a server whole (its progress only forward, [`forward`]).
const UPSERT_SERVER: &str = concat!(
    "INSERT INTO servers (name, record, last_seq, reports_received, last_seen_ms, last_report_ms, first_seen_ms, \
     version) VALUES ($1, $2::text::jsonb, $3, $4, $5, $6, $7, nextval('server_versions')) ON CONFLICT (name) \
     DO UPDATE SET version = EXCLUDED.version, record = EXCLUDED.record, ",
    forward_progress!(excluded, "EXCLUDED.record->>'agent_id'"),
    ", first_seen_ms = CASE WHEN servers.record->>'agent_id' IS NOT DISTINCT FROM EXCLUDED.record->>'agent_id' \
     AND servers.first_seen_ms <> 0 THEN servers.first_seen_ms ELSE EXCLUDED.first_seen_ms END"
);

/// Moves a stored server's progress forward (`$2`, the record, is null when only progress changed).
const UPDATE_PROGRESS: &str = concat!(
    "UPDATE servers SET version = nextval('server_versions'), record = COALESCE($2::text::jsonb, record), ",
    forward_progress!(params, "COALESCE(($2::text::jsonb)->>'agent_id', servers.record->>'agent_id')"),
    ", first_seen_ms = $7 WHERE name = $1"
);

impl PgStore {
    /// Connects, applies the migrations this database lacks, and returns the store. A database migrated
    /// by a newer hubd is refused.
    pub async fn connect(options: &PgOptions) -> Result<PgStore> {
        let mut config: tokio_postgres::Config = options.url.parse().map_err(|e| StoreError::Open {
            path: "[store.postgres] url".into(),
            error: format!("not a PostgreSQL connection string: {e}"),
        })?;
        if let Some(password) = &options.password {
            config.password(password.as_bytes());
        }
        config.connect_timeout(options.connect_timeout).application_name("hubd");
        let target = describe(&config);
        let connector = match &options.tls_ca_pem {
            Some(pem) => {
                let tls = outpost_common::tls::client_config(pem)
                    .map_err(|e| StoreError::Open { path: "store.postgres.ca_file".into(), error: e.to_string() })?;
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Connector::Tls(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
            None => Connector::Plain,
        };
        let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match connector.clone() {
            Connector::Plain => Manager::from_config(config.clone(), tokio_postgres::NoTls, recycling),
            Connector::Tls(tls) => Manager::from_config(config.clone(), tls, recycling),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Open { path: target.clone(), error: e.to_string() })?;
        let store = PgStore { pool, config, connector, target, written: Mutex::default() };
        store.migrate().await.map_err(|e| StoreError::Open { path: store.target.clone(), error: e.to_string() })?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => db_err(&self.target, e),
            e => StoreError::Unavailable(format!("PostgreSQL at {}: {e}", self.target)),
        })
    }

    fn err(&self, e: tokio_postgres::Error) -> StoreError {
        db_err(&self.target, e)
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| self.err(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE]).await.map_err(|e| self.err(e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS outpost_migrations (version integer PRIMARY KEY, name text NOT NULL, \
             applied_ms bigint NOT NULL)",
        )
        .await
        .map_err(|e| self.err(e))?;
        let applied: i32 = tx
            .query_one("SELECT COALESCE(max(version), 0) FROM outpost_migrations", &[])
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if applied > known {
            return Err(StoreError::Write(format!(
                "the database is at schema version {applied}, newer than this hubd's {known}: run a hubd at least as \
                 new as the one that migrated it"
            )));
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
            tx.batch_execute(sql).await.map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO outpost_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
                &[version, name, &outpost_common::now_ms()],
            )
            .await
            .map_err(|e| self.err(e))?;
            tracing::info!(version, name, "applied a store migration");
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Runs one statement (prepared once per connection) and returns the rows it changed.
    async fn exec(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        c.execute(&st, params).await.map_err(|e| self.err(e))
    }

    async fn rows(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<tokio_postgres::Row>> {
        let c = self.client().await?;
        let st = c.prepare_cached(sql).await.map_err(|e| self.err(e))?;
        c.query(&st, params).await.map_err(|e| self.err(e))
    }

    /// Every `(key, record)` of a two-column table, each decoded on its own.
    async fn each<T: DeserializeOwned>(&self, sql: &str) -> Result<Vec<(String, Result<T, String>)>> {
        Ok(self
            .rows(sql, &[])
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), serde_json::from_str(r.get::<_, &str>(1)).map_err(|e| e.to_string())))
            .collect())
    }

    async fn all<T: DeserializeOwned>(&self, table: &'static str, sql: &str) -> Result<Vec<(String, T)>> {
        let mut out = Vec::new();
        for (k, v) in self.each::<T>(sql).await? {
            match v {
                Ok(v) => out.push((k, v)),
                Err(error) => return Err(StoreError::Corrupt { table, key: k, error }),
            }
        }
        Ok(out)
    }

    /// The record of `r` to write: `None` when only its progress changed since this hub wrote it whole.
    fn record_to_write(&self, r: &ServerRecord, whole: bool) -> Option<String> {
        let h = r.static_hash();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        (whole || written.get(&r.name) != Some(&h)).then(|| {
            written.insert(r.name.clone(), h);
            json(r)
        })
    }

    fn forget(&self, server: &str) {
        self.written.lock().unwrap_or_else(|p| p.into_inner()).remove(server);
    }

    /// Runs `ctes` (data-modifying, on `$1` the server's name and `$8`… `extra`) and the write of
    /// `server` in one statement, so one round trip: its progress, and its record too when more than its
    /// progress changed since this hub wrote it whole. A server this hub took for stored but that is not
    /// (another hub removed it) is written whole.
    async fn with_progress(&self, server: &ServerRecord, ctes: &str, extra: &[&(dyn ToSql + Sync)]) -> Result<()> {
        let [a, b, c, d, e] = progress(server);
        let mut record = self.record_to_write(server, false);
        loop {
            let tail = if record.is_some() { UPSERT_SERVER } else { UPDATE_PROGRESS };
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&server.name, &record, &a, &b, &c, &d, &e];
            params.extend_from_slice(extra);
            match self.exec(&format!("{ctes} {tail}"), &params).await {
                Ok(0) if record.is_none() => record = self.record_to_write(server, true),
                Ok(_) => return Ok(()),
                Err(e) => {
                    self.forget(&server.name);
                    return Err(e);
                }
            }
        }
    }

    /// Writes `r` whole inside `tx`.
    async fn upsert_server(&self, tx: &deadpool_postgres::Transaction<'_>, r: &ServerRecord) -> Result<()> {
        let record = self.record_to_write(r, true);
        let [a, b, c, d, e] = progress(r);
        let st = tx.prepare_cached(UPSERT_SERVER).await.map_err(|e| self.err(e))?;
        tx.execute(&st, &[&r.name, &record, &a, &b, &c, &d, &e]).await.map_err(|e| self.err(e))?;
        notify(tx, "servers").await.map_err(|e| self.err(e))
    }

    /// Appends `entry` inside `tx`, last in it: the audit lock is held to the commit, so ids and times
    /// grow together and commit in order. Returns the id.
    async fn audit_in(&self, tx: &deadpool_postgres::Transaction<'_>, mut entry: AuditEntry) -> Result<u64> {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_AUDIT]).await.map_err(|e| self.err(e))?;
        let row = tx
            .query_one(
                "SELECT nextval('audit_ids'), GREATEST((extract(epoch from clock_timestamp()) * 1000)::bigint, \
                 (SELECT COALESCE(max(at_ms), 0) FROM audit WHERE id = (SELECT max(id) FROM audit)))",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?;
        let (id, at): (i64, i64) = (row.get(0), row.get(1));
        (entry.id, entry.at_ms) = (id as u64, at);
        let st = tx.prepare_cached("INSERT INTO audit (id, at_ms, entry) VALUES ($1, $2, $3::text::jsonb)").await;
        tx.execute(&st.map_err(|e| self.err(e))?, &[&id, &at, &json(&entry)]).await.map_err(|e| self.err(e))?;
        Ok(entry.id)
    }

    /// Runs `f` in a transaction and commits it; a failure rolls back (the transaction is dropped).
    async fn in_tx<T>(&self, f: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| self.err(e))?;
        let out = f(&tx).await?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(out)
    }

    async fn job_in(&self, tx: &deadpool_postgres::Transaction<'_>, id: u64) -> Result<Option<QueuedJob>> {
        let row = tx
            .query_opt("SELECT record::text FROM jobs WHERE id = $1", &[&(id as i64)])
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| decode("jobs", &id.to_string(), r.get(0))).transpose()
    }

    async fn put_job(&self, tx: &deadpool_postgres::Transaction<'_>, job: &QueuedJob) -> Result<()> {
        let key = (!job.idempotency_key.is_empty()).then_some(job.idempotency_key.as_str());
        tx.execute(
            "INSERT INTO jobs (id, idempotency_key, open, record) VALUES ($1, $2, $3, $4::text::jsonb) \
             ON CONFLICT (id) DO UPDATE SET open = EXCLUDED.open, record = EXCLUDED.record",
            &[&(job.id as i64), &key, &!job.state.is_final(), &json(job)],
        )
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// A server as another replica wrote it: what the fleet view of this replica needs.
#[derive(Debug)]
pub struct Change {
    pub record: ServerRecord,
    /// The replica its agent's stream is on ('' when none), and since when.
    pub holder: String,
    pub holder_ms: i64,
    pub version: i64,
    /// The latest `HistoryPoint` and `AppsState` (protobuf).
    pub latest: Option<Vec<u8>>,
    pub apps: Option<Vec<u8>>,
}

/// A replica and its last heartbeat.
#[derive(Clone, Debug)]
pub struct Replica {
    pub id: String,
    pub url: String,
    pub heartbeat_ms: i64,
}

/// What replicas share beyond the store traits: the servers changed since a version, who holds which
/// stream, heartbeats, and notifications.
impl PgStore {
    /// Servers written after `version` (at most `limit`, oldest first), with their latest health and apps.
    pub async fn changes_since(&self, version: i64, limit: i64) -> Result<Vec<Change>> {
        let rows = self
            .rows(
                "SELECT s.name, s.record::text, s.last_seq, s.reports_received, s.last_seen_ms, s.last_report_ms, \
                 s.first_seen_ms, s.holder, s.holder_ms, s.version, \
                 (SELECT h.point FROM history h WHERE h.server = s.name ORDER BY h.seq DESC LIMIT 1), a.state \
                 FROM servers s LEFT JOIN apps a ON a.server = s.name WHERE s.version > $1 ORDER BY s.version LIMIT $2",
                &[&version, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    record: server_row(row)?,
                    holder: row.get(7),
                    holder_ms: row.get(8),
                    version: row.get(9),
                    latest: row.get(10),
                    apps: row.get(11),
                })
            })
            .collect()
    }

    /// Every server's name (to find the ones another replica removed).
    pub async fn server_names(&self) -> Result<Vec<String>> {
        Ok(self.rows("SELECT name FROM servers", &[]).await?.iter().map(|r| r.get(0)).collect())
    }

    /// Records that `me` holds the streams of `attached` now, and no longer those of `released` (unless
    /// another replica took them since).
    pub async fn hold_streams(&self, me: &str, attached: &[String], released: &[String], now_ms: i64) -> Result<()> {
        self.in_tx(async |tx| {
            if !attached.is_empty() {
                tx.execute(
                    "UPDATE servers SET holder = $1, holder_ms = $2, version = nextval('server_versions') \
                     WHERE name = ANY($3)",
                    &[&me, &now_ms, &attached],
                )
                .await
                .map_err(|e| self.err(e))?;
            }
            if !released.is_empty() {
                tx.execute(
                    "UPDATE servers SET holder = '', holder_ms = $2, version = nextval('server_versions') \
                     WHERE name = ANY($3) AND holder = $1",
                    &[&me, &now_ms, &released],
                )
                .await
                .map_err(|e| self.err(e))?;
            }
            Ok(())
        })
        .await
    }

    /// Stores `me`'s heartbeat and returns every replica's.
    pub async fn heartbeat(&self, me: &str, url: &str, started_ms: i64, now_ms: i64) -> Result<Vec<Replica>> {
        self.exec(
            "INSERT INTO replicas (id, url, started_ms, heartbeat_ms) VALUES ($1, $2, $3, $4) ON CONFLICT (id) \
             DO UPDATE SET url = EXCLUDED.url, started_ms = EXCLUDED.started_ms, heartbeat_ms = EXCLUDED.heartbeat_ms",
            &[&me, &url, &started_ms, &now_ms],
        )
        .await?;
        let rows = self.rows("SELECT id, url, heartbeat_ms FROM replicas ORDER BY id", &[]).await?;
        Ok(rows.iter().map(|r| Replica { id: r.get(0), url: r.get(1), heartbeat_ms: r.get(2) }).collect())
    }

    /// Forgets replica `id` (it died and its jobs were taken over).
    pub async fn forget_replica(&self, id: &str) -> Result<()> {
        self.exec("DELETE FROM replicas WHERE id = $1", &[&id]).await.map(drop)
    }

    /// A connection of its own that LISTENs on [`CHANNEL`]: every notification's payload is sent on the
    /// returned channel, which closes when the connection is lost (the caller listens again).
    pub async fn listen(&self) -> Result<tokio::sync::mpsc::Receiver<String>> {
        let (client, messages) = match self.connector.clone() {
            Connector::Plain => {
                let (client, mut c) = self.config.connect(tokio_postgres::NoTls).await.map_err(|e| self.err(e))?;
                let messages = futures::stream::poll_fn(move |cx| c.poll_message(cx));
                (client, futures::StreamExt::boxed(messages))
            }
            Connector::Tls(tls) => {
                let (client, mut c) = self.config.connect(tls).await.map_err(|e| self.err(e))?;
                let messages = futures::stream::poll_fn(move |cx| c.poll_message(cx));
                (client, futures::StreamExt::boxed(messages))
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        // The client lives as long as the task that drives its connection.
        let keep = Arc::new(Mutex::new(None::<tokio_postgres::Client>));
        let kept = keep.clone();
        tokio::spawn(async move {
            let _client = kept;
            let mut messages = messages;
            while let Some(Ok(m)) = futures::StreamExt::next(&mut messages).await {
                // A full channel drops the wake-up: the listener is busy and looks at everything anyway.
                if let tokio_postgres::AsyncMessage::Notification(n) = m
                    && let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) = tx.try_send(n.payload().to_string())
                {
                    break;
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(|e| self.err(e))?;
        *keep.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
        Ok(rx)
    }
}

/// The columns [`server_row`] reads.
const SERVER_COLUMNS: &str =
    "name, record::text, last_seq, reports_received, last_seen_ms, last_report_ms, first_seen_ms";

/// A server record from a row of [`SERVER_COLUMNS`] (first), its progress put back in.
fn server_row(row: &tokio_postgres::Row) -> Result<ServerRecord> {
    let name: &str = row.get(0);
    let mut r: ServerRecord = decode("servers", name, row.get(1))?;
    (r.last_seq, r.reports_received) = (row.get::<_, i64>(2) as u64, row.get::<_, i64>(3) as u64);
    (r.last_seen_ms, r.last_report_ms, r.first_seen_ms) = (row.get(4), row.get(5), row.get(6));
    Ok(r)
}

/// Wakes the other replicas (delivered when `tx` commits; several of one transaction are one).
async fn notify(tx: &deadpool_postgres::Transaction<'_>, what: &str) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &what]).await.map(drop)
}

/// Host and port of `config`, for messages (never the password).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::HubStore;
    use crate::store::conformance;

    struct Pg {
        server: standin::postgres::Postgres,
    }

    impl Pg {
        fn options(&self) -> PgOptions {
            PgOptions {
                url: self.server.url(),
                password: Some(self.server.password.clone()),
                pool_size: 8,
                connect_timeout: Duration::from_secs(5),
                tls_ca_pem: None,
            }
        }
    }

    #[async_trait]
    impl conformance::Backend for Pg {
        async fn open(&mut self) -> Arc<dyn HubStore> {
            Arc::new(PgStore::connect(&self.options()).await.unwrap())
        }

        async fn close(&mut self, store: Arc<dyn HubStore>) {
            assert_eq!(Arc::strong_count(&store), 1, "the suite holds the only handle when it closes the store");
        }
    }

    fn server() -> standin::postgres::Postgres {
        standin::postgres::Postgres::start(false).unwrap()
    }

    #[tokio::test]
    async fn postgres_passes_the_conformance_suite() {
        conformance::run(&mut Pg { server: server() }).await;
    }

    /// Two hubs migrating one database at once: one applies the schema, the other finds it applied.
    #[tokio::test]
    async fn concurrent_starts_migrate_once_and_a_newer_schema_is_refused() {
        let pg = Pg { server: server() };
        let options = pg.options();
        let (a, b) = tokio::join!(PgStore::connect(&options), PgStore::connect(&options));
        let (a, _b) = (a.unwrap(), b.unwrap());
        let c = a.client().await.unwrap();
        let n: i64 = c.query_one("SELECT count(*) FROM outpost_migrations", &[]).await.unwrap().get(0);
        assert_eq!(n, MIGRATIONS.len() as i64);
        c.execute("INSERT INTO outpost_migrations VALUES (999, 'future', 0)", &[]).await.unwrap();
        let err = PgStore::connect(&pg.options()).await.err().expect("a newer schema is refused").to_string();
        assert!(err.contains("schema version 999"), "{err}");
    }

    /// A stopped database is "unavailable" (nothing written), and the same store works again once it is
    /// back, without reconnecting by hand.
    #[tokio::test]
    async fn a_stopped_database_is_unavailable_and_the_store_recovers() {
        let mut pg = Pg { server: server() };
        let store = PgStore::connect(&pg.options()).await.unwrap();
        let rec = ServerRecord { name: "a".into(), customer: "acme".into(), ..Default::default() };
        store.put_server(&rec).await.unwrap();
        pg.server.stop();
        let err = store.put_server(&rec).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().starts_with("store unavailable: PostgreSQL at 127.0.0.1:"), "{err}");
        pg.server.restart().unwrap();
        store.put_server(&ServerRecord { plan: "pro".into(), ..rec }).await.unwrap();
        assert_eq!(store.servers().await.unwrap()[0].plan, "pro");
    }

    /// With `ca_file`, the store speaks TLS, verified: a database that requires TLS refuses a plain
    /// connection, accepts this one, and one verified against another CA fails in the handshake.
    #[tokio::test]
    async fn the_store_speaks_verified_tls_to_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::pki::ca::FleetCa::load_or_create(&dir.path().join("ca"), None).unwrap();
        let (chain, key) = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
        let pg = Pg { server: standin::postgres::Postgres::start_tls(false, &chain, &key).unwrap() };
        let plain = PgStore::connect(&pg.options()).await.err().expect("plain text is refused").to_string();
        assert!(plain.contains("no encryption"), "{plain}");
        let tls = PgOptions { tls_ca_pem: Some(ca.cert_pem().to_string()), ..pg.options() };
        let store = PgStore::connect(&tls).await.unwrap();
        store.put_server(&ServerRecord { name: "t".into(), ..Default::default() }).await.unwrap();
        let other = crate::pki::ca::FleetCa::load_or_create(&dir.path().join("other"), None).unwrap();
        let wrong = PgOptions { tls_ca_pem: Some(other.cert_pem().to_string()), ..pg.options() };
        let err = PgStore::connect(&wrong).await.err().expect("a foreign CA is refused").to_string();
        assert!(err.contains("certificate"), "{err}");
    }
}
