//! outpost-bench: resource benchmarks with real release processes.
//!
//!     cargo build --release --bins
//!     target/release/outpost-bench agent-idle --minutes 5
//!     target/release/outpost-bench hub --agents 1000 --interval 10s --minutes 5
//!     target/release/outpost-bench console --servers 10000 --interval 1s --seconds 60
//!     target/release/outpost-bench console-frame --servers 10000
//!     target/release/outpost-bench replay --reports 20000
//!
//! CPU is the process's own user+system time over the window (percent of one core); RSS is VmRSS sampled
//! every 5 s. Figures are for the machine printed in the header.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use harness::{AgentProc, HubProc, is, watch_until_for};
use outpost_common::Role;
use outpost_proto::v1::Liveness;

/// The simulator enrolls thousands of agents from one address (loopback): no per-source enrollment limit.
const BENCH_HUB: &str = "[agents]\nenroll_rate_per_source = 0";

#[derive(Debug, Parser)]
#[command(name = "outpost-bench", about = "Measure agentd and hubd CPU and memory with real processes.")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// One real agentd at its default 10 s interval, connected to a real hub.
    AgentIdle {
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
    },
    /// hubd with N simulated agents (outpost-sim, a separate process) reporting every interval.
    Hub {
        #[arg(long, default_value_t = 1000)]
        agents: u32,
        #[arg(long, default_value = "10s")]
        interval: String,
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
        /// More hubd.toml lines (sections), e.g. to compare alert rule sets.
        #[arg(long, default_value = "")]
        hub_config: String,
        /// Apps per simulated server whose usage is reported every minute (with the host's and the
        /// project's); 0: no usage. At the end the usage buckets in the store are counted and measured.
        #[arg(long, default_value_t = 0)]
        usage_apps: u32,
    },
    /// The console against a real hub with N simulated servers: time to first full screen, frame build
    /// time, report-to-screen delay, and the real binary's RSS.
    Console {
        #[arg(long, default_value_t = 10_000)]
        servers: u32,
        #[arg(long, default_value = "1s")]
        interval: String,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The console's own cost, no hub and no network: N servers, 500 updates between frames (10k/s at
    /// 20 fps), frame build and update apply times.
    ConsoleFrame {
        #[arg(long, default_value_t = 10_000)]
        servers: u32,
        #[arg(long, default_value_t = 2000)]
        frames: u32,
    },
    /// Action round trip (operator → hub → agent → back) with N connected simulated agents: one action at
    /// a time on a random agent, then one fan-out over all of them.
    ActionRtt {
        #[arg(long, default_value_t = 100)]
        agents: u32,
        #[arg(long, default_value_t = 500)]
        runs: u32,
        #[arg(long, default_value = "10s")]
        interval: String,
    },
    /// The transport's limit: a bare tonic bidi echo over mTLS (the hub's TLS set-up, a fleet CA, an agent
    /// client certificate) that acknowledges each real health report at once, nothing stored; the client
    /// streams run in their own process, as the simulator's do against hubd.
    Echo {
        #[arg(long, default_value_t = 1000)]
        streams: u32,
        #[arg(long, default_value = "100ms")]
        interval: String,
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
    },
    /// Enrollment under report load: N agents report every interval, then M new ones enroll; the time until
    /// all M are connected.
    EnrollUnderLoad {
        #[arg(long, default_value_t = 10_000)]
        agents: u32,
        #[arg(long, default_value = "1s")]
        interval: String,
        #[arg(long, default_value_t = 1000)]
        new: u32,
        /// New agents enrolling at once (0: all of them, as new servers do, each on its own).
        #[arg(long, default_value_t = 0)]
        in_flight: u32,
    },
    /// A hub restart (SIGTERM, start again) under N connected agents: the time until all are back.
    Restart {
        #[arg(long, default_value_t = 10_000)]
        agents: u32,
        #[arg(long, default_value = "10s")]
        interval: String,
        /// SIGKILL the hub instead (the store then recovers from a crash at the next start).
        #[arg(long)]
        kill: bool,
        /// Let the fleet report this long before the restart (a larger store to recover).
        #[arg(long, default_value = "0s", value_parser = outpost_common::parse_duration_ms)]
        after: Duration,
    },
    /// Several hubd replicas on one real PostgreSQL (fsync on) with N simulated agents spread over them:
    /// each replica's CPU and RSS, PostgreSQL's CPU, reports stored per second, ack p99 per replica, and the
    /// round trip of an action submitted on one replica for agents on another (forwarded) and on itself.
    Replicas {
        #[arg(long, default_value_t = 10_000)]
        agents: u32,
        #[arg(long, default_value = "10s")]
        interval: String,
        #[arg(long, default_value_t = 3.0)]
        minutes: f64,
        #[arg(long, default_value_t = 2)]
        replicas: u32,
        #[arg(long, default_value_t = 200)]
        runs: u32,
    },
    /// An agentd rollout (`agent-update` as a fan-out job) over N agents, R of them real agentd and the rest
    /// simulated (they download the release's compressed form from the hub as agentd does, then reconnect
    /// with the new version): time to the whole fleet, bytes the hub served, hubd's CPU and peak RSS; then a
    /// build that crashes at start on one real agent: the time from its start to the rollback.
    Rollout {
        #[arg(long, default_value_t = 1000)]
        agents: u32,
        #[arg(long, default_value_t = 20)]
        real: u32,
        #[arg(long, default_value_t = 100)]
        batch: u32,
        #[arg(long, default_value = "10s")]
        interval: String,
    },
    /// A rotation of the fleet CA over N simulated agents (each follows it as agentd does: stores the trust,
    /// renews when asked, reconnects in update_servers): the time each phase takes until every agent has done
    /// it, and hubd's CPU during it.
    CaRotation {
        #[arg(long, default_value_t = 10_000)]
        agents: u32,
        #[arg(long, default_value = "10s")]
        interval: String,
    },
    /// `hubd backup` of a hub whose store holds N servers with history, while they report: the time, the
    /// backup's size, the ingest rate during the backup against the rate before it; then `hubd restore`'s time.
    Backup {
        #[arg(long, default_value_t = 10_000)]
        agents: u32,
        /// Reports per agent this often while the history builds and during the backup.
        #[arg(long, default_value = "1s")]
        interval: String,
        /// How long the history builds before the backup (at 1 s, this many health points a server).
        #[arg(long, default_value_t = 180)]
        fill_secs: u64,
    },
    /// The client half of `echo` (started by it).
    #[command(hide = true)]
    EchoClient {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        streams: u32,
        #[arg(long)]
        interval: String,
        #[arg(long)]
        seconds: f64,
    },
    /// An agent back from a long outage: N reports waiting in its outbox, time until the hub has them all.
    Replay {
        #[arg(long, default_value_t = 20_000)]
        reports: u64,
    },
    /// Deploy latency: operator call → fetch, render, apply, rollout watched (the stand-in's controller
    /// makes it available at once) → result, over N deploys alternating between two commits.
    Deploy {
        #[arg(long, default_value_t = 50)]
        runs: u32,
    },
    /// N provisions submitted at once against the fake Hetzner API (Hetzner's rate limit: 3600 requests,
    /// refilled at one a second; servers boot in `--boot-ms`), each ending with a real agentd enrolled and
    /// online: time until all are online, API calls per provision, 429s, orphans, hub CPU. With `--count 1
    /// --boot-ms 0` it is the hub's own overhead from `provision` to online.
    Provision {
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long, default_value_t = 2000)]
        boot_ms: u64,
        /// Hetzner's bucket: requests, and refill per second.
        #[arg(long, default_value_t = 3600)]
        rate_limit: u32,
        #[arg(long, default_value_t = 1.0)]
        refill_per_sec: f64,
        /// How often the hub looks at the create action and the new agent (hubd's default: 2000).
        #[arg(long, default_value_t = 2000)]
        poll_ms: u64,
    },
    /// One real agentd running N apps from 3 repositories, with its reconcile loop and apps reports, beside
    /// prometheus-node-exporter (when installed) in the same window: CPU and RSS of both.
    AgentApps {
        #[arg(long, default_value_t = 10)]
        apps: u32,
        #[arg(long, default_value_t = 5.0)]
        minutes: f64,
    },
}

struct Sample {
    ticks: u64,
    rss_kib: u64,
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn sample(pid: u32) -> Sample {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process alive");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0);
    Sample { ticks, rss_kib }
}

/// CPU % of one core and RSS (min/avg/max MiB) of `pid` over `window`.
async fn measure(pid: u32, window: Duration) -> (f64, f64, f64, f64) {
    let start = sample(pid);
    let t0 = Instant::now();
    let mut rss = vec![start.rss_kib];
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(5).min(window)).await;
        rss.push(sample(pid).rss_kib);
    }
    let end = sample(pid);
    let cpu = (end.ticks - start.ticks) as f64 / clk_tck() / t0.elapsed().as_secs_f64() * 100.0;
    let mib = |k: u64| k as f64 / 1024.0;
    let min = rss.iter().copied().min().unwrap_or(0);
    let max = rss.iter().copied().max().unwrap_or(0);
    let avg = rss.iter().sum::<u64>() as f64 / rss.len() as f64;
    (cpu, mib(min), avg / 1024.0, mib(max))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0) / 1024 / 1024)
        })
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {mem} GiB RAM, {}", std::env::consts::ARCH)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    harness::init();
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    println!("machine: {}", machine());
    match args.cmd {
        Cmd::AgentIdle { minutes } => agent_idle(tmp.path(), minutes).await,
        Cmd::Hub { agents, interval, minutes, hub_config, usage_apps } => {
            hub(tmp.path(), (agents, usage_apps), &interval, minutes, &hub_config.replace("\\n", "\n")).await
        }
        Cmd::Console { servers, interval, seconds } => console(tmp.path(), servers, &interval, seconds).await,
        Cmd::ConsoleFrame { servers, frames } => console_frame(servers, frames),
        Cmd::Replay { reports } => replay(tmp.path(), reports).await,
        Cmd::Deploy { runs } => deploy(tmp.path(), runs).await,
        Cmd::AgentApps { apps, minutes } => agent_apps(tmp.path(), apps, minutes).await,
        Cmd::Provision { count, boot_ms, rate_limit, refill_per_sec, poll_ms } => {
            provision(count, boot_ms, (rate_limit, refill_per_sec), poll_ms).await
        }
        Cmd::ActionRtt { agents, runs, interval } => action_rtt(tmp.path(), agents, runs, &interval).await,
        Cmd::EnrollUnderLoad { agents, interval, new, in_flight } => {
            let in_flight = if in_flight == 0 { new } else { in_flight };
            enroll_under_load(tmp.path(), agents, &interval, (new, in_flight)).await
        }
        Cmd::Restart { agents, interval, kill, after } => restart(tmp.path(), agents, &interval, (kill, after)).await,
        Cmd::Replicas { agents, interval, minutes, replicas: n, runs } => {
            replicas(tmp.path(), (agents, n), &interval, minutes, runs).await
        }
        Cmd::Rollout { agents, real, batch, interval } => rollout(tmp.path(), (agents, real), batch, &interval).await,
        Cmd::CaRotation { agents, interval } => ca_rotation(tmp.path(), agents, &interval).await,
        Cmd::Backup { agents, interval, fill_secs } => backup(tmp.path(), agents, &interval, fill_secs).await,
        Cmd::Echo { streams, interval, seconds } => echo::server(tmp.path(), streams, &interval, seconds).await,
        Cmd::EchoClient { addr, dir, streams, interval, seconds } => {
            echo::client(&addr, &dir, streams, &interval, seconds).await
        }
    }
}

async fn agent_idle(root: &Path, minutes: f64) -> anyhow::Result<()> {
    let hub = HubProc::start(&root.join("hub"), harness::free_port(), BENCH_HUB).await;
    let token = hub.token("bench-agent").await;
    let dir = root.join("agent");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("join-token"), token)?;
    let config = dir.join("agentd.toml");
    std::fs::write(&config, format!("data_dir = \"{0}/data\"\ntoken_file = \"{0}/join-token\"\n", dir.display()))?;
    let agent = AgentProc::spawn("bench-agent", &dir, &config);
    let mut ops = hub.client(Role::Viewer);
    watch_until_for(&mut ops, "agent reporting", Duration::from_secs(60), |f| {
        is(f, "bench-agent", Liveness::Connected) && f["bench-agent"].reports_received >= 1
    })
    .await;
    let pid = agent.child.id().expect("agent running");
    let window = Duration::from_secs_f64(minutes * 60.0);
    println!("measuring agentd (pid {pid}, default 10 s report interval) for {minutes} min…");
    let (cpu, min, avg, max) = measure(pid, window).await;
    println!("agentd idle: CPU {cpu:.3}% of one core; RSS min {min:.1} / avg {avg:.1} / max {max:.1} MiB");
    let store = dir_size(&dir.join("data"));
    println!("agentd data dir after the window: {:.1} MiB", store as f64 / (1 << 20) as f64);
    Ok(())
}

async fn hub(
    root: &Path,
    (agents, usage_apps): (u32, u32),
    interval: &str,
    minutes: f64,
    extra: &str,
) -> anyhow::Result<()> {
    let mut hub = HubProc::start(&root.join("hub"), harness::free_port(), &format!("{BENCH_HUB}\n{extra}")).await;
    let apps = usage_apps.to_string();
    let usage_args: &[&str] = if usage_apps > 0 { &["--usage-apps", &apps] } else { &[] };
    let (mut sim, mut ops) = start_fleet(&hub, root, agents, interval, usage_args).await?;
    // Let every agent reach its steady reporting rhythm.
    tokio::time::sleep(outpost_common::parse_duration_ms(interval).map_err(anyhow::Error::msg)? * 2).await;
    let count = |ops: &mut outpost_proto::v1::operator_client::OperatorClient<tonic::transport::Channel>| {
        let mut ops = ops.clone();
        async move {
            let list = ops.list_servers(outpost_proto::v1::ListServersRequest {}).await.unwrap().into_inner().servers;
            list.iter().map(|s| s.reports_received).sum::<u64>()
        }
    };
    let before = count(&mut ops).await;
    let pid = hub.child.id().expect("hub running");
    let sim_pid = sim.id().expect("sim running");
    let window = Duration::from_secs_f64(minutes * 60.0);
    println!("measuring hubd (pid {pid}) with {agents} agents every {interval} for {minutes} min…");
    // How RSS and the store's size move: six times over the window, at most every five minutes (a soak).
    let data_dir = root.join("hub/data");
    let every = Duration::from_secs_f64(minutes * 60.0 / 6.0).min(Duration::from_secs(300));
    let progress = tokio::spawn(async move {
        let t = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return };
            let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap_or("?").trim().to_string();
            let mib = store_size(&data_dir) as f64 / (1 << 20) as f64;
            println!("  after {:.0} min: hubd RSS {rss}, store {mib:.0} MiB", t.elapsed().as_secs_f64() / 60.0);
        }
    });
    let t = Instant::now();
    let sim_start = sample(sim_pid);
    let (cpu, min, avg, max) = measure(pid, window).await;
    let sim_cpu = (sample(sim_pid).ticks - sim_start.ticks) as f64 / clk_tck() / t.elapsed().as_secs_f64() * 100.0;
    let stored = count(&mut ops).await - before;
    let connected = ops
        .list_servers(outpost_proto::v1::ListServersRequest {})
        .await?
        .into_inner()
        .servers
        .iter()
        .filter(|s| harness::liveness(s) == Liveness::Connected)
        .count();
    println!(
        "hubd with {agents} agents: CPU {cpu:.2}% of one core; RSS min {min:.1} / avg {avg:.1} / max {max:.1} MiB"
    );
    println!(
        "reports durably stored: {stored} in {:.0} s = {:.1}/s; still connected at the end: {connected}",
        t.elapsed().as_secs_f64(),
        stored as f64 / t.elapsed().as_secs_f64()
    );
    println!("(the simulator itself used {sim_cpu:.1}% of one core)");
    // The hub's own account of its alert rounds.
    let out = std::process::Command::new("curl").args(["-s", &format!("{}/metrics", hub.admin)]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let series = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok());
    if let (Some(sum), Some(n)) =
        (series("outpost_alert_evaluation_seconds_sum "), series("outpost_alert_evaluation_seconds_count "))
        && n > 0.0
    {
        println!("alert evaluation: {n:.0} rounds, {:.2} ms a round on average", sum / n * 1000.0);
    }
    if let Some((p50, p99)) = ack_quantiles(&text) {
        println!("report ack (arrival to durable): p50 ≤ {:.1} ms, p99 ≤ {:.1} ms", p50 * 1e3, p99 * 1e3);
    }
    progress.abort();
    println!("hub store on disk: {:.1} MiB", store_size(&root.join("hub/data")) as f64 / (1 << 20) as f64);
    sim.start_kill()?;
    if usage_apps > 0 {
        usage_store(&mut hub, agents).await?;
    }
    Ok(())
}

/// Starts `outpost-sim` with `agents` against `hub` and waits (printing progress) until all are connected.
async fn start_fleet(
    hub: &HubProc,
    root: &Path,
    agents: u32,
    interval: &str,
    extra: &[&str],
) -> anyhow::Result<(
    tokio::process::Child,
    outpost_proto::v1::operator_client::OperatorClient<tonic::transport::Channel>,
)> {
    let admin = root.join("admin");
    hub.bundle("bench-admin", Role::Admin).write(&admin)?;
    let sim = tokio::process::Command::new(harness::bin("outpost-sim"))
        .args(["--bundle", admin.to_str().unwrap(), "--agents", &agents.to_string(), "--interval", interval])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(root.join("sim.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let mut ops = hub.client(Role::Viewer);
    let t = Instant::now();
    let mut said = Instant::now();
    watch_until_for(&mut ops, "all simulated agents connected", Duration::from_secs(1200), |f| {
        let n = f.values().filter(|s| harness::liveness(s) == Liveness::Connected).count();
        if said.elapsed() >= Duration::from_secs(10) {
            println!("  {n} connected after {:.0} s", t.elapsed().as_secs_f64());
            said = Instant::now();
        }
        n == agents as usize
    })
    .await;
    println!("{agents} agents enrolled and connected in {:.1} s", t.elapsed().as_secs_f64());
    Ok((sim, ops))
}

/// The size of the embedded store in hubd's `data` directory: redb's file, or sled's directory.
fn store_size(data: &Path) -> u64 {
    std::fs::metadata(data.join("store.redb")).map_or(0, |m| m.len()) + dir_size(&data.join("store"))
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "p50 {:.2} / p99 {:.2} / max {:.2} (n={})",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

async fn console(root: &Path, servers: u32, interval: &str, seconds: u64) -> anyhow::Result<()> {
    use outpost_console::app::apply;
    use outpost_console::conn::{self, ConnEvent};
    use outpost_console::state::App;
    use outpost_console::view::{self, Theme};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    let hub = HubProc::start(&root.join("hub"), harness::free_port(), BENCH_HUB).await;
    let viewer = root.join("viewer");
    let bundle = hub.bundle("bench-viewer", Role::Viewer);
    bundle.write(&viewer)?;
    let (mut sim, _ops) =
        start_fleet(&hub, root, servers, interval, &["--concurrency", "64", "--hold-reports"]).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // 1. Launch to first full screen (library path: mTLS connect, watch, snapshot, first frame), 5 runs.
    let mut firsts = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let mut app = App::new(&bundle.meta.hub, &bundle.meta.name, &bundle.meta.role);
        let (tx, mut rx) = tokio::sync::mpsc::channel(20_000);
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(conn::watch(bundle.channel()?, tx, stop.clone()));
        while app.fleet.len() < servers as usize {
            let ev = rx.recv().await.expect("watch runs");
            apply(&mut app, ev);
        }
        let mut term = Terminal::new(TestBackend::new(200, 50))?;
        term.draw(|f| view::render(f, &mut app, outpost_common::now_ms(), Theme { color: true }))?;
        firsts.push(t0.elapsed().as_secs_f64() * 1000.0);
        stop.cancel();
        let _ = task.await;
    }
    println!("launch to first full screen (library path, 200x50), ms: {}", summary(firsts));

    // 2 + 3. The app's own loop, headless: apply what arrived, draw at most every 50 ms, time each frame, and
    // for every report applied, the delay from the agent taking it to the frame that shows it.
    let mut app = App::new(&bundle.meta.hub, &bundle.meta.name, &bundle.meta.role);
    let (tx, mut rx) = tokio::sync::mpsc::channel(20_000);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(conn::watch(bundle.channel()?, tx, stop.clone()));
    let mut term = Terminal::new(TestBackend::new(200, 50))?;
    let (mut frames, mut delays) = (Vec::new(), Vec::new());
    let mut pending: Vec<i64> = Vec::new();
    let mut updates = 0u64;
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut next_frame = Instant::now();
    let mut live = false;
    while Instant::now() < end {
        tokio::select! {
            Some(first) = rx.recv() => {
                let mut next = Some(first);
                while let Some(ev) = next {
                    if let ConnEvent::Fleet(e) = &ev {
                        match &e.event {
                            Some(outpost_proto::v1::fleet_event::Event::Upsert(s)) if live && s.last_report_ms > 0 => {
                                pending.push(s.last_report_ms);
                                updates += 1;
                            }
                            Some(outpost_proto::v1::fleet_event::Event::Snapshot(_)) => live = true,
                            _ => {}
                        }
                    }
                    apply(&mut app, ev);
                    next = rx.try_recv().ok();
                }
            }
            _ = tokio::time::sleep_until(next_frame.into()) => {
                let t0 = Instant::now();
                term.draw(|f| view::render(f, &mut app, outpost_common::now_ms(), Theme { color: true }))?;
                frames.push(t0.elapsed().as_secs_f64() * 1000.0);
                let shown = outpost_common::now_ms();
                delays.extend(pending.drain(..).map(|taken| (shown - taken) as f64));
                next_frame = Instant::now() + Duration::from_millis(50);
            }
        }
    }
    stop.cancel();
    let _ = task.await;
    println!("frame build (fleet view, 200x50, live deltas), ms: {}", summary(frames));
    let mut idle = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        term.draw(|f| view::render(f, &mut app, outpost_common::now_ms(), Theme { color: true }))?;
        idle.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    println!("frame build (fleet view, 200x50, no change), ms: {}", summary(idle));
    println!("updates applied: {updates} in {seconds} s = {:.0}/s", updates as f64 / seconds as f64);
    println!("report taken by agent -> on screen, ms: {}", summary(delays));

    // 4. The real binary in tmux: RSS with the whole fleet loaded.
    let socket = format!("outpost-bench-{}", std::process::id());
    let cmd = format!("{} --bundle {}", harness::bin("outpost").display(), viewer.display());
    let t0 = Instant::now();
    std::process::Command::new("tmux")
        .args(["-L", &socket, "new-session", "-d", "-s", "b", "-x", "200", "-y", "50", &cmd])
        .status()?;
    let want = format!("{servers} servers");
    loop {
        let out = std::process::Command::new("tmux").args(["-L", &socket, "capture-pane", "-p", "-t", "b"]).output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&want) {
            break;
        }
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(60), "the console never showed the fleet");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "real binary in tmux: fleet on screen {:.0} ms after launch (10 ms polling)",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let pid =
        std::process::Command::new("pgrep").args(["-f", &format!("outpost --bundle {}", viewer.display())]).output()?;
    // tmux runs the command through `sh -c`: take the process that is outpost itself.
    let pid: u32 = String::from_utf8_lossy(&pid.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "outpost"))
        .unwrap_or(0);
    if pid > 0 {
        let (cpu, min, avg, max) = measure(pid, Duration::from_secs(20)).await;
        println!(
            "real binary RSS with {servers} servers: min {min:.1} / avg {avg:.1} / max {max:.1} MiB; CPU {cpu:.1}% of one core"
        );
    }
    let _ = std::process::Command::new("tmux").args(["-L", &socket, "kill-server"]).status();
    let s = sample(hub.child.id().unwrap());
    println!("hubd RSS at the end: {:.1} MiB", s.rss_kib as f64 / 1024.0);
    sim.start_kill()?;
    Ok(())
}

fn synthetic(i: u32, tick: u64) -> outpost_proto::v1::Server {
    use outpost_proto::v1::{Disk, Health, K3s, Server, k3s};
    Server {
        name: format!("sim-{i:05}"),
        customer: format!("cust-{}", i % 97),
        plan: ["starter", "pro", "team"][i as usize % 3].into(),
        liveness: if i.is_multiple_of(50) { Liveness::Lost } else { Liveness::Connected } as i32,
        last_seen_ms: outpost_common::now_ms(),
        last_seq: tick,
        agent_version: "0.1.0".into(),
        cert_not_after: outpost_common::now_ms() / 1000 + 86_400,
        health: Some(Health {
            cpu_percent: ((u64::from(i) * 7 + tick) % 100) as f32,
            load1: 0.5,
            mem_total_bytes: 4 << 30,
            mem_used_bytes: 2 << 30,
            disks: vec![Disk { mount: "/".into(), total_bytes: 40 << 30, available_bytes: 20 << 30 }],
            k3s: Some(K3s { state: k3s::State::Active as i32, detail: String::new() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn console_frame(servers: u32, frames: u32) -> anyhow::Result<()> {
    use outpost_console::state::App;
    use outpost_console::view::{self, Theme};
    use outpost_proto::v1::{FleetEvent, FleetSnapshot, fleet_event};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    let mut app = App::new("https://hub:7443", "bench", "viewer");
    let t = Instant::now();
    let all: Vec<_> = (0..servers).map(|i| synthetic(i, 0)).collect();
    app.apply(
        FleetEvent { event: Some(fleet_event::Event::Snapshot(FleetSnapshot { servers: all, part: 0, last: true })) },
        0,
    );
    let mut term = Terminal::new(TestBackend::new(200, 50))?;
    term.draw(|f| view::render(f, &mut app, outpost_common::now_ms(), Theme { color: true }))?;
    println!(
        "snapshot of {servers} applied and first frame drawn (no network): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    for (w, h) in [(200u16, 50u16), (80, 24)] {
        let mut term = Terminal::new(TestBackend::new(w, h))?;
        let (mut render, mut apply) = (Vec::new(), Vec::new());
        let mut next = 0u32;
        for f in 0..u64::from(frames) {
            let t = Instant::now();
            for _ in 0..500 {
                let s = synthetic(next % servers, f + 1);
                next += 1;
                app.apply(FleetEvent { event: Some(fleet_event::Event::Upsert(s)) }, 0);
            }
            apply.push(t.elapsed().as_secs_f64() * 1e6 / 500.0);
            let t = Instant::now();
            term.draw(|fr| view::render(fr, &mut app, outpost_common::now_ms(), Theme { color: true }))?;
            render.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!("{w}x{h} frame build with 500 updates between frames, ms: {}", summary(render));
        println!("{w}x{h} update apply, µs each: {}", summary(apply));
    }
    // Sorting by CPU (order changes with every update): the rows are rebuilt every frame.
    app.act(outpost_console::state::Action::SortNext);
    while app.fleet.sort != outpost_console::state::Column::Cpu {
        app.act(outpost_console::state::Action::SortNext);
    }
    let mut term = Terminal::new(TestBackend::new(200, 50))?;
    let mut render = Vec::new();
    for f in 0..u64::from(frames / 4) {
        for i in 0..500 {
            app.apply(
                FleetEvent {
                    event: Some(fleet_event::Event::Upsert(synthetic((f as u32 * 500 + i) % servers, f + 7))),
                },
                0,
            );
        }
        let t = Instant::now();
        term.draw(|fr| view::render(fr, &mut app, outpost_common::now_ms(), Theme { color: true }))?;
        render.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("200x50 frame build sorted by CPU (rows rebuilt each frame), ms: {}", summary(render));
    println!("process RSS with {servers} servers: {:.1} MiB", sample(std::process::id()).rss_kib as f64 / 1024.0);
    Ok(())
}

async fn replay(root: &Path, reports: u64) -> anyhow::Result<()> {
    let hub = HubProc::start(&root.join("hub"), harness::free_port(), BENCH_HUB).await;
    let dir = root.join("agent");
    std::fs::create_dir_all(&dir)?;
    // Enroll, then fill the outbox as an outage would have (the agent is not running yet).
    let identity = agentd::identity::enroll(&hub.token("replay-1").await, None).await?;
    identity.save(&dir.join("data"))?;
    {
        let db = agentd::instance::InstanceDb::open(&dir.join("data/instance.db"))?;
        let outbox = agentd::outbox::Outbox::open(&db, reports + 10)?;
        let health =
            outpost_proto::v1::Health { mem_total_bytes: 1, agent_version: "bench".into(), ..Default::default() };
        for _ in 0..reports {
            outbox.push(outpost_common::now_ms(), health.clone()).await?;
        }
    }
    let config = dir.join("agentd.toml");
    // A long interval: only the backlog flows during the measurement.
    std::fs::write(&config, format!("data_dir = \"{}/data\"\nreport_interval_ms = 3600000\n", dir.display()))?;
    let t = Instant::now();
    let _agent = AgentProc::spawn("replay-1", &dir, &config);
    let mut ops = hub.client(Role::Viewer);
    watch_until_for(&mut ops, "the whole backlog stored", Duration::from_secs(1200), |f| {
        f.get("replay-1").is_some_and(|s| s.last_seq >= reports)
    })
    .await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "replayed {reports} queued reports in {secs:.1} s = {:.0} reports/s (one agent, durable acks)",
        reports as f64 / secs
    );
    Ok(())
}

async fn action_rtt(root: &Path, agents: u32, runs: u32, interval: &str) -> anyhow::Result<()> {
    use outpost_proto::v1::{RunActionRequest, Selector, job_event::Event};
    let hub = HubProc::start(&root.join("hub"), harness::free_port(), BENCH_HUB).await;
    let (mut sim, _ops) = start_fleet(&hub, root, agents, interval, &["--concurrency", "64"]).await?;
    let mut ops = hub.client(Role::Support);
    let request = |names: Vec<String>, batch: u32| RunActionRequest {
        action: "service-status".into(),
        args: [("unit".to_string(), "k3s".to_string())].into(),
        selector: Some(Selector { names, ..Default::default() }),
        batch,
        ..Default::default()
    };
    // One real agentd among the simulated ones: its round trip includes the journal flush and the process.
    let systemctl = harness::fake_systemctl(&root.join("real-1"));
    let token = harness::create_token(&mut hub.client(Role::Admin), "real-1").await;
    let extra = format!("systemctl = \"{}\"\nreport_interval_ms = 10000\nexec_enabled = true\n", systemctl.display());
    let _real = harness::AgentProc::start(root, "real-1", &token, &extra);
    harness::watch_until(&mut hub.client(Role::Viewer), "the real agent connected", |f| {
        harness::is(f, "real-1", Liveness::Connected)
    })
    .await;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut once = async |name: String| -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut stream = ops.run_action(request(vec![name.clone()], 1)).await?.into_inner();
        while let Some(e) = stream.message().await? {
            if let Some(Event::Target(te)) = e.event
                && let Some(r) = te.result
            {
                anyhow::ensure!(r.outcome == outpost_proto::v1::Outcome::Succeeded as i32, "{name}: {}", r.message);
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                return Ok(ms);
            }
        }
        anyhow::bail!("{name}: no result")
    };
    let mut rtt = Vec::new();
    for _ in 0..runs {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rtt.push(once(format!("sim-{:05}", rng % u64::from(agents))).await?);
    }
    println!("action round trip to a simulated agent, {agents} connected (ms): {}", summary(rtt));
    let mut real = Vec::new();
    for _ in 0..runs.min(200) {
        real.push(once("real-1".into()).await?);
    }
    println!(
        "action round trip to a real agentd (journal fsync + systemctl process), {agents} connected (ms): {}",
        summary(real)
    );
    // Output throughput through the flow control (agent window → hub → caller), 16 MiB from one process.
    const MIB16: u64 = 16 << 20;
    let argv = serde_json::to_string(&["sh", "-c", &format!("yes 0123456789abcdef | head -c {MIB16}")])?;
    let mut admin = hub.client(Role::Admin);
    let mut req = request(vec!["real-1".into()], 1);
    req.action = "exec".into();
    req.args = [("argv".to_string(), argv), ("output_cap".to_string(), MIB16.to_string())].into();
    req.confirm = "real-1".into();
    let t = Instant::now();
    let mut stream = admin.run_action(req).await?.into_inner();
    let (mut bytes, mut result) = (0u64, None);
    while let Some(e) = stream.message().await? {
        if let Some(Event::Target(te)) = e.event {
            bytes += te.output.len() as u64;
            result = te.result.or(result);
        }
    }
    let r = result.ok_or_else(|| anyhow::anyhow!("exec: no result"))?;
    anyhow::ensure!(bytes == MIB16 && r.output_dropped_bytes == 0, "exec: {bytes} bytes, {r:?}");
    let secs = t.elapsed().as_secs_f64();
    println!("output streamed from a real agentd to the caller: 16 MiB in {secs:.2} s = {:.0} MiB/s", 16.0 / secs);
    let all: Vec<String> = (0..agents).map(|i| format!("sim-{i:05}")).collect();
    let t = Instant::now();
    let mut stream = ops.run_action(request(all, agents.min(1000))).await?.into_inner();
    let mut last = None;
    while let Some(e) = stream.message().await? {
        if let Some(Event::Progress(p)) = e.event {
            last = Some(p);
        }
    }
    let p = last.unwrap_or_default();
    println!(
        "fan-out to all {agents} agents in one batch: {:.0} ms ({} succeeded, {} failed)",
        t.elapsed().as_secs_f64() * 1000.0,
        p.succeeded,
        p.failed
    );
    sim.kill().await?;
    Ok(())
}

fn git(dir: &Path, script: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()?;
    anyhow::ensure!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A hub, one agent with a kubeconfig for a stand-in with a controller, and `repos` bare repositories
/// (`r0.git`…) with tags v1 and v2. Returns the hub, the agent and the stand-in.
async fn app_server(
    root: &Path,
    repos: u32,
    extra: &str,
) -> anyhow::Result<(HubProc, AgentProc, standin::kube::KubeStandIn)> {
    let kube = standin::kube::KubeStandIn::start_with_controller(&root.join("kube")).await;
    for r in 0..repos {
        git(
            root,
            &format!(
                "git init -q --bare -b main r{r}.git && git clone -q r{r}.git w{r} 2>/dev/null && cd w{r} && echo 1 > f && git add -A && git commit -qm v1 && git tag v1 && echo 2 > f && git commit -qam v2 && git tag v2 && git push -q --tags origin HEAD:main"
            ),
        )?;
    }
    let hub = HubProc::start(&root.join("hub"), harness::free_port(), BENCH_HUB).await;
    let token = hub
        .client(Role::Admin)
        .create_join_token(outpost_proto::v1::CreateJoinTokenRequest {
            server_name: "apps-1".into(),
            ttl_secs: 600,
            customer: "acme".into(),
            plan: "team".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .token;
    let config =
        format!("kubeconfig = \"{}\"\nrepo_roots = [\"{}\"]\n{extra}", kube.kubeconfig.display(), root.display());
    let agent = AgentProc::start(root, "apps-1", &token, &config);
    watch_until_for(&mut hub.client(Role::Viewer), "apps-1 connected", Duration::from_secs(60), |f| {
        is(f, "apps-1", Liveness::Connected)
    })
    .await;
    Ok((hub, agent, kube))
}

fn spec(name: &str, repo: &Path) -> String {
    format!(
        "name = \"{name}\"\nimage = \"registry.example/{name}:{{commit}}\"\nport = 8080\n[repo]\nurl = \"{}\"\n[secrets]\nTOKEN_VALUE = \"s3cret\"\n[resources]\nmemory_limit = \"64Mi\"\ncpu_limit = \"50m\"\n",
        repo.display()
    )
}

async fn deploy(root: &Path, runs: u32) -> anyhow::Result<()> {
    let (hub, _agent, _kube) = app_server(root, 1, "rollout_poll_ms = 20\n").await?;
    let mut ops = hub.client(Role::Support);
    let apply = harness::run_job(
        &mut ops,
        harness::action("app-apply", &["apps-1"], &[("spec", &spec("web", &root.join("r0.git")))]),
    )
    .await;
    anyhow::ensure!(
        apply.result("apps-1").outcome == outpost_proto::v1::Outcome::Succeeded as i32,
        "{:?}",
        apply.result("apps-1")
    );
    let mut times = Vec::new();
    for i in 0..runs {
        let r#ref = if i % 2 == 0 { "v1" } else { "v2" };
        let t = Instant::now();
        let run =
            harness::run_job(&mut ops, harness::action("app-deploy", &["apps-1"], &[("app", "web"), ("ref", r#ref)]))
                .await;
        let r = run.result("apps-1");
        anyhow::ensure!(r.outcome == outpost_proto::v1::Outcome::Succeeded as i32, "deploy {i}: {r:?}");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("deploy (operator call → fetch, render, apply, rollout → audited result), ms: {}", summary(times));
    println!(
        "(stand-in Kubernetes API with an immediate controller; rollout watched, looked at on each change (fallback every 20 ms); local bare repository)"
    );
    Ok(())
}

async fn agent_apps(root: &Path, apps: u32, minutes: f64) -> anyhow::Result<()> {
    // The agent's defaults, as on a customer server (the harness reports every 200 ms otherwise).
    let defaults = std::env::var("BENCH_AGENT_EXTRA")
        .unwrap_or_else(|_| "report_interval_ms = 10000\nreconcile_secs = 60\napps_report_secs = 30\n".into());
    let defaults = defaults.as_str();
    let (hub, agent, _kube) = app_server(root, 3, defaults).await?;
    let mut ops = hub.client(Role::Support);
    for i in 0..apps {
        let name = format!("app{i}");
        let repo = root.join(format!("r{}.git", i % 3));
        for (action, args) in
            [("app-apply", vec![("spec", spec(&name, &repo))]), ("app-deploy", vec![("app", name.clone())])]
        {
            let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let run = harness::run_job(&mut ops, harness::action(action, &["apps-1"], &args)).await;
            anyhow::ensure!(
                run.result("apps-1").outcome == outpost_proto::v1::Outcome::Succeeded as i32,
                "{action} {name}: {:?}",
                run.result("apps-1")
            );
        }
    }
    let exporter = ["/usr/bin/prometheus-node-exporter", "/usr/sbin/prometheus-node-exporter"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let ne_port = harness::free_port();
    let mut node_exporter = match exporter {
        Some(bin) => Some(
            tokio::process::Command::new(bin)
                .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()?,
        ),
        None => {
            println!(
                "prometheus-node-exporter is not installed (apt-get install prometheus-node-exporter): measuring agentd alone"
            );
            None
        }
    };
    let pid = agent.child.id().expect("agent running");
    let window = Duration::from_secs_f64(minutes * 60.0);
    println!("measuring agentd (pid {pid}) with {apps} apps from 3 repositories for {minutes} min…");
    let ne_pid = node_exporter.as_ref().and_then(|c| c.id());
    // Scraped every 15 s, as Prometheus would (node_exporter does its work when scraped).
    let scraper = ne_pid.map(|_| {
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tick = tokio::time::interval(Duration::from_secs(15));
            loop {
                tick.tick().await;
                if let Ok(mut c) = tokio::net::TcpStream::connect(("127.0.0.1", ne_port)).await {
                    let _ = c.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await;
                    let mut sink = Vec::new();
                    let _ = c.read_to_end(&mut sink).await;
                }
            }
        })
    });
    let ne_start = ne_pid.map(sample);
    let t = Instant::now();
    let (cpu, min, avg, max) = measure(pid, window).await;
    println!("agentd with {apps} apps: CPU {cpu:.3}% of one core; RSS min {min:.1} / avg {avg:.1} / max {max:.1} MiB");
    if let (Some(p), Some(start)) = (ne_pid, ne_start) {
        let end = sample(p);
        let ne_cpu = (end.ticks - start.ticks) as f64 / clk_tck() / t.elapsed().as_secs_f64() * 100.0;
        println!(
            "prometheus-node-exporter, same window, scraped every 15 s: CPU {ne_cpu:.3}% of one core; RSS {:.1} MiB",
            end.rss_kib as f64 / 1024.0
        );
    }
    if let Some(s) = scraper {
        s.abort();
    }
    if let Some(c) = node_exporter.as_mut() {
        let _ = c.kill().await;
    }
    Ok(())
}

async fn provision(
    count: u32,
    boot_ms: u64,
    (rate_limit, refill_per_sec): (u32, f64),
    poll_ms: u64,
) -> anyhow::Result<()> {
    use outpost_proto::v1 as pb;
    // hubd as shipped (polling every 2 s, its own pace a little inside the API's bucket), 32 workers.
    let extra = format!(
        "ready_timeout_secs = 900\nreap_secs = 0\npoll_ms = {poll_ms}\napi_rate_per_sec = {}\napi_burst = {}",
        refill_per_sec * 0.9,
        (f64::from(rate_limit) * 0.9) as u32
    );
    let c =
        harness::cloud::cloud_with(&extra, "workers = 32\nretry_initial_ms = 5000\nretry_max_ms = 60000", None).await;
    c.fake.set_boot_time(Duration::from_millis(boot_ms));
    c.fake.rate_limit(rate_limit, refill_per_sec);
    let pid = c.hub.child.id().expect("hubd running");
    let mut admin = c.hub.client(Role::Admin);
    let before = sample(pid);
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for i in 0..count {
        let plan = ["starter", "pro", "team"][i as usize % 3];
        let req = pb::ProvisionRequest { customer: format!("c{i:04}"), plan: plan.into(), ..Default::default() };
        ids.push(admin.provision(req).await?.into_inner().job.expect("a job").id);
    }
    let submitted = t0.elapsed();
    let mut per_job = Vec::new();
    for id in &ids {
        let mut s = admin.watch_lifecycle_job(pb::WatchLifecycleJobRequest { id: *id }).await?.into_inner();
        while let Some(j) = s.message().await? {
            if ["succeeded", "failed", "cancelled"].contains(&j.state.as_str()) {
                anyhow::ensure!(j.state == "succeeded", "job {id} {}: {}", j.state, j.error);
                per_job.push((j.finished_ms - j.created_ms) as f64 / 1000.0);
                break;
            }
        }
    }
    let all = t0.elapsed();
    let after = sample(pid);
    per_job.sort_by(f64::total_cmp);
    let pct = |p: f64| per_job[((per_job.len() as f64 - 1.0) * p).round() as usize];
    let requests = c.fake.requests();
    let creates = requests.iter().filter(|r| *r == "POST /v1/servers").count();
    let servers = c.fake.servers();
    let orphans = servers.iter().filter(|s| !s.labels.get("outpost-id").is_some_and(|n| n.starts_with('c'))).count()
        + servers.len().saturating_sub(count as usize);
    let cpu = (after.ticks - before.ticks) as f64 / clk_tck();
    println!(
        "provisions: {count} submitted in {:.2} s; all online after {:.1} s (boot {boot_ms} ms, rate limit {rate_limit} + {refill_per_sec}/s, poll {poll_ms} ms)",
        submitted.as_secs_f64(),
        all.as_secs_f64()
    );
    println!("per provision, submit to online: p50 {:.2} s, p90 {:.2} s, max {:.2} s", pct(0.5), pct(0.9), pct(1.0));
    println!(
        "API calls: {} ({:.1} per provision; {creates} creates), 429 answers: {}, cloud servers: {}, orphans: {orphans}",
        requests.len(),
        requests.len() as f64 / f64::from(count),
        c.fake.throttled(),
        servers.len()
    );
    println!(
        "hubd CPU: {cpu:.2} s over {:.1} s ({:.1}% of one core); RSS {:.1} MiB",
        all.as_secs_f64(),
        cpu / all.as_secs_f64() * 100.0,
        after.rss_kib as f64 / 1024.0
    );
    Ok(())
}

/// The usage rollups the run left in the store (read after hubd stopped): how many buckets, how big, and
/// what a day adds (each server: 24 hourly buckets and one daily one, of the size measured).
async fn usage_store(hub: &mut HubProc, agents: u32) -> anyhow::Result<()> {
    use hub::store::{Resolution, Usage};
    use prost::Message;
    hub.stop().await;
    let store = hub::store::redb::RedbStore::open(&hub.dir.join("data/store.redb"), 64)?;
    for (res, per_day) in [(Resolution::Hour, 24.0), (Resolution::Day, 1.0)] {
        let buckets = store.usage_between(res, 0, i64::MAX, None).await?;
        let servers: std::collections::HashSet<&str> = buckets.iter().map(|(_, s, _)| s.as_str()).collect();
        let bytes: usize = buckets.iter().map(|(_, s, b)| b.encoded_len() + 10 + s.len() + b.customer.len()).sum();
        let each = bytes as f64 / buckets.len().max(1) as f64;
        println!(
            "usage {res:?} buckets: {} for {} servers, {each:.0} B each (value and key); a day of {agents} servers adds {:.1} MiB",
            buckets.len(),
            servers.len(),
            each * per_day * f64::from(agents) / (1 << 20) as f64
        );
    }
    Ok(())
}

/// The bare transport: tonic bidi streams over mTLS carrying Outpost's report and ack, nothing else.
mod echo {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use outpost_proto::v1::agent_link_client::AgentLinkClient;
    use outpost_proto::v1::agent_link_server::{AgentLink, AgentLinkServer};
    use outpost_proto::v1::{Ack, AgentMessage, HubMessage, agent_message, hub_message};
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};

    #[derive(Default)]
    struct Echo {
        acked: Arc<AtomicU64>,
    }

    #[tonic::async_trait]
    impl AgentLink for Echo {
        type ConnectStream = ReceiverStream<Result<HubMessage, Status>>;

        async fn connect(
            &self,
            req: Request<Streaming<AgentMessage>>,
        ) -> Result<Response<Self::ConnectStream>, Status> {
            let mut inbound = req.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let acked = self.acked.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    if let Some(agent_message::Body::Report(r)) = m.body {
                        let ack = HubMessage { body: Some(hub_message::Body::Ack(Ack { up_to_seq: r.seq })) };
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }

    pub async fn server(root: &Path, streams: u32, interval: &str, seconds: f64) -> anyhow::Result<()> {
        let ca = hub::pki::ca::FleetCa::load_or_create(&root.join("ca"), None)?;
        let (chain, key) = ca.issue_server(&["127.0.0.1".to_string()])?;
        let (client_key, csr) = harness::hostile::key_and_csr();
        let issued =
            ca.sign_agent(&csr, "echo-agent", Duration::from_secs(3600)).map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::write(root.join("ca.pem"), ca.cert_pem())?;
        std::fs::write(root.join("client.pem"), &issued.chain_pem)?;
        std::fs::write(root.join("client.key"), client_key)?;
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(chain, key))
            .client_ca_root(tonic::transport::Certificate::from_pem(ca.cert_pem()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let echo = Echo::default();
        let acked = echo.acked.clone();
        let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::TcpListenerStream::new(listener), |s| {
            s.and_then(|s| s.set_nodelay(true).map(|()| s))
        });
        let router = tonic::transport::Server::builder().tls_config(tls)?.add_service(AgentLinkServer::new(echo));
        tokio::spawn(router.serve_with_incoming(incoming));
        let me = std::env::current_exe()?;
        let mut client = tokio::process::Command::new(me)
            .args(["echo-client", "--addr", &addr, "--dir"])
            .arg(root)
            .args(["--streams", &streams.to_string(), "--interval", interval, "--seconds"])
            .arg(format!("{}", seconds + 30.0))
            .kill_on_drop(true)
            .spawn()?;
        // Until every stream is up and sending, then measure this process (the server only).
        let t = Instant::now();
        let per_sec =
            f64::from(streams) / outpost_common::parse_duration_ms(interval).map_err(anyhow::Error::msg)?.as_secs_f64();
        while (acked.load(Ordering::Relaxed) as f64) < per_sec * 2.0 {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(120), "the echo clients never got going");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = acked.load(Ordering::Relaxed);
        let window = Duration::from_secs_f64(seconds);
        let t = Instant::now();
        let (cpu, _, rss, _) = super::measure(std::process::id(), window).await;
        let n = acked.load(Ordering::Relaxed) - before;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "echo over mTLS, {streams} streams every {interval}: {rate:.0} reports acked/s; server CPU {cpu:.1}% of one core = {:.1} µs per report; RSS {rss:.0} MiB",
            cpu / 100.0 / rate * 1e6
        );
        client.start_kill()?;
        Ok(())
    }

    pub async fn client(addr: &str, dir: &Path, streams: u32, interval: &str, seconds: f64) -> anyhow::Result<()> {
        let ca = std::fs::read_to_string(dir.join("ca.pem"))?;
        let cert = std::fs::read_to_string(dir.join("client.pem"))?;
        let key = std::fs::read_to_string(dir.join("client.key"))?;
        let every = outpost_common::parse_duration_ms(interval).map_err(anyhow::Error::msg)?;
        let stop = Instant::now() + Duration::from_secs_f64(seconds);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..streams {
            let channel = outpost_common::tls::HubAddr::parse(addr)?.channel(&ca, Some((&cert, &key)))?;
            tasks.spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                let mut inbound = AgentLinkClient::new(channel).connect(ReceiverStream::new(rx)).await?.into_inner();
                tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
                let offset = every.mul_f64(f64::from(i % 1000) / 1000.0);
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                let mut seq = 0;
                // The simulator's report, as hubd gets it from outpost-sim.
                let mut walk = harness::SimHealth::new(u64::from(i));
                while Instant::now() < stop {
                    tick.tick().await;
                    seq += 1;
                    let r =
                        outpost_common::report::health_report(seq, outpost_common::now_ms(), walk.health(3600 + seq));
                    if tx.send(AgentMessage { body: Some(agent_message::Body::Report(r)) }).await.is_err() {
                        break;
                    }
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                eprintln!("echo client: {e:#}");
            }
        }
        Ok(())
    }
}

async fn enroll_under_load(
    root: &Path,
    agents: u32,
    interval: &str,
    (new, in_flight): (u32, u32),
) -> anyhow::Result<()> {
    let hub = HubProc::start(&root.join("hub"), harness::free_port(), BENCH_HUB).await;
    // The fleet enrolls first, then reports (enrollment while the fleet itself ramps up is the other case).
    let (_sim, mut ops) = start_fleet(&hub, root, agents, interval, &["--hold-reports"]).await?;
    // Let the fleet reach its reporting rhythm.
    tokio::time::sleep(outpost_common::parse_duration_ms(interval).map_err(anyhow::Error::msg)? * 3).await;
    let pid = hub.child.id().expect("hub running");
    let before = sample(pid);
    let t = Instant::now();
    let _newcomers = tokio::process::Command::new(harness::bin("outpost-sim"))
        .args(["--bundle", root.join("admin").to_str().unwrap(), "--agents", &new.to_string()])
        .args(["--interval", "10s", "--prefix", "new", "--concurrency", &in_flight.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(root.join("sim-new.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let mut said = Instant::now();
    watch_until_for(&mut ops, "the new agents connected", Duration::from_secs(900), |f| {
        let n = f.iter().filter(|(k, s)| k.starts_with("new-") && harness::liveness(s) == Liveness::Connected).count();
        if said.elapsed() >= Duration::from_secs(10) {
            println!("  {n} of {new} new agents connected after {:.0} s", t.elapsed().as_secs_f64());
            said = Instant::now();
        }
        n == new as usize
    })
    .await;
    let secs = t.elapsed().as_secs_f64();
    let cpu = (sample(pid).ticks - before.ticks) as f64 / clk_tck() / secs * 100.0;
    println!(
        "{new} new agents ({in_flight} at once) enrolled and connected in {secs:.1} s ({:.0}/min) while {agents} others report every {interval}; hubd CPU meanwhile {cpu:.0}% of one core",
        f64::from(new) / secs * 60.0
    );
    Ok(())
}

async fn restart(root: &Path, agents: u32, interval: &str, (kill, after): (bool, Duration)) -> anyhow::Result<()> {
    let mut hub = HubProc::start(&root.join("hub"), harness::free_port(), BENCH_HUB).await;
    let (_sim, _) = start_fleet(&hub, root, agents, interval, &[]).await?;
    tokio::time::sleep(outpost_common::parse_duration_ms(interval).map_err(anyhow::Error::msg)? * 2 + after).await;
    println!("hub store before the restart: {:.1} MiB", store_size(&root.join("hub/data")) as f64 / (1 << 20) as f64);
    let t = Instant::now();
    if kill {
        hub.kill9().await;
    } else {
        hub.stop().await;
    }
    let stopped = t.elapsed();
    hub.restart().await;
    let started = t.elapsed();
    let mut ops = hub.client(Role::Viewer);
    let mut said = Instant::now();
    let mut lost_seen = 0;
    watch_until_for(&mut ops, "every agent back", Duration::from_secs(600), |f| {
        lost_seen = lost_seen.max(f.values().filter(|s| harness::liveness(s) == Liveness::Lost).count());
        let n = f.values().filter(|s| harness::liveness(s) == Liveness::Connected).count();
        if said.elapsed() >= Duration::from_secs(5) {
            println!("  {n} back after {:.0} s", t.elapsed().as_secs_f64());
            said = Instant::now();
        }
        n == agents as usize
    })
    .await;
    println!(
        "hubd stopped ({}) in {:.1} s, ready again at {:.1} s; all {agents} agents back {:.1} s after the stop began; servers seen lost meanwhile: {lost_seen}",
        if kill { "SIGKILL" } else { "SIGTERM, drained" },
        stopped.as_secs_f64(),
        started.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// p50 and p99 (upper bounds of their buckets, seconds) of a hub's report ack histogram (arrival → durable
/// → ack due), from its `/metrics` text.
fn ack_quantiles(metrics: &str) -> Option<(f64, f64)> {
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("outpost_report_ack_seconds_bucket{le=\"")?;
            let (le, n) = rest.split_once("\"} ")?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), n.trim().parse::<f64>().ok()?))
        })
        .collect();
    let &(_, total) = buckets.last()?;
    if total <= 0.0 {
        return None;
    }
    let q = |p: f64| buckets.iter().find(|(_, n)| *n >= total * p).map_or(f64::INFINITY, |(le, _)| *le);
    Some((q(0.5), q(0.99)))
}

/// Every process in the tree under `root` (PostgreSQL's postmaster and its backends).
fn tree(root: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
            parent.insert(pid, ppid);
        }
    }
    parent
        .keys()
        .copied()
        .filter(|&p| std::iter::successors(Some(p), |p| parent.get(p).copied()).any(|a| a == root))
        .collect()
}

/// CPU ticks of `pids` (those still alive).
fn ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

async fn replicas(root: &Path, (agents, n): (u32, u32), interval: &str, minutes: f64, runs: u32) -> anyhow::Result<()> {
    use outpost_proto::v1::{RunActionRequest, Selector, job_event::Event};
    let pg = standin::postgres::Postgres::start(true).map_err(anyhow::Error::msg)?;
    let ports: Vec<u16> = (0..n).map(|_| harness::free_port()).collect();
    let config = harness::replica_config(&pg, root, &ports, "enroll_rate_per_source = 0");
    let mut hubs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        hubs.push(HubProc::start(&root.join(format!("hub-{i}")), *port, &config).await);
    }
    println!("{n} replicas on PostgreSQL (fsync on), {agents} agents every {interval}");
    let (mut sim, mut ops) = start_fleet(&hubs[0], root, agents, interval, &["--concurrency", "64"]).await?;
    tokio::time::sleep(outpost_common::parse_duration_ms(interval).map_err(anyhow::Error::msg)? * 2).await;
    let count = async |ops: &mut outpost_proto::v1::operator_client::OperatorClient<tonic::transport::Channel>| {
        let list = ops.list_servers(outpost_proto::v1::ListServersRequest {}).await.unwrap().into_inner().servers;
        list.iter().map(|s| s.reports_received).sum::<u64>()
    };
    let before = count(&mut ops).await;
    let hub_pids: Vec<u32> = hubs.iter().map(|h| h.child.id().expect("hub running")).collect();
    let pg_pids = tree(pg.pid().expect("postgres running"));
    let window = Duration::from_secs_f64(minutes * 60.0);
    let t = Instant::now();
    let hub_start: Vec<u64> = hub_pids.iter().map(|p| ticks(&[*p])).collect();
    let pg_start = ticks(&pg_pids);
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); hubs.len()];
    while t.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(5).min(window)).await;
        for (i, p) in hub_pids.iter().enumerate() {
            rss[i].push(sample(*p).rss_kib);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let pct = |d: u64| d as f64 / clk_tck() / secs * 100.0;
    let stored = count(&mut ops).await - before;
    for (i, p) in hub_pids.iter().enumerate() {
        let max = rss[i].iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        let text = String::from_utf8_lossy(
            &std::process::Command::new("curl").args(["-s", &format!("{}/metrics", hubs[i].admin)]).output()?.stdout,
        )
        .into_owned();
        let ack = ack_quantiles(&text).map_or("no reports".into(), |(p50, p99)| {
            format!("ack p50 ≤ {:.1} ms, p99 ≤ {:.1} ms", p50 * 1e3, p99 * 1e3)
        });
        println!("replica {i}: CPU {:.1}% of one core, RSS max {max:.0} MiB, {ack}", pct(ticks(&[*p]) - hub_start[i]));
    }
    let pg_pids = tree(pg.pid().expect("postgres running"));
    println!(
        "PostgreSQL: CPU {:.1}% of one core ({} processes)",
        pct(ticks(&pg_pids).saturating_sub(pg_start)),
        pg_pids.len()
    );
    println!("reports durably stored: {stored} in {secs:.0} s = {:.1}/s", stored as f64 / secs);

    // Which agents are on which replica, from the store.
    let mut db = tokio_postgres::Config::new();
    db.host("127.0.0.1").port(pg.port).user(standin::postgres::USER).password(&pg.password).dbname("postgres");
    let (client, conn) = db.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let held = async |port: u16| -> anyhow::Result<Vec<String>> {
        let rows = client
            .query("SELECT name FROM servers WHERE holder LIKE $1 ORDER BY name", &[&format!("127.0.0.1:{port}-%")])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    };
    let (local, remote) = (held(ports[0]).await?, held(ports[1 % ports.len()]).await?);
    println!("streams: {} on replica 0, {} on replica 1", local.len(), remote.len());
    let mut support = hubs[0].client(Role::Support);
    let mut once = async |name: &str| -> anyhow::Result<f64> {
        let req = RunActionRequest {
            action: "service-status".into(),
            args: [("unit".to_string(), "k3s".to_string())].into(),
            selector: Some(Selector { names: vec![name.to_string()], ..Default::default() }),
            batch: 1,
            ..Default::default()
        };
        let t = Instant::now();
        let mut stream = support.run_action(req).await?.into_inner();
        while let Some(e) = stream.message().await? {
            if let Some(Event::Target(te)) = e.event
                && let Some(r) = te.result
            {
                anyhow::ensure!(r.outcome == outpost_proto::v1::Outcome::Succeeded as i32, "{name}: {}", r.message);
                return Ok(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        anyhow::bail!("{name}: no result")
    };
    for (what, names) in
        [("on replica 1, submitted on replica 0 (forwarded)", &remote), ("on replica 0 itself", &local)]
    {
        if names.is_empty() {
            continue;
        }
        let mut rtt = Vec::new();
        for i in 0..runs as usize {
            rtt.push(once(&names[(i * 7919) % names.len()]).await?);
        }
        println!("action round trip to an agent {what} (ms): {}", summary(rtt));
    }
    sim.kill().await?;
    Ok(())
}

async fn rollout(root: &Path, (agents, real): (u32, u32), batch: u32, interval: &str) -> anyhow::Result<()> {
    use outpost_proto::v1::{RunActionRequest, Selector, job_event::Event};
    anyhow::ensure!(real >= 1 && real <= agents, "--real must be 1..=--agents");
    let releases = harness::releases::Releases::new(
        &std::fs::create_dir_all(root.join("rel")).map(|()| root.join("rel"))?,
        &root.join("hub/hubd.toml"),
    );
    let config = format!("{BENCH_HUB}\n{}", harness::releases::Releases::hub_toml_level(&releases.public, 19));
    let hub = HubProc::start(&root.join("hub"), harness::free_port(), &config).await;
    let hub_pid = hub.child.id().ok_or_else(|| anyhow::anyhow!("hubd has no pid"))?;
    let t = Instant::now();
    let b = releases.stamped("0.1.1");
    releases.publish(&b, "0.1.1");
    let raw = std::fs::metadata(&b)?.len();
    let zst = std::fs::metadata(root.join(format!("hub/data/artifacts/agentd-0.1.1-{}.zst", releases.arch)))?.len();
    println!(
        "release: this build's agentd stripped, {:.1} MB, {:.1} MB compressed (zstd -19, `hubd release add` took {:.1} s)",
        raw as f64 / 1e6,
        zst as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let crash = releases.script("crash", "exit 3");
    releases.publish(&crash, "0.1.3");
    let (mut sim, _ops) = start_fleet(&hub, root, agents - real, interval, &["--concurrency", "64"]).await?;
    let mut real_agents = Vec::new();
    let extra = format!(
        "{}report_interval_ms = 2000\nupdate_probation_secs = 120\n",
        releases.agent_toml().replace("update_probation_secs = 10\n", "")
    );
    for i in 0..real {
        let name = format!("real-{i:02}");
        let token = harness::create_token(&mut hub.client(Role::Admin), &name).await;
        real_agents.push(harness::AgentProc::start(root, &name, &token, &extra));
    }
    harness::watch_until_for(&mut hub.client(Role::Viewer), "every agent connected", Duration::from_secs(600), |f| {
        f.values().filter(|s| harness::liveness(s) == Liveness::Connected).count() == agents as usize
    })
    .await;
    let served = |hub: &HubProc| -> anyhow::Result<f64> {
        let out = std::process::Command::new("curl").args(["-s", &format!("{}/metrics", hub.admin)]).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("outpost_artifact_bytes_served_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    };
    let served_before = served(&hub)?;
    let start = sample(hub_pid);
    let (peak, watch) = peak_rss(hub_pid);
    let req = RunActionRequest {
        action: "agent-update".into(),
        args: [("version".to_string(), "0.1.1".to_string())].into(),
        selector: Some(Selector { all: true, ..Default::default() }),
        batch,
        max_failure_rate: 0.05,
        ..Default::default()
    };
    let t = Instant::now();
    let mut stream = hub.client(Role::Admin).run_action(req).await?.into_inner();
    let mut last = None;
    let mut failures = Vec::new();
    while let Some(e) = stream.message().await? {
        match e.event {
            Some(Event::Progress(p)) => last = Some(p),
            Some(Event::Target(te)) => {
                if let Some(r) = te.result.filter(|r| r.outcome != outpost_proto::v1::Outcome::Succeeded as i32) {
                    failures.push(format!("{}: {}", te.server, r.message));
                }
            }
            _ => {}
        }
    }
    let took = t.elapsed().as_secs_f64();
    let end = sample(hub_pid);
    watch.abort();
    let p = last.unwrap_or_default();
    let bytes = served(&hub)? - served_before;
    let cpu = (end.ticks - start.ticks) as f64 / clk_tck() / took * 100.0;
    println!(
        "rollout of {agents} agents ({real} real agentd) in batches of {batch}: {took:.1} s; {} succeeded, {} failed{}",
        p.succeeded,
        p.failed,
        if failures.is_empty() { String::new() } else { format!(" (first: {})", failures[0]) }
    );
    println!(
        "hub served {:.1} MB for it ({:.2} MB per agent; the binary is {:.1} MB), hubd CPU {cpu:.0}% of one core on average, peak RSS {:.0} MiB (it was {:.0} MiB before)",
        bytes / 1e6,
        bytes / 1e6 / f64::from(agents),
        raw as f64 / 1e6,
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        start.rss_kib as f64 / 1024.0
    );
    // A build that crashes at start, on one real agent: from the new binary's start to the previous one
    // running again (the agent's own log), and the whole job.
    let t = Instant::now();
    let mut req2 = RunActionRequest {
        action: "agent-update".into(),
        args: [("version".to_string(), "0.1.3".to_string())].into(),
        selector: Some(Selector { names: vec!["real-00".into()], ..Default::default() }),
        max_failure_rate: 1.0,
        ..Default::default()
    };
    req2.batch = 1;
    let job = harness::run_job(&mut hub.client(Role::Admin), req2).await;
    let r = job.result("real-00");
    let log = strip_ansi(&std::fs::read_to_string(root.join("real-00/agentd.log"))?);
    let stamp = |needle: &str| -> Option<f64> {
        let line = log.lines().rfind(|l| l.contains(needle))?;
        let ts = line.split_whitespace().next()?;
        let t = ts.get(11..ts.len().saturating_sub(1))?; // HH:MM:SS.ffffff
        let mut parts = t.split(':');
        let (h, m, s): (f64, f64, f64) =
            (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        Some(h * 3600.0 + m * 60.0 + s)
    };
    let rolled = match (stamp("started on probation"), stamp("agentd running")) {
        (Some(a), Some(b)) if b >= a => format!("{:.0} ms", (b - a) * 1000.0),
        _ => "not found in the log".into(),
    };
    println!(
        "a build that crashes at start: rolled back {rolled} after its start ({:.1} s for the whole job: download, verify, restart, rollback, answer): {}",
        t.elapsed().as_secs_f64(),
        r.message
    );
    sim.kill().await?;
    Ok(())
}

async fn backup(root: &Path, agents: u32, interval: &str, fill_secs: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let hub = HubProc::start(&root.join("hub"), harness::free_port(), BENCH_HUB).await;
    let (mut sim, _ops) = start_fleet(&hub, root, agents, interval, &["--concurrency", "64"]).await?;
    println!("building history for {fill_secs} s…");
    tokio::time::sleep(Duration::from_secs(fill_secs)).await;
    let stored = |hub: &HubProc| -> anyhow::Result<f64> {
        let out = std::process::Command::new("curl").args(["-s", &format!("{}/metrics", hub.admin)]).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("outpost_reports_stored_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    };
    let window = Duration::from_secs(20);
    let (t, before) = (Instant::now(), stored(&hub)?);
    tokio::time::sleep(window).await;
    let rate_without = (stored(&hub)? - before) / t.elapsed().as_secs_f64();
    let pass = root.join("pass");
    std::fs::write(&pass, "a benchmark passphrase\n")?;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600))?;
    let out = root.join("hub.backup");
    let (t, before) = (Instant::now(), stored(&hub)?);
    let done = tokio::process::Command::new(harness::bin("hubd"))
        .arg("--config")
        .arg(&hub.config)
        .args(["backup", "--out", out.to_str().unwrap(), "--passphrase-file", pass.to_str().unwrap()])
        .output()
        .await?;
    let took = t.elapsed().as_secs_f64();
    let rate_during = (stored(&hub)? - before) / took;
    anyhow::ensure!(done.status.success(), "hubd backup failed: {}", String::from_utf8_lossy(&done.stderr));
    let store = store_size(&root.join("hub/data"));
    println!(
        "hubd backup of {agents} servers ({:.0} MiB store) while they report every {interval}: {took:.1} s; the backup is {:.0} MiB",
        store as f64 / (1 << 20) as f64,
        std::fs::metadata(&out)?.len() as f64 / (1 << 20) as f64
    );
    println!(
        "reports stored: {rate_without:.0}/s before, {rate_during:.0}/s during the backup ({:+.0} %)",
        (rate_during / rate_without - 1.0) * 100.0
    );
    sim.kill().await?;
    let t = Instant::now();
    let restored = tokio::process::Command::new(harness::bin("hubd"))
        .arg("--config")
        .arg(root.join("restored/hubd.toml"))
        .args(["--data-dir", root.join("restored/data").to_str().unwrap(), "restore", out.to_str().unwrap()])
        .args(["--passphrase-file", pass.to_str().unwrap()])
        .output()
        .await?;
    anyhow::ensure!(restored.status.success(), "hubd restore failed: {}", String::from_utf8_lossy(&restored.stderr));
    println!("hubd restore onto an empty data directory: {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// The peak RSS (KiB) of `pid`, sampled every 500 ms by a task until it is aborted.
fn peak_rss(pid: u32) -> (std::sync::Arc<std::sync::atomic::AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(sample(pid).rss_kib));
    let watch = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                peak.fetch_max(sample(pid).rss_kib, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    (peak, watch)
}

async fn ca_rotation(root: &Path, agents: u32, interval: &str) -> anyhow::Result<()> {
    use outpost_proto::v1::CaRotationRequest;
    let hub = HubProc::start(&root.join("hub"), harness::free_port(), BENCH_HUB).await;
    let hub_pid = hub.child.id().ok_or_else(|| anyhow::anyhow!("hubd has no pid"))?;
    let (mut sim, _ops) = start_fleet(&hub, root, agents, interval, &["--concurrency", "64"]).await?;
    let mut admin = hub.client(Role::Admin);
    let (peak, watch) = peak_rss(hub_pid);
    let before = peak.load(std::sync::atomic::Ordering::Relaxed);
    let total = Instant::now();
    for (action, phase) in
        [("start", "init"), ("advance", "update_clients"), ("advance", "update_servers"), ("advance", "standby")]
    {
        let (t, cpu0) = (Instant::now(), sample(hub_pid).ticks);
        let said = admin.ca_rotation(CaRotationRequest { action: action.into(), force: false }).await?.into_inner();
        let asked = t.elapsed().as_secs_f64();
        if phase == "standby" {
            // The end: the new CA is the only one; agents are told to drop the old one and nothing waits.
            println!("{phase:>14}: {:6.1} s ({})", asked, said.message);
            continue;
        }
        // Until every agent has done the phase (the rotation's progress is polled: it has no event stream).
        let s = loop {
            let s = admin.ca_rotation(CaRotationRequest { action: "status".into(), force: false }).await?.into_inner();
            if s.phase == phase && s.lagging == 0 && s.done == s.servers {
                break s;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(900), "phase {phase} not done in 15 min: {s:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let took = t.elapsed().as_secs_f64();
        let cpu = (sample(hub_pid).ticks - cpu0) as f64 / clk_tck() / took * 100.0;
        println!(
            "{phase:>14}: {took:6.1} s until all {} agents had done it (the request itself {:.0} ms: {}); hubd CPU {cpu:.0}% of one core",
            s.servers,
            asked * 1000.0,
            said.message
        );
    }
    watch.abort();
    println!(
        "whole rotation over {agents} agents: {:.1} s; hubd peak RSS {:.0} MiB (it was {:.0} MiB before)",
        total.elapsed().as_secs_f64(),
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        before as f64 / 1024.0
    );
    let log = std::fs::read_to_string(root.join("sim.log")).unwrap_or_default();
    println!("simulator errors logged: {}", log.lines().filter(|l| !l.contains("asked for a reconnect")).count());
    sim.kill().await?;
    Ok(())
}

/// `text` without terminal colour sequences (ESC [ … m).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
