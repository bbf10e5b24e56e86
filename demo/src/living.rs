//! What makes the demo's fleet look lived in within a minute of its start: a week of usage history (so
//! `:usage` has charts), the sample app deployed on some servers, a deploy that fails and is rolled back
//! automatically, and an app whose first deploy keeps failing (its `app_failing` alert fires).

use std::collections::BTreeMap;
use std::time::Duration;

use hub::store::records::{Resolution, ScopeUsage, UsageBucket, UsageCursor};
use outpost_common::app::PlanLimits;
use outpost_proto::v1 as pb;
use pb::operator_client::OperatorClient;
use tonic::transport::Channel;

/// A server the demo seeds: (name, customer, plan).
pub type Seat = (String, String, String);

/// A number in [0, 1) from a name and an hour: the same every run, different per server.
fn noise(name: &str, n: i64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    (h % 10_000) as f64 / 10_000.0
}

/// Seven days of hourly and daily usage for each seat, ending at the current hour: a daily rhythm under
/// the plan, and one seat (`over`) whose memory runs over it.
pub async fn seed_usage(hub: &hub::Hub, seats: &[Seat], over: &str, now_ms: i64) -> anyhow::Result<()> {
    let store = hub.store();
    let this_hour = Resolution::Hour.start(now_ms);
    for (name, customer, plan) in seats {
        let Some(record) = store.server(name).await? else { continue };
        let limits = PlanLimits::named(plan).unwrap_or(PlanLimits {
            cpu_millis: 500,
            memory_bytes: 512 << 20,
            storage_bytes: 100 << 20,
        });
        let mut buckets = Vec::new();
        let mut days: BTreeMap<i64, UsageBucket> = BTreeMap::new();
        for h in (1..=7 * 24).rev() {
            let start = this_hour - h * Resolution::Hour.ms();
            let hour_of_day = (start / Resolution::Hour.ms()).rem_euclid(24) as f64;
            // Busiest in the afternoon, quiet at night.
            let load =
                (0.35 + 0.3 * ((hour_of_day - 15.0) / 24.0 * std::f64::consts::TAU).cos() + 0.15 * noise(name, h))
                    .clamp(0.02, 0.95);
            let mem_share = if name == over { 1.15 + 0.1 * load } else { 0.3 + 0.4 * load };
            let ns_mem = (limits.memory_bytes as f64 * mem_share) as u64;
            let namespace = ScopeUsage {
                scope: format!("namespace/{customer}"),
                cpu_seconds: limits.cpu_millis as f64 / 1000.0 * load * 3600.0,
                memory_byte_seconds: ns_mem as f64 * 3600.0,
                covered_secs: 3600.0,
                memory_peak_bytes: ns_mem + (ns_mem / 10),
                memory_last_bytes: ns_mem,
                disk_bytes_max: limits.storage_bytes / 3,
                database_bytes_max: (limits.storage_bytes as f64 * (0.2 + 0.001 * (7 * 24 - h) as f64)) as u64,
                egress_bytes: (40e6 * load) as u64,
                samples: 60,
                resets: 0,
            };
            let host = ScopeUsage {
                scope: "host".into(),
                cpu_seconds: 2.0 * (0.1 + 0.5 * load) * 3600.0,
                memory_byte_seconds: (1.5e9 + 1e9 * load) * 3600.0,
                covered_secs: 3600.0,
                memory_peak_bytes: (1.6e9 + 1e9 * load) as u64,
                memory_last_bytes: (1.5e9 + 1e9 * load) as u64,
                disk_bytes_max: 12 << 30,
                egress_bytes: (60e6 * load) as u64,
                samples: 60,
                ..Default::default()
            };
            let bucket = UsageBucket { customer: customer.clone(), plan: plan.clone(), scopes: vec![host, namespace] };
            let day = days.entry(Resolution::Day.start(start)).or_insert_with(|| UsageBucket {
                customer: customer.clone(),
                plan: plan.clone(),
                scopes: Vec::new(),
            });
            for s in &bucket.scopes {
                hub::usage::add(hub::usage::scope_of(day, &s.scope), s);
            }
            buckets.push((Resolution::Hour, start, bucket));
        }
        buckets.extend(days.into_iter().map(|(start, b)| (Resolution::Day, start, b)));
        store.record_usage(&record, &UsageCursor::default(), &buckets).await?;
    }
    Ok(())
}

/// Runs `action` on `server` to its end; the result's message, or why it did not succeed.
pub async fn run(
    client: &mut OperatorClient<Channel>,
    action: &str,
    server: &str,
    args: &[(&str, &str)],
) -> Result<String, String> {
    let req = pb::RunActionRequest {
        action: action.into(),
        args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        selector: Some(pb::Selector { names: vec![server.to_string()], ..Default::default() }),
        confirm: server.to_string(),
        ..Default::default()
    };
    let mut stream = client.run_action(req).await.map_err(|s| s.message().to_string())?.into_inner();
    let mut result = None;
    while let Some(m) = stream.message().await.map_err(|s| s.message().to_string())? {
        if let Some(pb::job_event::Event::Target(t)) = m.event
            && let Some(r) = t.result
        {
            result = Some(r);
        }
    }
    match result {
        Some(r) if r.outcome == pb::Outcome::Succeeded as i32 => Ok(r.message),
        Some(r) => Err(r.message),
        None => Err("no result".into()),
    }
}

/// Waits until every one of `names` is connected (at most `within`), following the hub's fleet watch.
pub async fn connected(client: &mut OperatorClient<Channel>, names: &[&str], within: Duration) -> bool {
    let follow = async {
        let mut stream = client.watch_fleet(pb::WatchFleetRequest {}).await.ok()?.into_inner();
        let mut up = std::collections::BTreeSet::new();
        while let Some(ev) = stream.message().await.ok()? {
            let seen = |up: &mut std::collections::BTreeSet<String>, s: pb::Server| {
                if s.liveness == pb::Liveness::Connected as i32 {
                    up.insert(s.name);
                } else {
                    up.remove(&s.name);
                }
            };
            match ev.event {
                Some(pb::fleet_event::Event::Snapshot(snap)) => {
                    if snap.part == 0 {
                        up.clear();
                    }
                    snap.servers.into_iter().for_each(|s| seen(&mut up, s));
                }
                Some(pb::fleet_event::Event::Upsert(s)) => seen(&mut up, s),
                Some(pb::fleet_event::Event::Removed(name)) => {
                    up.remove(&name);
                }
                None => {}
            }
            if names.iter().all(|n| up.contains(*n)) {
                return Some(());
            }
        }
        None
    };
    matches!(tokio::time::timeout(within, follow).await, Ok(Some(())))
}
