//! Defences against floods from the network: per-source rate limits and log lines that summarise repeats.
//!
//! A peer that fails the same way thousands of times a second must cost the hub a few log lines, not one
//! each (a log flood is a disk flood), and must not be able to make enrollment expensive for everyone.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often repeated log lines of one kind and peer are summarised.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// Entries kept at most; beyond, the oldest are summarised and forgotten (a spoofing flood cannot grow it).
const MAX_KEYS: usize = 4096;

/// Logs the first occurrence of `(kind, peer)` in each interval and counts the rest.
#[derive(Default)]
pub struct LogLimiter {
    inner: Mutex<HashMap<(&'static str, String), Window>>,
}

struct Window {
    started: Instant,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether to log this occurrence now. When it returns `Some(n)`, `n` earlier occurrences were not
    /// logged (say so in the line).
    pub fn allow(&self, kind: &'static str, peer: &str) -> Option<u64> {
        let now = Instant::now();
        let key = (kind, peer.to_string());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.len() >= MAX_KEYS && !inner.contains_key(&key) {
            Self::flush_locked(&mut inner, now, true);
        }
        match inner.entry(key) {
            Entry::Occupied(mut e) if now.duration_since(e.get().started) < SUMMARY_EVERY => {
                e.get_mut().suppressed += 1;
                None
            }
            Entry::Occupied(mut e) => {
                let w = e.get_mut();
                w.started = now;
                Some(std::mem::take(&mut w.suppressed))
            }
            Entry::Vacant(e) => {
                e.insert(Window { started: now, suppressed: 0 });
                Some(0)
            }
        }
    }

    /// Logs a summary of every interval that ended with occurrences not logged, and forgets quiet peers.
    /// Called on a timer.
    pub fn flush(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Self::flush_locked(&mut inner, Instant::now(), false);
    }

    fn flush_locked(inner: &mut HashMap<(&'static str, String), Window>, now: Instant, all: bool) {
        inner.retain(|(kind, peer), w| {
            if !all && now.duration_since(w.started) < SUMMARY_EVERY {
                return true;
            }
            if w.suppressed > 0 {
                tracing::warn!(kind, peer = %peer, repeated = w.suppressed, secs = SUMMARY_EVERY.as_secs(), "the same failure repeated (not logged each time)");
            }
            false
        });
    }
}

/// A token bucket per source address.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    inner: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_sec` requests a second per source, with bursts of `burst`. `per_sec` 0 means unlimited.
    pub fn new(per_sec: u32, burst: u32) -> RateLimiter {
        RateLimiter { per_sec: f64::from(per_sec), burst: f64::from(burst.max(1)), inner: Mutex::new(HashMap::new()) }
    }

    /// `Ok` to go ahead; `Err(wait)` when the source must wait that long.
    pub fn check(&self, source: IpAddr) -> Result<(), Duration> {
        if self.per_sec == 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.len() >= MAX_KEYS {
            let burst = self.burst;
            let per_sec = self.per_sec;
            // Forget sources whose bucket is full again: they are indistinguishable from new ones.
            inner.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * per_sec < burst);
        }
        let (tokens, at) = inner.entry(source).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_not_logged() {
        let l = LogLimiter::default();
        assert_eq!(l.allow("enroll", "10.0.0.1"), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.allow("enroll", "10.0.0.1"), None);
        }
        assert_eq!(l.allow("enroll", "10.0.0.2"), Some(0), "another peer is logged");
        assert_eq!(l.allow("renew", "10.0.0.1"), Some(0), "another kind is logged");
    }

    #[test]
    fn a_source_past_its_burst_waits() {
        let r = RateLimiter::new(10, 5);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            r.check(ip).unwrap();
        }
        let wait = r.check(ip).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        r.check("10.0.0.2".parse().unwrap()).unwrap();
        assert!(RateLimiter::new(0, 0).check(ip).is_ok(), "0 is unlimited");
    }
}
