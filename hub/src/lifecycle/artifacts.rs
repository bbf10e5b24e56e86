//! The agentd binaries the hub serves to new servers: `artifacts_dir/agentd-{version}-{arch}`, each with
//! its SHA-256 (computed once at start; the user-data carries it, so a file changed afterwards is refused by
//! the installer). Served over the hub's TLS port at `/artifacts/agentd/{version}/{arch}` (HTTP/2, the
//! fleet CA's server certificate), no client certificate needed: the binary is not a secret.
//!
//! Signed releases (`hubd release add`) are stored the same way, with their minisign signature beside them
//! (`agentd-{version}-{arch}.minisig`, served at `/artifacts/agentd/{version}/{arch}.minisig`): the hub checks
//! a release against `[releases] public_keys` before storing it and never holds the release key; agents check
//! it again against the keys they pin. A release added while the hub runs is served from the disk at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use outpost_common::actions::valid_version_text as valid_version;

/// One binary.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifact {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// The binaries by (version, arch).
#[derive(Debug, Default)]
pub struct Artifacts {
    by: BTreeMap<(String, String), Artifact>,
    /// Where they are (releases added later are found there).
    dir: PathBuf,
    /// Bytes of artifacts sent (the body, whole or ranged), since the start: the hub's
    /// `outpost_artifact_bytes_served` metric.
    served: prometheus_client::metrics::counter::Counter,
}

pub const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

impl Artifacts {
    /// Reads `dir` (missing: none). Names that do not look like `agentd-{version}-{arch}` are skipped.
    pub fn scan(dir: &Path) -> std::io::Result<Artifacts> {
        let mut by = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Artifacts { dir: dir.to_path_buf(), ..Artifacts::default() });
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("agentd-") else { continue };
            let Some(arch) = ARCHES.iter().find(|a| rest.ends_with(&format!("-{a}"))) else { continue };
            let version = &rest[..rest.len() - arch.len() - 1];
            if !valid_version(version) {
                continue;
            }
            let bytes = std::fs::read(entry.path())?;
            let sha256 = outpost_common::cert::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
            by.insert(
                (version.to_string(), arch.to_string()),
                Artifact { path: entry.path(), sha256, size: bytes.len() as u64 },
            );
        }
        Ok(Artifacts { by, dir: dir.to_path_buf(), served: Default::default() })
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
        axum::Router::new().route("/artifacts/agentd/{version}/{file}", axum::routing::get(serve)).with_state(self)
    }

    /// The file for `{version}/{file}` (an arch, `{arch}.minisig` or `{arch}.zst`), known at start or added
    /// since.
    fn path_of(&self, version: &str, file: &str) -> Option<PathBuf> {
        let (arch, suffix) = match file.rsplit_once('.') {
            Some((arch, s @ ("minisig" | "zst"))) => (arch, Some(s)),
            _ => (file, None),
        };
        if !valid_version(version) || !ARCHES.contains(&arch) {
            return None;
        }
        let binary = self
            .get(version, arch)
            .map(|a| a.path.clone())
            .unwrap_or_else(|| self.dir.join(format!("agentd-{version}-{arch}")));
        let path = match suffix {
            Some(s) => PathBuf::from(format!("{}.{s}", binary.display())),
            None => binary,
        };
        path.is_file().then_some(path)
    }

    pub fn bytes_served(&self) -> u64 {
        self.served.get()
    }

    /// Counts the bytes sent into `counter` (a metric) from now on.
    pub fn counting_into(self, counter: prometheus_client::metrics::counter::Counter) -> Artifacts {
        Artifacts { served: counter, ..self }
    }
}

/// `Range: bytes=N-` (the one form a resumed download sends); anything else is served whole.
fn range_start(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers.get(header::RANGE)?.to_str().ok()?.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

async fn serve(
    State(a): State<Arc<Artifacts>>,
    UrlPath((version, file)): UrlPath<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Response {
    use tokio::io::AsyncSeekExt;
    let Some(path) = a.path_of(&version, &file) else {
        // Nothing of the request (a path is anyone's text: raw ESC included) and nothing of what is served.
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let unreadable = |e: std::io::Error| {
        tracing::error!(path = %path.display(), error = %e, "artifact unreadable");
        (StatusCode::INTERNAL_SERVER_ERROR, "artifact unreadable\n").into_response()
    };
    let mut f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return unreadable(e),
    };
    let size = match f.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return unreadable(e),
    };
    let start = range_start(&headers);
    if let Some(start) = start {
        if start >= size {
            return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{size}"))])
                .into_response();
        }
        if let Err(e) = f.seek(std::io::SeekFrom::Start(start)).await {
            return unreadable(e);
        }
    }
    let from = start.unwrap_or(0);
    a.served.inc_by(size - from);
    // Streamed from the file: a hundred servers fetching a 20 MB binary at once must not hold it a hundred
    // times in memory. What was taken is checked by the taker (the installer against the SHA-256 in its
    // user-data, agentd against the release signature).
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 256 << 10));
    let mut r = (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, (size - from).to_string()),
        ],
        body,
    )
        .into_response();
    if start.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let range = format!("bytes {from}-{}/{size}", size - 1);
        r.headers_mut().insert(header::CONTENT_RANGE, range.parse().expect("ascii"));
    }
    r.headers_mut().insert(header::ACCEPT_RANGES, "bytes".parse().expect("ascii"));
    r
}

/// `hubd release add`: checks `file` and its signature against `keys`, then stores both in `dir` (written
/// aside and renamed: a reader never sees half a release). Returns what was stored, in words.
pub fn add_release(
    dir: &Path,
    file: &Path,
    signature: &Path,
    keys: &[outpost_common::release::PublicKey],
    zstd_level: i32,
) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    if keys.is_empty() {
        return Err("no release public key to check it against: set [releases] public_keys in hubd.toml (the `RW…` line of the key's .pub file)".into());
    }
    use outpost_common::release::{MAX_BINARY, MAX_SIGNATURE, read_bounded};
    let data = read_bounded(file, MAX_BINARY)?;
    let sig_bytes = read_bounded(signature, MAX_SIGNATURE as u64)?;
    let sig_text = String::from_utf8(sig_bytes)
        .map_err(|_| format!("{} is not a minisign signature (not text)", signature.display()))?;
    let release = outpost_common::release::verify(&data, &sig_text, keys)
        .map_err(|e| format!("{} refused: {e}", file.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = format!("agentd-{}-{}", release.version, release.arch);
    let target = dir.join(&name);
    if target.exists() {
        let same = std::fs::read(&target).is_ok_and(|old| old == data);
        return if same {
            Ok(format!("{name} is already stored, the same binary; nothing changed"))
        } else {
            Err(format!(
                "{name} is already stored with another binary: a version is published once; sign a new version"
            ))
        };
    }
    let write = |path: &Path, bytes: &[u8], mode: u32| -> Result<(), String> {
        let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap_or_default().to_string_lossy()));
        std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot store {}: {e}", path.display()))
    };
    // What agents download: the same bytes compressed (they check the signature on what it unpacks to).
    let zst =
        zstd::bulk::compress(&data, zstd_level).map_err(|e| format!("cannot compress {}: {e}", file.display()))?;
    // The signature first: a binary is never there without it.
    write(&dir.join(format!("{name}.minisig")), sig_text.as_bytes(), 0o644)?;
    write(&dir.join(format!("{name}.zst")), &zst, 0o644)?;
    write(&target, &data, 0o755)?;
    let sha = outpost_common::cert::hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
    Ok(format!(
        "stored agentd {} for {} ({} bytes, {} compressed, sha256 {sha}), signed by key {}; served at {}",
        release.version,
        release.arch,
        data.len(),
        zst.len(),
        outpost_common::release::Signature::parse(&sig_text).map(|s| s.key_id_hex()).unwrap_or_default(),
        Artifacts::url_path(&release.version, &release.arch)
    ))
}

/// `hubd release list`: one line per stored binary; unsigned ones (placed by hand) say so.
pub fn list_releases(dir: &Path) -> Result<String, String> {
    let a = Artifacts::scan(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if a.by.is_empty() {
        return Ok(format!("no agentd release in {} (add one with `hubd release add FILE`)", dir.display()));
    }
    let mut out = vec![format!("{:<12} {:<8} {:>10}  {:<64}  SIGNED BY", "VERSION", "ARCH", "BYTES", "SHA256")];
    for ((version, arch), art) in &a.by {
        let sig = std::fs::read_to_string(format!("{}.minisig", art.path.display())).ok();
        let by = sig
            .and_then(|s| outpost_common::release::Signature::parse(&s).ok())
            .map(|s| format!("key {}", s.key_id_hex()))
            .unwrap_or_else(|| "unsigned (placed by hand)".into());
        out.push(format!("{version:<12} {arch:<8} {:>10}  {}  {by}", art.size, art.sha256));
    }
    Ok(out.join("\n"))
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
        let r = serve(State(a), UrlPath(("\u{1b}[2J9.9.9".to_string(), "x86_64".to_string())), Default::default())
            .await
            .into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains('\u{1b}') && !body.contains("9.9.9") && !body.contains("0.1.0"), "{body}");
    }

    #[tokio::test]
    async fn a_resumed_download_gets_the_rest_and_bytes_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agentd-0.1.0-x86_64"), b"0123456789").unwrap();
        std::fs::write(dir.path().join("agentd-0.1.0-x86_64.zst"), b"zz").unwrap();
        let a = Arc::new(Artifacts::scan(dir.path()).unwrap());
        let get = |file: &str, range: Option<&str>| {
            let mut h = axum::http::HeaderMap::new();
            if let Some(r) = range {
                h.insert(header::RANGE, r.parse().unwrap());
            }
            serve(State(a.clone()), UrlPath(("0.1.0".to_string(), file.to_string())), h)
        };
        let r = get("x86_64", Some("bytes=6-")).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 6-9/10");
        assert_eq!(&axum::body::to_bytes(r.into_body(), 100).await.unwrap()[..], b"6789");
        let r = get("x86_64.zst", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(&axum::body::to_bytes(r.into_body(), 100).await.unwrap()[..], b"zz");
        assert_eq!(get("x86_64", Some("bytes=10-")).await.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(get("x86_64.gz", None).await.status(), StatusCode::NOT_FOUND);
        assert_eq!(a.bytes_served(), 6);
    }
}
