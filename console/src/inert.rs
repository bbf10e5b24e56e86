//! Agent-supplied text made inert before any of it reaches the operator's terminal.
//!
//! The hub refuses control, bidi and invisible characters in the fields it stores, but the console does
//! not rely on that: data stored by an older hub, command output and result messages (free text by
//! nature) all pass through `outpost_common::text::inert` on the way in to the TUI's state and on the way
//! out of every table and streamed line. JSON output is left faithful (serde escapes it).

use outpost_common::text::inert;
use outpost_proto::v1::Server;

fn fix(s: &mut String) {
    if let std::borrow::Cow::Owned(clean) = inert(s) {
        *s = clean;
    }
}

/// Every text field of a server as the hub sent it.
pub fn server(s: &mut Server) {
    for f in [&mut s.name, &mut s.customer, &mut s.plan, &mut s.agent_id, &mut s.cert_serial, &mut s.agent_version] {
        fix(f);
    }
    s.labels = std::mem::take(&mut s.labels)
        .into_iter()
        .map(|(k, v)| (inert(&k).into_owned(), inert(&v).into_owned()))
        .collect();
    for f in &mut s.log_files {
        fix(f);
    }
    if let Some(h) = &mut s.host {
        for f in [&mut h.hostname, &mut h.os, &mut h.kernel, &mut h.arch, &mut h.agent_version] {
            fix(f);
        }
    }
    if let Some(h) = &mut s.health {
        fix(&mut h.agent_version);
        for d in &mut h.disks {
            fix(&mut d.mount);
        }
        if let Some(k) = &mut h.k3s {
            fix(&mut k.detail);
        }
        if let Some(u) = &mut h.update {
            for f in [&mut u.phase, &mut u.from_version, &mut u.to_version, &mut u.reason] {
                fix(f);
            }
        }
    }
    // The hub refuses unsafe text in an apps report; this is the console's own guard, as for every field.
    if let Some(a) = &mut s.apps {
        if let Some(c) = &mut a.cluster {
            fix(&mut c.version);
            c.problems.iter_mut().for_each(fix);
        }
        for app in &mut a.apps {
            for f in [
                &mut app.name,
                &mut app.project,
                &mut app.phase,
                &mut app.deployment,
                &mut app.commit,
                &mut app.image,
                &mut app.last_error,
            ] {
                fix(f);
            }
            if let Some(r) = &mut app.repo {
                for f in [&mut r.url, &mut r.git_ref, &mut r.head, &mut r.remote_head, &mut r.last_error, &mut r.note] {
                    fix(f);
                }
            }
            for d in &mut app.history {
                for f in [&mut d.id, &mut d.commit, &mut d.status, &mut d.reason, &mut d.operator] {
                    fix(f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use outpost_proto::v1::{Disk, Health, HostFacts};

    use super::*;

    #[test]
    fn every_text_field_is_inert() {
        let nasty = "x\u{1b}[2J\u{202e}\u{200b}\u{9b}";
        let mut s = Server {
            name: nasty.into(),
            customer: nasty.into(),
            labels: [(nasty.to_string(), nasty.to_string())].into(),
            host: Some(HostFacts { hostname: nasty.into(), ..Default::default() }),
            health: Some(Health {
                disks: vec![Disk { mount: nasty.into(), ..Default::default() }],
                ..Default::default()
            }),
            apps: Some(outpost_proto::v1::AppsState {
                apps: vec![outpost_proto::v1::AppState {
                    name: nasty.into(),
                    last_error: nasty.into(),
                    repo: Some(outpost_proto::v1::RepoState { note: nasty.into(), ..Default::default() }),
                    history: vec![outpost_proto::v1::DeploymentSummary { reason: nasty.into(), ..Default::default() }],
                    ..Default::default()
                }],
                cluster: Some(outpost_proto::v1::ClusterState { problems: vec![nasty.into()], ..Default::default() }),
            }),
            ..Default::default()
        };
        server(&mut s);
        let debug = format!("{s:?}");
        assert!(!debug.contains('\u{1b}') && !debug.contains('\u{202e}') && !debug.contains('\u{200b}'), "{debug}");
        assert!(s.name.contains("\\u{1b}"), "{}", s.name);
    }
}
