//! `outpost alerts`, `silence`, `silences`, `unsilence` and `ack`: the alerts from a shell.

use outpost_common::bundle::Bundle;
use outpost_common::text::inert;
use outpost_proto::v1 as pb;

use crate::args::Output;
use crate::client::{client, rpc};
use crate::format::clock;

/// `outpost alerts`.
pub async fn alerts(bundle: &Bundle, output: Output) -> anyhow::Result<String> {
    let mut c = client(bundle)?;
    let r = c.list_alerts(pb::ListAlertsRequest {}).await.map_err(|s| rpc(bundle, s))?.into_inner();
    Ok(match output {
        Output::Json => {
            let v: Vec<serde_json::Value> = r
                .alerts
                .iter()
                .map(|a| {
                    let labels: std::collections::BTreeMap<_, _> = a.labels.iter().collect();
                    serde_json::json!({"labels": labels, "state": a.state, "since_ms": a.since_ms,
                        "fired_ms": a.fired_ms, "value": a.value, "summary": a.summary, "action": a.action})
                })
                .collect();
            format!("{}\n", serde_json::Value::Array(v))
        }
        Output::Table if r.alerts.is_empty() => "no alerts: nothing pending or firing\n".into(),
        Output::Table => {
            let mut out = format!(
                "{:<8} {:<9} {:<22} {:<20} {:<17} {}\n",
                "STATE", "SEVERITY", "ALERT", "SERVER", "SINCE", "SUMMARY"
            );
            for a in &r.alerts {
                let l = |k: &str| a.labels.get(k).map(|v| inert(v).into_owned()).unwrap_or_else(|| "-".into());
                out.push_str(&format!(
                    "{:<8} {:<9} {:<22} {:<20} {:<17} {}\n",
                    a.state,
                    l("severity"),
                    l("alertname"),
                    l("server"),
                    clock(a.since_ms),
                    inert(&a.summary)
                ));
            }
            out
        }
    })
}

fn silence_line(s: &pb::SilenceInfo) -> String {
    let matchers: std::collections::BTreeMap<_, _> = s.matchers.iter().collect();
    let m: Vec<String> = matchers.iter().map(|(k, v)| format!("{k}={}", inert(v))).collect();
    format!(
        "{}  {}  until {}  by {}: {}\n",
        inert(&s.id),
        m.join(","),
        clock(s.expires_ms),
        inert(&s.creator),
        inert(&s.comment)
    )
}

/// `outpost silence`.
pub async fn silence(bundle: &Bundle, matchers: &[String], duration: &str, comment: &str) -> anyhow::Result<String> {
    let mut m = std::collections::HashMap::new();
    for x in matchers {
        let (k, v) = x
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--match {x:?}: give LABEL=VALUE, e.g. alertname=disk_full"))?;
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    let d = outpost_common::parse_duration_ms(duration).map_err(|e| anyhow::anyhow!("--for {duration:?}: {e}"))?;
    let req = pb::SilenceRequest {
        matchers: m,
        duration_secs: u32::try_from(d.as_secs()).unwrap_or(u32::MAX),
        comment: comment.to_string(),
    };
    let s = client(bundle)?.silence(req).await.map_err(|s| rpc(bundle, s))?.into_inner();
    Ok(format!("silenced: {}", silence_line(&s)))
}

/// `outpost silences`.
pub async fn silences(bundle: &Bundle) -> anyhow::Result<String> {
    let r = client(bundle)?.list_silences(pb::ListSilencesRequest {}).await.map_err(|s| rpc(bundle, s))?.into_inner();
    if r.silences.is_empty() {
        return Ok("no silence in force\n".into());
    }
    Ok(r.silences.iter().map(silence_line).collect())
}

/// `outpost unsilence`.
pub async fn unsilence(bundle: &Bundle, id: &str) -> anyhow::Result<String> {
    let s = client(bundle)?
        .expire_silence(pb::ExpireSilenceRequest { id: id.to_string() })
        .await
        .map_err(|s| rpc(bundle, s))?
        .into_inner();
    Ok(format!("ended: {}", silence_line(&s)))
}

/// `outpost ack`.
pub async fn ack(bundle: &Bundle, alertname: &str, server: &str) -> anyhow::Result<String> {
    let req = pb::AckAlertRequest { alertname: alertname.to_string(), server: server.to_string() };
    let r = client(bundle)?.ack_alert(req).await.map_err(|s| rpc(bundle, s))?.into_inner();
    Ok(format!("acknowledged {} alert(s)\n", r.acknowledged))
}
