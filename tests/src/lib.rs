//! The shared test harness: real `hubd` and `agentd` processes on loopback, a throwaway data directory per
//! test, admin access minted from the hub's own CA, and waits that follow the hub's fleet watch stream (an
//! event) instead of sleeping.

pub mod boundaries;
pub mod cloud;
pub mod host;
pub mod hostile;
pub mod releases;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use outpost_common::Role;
use outpost_common::bundle::Bundle;
use outpost_proto::v1::operator_client::OperatorClient;
use outpost_proto::v1::{
    CreateJoinTokenRequest, Disk, FleetEvent, Health, K3s, Liveness, Server, WatchFleetRequest, fleet_event, k3s,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// Generous: debug builds on a 2-core machine under parallel tests.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn init() {
    outpost_common::install_crypto_provider();
}

/// A built binary of this workspace (`cargo build --workspace --bins` comes first in the test command).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) }).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (the README's test command does)",
        path.display()
    );
    path
}

/// A port free right now on loopback (the hub must come back on the same port after a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub struct HubProc {
    pub child: Child,
    pub dir: PathBuf,
    pub port: u16,
    pub url: String,
    pub pin: String,
    /// `http://127.0.0.1:PORT` of the admin listener (metrics, health).
    pub admin: String,
    pub config: PathBuf,
    /// Environment given to hubd (kept across restarts).
    env: Vec<(String, String)>,
}

impl HubProc {
    /// Starts hubd with `extra` TOML lines and waits for its READY line.
    pub async fn start(dir: &Path, port: u16, extra: &str) -> HubProc {
        HubProc::start_env(dir, port, extra, Vec::new()).await
    }

    /// As [`HubProc::start`], with environment variables for hubd.
    pub async fn start_env(dir: &Path, port: u16, extra: &str, env: Vec<(String, String)>) -> HubProc {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("hubd.toml");
        // The admin listener on a free port (its default, 9464, is one per machine).
        let admin = if extra.contains("[admin]") { "" } else { "\n[admin]\nlisten = \"127.0.0.1:0\"\n" };
        std::fs::write(
            &config,
            format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{extra}{admin}\n", dir.join("data").display()),
        )
        .unwrap();
        HubProc::spawn(dir, port, config, env).await
    }

    /// Starts hubd with the config file `config` as it is (its `listen` port is `port`); logs go to
    /// `dir/hubd.log`.
    pub async fn spawn(dir: &Path, port: u16, config: PathBuf, env: Vec<(String, String)>) -> HubProc {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("hubd.log")).unwrap();
        let mut child = Command::new(bin("hubd"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn hubd");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("hubd READY in time")
            .unwrap()
            .unwrap_or_else(|| panic!("hubd exited before READY; see {}", dir.join("hubd.log").display()));
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("READY"), "unexpected first line {line:?}");
        let url = parts.next().unwrap().to_string();
        let pin = parts.next().unwrap().to_string();
        let admin = parts.next().unwrap_or_default().to_string();
        HubProc { child, dir: dir.to_path_buf(), port, url, pin, admin, config, env }
    }

    pub async fn kill9(&mut self) {
        self.child.start_kill().unwrap(); // SIGKILL
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, and waits for hubd to drain and exit.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        self.child.wait().await.unwrap();
    }

    pub async fn restart(&mut self) {
        let extra = std::fs::read_to_string(&self.config).unwrap();
        let extra: String = extra.lines().skip(2).map(|l| format!("{l}\n")).collect();
        *self = HubProc::start_env(&self.dir, self.port, &extra, self.env.clone()).await;
    }

    /// An operator bundle signed by this hub's CA (read from its data dir, as `hubd operator issue` does).
    pub fn bundle(&self, name: &str, role: Role) -> Bundle {
        self.bundle_with_ttl(name, role, Duration::from_secs(3600))
    }

    /// An operator bundle with lifetime `ttl`, signed with the CA directly (as a careless admin might).
    pub fn bundle_with_ttl(&self, name: &str, role: Role, ttl: Duration) -> Bundle {
        // This hub's own config (its CA may be a file several hubs share), addressed at this hub alone.
        let mut config = hub::HubConfig::load(&self.config).unwrap();
        config.advertise = None;
        let ca = hub::pki::rotation::Pki::read(&config.data_dir.join("ca"), config.external_ca()).unwrap();
        hub::cli::issue_bundle(&config, &ca.keys(), name, role, ttl).unwrap()
    }

    /// What this hub seals its secrets with (its key derives from the CA, read from its data dir).
    pub fn sealer(&self) -> hub::seal::Sealer {
        let config = hub::HubConfig::load(&self.config).unwrap();
        let ca = hub::pki::rotation::Pki::read(&config.data_dir.join("ca"), config.external_ca()).unwrap();
        hub::seal::Sealer::of(&ca.keys())
    }

    pub fn client(&self, role: Role) -> OperatorClient<Channel> {
        OperatorClient::new(self.bundle(&format!("test-{role}"), role).channel().unwrap())
            .max_decoding_message_size(256 << 20)
    }

    pub async fn token(&self, server: &str) -> String {
        create_token(&mut self.client(Role::Admin), server).await
    }
}

pub async fn create_token(client: &mut OperatorClient<Channel>, server: &str) -> String {
    let req = CreateJoinTokenRequest {
        server_name: server.into(),
        ttl_secs: 600,
        customer: "acme".into(),
        plan: "pro".into(),
        ..Default::default()
    };
    client.create_join_token(req).await.expect("create token").into_inner().token
}

pub struct AgentProc {
    pub child: Child,
    pub name: String,
    pub dir: PathBuf,
}

impl AgentProc {
    /// Starts agentd with a token file (the cloud-init path: enroll on first start) and `extra` TOML.
    pub fn start(root: &Path, name: &str, token: &str, extra: &str) -> AgentProc {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("join-token"), token).unwrap();
        let config = dir.join("agentd.toml");
        let defaults = format!(
            "data_dir = \"{0}/data\"\ntoken_file = \"{0}/join-token\"\nreport_interval_ms = 200\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n",
            dir.display()
        );
        // `extra` may override a default (TOML refuses a key twice).
        let key = |l: &str| l.split('=').next().unwrap_or("").trim().to_string();
        let overridden: Vec<String> = extra.lines().map(key).collect();
        let kept: String =
            defaults.lines().filter(|l| !overridden.contains(&key(l))).map(|l| format!("{l}\n")).collect();
        std::fs::write(&config, format!("{kept}{extra}\n")).unwrap();
        AgentProc::spawn(name, &dir, &config)
    }

    /// Starts agentd with an existing config file; logs go to `dir/agentd.log`.
    pub fn spawn(name: &str, dir: &Path, config: &Path) -> AgentProc {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agentd.log")).unwrap();
        let child = Command::new(bin("agentd"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn agentd");
        AgentProc { child, name: name.to_string(), dir: dir.to_path_buf() }
    }

    pub async fn kill9(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// The fleet as a watcher sees it.
pub type Fleet = BTreeMap<String, Server>;

/// Follows `WatchFleet` until `done(fleet)` holds; returns that fleet. Panics with the last state on timeout.
pub async fn watch_until(client: &mut OperatorClient<Channel>, what: &str, done: impl FnMut(&Fleet) -> bool) -> Fleet {
    watch_until_for(client, what, WAIT, done).await
}

/// [`watch_until`] with an explicit time limit.
pub async fn watch_until_for(
    client: &mut OperatorClient<Channel>,
    what: &str,
    limit: Duration,
    mut done: impl FnMut(&Fleet) -> bool,
) -> Fleet {
    let mut stream = client.watch_fleet(WatchFleetRequest {}).await.expect("watch").into_inner();
    let mut fleet = Fleet::new();
    // `done` may look at the whole fleet: check it after a complete snapshot and then at most every 20 ms,
    // so a 10k-server fleet streaming 10k updates/s does not make the watcher fall behind.
    let mut checked = std::time::Instant::now();
    let mut complete = false;
    let result = tokio::time::timeout(limit, async {
        loop {
            match stream.message().await {
                Ok(Some(FleetEvent { event: Some(e) })) => {
                    if let fleet_event::Event::Snapshot(s) = &e {
                        complete = s.last;
                    }
                    apply(&mut fleet, e)
                }
                Ok(_) => panic!("watch ended while waiting for {what}"),
                Err(s) => panic!("watch failed while waiting for {what}: {s}"),
            }
            if complete && (fleet.len() < 1000 || checked.elapsed() >= Duration::from_millis(20)) {
                checked = std::time::Instant::now();
                if done(&fleet) {
                    return;
                }
            }
        }
    })
    .await;
    if result.is_err() {
        let mut s = summary(&fleet);
        s.truncate(50);
        panic!("timed out waiting for {what}; last fleet (first 50): {s:#?}");
    }
    fleet
}

fn apply(fleet: &mut Fleet, e: fleet_event::Event) {
    match e {
        fleet_event::Event::Snapshot(s) => {
            if s.part == 0 {
                fleet.clear();
            }
            fleet.extend(s.servers.into_iter().map(|s| (s.name.clone(), s)));
        }
        fleet_event::Event::Upsert(s) => {
            fleet.insert(s.name.clone(), s);
        }
        fleet_event::Event::Removed(n) => {
            fleet.remove(&n);
        }
    }
}

pub fn summary(fleet: &Fleet) -> Vec<String> {
    fleet
        .values()
        .map(|s| {
            format!(
                "{} {:?} seq={} received={} conns={}",
                s.name,
                liveness(s),
                s.last_seq,
                s.reports_received,
                s.connections
            )
        })
        .collect()
}

pub fn liveness(s: &Server) -> Liveness {
    Liveness::try_from(s.liveness).unwrap_or(Liveness::Unspecified)
}

/// Waits until the file at `path` (another process's log) contains `needle`. A log line is not an event
/// this process can await, so this polls, with a deadline.
pub async fn wait_for_file(path: &Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{} never contained {needle:?}:\n{text}", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `done()` holds, for a state another process keeps in files (not an event this process can
/// await): polls, with a deadline.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn is(fleet: &Fleet, name: &str, l: Liveness) -> bool {
    fleet.get(name).is_some_and(|s| liveness(s) == l)
}

/// A stand-in `systemctl` for agents in tests (no systemd runs in this environment): it appends its
/// arguments to `calls` next to itself, and `show` reports the unit failed when a `fail` file is there.
pub fn fake_systemctl(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("systemctl");
    std::fs::write(
        &path,
        "#!/bin/sh\nd=$(dirname \"$0\")\necho \"$*\" >> \"$d/calls\"\nif [ \"$1\" = show ]; then\n  echo LoadState=loaded\n  \
         if [ -e \"$d/fail\" ]; then echo ActiveState=failed; echo SubState=failed; else echo ActiveState=active; echo SubState=running; fi\n\
         fi\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Everything one RunAction stream said.
#[derive(Debug, Default)]
pub struct JobRun {
    pub events: Vec<outpost_proto::v1::job_event::Event>,
    pub plan: outpost_proto::v1::JobPlan,
    pub results: BTreeMap<String, outpost_proto::v1::CommandResult>,
    /// Output per server, concatenated in order.
    pub output: BTreeMap<String, String>,
    pub progress: outpost_proto::v1::JobProgress,
}

impl JobRun {
    pub fn result(&self, server: &str) -> &outpost_proto::v1::CommandResult {
        self.results.get(server).unwrap_or_else(|| panic!("no result for {server}: {:#?}", self.events))
    }
}

/// Follows a RunAction stream to its end (or panics after [`WAIT`]), feeding each event to `each` as it comes.
pub async fn follow_job(
    stream: &mut tonic::Streaming<outpost_proto::v1::JobEvent>,
    mut each: impl FnMut(&outpost_proto::v1::job_event::Event),
) -> JobRun {
    use outpost_proto::v1::job_event::Event;
    let mut run = JobRun::default();
    tokio::time::timeout(WAIT, async {
        while let Some(m) = stream.message().await.expect("job stream") {
            let Some(e) = m.event else { continue };
            each(&e);
            match &e {
                Event::Plan(p) => run.plan = p.clone(),
                Event::Target(t) => {
                    run.output.entry(t.server.clone()).or_default().push_str(&t.output);
                    if let Some(r) = &t.result {
                        run.results.insert(t.server.clone(), r.clone());
                    }
                }
                Event::Progress(p) => run.progress = p.clone(),
            }
            run.events.push(e);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("job did not finish in time; so far: {:#?}", run.events));
    assert!(run.progress.finished, "the stream ended before the job finished: {:#?}", run.events);
    run
}

/// Runs an action and follows it to its end.
pub async fn run_job(client: &mut OperatorClient<Channel>, req: outpost_proto::v1::RunActionRequest) -> JobRun {
    let mut stream = client.run_action(req).await.expect("run action").into_inner();
    follow_job(&mut stream, |_| {}).await
}

/// A RunAction request for `action` on `names`.
pub fn action(action: &str, names: &[&str], args: &[(&str, &str)]) -> outpost_proto::v1::RunActionRequest {
    outpost_proto::v1::RunActionRequest {
        action: action.into(),
        args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        selector: Some(outpost_proto::v1::Selector {
            names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `script` with sh in `dir` as a developer with a git identity would; panics with its stderr when it
/// fails. Returns its trimmed stdout.
pub fn git(dir: &Path, script: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A simulated agent's health: a deterministic, plausible random walk (one disk, K3s, a version). The
/// simulator sends it to hubd and the echo benchmark to the bare transport, so both carry the same report.
pub struct SimHealth {
    state: u64,
    cpu: f32,
    mem: f32,
}

impl SimHealth {
    /// Agent `i`'s walk.
    pub fn new(i: u64) -> SimHealth {
        SimHealth { state: i * 2_654_435_761 + 1, cpu: 20.0, mem: 0.5 }
    }

    fn next(&mut self) -> f32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % 1000) as f32 / 1000.0 - 0.5
    }

    pub fn health(&mut self, uptime: u64) -> Health {
        self.cpu = (self.cpu + self.next() * 10.0).clamp(1.0, 95.0);
        self.mem = (self.mem + self.next() * 0.02).clamp(0.2, 0.9);
        let total = 4u64 << 30;
        Health {
            cpu_percent: self.cpu,
            load1: self.cpu / 50.0,
            load5: self.cpu / 60.0,
            load15: self.cpu / 70.0,
            mem_total_bytes: total,
            mem_used_bytes: (total as f32 * self.mem) as u64,
            disks: vec![Disk { mount: "/".into(), total_bytes: 40 << 30, available_bytes: 25 << 30 }],
            uptime_secs: uptime,
            process_count: 120,
            k3s: Some(K3s { state: k3s::State::Active as i32, detail: "active".into() }),
            agent_version: "sim".into(),
            ..Default::default()
        }
    }
}

/// hubd TOML for one replica of a hub on `pg`: every replica's address in `advertise`, the CA in `dir/ca`
/// (created once, shared by file), `agents` lines in `[agents]`.
pub fn replica_config(pg: &standin::postgres::Postgres, dir: &Path, ports: &[u16], agents: &str) -> String {
    let ca = dir.join("ca");
    hub::pki::ca::FleetCa::load_or_create(&ca, None).unwrap();
    let advertise: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    format!(
        "advertise = \"{}\"\n[agents]\n{agents}\n[ca]\ncert = \"{}\"\nkey = \"{}\"\n[store]\nkind = \"postgres\"\n\
         history_len = 100000\n[store.postgres]\nurl = \"{}\"\npassword_file = \"{}\"\n",
        advertise.join(","),
        ca.join("ca.pem").display(),
        ca.join("ca.key").display(),
        pg.url(),
        pg.password_file(dir).display(),
    )
}
