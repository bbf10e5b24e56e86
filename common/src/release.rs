//! Signed agentd releases: the minisign format (ed25519 over the file, or over its BLAKE2b-512 for the
//! prehashed signatures minisign makes by default), checked against pinned release public keys. The
//! signature's trusted comment names what was signed, `outpost-agentd version=VERSION arch=ARCH`, so a
//! binary cannot be passed off as another version or architecture without the release key: the hub stores
//! and serves releases and never holds that key.

use base64::Engine;
use blake2::Digest;

/// The most a signature file may be (a real one is about 300 bytes).
pub const MAX_SIGNATURE: usize = 4096;

/// The most a release binary may be (agentd is about 17–21 MB).
pub const MAX_BINARY: u64 = 256 << 20;

/// Reads a release file of at most `max` bytes; the error says which file and why, for a person.
pub fn read_bounded(path: &std::path::Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut data = Vec::new();
    f.take(max + 1).read_to_end(&mut data).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if data.len() as u64 > max {
        return Err(format!("{} is over {} MiB: not an agentd release or its signature", path.display(), max >> 20));
    }
    Ok(data)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("release public key {0}: not a minisign public key (the base64 line of a .pub file, `RW…`)")]
    BadKey(String),
    #[error("the signature file is not minisign's: {0}")]
    BadSignature(String),
    #[error("signed by key {0}, which is not a pinned release key; pin it in release_keys or sign with a pinned one")]
    UnknownKey(String),
    #[error("the signature does not match the binary (tampered, truncated, or another file's signature)")]
    Mismatch,
    #[error("the trusted comment does not match its signature (the comment was edited)")]
    CommentMismatch,
    #[error("the trusted comment {0:?} does not say `outpost-agentd version=VERSION arch=ARCH`")]
    BadComment(String),
    #[error("this release is for {release}, this machine is {machine}")]
    WrongArch { release: String, machine: String },
    #[error(
        "this release is version {release}, older than the running {running}: a downgrade must be asked for explicitly"
    )]
    Downgrade { release: String, running: String },
}

/// A pinned release key: minisign's key id and ed25519 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub id: [u8; 8],
    key: [u8; 32],
}

impl PublicKey {
    /// The key's base64 line (`RW…`), as `minisign -G` writes it; a whole `.pub` file is taken too.
    pub fn parse(text: &str) -> Result<PublicKey, ReleaseError> {
        let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"));
        let bad = || ReleaseError::BadKey(crate::text::excerpt(text.trim(), 60));
        let raw = base64::engine::general_purpose::STANDARD.decode(line.ok_or_else(bad)?).map_err(|_| bad())?;
        if raw.len() != 42 || &raw[..2] != b"Ed" {
            return Err(bad());
        }
        Ok(PublicKey { id: raw[2..10].try_into().expect("8 bytes"), key: raw[10..].try_into().expect("32 bytes") })
    }

    /// The key id as minisign prints it (hex, most significant byte first).
    pub fn id_hex(&self) -> String {
        key_id(&self.id)
    }
}

fn key_id(id: &[u8; 8]) -> String {
    id.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// A parsed `.minisig` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    prehashed: bool,
    key_id: [u8; 8],
    sig: Vec<u8>,
    /// What the release key vouched for (the trusted comment, without its prefix).
    pub trusted: String,
    global: Vec<u8>,
}

impl Signature {
    pub fn parse(text: &str) -> Result<Signature, ReleaseError> {
        if text.len() > MAX_SIGNATURE {
            return Err(ReleaseError::BadSignature(format!("over {MAX_SIGNATURE} bytes")));
        }
        let lines: Vec<&str> = text.lines().collect();
        let [untrusted, sig, trusted, global] = lines.as_slice() else {
            return Err(ReleaseError::BadSignature("it has not the four lines of a .minisig file".into()));
        };
        if !untrusted.starts_with("untrusted comment:") {
            return Err(ReleaseError::BadSignature("the first line is not an untrusted comment".into()));
        }
        let b64 = |s: &str, what: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .map_err(|_| ReleaseError::BadSignature(format!("the {what} is not base64")))
        };
        let sig = b64(sig, "signature")?;
        if sig.len() != 74 {
            return Err(ReleaseError::BadSignature("the signature line has the wrong length".into()));
        }
        let prehashed = match &sig[..2] {
            b"ED" => true,
            b"Ed" => false,
            _ => return Err(ReleaseError::BadSignature("an unknown signature algorithm".into())),
        };
        let trusted = trusted
            .strip_prefix("trusted comment: ")
            .ok_or_else(|| ReleaseError::BadSignature("the third line is not a trusted comment".into()))?;
        let global = b64(global, "comment signature")?;
        if global.len() != 64 {
            return Err(ReleaseError::BadSignature("the comment signature has the wrong length".into()));
        }
        Ok(Signature {
            prehashed,
            key_id: sig[2..10].try_into().expect("8 bytes"),
            sig: sig[10..].to_vec(),
            trusted: trusted.to_string(),
            global,
        })
    }

    pub fn key_id_hex(&self) -> String {
        key_id(&self.key_id)
    }

    /// Checks the signature of `data` and of the trusted comment against the pinned `keys`.
    pub fn verify(&self, data: &[u8], keys: &[PublicKey]) -> Result<&str, ReleaseError> {
        let key =
            keys.iter().find(|k| k.id == self.key_id).ok_or_else(|| ReleaseError::UnknownKey(self.key_id_hex()))?;
        let digest;
        let signed: &[u8] = if self.prehashed {
            digest = blake2::Blake2b512::digest(data);
            digest.as_slice()
        } else {
            data
        };
        self.verify_signed(signed, key)
    }

    /// Checks the signature of the file at `path` (at most [`MAX_BINARY`] bytes): a prehashed signature
    /// (minisign's default) is checked while the file is read, so a binary is never held in memory whole.
    pub fn verify_file(&self, path: &std::path::Path, keys: &[PublicKey]) -> Result<&str, String> {
        use std::io::Read;
        if !self.prehashed {
            let data = read_bounded(path, MAX_BINARY)?;
            return self.verify(&data, keys).map_err(|e| e.to_string());
        }
        let key = keys
            .iter()
            .find(|k| k.id == self.key_id)
            .ok_or_else(|| ReleaseError::UnknownKey(self.key_id_hex()).to_string())?;
        let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let mut f = std::fs::File::open(path).map_err(cannot)?.take(MAX_BINARY + 1);
        let mut hash = blake2::Blake2b512::new();
        let (mut buf, mut total) = (vec![0u8; 256 << 10], 0u64);
        loop {
            let n = f.read(&mut buf).map_err(cannot)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            hash.update(&buf[..n]);
        }
        if total > MAX_BINARY {
            return Err(format!("{} is over {} MiB: not an agentd release", path.display(), MAX_BINARY >> 20));
        }
        self.verify_signed(hash.finalize().as_slice(), key).map_err(|e| e.to_string())
    }

    fn verify_signed(&self, signed: &[u8], key: &PublicKey) -> Result<&str, ReleaseError> {
        let verifier = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.key);
        verifier.verify(signed, &self.sig).map_err(|_| ReleaseError::Mismatch)?;
        let mut global = self.sig.clone();
        global.extend_from_slice(self.trusted.as_bytes());
        verifier.verify(&global, &self.global).map_err(|_| ReleaseError::CommentMismatch)?;
        Ok(&self.trusted)
    }
}

/// What a release's trusted comment names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub version: String,
    pub arch: String,
}

impl Release {
    /// `outpost-agentd version=0.2.0 arch=x86_64`, as the release is signed (`minisign -S -t "…"`).
    pub fn from_comment(comment: &str) -> Result<Release, ReleaseError> {
        let bad = || ReleaseError::BadComment(crate::text::excerpt(comment, 120));
        let mut words = comment.split_whitespace();
        if words.next() != Some("outpost-agentd") {
            return Err(bad());
        }
        let (mut version, mut arch) = (None, None);
        for w in words {
            match w.split_once('=') {
                Some(("version", v)) if parse_version(v).is_some() => version = Some(v.to_string()),
                Some(("arch", a)) if matches!(a, "x86_64" | "aarch64") => arch = Some(a.to_string()),
                _ => return Err(bad()),
            }
        }
        Ok(Release { version: version.ok_or_else(bad)?, arch: arch.ok_or_else(bad)? })
    }

    /// Whether this machine may install it: its architecture, and no downgrade unless asked for.
    pub fn installable(&self, machine_arch: &str, running: &str, allow_downgrade: bool) -> Result<(), ReleaseError> {
        if self.arch != machine_arch {
            return Err(ReleaseError::WrongArch { release: self.arch.clone(), machine: machine_arch.into() });
        }
        if !allow_downgrade && parse_version(&self.version) < parse_version(running) {
            return Err(ReleaseError::Downgrade { release: self.version.clone(), running: running.into() });
        }
        Ok(())
    }
}

/// `MAJOR.MINOR.PATCH` (a `-pre` or `+build` suffix is compared as nothing) as numbers.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let r = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(r)
}

/// Where an agent's version stands against its hub's (the one published rule, ARCHITECTURE.md "Version
/// skew"): a hub `MAJOR.MINOR` works with agents of its own `MAJOR.MINOR` (any patch: a patch never
/// changes the contract or the stored data) and of the minor before it (for `MAJOR.0`, any minor of the
/// major before). Older agents still connect and report (so they can be updated without SSH) but are
/// flagged; an agent newer than its hub's `MAJOR.MINOR` is never rolled out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skew {
    Supported,
    Older,
    Newer,
    /// Not a version this rule can read.
    Unknown,
}

impl Skew {
    pub fn of(hub: &str, agent: &str) -> Skew {
        let (Some((hm, hn, _)), Some((am, an, _))) = (parse_version(hub), parse_version(agent)) else {
            return Skew::Unknown;
        };
        if (am, an) > (hm, hn) {
            Skew::Newer
        } else if am == hm && (an == hn || an + 1 == hn) || (hn == 0 && am + 1 == hm) {
            Skew::Supported
        } else {
            Skew::Older
        }
    }

    /// `Err` says why a hub of version `hub` must not roll out agentd `agent`.
    pub fn rollout(hub: &str, agent: &str) -> Result<(), String> {
        match Skew::of(hub, agent) {
            Skew::Newer => Err(format!(
                "agentd {agent} is newer than this hub ({hub}): a hub supports agents of its own MAJOR.MINOR and the one before; upgrade the hub first"
            )),
            Skew::Older => Err(format!(
                "agentd {agent} is older than this hub ({hub}) supports (its own MAJOR.MINOR and the one before)"
            )),
            Skew::Unknown => Err(format!("{agent:?} is not a version (MAJOR.MINOR.PATCH)")),
            Skew::Supported => Ok(()),
        }
    }
}

/// Checks a release binary and its signature file against the pinned keys; what it is, or why not.
pub fn verify(data: &[u8], signature: &str, keys: &[PublicKey]) -> Result<Release, ReleaseError> {
    let sig = Signature::parse(signature)?;
    let comment = sig.verify(data, keys)?;
    Release::from_comment(comment)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: &str = include_str!("../testdata/test.pub");
    const BIN: &[u8] = include_bytes!("../testdata/bin");
    const SIG: &str = include_str!("../testdata/bin.minisig");
    const LEGACY: &str = include_str!("../testdata/bin.legacy.minisig");

    /// The test vectors were made by Debian's minisign 0.11 (`minisign -G -W`, `minisign -S -t …`, and `-l`
    /// for the legacy, not prehashed, signature).
    #[test]
    fn minisign_signatures_verify_and_everything_else_is_refused_in_words() {
        let key = PublicKey::parse(PUB).unwrap();
        assert_eq!(key.id_hex(), "3F2EE6CED89333DC");
        let keys = [key];
        let want = Release { version: "0.2.0".into(), arch: "x86_64".into() };
        assert_eq!(verify(BIN, SIG, &keys).unwrap(), want);
        assert_eq!(verify(BIN, LEGACY, &keys).unwrap(), want);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, BIN).unwrap();
        for sig in [SIG, LEGACY] {
            let comment = Signature::parse(sig).unwrap().verify_file(&path, &keys).unwrap().to_string();
            assert_eq!(Release::from_comment(&comment).unwrap(), want);
        }
        std::fs::write(&path, [BIN, b"x"].concat()).unwrap();
        let e = Signature::parse(SIG).unwrap().verify_file(&path, &keys).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        // A byte changed in the binary; the comment edited; another key; a mangled file.
        let mut tampered = BIN.to_vec();
        tampered[0] ^= 1;
        assert_eq!(verify(&tampered, SIG, &keys), Err(ReleaseError::Mismatch));
        let edited = SIG.replace("version=0.2.0", "version=9.9.9");
        assert_eq!(verify(BIN, &edited, &keys), Err(ReleaseError::CommentMismatch));
        let other = PublicKey::parse("RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3").unwrap();
        assert!(matches!(verify(BIN, SIG, &[other]), Err(ReleaseError::UnknownKey(id)) if id == "3F2EE6CED89333DC"));
        assert!(matches!(verify(BIN, "hello", &keys), Err(ReleaseError::BadSignature(_))));
        assert!(matches!(verify(BIN, &"x".repeat(5000), &keys), Err(ReleaseError::BadSignature(_))));
        assert!(PublicKey::parse("RWnope").is_err());
        // What the release may be installed on.
        assert!(want.installable("x86_64", "0.1.0", false).is_ok());
        assert!(want.installable("x86_64", "0.2.0", false).is_ok(), "the same version again is no downgrade");
        assert!(matches!(want.installable("aarch64", "0.1.0", false), Err(ReleaseError::WrongArch { .. })));
        let e = want.installable("x86_64", "0.10.0", false).unwrap_err();
        assert!(e.to_string().contains("older than the running 0.10.0"), "{e}");
        assert!(want.installable("x86_64", "0.10.0", true).is_ok(), "a downgrade asked for explicitly");
        assert!(Release::from_comment("outpost-agentd version=0.2 arch=x86_64").is_err());
        // The version-skew rule.
        assert_eq!(Skew::of("0.2.0", "0.2.7"), Skew::Supported);
        assert_eq!(Skew::of("0.2.3", "0.1.9"), Skew::Supported, "the previous minor");
        assert_eq!(Skew::of("0.2.3", "0.0.9"), Skew::Older);
        assert_eq!(Skew::of("2.0.0", "1.7.0"), Skew::Supported, "MAJOR.0 supports the major before");
        assert_eq!(Skew::of("2.1.0", "1.7.0"), Skew::Older);
        assert_eq!(Skew::of("0.1.0", "0.1.5"), Skew::Supported, "a newer patch is the same contract");
        assert_eq!(Skew::of("0.1.0", "0.2.0"), Skew::Newer);
        assert_eq!(Skew::of("0.1.0", "x"), Skew::Unknown);
        assert!(Skew::rollout("0.1.0", "0.2.0").unwrap_err().contains("upgrade the hub first"));
        assert!(Release::from_comment("outpost-agentd version=0.2.0 arch=mips").is_err());
        assert!(Release::from_comment("something-else version=0.2.0 arch=x86_64").is_err());
    }
}
