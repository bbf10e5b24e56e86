//! `vendor/h2` and `vendor/rustls` are exactly their crates.io releases plus `vendor/*.patch` (their `src/`;
//! the manifests drop dev-dependencies, see vendor/README.md). rustls is the TLS stack: a vendored copy
//! that drifted from its release, by a hand edit or a half-applied upgrade, must not go unnoticed.

use std::path::Path;
use std::process::Command;

/// The `.crate` of `name` `version`: cargo's download cache when it has it, else crates.io's static host.
fn release(name: &str, version: &str, into: &Path) -> std::path::PathBuf {
    let file = format!("{name}-{version}.crate");
    let home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    if let Ok(dirs) = std::fs::read_dir(home.join("registry/cache")) {
        for d in dirs.flatten() {
            let cached = d.path().join(&file);
            if cached.exists() {
                return cached;
            }
        }
    }
    let out = into.join(&file);
    let url = format!("https://static.crates.io/crates/{name}/{file}");
    let ok = Command::new("curl").args(["-sSfL", "--max-time", "120", "-o"]).arg(&out).arg(&url).status().unwrap();
    assert!(ok.success(), "cannot download {url} (the crates.io registry must be reachable for this check)");
    out
}

fn version_of(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).unwrap();
    let table: toml::Table = text.parse().unwrap();
    table["package"]["version"].as_str().unwrap().to_string()
}

#[test]
fn vendored_crates_are_their_release_plus_the_patch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for name in ["h2", "rustls"] {
        let vendored = root.join("vendor").join(name);
        let version = version_of(&vendored.join("Cargo.toml"));
        let tmp = tempfile::tempdir().unwrap();
        let krate = release(name, &version, tmp.path());
        let st = Command::new("tar").arg("xzf").arg(&krate).arg("-C").arg(tmp.path()).status().unwrap();
        assert!(st.success(), "unpacking {}", krate.display());
        let upstream = tmp.path().join(format!("{name}-{version}"));
        let patch = root.join("vendor").join(format!("{name}.patch"));
        let text = std::fs::read_to_string(&patch).unwrap();
        let strip = if text.lines().any(|l| l.starts_with("--- a/")) { "-p1" } else { "-p0" };
        let out = Command::new("patch")
            .args([strip, "--forward", "--batch", "-i"])
            .arg(&patch)
            .current_dir(&upstream)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vendor/{name}.patch does not apply to {name} {version}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let diff = Command::new("diff")
            .args(["-r", "-x", "*.orig"])
            .arg(upstream.join("src"))
            .arg(vendored.join("src"))
            .output()
            .unwrap();
        assert!(
            diff.status.success(),
            "vendor/{name}/src is not {name} {version} plus vendor/{name}.patch; regenerate the patch or the copy (vendor/README.md):\n{}",
            String::from_utf8_lossy(&diff.stdout).chars().take(4000).collect::<String>()
        );
    }
}
