//! The app spec: what the operator (or the repository's own `outpost.toml`) says an app is. One
//! definition, checked at the hub before a request is audited as accepted and again at the agent, with the
//! server's plan.
//!
//! Every value is validated and every problem is reported at once, each naming its field. Nothing in a
//! spec reaches a shell: the image is a reference, the repository URL and ref are checked before git sees
//! them (no `ext::` transport, no option-shaped ref), and secrets live in `[secrets]` (encrypted at rest by
//! the agent, never reported).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most apps' replicas.
pub const MAX_REPLICAS: u32 = 20;
const MAX_DOMAINS: usize = 16;
const MAX_ENV: usize = 128;
const MAX_VALUE: usize = 4096;
const MAX_SECRET: usize = 64 * 1024;

/// An app, as deployed on one server.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// A DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'.
    pub name: String,
    pub repo: RepoSpec,
    /// An image reference; `{commit}` is replaced by the deployed commit.
    pub image: String,
    /// The port the app listens on.
    pub port: u16,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Encrypted at rest on the agent; never in reports, logs or the audit log.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub domains: Vec<String>,
    /// Deploy when the tracked branch moves.
    #[serde(default)]
    pub auto_deploy: bool,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepoSpec {
    /// `https://…`, `ssh://…`, `git@host:path`, or a path under one of the agent's allowed roots.
    pub url: String,
    /// Branch, tag or commit to deploy (default `main`).
    #[serde(default = "main", rename = "ref")]
    pub git_ref: String,
    /// The app's directory inside the repository (relative).
    #[serde(default)]
    pub path: String,
    /// The name of a secret in `[secrets]` that holds an SSH deploy key (for an ssh URL).
    #[serde(default)]
    pub deploy_key: Option<String>,
    /// The git host's public keys, as known_hosts lines (`[host]:port ssh-ed25519 AAAA…`): required with a
    /// deploy key, so the host is verified, never trusted on first use.
    #[serde(default)]
    pub known_hosts: Option<String>,
}

fn main() -> String {
    "main".into()
}

/// Requests and limits per replica, as Kubernetes quantities (`500m`, `0.5`, `256Mi`, `1Gi`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// An HTTP path, starting with '/'.
    pub path: String,
    /// Default: the app's port.
    pub port: Option<u16>,
}

/// What a plan allows one customer on one server (its namespace's quota).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub storage_bytes: u64,
}

impl PlanLimits {
    /// The product's plans: Starter 0.5 CPU / 512 MiB / 100 MiB, Pro 1 / 1 GiB / 500 MiB, Team 2 / 2 GiB / 2 GiB.
    pub fn named(plan: &str) -> Option<PlanLimits> {
        const MI: u64 = 1 << 20;
        Some(match plan {
            "starter" => PlanLimits { cpu_millis: 500, memory_bytes: 512 * MI, storage_bytes: 100 * MI },
            "pro" => PlanLimits { cpu_millis: 1000, memory_bytes: 1024 * MI, storage_bytes: 500 * MI },
            "team" => PlanLimits { cpu_millis: 2000, memory_bytes: 2048 * MI, storage_bytes: 2048 * MI },
            _ => return None,
        })
    }

    /// What a container without resources of its own may use (the project's LimitRange default): half the
    /// plan, at most 250m and 256 MiB.
    pub fn container_default(&self) -> (u64, u64) {
        ((self.cpu_millis / 2).clamp(1, 250), (self.memory_bytes / 2).min(256 << 20))
    }
}

/// What pods hold against a project's quota: CPU millicores and memory bytes (their limits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Footprint {
    /// `n` pods of this footprint, added to `self`.
    pub fn plus(self, n: u64, pod: Footprint) -> Footprint {
        Footprint {
            cpu_millis: self.cpu_millis + n * pod.cpu_millis,
            memory_bytes: self.memory_bytes + n * pod.memory_bytes,
        }
    }
}

/// How a rollout replaces an app's pods within its plan's quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fit {
    /// One extra pod first, then the old ones go (maxSurge 1, maxUnavailable 0): no capacity lost.
    Surge,
    /// No extra pod: one old pod goes before each new one starts (maxSurge 0, maxUnavailable 1). The
    /// words say why and what it costs (for a single replica, a short outage).
    OneAtATime(String),
}

impl Fit {
    pub fn surge(&self) -> bool {
        matches!(self, Fit::Surge)
    }
}

/// Where a local repository may live (tests and mirrors); every other local path is refused.
#[derive(Clone, Debug, Default)]
pub struct RepoRoots(pub Vec<PathBuf>);

impl RepoRoots {
    /// Any absolute local path: for the hub, which checks a spec's shape and leaves the server's own
    /// `repo_roots` to its agent.
    pub fn any_local() -> RepoRoots {
        RepoRoots(vec![PathBuf::from("/")])
    }
}

/// A spec that failed validation: every problem, each naming its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the app spec is invalid: {}", .0.join("; "))]
pub struct SpecError(pub Vec<String>);

impl AppSpec {
    /// What one pod holds against the quota (cpu millis, memory bytes): its limits, or the plan's
    /// container default where it sets none (the LimitRange gives it that limit).
    pub fn pod_limits(&self, plan: &PlanLimits) -> Footprint {
        let (cpu, mem) = plan.container_default();
        let r = &self.resources;
        Footprint {
            cpu_millis: r.cpu_limit.as_deref().and_then(|c| cpu_millis(c).ok()).unwrap_or(cpu),
            memory_bytes: r.memory_limit.as_deref().and_then(|m| bytes(m).ok()).unwrap_or(mem),
        }
    }

    /// How a rollout of `replicas` pods fits the plan's quota beside `others` (what the project's other
    /// apps hold, cpu millis and memory bytes). A rolling update with a surge needs room for one more pod
    /// than the app runs; without that room it goes one pod at a time; `Err` when even the steady state
    /// does not fit (said in words, before anything is applied).
    pub fn rollout_fit(&self, plan: &PlanLimits, others: Footprint, replicas: u32) -> Result<Fit, String> {
        let pod = self.pod_limits(plan);
        let (cpu, mem) = (pod.cpu_millis, pod.memory_bytes);
        let n = u64::from(replicas.max(1));
        let fits = |f: Footprint| f.cpu_millis <= plan.cpu_millis && f.memory_bytes <= plan.memory_bytes;
        let steady = others.plus(n, pod);
        let (c, m) = (steady.cpu_millis, steady.memory_bytes);
        if !fits(steady) {
            return Err(format!(
                "{n} replica(s) × {cpu}m / {} MiB{} need {c}m / {} MiB, over the plan's {}m / {} MiB: lower replicas or resources, or move to a larger plan",
                mem >> 20,
                if others == Footprint::default() {
                    String::new()
                } else {
                    format!(
                        " beside the project's other apps ({}m / {} MiB)",
                        others.cpu_millis,
                        others.memory_bytes >> 20
                    )
                },
                m >> 20,
                plan.cpu_millis,
                plan.memory_bytes >> 20
            ));
        }
        if fits(others.plus(n + 1, pod)) {
            return Ok(Fit::Surge);
        }
        let why = format!(
            "the plan's quota ({}m / {} MiB) has no room for a surge pod ({cpu}m / {} MiB) beside {n} running",
            plan.cpu_millis,
            plan.memory_bytes >> 20,
            mem >> 20
        );
        Ok(Fit::OneAtATime(if n == 1 {
            format!(
                "{why}: the old pod stops before the new one starts (a short outage); two replicas, or lower limits, roll without one"
            )
        } else {
            format!("{why}: pods are replaced one at a time, {} of {n} serving meanwhile", n - 1)
        }))
    }

    /// Parses and validates a spec. `plan` bounds its resources (none: only the shape is checked, as the
    /// hub does for a server whose plan it does not know).
    pub fn parse(text: &str, plan: Option<PlanLimits>, roots: &RepoRoots) -> Result<AppSpec, SpecError> {
        let spec: AppSpec = toml::from_str(text).map_err(|e| SpecError(vec![toml_problem(text, &e)]))?;
        spec.validate(plan, roots)?;
        Ok(spec)
    }

    /// The operator's spec over the repository's own `outpost.toml`: each key the operator sets wins
    /// (tables are merged key by key), then the result is validated.
    pub fn merged(
        repo: &str,
        operator: &str,
        plan: Option<PlanLimits>,
        roots: &RepoRoots,
    ) -> Result<AppSpec, SpecError> {
        let parse = |what: &str, t: &str| {
            t.parse::<toml::Table>().map_err(|e| SpecError(vec![format!("{what}: {}", toml_problem(t, &e))]))
        };
        let mut base = parse("the repository's outpost.toml", repo)?;
        merge(&mut base, parse("the operator's spec", operator)?);
        AppSpec::parse(&base.to_string(), plan, roots)
    }

    pub fn validate(&self, plan: Option<PlanLimits>, roots: &RepoRoots) -> Result<(), SpecError> {
        let mut p = Vec::new();
        if !crate::cert::valid_name(&self.name) {
            p.push(format!(
                "name {} must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
                crate::text::excerpt(&self.name, 64)
            ));
        }
        if let Err(e) = check_repo_url(&self.repo.url, roots) {
            p.push(format!("repo.url: {e}"));
        }
        if let Err(e) = check_ref(&self.repo.git_ref) {
            p.push(format!("repo.ref: {e}"));
        }
        if let Err(e) = check_sub_path(&self.repo.path) {
            p.push(format!("repo.path: {e}"));
        }
        if let Some(k) = &self.repo.deploy_key {
            if !self.secrets.contains_key(k) {
                p.push(format!("repo.deploy_key: {k:?} is not a key of [secrets] (put the private key there)"));
            }
            if !is_ssh_url(&self.repo.url) {
                p.push("repo.deploy_key: deploy keys are for ssh URLs (ssh://… or git@host:path)".into());
            }
            match &self.repo.known_hosts {
                None => p.push("repo.known_hosts: required with a deploy key: the git host's public key lines (ssh-keyscan HOST), so the host is verified".into()),
                Some(kh) => {
                    let lines: Vec<&str> = kh.lines().filter(|l| !l.trim().is_empty()).collect();
                    if kh.len() > 16 * 1024
                        || lines.is_empty()
                        || lines.iter().any(|l| l.split_whitespace().count() < 3 || !crate::text::is_printable(l))
                    {
                        p.push("repo.known_hosts: known_hosts lines (`HOST KEYTYPE KEY`), at most 16 KiB".into());
                    }
                }
            }
        }
        if let Err(e) = check_image(&self.image) {
            p.push(format!("image: {e}"));
        }
        if self.port == 0 {
            p.push("port: 0 is not a port; give 1-65535".into());
        }
        if self.env.len() > MAX_ENV || self.secrets.len() > MAX_ENV {
            p.push(format!("env and secrets: at most {MAX_ENV} entries each"));
        }
        for (k, v) in &self.env {
            if !env_name(k) {
                p.push(format!(
                    "env.{}: not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128)",
                    crate::text::excerpt(k, 64)
                ));
            } else if looks_secret(k) {
                p.push(format!("env.{k}: the name says it holds a secret; put it under [secrets], which is encrypted at rest and never reported"));
            }
            if v.len() > MAX_VALUE || !crate::text::is_printable(v) {
                p.push(format!(
                    "env.{}: at most {MAX_VALUE} bytes without control characters",
                    crate::text::excerpt(k, 64)
                ));
            }
        }
        for (k, v) in &self.secrets {
            if !env_name(k) {
                p.push(format!(
                    "secrets.{}: not a variable name ([A-Za-z_][A-Za-z0-9_]*, at most 128)",
                    crate::text::excerpt(k, 64)
                ));
            }
            if self.env.contains_key(k) {
                p.push(format!("secrets.{k}: also set in env; a name is one or the other"));
            }
            if v.is_empty() || v.len() > MAX_SECRET {
                // The value is never echoed.
                p.push(format!("secrets.{k}: 1 to {MAX_SECRET} bytes"));
            }
        }
        if self.replicas > MAX_REPLICAS {
            p.push(format!("replicas: {} is over the limit of {MAX_REPLICAS}", self.replicas));
        }
        let r = &self.resources;
        let cpu = |f: &str, v: &Option<String>, p: &mut Vec<String>| match v.as_deref().map(cpu_millis) {
            Some(Err(e)) => {
                p.push(format!("resources.{f}: {e}"));
                None
            }
            Some(Ok(m)) => Some(m),
            None => None,
        };
        let mem = |f: &str, v: &Option<String>, p: &mut Vec<String>| match v.as_deref().map(bytes) {
            Some(Err(e)) => {
                p.push(format!("resources.{f}: {e}"));
                None
            }
            Some(Ok(b)) => Some(b),
            None => None,
        };
        let (cpu_req, cpu_lim) = (cpu("cpu_request", &r.cpu_request, &mut p), cpu("cpu_limit", &r.cpu_limit, &mut p));
        let (mem_req, mem_lim) =
            (mem("memory_request", &r.memory_request, &mut p), mem("memory_limit", &r.memory_limit, &mut p));
        if let (Some(q), Some(l)) = (cpu_req, cpu_lim)
            && q > l
        {
            p.push("resources.cpu_request: more than cpu_limit".into());
        }
        if let (Some(q), Some(l)) = (mem_req, mem_lim)
            && q > l
        {
            p.push("resources.memory_request: more than memory_limit".into());
        }
        if let Some(plan) = plan {
            let n = u64::from(self.replicas.max(1));
            if let Some(c) = cpu_lim.or(cpu_req)
                && c * n > plan.cpu_millis
            {
                p.push(format!("resources.cpu_limit: {n} replica(s) × {c}m is over the plan's {}m", plan.cpu_millis));
            }
            if let Some(m) = mem_lim.or(mem_req)
                && m * n > plan.memory_bytes
            {
                p.push(format!(
                    "resources.memory_limit: {n} replica(s) × {} MiB is over the plan's {} MiB",
                    m >> 20,
                    plan.memory_bytes >> 20
                ));
            }
        }
        if let Some(h) = &self.health {
            if !h.path.starts_with('/') || h.path.len() > 256 || !h.path.bytes().all(|b| b.is_ascii_graphic()) {
                p.push("health.path: an HTTP path starting with '/', at most 256 visible ASCII characters".into());
            }
            if h.port == Some(0) {
                p.push("health.port: 0 is not a port; give 1-65535".into());
            }
        }
        if self.domains.len() > MAX_DOMAINS {
            p.push(format!("domains: at most {MAX_DOMAINS}"));
        }
        for d in &self.domains {
            if !dns_name(d) {
                p.push(format!("domains: {} is not a DNS name", crate::text::excerpt(d, 64)));
            }
        }
        if p.is_empty() { Ok(()) } else { Err(SpecError(p)) }
    }

    /// The image to deploy for `commit`.
    pub fn image_for(&self, commit: &str) -> String {
        self.image.replace("{commit}", commit)
    }

    /// The spec without secret values (for reports, logs and the audit log): each value is `<secret>`.
    pub fn redacted(&self) -> AppSpec {
        let mut s = self.clone();
        s.secrets.values_mut().for_each(|v| *v = "<secret>".into());
        s.repo.url = redact_url(&s.repo.url);
        s
    }
}

/// A TOML error as "line N, key K: what is wrong", so it names the field and never what it held: the
/// line may be in `[secrets]`, or hold a URL with a password. What the parser says is kept only outside
/// `[secrets]` (its type errors quote the value: "invalid type: integer `5`").
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else { return "not valid TOML".to_string() };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.get(line_no - 1).copied().unwrap_or_default().trim();
    // The table the line is in: the nearest `[header]` above it (or on it).
    let table = lines[..line_no.min(lines.len())]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
        .unwrap_or_default();
    let key: String = line
        .split('=')
        .next()
        .filter(|_| line.contains('=') && !line.starts_with('['))
        .map(|k| k.trim().trim_matches('"'))
        .filter(|k| {
            !k.is_empty() && k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        })
        .unwrap_or_default()
        .to_string();
    let place = match (table.is_empty(), key.is_empty()) {
        (true, true) => format!("line {line_no}"),
        (true, false) => format!("line {line_no}, key {key}"),
        (false, true) => format!("line {line_no} (in [{}])", crate::text::truncate_bytes(&table, 64)),
        (false, false) => format!("line {line_no}, key {key} (in [{}])", crate::text::truncate_bytes(&table, 64)),
    };
    let secret_bearing = table == "secrets" || table.starts_with("secrets.") || looks_secret(&key);
    if secret_bearing {
        format!("{place}: not a valid TOML string (the value is not shown: it is a secret)")
    } else {
        // toml's syntax messages describe what was expected; cut to one line and bounded.
        let said = e.message().lines().next().unwrap_or_default();
        format!("{place}: {}", crate::text::inert(crate::text::truncate_bytes(said, 200)))
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `ssh://…` or scp-like `user@host:path`.
pub fn is_ssh_url(url: &str) -> bool {
    url.starts_with("ssh://")
        || (!url.contains("://") && url.split_once(':').is_some_and(|(h, _)| h.contains('@') && !h.contains('/')))
}

fn env_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn looks_secret(k: &str) -> bool {
    let k = k.to_ascii_uppercase();
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "PRIVATE_KEY", "API_KEY", "CREDENTIAL"].iter().any(|w| k.contains(w))
}

fn dns_name(d: &str) -> bool {
    d.len() <= 253 && d.split('.').count() >= 2 && d.split('.').all(crate::cert::valid_name)
}

/// A repository URL git may fetch: `https://`, `ssh://`, `git@host:path`, or a local path under `roots`.
/// Refused: other transports (`ext::` runs a command, `file://` and `git://` are unauthenticated or local),
/// anything option-shaped (the URL, its user or its host: `ssh://-oProxyCommand=…/x`), credentials in the
/// URL (a password in `https://user:pw@…` or `ssh://git:pw@…`; a bare ssh user name is not one), control
/// characters. The one check, used by the hub before it audits a spec and by the agent before git runs.
/// Its errors never quote a URL that could hold a credential; only a plain local path (no scheme, no `:`)
/// is named back.
pub fn check_repo_url(url: &str, roots: &RepoRoots) -> Result<(), String> {
    if url.is_empty() || url.len() > 1024 {
        return Err("1-1024 characters".into());
    }
    if url.starts_with('-') {
        return Err("must not start with '-' (git would read it as an option)".into());
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("no spaces or control characters".into());
    }
    // `transport::address` makes git run `git-remote-transport` (an IPv6 host's `[::1]` is not that).
    if url.split_once("::").is_some_and(|(t, _)| !t.contains('[')) {
        return Err("git remote helpers (`ext::`, `fd::`, …) are refused: they run commands".into());
    }
    if let Some((scheme, rest)) = url.split_once("://")
        && (scheme == "https" || scheme == "ssh")
    {
        let authority = rest.split('/').next().unwrap_or_default();
        let host_port = match authority.rsplit_once('@') {
            None => authority,
            Some(_) if scheme == "https" => {
                return Err("no credentials in the URL: use a deploy key (repo.deploy_key)".into());
            }
            Some((user, _)) if user.contains(':') => {
                return Err(
                    "no credentials in the URL (a password after the user name): use a deploy key (repo.deploy_key)"
                        .into(),
                );
            }
            Some((user, host)) => {
                check_url_user(user)?;
                host
            }
        };
        check_url_host(host_port, true)?;
        if rest.len() <= authority.len() + 1 {
            return Err("needs a host and a repository path".into());
        }
        return Ok(());
    }
    if url.contains("://") {
        return Err(
            "transports allowed: https://, ssh://, git@host:path, or a local path under the agent's repo_roots".into(),
        );
    }
    if let Some((user_host, path)) = url.split_once(':')
        && !url.starts_with('/')
    {
        // scp-like: user@host:path
        let Some((user, host)) = user_host.split_once('@').filter(|_| !user_host.contains('/')) else {
            return Err("not a URL git can use safely: https://, ssh://, git@host:path".into());
        };
        check_url_user(user)?;
        check_url_host(host, false)?;
        if path.is_empty() || path.starts_with('-') {
            return Err("needs a repository path after the ':' (not starting with '-')".into());
        }
        return Ok(());
    }
    let path = Path::new(url);
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("a local repository must be an absolute path without '..'".into());
    }
    if roots.0.iter().any(|r| path.starts_with(r)) {
        Ok(())
    } else {
        Err(format!(
            "{url} is a local path outside the agent's repo_roots ({})",
            if roots.0.is_empty() {
                "none allowed".to_string()
            } else {
                roots.0.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
            }
        ))
    }
}

/// An ssh user name in a URL: letters, digits, `.`, `_`, `-`, not option-shaped.
fn check_url_user(user: &str) -> Result<(), String> {
    if user.is_empty()
        || user.len() > 64
        || user.starts_with('-')
        || !user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("the user name must be 1-64 of letters, digits, '.', '_' and '-', not starting with '-'".into());
    }
    Ok(())
}

/// A host (DNS name, IPv4, or `[IPv6]`), with a port when `port_ok`: never option-shaped.
fn check_url_host(host_port: &str, port_ok: bool) -> Result<(), String> {
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, rest)) if addr.parse::<std::net::Ipv6Addr>().is_ok() => {
                (addr, rest.strip_prefix(':').map(Some).unwrap_or(if rest.is_empty() { None } else { Some("x") }))
            }
            _ => return Err("the host is not a valid [IPv6] address".into()),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) if port_ok => (h, Some(p)),
            _ => (host_port, None),
        }
    };
    if let Some(p) = port
        && !(port_ok && p.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err("the port must be a number from 1 to 65535".into());
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if name_ok || host.parse::<std::net::Ipv6Addr>().is_ok() {
        Ok(())
    } else {
        Err("the host must be a DNS name or an IP address (letters, digits, '-' and '.'; never starting with '-')"
            .into())
    }
}

/// `url` as it may be shown or audited: a password in its user-info replaced with `<redacted>`.
pub fn redact_url(url: &str) -> String {
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or_default();
            let kept = if user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                user
            } else {
                "<redacted>"
            };
            let pw = if authority[..authority.len() - host.len() - 1].contains(':') { ":<redacted>" } else { "" };
            format!("{prefix}{kept}{pw}@{host}{}", &rest[authority_end..])
        }
        None => url.to_string(),
    }
}

/// A branch, tag or commit name git will not read as anything else (rules of `git check-ref-format`, and
/// never option-shaped).
pub fn check_ref(r: &str) -> Result<(), String> {
    let bad = r.is_empty()
        || r.len() > 255
        || r.starts_with('-')
        || r.starts_with('/')
        || r.ends_with('/')
        || r.ends_with('.')
        || r.ends_with(".lock")
        || r.contains("..")
        || r.contains("@{")
        || r.contains("//")
        || r == "@"
        || r.chars().any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        Err(format!(
            "{} is not a branch, tag or commit name (no leading '-', spaces, '..', '~^:?*[\\', '@{{')",
            crate::text::excerpt(r, 64)
        ))
    } else {
        Ok(())
    }
}

fn check_sub_path(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    if p.len() > 512 || path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("a relative path inside the repository, without '..'".into());
    }
    Ok(())
}

/// An image reference: `[registry/]name[:tag][@digest]`, lowercase path, `{commit}` allowed in the tag.
fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() || image.len() > 255 {
        return Err("1-255 characters".into());
    }
    let plain = image.replace("{commit}", "c");
    if let Some(c) = plain.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-/:@".contains(*c))) {
        return Err(format!(
            "{c:?} is not allowed in an image reference (letters, digits, . _ - / : @ and {{commit}})"
        ));
    }
    let name = plain.split(['@']).next().unwrap_or_default();
    let last = name.rsplit('/').next().unwrap_or_default();
    let repo_part = last.split(':').next().unwrap_or_default();
    if repo_part.is_empty() || plain.starts_with(['-', '/', '.', ':']) {
        return Err("needs an image name, e.g. ghcr.io/acme/web:{commit}".into());
    }
    Ok(())
}

/// CPU as millicores: `500m`, `0.5`, `2`.
pub fn cpu_millis(q: &str) -> Result<u64, String> {
    let bad = || format!("{q:?} is not a CPU quantity (e.g. 250m, 0.5, 1)");
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| bad()).and_then(|v| if v == 0 { Err(bad()) } else { Ok(v) });
    }
    let v: f64 = q.parse().map_err(|_| bad())?;
    if !(v > 0.0 && v <= 1024.0) {
        return Err(bad());
    }
    Ok((v * 1000.0).round() as u64)
}

/// Memory and storage as bytes: `256Mi`, `1Gi`, `512M`, `1000000`.
pub fn bytes(q: &str) -> Result<u64, String> {
    let bad = || format!("{q:?} is not a size (e.g. 256Mi, 1Gi)");
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ]
    .iter()
    .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
    .unwrap_or((q, 1));
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(mult).filter(|b| *b > 0).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "web"
image = "ghcr.io/acme/web:{commit}"
port = 8080
replicas = 2
domains = ["acme.example.com"]
auto_deploy = true

[repo]
url = "https://github.com/acme/web.git"
ref = "main"
path = "services/web"

[env]
RUST_LOG = "info"

[secrets]
DATABASE_URL = "postgres://u:p@db/acme"

[resources]
cpu_request = "100m"
cpu_limit = "250m"
memory_request = "128Mi"
memory_limit = "256Mi"

[health]
path = "/healthz"
"#;

    fn roots() -> RepoRoots {
        RepoRoots(vec![PathBuf::from("/srv/repos")])
    }

    fn problems(text: &str) -> String {
        AppSpec::parse(text, PlanLimits::named("pro"), &roots()).unwrap_err().to_string()
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(GOOD.contains(replace), "{replace}");
        GOOD.replacen(replace, by, 1)
    }

    #[test]
    fn a_good_spec_parses_with_its_defaults() {
        let s = AppSpec::parse(GOOD, PlanLimits::named("pro"), &roots()).unwrap();
        assert_eq!((s.name.as_str(), s.port, s.replicas, s.repo.git_ref.as_str()), ("web", 8080, 2, "main"));
        assert_eq!(s.image_for("abc123"), "ghcr.io/acme/web:abc123");
        assert_eq!(s.redacted().secrets["DATABASE_URL"], "<secret>");
        let minimal = "name = \"a\"\nimage = \"nginx\"\nport = 80\n[repo]\nurl = \"git@github.com:acme/a.git\"\n";
        let s = AppSpec::parse(minimal, None, &roots()).unwrap();
        assert_eq!((s.replicas, s.repo.git_ref.as_str(), s.auto_deploy), (1, "main", false));
    }

    #[test]
    fn every_bad_value_is_refused_naming_its_field() {
        for (bad, field) in [
            (with("port = 8080", "port = 8080\ncolour = \"red\""), "unknown field `colour`"),
            (with("name = \"web\"", "name = \"Web_1\""), "name \"Web_1\" must be a DNS label"),
            (with("port = 8080", "port = 70000"), "port"),
            (with("port = 8080", "port = 0"), "port: 0 is not a port"),
            (with("ghcr.io/acme/web:{commit}", "nginx;rm -rf /"), "image: ';' is not allowed"),
            (with("ghcr.io/acme/web:{commit}", "$(curl evil)"), "image: '$' is not allowed"),
            (with("https://github.com/acme/web.git", "ext::sh -c touch% /tmp/pwned"), "repo.url"),
            (
                with("https://github.com/acme/web.git", "/etc/passwd-repo"),
                "repo.url: /etc/passwd-repo is a local path outside the agent's repo_roots",
            ),
            (with("https://github.com/acme/web.git", "file:///srv/repos/a"), "repo.url: transports allowed"),
            (with("https://github.com/acme/web.git", "https://user:pw@github.com/a.git"), "repo.url: no credentials"),
            (
                with("https://github.com/acme/web.git", "--upload-pack=touch /tmp/x"),
                "repo.url: must not start with '-'",
            ),
            (with("ref = \"main\"", "ref = \"--upload-pack=touch /tmp/x\""), "repo.ref"),
            (with("ref = \"main\"", "ref = \"a..b\""), "repo.ref"),
            (with("path = \"services/web\"", "path = \"../../etc\""), "repo.path"),
            (with("RUST_LOG = \"info\"", "API_TOKEN = \"abc\""), "env.API_TOKEN: the name says it holds a secret"),
            (with("RUST_LOG = \"info\"", "\"1BAD\" = \"x\""), "env.\"1BAD\": not a variable name"),
            (
                with("memory_limit = \"256Mi\"", "memory_limit = \"2Gi\""),
                "resources.memory_limit: 2 replica(s) × 2048 MiB is over the plan's 1024 MiB",
            ),
            (
                with("cpu_limit = \"250m\"", "cpu_limit = \"1\""),
                "resources.cpu_limit: 2 replica(s) × 1000m is over the plan's 1000m",
            ),
            (
                with("cpu_request = \"100m\"", "cpu_request = \"lots\""),
                "resources.cpu_request: \"lots\" is not a CPU quantity",
            ),
            (
                with("memory_request = \"128Mi\"", "memory_request = \"512Mi\""),
                "resources.memory_request: more than memory_limit",
            ),
            (with("replicas = 2", "replicas = 500"), "replicas: 500 is over the limit"),
            (with("path = \"/healthz\"", "path = \"healthz\""), "health.path"),
            (with("acme.example.com", "not a domain"), "domains"),
        ] {
            let err = problems(&bad);
            assert!(err.contains(field), "want {field:?} in {err}");
        }
        // Every problem at once, and never a secret's value.
        let err = problems(
            &with("name = \"web\"", "name = \"-\"")
                .replace("port = 8080", "port = 0")
                .replace("postgres://u:p@db/acme", ""),
        );
        assert!(err.contains("name") && err.contains("port") && err.contains("secrets.DATABASE_URL: 1 to"), "{err}");
        let err = problems(&with("memory_limit = \"256Mi\"", "memory_limit = \"999Gi\""));
        assert!(!err.contains("postgres://"), "{err}");
    }

    #[test]
    fn a_deploy_key_needs_an_ssh_url_and_the_hosts_key() {
        let base = "name = \"a\"\nimage = \"nginx\"\nport = 80\n[secrets]\nKEY = \"-----BEGIN OPENSSH PRIVATE KEY-----\"\n[repo]\ndeploy_key = \"KEY\"\n";
        let spec = |extra: &str| AppSpec::parse(&format!("{base}{extra}"), None, &roots());
        let ok =
            spec("url = \"git@github.com:acme/a.git\"\nknown_hosts = \"github.com ssh-ed25519 AAAAC3Nza\"\n").unwrap();
        assert_eq!(ok.repo.deploy_key.as_deref(), Some("KEY"));
        let e = spec("url = \"git@github.com:acme/a.git\"\n").unwrap_err().to_string();
        assert!(e.contains("repo.known_hosts: required with a deploy key"), "{e}");
        let e = spec("url = \"https://github.com/acme/a.git\"\nknown_hosts = \"github.com ssh-ed25519 AAAA\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("deploy keys are for ssh URLs"), "{e}");
        let e =
            spec("url = \"ssh://git@github.com/acme/a.git\"\nknown_hosts = \"just-a-host\"\n").unwrap_err().to_string();
        assert!(e.contains("known_hosts lines"), "{e}");
        let e = AppSpec::parse(
            &base.replace(
                "deploy_key = \"KEY\"",
                "deploy_key = \"NOPE\"\nurl = \"ssh://git@h/a.git\"\nknown_hosts = \"h ssh-ed25519 AAAA\"",
            ),
            None,
            &roots(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"NOPE\" is not a key of [secrets]"), "{e}");
    }

    #[test]
    fn the_operators_spec_overrides_the_repositorys() {
        let repo = "name = \"web\"\nimage = \"ghcr.io/acme/web:{commit}\"\nport = 3000\n[repo]\nurl = \"https://github.com/acme/web.git\"\n[env]\nA = \"1\"\nB = \"2\"\n";
        let operator =
            "port = 8080\n[env]\nB = \"20\"\n[repo]\nurl = \"https://github.com/acme/web.git\"\nref = \"release\"\n";
        let s = AppSpec::merged(repo, operator, None, &roots()).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.repo.git_ref, "release");
        assert_eq!((s.env["A"].as_str(), s.env["B"].as_str()), ("1", "20"));
        let err = AppSpec::merged(repo, "port = \"eighty\"\n", None, &roots()).unwrap_err().to_string();
        assert!(err.contains("port") || err.contains("invalid type"), "{err}");
    }

    #[test]
    fn refs_urls_and_quantities() {
        for ok in ["main", "v1.2.3", "release/2026-11", "0123456789abcdef0123456789abcdef01234567"] {
            check_ref(ok).unwrap();
        }
        for bad in ["", "-x", "--upload-pack=x", "a b", "a..b", "a~1", "x.lock", "a:b", "@", "x@{1}"] {
            assert!(check_ref(bad).is_err(), "{bad}");
        }
        let r = roots();
        for ok in
            ["https://github.com/a/b.git", "ssh://git@github.com/a/b.git", "git@github.com:a/b.git", "/srv/repos/a.git"]
        {
            check_repo_url(ok, &r).unwrap();
        }
        for bad in [
            "ext::sh",
            "fd::3",
            "git://github.com/a",
            "file:///srv/repos/a",
            "/srv/repos/../x",
            "relative/path",
            "https://github.com",
            "-oProxyCommand=x",
        ] {
            assert!(check_repo_url(bad, &r).is_err(), "{bad}");
        }
        assert_eq!((cpu_millis("250m"), cpu_millis("0.5"), cpu_millis("2")), (Ok(250), Ok(500), Ok(2000)));
        assert!(cpu_millis("0").is_err() && cpu_millis("-1").is_err() && cpu_millis("1e9").is_err());
        assert_eq!((bytes("256Mi"), bytes("1Gi"), bytes("512M")), (Ok(256 << 20), Ok(1 << 30), Ok(512_000_000)));
        assert!(bytes("1Zi").is_err() && bytes("0").is_err() && bytes("99999999999Ti").is_err());
    }

    #[test]
    fn credentials_and_option_shaped_hosts_are_refused_and_never_quoted() {
        let r = roots();
        for ok in [
            "ssh://git@github.com:2222/a/b.git",
            "ssh://github.com/a/b.git",
            "ssh://git@[::1]:22/a.git",
            "https://git.example.com:8443/a/b.git",
            "deploy@10.0.0.7:a/b.git",
        ] {
            check_repo_url(ok, &r).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "ssh://git:hunter2@github.com/a/b.git",
            "ssh://:hunter2@github.com/a/b.git",
            "https://hunter2@github.com/a/b.git",
            "ssh://-oProxyCommand=touch%20/tmp/pwned/x.git",
            "ssh://git@-oProxyCommand=x/x.git",
            "ssh://-oProxyCommand=x@github.com/x.git",
            "git@-oProxyCommand=x:x",
            "-oProxyCommand=x@host:x",
            "git@host:-x",
            "ssh://git@host:notaport/x.git",
            "ssh://git@ho$t/x.git",
            "hunter2:x@host:a.git",
        ] {
            let e = check_repo_url(bad, &r).expect_err(bad);
            assert!(!e.contains("hunter2") && !e.contains("ProxyCommand"), "{bad}: {e}");
        }
        // Through a whole spec: refused naming the field, the password in no problem.
        let e =
            AppSpec::parse(&with("https://github.com/acme/web.git", "ssh://git:hunter2@github.com/a/b.git"), None, &r)
                .unwrap_err()
                .to_string();
        assert!(e.contains("repo.url: no credentials") && !e.contains("hunter2"), "{e}");
        assert_eq!(redact_url("ssh://git:hunter2@github.com/a.git"), "ssh://git:<redacted>@github.com/a.git");
        assert_eq!(redact_url("https://tok%20en@h/a.git"), "https://<redacted>@h/a.git");
        assert_eq!(redact_url("git@github.com:a/b.git"), "git@github.com:a/b.git");
        assert_eq!(redact_url("https://github.com/a/b.git"), "https://github.com/a/b.git");
    }

    #[test]
    fn a_toml_error_says_where_and_never_what_a_secret_held() {
        let r = roots();
        for text in [
            "name = \"web\"\nimage = \"nginx\"\nport = 80\n[repo]\nurl = \"/srv/repos/a\"\n[secrets]\nDB = \"hunter2\n",
            "name = \"web\"\nimage = \"nginx\"\nport = 80\n[repo]\nurl = \"/srv/repos/a\"\n[secrets]\nDB = hunter2\n",
            "name = \"web\"\nimage = \"nginx\"\nport = 80\n[repo]\nurl = \"/srv/repos/a\"\n[secrets]\nDB = 12345678\n",
            "[secrets]\nDB = \"hunter2\" x\nname = \"web\"\n",
        ] {
            let e = AppSpec::parse(text, None, &r).unwrap_err().to_string();
            assert!(!e.contains("hunter2") && !e.contains("12345678"), "{e}");
            assert!(e.contains("line ") && e.contains("[secrets]"), "{e}");
        }
        let e = AppSpec::merged("", "[secrets]\nDB = \"hunter2\n", None, &r).unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("line 2"), "{e}");
        // Outside [secrets] the parser's words stay, with the key.
        let e = AppSpec::parse("name = \"web\"\nport = \"eighty\"\n", None, &r).unwrap_err().to_string();
        assert!(e.contains("line 2, key port") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn a_rollout_needs_room_for_its_surge_pod_or_goes_one_at_a_time() {
        let starter = PlanLimits::named("starter").unwrap();
        let mut spec = AppSpec::parse(
            "name = \"web\"\nimage = \"registry.example/web:{commit}\"\nport = 8080\nreplicas = 2\n[repo]\nurl = \"https://git.example/web.git\"\n",
            Some(starter),
            &RepoRoots::default(),
        )
        .unwrap();
        // Two replicas at the default 250m / 256 MiB fill the starter quota: no room for a third pod.
        assert_eq!(spec.pod_limits(&starter), Footprint { cpu_millis: 250, memory_bytes: 256 << 20 });
        let none = Footprint::default();
        let fit = spec.rollout_fit(&starter, none, 2).unwrap();
        assert!(matches!(&fit, Fit::OneAtATime(w) if w.contains("1 of 2 serving")), "{fit:?}");
        // With smaller pods the surge fits.
        spec.resources.memory_limit = Some("128Mi".into());
        spec.resources.cpu_limit = Some("100m".into());
        assert_eq!(spec.rollout_fit(&starter, none, 2).unwrap(), Fit::Surge);
        // Beside another app that holds most of the plan, even the steady state is refused, in words.
        let e = spec.rollout_fit(&starter, Footprint { cpu_millis: 400, memory_bytes: 400 << 20 }, 2).unwrap_err();
        assert!(e.contains("over the plan's 500m / 512 MiB") && e.contains("other apps"), "{e}");
        // One replica with no room: said to cost a short outage.
        spec.resources.memory_limit = Some("512Mi".into());
        let fit = spec.rollout_fit(&starter, none, 1).unwrap();
        assert!(matches!(&fit, Fit::OneAtATime(w) if w.contains("short outage")), "{fit:?}");
    }
}
