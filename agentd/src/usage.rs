//! Usage: what the server, each customer project (namespace) and each app used, measured from what the
//! kernel and K3s expose, and reported through the outbox like health (exactly once).
//!
//! - Host: CPU time from `/proc/stat`, memory, disk and egress from the health sample, the instance
//!   database's size on disk.
//! - Apps: each managed pod's cgroup v2 directory (found by the pod's uid under `kubepods*`, with the
//!   systemd or the cgroupfs driver's names): `cpu.stat` `usage_usec`, `memory.current`; egress from
//!   `/proc/PID/net/dev` of a process in the pod (its network namespace). A pod's counters die with the pod,
//!   so the agent sums the increases of every pod it saw into one counter per app: a replaced pod never
//!   makes an app's counter go down. The counters start at zero when agentd starts (the hub treats the
//!   decrease as a reset).
//! - Projects: the sum of their apps, and the storage bound to their persistent volume claims (the plan's
//!   database limit).
//!
//! `usage_file` (tests and demos on machines without K3s) supplies samples in place of measured ones.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use outpost_proto::v1::{Health, UsageReport, UsageSample};

/// A pod of a managed app.
#[derive(Clone, Debug, PartialEq)]
pub struct PodOwner {
    pub uid: String,
    pub project: String,
    pub app: String,
}

/// What one pod's cgroup says now.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct PodReading {
    cpu_usec: u64,
    memory_bytes: u64,
    egress_bytes: u64,
}

/// An app's counters since agentd started, and its memory now.
#[derive(Clone, Copy, Debug, Default)]
struct AppTotals {
    cpu_usec: u64,
    egress_bytes: u64,
    memory_bytes: u64,
}

pub struct UsageCollector {
    cgroup_root: PathBuf,
    proc_root: PathBuf,
    database_dir: PathBuf,
    stand_in: Option<PathBuf>,
    /// Each live pod's last reading, by uid.
    pods: HashMap<String, PodReading>,
    apps: BTreeMap<(String, String), AppTotals>,
    rounds: u64,
}

/// A sample as `usage_file` spells it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StandIn {
    samples: Vec<StandInSample>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
struct StandInSample {
    scope: String,
    project: String,
    app: String,
    cpu_usec: u64,
    memory_bytes: u64,
    memory_peak_bytes: u64,
    disk_bytes: u64,
    database_bytes: u64,
    egress_bytes: u64,
}

impl UsageCollector {
    pub fn new(config: &crate::AgentConfig) -> UsageCollector {
        UsageCollector {
            cgroup_root: config.cgroup_root.clone(),
            proc_root: PathBuf::from("/proc"),
            database_dir: config.data_dir.join("instance.db"),
            stand_in: config.usage_file.clone(),
            pods: HashMap::new(),
            apps: BTreeMap::new(),
            rounds: 0,
        }
    }

    /// One usage sample: the host from `health` (taken just before), the apps from their pods' cgroups.
    pub fn sample(&mut self, health: &Health, owners: &[PodOwner], storage: &HashMap<String, u64>) -> UsageReport {
        let first_round = self.rounds == 0;
        self.rounds += 1;
        let cgroups = pod_cgroups(&self.cgroup_root);
        let mut live = HashMap::new();
        for t in self.apps.values_mut() {
            t.memory_bytes = 0;
        }
        for o in owners {
            let Some(dir) = cgroups.get(&o.uid) else { continue };
            let now = read_pod(dir, &self.proc_root);
            // A pod seen for the first time counts from zero, unless agentd just started (it may have been
            // counted by the agentd before this one).
            let before =
                self.pods.get(&o.uid).copied().unwrap_or(if first_round { now } else { PodReading::default() });
            let grew = |now: u64, before: u64| if now >= before { now - before } else { now };
            let t = self.apps.entry((o.project.clone(), o.app.clone())).or_default();
            t.cpu_usec = t.cpu_usec.saturating_add(grew(now.cpu_usec, before.cpu_usec));
            t.egress_bytes = t.egress_bytes.saturating_add(grew(now.egress_bytes, before.egress_bytes));
            t.memory_bytes = t.memory_bytes.saturating_add(now.memory_bytes);
            live.insert(o.uid.clone(), now);
        }
        self.pods = live;

        let used: u64 = health.disks.iter().map(|d| d.total_bytes.saturating_sub(d.available_bytes)).sum();
        let mut samples = vec![UsageSample {
            scope: "host".into(),
            cpu_usec: host_cpu_usec(&self.proc_root).unwrap_or(0),
            memory_bytes: health.mem_used_bytes,
            memory_peak_bytes: health.mem_used_bytes,
            disk_bytes: used,
            database_bytes: dir_size(&self.database_dir),
            egress_bytes: health.net_tx_bytes,
            ..Default::default()
        }];
        let mut projects: BTreeMap<&str, UsageSample> = BTreeMap::new();
        for ((project, app), t) in &self.apps {
            let p = projects.entry(project).or_insert_with(|| UsageSample {
                scope: "namespace".into(),
                project: project.clone(),
                database_bytes: storage.get(project).copied().unwrap_or(0),
                ..Default::default()
            });
            p.cpu_usec = p.cpu_usec.saturating_add(t.cpu_usec);
            p.egress_bytes = p.egress_bytes.saturating_add(t.egress_bytes);
            p.memory_bytes = p.memory_bytes.saturating_add(t.memory_bytes);
            p.memory_peak_bytes = p.memory_bytes;
            samples.push(UsageSample {
                scope: "app".into(),
                project: project.clone(),
                app: app.clone(),
                cpu_usec: t.cpu_usec,
                memory_bytes: t.memory_bytes,
                memory_peak_bytes: t.memory_bytes,
                egress_bytes: t.egress_bytes,
                ..Default::default()
            });
        }
        samples.extend(projects.into_values());
        if let Some(path) = &self.stand_in {
            merge_stand_in(&mut samples, path);
        }
        let mut report = UsageReport { samples };
        conform_usage(&mut report);
        report
    }
}

/// Samples from `usage_file` replace measured ones of the same scope; an unreadable file is logged.
fn merge_stand_in(samples: &mut Vec<UsageSample>, path: &Path) {
    let parsed = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<StandIn>(&b).map_err(|e| e.to_string()));
    let file = match parsed {
        Ok(f) => f,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "usage_file is unreadable; reporting measured usage only");
            return;
        }
    };
    for s in file.samples {
        samples.retain(|m| (&m.scope, &m.project, &m.app) != (&s.scope, &s.project, &s.app));
        samples.push(UsageSample {
            scope: s.scope,
            project: s.project,
            app: s.app,
            cpu_usec: s.cpu_usec,
            memory_bytes: s.memory_bytes,
            memory_peak_bytes: s.memory_peak_bytes.max(s.memory_bytes),
            disk_bytes: s.disk_bytes,
            database_bytes: s.database_bytes,
            egress_bytes: s.egress_bytes,
        });
    }
}

/// Makes a usage report pass the hub's check (`common::report::validate_usage`): samples the hub would
/// refuse are dropped (with a log line), and at most the limit are kept, the host first.
pub fn conform_usage(r: &mut UsageReport) {
    let before = r.samples.len();
    let mut seen = std::collections::HashSet::new();
    r.samples.retain(|s| {
        let one = UsageReport { samples: vec![s.clone()] };
        outpost_common::report::validate_usage(0, &one).is_ok()
            && seen.insert((s.scope.clone(), s.project.clone(), s.app.clone()))
    });
    r.samples.sort_by_key(|s| (s.scope != "host", s.scope != "namespace"));
    r.samples.truncate(outpost_common::report::MAX_USAGE_SAMPLES);
    if r.samples.len() < before {
        tracing::warn!(dropped = before - r.samples.len(), "usage samples dropped: invalid or over the limit");
    }
}

/// Every pod's cgroup directory under `root`, by pod uid (dashes), for the systemd driver
/// (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice`) and the
/// cgroupfs one (`kubepods/burstable/pod<uid>`).
fn pod_cgroups(root: &Path) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    let mut stack: Vec<(PathBuf, u8)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kubepods"))
        .map(|e| (e.path(), 0))
        .collect();
    while let Some((dir, depth)) = stack.pop() {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = name.strip_suffix(".slice").unwrap_or(&name);
        if let Some(i) = stem.rfind("pod") {
            let uid = stem[i + 3..].replace('_', "-");
            if uid.len() >= 32 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                out.insert(uid, dir);
                continue;
            }
        }
        if depth < 3 {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    out
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_pod(dir: &Path, proc_root: &Path) -> PodReading {
    let cpu_usec = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok()))
        .unwrap_or(0);
    PodReading {
        cpu_usec,
        memory_bytes: read_u64(&dir.join("memory.current")).unwrap_or(0),
        egress_bytes: pod_pid(dir)
            .and_then(|pid| net_tx(&proc_root.join(pid.to_string()).join("net/dev")))
            .unwrap_or(0),
    }
}

/// A process in the pod (its containers are child cgroups): its network namespace is the pod's.
fn pod_pid(dir: &Path) -> Option<u32> {
    let first = |d: &Path| {
        std::fs::read_to_string(d.join("cgroup.procs")).ok()?.lines().next().and_then(|l| l.trim().parse().ok())
    };
    first(dir).or_else(|| {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .find_map(|e| first(&e.path()))
    })
}

/// Bytes sent on every interface but loopback, from a `net/dev` file.
fn net_tx(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .skip(2)
            .filter_map(|l| {
                let (name, rest) = l.split_once(':')?;
                (name.trim() != "lo").then(|| rest.split_whitespace().nth(8)?.parse::<u64>().ok())?
            })
            .sum(),
    )
}

/// CPU time the host spent not idle, from `/proc/stat` (USER_HZ is 100 on Linux).
fn host_cpu_usec(proc_root: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    let f: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum::<u64>();
    Some(busy * 10_000)
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID_A: &str = "0a1b2c3d-0000-4000-8000-00000000000a";
    const UID_B: &str = "0a1b2c3d-0000-4000-8000-00000000000b";

    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        /// A pod cgroup with the systemd driver's names (a) or cgroupfs's (b), and a process in it.
        fn pod(&self, uid: &str, systemd: bool, cpu: u64, mem: u64, tx: u64, pid: u32) {
            let root = self.dir.path().join("cgroup");
            let dir = if systemd {
                root.join("kubepods.slice/kubepods-burstable.slice")
                    .join(format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")))
            } else {
                root.join("kubepods/besteffort").join(format!("pod{uid}"))
            };
            let container = dir.join("cri-containerd-1234.scope");
            std::fs::create_dir_all(&container).unwrap();
            std::fs::write(dir.join("cpu.stat"), format!("usage_usec {cpu}\nuser_usec 1\nsystem_usec 2\n")).unwrap();
            std::fs::write(dir.join("memory.current"), format!("{mem}\n")).unwrap();
            std::fs::write(dir.join("cgroup.procs"), "").unwrap();
            std::fs::write(container.join("cgroup.procs"), format!("{pid}\n")).unwrap();
            let net = self.dir.path().join("proc").join(pid.to_string()).join("net");
            std::fs::create_dir_all(&net).unwrap();
            std::fs::write(
                net.join("dev"),
                format!(
                    "Inter-|   Receive |  Transmit\n face |bytes packets\n    lo: 5 1 0 0 0 0 0 0 999 1 0 0 0 0 0 0\n  eth0: 100 2 0 0 0 0 0 0 {tx} 3 0 0 0 0 0 0\n"
                ),
            )
            .unwrap();
        }

        fn remove(&self, uid: &str) {
            let root = self.dir.path().join("cgroup");
            let _ = std::fs::remove_dir_all(
                root.join("kubepods.slice/kubepods-burstable.slice")
                    .join(format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"))),
            );
            let _ = std::fs::remove_dir_all(root.join("kubepods/besteffort").join(format!("pod{uid}")));
        }

        fn collector(&self) -> UsageCollector {
            std::fs::create_dir_all(self.dir.path().join("proc")).unwrap();
            std::fs::write(self.dir.path().join("proc/stat"), "cpu  100 5 50 9000 10 3 2 1 0 0\ncpu0 1 2 3\n").unwrap();
            UsageCollector {
                cgroup_root: self.dir.path().join("cgroup"),
                proc_root: self.dir.path().join("proc"),
                database_dir: self.dir.path().join("db"),
                stand_in: None,
                pods: HashMap::new(),
                apps: BTreeMap::new(),
                rounds: 0,
            }
        }
    }

    fn find<'a>(r: &'a UsageReport, scope: &str, app: &str) -> &'a UsageSample {
        r.samples.iter().find(|s| s.scope == scope && s.app == app).unwrap_or_else(|| panic!("{scope} {app}: {r:?}"))
    }

    #[test]
    fn pods_are_found_under_both_cgroup_drivers_and_a_replaced_pod_never_lowers_the_apps_counter() {
        let f = Fake { dir: tempfile::tempdir().unwrap() };
        std::fs::create_dir_all(f.dir.path().join("db")).unwrap();
        std::fs::write(f.dir.path().join("db/conf"), vec![0u8; 1234]).unwrap();
        f.pod(UID_A, true, 5_000_000, 100, 7000, 41);
        f.pod(UID_B, false, 1_000, 50, 10, 42);
        let owners = vec![
            PodOwner { uid: UID_A.into(), project: "acme".into(), app: "web".into() },
            PodOwner { uid: UID_B.into(), project: "acme".into(), app: "worker".into() },
        ];
        let storage = HashMap::from([("acme".to_string(), 1u64 << 30)]);
        let mut c = f.collector();
        let health = Health { mem_used_bytes: 77, net_tx_bytes: 88, ..Default::default() };
        // First round: the baseline (these pods may have been counted by an agentd before this one).
        let r = c.sample(&health, &owners, &storage);
        outpost_common::report::validate_usage(1, &r).unwrap();
        assert_eq!(find(&r, "app", "web").cpu_usec, 0);
        assert_eq!(find(&r, "app", "web").memory_bytes, 100);
        let host = find(&r, "host", "");
        // (100 + 5 + 50 + 3 + 2 + 1) jiffies of 10 ms.
        assert_eq!(
            (host.cpu_usec, host.memory_bytes, host.egress_bytes, host.database_bytes),
            (1_610_000, 77, 88, 1234)
        );
        assert_eq!(find(&r, "namespace", "").database_bytes, 1 << 30);

        f.pod(UID_A, true, 7_000_000, 300, 9000, 41);
        f.pod(UID_B, false, 3_000, 60, 30, 42);
        let r = c.sample(&health, &owners, &storage);
        let web = find(&r, "app", "web");
        assert_eq!((web.cpu_usec, web.egress_bytes, web.memory_bytes), (2_000_000, 2000, 300));
        let ns = find(&r, "namespace", "");
        assert_eq!((ns.cpu_usec, ns.egress_bytes, ns.memory_bytes), (2_002_000, 2020, 360));

        // web's pod is replaced by a new one whose counters start low: web's counter still grows.
        f.remove(UID_A);
        let uid_c = "0a1b2c3d-0000-4000-8000-00000000000c";
        f.pod(uid_c, true, 500, 10, 4, 43);
        let owners = vec![PodOwner { uid: uid_c.into(), project: "acme".into(), app: "web".into() }, owners[1].clone()];
        let r = c.sample(&health, &owners, &storage);
        let web = find(&r, "app", "web");
        assert_eq!((web.cpu_usec, web.egress_bytes, web.memory_bytes), (2_000_500, 2004, 10));
        // An app whose pods are all gone keeps its counters, with no memory.
        let r = c.sample(&health, &owners[1..], &storage);
        assert_eq!((find(&r, "app", "web").cpu_usec, find(&r, "app", "web").memory_bytes), (2_000_500, 0));
    }

    #[test]
    fn the_usage_file_replaces_measured_samples_and_bad_ones_are_dropped() {
        let f = Fake { dir: tempfile::tempdir().unwrap() };
        let mut c = f.collector();
        let file = f.dir.path().join("usage.json");
        std::fs::write(
            &file,
            r#"{"samples": [{"scope": "host", "cpu_usec": 42}, {"scope": "app", "project": "acme", "app": "web", "memory_bytes": 9},
                {"scope": "app", "project": "Bad Name", "app": "x"}]}"#,
        )
        .unwrap();
        c.stand_in = Some(file.clone());
        let r = c.sample(&Health::default(), &[], &HashMap::new());
        assert_eq!(r.samples.len(), 2, "{r:?}");
        assert_eq!(find(&r, "host", "").cpu_usec, 42);
        assert_eq!(find(&r, "app", "web").memory_peak_bytes, 9);
        outpost_common::report::validate_usage(1, &r).unwrap();
        // An unreadable file: measured usage only.
        std::fs::write(&file, "{not json").unwrap();
        let r = c.sample(&Health::default(), &[], &HashMap::new());
        assert_eq!(r.samples.len(), 1);
        assert_eq!(find(&r, "host", "").cpu_usec, 1_610_000);
    }
}
