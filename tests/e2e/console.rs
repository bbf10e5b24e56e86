//! The real `outpost` console in tmux, against a real hub with real agents.

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{AgentProc, HubProc, is, watch_until};
use outpost_common::Role;
use outpost_proto::v1::Liveness;

use crate::ops::{Tmux, tool, wait_for_pane};

fn keys(socket: &str, keys: &[&str]) {
    let ok = Command::new("tmux").args(["-L", socket, "send-keys", "-t", "demo"]).args(keys).status().unwrap();
    assert!(ok.success());
}

fn table_rows(screen: &str) -> Vec<&str> {
    screen.lines().filter(|l| l.contains("● connected")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_open_back_quit_in_tmux() {
    tool("tmux");
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let mut agents = Vec::new();
    for n in ["web-1", "web-2", "db-1"] {
        agents.push(AgentProc::start(tmp.path(), n, &hub.token(n).await, ""));
    }
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "three agents reporting", |f| {
        ["web-1", "web-2", "db-1"].iter().all(|n| is(f, n, Liveness::Connected) && f[*n].reports_received > 0)
    })
    .await;
    let bundle = tmp.path().join("viewer");
    hub.bundle("vera", Role::Viewer).write(&bundle).unwrap();

    let socket = format!("outpost-console-{}", std::process::id());
    let _tmux = Tmux(socket.clone());
    let cmd = format!("NO_COLOR=1 {} --bundle {}", harness::bin("outpost").display(), bundle.display());
    let ok = Command::new("tmux")
        .args(["-L", &socket, "new-session", "-d", "-s", "demo", "-x", "100", "-y", "30", &cmd])
        .status()
        .unwrap();
    assert!(ok.success());
    let screen = wait_for_pane(&socket, "3 servers  ● 3 connected");
    assert!(screen.contains("vera (viewer read-only)") && screen.contains("● live"), "{screen}");
    assert_eq!(table_rows(&screen).len(), 3, "{screen}");

    // Filter by text: only db-1 stays.
    keys(&socket, &["/", "db", "Enter"]);
    let screen = wait_for_pane(&socket, "filter: db");
    let rows = table_rows(&screen);
    assert!(rows.len() == 1 && rows[0].contains("db-1"), "{screen}");
    assert!(screen.contains("1 of 3 servers"), "the header counts what the filter shows: {screen}");

    // Open it: the server view, with the viewer's (absent) actions.
    keys(&socket, &["Enter"]);
    // Waits for the last line of the identity box: tmux may capture a frame that is still being written.
    let screen = wait_for_pane(&socket, "none: read-only (viewer)");
    assert!(screen.contains("server      db-1"), "{screen}");
    assert!(screen.contains("k3s         absent"), "{screen}");

    // Back to the fleet (filter kept), then clear it.
    keys(&socket, &["Escape"]);
    let screen = wait_for_pane(&socket, "NAME");
    assert_eq!(table_rows(&screen).len(), 1, "{screen}");
    keys(&socket, &["Escape"]);
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let screen = wait_for_pane(&socket, "NAME");
        if table_rows(&screen).len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "filter not cleared:\n{screen}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The first hour's papercuts, in the real terminal.
    keys(&socket, &["/", "status:bogus"]);
    let screen = wait_for_pane(&socket, "filter: status:bogus (inva");
    assert!(screen.contains("0 of 3 servers"), "{screen}");
    keys(&socket, &["C-u", "Enter"]);
    wait_for_pane(&socket, "3 servers  ●");
    keys(&socket, &[":", "server w", "Tab"]);
    wait_for_pane(&socket, ":server web-");
    keys(&socket, &["1", "Enter"]);
    wait_for_pane(&socket, "server      web-1");
    keys(&socket, &[":", "alerts", "Enter"]);
    wait_for_pane(&socket, "nothing is firing");
    keys(&socket, &["Escape"]);
    wait_for_pane(&socket, "3 servers  ●");
    // `s` walks the columns as the screen shows them; `S` reverses only the current one.
    wait_for_pane(&socket, "NAME↑");
    keys(&socket, &["s"]);
    wait_for_pane(&socket, "STATUS↑");
    keys(&socket, &["S"]);
    wait_for_pane(&socket, "STATUS↓");
    keys(&socket, &["s"]);
    let screen = wait_for_pane(&socket, "CPU↑");
    assert!(!screen.contains('↓'), "S left a later column descending: {screen}");
    Command::new("tmux").args(["-L", &socket, "resize-window", "-t", "demo", "-x", "80", "-y", "24"]).status().unwrap();
    let screen = wait_for_pane(&socket, " q quit");
    assert!(screen.lines().last().is_some_and(|l| l.starts_with(" q quit")), "{screen}");

    keys(&socket, &["q"]);
    let deadline = Instant::now() + harness::WAIT;
    while Command::new("tmux").args(["-L", &socket, "has-session", "-t", "demo"]).output().unwrap().status.success() {
        assert!(Instant::now() < deadline, "outpost did not exit after q");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_survives_the_hub_going_away_and_resumes() {
    tool("tmux");
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let _agent = AgentProc::start(tmp.path(), "web-1", &hub.token("web-1").await, "");
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "agent connected", |f| is(f, "web-1", Liveness::Connected)).await;
    drop(ops);
    let bundle = tmp.path().join("support");
    hub.bundle("sam", Role::Support).write(&bundle).unwrap();
    let socket = format!("outpost-resume-{}", std::process::id());
    let _tmux = Tmux(socket.clone());
    let cmd = format!("{} --bundle {}", harness::bin("outpost").display(), bundle.display());
    assert!(
        Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "demo", "-x", "100", "-y", "30", &cmd])
            .status()
            .unwrap()
            .success()
    );
    wait_for_pane(&socket, "1 servers  ● 1 connected");

    hub.kill9().await;
    let screen = wait_for_pane(&socket, "✖ offline");
    assert!(screen.contains("last known state") && screen.contains("web-1"), "the last state stays:\n{screen}");

    hub.restart().await;
    let screen = wait_for_pane(&socket, "● live");
    assert!(screen.contains("web-1") && screen.contains("sam (support)"), "{screen}");
    keys(&socket, &["q"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripting_subcommands() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let _agent = AgentProc::start(tmp.path(), "web-1", &hub.token("web-1").await, "");
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "agent reporting", |f| {
        is(f, "web-1", Liveness::Connected) && f["web-1"].reports_received >= 2
    })
    .await;
    let bundle = tmp.path().join("viewer");
    hub.bundle("vera", Role::Viewer).write(&bundle).unwrap();
    let outpost = |args: &[&str]| {
        let out = Command::new(harness::bin("outpost")).arg("--bundle").arg(&bundle).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let list: serde_json::Value = serde_json::from_str(&outpost(&["servers", "--output", "json"])).unwrap();
    assert_eq!(list[0]["name"], "web-1");
    assert_eq!(list[0]["status"], "connected");
    assert_eq!(list[0]["customer"], "acme");
    let table = outpost(&["servers"]);
    assert!(table.starts_with("NAME") && table.contains("web-1") && table.contains("connected"), "{table}");
    let one: serde_json::Value =
        serde_json::from_str(&outpost(&["server", "web-1", "--output", "json", "--history", "2"])).unwrap();
    assert_eq!(one["history"].as_array().unwrap().len(), 2);
    assert!(one["health"]["mem_total_bytes"].as_u64().unwrap() > 0);
    assert!(outpost(&["completions", "bash"]).contains("outpost"));

    // watch: one JSON line per event, the snapshot first.
    let mut child = tokio::process::Command::new(harness::bin("outpost"))
        .arg("--bundle")
        .arg(&bundle)
        .arg("watch")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let first: serde_json::Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!((first["type"].as_str(), first["last"].as_bool()), (Some("snapshot"), Some(true)));
    let next: serde_json::Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!((next["type"].as_str(), next["server"]["name"].as_str()), (Some("upsert"), Some("web-1")));

    // Bad input: an unknown server and a missing bundle say what to do.
    let out =
        Command::new(harness::bin("outpost")).arg("--bundle").arg(&bundle).args(["server", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no server named \"nope\""));
    let out = Command::new(harness::bin("outpost")).args(["--bundle", "/nonexistent", "servers"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hubd operator issue"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A hub and one connected agent `web-1` with the stand-in systemctl; a support bundle for sam.
async fn hub_and_web_1(tmp: &std::path::Path, extra: &str) -> (HubProc, AgentProc, std::path::PathBuf) {
    let hub = HubProc::start(&tmp.join("hub"), harness::free_port(), "").await;
    let systemctl = harness::fake_systemctl(&tmp.join("web-1"));
    let extra = format!("systemctl = \"{}\"\n{extra}", systemctl.display());
    let agent = AgentProc::start(tmp, "web-1", &hub.token("web-1").await, &extra);
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "agent connected", |f| is(f, "web-1", Liveness::Connected)).await;
    let bundle = tmp.join("support");
    hub.bundle("sam", Role::Support).write(&bundle).unwrap();
    (hub, agent, bundle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_from_the_console_with_confirmation_streams_its_output() {
    tool("tmux");
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let (_hub, _agent, bundle) = hub_and_web_1(tmp.path(), "").await;
    let socket = format!("outpost-action-{}", std::process::id());
    let _tmux = Tmux(socket.clone());
    let cmd = format!("NO_COLOR=1 {} --bundle {}", harness::bin("outpost").display(), bundle.display());
    assert!(
        Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "demo", "-x", "120", "-y", "32", &cmd])
            .status()
            .unwrap()
            .success()
    );
    wait_for_pane(&socket, "1 servers  ● 1 connected");
    keys(&socket, &["Enter"]);
    wait_for_pane(&socket, "┌ identity");
    keys(&socket, &["a"]);
    let screen = wait_for_pane(&socket, "actions on web-1");
    assert!(
        screen.contains("! service-restart") && !screen.contains("reboot"),
        "support sees no admin action:\n{screen}"
    );
    keys(&socket, &["j", "Enter"]);
    // The form offers the allowed units (k3s first); ctrl-u clears it, and typing works as before.
    // The whole form, not a half-drawn frame.
    crate::ops::wait_for_pane_where(&socket, "the form with its units", |screen| {
        screen.contains("service-restart on web-1 · tab next")
            && screen.contains("unit        k3s")
            && screen.contains("ctrl-n/p: k3s ·")
    });
    keys(&socket, &["C-u", "k3s", "Enter"]);
    wait_for_pane(&socket, "type web-1 to confirm");
    keys(&socket, &["web-2", "Enter"]);
    wait_for_pane(&socket, "type web-1 exactly to confirm");
    assert!(!tmp.path().join("web-1/calls").exists(), "ran without confirmation");
    keys(&socket, &["BSpace", "1", "Enter"]);
    let screen = wait_for_pane(&socket, "✔ finished");
    assert!(screen.contains("web-1 | ActiveState=active"), "output streamed into the pane:\n{screen}");
    assert!(screen.contains("succeeded   k3s: active (running)"), "{screen}");
    let calls = std::fs::read_to_string(tmp.path().join("web-1/calls")).unwrap();
    assert_eq!(calls.lines().filter(|l| *l == "restart k3s").count(), 1, "{calls}");

    // The audit view shows who did it.
    keys(&socket, &[":", "audit", "Enter"]);
    let screen = wait_for_pane(&socket, " requested ");
    assert!(screen.contains("sam") && screen.contains("requested") && screen.contains("result"), "{screen}");
    keys(&socket, &["q"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_audit_from_the_command_line() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _agent, bundle) = hub_and_web_1(tmp.path(), "exec_enabled = true\n").await;
    let outpost = |args: &[&str]| {
        let out = Command::new(harness::bin("outpost")).arg("--bundle").arg(&bundle).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) =
        outpost(&["run", "service-status", "--on", "web-1", "--arg", "unit=k3s", "--output", "json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let done = events.iter().find(|e| e["type"] == "target" && e["state"] == "done").unwrap();
    assert_eq!(done["result"]["outcome"], "succeeded");
    assert_eq!(done["result"]["message"], "k3s: active (running)");
    assert!(events.last().unwrap()["finished"].as_bool().unwrap());

    // Destructive without a terminal: nothing runs until --yes names the target.
    let (code, _, err) = outpost(&["run", "service-restart", "--on", "web-1", "--arg", "unit=k3s"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("service-restart is destructive: pass --yes web-1"), "{err}");
    let (code, out, err) = outpost(&["run", "service-restart", "--on", "web-1", "--arg", "unit=k3s", "--yes", "web-1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("web-1 = succeeded: k3s: active (running)"), "{out}");
    // A failing target exits 1; a bad selector and an unknown action are refused before anything runs.
    let (code, out, _) = outpost(&["run", "service-status", "--on", "web-1", "--arg", "unit=nginx"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("web-1 = refused: unit \"nginx\" is not allow-listed"), "{out}");
    let (code, _, err) = outpost(&["run", "service-status", "--on", "nope-1", "--arg", "unit=k3s"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("selector \"nope-1\" matches no server"), "{err}");
    let (code, _, err) = outpost(&["run", "frobnicate", "--on", "web-1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown action \"frobnicate\""), "{err}");

    let (code, out, err) = outpost(&["audit", "--server", "web-1", "--output", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let records: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    // Newest first: three runs (a result after each request), then the join token an admin made for it.
    assert_eq!(kinds, ["result", "requested", "result", "requested", "result", "requested", "token"], "{out}");
    assert!(records[..6].iter().all(|r| r["operator"] == "sam"));
    assert_eq!(records[1]["args"]["unit"], "nginx");

    // Ctrl-C cancels the job at the hub; the command stops long before its 30 s.
    let admin = tmp.path().join("admin");
    hub.bundle("ada", Role::Admin).write(&admin).unwrap();
    let mut child = tokio::process::Command::new(harness::bin("outpost"))
        .arg("--bundle")
        .arg(&admin)
        .args(["run", "exec", "--on", "web-1", "--yes", "web-1", "--", "sleep", "30"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    use tokio::io::AsyncBufReadExt;
    while let Some(l) = err.next_line().await.unwrap() {
        if l.starts_with("job ") {
            break;
        }
    }
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let mut rest = String::new();
    while let Some(l) = err.next_line().await.unwrap() {
        rest.push_str(&l);
        rest.push('\n');
    }
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{rest}");
    assert!(rest.contains("cancelling job"), "{rest}");
    assert!(stdout.contains("web-1 = cancelled"), "{stdout}{rest}");
    assert!(started.elapsed() < Duration::from_secs(20), "cancel took {:?}", started.elapsed());
}
