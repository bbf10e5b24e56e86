//! Ops files and the one-command demo.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn tool(name: &str) {
    assert!(
        Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().unwrap().status.success(),
        "{name} is not installed: the README's test command (scripts/test) installs it"
    );
}

#[test]
fn shell_scripts_are_shellcheck_clean() {
    tool("shellcheck");
    let r = repo();
    let out = Command::new("shellcheck")
        .args(["provision-scripts/install-agentd.sh", "scripts/test", "scripts/demo", ".ci/run"])
        .current_dir(&r)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn install_script_is_idempotent_and_keeps_edits_and_secrets_private() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let install = |extra: &[&str]| {
        let out = Command::new(repo().join("provision-scripts/install-agentd.sh"))
            .args(["--binary", harness::bin("agentd").to_str().unwrap(), "--root", root.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let token = "outpost-join-v1.eyJhIjoxfQ";
    let (code, out) = install(&["--token", token]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(mode(&root.join("usr/local/bin/agentd")), 0o755);
    assert_eq!(mode(&root.join("etc/outpost/join-token")), 0o600);
    assert_eq!(std::fs::read_to_string(root.join("etc/outpost/join-token")).unwrap().trim(), token);
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/outpost-agentd.service")).unwrap();
    assert_eq!(unit, std::fs::read_to_string(repo().join("systemd/outpost-agentd.service")).unwrap());

    let config = root.join("etc/outpost/agentd.toml");
    std::fs::write(&config, "report_interval_ms = 5000\n").unwrap();
    let (code, out) = install(&["--token", token]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing to change"), "second run changed something: {out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "report_interval_ms = 5000\n", "an edited config is kept");

    // Enrolled servers never get a token written again.
    std::fs::create_dir_all(root.join("var/lib/outpost-agentd")).unwrap();
    std::fs::write(root.join("var/lib/outpost-agentd/identity.json"), "{}").unwrap();
    std::fs::remove_file(root.join("etc/outpost/join-token")).unwrap();
    let (code, out) = install(&["--token", token]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("already enrolled") && !root.join("etc/outpost/join-token").exists(), "{out}");

    let (code, out) = install(&["--token", "not-a-token"]);
    assert_eq!(code, Some(2));
    assert!(out.contains("must start with outpost-join-v1."), "{out}");
}

/// Polls a tmux pane (the only window into a full-screen program) until `want` shows.
pub fn wait_for_pane(socket: &str, want: &str) -> String {
    wait_for_pane_where(socket, want, |screen| screen.contains(want))
}

/// Polls a tmux pane until `done` holds for one capture (a frame may be captured half drawn).
pub fn wait_for_pane_where(socket: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let out = Command::new("tmux").args(["-L", socket, "capture-pane", "-p", "-t", "demo"]).output().unwrap();
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        if done(&screen) {
            return screen;
        }
        assert!(Instant::now() < deadline, "never saw {what}; screen:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// agentd processes whose command line is under `dir` (the demo's TMPDIR in this test).
fn demo_processes(dir: &Path) -> Vec<String> {
    let out = Command::new("pgrep").args(["-af", "agentd"]).output().unwrap();
    let dir = dir.to_string_lossy();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(dir.as_ref())).map(String::from).collect()
}

/// Kills the test's tmux server however the test ends.
pub struct Tmux(pub String);

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.0, "kill-server"]).output();
    }
}

#[test]
fn demo_runs_a_live_fleet_and_leaves_nothing_behind() {
    tool("tmux");
    harness::bin("agentd");
    let socket = format!("outpost-test-{}", std::process::id());
    let _tmux = Tmux(socket.clone());
    let tmp = tempfile::tempdir().unwrap();
    let cmd = format!(
        "TMPDIR={} {} --agents 3 --report-interval-ms 300",
        tmp.path().display(),
        harness::bin("outpost-demo").display()
    );
    let ok = Command::new("tmux")
        .args(["-L", &socket, "new-session", "-d", "-s", "demo", "-x", "160", "-y", "30", &cmd])
        .status()
        .unwrap();
    assert!(ok.success());
    // Three agents started by hand, and one server the demo provisions through its stand-in cloud.
    let screen = wait_for_pane(&socket, "4 servers  ● 4 connected");
    for name in ["demo-01", "demo-02", "demo-03", "wayne"] {
        assert!(screen.contains(name), "{screen}");
    }
    assert!(screen.contains("● connected") && screen.contains("demo-admin (admin)"), "{screen}");
    assert_eq!(demo_processes(tmp.path()).len(), 4, "four real agentd processes");
    Command::new("tmux").args(["-L", &socket, "send-keys", "-t", "demo", "q"]).status().unwrap();
    // The session ends when outpost exits.
    let deadline = Instant::now() + harness::WAIT;
    while Command::new("tmux").args(["-L", &socket, "has-session", "-t", "demo"]).output().unwrap().status.success() {
        assert!(Instant::now() < deadline, "outpost-demo did not exit after q");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(demo_processes(tmp.path()), Vec::<String>::new(), "agents left behind");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "the demo directory was not removed: {leftovers:?}");
}

/// The README's "Running it for real" block, every line in order, as written: only the paths move into a
/// temporary directory (config files, `~`), and the token printed by `hubd token create` replaces the
/// placeholder. Long-running lines (`hubd`, `agentd`) are started and left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_commands_work_as_written() {
    use tokio::io::AsyncBufReadExt;
    harness::init();
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let block = readme.split("## Running it for real").nth(1).unwrap();
    let block = block.split("```sh").nth(1).unwrap().split("```").next().unwrap();
    let commands: Vec<String> =
        block.lines().map(|l| l.split(" # ").next().unwrap().trim().to_string()).filter(|l| !l.is_empty()).collect();
    assert!(commands.len() >= 7, "{commands:?}");

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = harness::free_port();
    let hub_config = root.join("hubd.toml");
    std::fs::write(
        &hub_config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}/hub\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            root.display()
        ),
    )
    .unwrap();
    let systemctl = harness::fake_systemctl(&root.join("bin"));
    let agent_config = root.join("agentd.toml");
    std::fs::write(
        &agent_config,
        format!(
            "data_dir = \"{0}/agent\"\ntoken_file = \"{0}/join-token\"\nsystemctl = \"{1}\"\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n",
            root.display(),
            systemctl.display()
        ),
    )
    .unwrap();
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let bins = harness::bin("hubd").parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
    let shell = |line: &str| {
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c")
            .arg(
                line.replace("/etc/outpost/hubd.toml", hub_config.to_str().unwrap())
                    .replace("/etc/outpost/agentd.toml", agent_config.to_str().unwrap()),
            )
            .env("PATH", &path)
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("OUTPOST_BUNDLE")
            .env("OUTPOST_HUBD_CONFIG", &hub_config)
            .env("OUTPOST_AGENTD_CONFIG", &agent_config)
            .kill_on_drop(true);
        c
    };
    let mut token = String::new();
    let mut daemons = Vec::new();
    for line in &commands {
        let line = line.replace("'outpost-join-v1.…'", &format!("'{token}'"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let daemon = words.len() == 3 && words[1] == "--config" && ["hubd", "agentd"].contains(&words[0]);
        if daemon {
            let mut child =
                // `exec`: the shell becomes the daemon, so stopping the child stops the daemon itself.
                shell(&format!("exec {line}"))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
            if words[0] == "hubd" {
                let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
                let first =
                    tokio::time::timeout(harness::WAIT, lines.next_line()).await.unwrap().unwrap().unwrap_or_default();
                assert!(first.starts_with("READY "), "{line}: {first}");
            }
            daemons.push(child);
            continue;
        }
        if words.first() == Some(&"outpost") && words.get(1) == Some(&"run") {
            // The agent started two lines up must be connected before an action can reach it.
            let bundle = outpost_common::bundle::Bundle::load(&home.join(".config/outpost/bundle")).unwrap();
            let mut client = outpost_proto::v1::operator_client::OperatorClient::new(bundle.channel().unwrap());
            harness::watch_until(&mut client, "web-1 connected", |f| {
                harness::is(f, "web-1", outpost_proto::v1::Liveness::Connected)
            })
            .await;
        }
        let out = shell(&line).output().await.unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "README line failed: {line}\nstdout: {stdout}\nstderr: {stderr}");
        if words.starts_with(&["hubd", "token", "create"]) {
            token = stdout.trim().to_string();
            assert!(token.starts_with("outpost-join-v1."), "{stdout}");
        }
    }
    assert!(
        std::fs::read_to_string(root.join("bin/calls")).unwrap().contains("show k3s"),
        "service-status ran systemctl"
    );
    drop(daemons);
}

/// The demo's first hour: every action of the catalog works on a demo agent (stand-ins for systemctl and
/// journalctl, the agent's own log file offered to `logs` and used by `diagnostics`), and the agent's log
/// file has no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalog_action_works_in_the_demo() {
    use outpost_proto::v1::{Liveness, Outcome};
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let args = demo::DemoArgs { agents: 1, report_interval_ms: 500 };
    let fleet = demo::DemoFleet::start(&args, &harness::bin("agentd"), tmp.path()).await.unwrap();
    let mut client = outpost_proto::v1::operator_client::OperatorClient::new(fleet.bundle.channel().unwrap());
    let f = harness::watch_until(&mut client, "demo-01 connected", |f| {
        harness::is(f, "demo-01", Liveness::Connected) && f["demo-01"].log_files.len() == 1
    })
    .await;
    let log_file = f["demo-01"].log_files[0].clone();
    assert!(log_file.ends_with("demo-01.log"), "the agent announces its log file: {log_file}");
    let source = format!("file:{log_file}");
    let repos = fleet.repos.clone().expect("the demo made its sample repository (git is installed by scripts/test)");
    let spec = demo::SAMPLE_SPEC.replace("{repos}", &repos.display().to_string());
    // (action, arguments, a piece of the expected output)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("service-status", vec![("unit", "k3s")], ""),
        ("service-restart", vec![("unit", "outpost-agentd")], ""),
        ("logs", vec![("source", "k3s")], "demo stand-in for journalctl"),
        ("logs", vec![("source", source.as_str())], "connected to hub"),
        ("diagnostics", vec![], "connected to hub"),
        ("rotate-cert", vec![], ""),
        ("exec", vec![("argv", "[\"echo\",\"hello\"]")], "hello"),
        ("reboot", vec![], ""),
        // The app actions, on the demo's stand-in Kubernetes API and its sample repository.
        ("app-apply", vec![("spec", spec.as_str())], ""),
        ("repo-sync", vec![("app", "hello")], ""),
        ("app-deploy", vec![("app", "hello"), ("ref", "v1")], "fetched v1"),
        ("app-deploy", vec![("app", "hello")], "fetched main"),
        ("app-rollback", vec![("app", "hello")], "rolling back to hello-1"),
        ("app-restart", vec![("app", "hello")], "watching the rollout"),
        ("app-scale", vec![("app", "hello"), ("replicas", "1")], "watching the rollout"),
        ("app-logs", vec![("app", "hello")], "listening on :8080"),
        ("k3s-status", vec![], "node demo-node: Ready"),
        ("instance-export", vec![], "\"format\":\"outpost-instance-export/1\""),
        ("app-remove", vec![("app", "hello")], ""),
        // The version it runs: nothing to download (the demo pins no release key; a rollout is in updates.rs).
        ("agent-update", vec![("version", env!("CARGO_PKG_VERSION"))], ""),
    ];
    assert_eq!(
        cases.iter().map(|c| c.0).collect::<std::collections::BTreeSet<_>>().len(),
        outpost_common::actions::CATALOG.len(),
        "every catalog action is tried"
    );
    for (action, args, expect) in cases {
        let mut req = harness::action(action, &["demo-01"], &args);
        let spec = outpost_common::actions::lookup(action).unwrap();
        if spec.destructive {
            req.confirm = "demo-01".into();
        }
        let run = harness::run_job(&mut client, req).await;
        let r = run.result("demo-01");
        assert_eq!(r.outcome, Outcome::Succeeded as i32, "{action} {args:?}: {r:?}\n{:?}", run.output);
        let out = run.output.get("demo-01").cloned().unwrap_or_default();
        assert!(out.contains(expect), "{action} {args:?} output lacks {expect:?}: {out}");
    }
    let calls = std::fs::read_to_string(tmp.path().join("bin/calls")).unwrap();
    assert!(calls.contains("restart outpost-agentd"), "{calls}");
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");
    fleet.stop().await.unwrap();
}

/// Times people read, a closed pipe, a hub that is down: the command line says what a person needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_speaks_plainly() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = harness::HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let agent = harness::AgentProc::start(tmp.path(), "cli-1", &hub.token("cli-1").await, "");
    let mut ops = hub.client(outpost_common::Role::Viewer);
    harness::watch_until(&mut ops, "reporting", |f| f.get("cli-1").is_some_and(|s| s.reports_received > 1)).await;
    let bundle = tmp.path().join("bundle");
    hub.bundle("pat", outpost_common::Role::Viewer).write(&bundle).unwrap();
    let outpost = |args: &[&str]| {
        let out = Command::new(harness::bin("outpost")).arg("--bundle").arg(&bundle).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // UTC times and "in 23 h", never epoch numbers.
    let (code, out, err) = outpost(&["server", "cli-1", "--history", "2"]);
    assert_eq!(code, Some(0), "{err}");
    let cert = out.lines().find(|l| l.starts_with("agent ")).unwrap();
    assert!(cert.contains(" UTC (in 23 h)") || cert.contains(" UTC (in 24 h)"), "{cert}");
    assert!(out.lines().filter(|l| l.contains(" UTC cpu ")).count() == 2, "history in UTC: {out}");
    // A reader that goes away is not an error.
    let script = format!(
        "set -o pipefail; {} --bundle {} servers --output json 2>{}/err | (exec 0<&-; sleep 1)",
        harness::bin("outpost").display(),
        bundle.display(),
        tmp.path().display()
    );
    let status = Command::new("bash").args(["-c", &script]).status().unwrap();
    let err = std::fs::read_to_string(tmp.path().join("err")).unwrap();
    assert!(status.success() && err.is_empty(), "{status:?}: {err}");
    // The hub is down: say so, and what to check.
    hub.kill9().await;
    let (code, _, err) = outpost(&["servers"]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("hub not reachable at {}", hub.url)) && err.contains("is hubd running?"), "{err}");
    let log = harness::wait_for_file(&agent.dir.join("agentd.log"), "hub not reachable").await;
    assert!(!log.contains("hub refused the stream"), "a hub that is down refused nothing: {log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file");
}

/// The demo's cloud: the server it provisions at start goes through the queue and comes online, and
/// `:provision` (the same RPC) makes another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_provisions_servers_through_its_stand_in_cloud() {
    use outpost_proto::v1 as pb;
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let args = demo::DemoArgs { agents: 1, report_interval_ms: 500 };
    let fleet = demo::DemoFleet::start(&args, &harness::bin("agentd"), tmp.path()).await.unwrap();
    let mut client = pb::operator_client::OperatorClient::new(fleet.bundle.channel().unwrap());
    let req = pb::ProvisionRequest { customer: "stark".into(), plan: "team".into(), ..Default::default() };
    client.provision(req).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let jobs = client.list_lifecycle_jobs(pb::ListLifecycleJobsRequest::default()).await.unwrap().into_inner().jobs;
        let states: Vec<(String, String)> = jobs.iter().map(|j| (j.target.clone(), j.state.clone())).collect();
        if states.iter().all(|(_, s)| s == "succeeded") && states.len() == 2 {
            break;
        }
        assert!(!states.iter().any(|(_, s)| s == "failed"), "{jobs:#?}");
        assert!(tokio::time::Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let f = harness::watch_until(&mut client, "both provisioned servers online", |f| {
        ["wayne", "stark"].iter().all(|n| harness::is(f, n, pb::Liveness::Connected))
    })
    .await;
    assert_eq!(f["stark"].plan, "team");
    assert_eq!(fleet.cloud.servers().len(), 2);
    fleet.stop().await.unwrap();
}

/// The demo as a new user meets it: within 60 s of its start every screen has something to show (apps
/// deployed, one rolled back, one failing with its alert firing, a week of usage for a customer on two
/// plans, the provision job, the audit log, charts with their axes), and an app deployed from the console
/// by keys alone (its spec offered as `@FILE` in the form) reaches Available.
#[test]
fn the_demo_is_a_living_fleet_and_an_app_deploys_from_the_console_by_keys() {
    tool("tmux");
    tool("git");
    harness::bin("agentd");
    let socket = format!("outpost-living-{}", std::process::id());
    let _tmux = Tmux(socket.clone());
    let tmp = tempfile::tempdir().unwrap();
    let cmd =
        format!("TMPDIR={} {} --report-interval-ms 500", tmp.path().display(), harness::bin("outpost-demo").display());
    let started = Instant::now();
    let ok = Command::new("tmux")
        .args(["-L", &socket, "new-session", "-d", "-s", "demo", "-x", "170", "-y", "45", &cmd])
        .status()
        .unwrap();
    assert!(ok.success());
    let keys = |k: &[&str]| {
        for key in k {
            Command::new("tmux").args(["-L", &socket, "send-keys", "-t", "demo", key]).status().unwrap();
        }
    };
    let command = |c: &str| keys(&[":", c, "Enter"]);
    // The fleet: six servers and the one it provisions, K3s one truth (the cluster answers Ready).
    let fleet = wait_for_pane(&socket, "7 servers  ● 7 connected");
    assert!(fleet.contains("demo-06") && fleet.contains("wayne"), "{fleet}");
    assert!(!fleet.contains("absent"), "K3s answers on every server: {fleet}");
    assert!(fleet.contains("outpost --bundle") && fleet.contains("/operator fleet"), "how to reach it: {fleet}");
    // And the command line reaches it with the bundle it wrote.
    let demo_dir = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("outpost-demo-"));
    let bundle = demo_dir.expect("the demo's directory").path().join("operator");
    let out = Command::new(harness::bin("outpost"))
        .arg("--bundle")
        .arg(&bundle)
        .args(["servers", "--output", "json"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listed.contains("demo-06"), "{listed}{}", String::from_utf8_lossy(&out.stderr));

    command("apps");
    let apps = wait_for_pane_where(&socket, "four apps, one failing, one rolled back", |s| {
        s.contains("4 on 4 server(s)")
            && s.contains("worker")
            && s.contains("failed")
            && s.contains("hello-2: CrashLoopBackOff")
    });
    assert!(apps.matches("available").count() >= 3, "{apps}");

    command("alerts");
    let alerts = wait_for_pane_where(&socket, "the failing app's alert firing", |s| {
        s.contains("firing") && s.contains("app_failing") && s.contains("demo-04")
    });
    assert!(alerts.contains("⚠ 1 alerts") || alerts.contains("alerts · 1 firing"), "{alerts}");

    command("usage acme");
    // Today's day of the month is on the charts' time axis (the week before it may be last month's).
    let today = outpost_common::when::rfc3339(outpost_common::now_ms())[8..10].to_string();
    wait_for_pane_where(&socket, "a week of acme's usage on two plans, charted", |s| {
        s.contains("plan starter + team")
            && s.contains("starter cpu")
            && s.contains("team memory")
            && s.contains("CPU cores a day, 0–")
            && s.contains("memory peak a day, 0–")
            && s.contains(&format!(" {today} "))
    });

    command("lifecycle");
    wait_for_pane_where(&socket, "the demo's provision job", |s| s.contains("provision") && s.contains("wayne"));
    command("audit");
    wait_for_pane_where(&socket, "the audit log", |s| s.contains("app-deploy") && s.contains("demo-admin"));

    // A server's screen: the cluster's word on K3s, charts with their scale and time axis.
    command("fleet");
    keys(&["g", "j", "j", "Enter"]);
    let server = wait_for_pane_where(&socket, "demo-03's screen with charts", |s| {
        s.contains("server      demo-03") && s.contains("0–100%") && s.contains(" now ")
    });
    assert!(server.contains("k3s         active"), "{server}");
    assert!(started.elapsed() < Duration::from_secs(60), "every screen had content only after {:?}", started.elapsed());

    // An app by keys alone on demo-05: app-apply with the offered spec file, then app-deploy.
    let position = |name: &str| outpost_common::actions::CATALOG.iter().position(|a| a.name == name).unwrap();
    keys(&["Escape"]);
    command("fleet");
    keys(&["g", "j", "j", "j", "j"]);
    wait_for_pane_where(&socket, "demo-05 selected", |s| s.lines().any(|l| l.starts_with("▶ demo-05")));
    keys(&["a"]);
    wait_for_pane(&socket, "actions on demo-05");
    for _ in 0..position("app-apply") {
        keys(&["j"]);
    }
    keys(&["Enter"]);
    wait_for_pane_where(&socket, "the spec file offered", |s| s.contains("specs/hello.toml"));
    keys(&["Enter"]);
    wait_for_pane(&socket, "hello: spec stored in project hooli");
    keys(&["Escape"]);
    keys(&["a"]);
    wait_for_pane(&socket, "actions on demo-05");
    for _ in 0..position("app-deploy") {
        keys(&["j"]);
    }
    // The app's name typed (the form offers it once the agent has reported the stored app).
    keys(&["Enter", "C-u"]);
    keys(&["hello", "Enter"]);
    wait_for_pane(&socket, "hello: hello-1 is live");
    keys(&["Escape"]);
    command("apps");
    wait_for_pane_where(&socket, "hello available on demo-05", |s| {
        s.lines().any(|l| l.contains("demo-05") && l.contains("hello") && l.contains("available"))
    });
    keys(&["q"]);
    let deadline = Instant::now() + harness::WAIT;
    while Command::new("tmux").args(["-L", &socket, "has-session", "-t", "demo"]).output().unwrap().status.success() {
        assert!(Instant::now() < deadline, "outpost-demo did not exit after q");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(demo_processes(tmp.path()), Vec::<String>::new(), "agents left behind");
}

/// The README's smallest configs parse and validate as written.
#[test]
fn the_readme_minimal_configs_are_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let block = |first_line: &str| -> String {
        let start = readme.find(&format!("```toml\n{first_line}")).unwrap_or_else(|| panic!("no block {first_line}"));
        readme[start + 8..].split("```").next().unwrap().to_string()
    };
    let hub = hub::HubConfig::from_toml(&block("# /etc/outpost/hubd.toml")).unwrap();
    hub.validate().unwrap();
    assert_eq!(hub.advertise.as_deref(), Some("https://hub.example.com:7443"));
    let agent = agentd::config::AgentConfig::from_toml(&block("# /etc/outpost/agentd.toml")).unwrap();
    agent.validate().unwrap();
    assert_eq!(agent.token_file, Path::new("/etc/outpost/join-token"));
}

/// A busy admin port says which setting to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_admin_port_names_the_setting_to_change() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = hub::HubConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: tmp.path().join("hub"),
        ..hub::HubConfig::default()
    };
    config.admin.listen = busy.local_addr().unwrap();
    let e =
        hub::start(config, tokio_util::sync::CancellationToken::new()).await.err().expect("a busy port").to_string();
    assert!(e.contains("admin endpoint") && e.contains("[admin] listen") && e.contains("enabled = false"), "{e}");
    assert!(!tmp.path().join("hub").exists(), "nothing created before the ports are bound");
}
