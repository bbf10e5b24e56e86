//! Backing a hub up while it works and restoring it elsewhere (issue 26): real hubd, 2 real agentd and 1,000
//! simulated agents reporting; `hubd backup` under that load, `hubd restore` onto a fresh data directory.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use harness::{AgentProc, HubProc, bin, is, watch_until, watch_until_for};
use outpost_common::Role;
use outpost_proto::v1::{ListServersRequest, Liveness};

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_onto_a_fresh_data_dir_and_agents_come_back_without_a_token() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let mut hub = HubProc::start(&tmp.path().join("hub"), port, "[agents]\nenroll_rate_per_source = 0\n").await;
    let mut real = Vec::new();
    for n in ["keep-1", "keep-2"] {
        real.push(AgentProc::start(tmp.path(), n, &hub.token(n).await, ""));
    }
    let mut away = AgentProc::start(tmp.path(), "away-1", &hub.token("away-1").await, "");
    let admin = tmp.path().join("admin");
    hub.bundle("load", Role::Admin).write(&admin).unwrap();
    let mut sim = tokio::process::Command::new(bin("outpost-sim"))
        .args(["--bundle", admin.to_str().unwrap(), "--agents", "1000", "--interval", "2s", "--concurrency", "64"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ops = hub.client(Role::Viewer);
    let connected = |f: &harness::Fleet| f.values().filter(|s| harness::liveness(s) == Liveness::Connected).count();
    watch_until_for(&mut ops, "1,003 agents connected and reporting", std::time::Duration::from_secs(180), |f| {
        connected(f) == 1003 && f.values().all(|s| s.last_seq > 0)
    })
    .await;
    // A command waits at the hub for a server that is away: it is in the backup, and runs after the restore.
    away.kill9().await;
    watch_until(&mut ops, "away-1 away", |f| !is(f, "away-1", Liveness::Connected)).await;
    let mut queued = harness::action("rotate-cert", &["away-1"], &[]);
    queued.queue_secs = 600;
    let mut waiting = hub.client(Role::Admin).run_action(queued).await.unwrap().into_inner();
    let first = waiting.message().await.unwrap();
    assert!(first.is_some(), "the job was accepted");

    // Under that load: what the hub has acknowledged, then the backup.
    let acked: BTreeMap<String, u64> = ops
        .list_servers(ListServersRequest {})
        .await
        .unwrap()
        .into_inner()
        .servers
        .into_iter()
        .map(|s| (s.name, s.last_seq))
        .collect();
    let pass = tmp.path().join("pass");
    secret(&pass, "a long enough passphrase\n");
    let backup = tmp.path().join("hub.backup");
    let hubd = |config: &Path| {
        let mut c = Command::new(bin("hubd"));
        c.arg("--config").arg(config);
        c
    };
    let (ok, out) = run(hubd(&hub.config).args(["backup", "--out", backup.to_str().unwrap()]));
    assert!(!ok && out.contains("--passphrase-file"), "{out}");
    let open = tmp.path().join("open");
    std::fs::write(&open, "a long enough passphrase\n").unwrap();
    let (ok, out) = run(hubd(&hub.config).args([
        "backup",
        "--out",
        backup.to_str().unwrap(),
        "--passphrase-file",
        open.to_str().unwrap(),
    ]));
    assert!(!ok && out.contains("chmod 600"), "{out}");
    let (ok, out) = run(hubd(&hub.config).args([
        "backup",
        "--out",
        backup.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]));
    assert!(ok && out.contains("copied by the running hub"), "{out}");
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_dir(tmp.path().join("hub/data/backups")).unwrap().next().is_none(),
        "the store's copy is not left behind"
    );
    // The hub went on storing meanwhile; then it is gone for good (SIGKILL), with its load.
    let later = watch_until(&mut ops, "reports after the backup", |f| {
        f.get("keep-1").is_some_and(|s| s.last_seq > acked["keep-1"] + 2)
    })
    .await;
    assert!(later["keep-1"].last_seq > acked["keep-1"]);
    sim.kill().await.unwrap();
    let old_pin = hub.pin.clone();
    hub.kill9().await;

    // Restore onto a fresh data directory: refusals in words first.
    let fresh = tmp.path().join("new");
    std::fs::create_dir_all(&fresh).unwrap();
    let config = fresh.join("hubd.toml");
    let restore = |pass: &Path, data: &Path| {
        run(hubd(&config)
            .args(["--data-dir", data.to_str().unwrap(), "restore", backup.to_str().unwrap()])
            .args(["--passphrase-file", pass.to_str().unwrap()]))
    };
    let wrong = tmp.path().join("wrong");
    secret(&wrong, "not the passphrase at all\n");
    let (ok, out) = restore(&wrong, &fresh.join("data"));
    assert!(!ok && out.contains("does not open"), "{out}");
    let (ok, out) = restore(&pass, &tmp.path().join("hub/data"));
    assert!(!ok && out.contains("already holds a hub"), "{out}");
    let tampered = tmp.path().join("tampered.backup");
    let mut bytes = std::fs::read(&backup).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&tampered, &bytes).unwrap();
    let (ok, out) = run(hubd(&config)
        .args(["--data-dir", fresh.join("data").to_str().unwrap(), "restore", tampered.to_str().unwrap()])
        .args(["--passphrase-file", pass.to_str().unwrap()]));
    assert!(!ok && (out.contains("damaged") || out.contains("altered")), "{out}");
    assert!(!fresh.join("data/store.redb").exists(), "a refused restore writes nothing");
    let (ok, out) = restore(&pass, &fresh.join("data"));
    assert!(ok && out.contains("restored the backup") && out.contains("written from the backup"), "{out}");

    // The restored hub: the same CA, every acknowledged report, and the real agents back without a token.
    let hub = HubProc::spawn(&fresh, port, config.clone(), Vec::new()).await;
    assert_eq!(hub.pin, old_pin, "the same fleet CA");
    let mut ops = hub.client(Role::Viewer);
    let f = watch_until(&mut ops, "the real agents back", |f| {
        is(f, "keep-1", Liveness::Connected) && is(f, "keep-2", Liveness::Connected)
    })
    .await;
    assert_eq!(f.len(), 1003, "every server is in the restored store");
    for (name, seq) in &acked {
        assert!(
            f[name].last_seq >= *seq,
            "{name}: acknowledged {seq} before the backup, restored {}",
            f[name].last_seq
        );
    }
    for a in &real {
        let log = std::fs::read_to_string(a.dir.join("agentd.log")).unwrap();
        assert_eq!(log.matches("enrolled from token file").count(), 1, "{} enrolled once, at its start", a.name);
    }
    // It goes on from its own numbering (what the lost hub acknowledged after the backup is not in it).
    watch_until(&mut ops, "keep-1 reporting to the restored hub", |f| f["keep-1"].last_seq > later["keep-1"].last_seq)
        .await;
    // The server that was away comes back to the restored hub, and the command queued before the backup runs.
    drop(waiting);
    let _away = AgentProc::spawn("away-1", &away.dir, &away.dir.join("agentd.toml"));
    let mut admin = hub.client(Role::Admin);
    let deadline = std::time::Instant::now() + harness::WAIT;
    loop {
        let req = outpost_proto::v1::QueryAuditRequest { limit: 1000, ..Default::default() };
        let records = admin.query_audit(req).await.unwrap().into_inner().records;
        let done: Vec<_> = records
            .iter()
            .filter(|r| r.kind == "result" && r.action == "rotate-cert" && r.servers.iter().any(|s| s == "away-1"))
            .collect();
        if let Some(r) = done.first() {
            assert_eq!(done.len(), 1, "{done:#?}");
            assert_eq!(r.outcome, outpost_proto::v1::Outcome::Succeeded as i32, "{r:#?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the queued command never ran after the restore");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `[backup]`: the hub backs itself up on schedule, keeps the newest, says when the last one succeeded, and
/// alerts when none has for too long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_are_kept_restorable_and_alerted_on_when_they_stop() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let key = age::pq::Identity::generate();
    let identity = tmp.path().join("backup.key");
    {
        use age::secrecy::ExposeSecret;
        secret(&identity, &format!("{}\n", key.to_string().expose_secret()));
    }
    let dir = tmp.path().join("backups");
    let config = format!(
        "[backup]\nevery_secs = 1\nkeep = 2\ndir = \"{}\"\nrecipients = [\"{}\"]\n[alerts]\neval_secs = 1\nresolve_after_secs = 0\n",
        dir.display(),
        key.to_public()
    );
    let mut hub = HubProc::start(&tmp.path().join("hub"), harness::free_port(), &config).await;
    let _agent = AgentProc::start(tmp.path(), "sched-1", &hub.token("sched-1").await, "");
    let log = tmp.path().join("hub/hubd.log");
    harness::wait_until("three scheduled backups", || {
        std::fs::read_to_string(&log).unwrap_or_default().matches("scheduled backup written").count() >= 3
    })
    .await;
    let kept: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(kept.len(), 2, "the newest two are kept: {kept:?}");
    let metrics = String::from_utf8_lossy(
        &Command::new("curl").args(["-s", &format!("{}/metrics", hub.admin)]).output().unwrap().stdout,
    )
    .into_owned();
    let last = metrics
        .lines()
        .find_map(|l| l.strip_prefix("outpost_backup_last_success_timestamp_seconds "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    assert!(last > outpost_common::now_secs() - 60, "{metrics}");
    // One of them restores with the recipient's identity.
    let (ok, out) = run(Command::new(bin("hubd"))
        .arg("--config")
        .arg(tmp.path().join("restored/hubd.toml"))
        .args(["--data-dir", tmp.path().join("restored/data").to_str().unwrap(), "restore"])
        .arg(&kept[0])
        .args(["--identity", identity.to_str().unwrap()]));
    assert!(ok && out.contains("restored the backup"), "{out}");

    // Backups that stop succeeding (their directory became a file) fire backup_too_old past max_age.
    hub.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "not a directory").unwrap();
    let extra = std::fs::read_to_string(&hub.config).unwrap().replace("keep = 2\n", "keep = 2\nmax_age_secs = 2\n");
    std::fs::write(&hub.config, extra).unwrap();
    hub.restart().await;
    harness::wait_for_file(&tmp.path().join("hub/hubd.log"), "scheduled backup failed").await;
    let mut viewer = hub.client(Role::Viewer);
    let deadline = std::time::Instant::now() + harness::WAIT;
    loop {
        let alerts = viewer.list_alerts(outpost_proto::v1::ListAlertsRequest {}).await.unwrap().into_inner().alerts;
        if let Some(a) = alerts.iter().find(|a| a.labels.get("alertname").is_some_and(|n| n == "backup_too_old")) {
            assert_eq!(a.state, "firing", "{a:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "backup_too_old never fired: {alerts:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
