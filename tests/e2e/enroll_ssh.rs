//! Bring your own server: a real hubd enrolls "a server" over SSH with russh against a real OpenSSH server
//! started by the test on a loopback port with throwaway keys. Files go under a directory (the hub's
//! `provision.enroll_root`) and agentd is started in the background instead of through systemd, which
//! this machine does not run; the rest is what a real server gets.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use harness::{HubProc, bin, free_port, init};
use outpost_common::Role;
use outpost_proto::v1 as pb;

use crate::provision::{is_final, wait_job};
use crate::ssh_repos::sshd;

const WAIT: Duration = Duration::from_secs(60);

/// Kills the agent the job started (its pid file) when the test ends.
struct Started(std::path::PathBuf);

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
}

fn host_line(root: &Path, pubkey: &str, port: u16) -> String {
    let key = std::fs::read_to_string(root.join(pubkey)).unwrap();
    let mut parts = key.split_whitespace();
    format!("[127.0.0.1]:{port} {} {}\n", parts.next().unwrap(), parts.next().unwrap())
}

fn fingerprint(root: &Path, pubkey: &str) -> String {
    let out = harness::git(root, &format!("ssh-keygen -lf {pubkey}"));
    out.split_whitespace().nth(1).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_is_enrolled_once_over_ssh_and_an_unknown_or_changed_host_key_is_refused() {
    init();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    harness::git(
        root,
        "ssh-keygen -q -t ed25519 -N '' -f host && ssh-keygen -q -t ed25519 -N '' -f other-host && ssh-keygen -q -t ed25519 -N '' -f admin && ssh-keygen -q -t ed25519 -N '' -f stranger && ssh-keygen -q -t ed25519 -N '' -f flood && ssh-keygen -q -t ed25519 -N '' -f hang && ssh-keygen -q -t ed25519 -N '' -f trickle && cp admin.pub authorized_keys && printf 'command=\"head -c 50000000 /dev/zero\" %s\ncommand=\"sleep 600\" %s\ncommand=\"while :; do printf x; sleep 5; done\" %s\n' \"$(cat flood.pub)\" \"$(cat hang.pub)\" \"$(cat trickle.pub)\" >> authorized_keys",
    );
    let port = free_port();
    let _sshd = sshd(root, port);
    let server_root = root.join("server");
    std::fs::create_dir_all(&server_root).unwrap();
    let _agent = Started(server_root.join("agentd.pid"));

    let hub_dir = root.join("hub");
    let artifacts = hub_dir.join("data/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let arch = std::env::consts::ARCH;
    std::fs::copy(bin("agentd"), artifacts.join(format!("agentd-{}-{arch}", env!("CARGO_PKG_VERSION")))).unwrap();
    let config = format!(
        "[provision]\nenroll_root = \"{0}\"\nenroll_start = \"setsid {{root}}/usr/local/bin/agentd --config {{root}}/etc/outpost/agentd.toml </dev/null >{{root}}/agentd.out 2>&1 & echo $! > {{root}}/agentd.pid\"\n[lifecycle]\nlease_secs = 3\nretry_initial_ms = 100\nretry_max_ms = 500\n",
        server_root.display()
    );
    let hub = HubProc::start(&hub_dir, free_port(), &config).await;
    let mut admin = hub.client(Role::Admin);
    let key = std::fs::read_to_string(root.join("admin")).unwrap();
    let req = |known_hosts: String, fingerprint: String, key: &str, name: &str| pb::EnrollSshRequest {
        user: "root".into(),
        host: "127.0.0.1".into(),
        port: u32::from(port),
        known_hosts,
        fingerprint,
        private_key: key.to_string(),
        name: name.into(),
        customer: "bigcorp".into(),
        plan: "team".into(),
    };

    // Bad requests: the host key must be known; a port must be a port; nothing is queued.
    let err = admin.enroll_ssh(req(String::new(), String::new(), &key, "byo-1")).await.unwrap_err();
    assert!(err.message().contains("--known-hosts FILE or --fingerprint"), "{err:?}");
    let err = admin
        .enroll_ssh(pb::EnrollSshRequest { port: 70_000, ..req(String::new(), "x".into(), &key, "byo-1") })
        .await
        .unwrap_err();
    assert!(err.message().contains("outside 1..=65535"), "{err:?}");
    let err = admin.enroll_ssh(req(String::new(), "SHA256:nope".into(), "not a key", "byo-1")).await.unwrap_err();
    assert!(err.message().contains("not SHA256:") && err.message().contains("cannot be read"), "{err:?}");

    // A changed host key (known_hosts has another key for this host): refused, nothing left behind.
    let changed = admin.enroll_ssh(req(host_line(root, "other-host.pub", port), String::new(), &key, "byo-1")).await;
    let job = wait_job(&mut admin, changed.unwrap().into_inner().job.unwrap().id, WAIT, is_final).await;
    assert_eq!(job.state, "failed");
    assert!(job.error.contains("differs from line 1 of the known_hosts"), "{}", job.error);
    let gone = admin.get_server(pb::GetServerRequest { name: "byo-1".into(), history: 0 }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "the record and token of a failed enrollment are removed");
    assert!(!server_root.join("usr/local/bin/agentd").exists(), "nothing was uploaded");

    // A pinned fingerprint that is not the host's: refused.
    let pinned = req(String::new(), fingerprint(root, "other-host.pub"), &key, "byo-1");
    let id = admin.enroll_ssh(pinned).await.unwrap().into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert!(job.state == "failed" && job.error.contains("not the pinned"), "{job:#?}");

    // A key the server does not accept: refused in words.
    let stranger = std::fs::read_to_string(root.join("stranger")).unwrap();
    let job = admin.enroll_ssh(req(String::new(), fingerprint(root, "host.pub"), &stranger, "byo-1")).await.unwrap();
    let job = wait_job(&mut admin, job.into_inner().job.unwrap().id, WAIT, is_final).await;
    assert!(job.state == "failed" && job.error.contains("refused the key"), "{job:#?}");

    // A hostile sshd (issue 22, defect 7). 50 MB of output: the hub stops reading at 64 KiB and says so.
    let flood = std::fs::read_to_string(root.join("flood")).unwrap();
    let job = admin.enroll_ssh(req(String::new(), fingerprint(root, "host.pub"), &flood, "byo-1")).await.unwrap();
    let job = wait_job(&mut admin, job.into_inner().job.unwrap().id, WAIT, is_final).await;
    assert!(job.state == "failed" && job.error.contains("printed more than 64 KiB"), "{job:#?}");
    // A command that never answers: cancelling the job ends it at once, not at an SSH timeout.
    let hang = std::fs::read_to_string(root.join("hang")).unwrap();
    let job = admin.enroll_ssh(req(String::new(), fingerprint(root, "host.pub"), &hang, "byo-1")).await.unwrap();
    let id = job.into_inner().job.unwrap().id;
    // Inside the silent `uname -m`: the job says it asked.
    let inside = wait_job(&mut admin, id, WAIT, |j| j.progress.contains("uname -m") || is_final(j)).await;
    assert!(inside.progress.contains("uname -m"), "{inside:#?}");
    let asked = std::time::Instant::now();
    admin.cancel_lifecycle_job(pb::CancelLifecycleJobRequest { id }).await.unwrap();
    let job = wait_job(&mut admin, id, WAIT, is_final).await;
    assert_eq!(job.state, "cancelled", "{job:#?}");
    assert!(asked.elapsed() < Duration::from_secs(10), "the cancel took {:?}", asked.elapsed());

    // A byte every 5 s keeps SSH's inactivity timeout from ever firing: the command's deadline ends it.
    let trickle = std::fs::read_to_string(root.join("trickle")).unwrap();
    let job = admin.enroll_ssh(req(String::new(), fingerprint(root, "host.pub"), &trickle, "byo-1")).await.unwrap();
    let id = job.into_inner().job.unwrap().id;
    let job = wait_job(&mut admin, id, Duration::from_secs(120), |j| {
        j.error.contains("did not finish within") || is_final(j)
    })
    .await;
    assert!(job.error.contains("`uname -m` on the server did not finish within 60s"), "{job:#?}");
    admin.cancel_lifecycle_job(pb::CancelLifecycleJobRequest { id }).await.unwrap();
    wait_job(&mut admin, id, WAIT, is_final).await;

    // The right host key and key: installed, started, online; the token is gone once enrolled.
    let ok = admin.enroll_ssh(req(host_line(root, "host.pub", port), String::new(), &key, "byo-1")).await.unwrap();
    let job = wait_job(&mut admin, ok.into_inner().job.unwrap().id, WAIT, is_final).await;
    assert_eq!(
        job.state,
        "succeeded",
        "{job:#?}\nagent: {}",
        std::fs::read_to_string(server_root.join("agentd.out")).unwrap_or_default()
    );
    let steps: Vec<(&str, bool)> = job.steps.iter().map(|s| (s.name.as_str(), s.ok)).collect();
    assert_eq!(steps, [("install", true), ("online", true)]);
    let server = admin.get_server(pb::GetServerRequest { name: "byo-1".into(), history: 0 }).await.unwrap();
    let server = server.into_inner().server.unwrap();
    assert_eq!((server.customer.as_str(), server.plan.as_str()), ("bigcorp", "team"));
    assert_eq!(server.liveness, pb::Liveness::Connected as i32);
    let mode = |p: &str| std::fs::metadata(server_root.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("usr/local/bin/agentd"), 0o755);
    assert_eq!(mode("etc/systemd/system/outpost-agentd.service"), 0o644);
    assert!(!server_root.join("etc/outpost/join-token").exists(), "agentd deletes the token once enrolled");
    // The key never reaches the log.
    let log = std::fs::read_to_string(hub_dir.join("hubd.log")).unwrap();
    assert!(!log.contains(key.lines().nth(1).unwrap()), "the SSH key is in hubd's log");
}
