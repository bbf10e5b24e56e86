//! Signed agentd releases (issue 25, first part): Debian's minisign signs with an offline key, `hubd release
//! add` checks the release against `[releases] public_keys` before storing it, the running hub serves it and
//! its signature, and agentd checks it again against the keys it pins. Tampered, wrongly signed, foreign and
//! older releases are refused in words.

use std::path::Path;
use std::process::Command;

use harness::{HubProc, bin};

use crate::ops::tool;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Signs `file` with the minisign key `key` as `comment` (into FILE.minisig).
fn sign(key: &Path, file: &Path, comment: &str) {
    let (ok, out) =
        run(Command::new("minisign").arg("-S").arg("-s").arg(key).arg("-m").arg(file).args(["-t", comment]));
    assert!(ok, "minisign: {out}");
}

fn keygen(dir: &Path, name: &str) -> String {
    let (p, s) = (dir.join(format!("{name}.pub")), dir.join(format!("{name}.key")));
    let (ok, out) = run(Command::new("minisign").args(["-G", "-W", "-p"]).arg(&p).arg("-s").arg(&s));
    assert!(ok, "minisign -G: {out}");
    std::fs::read_to_string(&p).unwrap().lines().last().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_releases_are_stored_served_and_checked_and_bad_ones_refused_in_words() {
    tool("minisign");
    tool("curl");
    harness::init();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let key = keygen(d, "release");
    keygen(d, "other");
    // The first 2 MiB of this build's agentd stand in for a release: what is checked is bytes and signatures
    // (signing and hashing 50 MB debug builds five times only costs time).
    let agentd = std::fs::read(bin("agentd")).unwrap();
    let sample = &agentd[..agentd.len().min(2 << 20)];
    let arch = std::env::consts::ARCH;
    let release = |name: &str, comment: &str, with: &str| {
        let path = d.join(name);
        std::fs::write(&path, sample).unwrap();
        sign(&d.join(format!("{with}.key")), &path, comment);
        path
    };
    let good = release("agentd-new", &format!("outpost-agentd version=0.2.0 arch={arch}"), "release");
    let foreign = release(
        "agentd-arm",
        &format!("outpost-agentd version=0.2.0 arch={}", if arch == "x86_64" { "aarch64" } else { "x86_64" }),
        "release",
    );
    let older = release("agentd-old", &format!("outpost-agentd version=0.0.9 arch={arch}"), "release");
    let stranger = release("agentd-stranger", &format!("outpost-agentd version=0.3.0 arch={arch}"), "other");
    let tampered = release("agentd-tampered", &format!("outpost-agentd version=0.4.0 arch={arch}"), "release");
    let mut bytes = std::fs::read(&tampered).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&tampered, bytes).unwrap();

    let hub =
        HubProc::start(&d.join("hub"), harness::free_port(), &format!("[releases]\npublic_keys = [\"{key}\"]\n")).await;
    let hubd = |args: &[&str]| run(Command::new(bin("hubd")).arg("--config").arg(d.join("hub/hubd.toml")).args(args));
    let add = |f: &Path| hubd(&["release", "add", f.to_str().unwrap()]);

    // Refused before anything is stored, each in words.
    let (ok, out) = add(&tampered);
    assert!(!ok && out.contains("does not match the binary"), "{out}");
    let (ok, out) = add(&stranger);
    assert!(!ok && out.contains("not a pinned release key"), "{out}");
    let edited = d.join("agentd-edited");
    std::fs::copy(&good, &edited).unwrap();
    let sig = std::fs::read_to_string(format!("{}.minisig", good.display())).unwrap();
    std::fs::write(format!("{}.minisig", edited.display()), sig.replace("version=0.2.0", "version=9.0.0")).unwrap();
    let (ok, out) = add(&edited);
    assert!(!ok && out.contains("trusted comment does not match"), "{out}");
    let (_, list) = hubd(&["release", "list"]);
    assert!(list.contains("no agentd release"), "{list}");

    // Stored, listed, served by the running hub with its signature.
    let (ok, out) = add(&good);
    assert!(ok && out.contains(&format!("stored agentd 0.2.0 for {arch}")), "{out}");
    let (ok, again) = add(&good);
    assert!(ok && again.contains("already stored, the same binary"), "{again}");
    let (ok, out) = add(&older);
    assert!(ok, "the hub stores old versions (a rollback may need one): {out}");
    let (ok, list) = hubd(&["release", "list"]);
    assert!(ok && list.contains("0.2.0") && list.contains("0.0.9") && list.contains("key "), "{list}");
    let served = d.join("served");
    let ca = d.join("hub/data/ca/ca.pem");
    for (url, to) in [
        (format!("{}/artifacts/agentd/0.2.0/{arch}", hub.url), served.clone()),
        (format!("{}/artifacts/agentd/0.2.0/{arch}.minisig", hub.url), d.join("served.minisig")),
    ] {
        let (ok, out) = run(Command::new("curl")
            .args(["--fail", "--silent", "--show-error", "--cacert"])
            .arg(&ca)
            .arg("-o")
            .arg(&to)
            .arg(&url));
        assert!(ok, "{url}: {out}");
    }
    assert_eq!(std::fs::read(&served).unwrap(), std::fs::read(&good).unwrap());

    // agentd checks what it fetched against the key it pins.
    let config = d.join("agentd.toml");
    std::fs::write(&config, format!("data_dir = \"{}\"\nrelease_keys = [\"{key}\"]\n", d.join("agent").display()))
        .unwrap();
    let verify = |f: &Path, extra: &[&str]| {
        run(Command::new(bin("agentd")).arg("--config").arg(&config).arg("verify-release").arg(f).args(extra))
    };
    let (ok, out) = verify(&served, &[]);
    assert!(ok && out.contains("agentd 0.2.0") && out.contains("installable here"), "{out}");
    let (ok, out) = verify(&foreign, &[]);
    assert!(!ok && out.contains("this machine is"), "{out}");
    let (ok, out) = verify(&older, &[]);
    assert!(!ok && out.contains("a downgrade must be asked for explicitly"), "{out}");
    let (ok, out) = verify(&older, &["--allow-downgrade"]);
    assert!(ok, "{out}");
    let (ok, out) = verify(&tampered, &[]);
    assert!(!ok && out.contains("does not match the binary"), "{out}");
    let (ok, out) = verify(&stranger, &[]);
    assert!(!ok && out.contains("not a pinned release key"), "{out}");
}
