//! Remote actions end to end: real hubd, real agentd processes, real processes run by the agent.

use std::time::{Duration, Instant};

use harness::{AgentProc, HubProc, action, fake_systemctl, follow_job, is, run_job, watch_until};
use outpost_common::Role;
use outpost_proto::v1::job_event::Event;
use outpost_proto::v1::{CancelJobRequest, Liveness, Outcome, QueryAuditRequest, TargetState};
use tonic::Code;

fn outcome(r: &outpost_proto::v1::CommandResult) -> Outcome {
    Outcome::try_from(r.outcome).unwrap()
}

/// The process ended (no /proc entry, or a zombie nobody reaped yet).
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(") ").next().is_some_and(|rest| rest.starts_with('Z')),
    }
}

fn exec_args(argv: &[&str]) -> String {
    serde_json::to_string(argv).unwrap()
}

/// One hub, `ops-1` (exec enabled, a log file allowed) and `ops-2` (defaults), both with the fake systemctl.
async fn two_agents(tmp: &std::path::Path) -> (HubProc, Vec<AgentProc>) {
    let hub = HubProc::start(&tmp.join("hub"), harness::free_port(), "").await;
    let mut agents = Vec::new();
    for (name, extra) in [("ops-1", "exec_enabled = true\n"), ("ops-2", "")] {
        let dir = tmp.join(name);
        let systemctl = fake_systemctl(&dir);
        let log = dir.join("app.log");
        std::fs::write(&log, "first\nsecond\nthird\n").unwrap();
        let extra = format!("{extra}systemctl = \"{}\"\nlog_files = [\"{}\"]\n", systemctl.display(), log.display());
        agents.push(AgentProc::start(tmp, name, &hub.token(name).await, &extra));
    }
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "two agents connected", |f| {
        is(f, "ops-1", Liveness::Connected) && is(f, "ops-2", Liveness::Connected)
    })
    .await;
    (hub, agents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_back_cancel_and_deadline_work_and_refusals_are_audited() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _agents) = two_agents(tmp.path()).await;
    let mut admin = hub.client(Role::Admin);
    let mut support = hub.client(Role::Support);

    // Output streams back while the command runs: "one" arrives before "two" is even printed.
    let script = "echo one; sleep 0.5; echo two";
    let mut req = action("exec", &["ops-1"], &[("argv", &exec_args(&["sh", "-c", script]))]);
    req.confirm = "ops-1".into();
    let mut stream = admin.run_action(req).await.unwrap().into_inner();
    let mut chunks = Vec::new();
    let run = follow_job(&mut stream, |e| {
        if let Event::Target(t) = e
            && !t.output.is_empty()
        {
            chunks.push((t.output.clone(), t.result.is_some()));
        }
    })
    .await;
    let r = run.result("ops-1");
    assert_eq!((outcome(r), r.exit_code), (Outcome::Succeeded, 0), "{r:?}");
    assert_eq!(run.output["ops-1"], "one\ntwo\n");
    assert!(chunks.len() >= 2 && chunks[0].0 == "one\n", "output came as one block: {chunks:?}");

    // Typed actions with the agent's own checks.
    let run = run_job(&mut support, action("service-status", &["ops-1"], &[("unit", "k3s")])).await;
    assert_eq!(run.result("ops-1").message, "k3s: active (running)");
    let run = run_job(
        &mut support,
        action(
            "logs",
            &["ops-2"],
            &[("source", &format!("file:{}/ops-2/app.log", tmp.path().display())), ("lines", "2")],
        ),
    )
    .await;
    assert_eq!(run.output["ops-2"], "second\nthird\n");
    // rotate-cert: a new certificate over the live stream; the hub's record follows it.
    let run = run_job(&mut support, action("rotate-cert", &["ops-2"], &[])).await;
    let r = run.result("ops-2");
    let serial = r.message.strip_prefix("renewed: new certificate serial ").unwrap_or_else(|| panic!("{r:?}"));
    let list = support.list_servers(outpost_proto::v1::ListServersRequest {}).await.unwrap().into_inner().servers;
    assert_eq!(list.iter().find(|s| s.name == "ops-2").unwrap().cert_serial, serial);
    // Follow: lines appended while it runs stream back; the deadline ends the follow as a success.
    let log = tmp.path().join("ops-2/app.log");
    let source = format!("file:{}", log.display());
    let mut req = action("logs", &["ops-2"], &[("source", &source), ("lines", "1"), ("follow", "true")]);
    req.deadline_ms = outpost_common::now_ms() + 3000;
    let mut stream = support.run_action(req).await.unwrap().into_inner();
    let mut appended = false;
    let run = follow_job(&mut stream, |e| {
        if let Event::Target(t) = e
            && t.output.contains("third")
            && !appended
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            writeln!(f, "fourth").unwrap();
            appended = true;
        }
    })
    .await;
    assert_eq!(run.output["ops-2"], "third\nfourth\n");
    assert_eq!(run.result("ops-2").message, "followed until the deadline");
    let run = run_job(&mut support, action("service-status", &["ops-1"], &[("unit", "sshd")])).await;
    let r = run.result("ops-1");
    assert_eq!(outcome(r), Outcome::Refused);
    assert!(r.message.contains("unit \"sshd\" is not allow-listed on this agent"), "{}", r.message);
    let mut req = action("exec", &["ops-2"], &[("argv", &exec_args(&["true"]))]);
    req.confirm = "ops-2".into();
    let r = run_job(&mut admin, req).await.results["ops-2"].clone();
    assert_eq!(outcome(&r), Outcome::Refused);
    assert!(r.message.contains("exec is disabled on this agent; set exec_enabled = true"), "{}", r.message);

    // Cancel: a long command stops at once, its process group killed.
    let pidfile = tmp.path().join("sleep.pid");
    let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
    let mut req = action("exec", &["ops-1"], &[("argv", &exec_args(&["sh", "-c", &script]))]);
    req.confirm = "ops-1".into();
    let mut stream = admin.run_action(req).await.unwrap().into_inner();
    let mut job_id = String::new();
    let mut canceller = hub.client(Role::Support);
    let started = Instant::now();
    let (tx, mut running) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        follow_job(&mut stream, |e| match e {
            Event::Plan(p) => {
                let _ = tx.send(p.job_id.clone());
            }
            Event::Target(t) if t.state == TargetState::Running as i32 => {
                let _ = tx.send(String::new());
            }
            _ => {}
        })
        .await
    });
    while let Some(m) = running.recv().await {
        if m.is_empty() {
            break;
        }
        job_id = m;
    }
    // Cancelling needs the action's role: support may not stop an admin's exec; another admin may.
    let refused = canceller.cancel_job(CancelJobRequest { job_id: job_id.clone() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    hub.client(Role::Admin).cancel_job(CancelJobRequest { job_id }).await.unwrap();
    let run = follower.await.unwrap();
    let r = run.result("ops-1");
    assert_eq!(outcome(r), Outcome::Cancelled, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "cancel took {:?}", started.elapsed());
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(gone(pid.trim()), "sleep {pid} survived the cancel");

    // Deadline: the agent stops the command when it passes.
    let mut req = action("exec", &["ops-1"], &[("argv", &exec_args(&["sleep", "30"]))]);
    req.confirm = "ops-1".into();
    req.deadline_ms = outpost_common::now_ms() + 1500;
    let started = Instant::now();
    let run = run_job(&mut admin, req).await;
    assert_eq!(outcome(run.result("ops-1")), Outcome::TimedOut, "{:?}", run.result("ops-1"));
    assert!(started.elapsed() < Duration::from_secs(15), "deadline took {:?}", started.elapsed());

    // Refused before dispatch, each with a precise status, each audited as refused.
    let mut viewer = hub.client(Role::Viewer);
    let refusals: Vec<(Code, &str, Result<_, tonic::Status>)> = vec![
        (
            Code::InvalidArgument,
            "unknown action \"frobnicate\"",
            support.run_action(action("frobnicate", &["ops-1"], &[])).await,
        ),
        (
            Code::InvalidArgument,
            "is not a systemd unit name",
            support.run_action(action("service-status", &["ops-1"], &[("unit", "k3s;reboot")])).await,
        ),
        (
            Code::InvalidArgument,
            "at most 32768 are allowed",
            support.run_action(action("service-status", &["ops-1"], &[("unit", &"k".repeat(40_000))])).await,
        ),
        (
            Code::PermissionDenied,
            "has role viewer; service-status needs role support",
            viewer.run_action(action("service-status", &["ops-1"], &[("unit", "k3s")])).await,
        ),
        (
            Code::PermissionDenied,
            "has role support; reboot needs role admin",
            support.run_action(action("reboot", &["ops-1"], &[])).await,
        ),
        (
            Code::PermissionDenied,
            "has role support; exec needs role admin",
            support.run_action(action("exec", &["ops-1"], &[("argv", "[\"id\"]")])).await,
        ),
        (Code::InvalidArgument, "is in the past", {
            let mut r = action("diagnostics", &["ops-1"], &[]);
            r.deadline_ms = outpost_common::now_ms() - 1000;
            support.run_action(r).await
        }),
        (Code::InvalidArgument, "selector status invalid(99) is not one of pending", {
            let mut r = action("diagnostics", &["ops-1"], &[]);
            r.selector.as_mut().unwrap().status = vec![99];
            support.run_action(r).await
        }),
        (Code::NotFound, "matches no server", support.run_action(action("diagnostics", &["nope-1"], &[])).await),
        (Code::InvalidArgument, "the selector is empty", support.run_action(action("diagnostics", &[], &[])).await),
        (
            Code::FailedPrecondition,
            "service-restart is destructive: confirm with the server name (ops-1)",
            support.run_action(action("service-restart", &["ops-1"], &[("unit", "k3s")])).await,
        ),
    ];
    let n_refused = refusals.len();
    for (code, text, r) in refusals {
        let s = r.err().unwrap_or_else(|| panic!("{text}: accepted"));
        assert_eq!(s.code(), code, "{text}: {}", s.message());
        assert!(s.message().contains(text), "{text} not in {}", s.message());
    }
    // A forged job id cannot cancel anything, and is audited too.
    let s = support.cancel_job(CancelJobRequest { job_id: "0123456789abcdef".into() }).await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{}", s.message());

    let log =
        admin.query_audit(QueryAuditRequest { limit: 1000, ..Default::default() }).await.unwrap().into_inner().records;
    let refused: Vec<_> = log.iter().filter(|r| r.kind == "refused").collect();
    // + the forged job id + support's refused cancel of the admin's exec.
    assert_eq!(refused.len(), n_refused + 2, "{refused:#?}");
    assert!(refused.iter().any(|r| r.operator == "test-viewer" && r.role == "viewer" && r.action == "service-status"));
    assert!(refused.iter().all(|r| r.outcome == Outcome::Refused as i32 && !r.message.is_empty()));
    // Accepted requests were written before their results, and every result is there.
    let requested = log.iter().filter(|r| r.kind == "requested").count();
    let results = log.iter().filter(|r| r.kind == "result").count();
    assert_eq!((requested, results), (9, 9), "{log:#?}");
    for r in log.iter().filter(|r| r.kind == "result") {
        let req = log.iter().find(|q| q.kind == "requested" && q.job_id == r.job_id).unwrap();
        assert!(req.id < r.id, "result {} audited before its request {}", r.id, req.id);
    }
    let by_viewer = support
        .query_audit(QueryAuditRequest { operator: "test-viewer".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(by_viewer.len(), 1);
    let s = viewer.query_audit(QueryAuditRequest::default()).await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
}

/// Flow control end to end: a caller that stops reading stops the command's process (its pipe fills once
/// the agent has no credit), and every byte still arrives, in order, when it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_caller_slows_the_command_down_and_loses_no_output() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _agents) = two_agents(tmp.path()).await;
    let mut admin = hub.client(Role::Admin);
    // 6.9 MB: several times what every buffer on the way holds together (about 1.5 MB: the pipe, the agent's
    // window, the hub's buffer and the caller's queue, HTTP/2 windows).
    const N: u64 = 1_000_000;
    let finished = tmp.path().join("seq-finished");
    let script = format!("seq 1 {N}; touch {}", finished.display());
    let cap = (16u64 << 20).to_string();
    let mut req = action("exec", &["ops-1"], &[("argv", &exec_args(&["sh", "-c", &script])), ("output_cap", &cap)]);
    req.confirm = "ops-1".into();
    let mut stream = admin.run_action(req).await.unwrap().into_inner();
    let mut output = String::new();
    while output.is_empty() {
        if let Some(Event::Target(t)) = stream.message().await.unwrap().unwrap().event {
            output.push_str(&t.output);
        }
    }
    // The slow caller: reads nothing for a while (seq alone needs a fraction of that).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!finished.exists(), "seq ran to its end while nobody read its output: nothing held it back");
    let run = follow_job(&mut stream, |_| {}).await;
    output.push_str(&run.output["ops-1"]);
    let r = run.result("ops-1");
    assert_eq!((outcome(r), r.output_dropped_bytes), (Outcome::Succeeded, 0), "{r:?}");
    let expected: String = (1..=N).map(|i| format!("{i}\n")).collect();
    assert_eq!(output.len(), expected.len());
    assert!(output == expected, "the output is not seq's, in order");
    assert!(finished.exists());
}

/// The audit record of `command_id`'s result, once the hub has written it.
async fn audited_result(hub: &HubProc, command_id: &str) -> outpost_proto::v1::AuditRecord {
    let mut admin = hub.client(Role::Admin);
    let until = Instant::now() + harness::WAIT;
    loop {
        let log = admin.query_audit(QueryAuditRequest { limit: 1000, ..Default::default() }).await.unwrap();
        let mut results: Vec<_> =
            log.into_inner().records.into_iter().filter(|r| r.kind == "result" && r.command_id == command_id).collect();
        assert!(results.len() <= 1, "one result per command: {results:#?}");
        if let Some(r) = results.pop() {
            return r;
        }
        assert!(Instant::now() < until, "no result audited for {command_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Commands pending at the hub are durable. One running while the hub restarts (SIGTERM) goes on, and the
/// restarted hub audits its real result; one queued for an offline server survives a hub crash (SIGKILL)
/// and runs when the server comes back. Each runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pending_at_the_hub_survive_its_restart() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let (mut hub, mut agents) = two_agents(tmp.path()).await;
    let exec = |script: &str| {
        let mut req = action("exec", &["ops-1"], &[("argv", &exec_args(&["sh", "-c", script]))]);
        req.confirm = "ops-1".into();
        req
    };
    let (runs, gate) = (tmp.path().join("runs"), tmp.path().join("gate"));
    // Runs until the test opens the gate, after the hub's restart.
    let script = format!(
        "echo ran >> {0}; echo started; while [ ! -e {1} ]; do sleep 0.05; done; echo finished",
        runs.display(),
        gate.display()
    );
    let mut stream = hub.client(Role::Admin).run_action(exec(&script)).await.unwrap().into_inner();
    let mut id = String::new();
    while let Some(m) = stream.message().await.unwrap() {
        if let Some(Event::Target(t)) = m.event {
            id = t.command_id;
            if t.output.contains("started") {
                break;
            }
        }
    }
    let pid = rustix::process::Pid::from_raw(hub.child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let run = follow_job(&mut stream, |_| {}).await;
    let r = run.result("ops-1");
    assert_eq!(outcome(r), Outcome::Interrupted);
    assert!(r.message.contains("stays pending"), "{}", r.message);
    hub.child.wait().await.unwrap();
    hub.restart().await;
    std::fs::write(&gate, "").unwrap();
    let rec = audited_result(&hub, &id).await;
    assert_eq!((outcome_of(&rec), rec.operator.as_str()), (Outcome::Succeeded, "test-admin"), "{rec:?}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "ran\n");

    // Queued for an offline server, then the hub crashes: the restarted hub still delivers it.
    agents[0].kill9().await;
    watch_until(&mut hub.client(Role::Viewer), "ops-1 disconnected", |f| !is(f, "ops-1", Liveness::Connected)).await;
    let queued_runs = tmp.path().join("queued-runs");
    let mut req = exec(&format!("echo ran >> {}", queued_runs.display()));
    req.queue_secs = 300;
    let mut stream = hub.client(Role::Admin).run_action(req).await.unwrap().into_inner();
    let mut id = String::new();
    while id.is_empty() {
        if let Some(Event::Target(t)) = stream.message().await.unwrap().unwrap().event
            && t.state == TargetState::Queued as i32
        {
            id = t.command_id;
        }
    }
    // A second one may wait only 1 s: that time passes while the hub is down.
    let expired_runs = tmp.path().join("expired-runs");
    let mut req = exec(&format!("echo ran >> {}", expired_runs.display()));
    req.queue_secs = 1;
    let queued_at = Instant::now();
    let mut stream = hub.client(Role::Admin).run_action(req).await.unwrap().into_inner();
    let mut expired_id = String::new();
    while expired_id.is_empty() {
        if let Some(Event::Target(t)) = stream.message().await.unwrap().unwrap().event
            && t.state == TargetState::Queued as i32
        {
            expired_id = t.command_id;
        }
    }
    hub.kill9().await;
    tokio::time::sleep_until((queued_at + Duration::from_millis(1500)).into()).await; // the hub is down meanwhile
    hub.restart().await;
    let rec = audited_result(&hub, &expired_id).await;
    assert_eq!(outcome_of(&rec), Outcome::TimedOut, "{rec:?}");
    assert!(rec.message.contains("passed while the hub was down"), "{}", rec.message);
    let a = &agents[0];
    agents[0] = AgentProc::spawn(&a.name, &a.dir, &a.dir.join("agentd.toml"));
    let rec = audited_result(&hub, &id).await;
    assert_eq!(outcome_of(&rec), Outcome::Succeeded, "{rec:?}");
    assert_eq!(std::fs::read_to_string(&queued_runs).unwrap(), "ran\n");
    assert!(!expired_runs.exists(), "a command whose queue time had passed was sent");
    // The stores that keep command arguments and output are private to their owner.
    use std::os::unix::fs::PermissionsExt;
    for dir in [hub.dir.join("data"), agents[0].dir.join("data")] {
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "{}", dir.display());
    }
}

fn outcome_of(r: &outpost_proto::v1::AuditRecord) -> Outcome {
    Outcome::try_from(r.outcome).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_agent_mid_action_and_redelivery_never_runs_it_twice() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let (hub, mut agents) = two_agents(tmp.path()).await;
    let counter = tmp.path().join("runs");
    let pidfile = tmp.path().join("shell.pid");
    let script = format!(
        "echo $$ > {}; echo ran >> {}; echo started; sleep 4; echo finished",
        pidfile.display(),
        counter.display()
    );
    let mut req = action("exec", &["ops-1"], &[("argv", &exec_args(&["sh", "-c", &script]))]);
    req.confirm = "ops-1".into();
    let mut stream = hub.client(Role::Admin).run_action(req).await.unwrap().into_inner();
    let (tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        follow_job(&mut stream, |e| {
            if let Event::Target(t) = e
                && t.output.contains("started")
            {
                let _ = tx.send(());
            }
        })
        .await
    });
    // The command printed "started" after its side effect: it ran once. Kill agentd under it.
    started.recv().await.expect("the command never started");
    assert_eq!(std::fs::read_to_string(&counter).unwrap().lines().count(), 1);
    let agent = &mut agents[0];
    agent.kill9().await;
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "ops-1 disconnected", |f| is(f, "ops-1", Liveness::Disconnected)).await;
    // Offline: refused at once by default; with a queue time it waits for the server.
    let mut support = hub.client(Role::Support);
    let run = run_job(&mut support, action("diagnostics", &["ops-1"], &[])).await;
    let r = run.result("ops-1");
    assert_eq!(outcome(r), Outcome::Refused);
    assert!(r.message.contains("ops-1 is offline; nothing was sent"), "{}", r.message);
    let mut queued = action("diagnostics", &["ops-1"], &[]);
    queued.queue_secs = 60;
    let mut queued = support.run_action(queued).await.unwrap().into_inner();
    let queued = tokio::spawn(async move { follow_job(&mut queued, |_| {}).await });
    // Back on the same data: the hub redelivers the pending command on the new stream.
    *agent = AgentProc::spawn("ops-1", &agent.dir.clone(), &agent.dir.join("agentd.toml"));
    let queued = queued.await.unwrap();
    assert_eq!(outcome(queued.result("ops-1")), Outcome::Succeeded, "{:?}", queued.result("ops-1"));
    assert!(queued.output["ops-1"].contains("== certificate"), "{}", queued.output["ops-1"]);
    let states: Vec<i32> =
        queued.events.iter().filter_map(|e| if let Event::Target(t) = e { Some(t.state) } else { None }).collect();
    assert_eq!(states.first(), Some(&(TargetState::Queued as i32)), "{states:?}");
    let run = follower.await.unwrap();
    let r = run.result("ops-1");
    assert_eq!(outcome(r), Outcome::Interrupted, "{r:?}");
    assert!(r.replayed && r.message.contains("it was not run again"), "{r:?}");
    // Whatever the orphaned shell still does, the command itself started exactly once.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    // Polled: the orphan is not our child, so there is no exit event to await.
    let deadline = Instant::now() + harness::WAIT;
    while !gone(pid.trim()) {
        assert!(Instant::now() < deadline, "the orphaned shell {pid} never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read_to_string(&counter).unwrap().lines().count(), 1);
    let log = std::fs::read_to_string(agent.dir.join("agentd.log")).unwrap();
    assert_eq!(log.matches("running command").count(), 2, "the exec once, the queued diagnostics once:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_command_update_cannot_touch_another_servers_command() {
    use outpost_proto::v1::agent_link_client::AgentLinkClient;
    use outpost_proto::v1::{AgentMessage, CommandResult, CommandUpdate, Hello, Report, agent_message, hub_message};
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let (hub, _agents) = two_agents(tmp.path()).await;
    let rogue = agentd::identity::enroll(&hub.token("rogue-1").await, None).await.unwrap();

    // The command waits for a file the test creates once the forged update has been handled.
    let gate = tmp.path().join("go");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done; echo real", gate.display());
    let mut req = action("exec", &["ops-1"], &[("argv", &exec_args(&["sh", "-c", &script]))]);
    req.confirm = "ops-1".into();
    let mut stream = hub.client(Role::Admin).run_action(req).await.unwrap().into_inner();
    let (tx, mut ids) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        follow_job(&mut stream, |e| {
            if let Event::Target(t) = e
                && t.state == TargetState::Running as i32
            {
                let _ = tx.send(t.command_id.clone());
            }
        })
        .await
    });
    let victim = ids.recv().await.unwrap();

    // Another enrolled agent claims that command finished, then reports: the claim is ignored, the stream stays.
    let channel = outpost_common::tls::HubAddr::parse(&rogue.hub)
        .unwrap()
        .channel(&rogue.ca_pem, Some((&rogue.cert_pem, &rogue.key_pem)))
        .unwrap();
    let forged = CommandResult { outcome: Outcome::Succeeded as i32, message: "forged".into(), ..Default::default() };
    let msgs = vec![
        AgentMessage { body: Some(agent_message::Body::Hello(Hello::default())) },
        AgentMessage {
            body: Some(agent_message::Body::CommandUpdate(CommandUpdate {
                command_id: victim.clone(),
                output: "forged output\n".into(),
                result: Some(forged),
                started: false,
            })),
        },
        AgentMessage {
            body: Some(agent_message::Body::Report(Report {
                seq: 1,
                taken_at_ms: outpost_common::now_ms(),
                body: Some(outpost_proto::v1::Health::default().into()),
            })),
        },
    ];
    let (mtx, mrx) = tokio::sync::mpsc::channel(8);
    for m in msgs {
        mtx.send(m).await.unwrap();
    }
    let mut inbound = AgentLinkClient::new(channel)
        .connect(tokio_stream::wrappers::ReceiverStream::new(mrx))
        .await
        .unwrap()
        .into_inner();
    loop {
        match inbound.message().await.unwrap().and_then(|m| m.body) {
            Some(hub_message::Body::Ack(a)) if a.up_to_seq == 1 => break,
            Some(_) => {}
            None => panic!("the hub closed the rogue stream instead of ignoring the update"),
        }
    }
    // The hub handles one stream's messages in order: the forged update was dealt with before this Ack.
    std::fs::write(&gate, "").unwrap();
    let run = follower.await.unwrap();
    let r = run.result("ops-1");
    assert_eq!(outcome(r), Outcome::Succeeded);
    assert_ne!(r.message, "forged");
    assert_eq!(run.output["ops-1"], "real\n");
    drop(mtx);
}
