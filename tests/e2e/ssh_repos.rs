//! Issue 10: deploy keys against a real OpenSSH server (a throwaway sshd on a loopback port, started by the
//! test), with git over ssh, strict host-key checking, and the agent's own `DeployKey` and `Repos`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentd::repos::{DeployKey, GitCli, Repos};
use outpost_common::app::{RepoRoots, RepoSpec};

pub struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// sshd on `port`, accepting `authorized` for root, with host key `host`.
pub fn sshd(dir: &Path, port: u16) -> Sshd {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(sshd.exists(), "OpenSSH server missing: scripts/test installs openssh-server");
    std::fs::create_dir_all("/run/sshd").unwrap();
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host\nAuthorizedKeysFile {0}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    // Ready when it accepts connections (its log says "Server listening").
    let deadline = std::time::Instant::now() + harness::WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "sshd did not start: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Sshd(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_key_fetches_over_ssh_and_a_wrong_host_or_key_is_refused_in_words() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    harness::git(
        root,
        "ssh-keygen -q -t ed25519 -N '' -f host && ssh-keygen -q -t ed25519 -N '' -f other-host && ssh-keygen -q -t ed25519 -N '' -f deploy && ssh-keygen -q -t ed25519 -N '' -f stranger && cp deploy.pub authorized_keys",
    );
    harness::git(
        root,
        "git init -q --bare -b main app.git && git clone -q app.git dev 2>/dev/null && cd dev && echo v1 > f && git add -A && git commit -qm v1 && git push -q origin HEAD:main",
    );
    let head = harness::git(&root.join("dev"), "git rev-parse HEAD");
    let port = harness::free_port();
    let _sshd = sshd(root, port);
    let host_line = |pubkey: &str| {
        let key = std::fs::read_to_string(root.join(pubkey)).unwrap();
        let mut parts = key.split_whitespace();
        format!("[127.0.0.1]:{port} {} {}", parts.next().unwrap(), parts.next().unwrap())
    };
    let private = |name: &str| std::fs::read_to_string(root.join(name)).unwrap();
    let git = GitCli { program: "git".into(), timeout: Duration::from_secs(60), home: root.join("home") };
    std::fs::create_dir_all(root.join("home")).unwrap();
    let repos = Repos::new(git, root.join("checkouts"), RepoRoots::default(), 64 << 20);
    let spec = RepoSpec {
        url: format!("ssh://root@127.0.0.1:{port}{}", root.join("app.git").display()),
        git_ref: "main".into(),
        ..Default::default()
    };
    let keys = root.join("keys/web");

    // The right key and host: fetched. The key is on disk only while git runs.
    let key = DeployKey::write(&keys, &private("deploy"), &host_line("host.pub")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(keys.join("id")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let s = repos.sync("web", &spec, Some(&key.ssh_command()), None).await;
    drop(key);
    assert_eq!((s.head.as_str(), s.last_error.as_str()), (head.as_str(), ""), "{s:?}");
    assert!(!keys.exists(), "the key is removed after the run");

    // Another host key than the server's: not trusted, and said so.
    let key = DeployKey::write(&keys, &private("deploy"), &host_line("other-host.pub")).unwrap();
    let bad = repos.sync("web2", &spec, Some(&key.ssh_command()), None).await;
    assert!(bad.last_error.contains("does not match repo.known_hosts"), "{bad:?}");
    drop(key);

    // A key the server does not know: refused, and said so.
    let key = DeployKey::write(&keys, &private("stranger"), &host_line("host.pub")).unwrap();
    let bad = repos.sync("web3", &spec, Some(&key.ssh_command()), None).await;
    assert!(bad.last_error.contains("refused the deploy key"), "{bad:?}");
}
