//! Upgrading the fleet without SSH (issue 25): real hubd and agentd processes, releases signed by Debian's
//! minisign, stored with `hubd release add` and rolled out with the `agent-update` action as a fan-out job
//! (canary, batches, failure threshold, audit, resumed after a hub restart). Other versions are this build's
//! agentd with its version string stamped (`0.1.0` → `0.1.1`, same length; the contract is unchanged, as
//! between patch releases); bad builds are signed scripts. Every report is counted exactly once throughout.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::releases::Releases;
use harness::{AgentProc, HubProc, bin, follow_job};
use outpost_common::Role;
use outpost_proto::v1::{Outcome, RunActionRequest, Selector};

/// An `agent-update` job on `selector`.
fn update(version: &str, selector: Selector, canary: u32, batch: u32, max_failure_rate: f64) -> RunActionRequest {
    RunActionRequest {
        action: "agent-update".into(),
        args: [("version".to_string(), version.to_string())].into(),
        selector: Some(selector),
        canary,
        batch,
        max_failure_rate,
        ..Default::default()
    }
}

fn names(n: &[&str]) -> Selector {
    Selector { names: n.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

/// Waits until every server in `names` is connected, runs `version`, and has stored every report it sent
/// exactly once (its high-water mark equals the number of reports stored, and moved past `min_seq`).
async fn all_on(hub: &HubProc, names: &[String], version: &str, min_seq: &BTreeMap<String, u64>) {
    let mut client = hub.client(Role::Admin);
    harness::watch_until(&mut client, &format!("{names:?} on agentd {version}, reports exactly once"), |f| {
        names.iter().all(|n| {
            f.get(n).is_some_and(|s| {
                harness::liveness(s) == outpost_proto::v1::Liveness::Connected
                    && s.agent_version == version
                    && s.reports_received == s.last_seq
                    && s.last_seq > min_seq.get(n).copied().unwrap_or(0)
            })
        })
    })
    .await;
}

/// A hub in `d/hub` that trusts a fresh release key, and the workshop that signs with it.
async fn hub_with_releases(d: &Path) -> (HubProc, Releases) {
    let rel_dir = d.join("releases");
    std::fs::create_dir_all(&rel_dir).unwrap();
    let releases = Releases::new(&rel_dir, &d.join("hub/hubd.toml"));
    let hub = HubProc::start(&d.join("hub"), harness::free_port(), &Releases::hub_toml(&releases.public)).await;
    (hub, releases)
}

async fn seqs(hub: &HubProc) -> BTreeMap<String, u64> {
    let mut client = hub.client(Role::Admin);
    harness::watch_until(&mut client, "a fleet", |_| true).await.into_iter().map(|(n, s)| (n, s.last_seq)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_updates_twenty_agents_in_canary_and_batches_and_resumes_after_a_hub_restart() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (mut hub, releases) = hub_with_releases(d).await;
    let hub_dir = hub.dir.clone();
    let b = releases.stamped("0.1.1");
    releases.publish(&b, "0.1.1");
    let c = releases.stamped("0.1.2");
    releases.publish(&c, "0.1.2");

    let names: Vec<String> = (0..20).map(|i| format!("u{i:02}")).collect();
    let mut agents = Vec::new();
    for n in &names {
        agents.push(AgentProc::start(&d.join("agents"), n, &hub.token(n).await, &releases.agent_toml()));
    }
    all_on(&hub, &names, env!("CARGO_PKG_VERSION"), &BTreeMap::new()).await;

    // A → B: a canary of 2, then batches of 6; nothing may fail.
    let all = Selector { customer: "acme".into(), ..Default::default() };
    let mut client = hub.client(Role::Admin);
    let mut stream = client.run_action(update("0.1.1", all.clone(), 2, 6, 0.0)).await.unwrap().into_inner();
    let job = follow_job(&mut stream, |_| {}).await;
    assert_eq!(job.plan.batches, [2, 6, 6, 6]);
    for n in &names {
        let r = job.result(n);
        assert_eq!(r.outcome, Outcome::Succeeded as i32, "{n}: {r:?}\n{}", job.output[n]);
        assert!(r.message.starts_with("healthy: agentd 0.1.1 committed"), "{n}: {}", r.message);
        let out = &job.output[n];
        for phase in ["phase: downloading agentd 0.1.1", "phase: staged agentd 0.1.1", "phase: restarting"] {
            assert!(out.contains(phase), "{n}: {phase:?} not in {out}");
        }
    }
    let before = seqs(&hub).await;
    all_on(&hub, &names, "0.1.1", &before).await;
    // Sent compressed: 20 binaries of 40 MB did not mean 800 MB.
    let raw = std::fs::metadata(&b).unwrap().len();
    let zst =
        std::fs::metadata(hub_dir.join(format!("data/artifacts/agentd-0.1.1-{}.zst", releases.arch))).unwrap().len();
    assert!(zst * 2 < raw, "compressed {zst} of {raw}");

    // B → C in batches of 5; the hub is stopped once the first batch has succeeded, and the rest of the
    // rollout runs when it starts again.
    let mut stream = client.run_action(update("0.1.2", all, 0, 5, 0.0)).await.unwrap().into_inner();
    let mut succeeded = 0;
    while succeeded < 5 {
        let m = tokio::time::timeout(harness::WAIT, stream.message()).await.unwrap().unwrap().expect("job events");
        if let Some(outpost_proto::v1::job_event::Event::Progress(p)) = m.event {
            succeeded = p.succeeded;
        }
    }
    drop(stream);
    hub.stop().await;
    hub.restart().await;
    let before = seqs(&hub).await;
    all_on(&hub, &names, "0.1.2", &before).await;
    let log = std::fs::read_to_string(hub_dir.join("hubd.log")).unwrap();
    assert!(log.contains("resuming the remaining batches of a job"), "the restarted hub resumed the rollout");
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_builds_roll_back_by_themselves_and_bad_releases_are_refused_in_words() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (mut hub, r) = hub_with_releases(d).await;
    let hub_dir = hub.dir.clone();
    let base = bin("agentd");
    // Crashes at start; starts but never reaches the hub; reaches the hub but never reports; hangs.
    let crash = r.script("crash", "echo 'agentd 0.1.3: cannot start' >&2\nexit 3");
    r.publish(&crash, "0.1.3");
    let lost = r.script("lost", &format!("exec {} --hub https://127.0.0.1:1 \"$@\"", base.display()));
    r.publish(&lost, "0.1.4");
    let mute = r.script(
        "mute",
        &format!(
            "sed 's/^report_interval_ms.*/report_interval_ms = 3600000/' \"$2\" > \"$2.mute\"\nexec {} --config \"$2.mute\"",
            base.display()
        ),
    );
    r.publish(&mute, "0.1.5");
    let hang = r.script("hang", "exec sleep 600");
    r.publish(&hang, "0.1.6");

    let names = ["a", "b", "c", "e"];
    let mut agents = BTreeMap::new();
    for n in names {
        agents.insert(n, AgentProc::start(&d.join("agents"), n, &hub.token(n).await, &r.agent_toml()));
    }
    let all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let v = env!("CARGO_PKG_VERSION");
    all_on(&hub, &all, v, &BTreeMap::new()).await;

    // Each bad build on its own server at once; each comes back by itself and says why.
    let mut jobs = Vec::new();
    for (server, version) in [("a", "0.1.3"), ("b", "0.1.4"), ("c", "0.1.5"), ("e", "0.1.6")] {
        let mut client = hub.client(Role::Admin);
        jobs.push(tokio::spawn(async move {
            let mut s = client.run_action(update(version, names_of(server), 0, 0, 1.0)).await.unwrap().into_inner();
            (server, follow_job(&mut s, |_| {}).await)
        }));
    }
    let started = std::time::Instant::now();
    for j in jobs {
        let (server, job) = j.await.unwrap();
        let res = job.result(server);
        assert_eq!(res.outcome, Outcome::Failed as i32, "{server}: {res:?}");
        let want = match server {
            "a" => "agentd 0.1.3 exited with status 3 before it was committed",
            "b" => "agentd 0.1.4 took a health report but had none acknowledged by the hub",
            "c" => "agentd 0.1.5 reconnected, but no health report of it was acknowledged",
            _ => "agentd 0.1.6 had not committed 10 s after its start",
        };
        assert!(res.message.starts_with(&format!("rolled back to agentd {v}: ")), "{server}: {}", res.message);
        assert!(res.message.contains(want), "{server}: {}", res.message);
    }
    // The slowest is the hung one: its probation (10 s) and the watcher's grace (5 s).
    assert!(started.elapsed() < Duration::from_secs(40), "rollbacks took {:?}", started.elapsed());
    let before = seqs(&hub).await;
    all_on(&hub, &all, v, &before).await;

    // Refused, in words, before anything is swapped.
    let mut client = hub.client(Role::Admin);
    let older = r.stamped("0.0.9");
    r.publish(&older, "0.0.9");
    let job = harness::run_job(&mut client, update("0.0.9", names_of("a"), 0, 0, 1.0)).await;
    let res = job.result("a");
    assert_eq!(res.outcome, Outcome::Refused as i32, "{res:?}");
    assert!(res.message.contains(&format!("older than the running {v}")), "{}", res.message);
    // The version-skew rule with two builds: an agent of the previous minor (0.0.9) against this hub, and
    // this build against the data the old one wrote (its instance database and outbox), after an update.
    let old_dir = d.join("agents/old");
    std::fs::create_dir_all(&old_dir).unwrap();
    std::fs::write(old_dir.join("join-token"), hub.token("old").await).unwrap();
    std::fs::write(
        old_dir.join("agentd.toml"),
        format!(
            "data_dir = \"{0}/data\"\ntoken_file = \"{0}/join-token\"\nreport_interval_ms = 200\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\n{1}",
            old_dir.display(),
            r.agent_toml()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(old_dir.join("agentd.log")).unwrap();
    let _old = tokio::process::Command::new(&older)
        .arg("--config")
        .arg(old_dir.join("agentd.toml"))
        .env("OUTPOST_AGENTD_BASE", &older)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let old = vec!["old".to_string()];
    all_on(&hub, &old, "0.0.9", &BTreeMap::new()).await;
    let current = r.stamped(v);
    r.publish(&current, v);
    let job = harness::run_job(&mut client, update(v, names_of("old"), 0, 0, 1.0)).await;
    let res = job.result("old");
    assert_eq!(res.outcome, Outcome::Succeeded as i32, "{res:?}");
    let before = seqs(&hub).await;
    all_on(&hub, &old, v, &before).await;
    let e = client.run_action(update("0.2.0", names_of("a"), 0, 0, 1.0)).await.unwrap_err();
    assert!(e.message().contains("newer than this hub") && e.message().contains("upgrade the hub first"), "{e}");
    let e = client.run_action(update("0.1.9", names_of("a"), 0, 0, 1.0)).await.unwrap_err();
    assert!(e.message().contains("no agentd 0.1.9 is stored"), "{e}");
    // A stored release tampered with on the hub's disk (its compressed copy gone, a byte of it flipped);
    // one signed as another architecture; one signed by a key the agents do not pin.
    let good = r.stamped("0.1.7");
    r.publish(&good, "0.1.7");
    let stored = hub_dir.join(format!("data/artifacts/agentd-0.1.7-{}", r.arch));
    std::fs::remove_file(format!("{}.zst", stored.display())).unwrap();
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let foreign = r.stamped("0.1.8");
    r.sign(&foreign, "0.1.8", if r.arch == "x86_64" { "aarch64" } else { "x86_64" }, "release");
    r.place(&hub, &foreign, "0.1.8");
    let stranger = r.file("stranger", &std::fs::read(&good).unwrap());
    r.sign(&stranger, "0.1.9", r.arch, "other");
    r.place(&hub, &stranger, "0.1.9");
    for (version, want) in [
        ("0.1.7", "agentd 0.1.7 refused: the signature does not match the binary"),
        ("0.1.8", "this machine is"),
        ("0.1.9", "not a pinned release key"),
    ] {
        let job = harness::run_job(&mut client, update(version, names_of("a"), 0, 0, 1.0)).await;
        let res = job.result("a");
        assert_eq!(res.outcome, Outcome::Refused as i32, "{version}: {res:?}");
        assert!(res.message.contains(want), "{version}: {}", res.message);
    }
    let releases_dir = d.join("agents/a/data/releases");
    let left: Vec<_> = std::fs::read_dir(&releases_dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "a refused download leaves nothing behind: {left:?}");

    // SIGKILL of the new version during its probation: its watcher rolls back at once.
    let mut client = hub.client(Role::Admin);
    let mut stream = client.run_action(update("0.1.5", names_of("b"), 0, 0, 1.0)).await.unwrap().into_inner();
    let pid = next_probation(&d.join("agents/b/agentd.log"), 1).await;
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let job = follow_job(&mut stream, |_| {}).await;
    let res = job.result("b");
    assert!(res.message.contains("agentd 0.1.5 was killed by signal 9 before it was committed"), "{}", res.message);

    // SIGKILL of the watcher during a probation: the new version stops with it, and the next start rolls
    // back (the documented case of a machine that loses power mid-update).
    let mut stream = client.run_action(update("0.1.5", names_of("c"), 0, 0, 1.0)).await.unwrap().into_inner();
    let child = next_probation(&d.join("agents/c/agentd.log"), 1).await;
    let mut watcher = agents.remove("c").unwrap();
    watcher.kill9().await;
    // The child notices its watcher is gone (it polls its parent every 500 ms) and stops.
    let gone = std::time::Instant::now();
    while Path::new(&format!("/proc/{child}")).exists() && gone.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cdir = d.join("agents/c");
    agents.insert("c", AgentProc::spawn("c", &cdir, &cdir.join("agentd.toml")));
    let job = follow_job(&mut stream, |_| {}).await;
    let res = job.result("c");
    assert!(res.message.contains("interrupted during its probation"), "{}", res.message);
    let before = seqs(&hub).await;
    all_on(&hub, &all, v, &before).await;

    // From the command line: where the fleet stands, as the agents report it.
    let bundle = d.join("bundle");
    hub.bundle("ann", Role::Admin).write(&bundle).unwrap();
    let outpost = |args: &[&str]| {
        let out = Command::new(bin("outpost")).arg("--bundle").arg(&bundle).args(args).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, status) = outpost(&["rollout", "status"]);
    assert!(ok, "{status}");
    assert!(status.contains(&format!("{v:<14}       5   100%")), "every server on {v}:\n{status}");
    assert!(status.contains(&format!("healthy       0.0.9 → {v}")), "{status}");
    for why in
        ["exited with status 3 before it was committed", "was killed by signal 9", "interrupted during its probation"]
    {
        assert!(status.contains(why), "{why:?} not in:\n{status}");
    }
    assert!(status.contains("rolled back"), "{status}");

    // A rollout outside its maintenance window waits, paused it says so, resumed it waits for the window
    // again, aborted it ends with nothing run.
    let now_min = (outpost_common::now_ms() / 60_000 % 1440) as u32;
    let (start, end) = ((now_min + 120) % 1440, (now_min + 180) % 1440);
    let window = format!("{:02}:{:02}-{:02}:{:02}", start / 60, start % 60, end / 60, end % 60);
    let mut req = update("0.1.3", Selector { names: vec!["a".into(), "b".into()], ..Default::default() }, 0, 1, 0.0);
    req.window = window.clone();
    let mut stream = client.run_action(req).await.unwrap().into_inner();
    let (plan, p) = next_waiting(&mut stream).await;
    let job_id = plan.expect("the plan comes first");
    assert!(p.waiting.contains(&format!("waiting for its maintenance window {window} UTC")), "{p:?}");
    assert_eq!(p.succeeded + p.running, 0, "nothing started outside the window: {p:?}");
    let (ok, out) = outpost(&["rollout", "pause", &job_id]);
    assert!(ok && out.contains("paused"), "{out}");
    let p = next_waiting(&mut stream).await.1;
    assert!(p.waiting.contains("paused by an operator"), "{p:?}");
    let (ok, out) = outpost(&["rollout", "resume", &job_id]);
    assert!(ok, "{out}");
    let p = next_waiting(&mut stream).await.1;
    assert!(p.waiting.contains("maintenance window"), "resumed, it waits for its window again: {p:?}");
    let (ok, out) = outpost(&["rollout", "abort", &job_id]);
    assert!(ok && out.contains("aborted"), "{out}");
    let p = next_waiting(&mut stream).await.1;
    assert!(p.finished && p.skipped == 2 && p.succeeded == 0, "{p:?}");
    let (ok, out) = outpost(&["rollout", "pause", &job_id]);
    assert!(!ok && out.contains("no running job"), "{out}");

    // A pause survives a hub restart: the restarted hub resumes the job paused, and it can be resumed.
    let mut req = update("0.1.3", Selector { names: vec!["a".into(), "b".into()], ..Default::default() }, 0, 1, 0.0);
    req.window = window.clone();
    let mut stream = client.run_action(req).await.unwrap().into_inner();
    let (plan, _) = next_waiting(&mut stream).await;
    let job_id = plan.expect("the plan comes first");
    let (ok, out) = outpost(&["rollout", "pause", &job_id]);
    assert!(ok, "{out}");
    assert!(next_waiting(&mut stream).await.1.waiting.contains("paused by an operator"));
    drop(stream);
    hub.stop().await;
    hub.restart().await;
    harness::wait_for_file(&d.join("hub/hubd.log"), "the job was paused before the restart").await;
    let (ok, out) = outpost(&["rollout", "resume", &job_id]);
    assert!(ok && out.contains("resumed"), "the restarted hub runs the job: {out}");
    let (ok, out) = outpost(&["rollout", "abort", &job_id]);
    assert!(ok && out.contains("aborted"), "{out}");
    drop(agents);
}

/// The next progress event of a job that waits (or ends), and the job's id if its plan came before it.
async fn next_waiting(
    stream: &mut tonic::Streaming<outpost_proto::v1::JobEvent>,
) -> (Option<String>, outpost_proto::v1::JobProgress) {
    let mut plan = None;
    loop {
        let m = tokio::time::timeout(harness::WAIT, stream.message()).await.unwrap().unwrap().expect("job events");
        match m.event {
            Some(outpost_proto::v1::job_event::Event::Plan(p)) => plan = Some(p.job_id),
            Some(outpost_proto::v1::job_event::Event::Progress(p)) if !p.waiting.is_empty() || p.finished => {
                return (plan, p);
            }
            _ => {}
        }
    }
}

fn names_of(server: &str) -> Selector {
    names(&[server])
}

/// The pid of the version put on probation after the first `seen` ones in an agent's log (another
/// process's log is not an event this test can await: it is polled, with a deadline).
async fn next_probation(log: &Path, seen: usize) -> u32 {
    const LINE: &str = "started on probation";
    let deadline = std::time::Instant::now() + harness::WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().filter(|l| l.contains(LINE)).nth(seen) {
            let at = line.find("pid=").expect("the line names the pid") + 4;
            return line[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no probation #{} in {}:\n{text}", seen + 1, log.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
