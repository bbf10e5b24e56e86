//! Bring your own server: enrolled once over SSH (russh), then never again. The job connects with a key
//! (no password authentication), refuses a host key that is unknown or changed (a known_hosts text or a
//! pinned SHA-256 fingerprint is required), uploads agentd (this hub's artifact for the server's
//! architecture), its config, a single-use join token (0600) and the systemd unit, starts it, and waits
//! until the agent is online.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, client};

use super::artifacts::Artifacts;
use super::job::{JobCtx, JobError};

const UNIT: &str = include_str!("../../../systemd/outpost-agentd.service");

/// `[provision]` settings of SSH enrollment, and what it uploads.
pub struct SshEnroll {
    artifacts: Arc<Artifacts>,
    agent_version: String,
    /// The fleet CA (what it trusts is written for the agent's reference).
    pki: Arc<crate::pki::rotation::Pki>,
    /// A key the hub may use when the request brings none (a resumed job needs it).
    key_file: Option<PathBuf>,
    /// Where on the server files go (`/`; tests install under a directory).
    root: String,
    /// How agentd is started once installed.
    start: String,
    /// Keys that came with requests, by job: in memory only, never stored or logged.
    /// By server name (one open enroll-ssh job per server): held before the job can be claimed.
    request_keys: Mutex<BTreeMap<String, String>>,
}

/// The parameters of an enroll-ssh job (stored with the job; no secret among them).
pub struct Target {
    pub user: String,
    pub host: String,
    pub port: u16,
    /// known_hosts text, or empty when `fingerprint` is given.
    pub known_hosts: String,
    pub fingerprint: String,
}

/// `[provision]`'s settings for SSH enrollment.
pub struct EnrollSettings {
    /// The hub's SSH private key, when requests do not bring one.
    pub key_file: Option<PathBuf>,
    /// Where files go on the server (`/` on a real one; a directory in tests).
    pub root: String,
    /// The command that starts agentd (`{root}` replaced).
    pub start: String,
}

impl SshEnroll {
    pub fn new(
        artifacts: Arc<Artifacts>,
        agent_version: String,
        pki: Arc<crate::pki::rotation::Pki>,
        settings: EnrollSettings,
    ) -> SshEnroll {
        let EnrollSettings { key_file, root, start } = settings;
        SshEnroll { artifacts, agent_version, pki, key_file, root, start, request_keys: Mutex::default() }
    }

    /// Keeps the private key for the enrollment of `server` in memory for its job's run. Held before the
    /// job is submitted: a worker may claim it at once.
    /// Returns the key held for `server` before (another request's), to put back if this one is refused.
    pub fn hold_key(&self, server: &str, key: String) -> Option<String> {
        self.request_keys.lock().unwrap_or_else(|p| p.into_inner()).insert(server.to_string(), key)
    }

    pub fn drop_key(&self, server: &str) {
        self.request_keys.lock().unwrap_or_else(|p| p.into_inner()).remove(server);
    }

    pub fn has_key_file(&self) -> bool {
        self.key_file.is_some()
    }

    fn key(&self, server: &str) -> Result<PrivateKey, JobError> {
        let held = self.request_keys.lock().unwrap_or_else(|p| p.into_inner()).get(server).cloned();
        let text = match (held, &self.key_file) {
            (Some(k), _) => k,
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| JobError::Fail(format!("provision.ssh_private_key_file {}: {e}", f.display())))?,
            (None, None) => {
                return Err(JobError::Fail(
                    "the SSH key that came with the request is held in memory only and the hub restarted: run enroll-ssh again (or set provision.ssh_private_key_file)".into(),
                ));
            }
        };
        russh::keys::decode_secret_key(&text, None).map_err(|e| {
            JobError::Fail(format!("the SSH private key cannot be read ({e}); an unencrypted OpenSSH key is needed"))
        })
    }

    /// Connects, checks the host key, installs and starts agentd with `token`. Returns what it did.
    pub async fn install(
        &self,
        ctx: &JobCtx,
        job: u64,
        t: &Target,
        server: &str,
        token: &str,
    ) -> Result<String, JobError> {
        let key = self.key(server)?;
        ctx.progress(format!("connecting to {}:{}", t.host, t.port)).await?;
        let config =
            Arc::new(client::Config { inactivity_timeout: Some(Duration::from_secs(60)), ..Default::default() });
        let checker = HostCheck {
            target: Target {
                user: t.user.clone(),
                host: t.host.clone(),
                port: t.port,
                known_hosts: t.known_hosts.clone(),
                fingerprint: t.fingerprint.clone(),
            },
            refused: Arc::default(),
        };
        let refused = checker.refused.clone();
        let connect =
            tokio::time::timeout(Duration::from_secs(30), client::connect(config, (t.host.as_str(), t.port), checker));
        let mut session = match connect.await {
            Err(_) => return Err(JobError::Retry(format!("{}:{} did not answer within 30s", t.host, t.port))),
            Ok(Err(e)) => {
                let why = refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
                return Err(match why {
                    Some(why) => JobError::Fail(why),
                    None => JobError::Retry(format!("SSH to {}:{}: {e}", t.host, t.port)),
                });
            }
            Ok(Ok(s)) => s,
        };
        let hash = session.best_supported_rsa_hash().await.ok().flatten().flatten();
        let auth = tokio::time::timeout(
            Duration::from_secs(30),
            session.authenticate_publickey(&t.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash)),
        )
        .await
        .map_err(|_| JobError::Retry(format!("{}:{} did not finish authentication within 30s", t.host, t.port)))?
        .map_err(|e| JobError::Retry(format!("SSH authentication: {e}")))?;
        if !auth.success() {
            return Err(JobError::Fail(format!(
                "{}@{} refused the key (public key authentication; passwords are never used): add its public key to ~{}/.ssh/authorized_keys",
                t.user, t.host, t.user
            )));
        }
        ctx.progress("asking the server what it runs on (uname -m)").await?;
        let (code, arch) = run(&mut session, "uname -m", None).await?;
        let arch = arch.to_string();
        if code != 0 || !super::artifacts::ARCHES.contains(&arch.as_str()) {
            return Err(JobError::Fail(format!("{} runs on {arch:?}; agentd is built for x86_64 and aarch64", t.host)));
        }
        let artifact = self.artifacts.get(&self.agent_version, &arch).ok_or_else(|| {
            JobError::Fail(format!(
                "this hub has no agentd {} for {arch} (it has: {})",
                self.agent_version,
                self.artifacts.known()
            ))
        })?;
        let binary = tokio::fs::read(&artifact.path)
            .await
            .map_err(|e| JobError::Retry(format!("reading {}: {e}", artifact.path.display())))?;
        let root = self.root.trim_end_matches('/');
        let config = format!(
            "# agentd on {server}, written by hubd's enroll-ssh job {job}.\n\
             data_dir = \"{root}/var/lib/outpost-agentd\"\n\
             token_file = \"{root}/etc/outpost/join-token\"\n\
             log_dir = \"{root}/var/log/outpost-agentd\"\n"
        );
        let ca_pem = self.pki.keys().trust_pem();
        let uploads: [(&str, &[u8], &str); 5] = [
            ("/usr/local/bin/agentd", &binary, "755"),
            ("/etc/outpost/agentd.toml", config.as_bytes(), "644"),
            ("/etc/outpost/fleet-ca.pem", ca_pem.as_bytes(), "644"),
            ("/etc/outpost/join-token", token.as_bytes(), "600"),
            ("/etc/systemd/system/outpost-agentd.service", UNIT.as_bytes(), "644"),
        ];
        for (path, bytes, mode) in uploads {
            ctx.progress(format!("uploading {path}")).await?;
            let dest = format!("{root}{path}");
            // Written beside and renamed: a half-written file is never in place. Paths are the hub's own.
            let cmd = format!(
                "umask 077 && mkdir -p \"$(dirname '{dest}')\" && cat > '{dest}.outpost-new' && chmod {mode} '{dest}.outpost-new' && mv '{dest}.outpost-new' '{dest}'"
            );
            let (code, out) = run(&mut session, &cmd, Some(bytes)).await?;
            if code != 0 {
                return Err(JobError::Fail(format!("writing {dest} failed ({code}): {}", out.trim())));
            }
        }
        let sha = run(&mut session, &format!("sha256sum '{root}/usr/local/bin/agentd'"), None).await?.1;
        if !sha.starts_with(&artifact.sha256) {
            return Err(JobError::Retry(format!("agentd on {} does not match its SHA-256 after the upload", t.host)));
        }
        ctx.progress("starting agentd").await?;
        let start = self.start.replace("{root}", root);
        let (code, out) = run(&mut session, &start, None).await?;
        if code != 0 {
            return Err(JobError::Fail(format!("starting agentd failed ({code}): {}", out.trim())));
        }
        let _ = session.disconnect(russh::Disconnect::ByApplication, "", "en").await;
        Ok(format!("agentd {} ({arch}) installed on {} and started", self.agent_version, t.host))
    }
}

/// The most a command on a customer's server may print before the hub stops reading (its answers are a
/// word, a hash, or an error line).
const OUTPUT_MAX: usize = 64 << 10;
/// How long a command may take, besides its upload at [`UPLOAD_FLOOR_BPS`] at least.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
/// The slowest upload the hub waits for (bytes a second); a server slower than that is holding the job.
const UPLOAD_FLOOR_BPS: u64 = 64 << 10;

/// Runs `cmd`, feeding it `stdin`; returns its exit status and output (stdout and stderr). Bounded in
/// time (a deadline for the whole command, however the server trickles) and in size (it stops reading
/// at [`OUTPUT_MAX`]); the job's cancel drops it wherever it waits. The customer's sshd is not trusted.
async fn run(
    session: &mut client::Handle<HostCheck>,
    cmd: &str,
    stdin: Option<&[u8]>,
) -> Result<(u32, String), JobError> {
    let what = cmd.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let deadline = COMMAND_DEADLINE + Duration::from_secs(stdin.map_or(0, |b| b.len() as u64 / UPLOAD_FLOOR_BPS));
    match tokio::time::timeout(deadline, run_unbounded_in_time(session, cmd, stdin, &what)).await {
        Ok(r) => r,
        Err(_) => Err(JobError::Retry(format!(
            "`{what}` on the server did not finish within {}s (the SSH server went silent or answers too slowly)",
            deadline.as_secs()
        ))),
    }
}

async fn run_unbounded_in_time(
    session: &mut client::Handle<HostCheck>,
    cmd: &str,
    stdin: Option<&[u8]>,
    what: &str,
) -> Result<(u32, String), JobError> {
    let ssh = |e: russh::Error| JobError::Retry(format!("SSH: {e}"));
    let mut channel = session.channel_open_session().await.map_err(ssh)?;
    channel.exec(true, cmd).await.map_err(ssh)?;
    if let Some(bytes) = stdin {
        channel.data(bytes).await.map_err(ssh)?;
    }
    channel.eof().await.map_err(ssh)?;
    let (mut code, mut out) = (None, Vec::new());
    while let Some(msg) = channel.wait().await {
        let data = match msg {
            ChannelMsg::Data { data } => data,
            ChannelMsg::ExtendedData { data, .. } => data,
            ChannelMsg::ExitStatus { exit_status } => {
                code = Some(exit_status);
                continue;
            }
            _ => continue,
        };
        if out.len() + data.len() > OUTPUT_MAX {
            let _ = channel.close().await;
            return Err(JobError::Fail(format!(
                "`{what}` on the server printed more than {} KiB; the hub stopped reading",
                OUTPUT_MAX >> 10
            )));
        }
        out.extend_from_slice(&data);
    }
    let Some(code) = code else {
        return Err(JobError::Retry(format!("`{what}`: the SSH server closed the channel without an exit status")));
    };
    // What the server says goes into job errors (operator surfaces): inert, and bounded.
    let out =
        outpost_common::text::inert(outpost_common::text::truncate_bytes(String::from_utf8_lossy(&out).trim(), 2048))
            .into_owned();
    Ok((code, out))
}

/// Checks the server's host key against what the operator gave.
struct HostCheck {
    target: Target,
    /// Why the key was refused, for the job's error.
    refused: Arc<Mutex<Option<String>>>,
}

impl HostCheck {
    fn check(&self, key: &PublicKey) -> Result<(), String> {
        let seen = key.fingerprint(HashAlg::Sha256).to_string();
        let t = &self.target;
        if !t.fingerprint.is_empty() {
            return if seen == t.fingerprint {
                Ok(())
            } else {
                Err(format!(
                    "{}:{} presented host key {seen}, not the pinned {}: refused (a changed host key may be an attack; check with the server's owner)",
                    t.host, t.port, t.fingerprint
                ))
            };
        }
        let file = std::env::temp_dir().join(format!("outpost-known-hosts-{}", outpost_common::random_hex::<8>()));
        std::fs::write(&file, &t.known_hosts).map_err(|e| format!("known_hosts: {e}"))?;
        let r = russh::keys::check_known_hosts_path(&t.host, t.port, key, &file);
        let _ = std::fs::remove_file(&file);
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "{}:{} is not in the known_hosts given (its key is {seen}): refused; add it, or pass --fingerprint after checking it with the server's owner",
                t.host, t.port
            )),
            Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                "{}:{} presented host key {seen}, which differs from line {line} of the known_hosts given: refused (a changed host key may be an attack)",
                t.host, t.port
            )),
            Err(e) => Err(format!("known_hosts: {e}")),
        }
    }
}

impl client::Handler for HostCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let verdict = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.check(key),
            PublicKeyOrCertificate::Certificate(_) => {
                Err("host certificates are not accepted; pin the host key".into())
            }
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(why) => {
                tracing::warn!(host = %self.target.host, port = self.target.port, %why, "host key refused");
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}
