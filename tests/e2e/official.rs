//! The stand-ins under clients nobody in this project wrote: `kubectl` and the official Python
//! `kubernetes` client against the Kubernetes stand-in; Debian's `hcloud` CLI and the official Python
//! `hcloud` library against the Hetzner stand-in. The scripts they run are in `tests/official/`; the
//! README's test command installs the clients (the Python ones into `target/test-venv`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository").to_path_buf()
}

/// The test environment's Python, with the official clients installed.
fn python() -> PathBuf {
    let p = std::env::var_os("OUTPOST_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/test-venv/bin/python"));
    assert!(p.exists(), "{} is missing: the README's test command (scripts/test) makes it", p.display());
    p
}

/// Runs a client script; every check it makes is one line, and it ends with "all checks passed".
fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("all checks passed"), "{what} failed:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_kubernetes_clients_accept_the_stand_in() {
    let tmp = tempfile::tempdir().unwrap();
    let kube = standin::kube::KubeStandIn::start_with_controller(tmp.path()).await;
    let kubeconfig = kube.kubeconfig.clone();
    let py = tokio::task::spawn_blocking(move || {
        run(
            "the Python kubernetes client",
            Command::new(python()).arg(repo().join("tests/official/kube_client.py")).arg(&kubeconfig),
        )
    })
    .await
    .unwrap();
    assert!(py.contains("ok a third pod exceeds the quota (403)"), "{py}");
    let (kubeconfig, dir) = (kube.kubeconfig.clone(), tmp.path().to_path_buf());
    let cli = tokio::task::spawn_blocking(move || {
        run("kubectl", Command::new("bash").arg(repo().join("tests/official/kubectl.sh")).arg(&kubeconfig).arg(&dir))
    })
    .await
    .unwrap();
    assert!(cli.contains("ok a rolling update rolls out"), "{cli}");
    // Whatever they sent, the stand-in still answers.
    assert!(kube.get("api/v1/namespaces/kube-system").is_some());
    assert!(kube.requests().iter().any(|r| r.starts_with("WATCH ")), "kubectl and the client watched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_hetzner_clients_accept_the_stand_in() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud = standin::hetzner::HetznerStandIn::start("official-token").await;
    cloud.set_boot_time(std::time::Duration::from_millis(100));
    // Long enough that the CLI sees the server `deleting` even on a loaded machine; the script waits for the
    // end of it.
    cloud.set_delete_time(std::time::Duration::from_secs(8));
    let url = cloud.url();
    let py = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            run(
                "the Python hcloud library",
                Command::new(python())
                    .arg(repo().join("tests/official/hcloud_client.py"))
                    .arg(&url)
                    .arg("official-token"),
            )
        }
    })
    .await
    .unwrap();
    assert!(py.contains("ok a set-based selector"), "{py}");
    let dir = tmp.path().to_path_buf();
    let cli = tokio::task::spawn_blocking(move || {
        run(
            "Debian's hcloud CLI",
            Command::new("bash").arg(repo().join("tests/official/hcloud.sh")).arg(&url).arg("official-token").arg(&dir),
        )
    })
    .await
    .unwrap();
    assert!(cli.contains("ok deleting before gone"), "{cli}");
    // What they made is what the stand-in holds: the CLI's arm server and the library's six left.
    let names: Vec<String> = cloud.servers().into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"cli-2".to_string()) && names.contains(&"py-6".to_string()), "{names:?}");
    assert!(!names.contains(&"cli-1".to_string()) && !names.contains(&"py-0".to_string()), "{names:?}");
}
