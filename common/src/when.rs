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

/// A daily maintenance window in UTC, `HH:MM-HH:MM` (it may span midnight: `22:00-06:00`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight UTC.
    pub start: u32,
    pub end: u32,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

impl std::str::FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Window, String> {
        let bad = || format!("{:?} is not a window like 22:00-06:00 (HH:MM-HH:MM, UTC)", crate::text::excerpt(s, 40));
        let minutes = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let w = Window { start: minutes(a).ok_or_else(bad)?, end: minutes(b).ok_or_else(bad)? };
        if w.start == w.end {
            return Err(format!("window {s}: start and end are the same; leave the window out to run at any time"));
        }
        Ok(w)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} UTC", self.spec())
    }
}

impl Window {
    /// `HH:MM-HH:MM`, as it is parsed.
    pub fn spec(&self) -> String {
        format!("{:02}:{:02}-{:02}:{:02}", self.start / 60, self.start % 60, self.end / 60, self.end % 60)
    }

    fn minute_of(ms: i64) -> u32 {
        (ms.rem_euclid(DAY_MS) / 60_000) as u32
    }

    pub fn contains(&self, ms: i64) -> bool {
        let m = Window::minute_of(ms);
        if self.start < self.end { (self.start..self.end).contains(&m) } else { m >= self.start || m < self.end }
    }

    /// The next time (unix ms) the window opens at or after `ms` (`ms` itself when it is open).
    pub fn next_open(&self, ms: i64) -> i64 {
        if self.contains(ms) {
            return ms;
        }
        let day = ms - ms.rem_euclid(DAY_MS);
        let today = day + i64::from(self.start) * 60_000;
        if today > ms { today } else { today + DAY_MS }
    }
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

    #[test]
    fn windows_span_midnight_and_say_when_they_open() {
        use super::Window;
        let w: Window = "22:00-06:00".parse().unwrap();
        let at = |h: i64, m: i64| 3 * super::DAY_MS + h * 3_600_000 + m * 60_000;
        assert!(w.contains(at(23, 0)) && w.contains(at(5, 59)) && !w.contains(at(6, 0)) && !w.contains(at(12, 0)));
        assert_eq!(w.next_open(at(12, 0)), at(22, 0));
        assert_eq!(w.next_open(at(23, 30)), at(23, 30));
        let d: Window = "09:00-17:00".parse().unwrap();
        assert_eq!(d.next_open(at(18, 0)), at(24 + 9, 0));
        assert_eq!(d.to_string(), "09:00-17:00 UTC");
        for bad in ["9-17", "25:00-01:00", "10:00-10:00", "10:00", "1\u{1b}:00-02:00"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }
}
