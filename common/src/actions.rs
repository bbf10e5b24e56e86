//! The action catalog: the one definition of every remote action, shared by hub, agent and console.
//!
//! Architecture invariant: an action exists only if it is in [`CATALOG`]; its arguments are checked by
//! [`Action::parse`] at the hub (before anything is audited as accepted or dispatched) and again at the agent
//! (which adds its own allow-lists). New actions (deploy, restart-app, rollback, sync-repo) are a new
//! [`ActionSpec`] row plus an [`Action`] variant and its runner on the agent; the delivery, audit, fan-out and
//! console menus pick them up without change.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Role;

/// What kind of value an argument takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    /// A systemd unit name (`[A-Za-z0-9._@-]`, at most 128 characters).
    Unit,
    /// A log source: a unit name, or `file:/absolute/path`.
    LogSource,
    /// A whole number in `min..=max`.
    Count { min: u64, max: u64 },
    /// `true` or `false`.
    Flag,
    /// A JSON array of strings: the program and its arguments (never a shell string).
    Argv,
    /// An app name (a DNS label).
    AppName,
    /// An app spec (TOML, see `crate::app`); its secrets are redacted in the audit log.
    AppSpec,
    /// A branch, tag or commit (empty: the app's tracked ref).
    GitRef,
    /// A deployment id, `APP-N` (empty: the one before the live one).
    DeploymentId,
    /// A release version, `MAJOR.MINOR.PATCH` with an optional `-pre` or `+build` suffix.
    Version,
}

#[derive(Debug)]
pub struct ArgSpec {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: ArgKind,
    /// The value used when the argument is absent; `None` makes it required.
    pub default: Option<&'static str>,
    /// Never written to the audit log or logs.
    pub secret: bool,
}

#[derive(Debug)]
pub struct ActionSpec {
    pub name: &'static str,
    pub summary: &'static str,
    /// The least role that may run it.
    pub role: Role,
    /// Changes the server: the console and CLI ask the operator to type the target to confirm, and the hub
    /// refuses a request without that confirmation.
    pub destructive: bool,
    pub default_deadline: Duration,
    pub max_deadline: Duration,
    pub args: &'static [ArgSpec],
}

const UNIT_ARG: ArgSpec = ArgSpec {
    name: "unit",
    help: "systemd unit: k3s, outpost-agentd, or one listed in the agent's allowed_units",
    kind: ArgKind::Unit,
    default: None,
    secret: false,
};

const MIN: Duration = Duration::from_secs(60);

const APP_ARG: ArgSpec =
    ArgSpec { name: "app", help: "the app's name", kind: ArgKind::AppName, default: None, secret: false };

const LINES_ARG: ArgSpec = ArgSpec {
    name: "lines",
    help: "how many recent lines",
    kind: ArgKind::Count { min: 1, max: 10_000 },
    default: Some("100"),
    secret: false,
};

const FOLLOW_ARG: ArgSpec = ArgSpec {
    name: "follow",
    help: "keep streaming new lines until the deadline or cancel",
    kind: ArgKind::Flag,
    default: Some("false"),
    secret: false,
};

const APP_DEADLINE: Duration = Duration::from_secs(600);

pub static CATALOG: &[ActionSpec] = &[
    ActionSpec {
        name: "service-status",
        summary: "state of an allow-listed systemd unit",
        role: Role::Support,
        destructive: false,
        default_deadline: Duration::from_secs(30),
        max_deadline: Duration::from_secs(600),
        args: &[UNIT_ARG],
    },
    ActionSpec {
        name: "service-restart",
        summary: "restart an allow-listed systemd unit",
        role: Role::Support,
        destructive: true,
        default_deadline: Duration::from_secs(120),
        max_deadline: Duration::from_secs(600),
        args: &[UNIT_ARG],
    },
    ActionSpec {
        name: "diagnostics",
        summary: "a bounded bundle: versions, disks, K3s, certificate, recent agentd log lines",
        role: Role::Support,
        destructive: false,
        default_deadline: Duration::from_secs(60),
        max_deadline: Duration::from_secs(600),
        args: &[],
    },
    ActionSpec {
        name: "rotate-cert",
        summary: "renew the agent's certificate now (new key, the stream stays up)",
        role: Role::Support,
        destructive: false,
        default_deadline: Duration::from_secs(60),
        max_deadline: Duration::from_secs(600),
        args: &[],
    },
    ActionSpec {
        name: "reboot",
        summary: "reboot the server",
        role: Role::Admin,
        destructive: true,
        default_deadline: Duration::from_secs(60),
        max_deadline: Duration::from_secs(600),
        args: &[],
    },
    ActionSpec {
        name: "logs",
        summary: "recent lines of an allow-listed unit or file, optionally following",
        role: Role::Support,
        destructive: false,
        default_deadline: Duration::from_secs(30),
        max_deadline: Duration::from_secs(3600),
        args: &[
            ArgSpec {
                name: "source",
                help: "a unit (journal) or file:/path from the agent's log_files",
                kind: ArgKind::LogSource,
                default: None,
                secret: false,
            },
            LINES_ARG,
            FOLLOW_ARG,
        ],
    },
    ActionSpec {
        name: "exec",
        summary: "run a program (argv, no shell); off unless the agent enables it",
        role: Role::Admin,
        destructive: true,
        default_deadline: MIN,
        max_deadline: Duration::from_secs(3600),
        args: &[
            ArgSpec {
                name: "argv",
                help: "JSON array: program and arguments, e.g. [\"df\",\"-h\"]",
                kind: ArgKind::Argv,
                default: None,
                secret: false,
            },
            ArgSpec {
                name: "output_cap",
                help: "most output bytes kept",
                kind: ArgKind::Count { min: 1, max: MAX_OUTPUT_CAP },
                default: Some("1048576"),
                secret: false,
            },
        ],
    },
    ActionSpec {
        name: "app-apply",
        summary: "store an app's spec on the server (deploy it with app-deploy)",
        role: Role::Support,
        destructive: false,
        default_deadline: MIN,
        max_deadline: Duration::from_secs(600),
        args: &[ArgSpec {
            name: "spec",
            help: "the app spec (TOML): name, repo, image, port, env, secrets, replicas, resources, health, domains",
            kind: ArgKind::AppSpec,
            default: None,
            secret: false,
        }],
    },
    ActionSpec {
        name: "app-deploy",
        summary: "fetch the app's repository, apply its manifests and watch the rollout (rolled back on failure)",
        role: Role::Support,
        destructive: false,
        default_deadline: APP_DEADLINE,
        max_deadline: Duration::from_secs(1800),
        args: &[
            APP_ARG,
            ArgSpec {
                name: "ref",
                help: "branch, tag or commit (default: the spec's repo.ref)",
                kind: ArgKind::GitRef,
                default: Some(""),
                secret: false,
            },
        ],
    },
    ActionSpec {
        name: "app-rollback",
        summary: "run an earlier deployment again",
        role: Role::Support,
        destructive: false,
        default_deadline: APP_DEADLINE,
        max_deadline: Duration::from_secs(1800),
        args: &[
            APP_ARG,
            ArgSpec {
                name: "to",
                help: "deployment id, e.g. web-3 (default: the one before the live one)",
                kind: ArgKind::DeploymentId,
                default: Some(""),
                secret: false,
            },
        ],
    },
    ActionSpec {
        name: "app-restart",
        summary: "restart the app's pods, one at a time",
        role: Role::Support,
        destructive: false,
        default_deadline: APP_DEADLINE,
        max_deadline: Duration::from_secs(1800),
        args: &[APP_ARG],
    },
    ActionSpec {
        name: "app-scale",
        summary: "set the app's replicas (within the plan)",
        role: Role::Support,
        destructive: false,
        default_deadline: APP_DEADLINE,
        max_deadline: Duration::from_secs(1800),
        args: &[
            APP_ARG,
            ArgSpec {
                name: "replicas",
                help: "how many",
                kind: ArgKind::Count { min: 0, max: crate::app::MAX_REPLICAS as u64 },
                default: None,
                secret: false,
            },
        ],
    },
    ActionSpec {
        name: "app-logs",
        summary: "recent log lines of the app's newest pod, optionally following",
        role: Role::Support,
        destructive: false,
        default_deadline: Duration::from_secs(30),
        max_deadline: Duration::from_secs(3600),
        args: &[APP_ARG, LINES_ARG, FOLLOW_ARG],
    },
    ActionSpec {
        name: "app-remove",
        summary: "delete the app from the cluster and the server (its history goes too)",
        role: Role::Admin,
        destructive: true,
        default_deadline: Duration::from_secs(120),
        max_deadline: Duration::from_secs(600),
        args: &[APP_ARG],
    },
    ActionSpec {
        name: "repo-sync",
        summary: "fetch the app's repository and report its state (no deploy)",
        role: Role::Support,
        destructive: false,
        default_deadline: Duration::from_secs(300),
        max_deadline: Duration::from_secs(1800),
        args: &[APP_ARG],
    },
    ActionSpec {
        name: "instance-export",
        summary: "the server's apps as data (specs with their secrets, deployments, activity), as JSON: what a deprovision archives",
        role: Role::Admin,
        destructive: false,
        default_deadline: Duration::from_secs(120),
        max_deadline: Duration::from_secs(900),
        args: &[],
    },
    ActionSpec {
        name: "agent-update",
        summary: "install a signed agentd release from the hub: staged beside the running one, committed once it reconnects, replays its outbox and reports healthy, rolled back by itself otherwise",
        role: Role::Admin,
        destructive: false,
        default_deadline: Duration::from_secs(900),
        max_deadline: Duration::from_secs(7200),
        args: &[
            ArgSpec {
                name: "version",
                help: "the agentd release to install (hubd release list)",
                kind: ArgKind::Version,
                default: None,
                secret: false,
            },
            ArgSpec {
                name: "allow_downgrade",
                help: "accept a version older than the running one",
                kind: ArgKind::Flag,
                default: Some("false"),
                secret: false,
            },
        ],
    },
    ActionSpec {
        name: "k3s-status",
        summary: "K3s nodes, versions, pods and system pods, from the Kubernetes API",
        role: Role::Support,
        destructive: false,
        default_deadline: Duration::from_secs(30),
        max_deadline: Duration::from_secs(300),
        args: &[],
    },
];

/// The characters a release version may have (it names files and URL paths).
pub fn valid_version_text(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b".-+".contains(&b))
}

/// Longest path `logs` reads (and an agent may list in its `log_files`).
pub const MAX_LOG_PATH: usize = 512;

/// A path `logs` may read: absolute, no `..`, bounded, printable.
pub fn valid_log_path(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == "..") && p.len() <= MAX_LOG_PATH && crate::text::is_printable(p)
}

/// Most output one command may return.
pub const MAX_OUTPUT_CAP: u64 = 16 * 1024 * 1024;
/// Output kept of an action that has no `output_cap` argument.
pub const DEFAULT_OUTPUT_CAP: u64 = 4 * 1024 * 1024;
/// `exec`'s `output_cap` when the request leaves it out.
const EXEC_OUTPUT_CAP: u64 = 1024 * 1024;

/// The output cap of a request as it goes to the agent: the agent stops sending there and the hub drops
/// whatever an agent sends past it.
pub fn output_cap<S: std::hash::BuildHasher>(action: &str, args: &std::collections::HashMap<String, String, S>) -> u64 {
    match action {
        "exec" => args.get("output_cap").and_then(|v| v.parse().ok()).unwrap_or(EXEC_OUTPUT_CAP).min(MAX_OUTPUT_CAP),
        _ => DEFAULT_OUTPUT_CAP,
    }
}
/// All argument names and values of one request together, at most.
pub const MAX_ARGS_BYTES: usize = 32 * 1024;
const MAX_ARGV: usize = 64;

pub fn lookup(name: &str) -> Option<&'static ActionSpec> {
    CATALOG.iter().find(|a| a.name == name)
}

pub fn names() -> impl Iterator<Item = &'static str> {
    CATALOG.iter().map(|a| a.name)
}

/// Where `logs` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogSource {
    Unit(String),
    File(String),
}

/// A validated action with typed arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    ServiceStatus { unit: String },
    ServiceRestart { unit: String },
    Diagnostics,
    RotateCert,
    Reboot,
    Logs { source: LogSource, lines: u32, follow: bool },
    Exec { argv: Vec<String>, output_cap: u64 },
    AppApply { spec: String },
    AppDeploy { app: String, git_ref: Option<String> },
    AppRollback { app: String, to: Option<String> },
    AppRestart { app: String },
    AppScale { app: String, replicas: u32 },
    AppLogs { app: String, lines: u32, follow: bool },
    AppRemove { app: String },
    RepoSync { app: String },
    K3sStatus,
    InstanceExport,
    AgentUpdate { version: String, allow_downgrade: bool },
}

impl Action {
    /// The app an action works on, if it works on one.
    pub fn app(&self) -> Option<&str> {
        match self {
            Action::AppDeploy { app, .. }
            | Action::AppRollback { app, .. }
            | Action::AppRestart { app }
            | Action::AppScale { app, .. }
            | Action::AppLogs { app, .. }
            | Action::AppRemove { app }
            | Action::RepoSync { app } => Some(app),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("unknown action {0:?}; the actions are: {list}", list = names().collect::<Vec<_>>().join(", "))]
    Unknown(String),
    #[error("{action}: unknown argument {arg:?}; it takes: {takes}")]
    UnknownArg { action: &'static str, arg: String, takes: String },
    #[error("{action}: argument {arg:?} is required ({help})")]
    Missing { action: &'static str, arg: &'static str, help: &'static str },
    #[error("{action}: argument {arg:?}: {problem}")]
    Invalid { action: &'static str, arg: &'static str, problem: String },
    #[error("arguments are {0} bytes; at most {MAX_ARGS_BYTES} are allowed")]
    TooLarge(usize),
}

impl Action {
    /// Checks `name` against the catalog and `args` against its argument specs.
    pub fn parse(name: &str, args: &BTreeMap<String, String>) -> Result<(Action, &'static ActionSpec), ActionError> {
        let spec = lookup(name).ok_or_else(|| ActionError::Unknown(name.chars().take(64).collect()))?;
        let size: usize = args.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_ARGS_BYTES {
            return Err(ActionError::TooLarge(size));
        }
        for k in args.keys() {
            if !spec.args.iter().any(|a| a.name == k) {
                let takes = if spec.args.is_empty() {
                    "no arguments".to_string()
                } else {
                    spec.args.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
                };
                return Err(ActionError::UnknownArg { action: spec.name, arg: k.chars().take(64).collect(), takes });
            }
        }
        let get = |n: &'static str| -> Result<&str, ActionError> {
            let a = spec.args.iter().find(|a| a.name == n).expect("catalog arg");
            let v = args.get(n).map(String::as_str).or(a.default);
            let v = v.ok_or(ActionError::Missing { action: spec.name, arg: n, help: a.help })?;
            check(spec.name, a, v)?;
            Ok(v)
        };
        let invalid = |arg, problem: String| ActionError::Invalid { action: spec.name, arg, problem };
        let action = match spec.name {
            "service-status" => Action::ServiceStatus { unit: get("unit")?.to_string() },
            "service-restart" => Action::ServiceRestart { unit: get("unit")?.to_string() },
            "diagnostics" => Action::Diagnostics,
            "rotate-cert" => Action::RotateCert,
            "reboot" => Action::Reboot,
            "logs" => {
                let source = get("source")?;
                let source = match source.strip_prefix("file:") {
                    Some(path) => LogSource::File(path.to_string()),
                    None => LogSource::Unit(source.to_string()),
                };
                let lines = get("lines")?.parse().map_err(|e| invalid("lines", format!("{e}")))?;
                Action::Logs { source, lines, follow: get("follow")? == "true" }
            }
            "exec" => {
                let argv = serde_json::from_str(get("argv")?).map_err(|e| invalid("argv", e.to_string()))?;
                let output_cap = get("output_cap")?.parse().map_err(|e| invalid("output_cap", format!("{e}")))?;
                Action::Exec { argv, output_cap }
            }
            "app-apply" => Action::AppApply { spec: get("spec")?.to_string() },
            "app-deploy" => Action::AppDeploy {
                app: get("app")?.to_string(),
                git_ref: Some(get("ref")?.to_string()).filter(|r| !r.is_empty()),
            },
            "app-rollback" => Action::AppRollback {
                app: get("app")?.to_string(),
                to: Some(get("to")?.to_string()).filter(|r| !r.is_empty()),
            },
            "app-restart" => Action::AppRestart { app: get("app")?.to_string() },
            "app-scale" => Action::AppScale {
                app: get("app")?.to_string(),
                replicas: get("replicas")?.parse().map_err(|e| invalid("replicas", format!("{e}")))?,
            },
            "app-logs" => Action::AppLogs {
                app: get("app")?.to_string(),
                lines: get("lines")?.parse().map_err(|e| invalid("lines", format!("{e}")))?,
                follow: get("follow")? == "true",
            },
            "app-remove" => Action::AppRemove { app: get("app")?.to_string() },
            "repo-sync" => Action::RepoSync { app: get("app")?.to_string() },
            "k3s-status" => Action::K3sStatus,
            "instance-export" => Action::InstanceExport,
            "agent-update" => Action::AgentUpdate {
                version: get("version")?.to_string(),
                allow_downgrade: get("allow_downgrade")? == "true",
            },
            other => unreachable!("catalog action {other} has no parser"),
        };
        Ok((action, spec))
    }
}

fn check(action: &'static str, a: &ArgSpec, v: &str) -> Result<(), ActionError> {
    let bad = |problem: String| Err(ActionError::Invalid { action, arg: a.name, problem });
    match a.kind {
        ArgKind::Unit if !valid_unit(v) => {
            bad(format!("{v:?} is not a systemd unit name (letters, digits, . _ @ -, at most 128)"))
        }
        ArgKind::LogSource => match v.strip_prefix("file:") {
            Some(p) if !valid_log_path(p) => {
                bad(format!("{p:?} must be an absolute path without '..', at most {MAX_LOG_PATH} bytes"))
            }
            Some(_) => Ok(()),
            None if !valid_unit(v) => bad(format!("{v:?} is neither a unit name nor file:/absolute/path")),
            None => Ok(()),
        },
        ArgKind::Count { min, max } => match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(()),
            _ => bad(format!("{v:?} is not a whole number in {min}..={max}")),
        },
        ArgKind::Flag if v != "true" && v != "false" => bad(format!("{v:?} is not true or false")),
        ArgKind::Argv => match serde_json::from_str::<Vec<String>>(v) {
            Err(_) => bad("must be a JSON array of strings, e.g. [\"df\",\"-h\"] (no shell string)".into()),
            Ok(argv) if argv.is_empty() || argv.len() > MAX_ARGV => {
                bad(format!("has {} items; 1..={MAX_ARGV} are allowed", argv.len()))
            }
            Ok(argv) if argv[0].is_empty() || argv.iter().any(|s| s.contains('\0')) => {
                bad("the program is empty or an item contains a NUL byte".into())
            }
            Ok(_) => Ok(()),
        },
        ArgKind::AppName if !crate::cert::valid_name(v) => {
            bad(format!("{} is not an app name (1-63 of a-z, 0-9 and '-')", crate::text::excerpt(v, 64)))
        }
        // The hub checks the shape; the agent checks again with the server's plan and its repo_roots.
        ArgKind::AppSpec => crate::app::AppSpec::parse(v, None, &crate::app::RepoRoots::any_local())
            .map(drop)
            .map_err(|e| ActionError::Invalid { action, arg: a.name, problem: e.to_string() }),
        ArgKind::GitRef if !v.is_empty() => {
            crate::app::check_ref(v).map_err(|problem| ActionError::Invalid { action, arg: a.name, problem })
        }
        ArgKind::Version if v.len() > 64 || crate::release::parse_version(v).is_none() || !valid_version_text(v) => {
            bad(format!("{} is not a release version (MAJOR.MINOR.PATCH, e.g. 0.2.0)", crate::text::excerpt(v, 64)))
        }
        ArgKind::DeploymentId if !v.is_empty() && !valid_deployment_id(v) => {
            bad(format!("{} is not a deployment id (APP-N, e.g. web-3)", crate::text::excerpt(v, 64)))
        }
        _ => Ok(()),
    }
}

/// `APP-N`: an app name, '-', a number.
pub fn valid_deployment_id(v: &str) -> bool {
    v.rsplit_once('-').is_some_and(|(app, n)| {
        crate::cert::valid_name(app) && !n.is_empty() && n.len() <= 12 && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// What an operator types to confirm a destructive action on `targets`: the server name for one, the count
/// for several. The console, the CLI and the hub all apply this one rule.
pub fn confirmation(targets: &[String]) -> String {
    if targets.len() == 1 { targets[0].clone() } else { targets.len().to_string() }
}

pub fn valid_unit(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && !v.starts_with('-')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c))
}

/// Whether argument `arg` of `action` carries a secret the hub must never hold in the clear: a secret
/// argument (by the catalog, or by a name that looks like one when the action or argument is unknown) or
/// an app spec (its `[secrets]`).
pub fn is_secret_bearing(action: &str, arg: &str) -> bool {
    match lookup(action).and_then(|s| s.args.iter().find(|a| a.name == arg)) {
        Some(a) => a.secret || a.kind == ArgKind::AppSpec,
        None => {
            let k = arg.to_ascii_lowercase();
            ["secret", "token", "password", "key", "credential"].iter().any(|w| k.contains(w))
        }
    }
}

/// `args` as they may be written to the audit log: secret arguments (by spec, or by a name that looks
/// like a secret when the action or argument is unknown) become `<redacted>`.
pub fn redacted(action: &str, args: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let spec = lookup(action);
    args.iter()
        .map(|(k, v)| {
            let secret =
                spec.and_then(|s| s.args.iter().find(|a| a.name == k)).map(|a| a.secret).unwrap_or_else(|| {
                    let k = k.to_ascii_lowercase();
                    ["secret", "token", "password", "key", "credential"].iter().any(|w| k.contains(w))
                });
            let is_spec =
                spec.and_then(|s| s.args.iter().find(|a| a.name == k)).is_some_and(|a| a.kind == ArgKind::AppSpec);
            let shown = if is_spec {
                // The spec without its secret values.
                match toml::from_str::<crate::app::AppSpec>(v) {
                    Ok(s) => toml::to_string(&s.redacted()).unwrap_or_else(|_| "<redacted>".into()),
                    Err(_) => "<redacted: not a valid spec>".into(),
                }
            } else if secret {
                "<redacted>".to_string()
            } else if v.len() > 1024 {
                format!("{}… ({} bytes)", v.chars().take(256).collect::<String>(), v.len())
            } else {
                v.clone()
            };
            (k.chars().take(64).collect(), shown)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_catalog_action_parses_with_its_defaults_and_required_args() {
        for spec in CATALOG {
            let mut a = BTreeMap::new();
            for arg in spec.args.iter().filter(|a| a.default.is_none()) {
                let v = match arg.kind {
                    ArgKind::Argv => "[\"true\"]",
                    ArgKind::Count { .. } => "1",
                    ArgKind::Version => "0.2.0",
                    ArgKind::AppSpec => {
                        "name = \"web\"\nimage = \"nginx\"\nport = 80\n[repo]\nurl = \"https://github.com/a/b.git\"\n"
                    }
                    _ => "k3s",
                };
                a.insert(arg.name.to_string(), v.to_string());
            }
            let (_, s) = Action::parse(spec.name, &a).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
            assert!(s.default_deadline <= s.max_deadline, "{}", spec.name);
        }
    }

    #[test]
    fn bad_arguments_are_named() {
        let e = |name, kv| Action::parse(name, &args(kv)).unwrap_err().to_string();
        assert!(e("nope", &[]).starts_with("unknown action \"nope\"; the actions are: service-status"));
        assert!(e("service-status", &[]).contains("argument \"unit\" is required"));
        assert!(e("service-status", &[("unit", "k3s; rm -rf /")]).contains("is not a systemd unit name"));
        assert!(e("service-status", &[("unit", "k3s"), ("x", "1")]).contains("unknown argument \"x\"; it takes: unit"));
        assert!(e("reboot", &[("force", "1")]).contains("it takes: no arguments"));
        assert!(e("logs", &[("source", "file:../etc/shadow")]).contains("absolute path"));
        assert!(e("logs", &[("source", "file:/var/log/../../etc/shadow")]).contains("without '..'"));
        assert!(e("logs", &[("source", "k3s"), ("lines", "0")]).contains("1..=10000"));
        assert!(e("logs", &[("source", "k3s"), ("follow", "yes")]).contains("not true or false"));
        assert!(e("exec", &[("argv", "rm -rf /")]).contains("JSON array of strings"));
        assert!(e("exec", &[("argv", "[]")]).contains("has 0 items"));
        let big = "x".repeat(MAX_ARGS_BYTES);
        assert!(e("exec", &[("argv", &big)]).contains("at most 32768 are allowed"));
    }

    #[test]
    fn app_actions_check_their_arguments_and_the_audit_never_sees_a_secret() {
        let e = |name, kv| Action::parse(name, &args(kv)).unwrap_err().to_string();
        assert!(e("app-deploy", &[("app", "Web!")]).contains("is not an app name"));
        assert!(e("app-deploy", &[("app", "web"), ("ref", "--upload-pack=x")]).contains("not a branch, tag or commit"));
        assert!(e("app-rollback", &[("app", "web"), ("to", "../x")]).contains("not a deployment id"));
        assert!(e("app-scale", &[("app", "web"), ("replicas", "99")]).contains("0..=20"));
        assert!(e("app-apply", &[("spec", "name = \"web\"\nport = 0\n")]).contains("the app spec is invalid"));
        let (a, _) = Action::parse("app-deploy", &args(&[("app", "web")])).unwrap();
        assert_eq!(a, Action::AppDeploy { app: "web".into(), git_ref: None });
        let (a, _) = Action::parse("app-rollback", &args(&[("app", "web"), ("to", "web-3")])).unwrap();
        assert_eq!(a, Action::AppRollback { app: "web".into(), to: Some("web-3".into()) });
        // A local repository path is the agent's to judge (its repo_roots), not the hub's.
        let local = "name = \"web\"\nimage = \"nginx\"\nport = 80\n[repo]\nurl = \"/srv/git/web.git\"\n[secrets]\nDB = \"hunter2\"\n";
        Action::parse("app-apply", &args(&[("spec", local)])).unwrap();
        let shown = redacted("app-apply", &args(&[("spec", local)]));
        assert!(!shown["spec"].contains("hunter2") && shown["spec"].contains("<secret>"), "{shown:?}");
    }

    #[test]
    fn typed_values() {
        let (a, _) = Action::parse("logs", &args(&[("source", "file:/var/log/syslog"), ("follow", "true")])).unwrap();
        assert_eq!(a, Action::Logs { source: LogSource::File("/var/log/syslog".into()), lines: 100, follow: true });
        let (a, spec) = Action::parse("exec", &args(&[("argv", "[\"df\",\"-h\"]")])).unwrap();
        assert_eq!(a, Action::Exec { argv: vec!["df".into(), "-h".into()], output_cap: 1048576 });
        assert!(spec.destructive && spec.role == Role::Admin);
    }

    #[test]
    fn secrets_are_redacted() {
        let r = redacted("nope", &args(&[("api_token", "s3cr3t"), ("unit", "k3s")]));
        assert_eq!(r["api_token"], "<redacted>");
        assert_eq!(r["unit"], "k3s");
    }
}
