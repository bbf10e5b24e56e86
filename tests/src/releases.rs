//! Agent releases for tests and benchmarks: release keys made by Debian's minisign, this build's agentd
//! stripped and stamped as other versions (`0.1.0` → `0.1.1`: same length, the contract unchanged, as
//! between patch releases), scripts standing in for bad builds, all signed and stored with `hubd release add`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{HubProc, bin};

pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A release workshop: the release keys, this build's agentd stripped, and the hub's `release add`.
pub struct Releases {
    dir: PathBuf,
    pub public: String,
    stripped: PathBuf,
    /// The hubd.toml `release add` runs with.
    pub hub_config: PathBuf,
    pub arch: &'static str,
}

impl Releases {
    pub fn new(dir: &Path, hub_config: &Path) -> Releases {
        let (have, _) = run(Command::new("sh").args(["-c", "command -v minisign"]));
        assert!(have, "minisign is not installed: the README's test command (scripts/test) installs it");
        let keygen = |name: &str| {
            let (p, s) = (dir.join(format!("{name}.pub")), dir.join(format!("{name}.key")));
            let (ok, out) = run(Command::new("minisign").args(["-G", "-W", "-p"]).arg(&p).arg("-s").arg(&s));
            assert!(ok, "minisign -G: {out}");
            std::fs::read_to_string(&p).unwrap().lines().last().unwrap().to_string()
        };
        let public = keygen("release");
        keygen("other");
        // Stripped: 40 MB instead of 67 to download, decompress and hash per agent.
        let stripped = dir.join("agentd-stripped");
        let (ok, out) = run(Command::new("strip").arg("-o").arg(&stripped).arg(bin("agentd")));
        assert!(ok, "strip: {out}");
        Releases {
            dir: dir.to_path_buf(),
            public,
            stripped,
            hub_config: hub_config.to_path_buf(),
            arch: std::env::consts::ARCH,
        }
    }

    /// This build with its version stamped as `version` (five characters, like 0.1.0).
    pub fn stamped(&self, version: &str) -> PathBuf {
        assert_eq!(version.len(), env!("CARGO_PKG_VERSION").len());
        let bytes = std::fs::read(&self.stripped).unwrap();
        let (from, to) = (env!("CARGO_PKG_VERSION").as_bytes(), version.as_bytes());
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        let mut stamped = 0;
        while i < bytes.len() {
            if bytes[i..].starts_with(from) {
                out.extend_from_slice(to);
                i += from.len();
                stamped += 1;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        assert!(stamped > 0, "no version string in the binary");
        self.file(&format!("agentd-{version}"), &out)
    }

    /// A script standing in for a bad build.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        self.file(name, format!("#!/bin/sh\n{body}\n").as_bytes())
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Signs `file` as `version` for `arch` with key `key`.
    pub fn sign(&self, file: &Path, version: &str, arch: &str, key: &str) {
        let comment = format!("outpost-agentd version={version} arch={arch}");
        let (ok, out) = run(Command::new("minisign")
            .arg("-S")
            .arg("-s")
            .arg(self.dir.join(format!("{key}.key")))
            .arg("-m")
            .arg(file)
            .args(["-t", &comment]));
        assert!(ok, "minisign: {out}");
    }

    /// Signs and stores `file` as release `version` on the hub.
    pub fn publish(&self, file: &Path, version: &str) {
        self.sign(file, version, self.arch, "release");
        let (ok, out) =
            run(Command::new(bin("hubd")).arg("--config").arg(&self.hub_config).args(["release", "add"]).arg(file));
        assert!(ok && out.contains(&format!("stored agentd {version}")), "{out}");
    }

    /// Puts `file` and its signature in the hub's store by hand, as `version` (bypassing `release add`'s
    /// checks: what an attacker with the hub's disk, or a careless admin, could do).
    pub fn place(&self, hub: &HubProc, file: &Path, version: &str) {
        let store = hub.dir.join("data/artifacts");
        std::fs::create_dir_all(&store).unwrap();
        let name = format!("agentd-{version}-{}", self.arch);
        std::fs::copy(file, store.join(&name)).unwrap();
        std::fs::copy(format!("{}.minisig", file.display()), store.join(format!("{name}.minisig"))).unwrap();
    }

    /// The `[releases]` section of a hub that trusts these keys (a quick zstd level: tests).
    pub fn hub_toml(public: &str) -> String {
        Releases::hub_toml_level(public, 3)
    }

    pub fn hub_toml_level(public: &str, level: u32) -> String {
        format!("[releases]\npublic_keys = [\"{public}\"]\nzstd_level = {level}\n")
    }

    pub fn agent_toml(&self) -> String {
        format!("release_keys = [\"{}\"]\nupdate_probation_secs = 10\n", self.public)
    }
}
