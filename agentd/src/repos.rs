//! The customer's git repositories on this server: the git CLI behind a small trait, shallow fetches of
//! the tracked ref, a detached checkout of the fetched commit, and a state a person can act on.
//!
//! Nothing reaches git unchecked: the URL and ref are validated (`common::app`) again here, git runs with
//! no terminal prompt, no system or user config, only the https, ssh and file transports, and a timeout.
//! A repository that disappears, a ref that does not exist, a force-push or local edits end in a clear
//! state (`last_error`, `note`), never in a crash or a silent reset; the last good checkout stays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_common::app::{RepoRoots, RepoSpec, check_ref, check_repo_url};
use serde::{Deserialize, Serialize};

/// What the agent knows of one repository (stored in the instance database, reported to the hub).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RepoState {
    pub url: String,
    /// The tracked branch, tag or commit.
    pub git_ref: String,
    /// The checkout on this server.
    pub path: String,
    /// The commit checked out (empty before the first good sync).
    pub head: String,
    /// The commit the tracked ref pointed at when last fetched.
    pub remote_head: String,
    /// The tracked ref has moved past the checkout (it was fetched but not checked out).
    pub behind: bool,
    /// Files in the checkout were changed on the server.
    pub dirty: bool,
    pub last_fetch_ms: i64,
    /// Why the last sync failed (empty: it did not).
    pub last_error: String,
    /// Something a person should know about the last sync (a force-push).
    pub note: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("git {args} did not finish within {secs} s")]
    Timeout { args: String, secs: u64 },
    #[error("cannot run git ({program}): {error}; install git on this server")]
    Spawn { program: String, error: std::io::Error },
}

/// Runs git. The trait lets tests count or fail calls; the agent uses [`GitCli`].
pub trait Git: Send + Sync {
    /// Runs `git args` in `dir` (with `ssh`, a `GIT_SSH_COMMAND` for deploy keys) and returns its stdout.
    fn run(
        &self,
        dir: &Path,
        args: &[&str],
        ssh: Option<&str>,
    ) -> impl std::future::Future<Output = Result<String, GitError>> + Send;
}

/// The git command line.
#[derive(Clone, Debug)]
pub struct GitCli {
    pub program: String,
    pub timeout: Duration,
    /// HOME for git: no user config of the machine leaks in.
    pub home: PathBuf,
}

impl Git for GitCli {
    async fn run(&self, dir: &Path, args: &[&str], ssh: Option<&str>) -> Result<String, GitError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.current_dir(dir)
            .args(["-c", "protocol.allow=never"])
            .args([
                "-c",
                "protocol.https.allow=always",
                "-c",
                "protocol.ssh.allow=always",
                "-c",
                "protocol.file.allow=always",
            ])
            .args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "advice.detachedHead=false"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("HOME", &self.home)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_ASKPASS", "/bin/false")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(ssh) = ssh {
            cmd.env("GIT_SSH_COMMAND", ssh);
        }
        let shown = args.join(" ");
        let out = tokio::time::timeout(self.timeout, cmd.output())
            .await
            .map_err(|_| GitError::Timeout { args: shown.clone(), secs: self.timeout.as_secs() })?
            .map_err(|error| GitError::Spawn { program: self.program.clone(), error })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stderr = stderr.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" / ");
            Err(GitError::Failed {
                args: shown,
                stderr: outpost_common::text::truncate_bytes(&stderr, 1024).to_string(),
            })
        }
    }
}

/// A deploy key and the host keys it may be used with, written 0600 for one git run and removed when
/// dropped. git reaches them through [`DeployKey::ssh_command`] (`GIT_SSH_COMMAND`): this key only, strict
/// host-key checking against these host keys only, no agent, no prompt, no user ssh config.
pub struct DeployKey {
    dir: PathBuf,
}

impl DeployKey {
    pub fn write(dir: &Path, private_key: &str, known_hosts: &str) -> std::io::Result<DeployKey> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        if dir.to_str().is_none_or(|d| d.contains('\'')) {
            return Err(std::io::Error::other(format!("{} cannot be quoted for ssh", dir.display())));
        }
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        for (name, text) in [("id", private_key), ("known_hosts", known_hosts)] {
            let mut f =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(dir.join(name))?;
            // ssh refuses a key file without a final newline.
            f.write_all(text.trim_end().as_bytes())?;
            f.write_all(b"\n")?;
        }
        Ok(DeployKey { dir: dir.to_path_buf() })
    }

    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -i '{0}/id' -o IdentitiesOnly=yes -o IdentityAgent=none -o StrictHostKeyChecking=yes -o UserKnownHostsFile='{0}/known_hosts' -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=15",
            self.dir.display()
        )
    }
}

impl Drop for DeployKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Commits fetched to tell a fast-forward from a rewrite when the tracked ref moved.
const DEEPEN: &str = "100";

pub struct Repos<G: Git> {
    git: G,
    /// Checkouts live in `root/<app>`.
    root: PathBuf,
    roots: RepoRoots,
    /// Most bytes one checkout may take.
    budget_bytes: u64,
}

impl<G: Git> Repos<G> {
    pub fn new(git: G, root: PathBuf, roots: RepoRoots, budget_bytes: u64) -> Repos<G> {
        Repos { git, root, roots, budget_bytes }
    }

    pub fn path_of(&self, app: &str) -> PathBuf {
        self.root.join(app)
    }

    /// Fetches the tracked ref of `app`'s repository and checks it out, unless that would lose something
    /// (local edits) or break a bound (the disk budget). Returns the new state; on failure the previous
    /// checkout stays and the state says why.
    pub async fn sync(&self, app: &str, spec: &RepoSpec, ssh: Option<&str>, prev: Option<&RepoState>) -> RepoState {
        let dir = self.path_of(app);
        let mut state = prev.cloned().unwrap_or_default();
        state.url.clone_from(&spec.url);
        state.git_ref.clone_from(&spec.git_ref);
        state.path = dir.display().to_string();
        state.last_fetch_ms = outpost_common::now_ms();
        state.note.clear();
        match self.try_sync(&dir, spec, ssh, &mut state).await {
            Ok(()) => state.last_error.clear(),
            Err(e) => {
                tracing::warn!(app, error = %e, "repository sync failed");
                state.last_error = e;
            }
        }
        state
    }

    async fn try_sync(
        &self,
        dir: &Path,
        spec: &RepoSpec,
        ssh: Option<&str>,
        state: &mut RepoState,
    ) -> Result<(), String> {
        check_repo_url(&spec.url, &self.roots).map_err(|e| format!("repo.url: {e}"))?;
        check_ref(&spec.git_ref).map_err(|e| format!("repo.ref: {e}"))?;
        if !dir.join(".git").is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            self.git.run(dir, &["init", "-q"], ssh).await.map_err(|e| e.to_string())?;
        }
        if self.git.run(dir, &["config", "--get", "remote.origin.url"], ssh).await.ok().as_deref()
            != Some(spec.url.as_str())
        {
            let _ = self.git.run(dir, &["remote", "remove", "origin"], ssh).await;
            self.git.run(dir, &["remote", "add", "origin", &spec.url], ssh).await.map_err(|e| e.to_string())?;
        }
        self.git
            .run(dir, &["fetch", "-q", "--depth", "1", "--no-tags", "origin", "--", &spec.git_ref], ssh)
            .await
            .map_err(|e| fetch_problem(&e, spec))?;
        let new = self.git.run(dir, &["rev-parse", "FETCH_HEAD^{commit}"], ssh).await.map_err(|e| e.to_string())?;
        state.remote_head.clone_from(&new);
        let old = self.git.run(dir, &["rev-parse", "-q", "--verify", "HEAD^{commit}"], ssh).await.unwrap_or_default();
        state.dirty = !self
            .git
            .run(dir, &["status", "--porcelain", "--untracked-files=no"], ssh)
            .await
            .map_err(|e| e.to_string())?
            .is_empty();
        if old == new {
            state.behind = false;
            return Ok(());
        }
        if state.dirty {
            state.behind = true;
            return Err(format!(
                "files in {} were changed on this server; they are not overwritten: look at them (git -C {} status), then discard them and sync again",
                dir.display(),
                dir.display()
            ));
        }
        if !old.is_empty() {
            // Fast-forward or rewrite? Fetch some history of the new tip and look for the old one in it.
            let _ = self
                .git
                .run(dir, &["fetch", "-q", "--deepen", DEEPEN, "--no-tags", "origin", "--", &spec.git_ref], ssh)
                .await;
            if self.git.run(dir, &["merge-base", "--is-ancestor", &old, &new], ssh).await.is_err() {
                state.note = format!(
                    "{} was rewritten (force-push) or moved more than {DEEPEN} commits: it went from {} to {}, which does not contain it; the new commit is checked out",
                    spec.git_ref,
                    short(&old),
                    short(&new)
                );
            }
        }
        self.git.run(dir, &["checkout", "-q", "--detach", &new], ssh).await.map_err(|e| e.to_string())?;
        state.head = new;
        state.behind = false;
        let used = dir_bytes(dir);
        if used > self.budget_bytes {
            let _ = std::fs::remove_dir_all(dir);
            state.head.clear();
            return Err(format!(
                "the checkout takes {} MiB, over the budget of {} MiB; it was removed (raise repo_budget_mib, or deploy from a smaller repository)",
                used >> 20,
                self.budget_bytes >> 20
            ));
        }
        Ok(())
    }

    /// The checkout as it is now (no fetch): HEAD and local edits.
    pub async fn inspect(&self, app: &str, prev: &RepoState) -> RepoState {
        let dir = self.path_of(app);
        let mut state = prev.clone();
        if !dir.join(".git").is_dir() {
            state.head.clear();
            if state.last_error.is_empty() {
                state.last_error = format!("no checkout at {}; sync the repository", dir.display());
            }
            return state;
        }
        state.head =
            self.git.run(&dir, &["rev-parse", "-q", "--verify", "HEAD^{commit}"], None).await.unwrap_or_default();
        state.dirty = self
            .git
            .run(&dir, &["status", "--porcelain", "--untracked-files=no"], None)
            .await
            .map(|s| !s.is_empty())
            .unwrap_or(false);
        state.behind = !state.remote_head.is_empty() && state.remote_head != state.head;
        state
    }
}

fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}

/// A fetch failure in words a person can act on.
fn fetch_problem(e: &GitError, spec: &RepoSpec) -> String {
    let text = e.to_string();
    if text.contains("couldn't find remote ref") || text.contains("not our ref") {
        format!("{} does not exist in {} (no such branch, tag or commit)", spec.git_ref, spec.url)
    } else if text.contains("Host key verification failed") || text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        format!(
            "the host key of {} does not match repo.known_hosts: the host is not trusted; check its key (ssh-keyscan) and update the spec",
            spec.url
        )
    } else if text.contains("Permission denied (publickey") {
        format!(
            "{} refused the deploy key (Permission denied): add the key's public half to the repository's deploy keys",
            spec.url
        )
    } else if text.contains("does not appear to be a git repository")
        || text.contains("not found")
        || text.contains("Could not read from remote")
    {
        format!("{} cannot be read (it was removed, renamed, or access was revoked): {text}", spec.url)
    } else {
        text
    }
}

/// Bytes under `dir` (files only; symlinks not followed).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bare "origin" with a work tree to commit and push from, as a developer would.
    struct Origin {
        bare: PathBuf,
        work: PathBuf,
    }

    fn sh(dir: &Path, script: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "dev")
            .env("GIT_AUTHOR_EMAIL", "dev@example.com")
            .env("GIT_COMMITTER_NAME", "dev")
            .env("GIT_COMMITTER_EMAIL", "dev@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    impl Origin {
        fn new(root: &Path) -> Origin {
            let (bare, work) = (root.join("origin.git"), root.join("dev"));
            sh(root, "git init -q --bare -b main origin.git && git clone -q origin.git dev 2>/dev/null");
            Origin { bare, work }
        }

        /// Commits `file` with `text` on main and pushes; returns the commit.
        fn commit(&self, file: &str, text: &str) -> String {
            sh(
                &self.work,
                &format!(
                    "echo '{text}' > {file} && git add -A && git commit -qm '{text}' && git push -q origin HEAD:main"
                ),
            );
            sh(&self.work, "git rev-parse HEAD")
        }
    }

    fn repos(root: &Path, budget: u64) -> Repos<GitCli> {
        let git = GitCli { program: "git".into(), timeout: Duration::from_secs(30), home: root.join("home") };
        std::fs::create_dir_all(root.join("home")).unwrap();
        Repos::new(git, root.join("checkouts"), RepoRoots(vec![root.to_path_buf()]), budget)
    }

    fn spec(origin: &Origin, git_ref: &str) -> RepoSpec {
        RepoSpec { url: origin.bare.display().to_string(), git_ref: git_ref.into(), ..Default::default() }
    }

    #[tokio::test]
    async fn a_branch_is_cloned_followed_and_a_force_push_is_said_not_hidden() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = Origin::new(tmp.path());
        let first = origin.commit("app.txt", "v1");
        let r = repos(tmp.path(), 64 << 20);
        let s = r.sync("web", &spec(&origin, "main"), None, None).await;
        assert_eq!(
            (s.head.as_str(), s.last_error.as_str(), s.behind, s.dirty),
            (first.as_str(), "", false, false),
            "{s:?}"
        );
        assert_eq!(std::fs::read_to_string(r.path_of("web").join("app.txt")).unwrap().trim(), "v1");

        // A new commit: a fast-forward, no note.
        let second = origin.commit("app.txt", "v2");
        let s = r.sync("web", &spec(&origin, "main"), None, Some(&s)).await;
        assert_eq!((s.head.as_str(), s.note.as_str(), s.last_error.as_str()), (second.as_str(), "", ""), "{s:?}");

        // History rewritten and force-pushed: followed, and said.
        sh(
            &origin.work,
            "git reset -q --hard HEAD~1 && echo v3 > app.txt && git commit -qam v3 && git push -q -f origin HEAD:main",
        );
        let third = sh(&origin.work, "git rev-parse HEAD");
        let s = r.sync("web", &spec(&origin, "main"), None, Some(&s)).await;
        assert_eq!(s.head, third);
        assert!(s.note.contains("force-push") && s.note.contains(&second[..12]), "{s:?}");

        // A tag and a commit are refs too.
        sh(&origin.work, "git tag v1.0 HEAD && git push -q origin v1.0");
        let s = r.sync("web", &spec(&origin, "v1.0"), None, Some(&s)).await;
        assert_eq!((s.head.as_str(), s.last_error.as_str()), (third.as_str(), ""));
        let s = r.sync("web", &spec(&origin, &first), None, Some(&s)).await;
        assert_eq!((s.head.as_str(), s.last_error.as_str()), (first.as_str(), ""), "{s:?}");
    }

    #[tokio::test]
    async fn missing_refs_vanished_repos_local_edits_and_the_budget_leave_a_clear_state() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = Origin::new(tmp.path());
        let first = origin.commit("app.txt", "v1");
        let r = repos(tmp.path(), 64 << 20);
        let good = r.sync("web", &spec(&origin, "main"), None, None).await;
        assert_eq!(good.head, first);

        let s = r.sync("web", &spec(&origin, "no-such-branch"), None, Some(&good)).await;
        assert!(s.last_error.contains("no-such-branch does not exist"), "{s:?}");
        assert_eq!(s.head, first, "the last good checkout stays");

        // Someone edits the checkout on the server: a new commit is fetched, not forced over the edit.
        std::fs::write(r.path_of("web").join("app.txt"), "hotfix\n").unwrap();
        let second = origin.commit("app.txt", "v2");
        let s = r.sync("web", &spec(&origin, "main"), None, Some(&good)).await;
        assert!(s.dirty && s.behind && s.last_error.contains("not overwritten"), "{s:?}");
        assert_eq!((s.head.as_str(), s.remote_head.as_str()), (first.as_str(), second.as_str()));
        assert_eq!(std::fs::read_to_string(r.path_of("web").join("app.txt")).unwrap(), "hotfix\n");
        let seen = r.inspect("web", &s).await;
        assert!(seen.dirty && seen.behind, "{seen:?}");

        // The repository disappears: an error that says so; the checkout stays.
        std::fs::remove_dir_all(&origin.bare).unwrap();
        let s = r.sync("web", &spec(&origin, "main"), None, Some(&good)).await;
        assert!(s.last_error.contains("cannot be read"), "{s:?}");
        assert!(r.path_of("web").join("app.txt").exists());

        // Over the disk budget: refused and removed.
        std::fs::create_dir_all(tmp.path().join("big")).unwrap();
        let big = Origin::new(&tmp.path().join("big"));
        sh(
            &big.work,
            "head -c 300000 /dev/urandom > blob && git add blob && git commit -qm big && git push -q origin HEAD:main",
        );
        let small = repos(tmp.path(), 100_000);
        let s = small.sync("big", &spec(&big, "main"), None, None).await;
        assert!(s.last_error.contains("over the budget"), "{s:?}");
        assert!(!small.path_of("big").exists());
    }

    #[tokio::test]
    async fn hostile_urls_and_refs_never_reach_git() {
        let tmp = tempfile::tempdir().unwrap();
        let r = repos(tmp.path(), 64 << 20);
        let marker = tmp.path().join("pwned");
        for (url, git_ref) in [
            (format!("ext::sh -c touch% {}", marker.display()), "main".to_string()),
            ("/etc".to_string(), "main".to_string()),
            (tmp.path().join("x").display().to_string(), format!("--upload-pack=touch {}", marker.display())),
        ] {
            let s = r.sync("evil", &RepoSpec { url, git_ref, ..Default::default() }, None, None).await;
            assert!(s.last_error.starts_with("repo.url") || s.last_error.starts_with("repo.ref"), "{s:?}");
        }
        assert!(!marker.exists());
        assert!(!r.path_of("evil").exists(), "nothing was created");
    }
}
