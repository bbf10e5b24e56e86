//! outpost-sim: N simulated agents in one process over the real protocol. Each one is enrolled through a real
//! join token (pinned first contact, its own P-256 key and CSR), then keeps its own mTLS `Connect` stream and
//! sends plausible synthetic reports that the hub acknowledges for real. For benchmarks and for exercising
//! the console with thousands of servers.
//!
//!     outpost-sim --bundle ADMIN_BUNDLE --agents 1000 --interval 10s

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use outpost_common::bundle::Bundle;
use outpost_proto::v1::agent_link_client::AgentLinkClient;
use outpost_proto::v1::operator_client::OperatorClient;
use outpost_proto::v1::{
    AgentMessage, AppState, AppsState, CommandResult, CommandUpdate, CreateJoinTokenRequest, Hello, Outcome,
    RenewRequest, Report, UsageReport, UsageSample, agent_message, hub_message, report,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "outpost-sim", about = "Simulate a fleet of agents over the real protocol and real mTLS.")]
struct Args {
    /// An admin operator bundle for the hub (to create join tokens).
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long, default_value_t = 100)]
    agents: u32,
    /// Report interval per agent.
    #[arg(long, default_value = "10s", value_parser = outpost_common::parse_duration_ms)]
    interval: Duration,
    /// Server name prefix.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Enrollments in flight at once (each on its own connection, as separate servers enroll). Join tokens
    /// are created through the bundle's one connection, at most 32 at once, as a provisioning system would.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Agents connect as they enroll but report only once all are enrolled (measures the steady state
    /// without enrollment competing with a growing report load).
    #[arg(long)]
    hold_reports: bool,
    /// Each agent runs this many apps in its customer's project and reports their usage (with the host's and
    /// the project's) every `--usage-every`; 0: no usage reports.
    #[arg(long, default_value_t = 0)]
    usage_apps: u32,
    #[arg(long, default_value = "60s", value_parser = outpost_common::parse_duration_ms)]
    usage_every: Duration,
    /// Stop after this long (0: until Ctrl-C).
    #[arg(long, default_value = "0", value_parser = outpost_common::parse_duration_ms)]
    duration: Duration,
}

/// Join tokens created at once over the bundle's connection.
const TOKENS_AT_ONCE: usize = 32;

#[derive(Default)]
struct Stats {
    enrolled: AtomicU64,
    connected: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    /// Certificates renewed when the hub asked (a CA rotation), and reconnects it asked for.
    renewed: AtomicU64,
    reconnects: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    outpost_common::install_crypto_provider();
    let args = Args::parse();
    anyhow::ensure!(args.agents > 0 && args.concurrency > 0, "--agents and --concurrency must be at least 1");
    anyhow::ensure!(args.interval >= Duration::from_millis(10), "--interval must be at least 10ms");
    let bundle = Bundle::load(&args.bundle).with_context(|| format!("loading bundle {}", args.bundle.display()))?;
    let admin = OperatorClient::new(bundle.channel()?);
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let gate = (Arc::new(Semaphore::new(args.concurrency)), Arc::new(Semaphore::new(TOKENS_AT_ONCE)));
    let (all_in, all_in_rx) = tokio::sync::watch::channel(!args.hold_reports);
    let all_in = Arc::new(all_in);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.agents {
        let name = format!("{}-{i:05}", args.prefix);
        let (admin, stats, stop, gate, interval) =
            (admin.clone(), stats.clone(), stop.clone(), gate.clone(), args.interval);
        let pace = Pace {
            interval,
            all_in: all_in.clone(),
            rx: all_in_rx.clone(),
            agents: args.agents,
            usage: (args.usage_apps, args.usage_every),
        };
        tasks.spawn(async move { agent(name, i, admin, stats, stop, gate, pace).await });
    }
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ctrl_c.cancel();
    });
    if !args.duration.is_zero() {
        let s = stop.clone();
        let d = args.duration;
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            s.cancel();
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => println!(
                "enrolled={} connected={} sent={} acked={} errors={} renewed={} reconnects={}",
                stats.enrolled.load(Ordering::Relaxed),
                stats.connected.load(Ordering::Relaxed),
                stats.sent.load(Ordering::Relaxed),
                stats.acked.load(Ordering::Relaxed),
                stats.errors.load(Ordering::Relaxed),
                stats.renewed.load(Ordering::Relaxed),
                stats.reconnects.load(Ordering::Relaxed),
            ),
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// How an agent reports: every `interval`, starting at once or when the last agent has enrolled
/// (`--hold-reports`).
struct Pace {
    interval: Duration,
    all_in: Arc<tokio::sync::watch::Sender<bool>>,
    rx: tokio::sync::watch::Receiver<bool>,
    agents: u32,
    /// Apps per agent and how often usage is reported.
    usage: (u32, Duration),
}

/// The apps state of a simulated server: `n` apps in `project`.
fn apps_state(project: &str, n: u32) -> AppsState {
    AppsState {
        apps: (0..n)
            .map(|i| AppState {
                name: format!("app-{i}"),
                project: project.into(),
                phase: "available".into(),
                desired_replicas: 1,
                ready_replicas: 1,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Usage counters that grow like a busy server's: the host, the project and its `n` apps.
fn usage_report(project: &str, n: u32, elapsed_secs: u64) -> UsageReport {
    let sample = |scope: &str, app: String, share: u64| UsageSample {
        scope: scope.into(),
        project: if scope == "host" { String::new() } else { project.into() },
        app,
        cpu_usec: elapsed_secs * 100_000 * share,
        memory_bytes: (64 << 20) * share,
        memory_peak_bytes: (80 << 20) * share,
        disk_bytes: (1 << 30) * share,
        database_bytes: (10 << 20) * share,
        egress_bytes: elapsed_secs * 20_000 * share,
    };
    let mut samples =
        vec![sample("host", String::new(), u64::from(n) + 2), sample("namespace", String::new(), u64::from(n))];
    samples.extend((0..n).map(|i| sample("app", format!("app-{i}"), 1)));
    UsageReport { samples }
}

/// Counts a live session for as long as it exists.
struct Live<'a>(&'a Stats);

impl<'a> Live<'a> {
    fn new(stats: &'a Stats) -> Self {
        stats.connected.fetch_add(1, Ordering::Relaxed);
        Live(stats)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn agent(
    name: String,
    i: u32,
    mut admin: OperatorClient<tonic::transport::Channel>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    (gate, tokens): (Arc<Semaphore>, Arc<Semaphore>),
    mut pace: Pace,
) {
    let mut identity = {
        let _permit = gate.acquire().await;
        let _token_permit = tokens.acquire().await;
        let req = CreateJoinTokenRequest {
            server_name: name.clone(),
            ttl_secs: 600,
            customer: format!("cust-{}", i % 97),
            plan: ["starter", "pro", "team"][i as usize % 3].into(),
            ..Default::default()
        };
        let token = match admin.create_join_token(req).await {
            Ok(t) => t.into_inner().token,
            Err(s) => {
                eprintln!("{name}: token: {}", s.message());
                stats.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        drop(_token_permit);
        // A hub with a per-source enrollment limit answers RESOURCE_EXHAUSTED ("retry in …"): wait and retry,
        // as a fleet provisioned from one address would.
        let mut tries = 0u32;
        loop {
            match agentd::identity::enroll(&token, None).await {
                Ok(id) => break id,
                Err(e) if e.to_string().contains("retry in") && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(outpost_common::backoff::full_jitter(
                        tries.min(6),
                        Duration::from_millis(50),
                        Duration::from_secs(2),
                    ))
                    .await;
                }
                Err(e) => {
                    eprintln!("{name}: enroll: {e}");
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    };
    if stats.enrolled.fetch_add(1, Ordering::Relaxed) + 1 == u64::from(pace.agents) {
        let _ = pace.all_in.send(true);
    }
    let mut metrics = harness::SimHealth::new(u64::from(i));
    let mut seq = 0u64;
    // An `agent-update` is simulated as the agent does it: the release downloaded from the hub (bytes
    // counted, not kept), the stream closed, a new one opened with the new version, and the command answered.
    let mut version = agentd::VERSION.to_string();
    let mut updated: Option<String> = None;
    let mut attempt = 0;
    let started = std::time::Instant::now();
    while !stop.is_cancelled() {
        // Several replicas: start at the one the agent id picks, the next one after each failure.
        let turn = agentd::identity::spread(&identity.agent_id, usize::MAX).wrapping_add(attempt as usize);
        let channel = match identity
            .addrs(None)
            .and_then(|a| a[turn % a.len()].channel(&identity.ca_pem, Some((&identity.cert_pem, &identity.key_pem))))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{name}: {e}");
                return;
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let _ = tx
            .send(AgentMessage {
                body: Some(agent_message::Body::Hello(Hello {
                    last_seq: seq,
                    agent_version: version.clone(),
                    ca_pins: outpost_common::cert::pins_of(&identity.ca_pem),
                    ..Default::default()
                })),
            })
            .await;
        if let Some(id) = updated.take() {
            let result = CommandResult {
                outcome: Outcome::Succeeded as i32,
                message: format!("healthy: agentd {version} (simulated)"),
                ..Default::default()
            };
            let u = CommandUpdate { command_id: id, result: Some(result), ..Default::default() };
            let _ = tx.send(AgentMessage { body: Some(agent_message::Body::CommandUpdate(u)) }).await;
        }
        let mut download = channel.clone();
        // A CA rotation, as agentd follows it: the trust stored, a renewal the hub asked for (retried when
        // refused), a reconnect when asked.
        let mut renewing: Option<rcgen::KeyPair> = None;
        let mut retry_renewal: Option<tokio::time::Instant> = None;
        let mut reconnect_after: Option<Duration> = None;
        let session = async {
            let mut inbound = AgentLinkClient::new(channel).connect(ReceiverStream::new(rx)).await?.into_inner();
            let _live = Live::new(&stats);
            attempt = 0;
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = pace.rx.wait_for(|all| *all) => {}
            }
            // Spread the first reports over one interval, as a real fleet's would be.
            let offset = pace.interval.mul_f64(f64::from(i % 1000) / 1000.0);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, pace.interval);
            let (usage_apps, usage_every) = pace.usage;
            let usage_offset = usage_every.mul_f64(f64::from(i % 1000) / 1000.0);
            let mut usage_tick = tokio::time::interval_at(tokio::time::Instant::now() + usage_offset, usage_every);
            let project = format!("cust-{}", i % 97);
            if usage_apps > 0 {
                seq += 1;
                let r = Report {
                    seq,
                    taken_at_ms: outpost_common::now_ms(),
                    body: Some(report::Body::Apps(apps_state(&project, usage_apps))),
                };
                if tx.send(AgentMessage { body: Some(agent_message::Body::Report(r)) }).await.is_err() {
                    return Err(tonic::Status::cancelled("stream closed"));
                }
            }
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok::<_, tonic::Status>(()),
                    _ = usage_tick.tick(), if usage_apps > 0 => {
                        seq += 1;
                        let body = report::Body::Usage(usage_report(&project, usage_apps, started.elapsed().as_secs()));
                        let r = Report { seq, taken_at_ms: outpost_common::now_ms(), body: Some(body) };
                        if tx.send(AgentMessage { body: Some(agent_message::Body::Report(r)) }).await.is_err() {
                            return Err(tonic::Status::cancelled("stream closed"));
                        }
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = tick.tick() => {
                        seq += 1;
                        let r = outpost_common::report::health_report(seq, outpost_common::now_ms(), metrics.health(started.elapsed().as_secs() + 3600));
                        if tx.send(AgentMessage { body: Some(agent_message::Body::Report(r)) }).await.is_err() {
                            return Err(tonic::Status::cancelled("stream closed"));
                        }
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = tokio::time::sleep_until(retry_renewal.unwrap_or_else(tokio::time::Instant::now)), if retry_renewal.is_some() => {
                        retry_renewal = None;
                        let (key, csr_pem) = outpost_common::cert::key_and_csr().map_err(tonic::Status::internal)?;
                        let ca_pins = outpost_common::cert::pins_of(&identity.ca_pem);
                        if tx.send(AgentMessage { body: Some(agent_message::Body::Renew(RenewRequest { csr_pem, ca_pins })) }).await.is_err() {
                            return Err(tonic::Status::cancelled("stream closed"));
                        }
                        renewing = Some(key);
                    }
                    m = inbound.message() => match m? {
                        Some(m) => match m.body {
                            Some(hub_message::Body::Ack(_)) => { stats.acked.fetch_add(1, Ordering::Relaxed); }
                            Some(hub_message::Body::RenewCertificate(r)) => {
                                if !r.ca_bundle_pem.is_empty() {
                                    outpost_common::cert::check_ca_bundle(&r.ca_bundle_pem).map_err(tonic::Status::internal)?;
                                    identity.ca_pem = r.ca_bundle_pem;
                                }
                                if !r.trust_only && renewing.is_none() {
                                    retry_renewal = Some(tokio::time::Instant::now());
                                }
                            }
                            Some(hub_message::Body::Renewed(r)) => {
                                if let Some(key) = renewing.take() {
                                    if r.error.is_empty() {
                                        identity.cert_pem = r.cert_chain_pem;
                                        identity.key_pem = key.serialize_pem();
                                        stats.renewed.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        retry_renewal = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                                    }
                                }
                            }
                            Some(hub_message::Body::Reconnect(r)) => {
                                reconnect_after = Some(Duration::from_secs(u64::from(r.after_secs.min(60))));
                                return Err(tonic::Status::unavailable("the hub asked for a reconnect"));
                            }
                            // A simulated agent answers every command at once (no journal, nothing runs):
                            // enough to measure the hub's relay path; the real agent is in the e2e tests.
                            Some(hub_message::Body::Command(c)) if c.action == "agent-update" && c.args.get("version") != Some(&version) => {
                                let to = c.args.get("version").cloned().unwrap_or_default();
                                let path = format!("/artifacts/agentd/{to}/{}.zst", std::env::consts::ARCH);
                                match agentd::update::fetch_len(&mut download, &path).await {
                                    Ok(_) => {
                                        version = to;
                                        updated = Some(c.command_id);
                                        return Err(tonic::Status::unavailable("restarting into the update"));
                                    }
                                    Err(e) => {
                                        let result = CommandResult { outcome: Outcome::Failed as i32, message: e, ..Default::default() };
                                        let u = CommandUpdate { command_id: c.command_id, result: Some(result), started: true, ..Default::default() };
                                        if tx.send(AgentMessage { body: Some(agent_message::Body::CommandUpdate(u)) }).await.is_err() {
                                            return Err(tonic::Status::cancelled("stream closed"));
                                        }
                                    }
                                }
                            }
                            Some(hub_message::Body::Command(c)) => {
                                let result = CommandResult { outcome: Outcome::Succeeded as i32, message: "simulated".into(), ..Default::default() };
                                let u = CommandUpdate { command_id: c.command_id, output: format!("{name}\n"), result: Some(result), started: true };
                                if tx.send(AgentMessage { body: Some(agent_message::Body::CommandUpdate(u)) }).await.is_err() {
                                    return Err(tonic::Status::cancelled("stream closed"));
                                }
                            }
                            _ => {}
                        },
                        None => return Err(tonic::Status::unavailable("hub closed the stream")),
                    },
                }
            }
        };
        let result = session.await;
        if let Some(d) = reconnect_after.take() {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(d) => {} }
            continue;
        }
        if let Err(s) = result {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            let d = outpost_common::backoff::full_jitter(attempt, Duration::from_millis(500), Duration::from_secs(30));
            attempt += 1;
            eprintln!("{name}: {}; retry in {d:?}", s.message());
            tokio::select! { _ = stop.cancelled() => return, _ = tokio::time::sleep(d) => {} }
        }
    }
}
