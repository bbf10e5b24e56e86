//! Health collection: one long-lived sysinfo `System` (CPU % needs two samples), plus K3s state.

use std::path::Path;
use std::time::Duration;

use outpost_proto::v1::{Disk, Health, K3s, k3s};
use sysinfo::{Disks, Networks, System};

/// At most this many mounts per report (the hub refuses more).
const MAX_DISKS: usize = outpost_common::report::MAX_DISKS;
/// Where a K3s unit file would be if K3s were installed.
const UNIT_DIRS: [&str; 3] = ["/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"];

pub struct Collector {
    sys: System,
    disks: Disks,
    networks: Networks,
    k3s_unit: String,
    systemctl: String,
    /// What the Kubernetes API last said about the cluster (the apps reporter writes it).
    cluster: ClusterSeen,
}

/// When the Kubernetes API last answered with every node Ready, and what it said ("v1.33.5+k3s1, 1 node(s)
/// Ready"). Shared by the apps reporter (which asks) and the health collector (which reports K3s's state).
pub type ClusterSeen = std::sync::Arc<std::sync::Mutex<Option<(std::time::Instant, String)>>>;

/// How recent an answer from the API must be to count as "K3s is up".
const CLUSTER_FRESH: Duration = Duration::from_secs(120);

impl Collector {
    pub fn new(k3s_unit: &str, systemctl: &str) -> Result<Collector, String> {
        let mut sys = System::new().map_err(|e| format!("sysinfo: {e}"))?;
        sys.refresh_cpu_usage(); // first CPU sample; the next refresh gives a real percentage
        Ok(Collector {
            sys,
            disks: Disks::new_with_refreshed_list().map_err(|e| format!("sysinfo disks: {e}"))?,
            networks: Networks::new_with_refreshed_list().map_err(|e| format!("sysinfo networks: {e}"))?,
            k3s_unit: k3s_unit.to_string(),
            systemctl: systemctl.to_string(),
            cluster: ClusterSeen::default(),
        })
    }

    /// K3s's state also from what the Kubernetes API says (see [`ClusterSeen`]).
    pub fn with_cluster(mut self, cluster: ClusterSeen) -> Collector {
        self.cluster = cluster;
        self
    }

    pub async fn sample(&mut self, cert_not_after: i64) -> Health {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        self.disks.refresh(true);
        self.networks.refresh(true);
        let load = System::load_average().unwrap_or_default();
        let disks = self
            .disks
            .iter()
            .take(MAX_DISKS)
            .map(|d| Disk {
                mount: d.mount_point().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                available_bytes: d.available_space().min(d.total_space()),
            })
            .collect();
        let (rx, tx) = self
            .networks
            .iter()
            .filter(|(name, _)| name.as_os_str() != "lo")
            .fold((0u64, 0u64), |(rx, tx), (_, n)| (rx + n.total_received(), tx + n.total_transmitted()));
        Health {
            cpu_percent: self.sys.global_cpu_usage(),
            load1: load.one as f32,
            load5: load.five as f32,
            load15: load.fifteen as f32,
            mem_total_bytes: self.sys.total_memory(),
            mem_used_bytes: self.sys.used_memory().min(self.sys.total_memory()),
            swap_total_bytes: self.sys.total_swap(),
            swap_used_bytes: self.sys.used_swap().min(self.sys.total_swap()),
            disks,
            net_rx_bytes: rx,
            net_tx_bytes: tx,
            uptime_secs: System::uptime().unwrap_or(0),
            process_count: process_count(),
            k3s: Some(k3s_state(&self.k3s_unit, &self.systemctl, self.cluster_answer()).await),
            agent_version: crate::VERSION.to_string(),
            cert_not_after,
            update: None,
        }
    }
}

/// Numeric entries of /proc: cheaper than a full process refresh, and all we need.
fn process_count() -> u32 {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .count() as u32
        })
        .unwrap_or(0)
}

impl Collector {
    /// The cluster's own word, when the API answered recently with every node Ready.
    fn cluster_answer(&self) -> Option<String> {
        let seen = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        seen.as_ref().filter(|(at, _)| at.elapsed() < CLUSTER_FRESH).map(|(_, what)| what.clone())
    }
}

/// K3s's state, one truth: systemd's word on its unit where there is one; where there is none, the
/// Kubernetes API's (a cluster that answers Ready is up, whoever runs it); "absent" only when neither.
/// Its detail quotes outside words (the API's version, systemctl's output): made inert and cut to what the
/// hub takes (`report::MAX_TEXT`), so they can never get the whole report refused.
async fn k3s_state(unit: &str, systemctl: &str, cluster: Option<String>) -> K3s {
    let mut k = k3s_said(unit, systemctl, cluster).await;
    let inert = outpost_common::text::inert(&k.detail);
    k.detail = outpost_common::text::truncate_bytes(&inert, outpost_common::report::MAX_TEXT).to_string();
    k
}

async fn k3s_said(unit: &str, systemctl: &str, cluster: Option<String>) -> K3s {
    let file = format!("{unit}.service");
    if !UNIT_DIRS.iter().any(|d| Path::new(d).join(&file).exists()) {
        return match cluster {
            Some(what) => K3s {
                state: k3s::State::Active as i32,
                detail: format!("{what} (the Kubernetes API's word; no {file} unit here)"),
            },
            None => K3s { state: k3s::State::Absent as i32, detail: format!("no {file} unit installed") },
        };
    }
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(systemctl).args(["is-active", &file]).kill_on_drop(true).output(),
    )
    .await;
    let text = match out {
        Ok(Ok(o)) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(Err(e)) => {
            return K3s { state: k3s::State::Unspecified as i32, detail: format!("systemctl: {e}") };
        }
        Err(_) => {
            return K3s { state: k3s::State::Unspecified as i32, detail: "systemctl timed out".into() };
        }
    };
    let state = match text.as_str() {
        "active" | "reloading" => k3s::State::Active,
        "inactive" | "deactivating" => k3s::State::Inactive,
        "failed" => k3s::State::Failed,
        "activating" => k3s::State::Activating,
        _ => k3s::State::Unspecified,
    };
    K3s { state: state as i32, detail: text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sample_is_plausible() {
        let mut c = Collector::new("outpost-test-no-such-unit", "systemctl").unwrap();
        let h = c.sample(42).await;
        assert!(h.mem_total_bytes > 0 && h.mem_used_bytes <= h.mem_total_bytes);
        assert!(h.process_count > 0 && h.uptime_secs > 0);
        assert_eq!(h.k3s.unwrap().state, k3s::State::Absent as i32);
        assert_eq!(h.cert_not_after, 42);
        // A cluster whose API answers Ready is up, even without a unit here.
        *c.cluster.lock().unwrap() = Some((std::time::Instant::now(), "v1.33.5+k3s1, 1 node(s) Ready".into()));
        let k = c.sample(42).await.k3s.unwrap();
        assert_eq!(k.state, k3s::State::Active as i32, "{k:?}");
        assert!(k.detail.starts_with("v1.33.5+k3s1, 1 node(s) Ready"), "{k:?}");
        // Whatever the API calls its version, the report stays one the hub takes.
        *c.cluster.lock().unwrap() =
            Some((std::time::Instant::now(), format!("v1\u{1b}[2J\u{202e}{}", "x".repeat(400))));
        let k = c.sample(42).await.k3s.unwrap();
        assert!(
            k.detail.len() <= outpost_common::report::MAX_TEXT && outpost_common::text::is_printable(&k.detail),
            "{k:?}"
        );
    }
}
