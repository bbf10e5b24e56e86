//! The one backoff: exponential with full jitter (the AWS architecture blog's "full jitter"), used by
//! every retry in the workspace: an agent's reconnect, the console's, cloud calls, lifecycle job
//! retries, webhook deliveries. A delay is uniform in `[0, min(max, initial × 2^attempt)]`, so a fleet
//! that lost its hub at once does not come back at once (no reconnect storms), and a retry never waits
//! longer than `max`.

use std::time::Duration;

/// The delay before retry `attempt` (0 for the first retry), uniform in `[0, ceiling(attempt)]`.
pub fn full_jitter(attempt: u32, initial: Duration, max: Duration) -> Duration {
    ceiling(attempt, initial, max).mul_f64(unit())
}

/// The most [`full_jitter`] waits before retry `attempt`: `min(max, initial × 2^attempt)`.
pub fn ceiling(attempt: u32, initial: Duration, max: Duration) -> Duration {
    initial.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX)).min(max)
}

/// A uniform draw in `[0, 1)` from the system's random source.
fn unit() -> f64 {
    (u64::from_le_bytes(crate::random_bytes::<8>()) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Properties over a sweep of initial delays, ceilings and attempts (with many draws each): never over
    /// the ceiling, the ceiling never over `max` and never decreasing with the attempt, and the draws spread.
    #[test]
    fn every_delay_is_within_its_ceiling_and_the_ceiling_grows_to_max() {
        let ms = Duration::from_millis;
        for initial in [ms(1), ms(50), ms(100), ms(500), Duration::from_secs(3)] {
            for max in [initial, ms(1000), Duration::from_secs(30), Duration::from_secs(3600)] {
                let mut last = Duration::ZERO;
                for attempt in 0..70 {
                    let c = ceiling(attempt, initial, max);
                    assert!(c <= max.max(initial) && c >= last, "{initial:?} {max:?} {attempt}: {c:?} after {last:?}");
                    if max >= initial {
                        assert!(c >= initial.min(max), "{initial:?} {max:?} {attempt}");
                    }
                    last = c;
                    for _ in 0..20 {
                        assert!(full_jitter(attempt, initial, max) <= c);
                    }
                }
                assert_eq!(ceiling(69, initial, max), max.max(initial).min(max), "it reaches max");
            }
        }
        assert_eq!(ceiling(0, ms(100), ms(5000)), ms(100));
        assert_eq!(ceiling(3, ms(100), ms(5000)), ms(800));
        let draws: std::collections::HashSet<_> = (0..50).map(|_| full_jitter(10, ms(100), ms(5000))).collect();
        assert!(draws.len() > 40, "full jitter spreads the retries: {} distinct of 50", draws.len());
        assert_eq!(full_jitter(5, Duration::ZERO, ms(10)), Duration::ZERO);
    }
}
