//! The agentd binaries the hub serves to new servers: `artifacts_dir/agentd-{version}-{arch}`, each with
//! its SHA-256 (computed once at start; the user-data carries it, so a file changed afterwards is refused by
//! the installer). Served over the hub's TLS port at `/artifacts/agentd/{version}/{arch}` (HTTP/2, the
//! fleet CA's server certificate), no client certificate needed: the binary is not a secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// One binary.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// The binaries by (version, arch).
#[derive(Clone, Debug, Default)]
pub struct Artifacts {
    by: BTreeMap<(String, String), Artifact>,
}

pub const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

impl Artifacts {
    /// Reads `dir` (missing: none). Names that do not look like `agentd-{version}-{arch}` are skipped.
    pub fn scan(dir: &Path) -> std::io::Result<Artifacts> {
        let mut by = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Artifacts::default()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("agentd-") else { continue };
            let Some(arch) = ARCHES.iter().find(|a| rest.ends_with(&format!("-{a}"))) else { continue };
            let version = &rest[..rest.len() - arch.len() - 1];
            if version.is_empty() || !version.bytes().all(|b| b.is_ascii_alphanumeric() || b".-+".contains(&b)) {
                continue;
            }
            let bytes = std::fs::read(entry.path())?;
            let sha256 = outpost_common::cert::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
            by.insert(
                (version.to_string(), arch.to_string()),
                Artifact { path: entry.path(), sha256, size: bytes.len() as u64 },
            );
        }
        Ok(Artifacts { by })
    }

    pub fn get(&self, version: &str, arch: &str) -> Option<&Artifact> {
        self.by.get(&(version.to_string(), arch.to_string()))
    }

    /// What is there, for error messages: `0.1.0/x86_64, ...`.
    pub fn known(&self) -> String {
        let v: Vec<String> = self.by.keys().map(|(v, a)| format!("{v}/{a}")).collect();
        if v.is_empty() { "none".into() } else { v.join(", ") }
    }

    /// The URL path of a binary.
    pub fn url_path(version: &str, arch: &str) -> String {
        format!("/artifacts/agentd/{version}/{arch}")
    }

    /// The routes that serve them.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new().route("/artifacts/agentd/{version}/{arch}", axum::routing::get(serve)).with_state(self)
    }
}

async fn serve(State(a): State<Arc<Artifacts>>, UrlPath((version, arch)): UrlPath<(String, String)>) -> Response {
    let Some(artifact) = a.get(&version, &arch) else {
        // Nothing of the request (a path is anyone's text: raw ESC included) and nothing of what is served.
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    // Streamed from the file: a hundred servers fetching a 20 MB binary at once must not hold it a hundred
    // times in memory.
    match tokio::fs::File::open(&artifact.path).await {
        Ok(file) => (
            // No length promised: the file is what it is now; the installer checks it against the SHA-256
            // taken at start (a file changed since is refused there).
            [(header::CONTENT_TYPE, "application/octet-stream")],
            axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10)),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(path = %artifact.path.display(), error = %e, "artifact unreadable");
            (StatusCode::INTERNAL_SERVER_ERROR, "artifact unreadable\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_names_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agentd-0.1.0-x86_64"), b"abc").unwrap();
        std::fs::write(dir.path().join("agentd-0.1.0-riscv"), b"x").unwrap();
        std::fs::write(dir.path().join("README"), b"x").unwrap();
        let a = Artifacts::scan(dir.path()).unwrap();
        let got = a.get("0.1.0", "x86_64").unwrap();
        assert_eq!(got.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(a.known(), "0.1.0/x86_64");
        assert!(Artifacts::scan(&dir.path().join("missing")).unwrap().get("0.1.0", "x86_64").is_none());
    }

    #[tokio::test]
    async fn a_404_says_nothing_of_the_request_or_of_what_is_served() {
        use axum::response::IntoResponse as _;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agentd-0.1.0-x86_64"), b"abc").unwrap();
        let a = Arc::new(Artifacts::scan(dir.path()).unwrap());
        let r = serve(State(a), UrlPath(("\u{1b}[2J9.9.9".to_string(), "x86_64".to_string()))).await.into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains('\u{1b}') && !body.contains("9.9.9") && !body.contains("0.1.0"), "{body}");
    }
}
