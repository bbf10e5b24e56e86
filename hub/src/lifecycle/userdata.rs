//! The cloud-init user-data of a new server, rendered from the templates in `provision-scripts/`.
//!
//! Injection-safe by construction: the YAML document receives only base64 (files), and the install script
//! only values checked against strict patterns (versions, flags, a URL, a hex digest). The result must stay
//! under Hetzner's 32 KiB user-data limit.

use base64::Engine;

const TEMPLATE: &str = include_str!("../../../provision-scripts/cloud-init.yaml");
const INSTALL: &str = include_str!("../../../provision-scripts/cloud-init-install.sh");
const UNIT: &str = include_str!("../../../systemd/outpost-agentd.service");

/// Hetzner's limit on user-data.
pub const MAX_USER_DATA: usize = 32 * 1024;

/// What goes into one server's user-data.
#[derive(Clone, Debug)]
pub struct UserData<'a> {
    pub server: &'a str,
    pub job: u64,
    /// The join token (a secret: never logged).
    pub token: &'a str,
    pub ca_pem: &'a str,
    /// Release public keys the agent pins (checked by the hub's config: base64 only).
    pub release_keys: &'a [String],
    pub k3s_version: &'a str,
    /// K3s's install script: an https URL or a file:/// path on the image.
    pub k3s_installer: &'a str,
    pub k3s_flags: &'a str,
    pub agentd_url: &'a str,
    pub agentd_sha256: &'a str,
}

/// A K3s version as its installer takes it: `v1.33.5+k3s1`.
pub fn valid_k3s_version(v: &str) -> bool {
    v.starts_with('v')
        && v.len() <= 40
        && v[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b".+-".contains(&b))
        && v[1..].starts_with(|c: char| c.is_ascii_digit())
}

/// K3s server flags: words of letters, digits and `-=,./:_` separated by single spaces (no quotes, no `$`).
pub fn valid_k3s_flags(v: &str) -> bool {
    v.len() <= 512 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-=,./:_ ".contains(&b))
}

fn valid_url(v: &str) -> bool {
    v.starts_with("https://")
        && v.len() <= 512
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:/[]@%+".contains(&b))
}

/// Where K3s's install script comes from: an https URL, or a `file:///` path on the image.
pub fn valid_installer(v: &str) -> bool {
    valid_url(v)
        || (v.starts_with("file:///")
            && v.len() <= 512
            && !v.contains("/../")
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~:/%+".contains(&b)))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl UserData<'_> {
    /// Renders the document, or says which value cannot be put in.
    pub fn render(&self) -> Result<String, String> {
        let mut problems = Vec::new();
        if !valid_k3s_version(self.k3s_version) {
            problems.push(format!("k3s_version {:?} is not a K3s version like v1.33.5+k3s1", self.k3s_version));
        }
        if !valid_k3s_flags(self.k3s_flags) {
            problems.push(format!("k3s_flags {:?}: only letters, digits, spaces and -=,./:_", self.k3s_flags));
        }
        if !valid_installer(self.k3s_installer) {
            problems.push(format!("k3s installer {:?} is not an https URL or a file:/// path", self.k3s_installer));
        }
        if !valid_url(self.agentd_url) {
            problems.push(format!("agentd URL {:?} is not a plain https URL", self.agentd_url));
        }
        if self.agentd_sha256.len() != 64 || !self.agentd_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            problems.push("agentd SHA-256 is not 64 hex digits".into());
        }
        for k in self.release_keys {
            if outpost_common::release::PublicKey::parse(k).is_err()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            {
                problems.push("a release key is not a minisign public key".into());
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let install = INSTALL
            .replace("{{k3s_version}}", self.k3s_version)
            .replace("{{k3s_flags}}", self.k3s_flags)
            .replace("{{k3s_installer}}", self.k3s_installer)
            .replace("{{agentd_url}}", self.agentd_url)
            .replace("{{agentd_sha256}}", self.agentd_sha256);
        let config = format!(
            "# agentd on {server}, written by cloud-init (hubd provision job {job}).\n\
             data_dir = \"/var/lib/outpost-agentd\"\n\
             token_file = \"/etc/outpost/join-token\"\n\
             log_dir = \"/var/log/outpost-agentd\"\n\
             kubeconfig = \"/etc/rancher/k3s/k3s.yaml\"\n\
             release_keys = [{keys}]\n",
            server = self.server,
            job = self.job,
            keys = self.release_keys.iter().map(|k| format!("\"{k}\"")).collect::<Vec<_>>().join(", ")
        );
        let doc = TEMPLATE
            .replace("{{agentd_toml}}", &b64(&config))
            .replace("{{join_token}}", &b64(self.token))
            .replace("{{fleet_ca}}", &b64(self.ca_pem))
            .replace("{{agentd_unit}}", &b64(UNIT))
            .replace("{{install_sh}}", &b64(&install));
        if doc.len() > MAX_USER_DATA {
            return Err(format!(
                "the user-data is {} bytes, over Hetzner's limit of {MAX_USER_DATA}; shorten provision.k3s_flags or the CA chain",
                doc.len()
            ));
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> UserData<'static> {
        UserData {
            server: "acme-1",
            job: 7,
            token: "outpost-join-v1.secret",
            release_keys: &[],
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            k3s_version: "v1.33.5+k3s1",
            k3s_installer: "https://get.k3s.io",
            k3s_flags: "--disable=traefik --write-kubeconfig-mode=0600",
            agentd_url: "https://hub.example:7443/artifacts/agentd/0.1.0/x86_64",
            agentd_sha256: "ab".repeat(32).leak(),
        }
    }

    #[test]
    fn renders_only_checked_values_and_base64() {
        let doc = sample().render().unwrap();
        assert!(doc.starts_with("#cloud-config\n"));
        assert!(!doc.contains("{{"), "every placeholder is filled");
        assert!(!doc.contains("outpost-join-v1.secret"), "the token is inside base64 only");
        for bad in [
            UserData { k3s_version: "v1.33'; rm -rf /", ..sample() },
            UserData { k3s_flags: "--x=$(reboot)", ..sample() },
            UserData { k3s_installer: "file:///tmp/x';reboot;'", ..sample() },
            UserData { k3s_installer: "http://get.k3s.io", ..sample() },
            UserData { agentd_url: "http://hub/agentd", ..sample() },
            UserData { agentd_sha256: "zz", ..sample() },
        ] {
            assert!(bad.render().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn over_32_kib_is_refused_with_the_size() {
        let big = "x".repeat(40_000);
        let err = UserData { ca_pem: &big, ..sample() }.render().unwrap_err();
        assert!(err.contains("over Hetzner's limit of 32768"), "{err}");
    }
}
