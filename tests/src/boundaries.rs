//! The code's architecture boundaries, checked on the source (ARCHITECTURE.md, "API boundaries"):
//!
//! - sled is named only by the hub's sled backend (`hub/src/store/sled.rs`) and agentd's instance database
//!   (`agentd/src/instance.rs`);
//! - the hub has no service locator: no struct with public `Arc` fields, no `HubState`, no constructor
//!   that needs `too_many_arguments`;
//! - hub code outside `api/` and `relay/` names neither tonic nor the wire types (`pb::`); it may name the
//!   two plain-data health messages (`Health`, `HistoryPoint`), which are stored as they are;
//! - the console's TUI (`state/`, `view/`) does not import the CLI (`cli`, `run`), nor the CLI the TUI.

use std::path::{Path, PathBuf};

/// Wire messages hub code outside `api/` and `relay/` may hold: report data, stored and kept as it is.
const PLAIN_DATA: [&str; 4] = ["Health", "HistoryPoint", "AppsState", "UsageReport"];

/// Every `.rs` file under `dir`, with its path relative to `root`.
fn sources(root: &Path, dir: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p: PathBuf = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                out.push((rel, std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// Lines of code (comments and `#[cfg(test)]` modules dropped), with their numbers.
fn code(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let shipped = text.split("#[cfg(test)]").next().unwrap_or_default();
    shipped
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or_default()))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// Whether `line` names the crate `krate` (`sled::…`, not a module path such as `store::sled::`).
fn names_crate(line: &str, krate: &str) -> bool {
    line.match_indices(&format!("{krate}::")).any(|(i, _)| !line[..i].ends_with("::"))
}

/// Every boundary crossed in the workspace at `root`, as `path:line: what`.
pub fn violations(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut flag = |path: &str, line: usize, what: &str| out.push(format!("{path}:{line}: {what}"));
    for krate in ["hub/src", "agentd/src", "console/src", "common/src", "proto/src", "tests/src"] {
        for (path, text) in sources(root, krate) {
            if path == "tests/src/boundaries.rs" {
                continue;
            }
            let sled_allowed = path == "hub/src/store/sled.rs" || path == "agentd/src/instance.rs";
            for (n, l) in code(&text) {
                if !sled_allowed && names_crate(l, "sled") {
                    flag(&path, n, "names sled outside the hub's sled engine and agentd's instance database");
                }
                if path != "hub/src/store/redb.rs" && names_crate(l, "redb") {
                    flag(&path, n, "names redb outside the hub's redb engine");
                }
            }
        }
    }
    for (path, text) in sources(root, "hub/src") {
        let edge = path.starts_with("hub/src/api/") || path.starts_with("hub/src/relay/");
        for (n, l) in code(&text) {
            let t = l.trim();
            if t.contains("struct HubState") {
                flag(&path, n, "a HubState service locator");
            }
            if t.starts_with("pub ") && t.contains(": Arc<") && !t.contains("fn ") {
                flag(&path, n, "a public Arc field: services keep their parts private and take them in `new`");
            }
            if t.contains("too_many_arguments") {
                flag(&path, n, "a constructor with too many arguments");
            }
            if edge {
                continue;
            }
            if t.contains("tonic") {
                flag(&path, n, "tonic outside api/ and relay/");
            }
            if t.contains("pb::") || t.contains("v1 as pb") {
                flag(&path, n, "wire types outside api/ and relay/");
            }
            if let Some(rest) = t.split("outpost_proto::").nth(1) {
                // The report data kept as it is: health, its history points, the apps state, usage.
                let names = rest.strip_prefix("v1::").unwrap_or_default();
                let names = names.trim_end_matches(';').trim_start_matches('{').trim_end_matches('}');
                let plain = !names.is_empty() && names.split(',').map(str::trim).all(|n| PLAIN_DATA.contains(&n));
                if !plain {
                    flag(
                        &path,
                        n,
                        "wire types outside api/ and relay/ (only Health, HistoryPoint, AppsState and UsageReport are plain data)",
                    );
                }
            }
        }
    }
    for (path, text) in sources(root, "console/src/state").into_iter().chain(sources(root, "console/src/view")) {
        for (n, l) in code(&text) {
            if l.contains("crate::cli") || l.contains("crate::run") {
                flag(&path, n, "the TUI imports the CLI");
            }
        }
    }
    for rel in ["console/src/cli.rs", "console/src/run.rs", "console/src/format.rs"] {
        let text = std::fs::read_to_string(root.join(rel)).unwrap_or_default();
        for (n, l) in code(&text) {
            if l.contains("crate::state") || l.contains("crate::view") {
                flag(rel, n, "the CLI imports the TUI");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_keeps_its_architecture_boundaries() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        assert!(sources(root, "hub/src").len() > 20, "the check reads the hub's sources");
        let v = violations(root);
        assert!(v.is_empty(), "architecture boundaries crossed:\n{}", v.join("\n"));
    }

    #[test]
    fn the_check_sees_each_kind_of_crossing() {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put("hub/src/store/sled.rs", "use sled::Tree;\n");
        put("hub/src/store/redb.rs", "use redb::Database;\nuse super::sled::SledEngine;\n");
        put("hub/src/lib.rs", "use store::sled::SledStore;\n#[cfg(test)]\nmod tests { use tonic::Status; }\n");
        put(
            "hub/src/fleet/reports.rs",
            "use outpost_proto::v1::{AppsState, Health, HistoryPoint};\n// tonic in a comment\n",
        );
        put("hub/src/api/operator.rs", "use tonic::Status;\nuse outpost_proto::v1 as pb;\n");
        assert!(violations(dir.path()).is_empty(), "{:?}", violations(dir.path()));
        put("agentd/src/outbox.rs", "fn f(t: sled::Tree) {}\n");
        put("hub/src/store/mod.rs", "pub mod redb;\nfn f(d: redb::Database) {}\n");
        put(
            "hub/src/jobs/mod.rs",
            "use tonic::Status;\nfn f(e: pb::JobEvent) {}\nuse outpost_proto::v1::Command;\nuse outpost_proto::v1::{Health, Command};\n",
        );
        put("hub/src/state.rs", "pub struct HubState {\n    pub store: Arc<Store>,\n}\n");
        put("console/src/view/job.rs", "use crate::run::follow;\n");
        put("console/src/cli.rs", "use crate::state::App;\n");
        let v = violations(dir.path());
        for expected in [
            "agentd/src/outbox.rs:1: names sled",
            "hub/src/store/mod.rs:2: names redb",
            "hub/src/jobs/mod.rs:1: tonic",
            "hub/src/jobs/mod.rs:2: wire types",
            "hub/src/jobs/mod.rs:3: wire types",
            "hub/src/jobs/mod.rs:4: wire types",
            "hub/src/state.rs:1: a HubState",
            "hub/src/state.rs:2: a public Arc field",
            "console/src/view/job.rs:1: the TUI imports the CLI",
            "console/src/cli.rs:1: the CLI imports the TUI",
        ] {
            assert!(v.iter().any(|l| l.starts_with(expected)), "{expected} not flagged in {v:#?}");
        }
        assert_eq!(v.len(), 10, "{v:#?}");
    }
}
