//! Loading daemon config files: TOML, unknown fields are errors, a missing file at the default path means
//! defaults, every validation problem reported at once.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {path} is invalid: {error}")]
    Parse { path: PathBuf, error: String },
    #[error("config is invalid:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<String>),
}

/// Reads `path`; a missing file at `default_path` means `T::default()`.
pub fn load<T: DeserializeOwned + Default>(path: &Path, default_path: &str) -> Result<T, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => from_toml(&text).map_err(|error| ConfigError::Parse { path: path.into(), error }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(default_path) => Ok(T::default()),
        Err(error) => Err(ConfigError::Read { path: path.into(), error }),
    }
}

pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// `Ok` when there are no problems.
pub fn problems(p: Vec<String>) -> Result<(), ConfigError> {
    if p.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(p)) }
}

/// Reads a secret from `path` (named `setting` in errors), trimmed. A file others can read is refused:
/// secrets at rest are 0600.
pub fn read_secret_file(path: &Path, setting: &str) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!("{setting} {} is readable by others; chmod 600 it", path.display()));
    }
    let secret = std::fs::read_to_string(path).map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    Ok(secret.trim().to_string())
}
