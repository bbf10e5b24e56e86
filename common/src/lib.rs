//! Shared by hub, agent and console: fleet identity, join tokens, TLS clients, operator bundles, logging.
//!
//! Architecture invariant: this is the only crate that knows how an identity is spelled inside a
//! certificate (`outpost://agent/<id>`, `outpost://operator/<name>?role=<role>`), how a CA pin is computed,
//! and what a join-token string looks like. Everything else asks this crate.

pub mod actions;
pub mod app;
pub mod bundle;
pub mod cert;
pub mod config;
pub mod liveness;
pub mod logging;
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

/// Reconnect delay with full jitter: uniform in [0, min(max, initial * 2^attempt)]. Spreads a fleet's
/// reconnects after a hub outage instead of synchronising them (no reconnect storms).
pub fn backoff(attempt: u32, initial: std::time::Duration, max: std::time::Duration) -> std::time::Duration {
    let cap = initial.saturating_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX)).min(max);
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let frac = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(frac)
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
    use std::time::Duration;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(5));
        for attempt in 0..40 {
            let d = super::backoff(attempt, i, m);
            assert!(d <= m.min(i * 2u32.saturating_pow(attempt.min(20))), "attempt {attempt}: {d:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| super::backoff(10, i, m)).collect();
        assert!(samples.len() > 10, "full jitter spreads reconnects");
    }

    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("1h"), Ok(std::time::Duration::from_secs(3600)));
        assert_eq!(super::parse_duration("45"), Ok(std::time::Duration::from_secs(45)));
        assert!(super::parse_duration("1w").unwrap_err().contains("unknown unit"));
        assert!(super::parse_duration("soon").is_err());
    }
}
