//! Shared by hub, agent and console: fleet identity, join tokens, TLS clients, operator bundles, logging.
//!
//! Architecture invariant: this is the only crate that knows how an identity is spelled inside a
//! certificate (`outpost://agent/<id>`, `outpost://operator/<name>?role=<role>`), how a CA pin is computed,
//! and what a join-token string looks like. Everything else asks this crate.

pub mod actions;
pub mod app;
pub mod backoff;
pub mod bundle;
pub mod cert;
pub mod config;
pub mod liveness;
pub mod logging;
pub mod release;
pub mod report;
pub mod selector;
pub mod text;
pub mod tls;
pub mod token;
pub mod when;

pub use cert::{CertInfo, Identity, IdentityError, Role, ca_pin};
pub use liveness::Liveness;
pub use token::{JoinToken, TokenError};

/// Installs ring as the process-wide rustls provider. Call first thing in every binary (and test harness):
/// with two providers compiled in, rustls would otherwise panic at the first handshake.
pub fn install_crypto_provider() {
    // Err only means "already installed", which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Parses `90s`, `5m`, `1h`, `30d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 5m, 1h or 30d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// `N` bytes from the system's random source: every random id, secret and nonce in the workspace.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out).expect("the system's random source");
    out
}

/// `N` random bytes in lower-case hex: ids (jobs, commands, silences, replicas).
pub fn random_hex<const N: usize>() -> String {
    cert::hex(&random_bytes::<N>())
}

/// Like [`parse_duration`], also accepting milliseconds (`250ms`).
pub fn parse_duration_ms(s: &str) -> Result<std::time::Duration, String> {
    match s.trim().strip_suffix("ms") {
        Some(n) => {
            n.parse().map(std::time::Duration::from_millis).map_err(|_| format!("{s:?} is not a duration like 250ms"))
        }
        None => parse_duration(s),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Creates `dir` (and its parents) and makes it private to the owner (0700): stores under it hold audit
/// records, command arguments and output.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("1h"), Ok(std::time::Duration::from_secs(3600)));
        assert_eq!(super::parse_duration("45"), Ok(std::time::Duration::from_secs(45)));
        assert!(super::parse_duration("1w").unwrap_err().contains("unknown unit"));
        assert!(super::parse_duration("soon").is_err());
    }
}
