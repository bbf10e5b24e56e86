//! Rotating the fleet CA in phases (issue 25): real hubd and 20 real agentd processes, driven by `hubd ca
//! rotate`, with a live fleet watch open throughout and an operator's bundle used by the `outpost` command
//! line after each phase. A rollback from `update_servers`, a second rotation to the end, and an agent that
//! slept through it all coming back with a join token.

use std::path::Path;
use std::time::Duration;

use harness::{AgentProc, HubProc, bin, is, watch_until};
use outpost_common::Role;
use outpost_common::cert::pins_of;
use outpost_proto::v1::operator_client::OperatorClient;
use outpost_proto::v1::{CaRotationRequest, CaRotationStatus, Liveness, WatchFleetRequest};
use tonic::transport::Channel;

/// `hubd --config CONFIG ARGS`: (success, stdout + stderr).
fn hubd(hub: &HubProc, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin("hubd")).arg("--config").arg(&hub.config).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `outpost --bundle DIR ARGS`: (success, stdout + stderr).
fn outpost(bundle: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin("outpost")).arg("--bundle").arg(bundle).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Waits until every connected server has done the current phase (the rotation's progress has no event
/// stream: this polls, with a deadline).
async fn phase_done(hub: &HubProc, admin: &mut OperatorClient<Channel>, phase: &str, offline: u32) -> CaRotationStatus {
    let deadline = std::time::Instant::now() + harness::WAIT;
    loop {
        let req = CaRotationRequest { action: "status".into(), force: false };
        let s = admin.ca_rotation(req).await.unwrap().into_inner();
        if s.phase == phase && s.lagging == 0 && s.offline == offline && s.done + offline == s.servers {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(hub.dir.join("hubd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!("phase {phase} never done: {s:#?}\nhubd.log ends with:\n{}", tail.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_of(root: &Path, name: &str) -> String {
    std::fs::read_to_string(root.join(name).join("agentd.log")).unwrap_or_default()
}

/// The pins an agent trusts and the pin of the CA its certificate comes from, as its identity file says.
fn agent_trust(agent: &AgentProc) -> (Vec<String>, String) {
    let text = std::fs::read_to_string(agent.dir.join("data/identity.json")).unwrap();
    let id: serde_json::Value = serde_json::from_str(&text).unwrap();
    let chain_ca = pins_of(id["cert_pem"].as_str().unwrap()).get(1).cloned().unwrap();
    (pins_of(id["ca_pem"].as_str().unwrap()), chain_ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_ca_rotates_in_phases_under_twenty_agents_and_a_live_console() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let mut hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), "").await;
    let names: Vec<String> = (0..20).map(|i| format!("rot-{i:02}")).collect();
    let mut agents = Vec::new();
    for n in &names {
        agents.push(AgentProc::start(tmp.path(), n, &hub.token(n).await, ""));
    }
    let mut sleeper = AgentProc::start(tmp.path(), "sleeper", &hub.token("sleeper").await, "");
    let mut ops = hub.client(Role::Viewer);
    watch_until(&mut ops, "21 agents connected", |f| f.len() == 21 && f.keys().all(|n| is(f, n, Liveness::Connected)))
        .await;
    // Asleep for the whole rotation.
    sleeper.kill9().await;
    watch_until(&mut ops, "the sleeper gone", |f| !is(f, "sleeper", Liveness::Connected)).await;
    let bundle = tmp.path().join("alice");
    hub.bundle("alice", Role::Viewer).write(&bundle).unwrap();
    let sleepy_bundle = tmp.path().join("bob");
    hub.bundle("bob", Role::Viewer).write(&sleepy_bundle).unwrap();
    let mut admin = hub.client(Role::Admin);
    let old = hub.pin.clone();

    // 1. init: both CAs trusted by every connected agent.
    let (ok, out) = hubd(&hub, &["ca", "rotate", "start"]);
    assert!(ok && out.contains("rotation started"), "{out}");
    let (ok, out) = hubd(&hub, &["ca", "rotate", "start"]);
    assert!(!ok && out.contains("already in progress"), "{out}");
    let s = phase_done(&hub, &mut admin, "init", 1).await;
    let new = s.next_pin.clone();
    assert_eq!(
        (s.current_pin.as_str(), s.offline_names.as_slice()),
        (old.as_str(), ["sleeper".to_string()].as_slice())
    );
    for a in &agents {
        assert_eq!(agent_trust(a), (vec![old.clone(), new.clone()], old.clone()), "{}", a.name);
    }
    // The operator's bundle follows at its next use.
    let (ok, out) = outpost(&bundle, &["ca", "status"]);
    assert!(ok && out.contains("phase init") && out.contains("bundle") && out.contains("renewed"), "{out}");
    assert_eq!(pins_of(&std::fs::read_to_string(bundle.join("ca.pem")).unwrap()), vec![old.clone(), new.clone()]);

    // 2. update_clients: every connected agent holds a certificate from the new CA.
    let (ok, out) = hubd(&hub, &["ca", "rotate", "advance"]);
    assert!(ok && out.contains("phase update_clients"), "{out}");
    phase_done(&hub, &mut admin, "update_clients", 1).await;
    for a in &agents {
        assert_eq!(agent_trust(a).1, new, "{}", a.name);
    }
    // A hub restarted mid-rotation goes on from where it was.
    hub.stop().await;
    hub.restart().await;
    watch_until(&mut ops, "20 agents back after the hub's restart", |f| {
        names.iter().all(|n| is(f, n, Liveness::Connected))
    })
    .await;
    let s = phase_done(&hub, &mut admin, "update_clients", 1).await;
    assert_eq!(s.next_pin, new);
    // From here on no agent may fail to connect: their logs are read from this point.
    let logged: Vec<usize> = names.iter().map(|n| log_of(tmp.path(), n).len()).collect();
    // The live console: one watch, opened here, read at the end.
    let mut live = ops.watch_fleet(WatchFleetRequest {}).await.unwrap().into_inner();

    // 3. update_servers: the hub serves with the new CA; every agent reconnects to it, none fails.
    let (ok, out) = hubd(&hub, &["ca", "rotate", "advance"]);
    assert!(ok && out.contains("phase update_servers"), "{out}");
    phase_done(&hub, &mut admin, "update_servers", 1).await;
    let (ok, out) = outpost(&bundle, &["servers"]);
    assert!(ok && out.contains("rot-07"), "{out}");

    // 4. Rolled back from update_servers: certificates from the old CA again, then the new one dropped.
    let (ok, out) = hubd(&hub, &["ca", "rotate", "rollback"]);
    assert!(ok && out.contains("rolling back"), "{out}");
    phase_done(&hub, &mut admin, "rollback", 0).await;
    // The bundle renewed from the new CA in update_servers follows the rollback too (used in this phase).
    let (ok, out) = outpost(&bundle, &["ca", "status"]);
    assert!(ok && out.contains("phase rollback"), "{out}");
    for a in &agents {
        assert_eq!(agent_trust(a).1, old, "{}", a.name);
    }
    let (ok, out) = hubd(&hub, &["ca", "rotate", "advance"]);
    assert!(ok && out.contains(&format!("the fleet CA stays {old}")), "{out}");
    for a in &agents {
        harness::wait_until(&format!("{} trusting only the old CA", a.name), || agent_trust(a).0 == [old.clone()])
            .await;
    }

    // 5. A rotation to its end: it stops before stranding the sleeper, unless forced. A napper, away from
    // before init until update_servers, trusts only the old CA when it comes back: it verifies the hub
    // through the cross-signed certificate and catches up.
    let mut napper = agents.pop().unwrap();
    napper.kill9().await;
    watch_until(&mut ops, "the napper gone", |f| !is(f, &napper.name, Liveness::Connected)).await;
    let (ok, out) = hubd(&hub, &["ca", "rotate", "start"]);
    assert!(ok, "{out}");
    let new = phase_done(&hub, &mut admin, "init", 2).await.next_pin;
    assert!(hubd(&hub, &["ca", "rotate", "advance"]).0);
    phase_done(&hub, &mut admin, "update_clients", 2).await;
    let (ok, out) = outpost(&bundle, &["ca", "status"]);
    assert!(ok && out.contains("phase update_clients"), "{out}");
    assert!(hubd(&hub, &["ca", "rotate", "advance"]).0);
    assert_eq!(agent_trust(&napper), (vec![old.clone()], old.clone()));
    napper = AgentProc::spawn(&napper.name, &napper.dir, &napper.dir.join("agentd.toml"));
    phase_done(&hub, &mut admin, "update_servers", 1).await;
    agents.push(napper);
    let (ok, out) = hubd(&hub, &["ca", "rotate", "advance"]);
    assert!(!ok && out.contains("1 offline servers") && out.contains("sleeper") && out.contains("--force"), "{out}");
    let (ok, out) = hubd(&hub, &["ca", "rotate", "advance", "--force"]);
    assert!(ok && out.contains("rotation finished") && out.contains("1 servers stranded: sleeper"), "{out}");
    let (_, out) = hubd(&hub, &["ca", "rotate", "status"]);
    assert!(out.contains(&format!("no rotation in progress; the fleet CA is {new}")), "{out}");
    let retired = tmp.path().join(format!("hub/data/ca/retired/{}.key", hub::pki::rotation::kid(&old)));
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&retired).unwrap().permissions()) & 0o777,
        0o600
    );
    for a in &agents {
        harness::wait_until(&format!("{} trusting only the new CA", a.name), || {
            agent_trust(a) == (vec![new.clone()], new.clone())
        })
        .await;
    }

    // Through all of it: every agent connected, reconnected only when asked (once per update_servers), and
    // never failed to after the hub's restart; every report stored exactly once; the live watch still delivers.
    let f = watch_until(&mut ops, "20 agents connected after the rotation", |f| {
        names.iter().all(|n| is(f, n, Liveness::Connected) && f[n].reports_received == f[n].last_seq)
    })
    .await;
    for (n, from) in names.iter().zip(&logged) {
        assert!(f[n].connections <= 4, "{n} connected {} times", f[n].connections);
        let log = log_of(tmp.path(), n);
        assert!(!log[*from..].contains("hub link down"), "{n} failed to reconnect:\n{}", &log[*from..]);
    }
    let event = tokio::time::timeout(harness::WAIT, live.message()).await.expect("the live watch delivers");
    assert!(matches!(event, Ok(Some(_))), "{event:?}");
    let (ok, out) = outpost(&bundle, &["servers"]);
    assert!(ok && out.contains("rot-07"), "the operator's bundle followed the rotation: {out}");
    assert_eq!(pins_of(&std::fs::read_to_string(bundle.join("ca.pem")).unwrap()), vec![new.clone()]);
    // A bundle not used since before the rotation is refused, and says what to do.
    let (ok, out) = outpost(&sleepy_bundle, &["servers"]);
    assert!(!ok && out.contains("hubd operator issue"), "{out}");

    // 6. The sleeper wakes: it cannot connect, says why and how to recover, and a join token brings it back.
    sleeper = AgentProc::spawn("sleeper", &sleeper.dir, &sleeper.dir.join("agentd.toml"));
    harness::wait_for_file(&sleeper.dir.join("agentd.log"), "do not trust the same fleet CA").await;
    std::fs::write(sleeper.dir.join("join-token"), hub.token("sleeper").await).unwrap();
    watch_until(&mut ops, "the sleeper back", |f| is(f, "sleeper", Liveness::Connected)).await;
    assert_eq!(agent_trust(&sleeper), (vec![new.clone()], new.clone()));
}
