//! `outpost-demo` (`scripts/demo`): a whole local fleet from one command. An embedded hub (sled in a temporary directory),
//! N real `agentd` processes enrolled through real join tokens over loopback mTLS, and the live console.
//! Quitting stops the agents, the hub, and removes the directory; agents also exit by themselves if this
//! process dies (`--exit-with-parent`), so nothing is left behind.
//!
//! For the app actions the demo runs a stand-in Kubernetes API with a minimal controller (every
//! Deployment becomes available) and, when git is installed, a sample app repository
//! (`repos/hello.git`, tags `v1` and `v2`): `app-apply` with [`SAMPLE_SPEC`] (its `{repos}` replaced by the
//! demo's `repos/` directory), then `app-deploy`, `app-rollback`, `app-logs`… all work.
//!
//! Provisioning works too, against a stand-in Hetzner Cloud API (`standin::hetzner`) whose servers "boot"
//! by starting a real agentd with the join token from their user-data: `:provision CUSTOMER PLAN` in the
//! console (or `outpost provision` with the demo's bundle) queues a job, `:jobs` shows it, and the server
//! appears in the fleet. The demo provisions one server itself at start so `:jobs` has a story to tell.

mod living;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use hub::HubConfig;
use hub::fleet::tokens::TokenRequest;
use outpost_common::Role;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const CUSTOMERS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];
const PLANS: [&str; 3] = ["starter", "pro", "team"];

/// `outpost-demo`: a local fleet (an embedded hub, real agentd processes, stand-in clouds) and the live console.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "outpost-demo", version)]
pub struct DemoArgs {
    /// How many agents to run (customers and plans are dealt round-robin: with six or more, acme has
    /// servers on two plans).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub agents: u16,
    /// How often each agent reports, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub report_interval_ms: u64,
}

/// `agentd` next to this executable (both come from `cargo build --release --bins`).
fn agentd_path() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let path = exe.with_file_name("agentd");
    anyhow::ensure!(
        path.exists(),
        "{} not found: build every binary first (`cargo build --release --bins`)",
        path.display()
    );
    Ok(path)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let agentd = agentd_path()?;
    let dir = tempfile::Builder::new().prefix("outpost-demo-").tempdir().context("creating the demo directory")?;
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    // Everything but the console writes to files: nothing else may draw on the terminal.
    let _log = outpost_common::logging::init("hubd", Some(&logs), "info", false).map_err(anyhow::Error::msg)?;
    // A panic anywhere (the console, the hub, a stand-in) ends the demo: the terminal is restored (the
    // console's guard), the panic is logged, and the fleet is stopped; its words are printed at the end.
    let panicked = tokio_util::sync::CancellationToken::new();
    let panic_words: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    {
        let (token, words) = (panicked.clone(), panic_words.clone());
        std::panic::set_hook(Box::new(move |info| {
            let text = info.to_string();
            tracing::error!(panic = %text, "a part of the demo panicked; ending the demo");
            words.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(text);
            token.cancel();
        }));
    }
    let fleet = DemoFleet::start(&args, &agentd, dir.path()).await?;
    let bundle_dir = dir.path().join("operator");
    fleet.bundle.write(&bundle_dir).context("writing the demo's operator bundle")?;
    let reach = format!("outpost --bundle {} fleet", bundle_dir.display());
    // Printed before the console takes the screen: it is there again when the demo ends.
    eprintln!("outpost-demo: a fleet in {} (removed when you quit)", dir.path().display());
    eprintln!("outpost-demo: from another terminal, while it runs: {reach}");
    eprintln!("outpost-demo: logs in {}", logs.display());
    let mut app =
        outpost_console::state::App::new(&fleet.hub.advertise, &fleet.bundle.meta.name, &fleet.bundle.meta.role);
    app.spec_files = fleet.spec_files.iter().map(|p| p.display().to_string()).collect();
    app.notice(format!("demo: {reach} · :apps · :usage · :alerts · ? for help"));
    let result = match fleet.bundle.channel() {
        Ok(channel) => tokio::select! {
            r = outpost_console::app::run(app, channel) => r,
            () = panicked.cancelled() => Err(anyhow::anyhow!("a part of the demo panicked")),
        },
        Err(e) => Err(e.into()),
    };
    fleet.stop().await?;
    if let Some(words) = panic_words.lock().unwrap_or_else(|p| p.into_inner()).take() {
        eprintln!("outpost-demo: ended by a panic: {words}");
    }
    result
}

/// An app spec the demo's agents can deploy: `{repos}` is the demo's repository directory.
pub const SAMPLE_SPEC: &str = r#"name = "hello"
image = "registry.example/demo/hello:{commit}"
port = 8080
replicas = 2
[repo]
url = "{repos}/hello.git"
ref = "main"
[env]
GREETING = "hello from the demo"
[secrets]
API_SECRET = "demo-only"
[health]
path = "/healthz"
"#;

/// The demo's hub and agents, without the console (tests drive it through the operator API).
pub struct DemoFleet {
    pub hub: hub::Hub,
    /// An admin bundle for this hub (in memory).
    pub bundle: outpost_common::bundle::Bundle,
    /// The stand-in Kubernetes API every demo agent talks to.
    pub kube: standin::kube::KubeStandIn,
    /// Where the sample repository lives (`hello.git`), if git is installed.
    pub repos: Option<PathBuf>,
    /// The sample app specs (`specs/hello.toml`, `specs/worker.toml`), offered in the console's forms.
    pub spec_files: Vec<PathBuf>,
    agents: Vec<Child>,
    stop: CancellationToken,
    /// The stand-in Hetzner Cloud API provisioning talks to, and the agents its servers run.
    pub cloud: standin::hetzner::HetznerStandIn,
    machines: std::sync::Arc<DemoMachines>,
}

impl DemoFleet {
    /// Starts the embedded hub in `root/hub` and `args.agents` agents (the `agentd` binary at `agentd`)
    /// under `root/agents`, with their logs in `root/logs`.
    pub async fn start(args: &DemoArgs, agentd: &std::path::Path, root: &std::path::Path) -> anyhow::Result<DemoFleet> {
        std::fs::create_dir_all(root.join("logs"))?;
        let stop = CancellationToken::new();
        let mut config = HubConfig {
            listen: "127.0.0.1:0".parse().expect("literal"),
            data_dir: root.join("hub"),
            ..HubConfig::default()
        };
        config.agents.grace_secs = 10;
        config.admin.enabled = false; // one demo per machine should not need a free port 9464
        let cloud = demo_cloud(&mut config, agentd, root).await?;
        let hub = hub::start(config.clone(), stop.clone()).await.context("starting the embedded hub")?;
        config.advertise = Some(hub.advertise.clone());
        let bundle =
            hub::cli::issue_bundle(&config, &hub.pki().keys(), "demo-admin", Role::Admin, Duration::from_secs(86_400))?;
        let kube = standin::kube::KubeStandIn::start_with_controller(&root.join("kube")).await;
        let (repos, commits) = match sample_repository(&root.join("repos")) {
            Ok(commits) => (Some(root.join("repos")), Some(commits)),
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "no sample app repository (is git installed?): the app actions have nothing to deploy"
                );
                (None, None)
            }
        };
        let spec_files = write_specs(root)?;
        let machines = std::sync::Arc::new(DemoMachines {
            agent: AgentSetup {
                agentd: agentd.to_path_buf(),
                root: root.to_path_buf(),
                kubeconfig: kube.kubeconfig.clone(),
                stand_ins: write_stand_ins(root)?,
                report_interval_ms: args.report_interval_ms,
            },
            children: std::sync::Mutex::default(),
        });
        cloud.set_machines(machines.clone());
        let mut fleet = DemoFleet { hub, bundle, kube, repos, spec_files, agents: Vec::new(), stop, cloud, machines };
        if let Err(e) = start_agents(args, &fleet.hub, &fleet.machines.agent, &mut fleet.agents).await {
            fleet.stop().await?;
            return Err(e);
        }
        if let Some((_, v2)) = &commits {
            // main's newest commit crashes on initech's server (its deploy is rolled back) and the worker
            // crashes on umbrella's (its first deploy has nothing to go back to: the app stays failing).
            fleet.kube.fail_image_in("initech", &format!("registry.example/demo/hello:{v2}"));
            fleet.kube.fail_image_in("umbrella", &format!("registry.example/demo/worker:{v2}"));
            tokio::spawn(populate(fleet.bundle.channel()?, fleet.spec_files.clone()));
        }
        // One server through the provisioning queue, as a customer signing up would get it.
        let mut client = outpost_proto::v1::operator_client::OperatorClient::new(fleet.bundle.channel()?);
        let req = outpost_proto::v1::ProvisionRequest {
            customer: "wayne".into(),
            plan: "pro".into(),
            idempotency_key: "demo-signup".into(),
            ..Default::default()
        };
        if let Err(s) = client.provision(req).await {
            tracing::warn!(error = s.message(), "the demo's sample provision was refused");
        }
        Ok(fleet)
    }

    /// Stops the agents, then the hub.
    pub async fn stop(self) -> anyhow::Result<()> {
        let DemoFleet { hub, mut agents, stop, machines, .. } = self;
        machines.stop_all();
        for a in &mut agents {
            let _ = a.start_kill();
        }
        for mut a in agents {
            let _ = a.wait().await;
        }
        stop.cancel();
        hub.wait().await
    }
}

/// What every demo agent gets: the binary, the stand-ins, the cluster.
struct AgentSetup {
    agentd: PathBuf,
    root: PathBuf,
    kubeconfig: PathBuf,
    stand_ins: PathBuf,
    report_interval_ms: u64,
}

impl AgentSetup {
    /// Writes agent `name`'s config and token under `dir`; returns the config's path and the log's.
    fn prepare(&self, name: &str, dir: &std::path::Path, token: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("join-token"), token)?;
        let config = dir.join("agentd.toml");
        let log_path = self.root.join("logs").join(format!("{name}.log"));
        // Demo agents run as you, on loopback, in a temp dir: `exec` is on and each agent may show its own
        // log (`logs` with source file:…/demo-NN.log), so every action can be tried from the console.
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{0}/data\"\ntoken_file = \"{0}/join-token\"\nreport_interval_ms = {1}\n\
                 exec_enabled = true\nlog_files = [\"{2}\"]\nsystemctl = \"{3}\"\njournalctl = \"{4}\"\n\
                 kubeconfig = \"{5}\"\nrepo_roots = [\"{6}\"]\nrollout_poll_ms = 100\napps_report_secs = 2\n\
                 usage_interval_secs = 5\n",
                dir.display(),
                self.report_interval_ms,
                log_path.display(),
                self.stand_ins.join("systemctl").display(),
                self.stand_ins.join("journalctl").display(),
                self.kubeconfig.display(),
                self.root.join("repos").display(),
            ),
        )?;
        Ok((config, log_path))
    }
}

/// The machines behind the demo's cloud: a server that boots runs a real agentd with the join token its
/// user-data carries (read from the template's `join-token` entry; the tests parse it with a real YAML
/// parser and also fetch agentd from the hub, which the demo skips: the binary is beside it).
struct DemoMachines {
    agent: AgentSetup,
    children: std::sync::Mutex<Vec<(i64, std::process::Child)>>,
}

impl DemoMachines {
    fn stop_all(&self) {
        for (_, mut c) in std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner())) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The join token in a user-data rendered from `provision-scripts/cloud-init.yaml`.
fn token_in_user_data(user_data: &str) -> Option<String> {
    use base64::Engine;
    let mut lines = user_data.lines().skip_while(|l| !l.trim_end().ends_with("path: /etc/outpost/join-token"));
    let content = lines.find_map(|l| l.trim().strip_prefix("content: "))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(content.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

impl standin::hetzner::Machines for DemoMachines {
    fn boot(&self, server: &standin::hetzner::Booted) {
        let Some(token) = token_in_user_data(&server.user_data) else {
            return tracing::warn!(server = %server.name, "a server booted without a join token");
        };
        let dir = self.agent.root.join("cloud").join(format!("{}-{}", server.name, server.id));
        let started = self.agent.prepare(&server.name, &dir, &token).and_then(|(config, log)| {
            Ok(std::process::Command::new(&self.agent.agentd)
                .arg("--config")
                .arg(&config)
                .arg("--exit-with-parent")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log)?)
                .spawn()?)
        });
        match started {
            Ok(child) => self.children.lock().unwrap_or_else(|p| p.into_inner()).push((server.id, child)),
            Err(e) => {
                tracing::warn!(server = %server.name, error = format!("{e:#}"), "a server did not start its agent")
            }
        }
    }

    fn destroy(&self, id: i64, _name: &str) {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = children.iter().position(|(c, _)| *c == id) {
            let (_, mut c) = children.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The stand-in cloud, and the hub's `[provision]` pointed at it (agentd served from `root/artifacts`).
async fn demo_cloud(
    config: &mut HubConfig,
    agentd: &std::path::Path,
    root: &std::path::Path,
) -> anyhow::Result<standin::hetzner::HetznerStandIn> {
    use std::os::unix::fs::PermissionsExt;
    let token = outpost_common::random_hex::<16>();
    let cloud = standin::hetzner::HetznerStandIn::start(&token).await;
    cloud.set_boot_time(Duration::from_secs(3));
    let token_file = root.join("hcloud-token");
    std::fs::write(&token_file, &token)?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
    let artifacts = root.join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let arch = std::env::consts::ARCH;
    std::fs::copy(agentd, artifacts.join(format!("agentd-{}-{arch}", env!("CARGO_PKG_VERSION"))))
        .context("copying agentd for the demo's cloud")?;
    let p = &mut config.provision;
    p.api_url = cloud.url();
    p.token_file = Some(token_file);
    p.artifacts_dir = Some(artifacts);
    p.ssh_public_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoBreakGlassKeyNotARealKey000000000000 demo".into();
    p.poll_ms = 500;
    p.api_rate_per_sec = 50.0;
    Ok(cloud)
}

async fn start_agents(
    args: &DemoArgs,
    hub: &hub::Hub,
    setup: &AgentSetup,
    agents: &mut Vec<Child>,
) -> anyhow::Result<()> {
    let mut seats = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..usize::from(args.agents) {
        let name = format!("demo-{:02}", i + 1);
        let (customer, plan) = (CUSTOMERS[i % CUSTOMERS.len()], PLANS[i % PLANS.len()]);
        let req = TokenRequest {
            server: name.clone(),
            ttl: Duration::from_secs(600),
            customer: customer.into(),
            plan: plan.into(),
            labels: [("env".to_string(), "demo".to_string())].into(),
            replace: false,
        };
        tokens.push(hub.create_token(req, "outpost-demo").await?.token);
        seats.push((name, customer.to_string(), plan.to_string()));
    }
    // A week of history before the agents add to it (umbrella's server runs over its plan's memory).
    if let Err(error) = living::seed_usage(hub, &seats, "demo-04", outpost_common::now_ms()).await {
        tracing::warn!(error = format!("{error:#}"), "no usage history for the demo");
    }
    for ((name, _, _), token) in seats.iter().zip(tokens) {
        let (config, log_path) = setup.prepare(name, &setup.root.join("agents").join(name), &token)?;
        let log = std::fs::File::create(&log_path)?;
        let agentd = &setup.agentd;
        let child = Command::new(agentd)
            .arg("--config")
            .arg(&config)
            .arg("--exit-with-parent")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", agentd.display()))?;
        agents.push(child);
    }
    Ok(())
}

/// The apps a visitor finds: hello on acme's and globex's servers; on initech's, v1 and then main, which
/// crashes and is rolled back automatically; on umbrella's, a worker that keeps crashing (an alert).
async fn populate(channel: tonic::transport::Channel, specs: Vec<PathBuf>) {
    let mut client = outpost_proto::v1::operator_client::OperatorClient::new(channel);
    if !living::connected(&mut client, &["demo-01", "demo-02", "demo-03", "demo-04"], Duration::from_secs(60)).await {
        return tracing::warn!("the demo's first servers did not connect within 60 s: no apps deployed");
    }
    let read = |i: usize| specs.get(i).and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
    let (hello, worker) = (read(0), read(1));
    let plan: [(&str, &str, &str, &[Option<&str>]); 4] = [
        ("demo-01", "hello", hello.as_str(), &[None]),
        ("demo-02", "hello", hello.as_str(), &[None]),
        ("demo-03", "hello", hello.as_str(), &[Some("v1"), None]),
        ("demo-04", "worker", worker.as_str(), &[None]),
    ];
    let runs = plan.into_iter().map(|(server, app, spec, deploys)| {
        let mut client = client.clone();
        async move {
            if let Err(e) = living::run(&mut client, "app-apply", server, &[("spec", spec)]).await {
                return tracing::warn!(server, app, error = %e, "demo: app-apply failed");
            }
            for git_ref in deploys {
                let mut args = vec![("app", app)];
                args.extend(git_ref.iter().map(|r| ("ref", *r)));
                match living::run(&mut client, "app-deploy", server, &args).await {
                    Ok(m) => tracing::info!(server, app, result = %m, "demo: deployed"),
                    Err(e) => {
                        tracing::info!(server, app, result = %e, "demo: a deploy failed, as the demo means it to")
                    }
                }
            }
        }
    });
    futures::future::join_all(runs).await;
}

/// The sample specs in `root/specs`, their `{repos}` made the demo's repository directory.
fn write_specs(root: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = root.join("specs");
    std::fs::create_dir_all(&dir)?;
    let repos = root.join("repos").display().to_string();
    let mut out = Vec::new();
    for (name, text) in [("hello.toml", SAMPLE_SPEC), ("worker.toml", WORKER_SPEC)] {
        let path = dir.join(name);
        std::fs::write(&path, text.replace("{repos}", &repos))?;
        out.push(path);
    }
    Ok(out)
}

/// A second sample: a background worker (no HTTP health check).
pub const WORKER_SPEC: &str = r#"name = "worker"
image = "registry.example/demo/worker:{commit}"
port = 9090
replicas = 1
[repo]
url = "{repos}/hello.git"
ref = "main"
[env]
QUEUE = "jobs"
"#;

/// The demo runs in a container or on a laptop without systemd: its agents get small stand-ins for
/// `systemctl` and `journalctl` that answer like systemd does for the units the catalog names (every unit is
/// "active (running)"; a restart or reboot is recorded in `calls`, not done), so `service-status`,
/// `service-restart`, `reboot`, `logs` of a unit and `diagnostics` all work. Real servers use the real programs (the agent's defaults).
const DEMO_SYSTEMCTL: &str = r#"#!/bin/sh
# Outpost demo stand-in for systemctl (not systemd): every unit is active.
d=$(dirname "$0")
echo "$(date -u +%FT%TZ) systemctl $*" >> "$d/calls"
case "$1" in
  show) echo LoadState=loaded; echo ActiveState=active; echo SubState=running ;;
  is-active) echo active ;;
  restart|start|stop) echo "demo: $1 $2 (stand-in; nothing was $1ed)" ;;
  reboot) echo "demo: reboot (stand-in; this machine is not rebooted)" ;;
  *) echo "demo systemctl stand-in: $*" ;;
esac
exit 0
"#;

const DEMO_JOURNALCTL: &str = r#"#!/bin/sh
# Outpost demo stand-in for journalctl (not systemd): a few lines about the unit asked for.
unit=unknown
while [ $# -gt 0 ]; do
  case "$1" in -u|--unit) unit="$2"; shift ;; --unit=*) unit="${1#--unit=}" ;; esac
  shift
done
now=$(date -u +%FT%TZ)
echo "$now demo[$$]: $unit: started (demo stand-in for journalctl)"
echo "$now demo[$$]: $unit: healthy"
"#;

fn write_stand_ins(root: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("bin");
    std::fs::create_dir_all(&dir)?;
    for (name, body) in [("systemctl", DEMO_SYSTEMCTL), ("journalctl", DEMO_JOURNALCTL)] {
        let path = dir.join(name);
        std::fs::write(&path, body)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(dir)
}

/// `dir/hello.git`: a bare repository with two commits on main, tagged v1 and v2 (made with the git CLI).
/// Returns their commits.
fn sample_repository(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    std::fs::create_dir_all(dir)?;
    let work = dir.join("hello-work");
    let git = |args: &[&str], cwd: &std::path::Path| -> anyhow::Result<()> {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_AUTHOR_NAME", "Outpost demo")
            .env("GIT_AUTHOR_EMAIL", "demo@outpost.invalid")
            .env("GIT_COMMITTER_NAME", "Outpost demo")
            .env("GIT_COMMITTER_EMAIL", "demo@outpost.invalid")
            .output()
            .context("running git")?;
        anyhow::ensure!(
            out.status.success(),
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    git(&["init", "-q", "--bare", "-b", "main", "hello.git"], dir)?;
    git(&["init", "-q", "-b", "main", "hello-work"], dir)?;
    for (n, text) in [("v1", "hello, world"), ("v2", "hello again")] {
        std::fs::write(work.join("index.html"), format!("<p>{text}</p>\n"))?;
        git(&["add", "-A"], &work)?;
        git(&["commit", "-q", "-m", n], &work)?;
        git(&["tag", n], &work)?;
    }
    let bare = dir.join("hello.git");
    git(&["push", "-q", "--tags", bare.to_str().unwrap_or_default(), "main"], &work)?;
    let sha = |r: &str| -> anyhow::Result<String> {
        let out = std::process::Command::new("git").args(["rev-parse", r]).current_dir(&work).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    Ok((sha("v1")?, sha("v2")?))
}
