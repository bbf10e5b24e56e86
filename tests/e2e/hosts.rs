//! Real cloud-init and real systemd: a provisioned server is a Debian machine booted with systemd as PID 1
//! (systemd-nspawn, `scripts/test-host`), and cloud-init runs its user-data exactly as the hub rendered it.
//! Only K3s's installer is the suite's stand-in (it cannot be fetched here; see `harness::host`).

use std::time::Duration;

use harness::cloud::cloud_on_test_hosts;
use harness::{action, run_job, watch_until};
use outpost_common::Role;
use outpost_proto::v1::{Liveness, Outcome};

use crate::provision::{is_final, provision_req, wait_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_boots_its_user_data_under_real_cloud_init_and_systemd_and_enrolls() {
    // The cached Debian root first (debootstrap once: about a minute on a fresh machine).
    harness::host::test_host(&["root"]).expect("a Debian root for the test hosts");
    let c = cloud_on_test_hosts("ready_timeout_secs = 240").await;
    let mut admin = c.hub.client(Role::Admin);
    let id = admin.provision(provision_req("nspawn", "pro")).await.unwrap().into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, Duration::from_secs(300), is_final).await;
    let host = c.machines.host("nspawn").expect("the server booted").expect("a machine");
    let log = |p: &str| std::fs::read_to_string(host.path(p)).unwrap_or_default();
    assert_eq!(
        job.state,
        "succeeded",
        "{job:#?}\ncloud-init:\n{}\n{}",
        log("/var/log/cloud-init-output.log"),
        host.exec(&["journalctl", "-u", "outpost-agentd", "--no-pager", "-n", "50"]).1
    );
    watch_until(&mut c.hub.client(Role::Viewer), "the agent online", |f| {
        f.get("nspawn").is_some_and(|s| s.liveness == Liveness::Connected as i32)
    })
    .await;

    // cloud-init wrote the files with their modes and ran the install script to its end.
    let mode = |p: &str| host.exec(&["stat", "-c", "%a %U", p]).1.trim().to_string();
    assert_eq!(mode("/usr/local/lib/outpost/install.sh"), "700 root");
    assert_eq!(mode("/etc/outpost/agentd.toml"), "644 root");
    assert_eq!(mode("/usr/local/bin/agentd"), "755 root");
    let output = log("/var/log/cloud-init-output.log");
    assert!(output.contains("outpost-install: installing K3s v1.33.5+k3s1"), "{output}");
    assert!(output.contains("k3s v1.33.5+k3s1 installed (stand-in)"), "{output}");
    assert!(output.contains("outpost-install: agentd started"), "{output}");
    // The join token was used once and is gone (the agent deletes it when enrolled).
    assert!(!host.path("/etc/outpost/join-token").exists(), "the join token is deleted after enrolment");

    // systemd runs agentd from the real unit, and K3s's.
    let (code, active) = host.exec(&["systemctl", "is-active", "outpost-agentd", "k3s"]);
    assert_eq!((code, active.split_whitespace().collect::<Vec<_>>()), (0, vec!["active", "active"]), "{active}");
    let fragment = host.exec(&["systemctl", "show", "-p", "FragmentPath", "outpost-agentd"]).1;
    assert_eq!(fragment.trim(), "FragmentPath=/etc/systemd/system/outpost-agentd.service");

    // Service actions against the real systemctl and journalctl.
    let mut support = c.hub.client(Role::Support);
    let status = run_job(&mut support, action("service-status", &["nspawn"], &[("unit", "k3s")])).await;
    let r = status.result("nspawn");
    assert_eq!(r.outcome, Outcome::Succeeded as i32, "{r:?} {}", status.output["nspawn"]);
    assert!(status.output["nspawn"].contains("ActiveState=active"), "{}", status.output["nspawn"]);
    let pid_before = host.exec(&["systemctl", "show", "-p", "MainPID", "--value", "k3s"]).1;
    let mut req = action("service-restart", &["nspawn"], &[("unit", "k3s")]);
    req.confirm = "nspawn".into();
    let restarted = run_job(&mut support, req).await;
    assert_eq!(restarted.result("nspawn").outcome, Outcome::Succeeded as i32, "{:?}", restarted.result("nspawn"));
    let pid_after = host.exec(&["systemctl", "show", "-p", "MainPID", "--value", "k3s"]).1;
    assert_ne!(pid_before.trim(), pid_after.trim(), "systemd restarted k3s");
    let logs =
        run_job(&mut support, action("logs", &["nspawn"], &[("source", "outpost-agentd"), ("lines", "200")])).await;
    assert_eq!(logs.result("nspawn").outcome, Outcome::Succeeded as i32, "{:?}", logs.result("nspawn"));
    assert!(logs.output["nspawn"].contains("outpost-agentd"), "journalctl's lines: {}", logs.output["nspawn"]);
}

/// The update path under real systemd: the old agentd exits to be restarted by its unit, the unit's start
/// runs the new version on probation under the installed binary, a committed update stays; a build that
/// crashes at start is rolled back and the previous version runs again, with nobody at the machine. The
/// journal shows each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_under_systemd_restarts_by_the_unit_and_a_crashing_build_rolls_back() {
    use harness::releases::Releases;
    harness::host::test_host(&["root"]).expect("a Debian root for the test hosts");
    let keys = tempfile::tempdir().unwrap();
    let mut releases = Releases::new(keys.path(), std::path::Path::new("unset"));
    let c = harness::cloud::cloud_on_test_hosts_with("ready_timeout_secs = 240", &Releases::hub_toml(&releases.public))
        .await;
    releases.hub_config = c.hub.dir.join("hubd.toml");
    let b = releases.stamped("0.1.1");
    releases.publish(&b, "0.1.1");
    let crash = releases.script("crash", "echo 'agentd 0.1.3: cannot start' >&2\nexit 3");
    releases.publish(&crash, "0.1.3");
    let mut admin = c.hub.client(Role::Admin);
    let id = admin.provision(provision_req("upd", "pro")).await.unwrap().into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, Duration::from_secs(300), is_final).await;
    assert_eq!(job.state, "succeeded", "{job:#?}");
    let host = c.machines.host("upd").expect("the server booted").expect("a machine");
    let journal = || host.exec(&["journalctl", "-u", "outpost-agentd", "--no-pager", "-o", "cat"]).1;
    let restarts = || host.exec(&["systemctl", "show", "-p", "NRestarts", "--value", "outpost-agentd"]).1;
    let on_b = async || {
        watch_until(&mut c.hub.client(Role::Viewer), "upd connected on 0.1.1", |f| {
            f.get("upd").is_some_and(|s| s.liveness == Liveness::Connected as i32 && s.agent_version == "0.1.1")
        })
        .await
    };
    let key_line = host.exec(&["grep", "-c", &releases.public, "/etc/outpost/agentd.toml"]).1;
    assert_eq!(key_line.trim(), "1", "cloud-init pinned the hub's release key");

    let job = run_job(&mut admin, action("agent-update", &["upd"], &[("version", "0.1.1")])).await;
    let r = job.result("upd");
    assert_eq!(
        r.outcome,
        Outcome::Succeeded as i32,
        "{r:?}\n{}\n{}",
        journal(),
        host.exec(&["journalctl", "--no-pager", "-n", "60"]).1
    );
    assert!(r.message.starts_with("healthy: agentd 0.1.1 committed"), "{}", r.message);
    on_b().await;
    let j = journal();
    assert!(j.contains("agentd stopped ended=Restart"), "the old agentd exited for its unit to restart it:\n{j}");
    assert!(j.contains("agentd 0.1.1 started on probation; agentd 0.1.0 watches it"), "{j}");
    assert!(j.contains("update committed"), "{j}");
    assert_eq!(restarts().trim(), "1", "systemd restarted the unit once");
    assert_eq!(host.exec(&["systemctl", "is-active", "outpost-agentd"]).1.trim(), "active");

    let job = run_job(&mut admin, action("agent-update", &["upd"], &[("version", "0.1.3")])).await;
    let r = job.result("upd");
    assert_eq!(r.outcome, Outcome::Failed as i32, "{r:?}\n{}", journal());
    assert!(
        r.message.contains("rolled back to agentd 0.1.1: agentd 0.1.3 exited with status 3 before it was committed"),
        "{}",
        r.message
    );
    on_b().await;
    let j = journal();
    assert!(j.contains("agentd 0.1.3: cannot start"), "the bad build's own words are in the journal:\n{j}");
    assert!(j.contains("update rolled back"), "{j}");
    assert_eq!(host.exec(&["systemctl", "is-active", "outpost-agentd"]).1.trim(), "active");
}
