//! What a health report may carry: one implementation, used by the hub to refuse a report and by the agent
//! to make sure it never sends one the hub would refuse (limits in the same unit, bytes, on both sides).
//!
//! Architecture invariant: a report the hub refuses never blocks the reports behind it. The agent shapes
//! every sample with [`conform`] before it enters the outbox and checks it with [`validate`]; should the
//! hub still refuse one (an older agent, a newer hub), it answers `ReportRefused` and the agent drops it,
//! counted.

use outpost_proto::v1::{AppsState, Health, Hello, Report, UsageReport, k3s, report};

use crate::text;

/// Disks per report, at most.
pub const MAX_DISKS: usize = 64;
/// Bytes per text field of a report (mount paths, K3s detail, agent version).
pub const MAX_TEXT: usize = 256;
/// Sequences, counters and backlogs are below this (at one report a second, 8.9 million years).
pub const MAX_SEQ: u64 = 1 << 48;
/// Earliest plausible sample time: 2000-01-01 (unix ms).
pub const MIN_TAKEN_AT_MS: i64 = 946_684_800_000;
/// How far ahead of the hub's clock a sample may be taken (clock skew), in ms.
pub const MAX_CLOCK_AHEAD_MS: i64 = 24 * 3600 * 1000;
/// CPU percent is at most this (100 % per core; 1,024 cores).
pub const MAX_CPU_PERCENT: f32 = 100.0 * 1024.0;

/// Apps per report, at most.
pub const MAX_APPS: usize = 64;
/// Problems listed for the cluster, at most.
pub const MAX_PROBLEMS: usize = 32;
/// Bytes of an image reference or a repository URL.
pub const MAX_LONG_TEXT: usize = 1024;
/// Deployments listed per app, at most.
pub const MAX_HISTORY: usize = 10;
/// The statuses a deployment may have.
pub const DEPLOY_STATUSES: [&str; 6] = ["pending", "rolling_out", "available", "failed", "rolled_back", "superseded"];
/// The phases an app may be in.
pub const APP_PHASES: [&str; 5] = ["available", "rolling_out", "degraded", "failed", "not_deployed"];

/// What a checked report carries.
#[derive(Debug, PartialEq)]
pub enum Body<'a> {
    Health(&'a Health),
    Apps(&'a AppsState),
    Usage(&'a UsageReport),
}

/// Checks a report; the message names the report and the field. `now_ms` is the checker's clock.
pub fn validate(r: &Report, now_ms: i64) -> Result<Body<'_>, String> {
    let seq = r.seq;
    if seq == 0 {
        return Err("report.seq must be at least 1 (sequences start at 1)".into());
    }
    if seq >= MAX_SEQ {
        return Err(format!("report.seq {seq} is implausibly large (at most 2^48)"));
    }
    if r.taken_at_ms < MIN_TAKEN_AT_MS || r.taken_at_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err(format!(
            "report {seq}: taken_at_ms {} is not a plausible unix time in ms (after 2000 and at most a day ahead of the hub's clock)",
            r.taken_at_ms
        ));
    }
    match &r.body {
        Some(report::Body::Health(_)) => validate_health(r).map(Body::Health),
        Some(report::Body::Apps(a)) => validate_apps(seq, a).map(|()| Body::Apps(a)),
        Some(report::Body::Usage(u)) => validate_usage(seq, u).map(|()| Body::Usage(u)),
        None => Err(format!("report {seq} has no body (health, apps or usage)")),
    }
}

/// Usage samples per report, at most: the host, and a namespace and an app for each of [`MAX_APPS`].
pub const MAX_USAGE_SAMPLES: usize = 1 + 2 * MAX_APPS;
/// CPU microseconds and byte figures of a usage sample are below this (2^60: 36,000 core-years, 1 EiB).
pub const MAX_USAGE_VALUE: u64 = 1 << 60;
/// The scopes a usage sample may have.
pub const USAGE_SCOPES: [&str; 3] = ["host", "namespace", "app"];

/// Checks a usage report: known scopes with valid names, each scope once, figures in range.
pub fn validate_usage(seq: u64, u: &UsageReport) -> Result<(), String> {
    if u.samples.len() > MAX_USAGE_SAMPLES {
        return Err(format!("report {seq} has {} usage samples; at most {MAX_USAGE_SAMPLES}", u.samples.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for s in &u.samples {
        let named = |n: &str| crate::cert::valid_name(n);
        let ok = match s.scope.as_str() {
            "host" => s.project.is_empty() && s.app.is_empty(),
            "namespace" => named(&s.project) && s.app.is_empty(),
            "app" => named(&s.project) && named(&s.app),
            _ => {
                return Err(format!(
                    "report {seq}: usage scope {} is not one of {}",
                    text::excerpt(&s.scope, 32),
                    USAGE_SCOPES.join(", ")
                ));
            }
        };
        if !ok {
            return Err(format!(
                "report {seq}: a {} usage sample needs {} (DNS labels), got project {} app {}",
                s.scope,
                match s.scope.as_str() {
                    "host" => "no project and no app",
                    "namespace" => "a project and no app",
                    _ => "a project and an app",
                },
                text::excerpt(&s.project, 64),
                text::excerpt(&s.app, 64)
            ));
        }
        if !seen.insert((s.scope.as_str(), s.project.as_str(), s.app.as_str())) {
            return Err(format!("report {seq}: usage scope {} {}/{} appears twice", s.scope, s.project, s.app));
        }
        for (field, v) in [
            ("cpu_usec", s.cpu_usec),
            ("memory_bytes", s.memory_bytes),
            ("memory_peak_bytes", s.memory_peak_bytes),
            ("disk_bytes", s.disk_bytes),
            ("database_bytes", s.database_bytes),
            ("egress_bytes", s.egress_bytes),
        ] {
            if v >= MAX_USAGE_VALUE {
                return Err(format!("report {seq}: usage {field} {v} is implausibly large (at most 2^60)"));
            }
        }
    }
    Ok(())
}

/// An apps report's encoded size, at most: it is kept in the server's record that every operator's fleet watch
/// carries, so one agent must not be able to make that record large (64 apps at their field limits would be
/// over a megabyte).
pub const MAX_APPS_BYTES: usize = 64 * 1024;

/// Checks an apps report's bounds and texts.
pub fn validate_apps(seq: u64, a: &AppsState) -> Result<(), String> {
    use prost::Message as _;
    if a.encoded_len() > MAX_APPS_BYTES {
        return Err(format!("report {seq}: the apps state is {} bytes; at most {MAX_APPS_BYTES}", a.encoded_len()));
    }
    if a.apps.len() > MAX_APPS {
        return Err(format!("report {seq} lists {} apps; at most {MAX_APPS}", a.apps.len()));
    }
    let cluster = a.cluster.clone().unwrap_or_default();
    if cluster.problems.len() > MAX_PROBLEMS {
        return Err(format!("report {seq} lists {} cluster problems; at most {MAX_PROBLEMS}", cluster.problems.len()));
    }
    let mut texts: Vec<(&str, &str, usize)> =
        vec![("cluster.version", a.cluster.as_ref().map_or("", |c| c.version.as_str()), MAX_TEXT)];
    for p in a.cluster.iter().flat_map(|c| c.problems.iter()) {
        texts.push(("cluster.problems", p, MAX_TEXT));
    }
    for app in &a.apps {
        if !crate::cert::valid_name(&app.name) {
            return Err(format!("report {seq}: app name {} is not a DNS label", text::excerpt(&app.name, 64)));
        }
        if !APP_PHASES.contains(&app.phase.as_str()) {
            return Err(format!(
                "report {seq}: app {}: phase {} is not one of {}",
                app.name,
                text::excerpt(&app.phase, 32),
                APP_PHASES.join(", ")
            ));
        }
        if app.history.len() > MAX_HISTORY {
            return Err(format!(
                "report {seq}: app {} lists {} deployments; at most {MAX_HISTORY}",
                app.name,
                app.history.len()
            ));
        }
        for d in &app.history {
            if !DEPLOY_STATUSES.contains(&d.status.as_str()) {
                return Err(format!(
                    "report {seq}: app {}: deployment status {} is not one of {}",
                    app.name,
                    text::excerpt(&d.status, 32),
                    DEPLOY_STATUSES.join(", ")
                ));
            }
            texts.extend([
                ("apps.history.id", d.id.as_str(), MAX_TEXT),
                ("apps.history.commit", &d.commit, MAX_TEXT),
                ("apps.history.reason", &d.reason, MAX_LONG_TEXT),
                ("apps.history.operator", &d.operator, MAX_TEXT),
            ]);
        }
        texts.extend([
            ("apps.project", app.project.as_str(), MAX_TEXT),
            ("apps.deployment", &app.deployment, MAX_TEXT),
            ("apps.commit", &app.commit, MAX_TEXT),
            ("apps.image", &app.image, MAX_LONG_TEXT),
            ("apps.last_error", &app.last_error, MAX_LONG_TEXT),
        ]);
        if let Some(r) = &app.repo {
            texts.extend([
                ("apps.repo.url", r.url.as_str(), MAX_LONG_TEXT),
                ("apps.repo.git_ref", &r.git_ref, MAX_TEXT),
                ("apps.repo.head", &r.head, MAX_TEXT),
                ("apps.repo.remote_head", &r.remote_head, MAX_TEXT),
                ("apps.repo.last_error", &r.last_error, MAX_LONG_TEXT),
                ("apps.repo.note", &r.note, MAX_LONG_TEXT),
            ]);
        }
    }
    for (field, t, max) in texts {
        if t.len() > max {
            return Err(format!("report {seq}: {field} is {} bytes; at most {max}", t.len()));
        }
        if !text::is_printable(t) {
            return Err(format!("report {seq}: {field} contains control, bidi or invisible characters"));
        }
    }
    Ok(())
}

/// Makes a locally built apps state fit [`validate_apps`]: lists bounded, texts made inert and cut, and
/// within [`MAX_APPS_BYTES`] (older deployments go first, then the last apps).
pub fn conform_apps(a: &mut AppsState) {
    fn fit(s: &mut String, max: usize) {
        if s.len() > max || !text::is_printable(s) {
            let safe = text::inert(s).into_owned();
            *s = text::truncate_bytes(&safe, max).to_string();
            if !text::is_printable(s) {
                s.clear();
            }
        }
    }
    a.apps.truncate(MAX_APPS);
    if let Some(c) = a.cluster.as_mut() {
        c.problems.truncate(MAX_PROBLEMS);
        fit(&mut c.version, MAX_TEXT);
        c.problems.iter_mut().for_each(|p| fit(p, MAX_TEXT));
    }
    for app in &mut a.apps {
        for (s, max) in [
            (&mut app.project, MAX_TEXT),
            (&mut app.deployment, MAX_TEXT),
            (&mut app.commit, MAX_TEXT),
            (&mut app.image, MAX_LONG_TEXT),
            (&mut app.last_error, MAX_LONG_TEXT),
        ] {
            fit(s, max);
        }
        app.history.truncate(MAX_HISTORY);
        for d in &mut app.history {
            for (s, max) in [
                (&mut d.id, MAX_TEXT),
                (&mut d.commit, MAX_TEXT),
                (&mut d.reason, MAX_LONG_TEXT),
                (&mut d.operator, MAX_TEXT),
            ] {
                fit(s, max);
            }
        }
        if let Some(r) = app.repo.as_mut() {
            for (s, max) in [
                (&mut r.url, MAX_LONG_TEXT),
                (&mut r.git_ref, MAX_TEXT),
                (&mut r.head, MAX_TEXT),
                (&mut r.remote_head, MAX_TEXT),
                (&mut r.last_error, MAX_LONG_TEXT),
                (&mut r.note, MAX_LONG_TEXT),
            ] {
                fit(s, max);
            }
        }
    }
    use prost::Message as _;
    while a.encoded_len() > MAX_APPS_BYTES {
        match a.apps.iter_mut().max_by_key(|x| x.history.len()).filter(|x| !x.history.is_empty()) {
            Some(x) => {
                x.history.pop();
            }
            None => {
                a.apps.pop();
            }
        }
    }
}

fn validate_health(r: &Report) -> Result<&Health, String> {
    let seq = r.seq;
    let h = health(r).ok_or_else(|| format!("report {seq} has no body (health)"))?;
    if h.disks.len() > MAX_DISKS {
        return Err(format!("report {seq} lists {} disks; at most {MAX_DISKS}", h.disks.len()));
    }
    let texts = h
        .disks
        .iter()
        .map(|d| ("disks.mount", &d.mount))
        .chain([("agent_version", &h.agent_version)])
        .chain(h.k3s.iter().map(|k| ("k3s.detail", &k.detail)))
        .chain(h.update.iter().flat_map(|u| {
            [
                ("update.from_version", &u.from_version),
                ("update.to_version", &u.to_version),
                ("update.reason", &u.reason),
            ]
        }));
    for (field, t) in texts {
        if t.len() > MAX_TEXT {
            return Err(format!("report {seq}: {field} is {} bytes; at most {MAX_TEXT}", t.len()));
        }
        if !text::is_printable(t) {
            return Err(format!("report {seq}: {field} contains control, bidi or invisible characters"));
        }
    }
    for (field, v) in [("cpu_percent", h.cpu_percent), ("load1", h.load1), ("load5", h.load5), ("load15", h.load15)] {
        if !v.is_finite() || !(0.0..=MAX_CPU_PERCENT).contains(&v) {
            return Err(format!("report {seq}: {field} {v} is not a finite value in 0..={MAX_CPU_PERCENT}"));
        }
    }
    if h.mem_used_bytes > h.mem_total_bytes || h.swap_used_bytes > h.swap_total_bytes {
        return Err(format!("report {seq}: used memory exceeds total"));
    }
    if let Some(d) = h.disks.iter().find(|d| d.available_bytes > d.total_bytes) {
        return Err(format!(
            "report {seq}: disk {:?} has {} bytes available of {} total",
            text::inert(&d.mount),
            d.available_bytes,
            d.total_bytes
        ));
    }
    if let Some(k) = &h.k3s
        && k3s::State::try_from(k.state).is_err()
    {
        return Err(format!("report {seq}: k3s.state {} is not a known state", k.state));
    }
    if let Some(u) = &h.update
        && !UPDATE_PHASES.contains(&u.phase.as_str())
    {
        return Err(format!(
            "report {seq}: update.phase {} is not one of {}",
            text::excerpt(&u.phase, 40),
            UPDATE_PHASES.join(", ")
        ));
    }
    Ok(h)
}

/// The phases of an agent's self-update a health report may name.
pub const UPDATE_PHASES: [&str; 5] = ["downloading", "staged", "trying", "committed", "rolled_back"];

/// The health a report carries, if it is a health report.
pub fn health(r: &Report) -> Option<&Health> {
    match &r.body {
        Some(report::Body::Health(h)) => Some(h),
        _ => None,
    }
}

/// A health report.
pub fn health_report(seq: u64, taken_at_ms: i64, h: Health) -> Report {
    Report { seq, taken_at_ms, body: Some(report::Body::Health(h)) }
}

/// Files an agent may list for `logs` (its `log_files`), at most.
pub const MAX_LOG_FILES: usize = 64;

/// Checks an agent's `log_files`: the hub checks the list a Hello carries, the agent its config, with this.
pub fn check_log_files<'a>(files: impl ExactSizeIterator<Item = &'a str>) -> Result<(), String> {
    if files.len() > MAX_LOG_FILES {
        return Err(format!("log_files lists {} files; at most {MAX_LOG_FILES}", files.len()));
    }
    for f in files {
        if !crate::actions::valid_log_path(f) {
            return Err(format!(
                "log_files: {} must be an absolute path without '..', at most {} bytes, without control characters",
                crate::text::excerpt(f, 64),
                crate::actions::MAX_LOG_PATH
            ));
        }
    }
    Ok(())
}

/// Checks the counters and lists in a Hello.
pub fn validate_hello(h: &Hello) -> Result<(), String> {
    check_log_files(h.log_files.iter().map(String::as_str)).map_err(|e| format!("Hello: {e}"))?;
    if h.last_seq >= MAX_SEQ || h.dropped_reports >= MAX_SEQ || h.refused_reports >= MAX_SEQ {
        return Err(format!(
            "Hello: last_seq {}, dropped_reports {}, refused_reports {} must each be below 2^48",
            h.last_seq, h.dropped_reports, h.refused_reports
        ));
    }
    if !text::is_printable(&h.agent_version) || h.agent_version.len() > MAX_TEXT {
        return Err(format!(
            "Hello: agent_version must be at most {MAX_TEXT} bytes without control, bidi or invisible characters"
        ));
    }
    check_ca_pins(&h.ca_pins).map_err(|e| format!("Hello: {e}"))
}

/// The most CAs an agent trusts at once (two during a rotation; room for one more).
pub const MAX_CA_PINS: usize = 4;

/// `ca_pins` (Hello, RenewRequest): at most [`MAX_CA_PINS`], each `sha256:` and 64 lowercase hex digits.
pub fn check_ca_pins(pins: &[String]) -> Result<(), String> {
    if pins.len() > MAX_CA_PINS {
        return Err(format!("ca_pins has {} pins; at most {MAX_CA_PINS}", pins.len()));
    }
    for p in pins {
        let hex = p.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("ca_pins holds {}, not sha256:<64 hex digits>", text::excerpt(p, 80)));
        }
    }
    Ok(())
}

/// Makes a locally taken sample fit [`validate`]: texts cut to [`MAX_TEXT`] bytes on a character boundary
/// with unsafe characters escaped (and cut again: escaping lengthens), non-finite or negative readings
/// zeroed and the rest clamped, counts bounded.
pub fn conform(h: &mut Health) {
    fn fit(s: &mut String) {
        if s.len() > MAX_TEXT || !text::is_printable(s) {
            let safe = text::inert(s).into_owned();
            *s = text::truncate_bytes(&safe, MAX_TEXT).to_string();
        }
    }
    fn reading(v: &mut f32) {
        *v = if v.is_finite() { v.clamp(0.0, MAX_CPU_PERCENT) } else { 0.0 };
    }
    h.disks.truncate(MAX_DISKS);
    for d in &mut h.disks {
        fit(&mut d.mount);
        d.available_bytes = d.available_bytes.min(d.total_bytes);
    }
    fit(&mut h.agent_version);
    if let Some(u) = &mut h.update {
        for s in [&mut u.from_version, &mut u.to_version, &mut u.reason] {
            fit(s);
        }
        if !UPDATE_PHASES.contains(&u.phase.as_str()) {
            h.update = None;
        }
    }
    if let Some(k) = &mut h.k3s {
        fit(&mut k.detail);
        if k3s::State::try_from(k.state).is_err() {
            k.state = k3s::State::Unspecified as i32;
        }
    }
    for v in [&mut h.cpu_percent, &mut h.load1, &mut h.load5, &mut h.load15] {
        reading(v);
    }
    h.mem_used_bytes = h.mem_used_bytes.min(h.mem_total_bytes);
    h.swap_used_bytes = h.swap_used_bytes.min(h.swap_total_bytes);
}

#[cfg(test)]
mod tests {
    use outpost_proto::v1::{Disk, K3s};

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn report(h: Health) -> Report {
        health_report(1, NOW, h)
    }

    #[test]
    fn apps_reports_are_bounded_and_inert() {
        use outpost_proto::v1::{AppState, AppsState, ClusterState};
        let app = |name: &str, phase: &str| AppState { name: name.into(), phase: phase.into(), ..Default::default() };
        let r = |a: AppsState| Report { seq: 1, taken_at_ms: NOW, body: Some(report::Body::Apps(a)) };
        let ok = AppsState {
            apps: vec![app("web", "available")],
            cluster: Some(ClusterState { ready: true, ..Default::default() }),
        };
        assert!(matches!(validate(&r(ok.clone()), NOW), Ok(Body::Apps(_))));
        for (bad, want) in [
            (AppsState { apps: vec![app("Web!", "available")], ..ok.clone() }, "is not a DNS label"),
            (AppsState { apps: vec![app("web", "exploded")], ..ok.clone() }, "phase \"exploded\" is not one of"),
            (
                AppsState { apps: (0..65).map(|i| app(&format!("a{i}"), "available")).collect(), ..ok.clone() },
                "at most 64",
            ),
            (
                AppsState {
                    apps: vec![AppState { last_error: "x\u{1b}[2J".into(), ..app("web", "failed") }],
                    ..ok.clone()
                },
                "apps.last_error contains control",
            ),
            (
                AppsState {
                    cluster: Some(ClusterState { problems: vec!["\u{202e}evil".into()], ..Default::default() }),
                    ..ok.clone()
                },
                "cluster.problems contains",
            ),
        ] {
            let e = validate(&r(bad), NOW).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        // Too large as a whole, though every field is within its bound.
        let long = "x".repeat(MAX_LONG_TEXT);
        let big = AppsState {
            apps: (0..64)
                .map(|i| AppState { image: long.clone(), last_error: long.clone(), ..app(&format!("a{i}"), "failed") })
                .collect(),
            ..ok.clone()
        };
        assert!(validate(&r(big.clone()), NOW).unwrap_err().contains("at most 65536"));
        let mut fitted = big;
        conform_apps(&mut fitted);
        validate(&r(fitted.clone()), NOW).unwrap();
        assert!(fitted.apps.len() < 64 && !fitted.apps.is_empty());
        // What the agent builds always passes.
        let mut messy = AppsState {
            apps: (0..70)
                .map(|i| AppState {
                    image: "i".repeat(5000),
                    last_error: "bad\u{1b}[31m".into(),
                    ..app(&format!("a{i}"), "degraded")
                })
                .collect(),
            cluster: Some(ClusterState { problems: vec!["p\u{7}".into(); 40], ..Default::default() }),
        };
        conform_apps(&mut messy);
        validate(&r(messy), NOW).unwrap();
    }

    #[test]
    fn ill_formed_reports_are_named() {
        assert!(validate(&report(Health::default()), NOW).is_ok());
        let e = validate(&Report { seq: 0, ..report(Health::default()) }, NOW).unwrap_err();
        assert!(e.contains("seq must be at least 1"), "{e}");
        let e = validate(&Report { body: None, ..report(Health::default()) }, NOW).unwrap_err();
        assert!(e.contains("has no body"), "{e}");
        let e = validate(&report(Health { mem_used_bytes: 2, ..Default::default() }), NOW).unwrap_err();
        assert!(e.contains("exceeds total"), "{e}");
        for bad in [f32::NAN, f32::INFINITY, -1.0] {
            assert!(validate(&report(Health { cpu_percent: bad, ..Default::default() }), NOW).is_err());
            assert!(validate(&report(Health { load5: bad, ..Default::default() }), NOW).is_err());
        }
        for t in [-1, 0, 1 << 62] {
            let e = validate(&Report { taken_at_ms: t, ..report(Health::default()) }, NOW).unwrap_err();
            assert!(e.contains("taken_at_ms"), "{e}");
        }
        let d = Disk { mount: "/".into(), total_bytes: 1, available_bytes: 2 };
        let e = validate(&report(Health { disks: vec![d], ..Default::default() }), NOW).unwrap_err();
        assert!(e.contains("available of 1 total"), "{e}");
        let e =
            validate(&report(Health { agent_version: "1.0\u{1b}[2J".into(), ..Default::default() }), NOW).unwrap_err();
        assert!(e.contains("agent_version contains control"), "{e}");
    }

    #[test]
    fn a_conformed_sample_always_validates() {
        let nasty = format!("/mnt/{}\u{202e}\u{1b}[2J", "é".repeat(200));
        let mut h = Health {
            cpu_percent: f32::NAN,
            load1: f32::INFINITY,
            load5: -3.0,
            mem_used_bytes: 5,
            disks: vec![Disk { mount: nasty.clone(), total_bytes: 1, available_bytes: 9 }; 70],
            k3s: Some(K3s { state: 99, detail: "é".repeat(200) }),
            agent_version: "\u{7}".repeat(300),
            ..Default::default()
        };
        assert!(validate(&report(h.clone()), NOW).is_err());
        conform(&mut h);
        validate(&report(h.clone()), NOW).unwrap();
        assert_eq!(h.disks.len(), MAX_DISKS);
        assert!(h.disks[0].mount.len() <= MAX_TEXT && h.disks[0].mount.starts_with("/mnt/é"));
    }

    /// Before the body became a oneof, `Report` had a plain `health` field 3; outboxes written then (and
    /// older agents) encode exactly what `HistoryPoint` (seq 1, taken_at_ms 2, health 3) encodes today.
    #[test]
    fn a_report_encoded_before_the_oneof_reads_back_as_a_health_report() {
        use prost::Message;
        let h = Health { cpu_percent: 12.5, agent_version: "0.1.0".into(), ..Default::default() };
        let old = outpost_proto::v1::HistoryPoint { seq: 7, taken_at_ms: NOW, health: Some(h.clone()) }.encode_to_vec();
        let r = Report::decode(old.as_slice()).unwrap();
        assert_eq!((r.seq, r.taken_at_ms, health(&r)), (7, NOW, Some(&h)));
        assert_eq!(health_report(7, NOW, h).encode_to_vec(), old, "and the new encoding is the old one");
    }

    #[test]
    fn hello_counters_are_bounded() {
        assert!(validate_hello(&Hello { last_seq: 10, ..Default::default() }).is_ok());
        let e = validate_hello(&Hello { last_seq: u64::MAX, ..Default::default() }).unwrap_err();
        assert!(e.contains("below 2^48"), "{e}");
        assert!(validate_hello(&Hello { dropped_reports: u64::MAX, ..Default::default() }).is_err());
        let files = |f: Vec<&str>| Hello { log_files: f.into_iter().map(String::from).collect(), ..Default::default() };
        assert!(validate_hello(&files(vec!["/var/log/app.log"])).is_ok());
        for bad in [vec!["relative.log"], vec!["/a/../etc/shadow"], vec!["/x\u{1b}[2J"], vec!["/a"; 65]] {
            assert!(validate_hello(&files(bad.clone())).unwrap_err().starts_with("Hello: log_files"), "{bad:?}");
        }
    }
}
