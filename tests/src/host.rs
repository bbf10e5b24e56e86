//! Machines with real systemd as PID 1 running real cloud-init, behind the fake Hetzner API: when a server
//! "boots", a Debian root (debootstrapped once and cached by `scripts/test-host`) is overlaid into a new
//! machine, its NoCloud seed gets the server's user-data exactly as rendered, and systemd-nspawn boots it.
//! cloud-init writes the files with their modes and runs the install script; the script installs K3s from
//! the suite's stand-in installer (get.k3s.io cannot be reached here: it installs a `k3s` that idles, its
//! unit, and a kubeconfig pointing at the Kubernetes stand-in), fetches agentd from the hub over TLS against
//! the fleet CA, checks its SHA-256, and starts it with the real unit under systemd. Nothing of the user-data
//! is played by the test. The machines share the host's network: they reach the hub on loopback.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use standin::hetzner::{Booted, Machines};

/// Where the stand-in K3s installer lies on every test host (`provision.k3s_installer` points here).
pub const K3S_INSTALLER: &str = "/opt/outpost-test/k3s-install.sh";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository").join("scripts/test-host")
}

/// Runs `scripts/test-host ARGS`; its stdout, or why it failed.
pub fn test_host(args: &[&str]) -> Result<String, String> {
    let out = Command::new(script()).args(args).output().map_err(|e| format!("scripts/test-host: {e}"))?;
    if !out.status.success() {
        return Err(format!("scripts/test-host {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One booted machine.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// The container's systemd.
    pub pid: u32,
    pub dir: PathBuf,
}

impl Host {
    /// Runs a command inside the machine; (exit code, stdout + stderr).
    pub fn exec(&self, cmd: &[&str]) -> (i32, String) {
        let mut args = vec!["exec".to_string(), self.pid.to_string()];
        args.extend(cmd.iter().map(|s| s.to_string()));
        let out = Command::new(script()).args(&args).output().expect("scripts/test-host");
        (
            out.status.code().unwrap_or(-1),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    /// A file of the machine, read from outside.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }
}

pub struct HostMachines {
    root: PathBuf,
    kubeconfig: PathBuf,
    hosts: Mutex<BTreeMap<i64, Host>>,
    /// Per server name: the machine, or why it could not boot.
    pub boots: Mutex<BTreeMap<String, Result<Host, String>>>,
}

impl Drop for HostMachines {
    fn drop(&mut self) {
        for (_, h) in std::mem::take(&mut *self.hosts.lock().unwrap()) {
            let _ = test_host(&["stop", &h.pid.to_string(), &h.dir.display().to_string()]);
        }
    }
}

/// The stand-in for K3s's installer: what get.k3s.io's script leaves behind that Outpost looks at (the
/// `k3s` binary, its systemd unit, running, and the kubeconfig), with the Kubernetes stand-in as the cluster.
fn k3s_installer(kubeconfig: &str) -> String {
    format!(
        r#"#!/bin/sh
# The suite's stand-in for https://get.k3s.io (which cannot be reached here): installs a k3s that idles,
# its unit, enabled and started, and a kubeconfig for the Kubernetes stand-in. Takes the real installer's
# INSTALL_K3S_VERSION and INSTALL_K3S_EXEC.
set -eu
mkdir -p /usr/local/bin /etc/rancher/k3s
printf '#!/bin/sh\ncase "$1" in\n  --version|-v) echo "k3s version %s (stand-in)" ;;\n  server) exec sleep infinity ;;\nesac\n' "$INSTALL_K3S_VERSION" > /usr/local/bin/k3s
chmod 0755 /usr/local/bin/k3s
cat > /etc/systemd/system/k3s.service <<'UNIT'
[Unit]
Description=Lightweight Kubernetes (the suite's stand-in)
[Service]
ExecStart=/usr/local/bin/k3s server
[Install]
WantedBy=multi-user.target
UNIT
umask 077
cat > /etc/rancher/k3s/k3s.yaml <<'KUBE'
{kubeconfig}KUBE
systemctl daemon-reload
systemctl enable --now k3s.service
echo "k3s $INSTALL_K3S_VERSION installed (stand-in) with: $INSTALL_K3S_EXEC"
"#
    )
}

impl HostMachines {
    pub fn new(root: &Path, kubeconfig: &Path) -> Arc<HostMachines> {
        std::fs::create_dir_all(root).unwrap();
        Arc::new(HostMachines {
            root: root.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            hosts: Mutex::default(),
            boots: Mutex::default(),
        })
    }

    /// The machine of server `name`, once booted.
    pub fn host(&self, name: &str) -> Option<Result<Host, String>> {
        self.boots.lock().unwrap().get(name).cloned()
    }

    fn start(&self, server: &Booted) -> Result<Host, String> {
        let dir = self.root.join(format!("{}-{}", server.name, server.id));
        let d = dir.display().to_string();
        test_host(&["make", &d])?;
        let installer = dir.join(K3S_INSTALLER.trim_start_matches('/'));
        std::fs::create_dir_all(installer.parent().unwrap()).map_err(|e| e.to_string())?;
        let kubeconfig = std::fs::read_to_string(&self.kubeconfig).map_err(|e| e.to_string())?;
        std::fs::write(&installer, k3s_installer(&kubeconfig)).map_err(|e| e.to_string())?;
        let user_data = self.root.join(format!("{}-{}.user-data", server.name, server.id));
        std::fs::write(&user_data, &server.user_data).map_err(|e| e.to_string())?;
        test_host(&["seed", &d, &user_data.display().to_string()])?;
        let pid = test_host(&["boot", &d, &format!("{}-{}", server.name, server.id)])?
            .parse::<u32>()
            .map_err(|e| format!("test-host boot: {e}"))?;
        Ok(Host { name: server.name.clone(), pid, dir })
    }
}

impl Machines for HostMachines {
    fn boot(&self, server: &Booted) {
        let r = self.start(server);
        if let Ok(h) = &r {
            self.hosts.lock().unwrap().insert(server.id, h.clone());
        }
        self.boots.lock().unwrap().insert(server.name.clone(), r);
    }

    fn destroy(&self, id: i64, _name: &str) {
        if let Some(h) = self.hosts.lock().unwrap().remove(&id) {
            let _ = test_host(&["stop", &h.pid.to_string(), &h.dir.display().to_string()]);
        }
    }
}
