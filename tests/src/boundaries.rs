//! The code's architecture boundaries, checked on the source (ARCHITECTURE.md, "API boundaries"):
//!
//! - sled is named only by the hub's sled backend (`hub/src/store/sled.rs`) and agentd's instance database
//!   (`agentd/src/instance.rs`);
//! - the hub has no service locator: no struct with public `Arc` fields, no `HubState`, no constructor
//!   that needs `too_many_arguments`;
//! - hub code outside `api/` and `relay/` names neither tonic nor the wire types (`pb::`); it may name the
//!   two plain-data health messages (`Health`, `HistoryPoint`), which are stored as they are;
//! - the console's TUI (`state/`, `view/`, `app`, `conn`) does not import the command line (`cmd/`), nor the
//!   command line the TUI; the arguments (`args`) import nothing of the crate;
//! - no constructor takes a tuple standing in for its parameters (`(a, b): (A, B)`, or a tuple type): what
//!   constructors share is a named `…Parts` struct (whose public fields are the one place a public `Arc`
//!   field is allowed: they are taken apart in `new`);
//! - no import circle among the files of `hub/src` or `console/src` ([`import_circles`]).

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
    for krate in ["hub/src", "agentd/src", "console/src", "common/src"] {
        for (path, text) in sources(root, krate) {
            for (n, p) in tuple_parameters(&text) {
                flag(
                    &path,
                    n,
                    &format!("a tuple stands in for parameters ({p}): name them, or take a `…Parts` struct"),
                );
            }
        }
    }
    for (path, text) in sources(root, "hub/src") {
        let edge = path.starts_with("hub/src/api/") || path.starts_with("hub/src/relay/");
        let mut in_parts = false;
        for (n, l) in code(&text) {
            let t = l.trim();
            if t.contains("struct HubState") {
                flag(&path, n, "a HubState service locator");
            }
            if t.starts_with("pub struct ") && t.contains("Parts") {
                in_parts = true;
            } else if in_parts && t.starts_with('}') {
                in_parts = false;
            }
            if t.starts_with("pub ") && t.contains(": Arc<") && !t.contains("fn ") && !in_parts {
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
    // The console: the TUI and the command line share the client, the arguments, `format` and `inert`,
    // and never import each other; the arguments import nothing of the crate.
    let tui = |p: &str| {
        p.starts_with("console/src/state/")
            || p.starts_with("console/src/view/")
            || p == "console/src/app.rs"
            || p == "console/src/conn.rs"
    };
    for (path, text) in sources(root, "console/src") {
        for (n, l) in code(&text) {
            if tui(&path) && l.contains("crate::cmd") {
                flag(&path, n, "the TUI imports the CLI");
            }
            if path.starts_with("console/src/cmd/")
                && ["crate::state", "crate::view", "crate::app", "crate::conn"].iter().any(|m| l.contains(m))
            {
                flag(&path, n, "the CLI imports the TUI");
            }
            if path == "console/src/args.rs" && l.contains("crate::") {
                flag(&path, n, "the arguments import the crate (they are a leaf)");
            }
        }
    }
    for krate in ["hub/src", "console/src"] {
        for circle in import_circles(root, krate) {
            flag(krate, 0, &format!("an import circle: {}", circle.join(" → ")));
        }
    }
    out
}

/// Parameters of `fn` signatures in `text` that are tuples standing in for parameters: a tuple pattern
/// (`(a, b): (A, B)`) or a tuple type (`settings: (A, B, C)`). With the line each signature starts on.
fn tuple_parameters(text: &str) -> Vec<(usize, String)> {
    let shipped = text.split("#[cfg(test)]").next().unwrap_or_default();
    let code: String = shipped.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find("fn ") {
        let start = at + i;
        at = start + 3;
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        // The name, optional generics, then the parameter list.
        let Some(open) = code[at..].find('(').map(|o| at + o) else { break };
        if code[at..open].contains(['{', ';', '=']) {
            continue;
        }
        let (mut depth, mut close) = (0i32, open);
        for (k, c) in code[open..].char_indices() {
            match c {
                '(' | '<' | '[' => depth += 1,
                ')' | '>' | ']' if !(c == '>' && code[..open + k].ends_with('-')) => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                close = open + k;
                break;
            }
        }
        let params = &code[open + 1..close];
        let (mut depth, mut from) = (0i32, 0);
        let mut list = Vec::new();
        for (k, c) in params.char_indices() {
            match c {
                '(' | '<' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                '>' if !params[..k].ends_with('-') => depth -= 1,
                ',' if depth == 0 => {
                    list.push(&params[from..k]);
                    from = k + 1;
                }
                _ => {}
            }
        }
        list.push(&params[from..]);
        let line = code[..start].matches('\n').count() + 1;
        for p in list.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let ty = p.split_once(':').map(|(_, t)| t.trim()).unwrap_or_default();
            let tuple_type = ty.starts_with('(') && ty != "()";
            let tuple_pattern = p.starts_with('(') || p.starts_with("mut (");
            if tuple_type || tuple_pattern {
                out.push((line, p.split_whitespace().collect::<Vec<_>>().join(" ")));
            }
        }
        at = close;
    }
    out
}

/// The module a source file is, as a path inside its crate (`lifecycle/provision.rs` → `lifecycle::provision`,
/// `lib.rs` → the crate root, an empty path).
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(String::from).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The identifiers after `prefix` (`a::b::C` in `crate::a::b::C`) at every place `prefix` starts a path.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let mut path = Vec::new();
        let mut r = rest;
        loop {
            let end = r.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(r.len());
            if end == 0 {
                break;
            }
            path.push(&r[..end]);
            match r[end..].strip_prefix("::") {
                Some(next) => r = next,
                None => break,
            }
        }
        out.push(path);
    }
    out
}

/// Import circles among the files of the crate whose sources are in `src` (under `root`): files that
/// reach each other through `crate::`, `super::`, `self::` or a child module's name. Each circle is listed
/// by its files' module paths. `mod` declarations are not imports; code under `#[cfg(test)]` is left out.
pub fn import_circles(root: &Path, src: &str) -> Vec<Vec<String>> {
    let files: Vec<(Vec<String>, String)> = sources(root, src)
        .into_iter()
        .filter_map(|(rel, text)| {
            let inner = rel.strip_prefix(src)?.trim_start_matches('/').to_string();
            (!inner.starts_with("bin/") && inner != "main.rs").then(|| (module_path(&inner), text))
        })
        .collect();
    let index: std::collections::HashMap<&Vec<String>, usize> =
        files.iter().enumerate().map(|(i, (m, _))| (m, i)).collect();
    // The module a path names: its longest prefix that is a file.
    let resolve = |path: Vec<String>| -> Option<usize> {
        (1..=path.len()).rev().find_map(|n| index.get(&path[..n].to_vec()).copied())
    };
    let mut edges: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); files.len()];
    for (i, (module, text)) in files.iter().enumerate() {
        let code: String = code(text).map(|(_, l)| l).collect::<Vec<_>>().join("\n");
        let parent: Vec<String> = module.iter().take(module.len().saturating_sub(1)).cloned().collect();
        let mut targets: Vec<Vec<String>> = Vec::new();
        let owned = |p: Vec<&str>| p.into_iter().map(String::from).collect::<Vec<_>>();
        for p in paths_after(&code, "crate::") {
            targets.push(owned(p));
        }
        for p in paths_after(&code, "super::") {
            targets.push(parent.iter().cloned().chain(owned(p)).collect());
        }
        for p in paths_after(&code, "self::") {
            targets.push(module.iter().cloned().chain(owned(p)).collect());
        }
        for (child, _) in files.iter().filter(|(m, _)| m.len() == module.len() + 1 && m.starts_with(module)) {
            let name = child.last().cloned().unwrap_or_default();
            if !paths_after(&code, &format!("{name}::")).is_empty() {
                targets.push(child.clone());
            }
        }
        for t in targets {
            if let Some(j) = resolve(t).filter(|&j| j != i) {
                edges[i].insert(j);
            }
        }
    }
    // Tarjan's strongly connected components; a component of more than one file is a circle.
    struct Walk<'e> {
        edges: &'e [std::collections::BTreeSet<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on: Vec<bool>,
        next: usize,
        found: Vec<Vec<usize>>,
    }
    fn visit(w: &mut Walk, v: usize) {
        w.index[v] = Some(w.next);
        w.low[v] = w.next;
        w.next += 1;
        w.stack.push(v);
        w.on[v] = true;
        for &t in w.edges[v].clone().iter() {
            match w.index[t] {
                None => {
                    visit(w, t);
                    w.low[v] = w.low[v].min(w.low[t]);
                }
                Some(ti) if w.on[t] => w.low[v] = w.low[v].min(ti),
                Some(_) => {}
            }
        }
        if Some(w.low[v]) == w.index[v] {
            let mut component = Vec::new();
            while let Some(t) = w.stack.pop() {
                w.on[t] = false;
                component.push(t);
                if t == v {
                    break;
                }
            }
            if component.len() > 1 {
                w.found.push(component);
            }
        }
    }
    let n = files.len();
    let mut w = Walk {
        edges: &edges,
        index: vec![None; n],
        low: vec![0; n],
        stack: Vec::new(),
        on: vec![false; n],
        next: 0,
        found: Vec::new(),
    };
    for v in 0..n {
        if w.index[v].is_none() {
            visit(&mut w, v);
        }
    }
    let name = |i: usize| if files[i].0.is_empty() { "crate".to_string() } else { files[i].0.join("::") };
    let mut circles: Vec<Vec<String>> = w
        .found
        .into_iter()
        .map(|c| {
            let mut c: Vec<String> = c.into_iter().map(name).collect();
            c.sort();
            c
        })
        .collect();
    circles.sort();
    circles
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
        put("console/src/view/job.rs", "use crate::cmd::run::follow;\n");
        put("console/src/cmd/mod.rs", "use crate::state::App;\n");
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
            "console/src/cmd/mod.rs:1: the CLI imports the TUI",
        ] {
            assert!(v.iter().any(|l| l.starts_with(expected)), "{expected} not flagged in {v:#?}");
        }
        assert_eq!(v.len(), 10, "{v:#?}");
        // Named parts may carry public Arcs; a tuple standing in for parameters may not.
        put("hub/src/parts.rs", "pub struct ThingParts {\n    pub store: Arc<Store>,\n}\n");
        put(
            "hub/src/thing.rs",
            "fn new(a: u8, (b, c): (u8, u8)) {}\npub fn f(\n    s: (Option<u8>, String),\n    g: impl Fn(u8) -> (u8, u8),\n) {}\nfn ok(x: (), y: Vec<(u8, u8)>) {}\n",
        );
        let v = violations(dir.path());
        assert!(!v.iter().any(|l| l.starts_with("hub/src/parts.rs")), "{v:#?}");
        let tuples: Vec<&String> = v.iter().filter(|l| l.starts_with("hub/src/thing.rs")).collect();
        assert_eq!(tuples.len(), 2, "{tuples:#?}");
        assert!(
            tuples[0].starts_with("hub/src/thing.rs:1: a tuple")
                && tuples[1].starts_with("hub/src/thing.rs:2: a tuple")
        );
    }

    #[test]
    fn import_circles_are_found_through_every_kind_of_path() {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, text: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put("x/src/lib.rs", "mod a;\nmod b;\nmod c;\n");
        put("x/src/a/mod.rs", "mod leaf;\nuse leaf::Thing;\n");
        put("x/src/a/leaf.rs", "pub struct Thing;\n#[cfg(test)]\nmod tests { use crate::b::B; }\n");
        put("x/src/b.rs", "use crate::a::leaf::Thing;\n");
        put("x/src/c.rs", "fn f() -> crate::b::B { todo() }\n");
        assert!(import_circles(dir.path(), "x/src").is_empty(), "{:?}", import_circles(dir.path(), "x/src"));
        // A leaf that reaches back to its parent, and a three-file circle through `crate::` and `super::`.
        put("x/src/a/leaf.rs", "use super::Other;\n");
        put("x/src/b.rs", "use crate::c::C;\n");
        put("x/src/c.rs", "use crate::a::leaf::Thing;\nuse self::inner;\n");
        put("x/src/a/leaf.rs", "use super::Other;\nfn f() { crate::b::g() }\n");
        let circles = import_circles(dir.path(), "x/src");
        assert_eq!(circles, [vec!["a", "a::leaf", "b", "c"]], "{circles:?}");
    }
}
