//! A self-hosted installation's first run (issue 26): `hubd init` with flags and at a terminal, `outpost
//! login`, and a first agent enrolled with what init said to do.

use std::path::Path;
use std::process::Command;

use harness::{AgentProc, HubProc, bin, is, watch_until};
use outpost_common::bundle::Bundle;
use outpost_proto::v1::Liveness;
use outpost_proto::v1::operator_client::OperatorClient;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn hubd(config: &Path) -> Command {
    let mut c = Command::new(bin("hubd"));
    c.arg("--config").arg(config);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubd_init_sets_a_hub_up_an_operator_logs_in_and_a_first_agent_enrolls() {
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let config = tmp.path().join("etc/hubd.toml");
    let data = tmp.path().join("data");
    let bundle = tmp.path().join("ops-bundle");
    let listen = format!("127.0.0.1:{port}");
    let init = |extra: &[&str]| {
        run(hubd(&config)
            .args(["--listen", &listen, "--data-dir", data.to_str().unwrap(), "init", "--non-interactive"])
            .args(["--admin", "first-ops", "--bundle-out", bundle.to_str().unwrap()])
            .args(extra))
    };
    let (ok, out) = init(&[]);
    assert!(ok && out.contains("Next:") && out.contains("hubd token create") && out.contains("sha256:"), "{out}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains(&format!("advertise = \"https://127.0.0.1:{port}\"")) && text.contains("kind = \"redb\""),
        "{text}"
    );
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777;
    assert_eq!((mode(&data), mode(&data.join("ca/ca.key")), mode(&bundle.join("operator.key"))), (0o700, 0o600, 0o600));
    // Never over an installation.
    let (ok, out) = init(&[]);
    assert!(!ok && out.contains("never overwrites") && out.contains("hubd.toml exists"), "{out}");
    // A bad answer given as a flag is refused in words, and nothing is written.
    let other = tmp.path().join("other.toml");
    let (ok, out) = run(hubd(&other).args(["--advertise", "http://hub:1", "init", "--non-interactive"]));
    assert!(!ok && out.contains("plaintext") && !other.exists(), "{out}");

    // The hub runs on what init wrote (its admin listener moved off the machine-wide default port).
    std::fs::write(&config, format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    let hub = HubProc::spawn(tmp.path(), port, config.clone(), Vec::new()).await;

    // An operator installs the bundle where the console looks.
    let xdg = tmp.path().join("xdg");
    let outpost = |args: &[&str]| run(Command::new(bin("outpost")).env("XDG_CONFIG_HOME", &xdg).args(args));
    let (ok, out) = outpost(&["login", bundle.to_str().unwrap()]);
    assert!(ok && out.contains("the hub knows you as first-ops (admin)"), "{out}");
    assert!(xdg.join("outpost/bundle/operator.key").exists());
    let someone = tmp.path().join("someone");
    let mut b = Bundle::load(&bundle).unwrap();
    b.meta.name = "someone-else".into();
    b.write(&someone).unwrap();
    let (ok, out) = outpost(&["login", someone.to_str().unwrap()]);
    assert!(!ok && out.contains("--force"), "{out}");

    // The next steps, as init printed them: a token, and an agent enrolled with it.
    let (ok, token) = run(hubd(&config).args(["token", "create", "--server", "web-1"]));
    assert!(ok, "{token}");
    let _agent = AgentProc::start(tmp.path(), "web-1", token.trim(), "");
    let mut ops = OperatorClient::new(Bundle::load(&bundle).unwrap().channel().unwrap());
    watch_until(&mut ops, "the first agent connected", |f| is(f, "web-1", Liveness::Connected)).await;
    let (ok, out) = outpost(&["servers"]);
    assert!(ok && out.contains("web-1"), "{out}");
    drop(hub);
}

/// At a terminal (a pseudo-terminal from util-linux's `script`), init asks, says what is wrong with an
/// answer, and asks again.
#[test]
fn hubd_init_asks_at_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("hubd.toml");
    let data = tmp.path().join("data");
    let bundle = tmp.path().join("b");
    // listen (a bad one, then a good one), advertise (default), data dir, store (default), admin, bundle.
    let answers = format!("nonsense\n127.0.0.1:7999\n\n{}\n\nAlice\nalice\n{}\n", data.display(), bundle.display());
    let cmd = format!("{} --config {} init", bin("hubd").display(), config.display());
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), answers.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"nonsense\" is not an address and port") && text.contains("try again"), "{text}");
    assert!(text.contains("\"Alice\" must be 1-63 of a-z"), "{text}");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("listen = \"127.0.0.1:7999\"") && written.contains(&data.display().to_string()),
        "{written}"
    );
    assert_eq!(Bundle::load(&bundle).unwrap().meta.name, "alice");
}
