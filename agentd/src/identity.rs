//! The agent's identity (key, certificate, CA, hub) and enrollment.
//!
//! The private key is generated here and never leaves the server. The identity is one JSON file, 0600,
//! replaced atomically (renewal and re-enrollment never leave a half-written identity).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use outpost_common::tls::{HubAddr, TlsError, fetch_pinned_ca};
use outpost_common::{CertInfo, Identity, JoinToken, TokenError, ca_pin};
use outpost_proto::v1::enrollment_client::EnrollmentClient;
use outpost_proto::v1::{EnrollRequest, HostFacts};
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentIdentity {
    pub agent_id: String,
    pub server: String,
    pub hub: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("agent_id", &self.agent_id)
            .field("server", &self.server)
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the hub refused enrollment: {0}")]
    Refused(String),
    #[error("the hub's answer is not acceptable: {0}")]
    BadAnswer(String),
    #[error("cannot generate a key: {0}")]
    Key(String),
    #[error("cannot {what} {path}: {error}")]
    Io { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("identity file {path} is invalid: {reason}; enroll again with `agentd enroll --token TOKEN`")]
    Corrupt { path: PathBuf, reason: String },
}

pub fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.json")
}

impl AgentIdentity {
    pub fn load(data_dir: &Path) -> Result<Option<AgentIdentity>, EnrollError> {
        let path = identity_path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| EnrollError::Corrupt { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(EnrollError::Io { what: "read", path, error }),
        }
    }

    /// Writes the identity 0600, atomically.
    pub fn save(&self, data_dir: &Path) -> Result<(), EnrollError> {
        let path = identity_path(data_dir);
        let io = |what, error| EnrollError::Io { what, path: path.clone(), error };
        std::fs::create_dir_all(data_dir).map_err(|e| io("create the directory of", e))?;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("create", e))?;
        f.write_all(&serde_json::to_vec_pretty(self).expect("strings serialise")).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("replace", e))
    }

    pub fn cert(&self) -> Result<CertInfo, EnrollError> {
        CertInfo::from_pem(&self.cert_pem)
            .map_err(|e| EnrollError::Corrupt { path: "identity.json".into(), reason: e.to_string() })
    }

    /// The hub's addresses (one per replica), the override's when there is one.
    pub fn addrs(&self, hub_override: Option<&str>) -> Result<Vec<HubAddr>, TlsError> {
        HubAddr::parse_list(hub_override.unwrap_or(&self.hub))
    }
}

/// A fresh P-256 key and a CSR with an empty subject and no extensions: the hub decides names and usages.
pub fn new_key_and_csr() -> Result<(KeyPair, String), EnrollError> {
    outpost_common::cert::key_and_csr().map_err(EnrollError::Key)
}

pub fn host_facts() -> HostFacts {
    HostFacts {
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        os: sysinfo::System::long_os_version().unwrap_or_default(),
        kernel: sysinfo::System::kernel_version().unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        agent_version: crate::VERSION.to_string(),
    }
}

/// Enrolls with a join token: pinned first contact, CSR, certificate. Returns the identity (not saved).
/// A hub with several replicas is tried address by address (starting at one picked by the token, so
/// agents spread), until one answers.
pub async fn enroll(token: &str, hub_override: Option<&str>) -> Result<AgentIdentity, EnrollError> {
    let parsed = JoinToken::parse(token)?;
    let addrs = HubAddr::parse_list(hub_override.unwrap_or(&parsed.hub))?;
    let start = spread(&parsed.secret, addrs.len());
    let mut last = None;
    for i in 0..addrs.len() {
        let addr = &addrs[(start + i) % addrs.len()];
        match enroll_at(&parsed, addr).await {
            Err(EnrollError::Tls(TlsError::Unreachable { addr, reason })) if addrs.len() > 1 => {
                tracing::warn!(%addr, %reason, "hub replica unreachable; trying the next");
                last = Some(EnrollError::Tls(TlsError::Unreachable { addr, reason }));
            }
            Ok(mut id) => {
                id.hub = HubAddr::join(&addrs);
                return Ok(id);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one address was tried"))
}

/// Which of `n` addresses a client starts with: picked by `key`, so clients spread over replicas.
pub fn spread(key: &str, n: usize) -> usize {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    u64::from_be_bytes(digest.as_ref()[..8].try_into().expect("8 bytes")) as usize % n.max(1)
}

async fn enroll_at(token: &JoinToken, addr: &HubAddr) -> Result<AgentIdentity, EnrollError> {
    let ca_pem = fetch_pinned_ca(addr, &token.pin).await?;
    let (key, csr_pem) = new_key_and_csr()?;
    let channel = addr.channel(&ca_pem, None)?;
    let req = EnrollRequest { join_token: token.secret.clone(), csr_pem, host: Some(host_facts()) };
    let resp = EnrollmentClient::new(channel)
        .max_decoding_message_size(outpost_proto::MAX_MESSAGE_BYTES)
        .enroll(req)
        .await
        .map_err(|s| EnrollError::Refused(s.message().to_string()))?
        .into_inner();
    // Trust only what the pin vouches for.
    let ca_der = outpost_common::cert::first_cert_der(&resp.ca_bundle_pem)
        .ok_or_else(|| EnrollError::BadAnswer("no CA certificate".into()))?;
    if ca_pin(&ca_der) != token.pin {
        return Err(EnrollError::BadAnswer("the CA in the answer does not match the token's pin".into()));
    }
    let info = CertInfo::from_pem(&resp.cert_chain_pem).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    if info.identity != (Identity::Agent { id: resp.agent_id.clone() }) {
        return Err(EnrollError::BadAnswer(format!(
            "certificate is for {} not agent {}",
            info.identity, resp.agent_id
        )));
    }
    Ok(AgentIdentity {
        agent_id: resp.agent_id,
        server: resp.server_name,
        hub: addr.url.clone(),
        ca_pem: resp.ca_bundle_pem,
        cert_pem: resp.cert_chain_pem,
        key_pem: key.serialize_pem(),
    })
}
