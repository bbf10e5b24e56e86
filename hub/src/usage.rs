//! Usage: the agents' usage reports rolled up per server, scope (host, project, app), hour and day; compared
//! with the customer's plan and priced from `[usage]` in hubd.toml.
//!
//! Agents send counters (CPU time, egress) and gauges (memory, disk, database). The hub keeps each
//! server's counters at its last report (the cursor) and adds the differences to the hour and the day the
//! report was taken in; a counter that went down was reset (a restarted agentd, a rebooted host) and its
//! new value is what was used since. The buckets and the cursor are one atomic write, so a report is
//! counted exactly once (reports come in seq order under the server's lock, and a replayed one is known by
//! the cursor's seq). Hourly buckets are kept `hourly_retention_days`, daily ones `daily_retention_days`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_common::app::PlanLimits;
use outpost_proto::v1::{AppsState, UsageReport};
use serde::Deserialize;

use crate::error::HubError;
use crate::limits::LogLimiter;
use crate::runtime::Runtime;
use crate::store::{ReportStore, Resolution, ScopeUsage, ServerRecord, UsageBucket, UsageCounters};

/// A difference between two reports covers at most this long for the memory average (a server that was
/// off for a day did not use its last memory figure all day).
const MAX_GAP_SECS: f64 = 900.0;
/// CPU a sample may claim per second of wall time, at most (1,024 cores).
const MAX_CORES: f64 = 1024.0;
/// Bytes a server can send per second of wall time, at most (400 Gbit/s: more than any NIC a cloud sells).
const MAX_EGRESS_PER_SEC: f64 = 50e9;
/// The most memory one sample may claim (64 TiB: beyond the largest machines sold).
const MAX_MEMORY_BYTES: u64 = 64 << 40;
/// The most disk or database storage one sample may claim (1 PiB).
const MAX_STORAGE_BYTES: u64 = 1 << 50;
const GIB: f64 = (1u64 << 30) as f64;

/// `[usage]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    pub hourly_retention_days: u32,
    pub daily_retention_days: u32,
    /// What the prices are in (only shown).
    pub currency: String,
    pub prices: Prices,
    /// Plan limits in place of the product's (`[usage.plans.pro]` with `cpu_millis`, `memory_bytes`,
    /// `storage_bytes`); the agents' `[plans]` should say the same.
    pub plans: BTreeMap<String, PlanLimits>,
}

/// `[usage.prices]`: a customer's month costs its server's type (prorated by the time its agent
/// reported) plus its projects' usage.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prices {
    /// A month of each server type (`cx22 = 3.79`); the plan's type comes from `[provision.plans]`.
    pub server_types: BTreeMap<String, f64>,
    pub cpu_core_hour: f64,
    pub memory_gib_hour: f64,
    pub egress_gib: f64,
    /// A GiB of database storage for a month (its peak in the month).
    pub database_gib_month: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            server_types: [("cx22", 3.79), ("cx32", 6.80), ("cx42", 16.40), ("cx52", 32.40)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            cpu_core_hour: 0.0,
            memory_gib_hour: 0.0,
            egress_gib: 0.0,
            database_gib_month: 0.0,
        }
    }
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            hourly_retention_days: 30,
            daily_retention_days: 400,
            currency: "EUR".into(),
            prices: Prices::default(),
            plans: BTreeMap::new(),
        }
    }
}

impl UsageConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(1..=3650).contains(&self.hourly_retention_days) || !(1..=3650).contains(&self.daily_retention_days) {
            p.push("usage.hourly_retention_days and daily_retention_days: 1 to 3650".into());
        }
        let pr = &self.prices;
        let prices = [
            ("cpu_core_hour", pr.cpu_core_hour),
            ("memory_gib_hour", pr.memory_gib_hour),
            ("egress_gib", pr.egress_gib),
            ("database_gib_month", pr.database_gib_month),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(pr.server_types.iter().map(|(k, v)| (format!("server_types.{k}"), *v)));
        for (k, v) in prices {
            if !v.is_finite() || v < 0.0 {
                p.push(format!("usage.prices.{k}: {v} is not a price (a number of at least 0)"));
            }
        }
        for (name, l) in &self.plans {
            if l.cpu_millis == 0 || l.memory_bytes == 0 || l.storage_bytes == 0 {
                p.push(format!("usage.plans.{name}: cpu_millis, memory_bytes and storage_bytes above 0"));
            }
        }
        p
    }
}

/// The usage book: ingest, queries, retention.
pub struct UsageBook {
    config: UsageConfig,
    store: Arc<dyn ReportStore>,
    /// plan → server type (`[provision.plans]`).
    server_types: BTreeMap<String, String>,
    /// Each server's highest use of its plan in its current hour, percent (the `usage_over_plan_percent`
    /// alert metric).
    over_plan: Mutex<HashMap<String, f64>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The scope's key in a bucket.
fn scope_key(scope: &str, project: &str, app: &str) -> String {
    match scope {
        "host" => "host".into(),
        "namespace" => format!("namespace/{project}"),
        _ => format!("app/{project}/{app}"),
    }
}

/// The bucket's usage of scope `key`, added empty when it has none.
pub fn scope_of<'a>(b: &'a mut UsageBucket, key: &str) -> &'a mut ScopeUsage {
    let i = match b.scopes.iter().position(|s| s.scope == key) {
        Some(i) => i,
        None => {
            b.scopes.push(ScopeUsage { scope: key.to_string(), ..Default::default() });
            b.scopes.len() - 1
        }
    };
    &mut b.scopes[i]
}

/// One scope's difference since the cursor.
struct Delta {
    cpu_seconds: f64,
    egress_bytes: u64,
    secs: f64,
    reset: bool,
}

impl UsageBook {
    pub fn new(
        config: UsageConfig,
        store: Arc<dyn ReportStore>,
        server_types: BTreeMap<String, String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> UsageBook {
        UsageBook { metrics, config, store, server_types, over_plan: Mutex::default() }
    }

    pub fn limits(&self, plan: &str) -> Option<PlanLimits> {
        self.config.plans.get(plan).copied().or_else(|| PlanLimits::named(plan))
    }

    /// Each server's highest use of its plan this hour, percent.
    pub fn over_plan(&self) -> HashMap<String, f64> {
        self.over_plan.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn drop_sample(&self, log: &LogLimiter, server: &str, why: &str) {
        self.metrics.usage_dropped();
        if let Some(repeated) = log.allow("usage sample dropped", server) {
            tracing::warn!(server, repeated, why = %outpost_common::text::Inert(why), "usage sample dropped");
        }
    }

    /// Counts usage report `seq` of `record.name` (taken at `taken_at_ms`) and stores `record`, which
    /// carries the new high-water mark. The caller holds the server's lock and has checked that `seq` is
    /// new. `apps` is the server's latest apps state: samples of apps it does not list are dropped.
    pub async fn ingest(
        &self,
        record: &ServerRecord,
        seq: u64,
        taken_at_ms: i64,
        report: &UsageReport,
        apps: Option<&AppsState>,
        log: &LogLimiter,
    ) -> Result<(), HubError> {
        let server = record.name.as_str();
        let mut cursor = self.store.usage_cursor(server).await?.unwrap_or_default();
        if cursor.seq >= seq {
            // Counted before the hub died, before the high-water mark was written: only the mark moves.
            self.store.put_server(record).await?;
            return Ok(());
        }
        cursor.seq = seq;
        let now = outpost_common::now_ms();
        let too_old = taken_at_ms < now - i64::from(self.config.daily_retention_days) * Resolution::Day.ms();
        let (hour, day) = (Resolution::Hour.start(taken_at_ms), Resolution::Day.start(taken_at_ms));
        let bucket = async |res: Resolution, start: i64| -> Result<UsageBucket, HubError> {
            let mut b = self.store.usage_bucket(res, start, &record.customer, server).await?.unwrap_or_default();
            b.customer.clone_from(&record.customer);
            b.plan.clone_from(&record.plan);
            Ok(b)
        };
        let (mut hb, mut db) = (bucket(Resolution::Hour, hour).await?, bucket(Resolution::Day, day).await?);
        // A customer's server runs one project, the customer's own namespace: whatever its apps report
        // names, a row named after another project never gets into this customer's bill.
        let known_project = |project: &str| !project.is_empty() && project == record.customer;
        let known_app = |project: &str, app: &str| {
            known_project(project) && apps.is_some_and(|a| a.apps.iter().any(|x| x.project == project && x.name == app))
        };
        for s in &report.samples {
            let key = scope_key(&s.scope, &s.project, &s.app);
            if s.scope == "app" && !known_app(&s.project, &s.app) {
                self.drop_sample(log, server, &format!("{key}: no such app on this server"));
                continue;
            }
            if s.scope == "namespace" && !known_project(&s.project) {
                self.drop_sample(log, server, &format!("{key}: no such project on this server"));
                continue;
            }
            if s.memory_bytes > MAX_MEMORY_BYTES
                || s.memory_peak_bytes > MAX_MEMORY_BYTES
                || s.disk_bytes > MAX_STORAGE_BYTES
                || s.database_bytes > MAX_STORAGE_BYTES
            {
                self.drop_sample(
                    log,
                    server,
                    &format!("{key}: more memory (64 TiB) or storage (1 PiB) than a server has"),
                );
                continue;
            }
            let prev = cursor
                .scopes
                .insert(key.clone(), UsageCounters { cpu_usec: s.cpu_usec, egress_bytes: s.egress_bytes, taken_at_ms });
            if too_old {
                continue; // the cursor moves on; there is no bucket left to count it in
            }
            let d = match prev {
                // The first report of a scope is where its counters start.
                None => Delta { cpu_seconds: 0.0, egress_bytes: 0, secs: 0.0, reset: false },
                Some(p) => {
                    let reset = s.cpu_usec < p.cpu_usec || s.egress_bytes < p.egress_bytes;
                    let grew = |now: u64, before: u64| if now >= before { now - before } else { now };
                    Delta {
                        cpu_seconds: grew(s.cpu_usec, p.cpu_usec) as f64 / 1e6,
                        egress_bytes: grew(s.egress_bytes, p.egress_bytes),
                        secs: ((taken_at_ms - p.taken_at_ms) as f64 / 1000.0).max(0.0),
                        reset,
                    }
                }
            };
            if d.reset {
                self.metrics.usage_reset();
                if let Some(repeated) = log.allow("usage counter reset", server) {
                    tracing::info!(server, scope = %key, repeated, "a usage counter went down: taken as a reset");
                }
            }
            let implausible = if d.cpu_seconds > d.secs.max(1.0) * MAX_CORES {
                Some(format!("{:.0} CPU seconds in {:.0} s is more than {MAX_CORES} cores", d.cpu_seconds, d.secs))
            } else if d.egress_bytes as f64 > d.secs.max(1.0) * MAX_EGRESS_PER_SEC {
                Some(format!("{} bytes sent in {:.0} s is more than 400 Gbit/s", d.egress_bytes, d.secs))
            } else {
                None
            };
            if prev.is_some()
                && let Some(why) = implausible
            {
                // The next difference is taken from the counters before this claim.
                if let Some(p) = prev {
                    cursor.scopes.insert(key.clone(), p);
                }
                self.drop_sample(log, server, &format!("{key}: {why}"));
                continue;
            }
            for b in [&mut hb, &mut db] {
                let u = scope_of(b, &key);
                let covered = d.secs.min(MAX_GAP_SECS);
                u.cpu_seconds += d.cpu_seconds;
                u.egress_bytes = u.egress_bytes.saturating_add(d.egress_bytes);
                u.memory_byte_seconds += s.memory_bytes as f64 * covered;
                u.covered_secs += covered;
                u.memory_peak_bytes = u.memory_peak_bytes.max(s.memory_peak_bytes.max(s.memory_bytes));
                u.memory_last_bytes = s.memory_bytes;
                u.disk_bytes_max = u.disk_bytes_max.max(s.disk_bytes);
                u.database_bytes_max = u.database_bytes_max.max(s.database_bytes);
                u.samples += 1;
                u.resets += u32::from(d.reset);
            }
        }
        if too_old {
            self.drop_sample(log, server, &format!("report {seq} was taken before the daily retention"));
            self.store.record_usage(record, &cursor, &[]).await?;
            return Ok(());
        }
        if hour == Resolution::Hour.start(now)
            && let Some(limits) = self.limits(&record.plan)
        {
            let pct = plan_use(&hb, &limits).into_iter().map(|(_, p, _)| p).fold(0.0, f64::max);
            self.over_plan.lock().unwrap_or_else(|p| p.into_inner()).insert(server.to_string(), pct);
        }
        self.store.record_usage(record, &cursor, &[(Resolution::Hour, hour, hb), (Resolution::Day, day, db)]).await?;
        Ok(())
    }

    /// Deletes buckets past their retention, every hour.
    pub fn spawn(self: &Arc<Self>, rt: &Runtime) {
        let me = self.clone();
        rt.every_once("usage retention", Duration::from_secs(3600), move || {
            let me = me.clone();
            async move {
                if let Err(error) = me.trim(outpost_common::now_ms()).await {
                    tracing::error!(%error, "usage retention failed");
                }
            }
        });
    }

    pub async fn trim(&self, now_ms: i64) -> Result<usize, HubError> {
        let day = Resolution::Day.ms();
        let h = self
            .store
            .trim_usage(Resolution::Hour, now_ms - i64::from(self.config.hourly_retention_days) * day)
            .await?;
        let d =
            self.store.trim_usage(Resolution::Day, now_ms - i64::from(self.config.daily_retention_days) * day).await?;
        if h + d > 0 {
            tracing::info!(hourly = h, daily = d, "usage past its retention deleted");
        }
        Ok(h + d)
    }

    /// A customer's usage in a month (`2026-11`), per server and scope, per day, against the plan, priced.
    pub async fn month(&self, customer: &str, month: &str) -> Result<MonthUsage, HubError> {
        let (from, to) = month_range(month)?;
        let buckets = self.store.usage_between(Resolution::Day, from, to, Some(customer)).await?;
        let mut rows: BTreeMap<(String, String), ScopeUsage> = BTreeMap::new();
        let mut days: BTreeMap<i64, DayUsage> = BTreeMap::new();
        let mut host_secs: BTreeMap<String, (f64, String)> = BTreeMap::new();
        // A customer may have servers on several plans: each plan's servers against that plan's limits
        // (a plan's limits are per server: n servers on a plan allow n times them).
        let mut per_plan: BTreeMap<String, (ScopeUsage, std::collections::BTreeSet<String>)> = BTreeMap::new();
        for (start, server, b) in &buckets {
            let day = days.entry(*start).or_insert(DayUsage { start_ms: *start, ..Default::default() });
            for s in &b.scopes {
                add(rows.entry((server.clone(), s.scope.clone())).or_default(), s);
                if s.scope.starts_with("namespace/") {
                    day.cpu_seconds += s.cpu_seconds;
                    day.covered_secs = day.covered_secs.max(s.covered_secs);
                    day.memory_peak_bytes = day.memory_peak_bytes.saturating_add(s.memory_peak_bytes);
                    day.database_bytes = day.database_bytes.saturating_add(s.database_bytes_max);
                    day.egress_bytes = day.egress_bytes.saturating_add(s.egress_bytes);
                    let e = per_plan.entry(b.plan.clone()).or_default();
                    e.1.insert(server.clone());
                }
                if s.scope == "host" {
                    let e = host_secs.entry(server.clone()).or_insert((0.0, b.plan.clone()));
                    e.0 += s.covered_secs;
                    e.1.clone_from(&b.plan);
                }
            }
        }
        // The customer's projects, all servers together, and per plan.
        let mut projects = ScopeUsage::default();
        for ((server, scope), u) in &rows {
            if scope.starts_with("namespace/") {
                add(&mut projects, u);
                if let Some((_, (sum, _))) = per_plan.iter_mut().find(|(_, (_, servers))| servers.contains(server)) {
                    add(sum, u);
                }
            }
        }
        let several = per_plan.len() > 1;
        let mut limits: Option<PlanLimits> = None;
        let mut over_plan = Vec::new();
        for (plan, (u, servers)) in &per_plan {
            let Some(l) = self.limits(plan) else { continue };
            let n = servers.len().max(1) as u64;
            let l = PlanLimits {
                cpu_millis: l.cpu_millis * n,
                memory_bytes: l.memory_bytes * n,
                storage_bytes: l.storage_bytes * n,
            };
            limits = Some(match limits {
                None => l,
                Some(t) => PlanLimits {
                    cpu_millis: t.cpu_millis + l.cpu_millis,
                    memory_bytes: t.memory_bytes + l.memory_bytes,
                    storage_bytes: t.storage_bytes + l.storage_bytes,
                },
            });
            let bucket = UsageBucket {
                scopes: vec![ScopeUsage { scope: "namespace/*".into(), ..u.clone() }],
                ..Default::default()
            };
            for (what, pct, words) in plan_use(&bucket, &l) {
                let on = if n > 1 { format!("{plan} ×{n}") } else { plan.clone() };
                over_plan.push(if several {
                    (format!("{plan} {what}"), pct, format!("{on}: {words}"))
                } else {
                    (what.to_string(), pct, if n > 1 { format!("{on}: {words}") } else { words })
                });
            }
        }
        let plan = per_plan.keys().cloned().collect::<Vec<_>>().join(" + ");
        let p = &self.config.prices;
        let month_secs = ((to - from) / 1000) as f64;
        let server_cost: f64 = host_secs
            .values()
            .map(|(secs, plan)| {
                let price = self.server_types.get(plan).and_then(|t| p.server_types.get(t)).copied().unwrap_or(0.0);
                price * (secs / month_secs).min(1.0)
            })
            .sum();
        let cost = Cost {
            server: server_cost,
            cpu: projects.cpu_seconds / 3600.0 * p.cpu_core_hour,
            memory: projects.memory_byte_seconds / GIB / 3600.0 * p.memory_gib_hour,
            egress: projects.egress_bytes as f64 / GIB * p.egress_gib,
            database: projects.database_bytes_max as f64 / GIB * p.database_gib_month,
        };
        Ok(MonthUsage {
            customer: customer.to_string(),
            month: month.to_string(),
            plan,
            limits,
            currency: self.config.currency.clone(),
            rows: rows.into_iter().map(|((server, _), u)| (server, u)).collect(),
            days: days.into_values().collect(),
            over_plan,
            cost,
        })
    }
}

/// `s` added into `to`, as a longer period holds its parts (sums, maxima, the last value).
pub fn add(to: &mut ScopeUsage, s: &ScopeUsage) {
    to.scope.clone_from(&s.scope);
    to.cpu_seconds += s.cpu_seconds;
    to.memory_byte_seconds += s.memory_byte_seconds;
    to.covered_secs += s.covered_secs;
    to.memory_peak_bytes = to.memory_peak_bytes.max(s.memory_peak_bytes);
    to.memory_last_bytes = s.memory_last_bytes;
    to.disk_bytes_max = to.disk_bytes_max.max(s.disk_bytes_max);
    to.database_bytes_max = to.database_bytes_max.max(s.database_bytes_max);
    to.egress_bytes = to.egress_bytes.saturating_add(s.egress_bytes);
    to.samples += s.samples;
    to.resets += s.resets;
}

/// How a bucket's projects (all `namespace/…` scopes together) use the plan: (what, percent, in words).
pub fn plan_use(b: &UsageBucket, l: &PlanLimits) -> Vec<(&'static str, f64, String)> {
    let mut cpu = 0.0;
    let mut covered: f64 = 0.0;
    let (mut mem, mut db) = (0u64, 0u64);
    for s in b.scopes.iter().filter(|s| s.scope.starts_with("namespace/")) {
        cpu += s.cpu_seconds;
        covered = covered.max(s.covered_secs);
        mem = mem.saturating_add(s.memory_peak_bytes);
        db = db.saturating_add(s.database_bytes_max);
    }
    let cores = if covered > 0.0 { cpu / covered } else { 0.0 };
    let limit_cores = l.cpu_millis as f64 / 1000.0;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    vec![
        ("cpu", 100.0 * cores / limit_cores, format!("CPU averaged {cores:.2} cores of the plan's {limit_cores:.2}")),
        (
            "memory",
            100.0 * mem as f64 / l.memory_bytes as f64,
            format!("memory peaked at {:.0} MiB of the plan's {:.0} MiB", mib(mem), mib(l.memory_bytes)),
        ),
        (
            "database",
            100.0 * db as f64 / l.storage_bytes as f64,
            format!("database storage reached {:.0} MiB of the plan's {:.0} MiB", mib(db), mib(l.storage_bytes)),
        ),
    ]
}

/// `2026-11` → [its first ms, the next month's first ms).
pub fn month_range(month: &str) -> Result<(i64, i64), HubError> {
    let bad = || {
        HubError::Invalid(format!(
            "month {:?}: expected YYYY-MM, e.g. 2026-11",
            outpost_common::text::excerpt(month, 32)
        ))
    };
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(2000..=9999).contains(&y) || !(1..=12).contains(&m) || month.len() != 7 {
        return Err(bad());
    }
    let first = |y: i32, m: u32| {
        time::Date::from_calendar_date(y, time::Month::try_from(m as u8).expect("1..=12"), 1)
            .expect("valid date")
            .midnight()
            .assume_utc()
            .unix_timestamp()
            * 1000
    };
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Ok((first(y, m), first(ny, nm)))
}

/// The month that `ms` is in.
pub fn month_of(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}", t.year(), u8::from(t.month()))
}

/// One day of a customer's projects.
#[derive(Clone, Debug, Default)]
pub struct DayUsage {
    pub start_ms: i64,
    pub cpu_seconds: f64,
    pub covered_secs: f64,
    pub memory_peak_bytes: u64,
    pub database_bytes: u64,
    pub egress_bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Cost {
    pub server: f64,
    pub cpu: f64,
    pub memory: f64,
    pub egress: f64,
    pub database: f64,
}

impl Cost {
    pub fn total(&self) -> f64 {
        self.server + self.cpu + self.memory + self.egress + self.database
    }
}

/// A customer's month.
#[derive(Clone, Debug)]
pub struct MonthUsage {
    pub customer: String,
    pub month: String,
    pub plan: String,
    pub limits: Option<PlanLimits>,
    pub currency: String,
    /// (server, the scope's month).
    pub rows: Vec<(String, ScopeUsage)>,
    pub days: Vec<DayUsage>,
    /// (what, percent of the plan, in words) for the projects' peak use in the month; per plan ("starter
    /// cpu") when the customer's servers are on several.
    pub over_plan: Vec<(String, f64, String)>,
    pub cost: Cost,
}

#[cfg(test)]
mod tests {
    use super::*;

    use outpost_proto::v1::{AppState, UsageSample};

    const MIB: u64 = 1 << 20;
    const GIB_U: u64 = 1 << 30;

    fn ns(cpu_s: u64, egress: u64, mem: u64, db: u64) -> UsageSample {
        UsageSample {
            scope: "namespace".into(),
            project: "acme".into(),
            cpu_usec: cpu_s * 1_000_000,
            egress_bytes: egress,
            memory_bytes: mem,
            memory_peak_bytes: mem,
            database_bytes: db,
            ..Default::default()
        }
    }

    fn app(name: &str, cpu_s: u64) -> UsageSample {
        UsageSample {
            scope: "app".into(),
            project: "acme".into(),
            app: name.into(),
            cpu_usec: cpu_s * 1_000_000,
            ..Default::default()
        }
    }

    fn host(cpu_s: u64) -> UsageSample {
        UsageSample { scope: "host".into(), cpu_usec: cpu_s * 1_000_000, ..Default::default() }
    }

    /// Reports over two simulated days, with a reset, a replay after a "crash" between the usage write and
    /// the high-water mark, an app that does not exist and an implausible counter: every figure by hand.
    #[tokio::test]
    async fn usage_is_rolled_up_once_with_resets_against_the_plan_and_priced() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::HubStore> =
            Arc::new(crate::store::sled::SledStore::open(dir.path(), 8).unwrap());
        let mut config = UsageConfig::default();
        config.prices.cpu_core_hour = 0.5;
        config.prices.egress_gib = 1.0;
        config.prices.server_types.insert("cx22".into(), 30.0);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let book = UsageBook::new(
            config,
            store.clone(),
            [("starter".to_string(), "cx22".to_string())].into(),
            metrics.clone(),
        );
        let log = LogLimiter::default();
        let apps = AppsState {
            apps: vec![AppState { name: "web".into(), project: "acme".into(), ..Default::default() }],
            ..Default::default()
        };
        let mut rec =
            ServerRecord { name: "s1".into(), customer: "acme".into(), plan: "starter".into(), ..Default::default() };
        let (from, _) = month_range(&month_of(outpost_common::now_ms() - 40 * 86_400_000)).unwrap();
        let d0 = from + 9 * 86_400_000 + 10 * 3_600_000; // the 10th, 10:00
        let send = async |t: i64, samples: Vec<UsageSample>, rec: &mut ServerRecord| {
            rec.last_seq += 1;
            book.ingest(rec, rec.last_seq, t, &UsageReport { samples }, Some(&apps), &log).await.unwrap();
        };
        // The first report is where the counters start.
        send(d0, vec![host(1000), ns(10, 1000, 100 * MIB, 50 * MIB), app("web", 10)], &mut rec).await;
        // +60 s: 30 CPU seconds, 1 GiB out, 300 MiB.
        send(
            d0 + 60_000,
            vec![host(1060), ns(40, 1000 + GIB_U, 300 * MIB, 50 * MIB), app("web", 40), app("ghost", 1)],
            &mut rec,
        )
        .await;
        // +120 s: the CPU counter went down (agentd restarted): 5 s since. Egress grew by another GiB.
        send(d0 + 120_000, vec![host(1120), ns(5, 1000 + 2 * GIB_U, 300 * MIB, 60 * MIB), app("web", 5)], &mut rec)
            .await;
        assert_eq!(metrics.usage_counts(), (1, 2), "a sample of an app that does not exist dropped; two resets");
        // The same report again (the hub died after the usage write, before the mark): counted once.
        book.ingest(
            &rec,
            rec.last_seq,
            d0 + 120_000,
            &UsageReport { samples: vec![ns(5, 1000 + 2 * GIB_U, 0, 0)] },
            Some(&apps),
            &log,
        )
        .await
        .unwrap();
        // The next day: a claim of 10,000 cores is dropped; then 3600 s of CPU, 600 MiB (over the plan's 512).
        send(d0 + 86_400_000, vec![ns(1_000_000_000, 1000 + 2 * GIB_U, 0, 0)], &mut rec).await;
        assert_eq!(metrics.usage_counts().0, 2, "an implausible CPU claim is dropped");
        send(d0 + 86_400_000 + 60_000, vec![host(5000), ns(3605, 1000 + 2 * GIB_U, 600 * MIB, 60 * MIB)], &mut rec)
            .await;

        let m = book.month("acme", &month_of(d0)).await.unwrap();
        let row = |scope: &str| m.rows.iter().find(|(_, u)| u.scope == scope).map(|(_, u)| u.clone()).unwrap();
        let n = row("namespace/acme");
        // The dropped claim moved nothing: 3600 s after the reset's 5 s.
        assert_eq!(n.cpu_seconds, 30.0 + 5.0 + 3600.0);
        assert_eq!(n.egress_bytes, 2 * GIB_U);
        assert_eq!(n.memory_peak_bytes, 600 * MIB);
        assert_eq!(n.database_bytes_max, 60 * MIB);
        assert_eq!(n.resets, 1);
        assert_eq!(row("app/acme/web").cpu_seconds, 35.0);
        assert!(!m.rows.iter().any(|(_, u)| u.scope.contains("ghost")));
        assert_eq!(m.days.len(), 2);
        assert_eq!(m.days[0].cpu_seconds, 35.0);
        assert_eq!(m.days[1].memory_peak_bytes, 600 * MIB);
        // Against the starter plan: memory 600/512 = 117 %.
        let memory = m.over_plan.iter().find(|(w, _, _)| *w == "memory").unwrap();
        assert!((memory.1 - 117.1875).abs() < 1e-9, "{memory:?}");
        // Priced: CPU 3635 s = 1.0097 core-hours at 0.5; egress 2 GiB at 1.0; the server 30 a month for the
        // time its host reported: 60 + 60 s, then the day's gap counted as 900 s (the cap).
        assert!((m.cost.cpu - 3635.0 / 3600.0 * 0.5).abs() < 1e-9, "{:?}", m.cost);
        assert!((m.cost.egress - 2.0).abs() < 1e-9, "{:?}", m.cost);
        let host_secs = row("host").covered_secs;
        assert_eq!(host_secs, 1020.0);
        let (f, t) = month_range(&m.month).unwrap();
        assert!((m.cost.server - 30.0 * host_secs / ((t - f) / 1000) as f64).abs() < 1e-9);
        assert_eq!(m.plan, "starter");
        // Too old for the daily retention: dropped, counted, nothing stored.
        let before = store.usage_between(Resolution::Day, 0, i64::MAX, None).await.unwrap().len();
        send(outpost_common::now_ms() - 500 * 86_400_000, vec![host(1)], &mut rec).await;
        assert_eq!(store.usage_between(Resolution::Day, 0, i64::MAX, None).await.unwrap().len(), before);
        assert_eq!(metrics.usage_counts().0, 3);
        // Retention: the hourly buckets of 40 days ago go, the daily ones stay.
        assert!(book.trim(outpost_common::now_ms()).await.unwrap() >= 2);
        assert!(store.usage_between(Resolution::Hour, 0, i64::MAX, None).await.unwrap().is_empty());
        assert_eq!(store.usage_between(Resolution::Day, 0, i64::MAX, None).await.unwrap().len(), before);
    }

    /// An agent that names another customer's project, or claims more than a server can do, moves nothing.
    #[tokio::test]
    async fn another_customers_project_and_impossible_figures_never_reach_the_bill() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::HubStore> =
            Arc::new(crate::store::sled::SledStore::open(dir.path(), 8).unwrap());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let book = UsageBook::new(UsageConfig::default(), store.clone(), Default::default(), metrics.clone());
        let log = LogLimiter::default();
        // The hostile apps report names the victim's project as if it ran here.
        let apps = AppsState {
            apps: vec![
                AppState { name: "web".into(), project: "acme".into(), ..Default::default() },
                AppState { name: "db".into(), project: "victim-prod".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let mut rec =
            ServerRecord { name: "s1".into(), customer: "acme".into(), plan: "starter".into(), ..Default::default() };
        let t0 = outpost_common::now_ms() - 3_600_000;
        let victim = |cpu_s: u64| UsageSample { project: "victim-prod".into(), ..ns(cpu_s, 0, MIB, 0) };
        let victim_app =
            UsageSample { scope: "app".into(), project: "victim-prod".into(), app: "db".into(), ..Default::default() };
        let huge = UsageSample { memory_bytes: 1 << 60, ..ns(0, 0, 0, 0) };
        for (i, samples) in [
            vec![victim(10), victim_app.clone(), ns(10, 0, MIB, 0)],
            vec![victim(20), victim_app, huge, ns(20, 0, MIB, 0)],
            // 1 EiB sent in a minute.
            vec![ns(30, 1 << 60, MIB, 0)],
        ]
        .into_iter()
        .enumerate()
        {
            rec.last_seq += 1;
            let t = t0 + i as i64 * 60_000;
            book.ingest(&rec, rec.last_seq, t, &UsageReport { samples }, Some(&apps), &log).await.unwrap();
        }
        let m = book.month("acme", &month_of(t0)).await.unwrap();
        let scopes: Vec<&str> = m.rows.iter().map(|(_, u)| u.scope.as_str()).collect();
        assert!(!scopes.iter().any(|s| s.contains("victim")), "{scopes:?}");
        let n = m.rows.iter().find(|(_, u)| u.scope == "namespace/acme").map(|(_, u)| u.clone()).unwrap();
        assert_eq!(n.egress_bytes, 0, "the exabyte was dropped");
        assert!(n.memory_peak_bytes <= MIB, "the 2^60-byte sample was dropped: {}", n.memory_peak_bytes);
        assert_eq!(metrics.usage_counts().0, 6, "victim ×4, memory, egress");
    }

    #[test]
    fn months_are_checked_and_ranged() {
        let (from, to) = month_range("2026-11").unwrap();
        assert_eq!((to - from) / 86_400_000, 30);
        assert_eq!(month_of(from), "2026-11");
        assert_eq!(month_of(to), "2026-12");
        let (from, to) = month_range("2026-12").unwrap();
        assert_eq!(((to - from) / 86_400_000, month_of(to)), (31, "2027-01".to_string()));
        for bad in ["2026-13", "2026-1", "26-11", "november", "2026-00", ""] {
            let e = month_range(bad).unwrap_err().to_string();
            assert!(e.contains("YYYY-MM"), "{bad}: {e}");
        }
    }

    #[test]
    fn prices_and_retention_are_checked() {
        let mut c = UsageConfig::default();
        assert!(c.problems().is_empty());
        c.prices.egress_gib = -1.0;
        c.prices.server_types.insert("cx22".into(), f64::NAN);
        c.hourly_retention_days = 0;
        let p = c.problems().join("\n");
        assert!(
            p.contains("usage.prices.egress_gib") && p.contains("server_types.cx22") && p.contains("retention"),
            "{p}"
        );
    }

    /// A customer with servers on two plans is measured against each plan, not the last one seen.
    #[tokio::test]
    async fn a_customer_on_two_plans_is_measured_against_each() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn crate::store::HubStore> =
            Arc::new(crate::store::sled::SledStore::open(dir.path(), 8).unwrap());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let book = UsageBook::new(UsageConfig::default(), store.clone(), BTreeMap::new(), metrics);
        let log = LogLimiter::default();
        let (from, _) = month_range(&month_of(outpost_common::now_ms() - 40 * 86_400_000)).unwrap();
        let t0 = from + 3 * 86_400_000;
        // 400 MiB on the starter server (of 512), 1.5 GiB on the team server (of 2 GiB): both under their
        // own plan, though 1.9 GiB is far over starter's and would look fine against team's alone.
        for (name, plan, mem) in [("s1", "starter", 400 * MIB), ("t1", "team", 1536 * MIB)] {
            let mut rec =
                ServerRecord { name: name.into(), customer: "acme".into(), plan: plan.into(), ..Default::default() };
            for (i, t) in [t0, t0 + 60_000].into_iter().enumerate() {
                rec.last_seq += 1;
                let report = UsageReport { samples: vec![ns(10 * i as u64, 0, mem, 0)] };
                book.ingest(&rec, rec.last_seq, t, &report, None, &log).await.unwrap();
            }
        }
        let m = book.month("acme", &month_of(t0)).await.unwrap();
        assert_eq!(m.plan, "starter + team");
        let memory = |what: &str| m.over_plan.iter().find(|(w, _, _)| w == what).unwrap().clone();
        let (_, starter, words) = memory("starter memory");
        assert!((starter - 400.0 / 512.0 * 100.0).abs() < 1e-9 && words.starts_with("starter: "), "{words}");
        let (_, team, _) = memory("team memory");
        assert!((team - 75.0).abs() < 1e-9, "{team}");
        // The charts' plan line is both plans together.
        let limits = m.limits.unwrap();
        assert_eq!(limits.memory_bytes, (512 + 2048) * MIB);
    }
}
