//! The machines behind the fake Hetzner API: when a server "boots", its user-data's agentd part runs for
//! real. The user-data is parsed by a real YAML parser (the system Python's, which cloud-init itself uses),
//! its files are written into a throwaway root with their modes, K3s's install is played by writing the
//! Kubernetes stand-in's kubeconfig where K3s writes its own, agentd is fetched from the hub's artifact
//! endpoint with curl against the fleet CA and checked against the SHA-256 in the user-data, exactly as the
//! install script does, and then started with the written config (paths re-rooted into the throwaway root).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use standin::hetzner::{Booted, HetznerStandIn, Machines};
use standin::kube::KubeStandIn;

use crate::{HubProc, bin, free_port, init};

/// The fake cloud's API token.
pub const TOKEN: &str = "hcloud-test-token";

/// What happened to one booted server.
#[derive(Clone, Debug, PartialEq)]
pub enum Boot {
    /// agentd runs.
    Started,
    /// The install failed (the reason, as the install script would log it).
    Failed(String),
}

pub struct TestMachines {
    root: PathBuf,
    kubeconfig: PathBuf,
    /// Extra agentd config lines (test speeds).
    extra: String,
    children: Mutex<BTreeMap<i64, Child>>,
    pub boots: Mutex<BTreeMap<String, Boot>>,
    /// While set, booting servers wait (a test catches a provision waiting for its agent).
    hold: (Mutex<bool>, std::sync::Condvar),
}

impl Drop for TestMachines {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut *self.children.lock().unwrap()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The system Python, which has PyYAML (a cloud-init dependency).
const PYTHON: &str = "/usr/bin/python3";

/// user-data YAML → JSON through a real YAML parser.
pub fn parse_user_data(user_data: &str) -> serde_json::Value {
    let mut child = Command::new(PYTHON)
        .args(["-c", "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with yaml (Debian python3-yaml, installed with cloud-init by scripts/test)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(user_data.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the user-data is not YAML");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The files a user-data writes: path → (mode, content).
pub fn written_files(doc: &serde_json::Value) -> BTreeMap<String, (u32, Vec<u8>)> {
    use base64::Engine;
    let mut out = BTreeMap::new();
    for f in doc["write_files"].as_array().expect("write_files") {
        let content = f["content"].as_str().unwrap_or_default();
        let bytes = match f["encoding"].as_str() {
            Some("b64") | Some("base64") => base64::engine::general_purpose::STANDARD.decode(content).unwrap(),
            _ => content.as_bytes().to_vec(),
        };
        let mode =
            u32::from_str_radix(f["permissions"].as_str().unwrap_or("0644").trim_start_matches("0o"), 8).unwrap();
        out.insert(f["path"].as_str().unwrap().to_string(), (mode, bytes));
    }
    out
}

/// A `NAME='value'` line of a shell script.
fn shell_var(script: &str, name: &str) -> Option<String> {
    script.lines().find_map(|l| l.strip_prefix(&format!("{name}='"))?.strip_suffix('\'').map(String::from))
}

impl TestMachines {
    pub fn new(root: &Path, kubeconfig: &Path, extra: &str) -> Arc<TestMachines> {
        Arc::new(TestMachines {
            root: root.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            extra: extra.to_string(),
            children: Mutex::default(),
            boots: Mutex::default(),
            hold: Default::default(),
        })
    }

    /// Booting servers wait until [`TestMachines::release`].
    pub fn hold(&self) {
        *self.hold.0.lock().unwrap() = true;
    }

    pub fn release(&self) {
        *self.hold.0.lock().unwrap() = false;
        self.hold.1.notify_all();
    }

    pub fn boot_of(&self, name: &str) -> Option<Boot> {
        self.boots.lock().unwrap().get(name).cloned()
    }

    /// The throwaway root of the newest server called `name` (each cloud server has its own disk).
    pub fn root_of(&self, name: &str) -> PathBuf {
        let mut mine: Vec<(i64, PathBuf)> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let f = e.file_name().to_string_lossy().into_owned();
                let (n, id) = f.rsplit_once('-')?;
                (n == name).then(|| Some((id.parse().ok()?, e.path())))?
            })
            .collect();
        mine.sort();
        mine.pop().map(|(_, p)| p).unwrap_or_else(|| self.root.join(format!("{name}-0")))
    }

    fn install(&self, server: &Booted) -> Result<Child, String> {
        let root = self.root.join(format!("{}-{}", server.name, server.id));
        std::fs::create_dir_all(&root).unwrap();
        let doc = parse_user_data(&server.user_data);
        let files = written_files(&doc);
        for (path, (mode, bytes)) in &files {
            let dest = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(&dest, bytes).unwrap();
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        // K3s's installer writes the cluster's kubeconfig here; the stand-in plays the cluster.
        let k3s = root.join("etc/rancher/k3s/k3s.yaml");
        std::fs::create_dir_all(k3s.parent().unwrap()).unwrap();
        std::fs::copy(&self.kubeconfig, &k3s).unwrap();
        // The install script's agentd part: fetch over TLS against the fleet CA, check the SHA-256.
        let script = String::from_utf8_lossy(&files["/usr/local/lib/outpost/install.sh"].1).into_owned();
        let url = shell_var(&script, "AGENTD_URL").ok_or("no AGENTD_URL in install.sh")?;
        let sha = shell_var(&script, "AGENTD_SHA256").ok_or("no AGENTD_SHA256 in install.sh")?;
        let agentd = root.join("usr/local/bin/agentd");
        std::fs::create_dir_all(agentd.parent().unwrap()).unwrap();
        let curl = Command::new("curl")
            .args(["--fail", "--silent", "--show-error", "--cacert"])
            .arg(root.join("etc/outpost/fleet-ca.pem"))
            .arg("-o")
            .arg(&agentd)
            .arg(&url)
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        if !curl.status.success() {
            return Err(format!("fetching {url}: {}", String::from_utf8_lossy(&curl.stderr).trim()));
        }
        let got = sha256_hex(&std::fs::read(&agentd).unwrap());
        if got != sha {
            return Err(format!("agentd from {url} does not match its SHA-256 {sha} (got {got}); not installed"));
        }
        std::fs::set_permissions(&agentd, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The config as written, its paths re-rooted into the throwaway root.
        let config = String::from_utf8_lossy(&files["/etc/outpost/agentd.toml"].1).into_owned();
        let mut rerooted = String::new();
        for line in config.lines() {
            match line.split_once(" = \"/") {
                Some((k, v)) => rerooted.push_str(&format!("{k} = \"{}/{v}\n", root.display())),
                None => rerooted.push_str(&format!("{line}\n")),
            }
        }
        rerooted.push_str(&self.extra);
        let path = root.join("etc/outpost/agentd.run.toml");
        std::fs::write(&path, rerooted).unwrap();
        let log = std::fs::File::create(root.join("agentd.log")).unwrap();
        Command::new(&agentd)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting agentd: {e}"))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

impl Machines for TestMachines {
    fn boot(&self, server: &Booted) {
        let mut held = self.hold.0.lock().unwrap();
        while *held {
            held = self.hold.1.wait(held).unwrap();
        }
        drop(held);
        let result = self.install(server);
        let boot = match result {
            Ok(child) => {
                self.children.lock().unwrap().insert(server.id, child);
                Boot::Started
            }
            Err(e) => Boot::Failed(e),
        };
        self.boots.lock().unwrap().insert(server.name.clone(), boot);
    }

    fn destroy(&self, id: i64, _name: &str) {
        if let Some(mut c) = self.children.lock().unwrap().remove(&id) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Cloud<M = TestMachines> {
    pub fake: HetznerStandIn,
    pub machines: Arc<M>,
    pub hub: HubProc,
    pub kube: KubeStandIn,
    pub dir: tempfile::TempDir,
}

/// A hub with provisioning against a fake Hetzner API whose servers boot real agents. `extra` adds hubd
/// config lines to `[provision]`.
pub async fn cloud(extra: &str) -> Cloud {
    cloud_with(extra, "", None).await
}

/// As [`cloud`], with `[lifecycle]` lines and a clock file (milliseconds added to hubd's lifecycle clock).
pub async fn cloud_with(extra: &str, lifecycle: &str, clock: Option<&std::path::Path>) -> Cloud {
    cloud_of(extra, lifecycle, clock, |dir, kube| {
        TestMachines::new(
            &dir.join("machines"),
            &kube.kubeconfig,
            &format!(
                "report_interval_ms = 200\nbackoff_initial_ms = 100\nbackoff_max_ms = 1000\napps_report_secs = 1\nrollout_poll_ms = 20\nrepo_roots = [\"{}\"]\n",
                dir.display()
            ),
        )
    })
    .await
}

/// As [`cloud`], whose servers are machines booted by real systemd running real cloud-init on the
/// user-data as rendered ([`crate::host`]); K3s's installer is the suite's stand-in, on the image.
pub async fn cloud_on_test_hosts(extra: &str) -> Cloud<crate::host::HostMachines> {
    cloud_on_test_hosts_with(extra, "").await
}

/// [`cloud_on_test_hosts`] with more sections of hubd.toml (`[releases]`, …) after the others.
pub async fn cloud_on_test_hosts_with(extra: &str, sections: &str) -> Cloud<crate::host::HostMachines> {
    let extra = format!("k3s_installer = \"file://{}\"\n{extra}", crate::host::K3S_INSTALLER);
    cloud_of(&extra, &format!("\n{sections}"), None, |dir, kube| {
        crate::host::HostMachines::new(&dir.join("hosts"), &kube.kubeconfig)
    })
    .await
}

async fn cloud_of<M: Machines + 'static>(
    extra: &str,
    lifecycle: &str,
    clock: Option<&std::path::Path>,
    machines: impl FnOnce(&Path, &KubeStandIn) -> Arc<M>,
) -> Cloud<M> {
    init();
    let dir = tempfile::tempdir().unwrap();
    let kube = KubeStandIn::start_with_controller(&dir.path().join("kube")).await;
    let fake = HetznerStandIn::start(TOKEN).await;
    fake.set_boot_time(Duration::from_millis(300));
    let machines = machines(dir.path(), &kube);
    fake.set_machines(machines.clone());
    let hub_dir = dir.path().join("hub");
    let artifacts = hub_dir.join("data/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    std::fs::copy(bin("agentd"), artifacts.join(format!("agentd-{}-x86_64", env!("CARGO_PKG_VERSION")))).unwrap();
    let token_file = dir.path().join("hcloud-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Test speeds, unless `extra` / `lifecycle` set the key themselves (TOML refuses a key twice).
    let defaults = |given: &str, lines: &[&str]| -> String {
        let keys: Vec<&str> = given.lines().filter_map(|l| l.split('=').next()).map(str::trim).collect();
        lines
            .iter()
            .filter(|l| !keys.contains(&l.split('=').next().unwrap_or("").trim()))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let provision = defaults(
        extra,
        &[
            "poll_ms = 100",
            "api_backoff_initial_ms = 50",
            "api_backoff_max_ms = 400",
            "api_rate_per_sec = 500.0",
            "api_burst = 1000",
        ],
    );
    let queue = defaults(lifecycle, &["lease_secs = 3", "retry_initial_ms = 100", "retry_max_ms = 1000"]);
    let config = format!(
        "[provision]\napi_url = \"{}\"\ntoken_file = \"{}\"\nssh_public_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOutpostBreakGlassTestKey0000000000000000 ops\"\n{provision}{extra}\n[lifecycle]\n{queue}{lifecycle}\n",
        fake.url(),
        token_file.display()
    );
    let env = clock.map(|c| vec![("OUTPOST_TEST_CLOCK_FILE".to_string(), c.display().to_string())]).unwrap_or_default();
    let hub = HubProc::start_env(&hub_dir, free_port(), &config, env).await;
    Cloud { fake, machines, hub, kube, dir }
}
