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
