//! `outpost usage`: a customer's month of usage against the plan, and what it costs, as a table, JSON or
//! CSV (one row per server and scope, for spreadsheets and billing).

use outpost_common::bundle::Bundle;
use outpost_common::text::inert;
use outpost_proto::v1 as pb;

use crate::args::{UsageArgs, UsageOutput};
use crate::client::{client, rpc};
use crate::format::bytes;

/// `outpost usage`.
pub async fn usage(bundle: &Bundle, a: &UsageArgs) -> anyhow::Result<String> {
    if let Some(m) = a.month.as_deref().filter(|m| !crate::format::is_month(m)) {
        anyhow::bail!("--month {m:?}: give YYYY-MM, e.g. 2026-11");
    }
    let mut c = client(bundle)?;
    let req = pb::GetUsageRequest { customer: a.customer.clone(), month: a.month.clone().unwrap_or_default() };
    let r = c.get_usage(req).await.map_err(|s| rpc(bundle, s))?.into_inner();
    Ok(match a.output {
        UsageOutput::Table => table(&r),
        UsageOutput::Json => format!("{}\n", json(&r)),
        UsageOutput::Csv => csv(&r),
    })
}

pub fn json(r: &pb::GetUsageResponse) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = r
        .rows
        .iter()
        .map(|x| {
            serde_json::json!({"server": x.server, "scope": x.scope, "cpu_seconds": x.cpu_seconds,
                "cpu_cores_avg": x.cpu_cores_avg, "memory_avg_bytes": x.memory_avg_bytes,
                "memory_peak_bytes": x.memory_peak_bytes, "disk_bytes": x.disk_bytes,
                "database_bytes": x.database_bytes, "egress_bytes": x.egress_bytes,
                "covered_hours": x.covered_hours, "resets": x.resets})
        })
        .collect();
    let days: Vec<serde_json::Value> = r
        .days
        .iter()
        .map(|d| {
            serde_json::json!({"day": crate::format::clock(d.start_ms).get(..10).unwrap_or_default(),
                "start_ms": d.start_ms, "cpu_cores_avg": d.cpu_cores_avg, "memory_peak_bytes": d.memory_peak_bytes,
                "database_bytes": d.database_bytes, "egress_bytes": d.egress_bytes})
        })
        .collect();
    let plan_use: Vec<serde_json::Value> = r
        .plan_use
        .iter()
        .map(|p| serde_json::json!({"what": p.what, "percent": p.percent, "words": p.words}))
        .collect();
    serde_json::json!({
        "customer": r.customer, "month": r.month, "plan": r.plan,
        "plan_limits": {"cpu_millis": r.plan_cpu_millis, "memory_bytes": r.plan_memory_bytes,
            "database_bytes": r.plan_database_bytes},
        "plan_use": plan_use, "rows": rows, "days": days,
        "cost": {"currency": r.currency, "server": r.cost_server, "cpu": r.cost_cpu, "memory": r.cost_memory,
            "egress": r.cost_egress, "database": r.cost_database, "total": r.cost_total},
    })
}

/// One row per server and scope; numbers as they are (bytes, seconds), for spreadsheets.
pub fn csv(r: &pb::GetUsageResponse) -> String {
    // Names are DNS labels and scopes words joined by '/': nothing to quote. Still made inert.
    let mut out = String::from(
        "customer,month,plan,server,scope,cpu_seconds,cpu_cores_avg,memory_avg_bytes,memory_peak_bytes,disk_bytes,database_bytes,egress_bytes,covered_hours,resets\n",
    );
    let cell = |s: &str| inert(s).replace([',', '"', '\n'], "_");
    for x in &r.rows {
        out.push_str(&format!(
            "{},{},{},{},{},{:.3},{:.4},{},{},{},{},{},{:.3},{}\n",
            cell(&r.customer),
            cell(&r.month),
            cell(&r.plan),
            cell(&x.server),
            cell(&x.scope),
            x.cpu_seconds,
            x.cpu_cores_avg,
            x.memory_avg_bytes,
            x.memory_peak_bytes,
            x.disk_bytes,
            x.database_bytes,
            x.egress_bytes,
            x.covered_hours,
            x.resets
        ));
    }
    out
}

pub fn table(r: &pb::GetUsageResponse) -> String {
    let mut out = format!(
        "{} · {} · plan {} ({:.2} CPU, {} memory, {} database)\n",
        inert(&r.customer),
        inert(&r.month),
        if r.plan.is_empty() { "-".into() } else { inert(&r.plan).into_owned() },
        r.plan_cpu_millis as f64 / 1000.0,
        bytes(r.plan_memory_bytes),
        bytes(r.plan_database_bytes)
    );
    if r.rows.is_empty() {
        out.push_str("no usage reported in this month\n");
        return out;
    }
    out.push_str("\nAGAINST THE PLAN (the month's peak)\n");
    for p in &r.plan_use {
        let flag = if p.percent > 100.0 { "  OVER" } else { "" };
        out.push_str(&format!("  {:<9} {:>5.0}%{flag}  {}\n", p.what, p.percent, inert(&p.words)));
    }
    out.push_str(&format!(
        "\n{:<18} {:<24} {:>8} {:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6}\n",
        "SERVER", "SCOPE", "CPU-H", "CORES", "MEM-AVG", "MEM-PEAK", "DISK", "DATABASE", "EGRESS", "HOURS"
    ));
    for x in &r.rows {
        out.push_str(&format!(
            "{:<18} {:<24} {:>8.2} {:>7.2} {:>10} {:>10} {:>10} {:>10} {:>10} {:>6.1}{}\n",
            inert(&x.server),
            inert(&x.scope),
            x.cpu_seconds / 3600.0,
            x.cpu_cores_avg,
            bytes(x.memory_avg_bytes),
            bytes(x.memory_peak_bytes),
            bytes(x.disk_bytes),
            bytes(x.database_bytes),
            bytes(x.egress_bytes),
            x.covered_hours,
            if x.resets > 0 { format!("  ({} counter resets)", x.resets) } else { String::new() }
        ));
    }
    out.push_str(&format!(
        "\nCOST ({}): server {:.2} + cpu {:.2} + memory {:.2} + egress {:.2} + database {:.2} = {:.2}\n",
        inert(&r.currency),
        r.cost_server,
        r.cost_cpu,
        r.cost_memory,
        r.cost_egress,
        r.cost_database,
        r.cost_total
    ));
    out
}
