//! The operator bundle: a directory the console loads to talk to a hub as one operator.
//!
//! ```text
//! bundle.toml    hub = "https://…", name = "…", role = "…"
//! ca.pem         the fleet CA (trust anchor for the hub)
//! operator.pem   the operator's certificate chain
//! operator.key   its private key (0600)
//! ```

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleMeta {
    pub hub: String,
    pub name: String,
    pub role: String,
}

#[derive(Clone)]
pub struct Bundle {
    pub meta: BundleMeta,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle").field("meta", &self.meta).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot {what} {path}: {error}")]
    Io { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("{path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error(
        "the operator certificate of {name} in {path} expired at {at}; ask an admin for a new bundle (`hubd operator issue --name {name} --role {role} --out DIR`)"
    )]
    Expired { path: PathBuf, name: String, role: String, at: String },
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|error| BundleError::Io { what: "read", path, error })
        };
        let meta_path = dir.join("bundle.toml");
        let meta: BundleMeta = toml_lite(&read("bundle.toml")?)
            .map_err(|reason| BundleError::Invalid { path: meta_path.clone(), reason })?;
        crate::tls::HubAddr::parse_list(&meta.hub)
            .map_err(|e| BundleError::Invalid { path: meta_path, reason: e.to_string() })?;
        let key_path = dir.join("operator.key");
        let mode = std::fs::metadata(&key_path)
            .map_err(|error| BundleError::Io { what: "read", path: key_path.clone(), error })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(BundleError::KeyTooOpen { path: key_path, mode });
        }
        let bundle =
            Bundle { meta, ca_pem: read("ca.pem")?, cert_pem: read("operator.pem")?, key_pem: read("operator.key")? };
        // Checked before dialling: the hub would refuse it in the TLS handshake, which says only "transport error".
        let cert = crate::CertInfo::from_pem(&bundle.cert_pem)
            .map_err(|e| BundleError::Invalid { path: dir.join("operator.pem"), reason: e.to_string() })?;
        if cert.not_after * 1000 <= crate::now_ms() {
            return Err(BundleError::Expired {
                path: dir.to_path_buf(),
                name: bundle.meta.name.clone(),
                role: bundle.meta.role.clone(),
                at: crate::when::utc(cert.not_after * 1000),
            });
        }
        Ok(bundle)
    }

    pub fn write(&self, dir: &Path) -> Result<(), BundleError> {
        let io = |what, path: &Path, error| BundleError::Io { what, path: path.to_path_buf(), error };
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| io("chmod", dir, e))?;
        let meta = format!("hub = {:?}\nname = {:?}\nrole = {:?}\n", self.meta.hub, self.meta.name, self.meta.role);
        for (name, body, mode) in [
            ("bundle.toml", meta.as_str(), 0o644),
            ("ca.pem", self.ca_pem.as_str(), 0o644),
            ("operator.pem", self.cert_pem.as_str(), 0o644),
            ("operator.key", self.key_pem.as_str(), 0o600),
        ] {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| io("create", &path, e))?;
            f.write_all(body.as_bytes()).map_err(|e| io("write", &path, e))?;
        }
        Ok(())
    }

    /// A channel to the hub (its first address when it has several replicas).
    pub fn channel(&self) -> Result<tonic::transport::Channel, crate::tls::TlsError> {
        let addrs = crate::tls::HubAddr::parse_list(&self.meta.hub)?;
        addrs[0].channel(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
    }
}

/// `key = "value"` lines: the three fields of bundle.toml (keeps toml out of this crate's dependencies).
fn toml_lite(text: &str) -> Result<BundleMeta, String> {
    let mut fields = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| format!("line {}: expected key = \"value\"", n + 1))?;
        let v: String =
            serde_json::from_str(v.trim()).map_err(|_| format!("line {}: value must be a quoted string", n + 1))?;
        let k = k.trim();
        if !["hub", "name", "role"].contains(&k) {
            return Err(format!("line {}: unknown field `{k}` (expected hub, name, role)", n + 1));
        }
        fields.insert(k.to_string(), v);
    }
    let mut take = |k: &str| fields.remove(k).ok_or_else(|| format!("missing field `{k}`"));
    Ok(BundleMeta { hub: take("hub")?, name: take("name")?, role: take("role")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_parses_and_rejects_unknown_fields() {
        let m = toml_lite("hub = \"https://h:1\"\nname = \"a\"\nrole = \"viewer\"\n").unwrap();
        assert_eq!((m.hub.as_str(), m.role.as_str()), ("https://h:1", "viewer"));
        assert!(toml_lite("hub = \"x\"\nnme = \"a\"").unwrap_err().contains("unknown field `nme`"));
        assert!(toml_lite("hub = \"x\"\nname = \"a\"").unwrap_err().contains("missing field `role`"));
    }
}
