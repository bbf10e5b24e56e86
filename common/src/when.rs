//! Times for people: UTC timestamps and "in 23 h" / "5 min ago", from unix milliseconds.

/// `2026-11-30 21:05:09 UTC` (to the second).
pub fn utc(ms: i64) -> String {
    format!("{} UTC", stamp(ms))
}

/// `2026-11-30 21:05:09` (UTC, to the second): for columns whose heading says UTC.
pub fn stamp(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// RFC 3339 in UTC, to the millisecond (`2026-11-30T21:05:09.123Z`; `.000` left out): for machines
/// (Alertmanager's `startsAt`, webhooks) and for messages that must be exact.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let frac = match ms.rem_euclid(1000) {
        0 => String::new(),
        f => format!(".{f:03}"),
    };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// How far `then_ms` is from `now_ms`: `in 23 h`, `5 min ago`, `now`.
pub fn relative(now_ms: i64, then_ms: i64) -> String {
    let d = (then_ms - now_ms) / 1000;
    let a = d.unsigned_abs();
    let span = match a {
        0..=1 => return "now".into(),
        2..=119 => format!("{a} s"),
        120..=7199 => format!("{} min", a / 60),
        7200..=172_799 => format!("{} h", a / 3600),
        _ => format!("{} d", a / 86_400),
    };
    if d > 0 { format!("in {span}") } else { format!("{span} ago") }
}

/// `2026-11-30 21:05:09 UTC (in 23 h)`.
pub fn utc_and_relative(now_ms: i64, then_ms: i64) -> String {
    format!("{} ({})", utc(then_ms), relative(now_ms, then_ms))
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_to_the_millisecond() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn utc_times_and_spans() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_439_251_000), "2026-11-23 13:07:31 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(relative(0, 23 * 3600 * 1000), "in 23 h");
        assert_eq!(relative(300_000, 0), "5 min ago");
        assert_eq!(relative(0, 500), "now");
        assert_eq!(relative(0, 3 * 86_400_000), "in 3 d");
    }
}
