//! Secrets at rest: app secrets are sealed with ChaCha20-Poly1305 under a key that lives in a 0600 file
//! beside the identity (`data_dir/secrets.key`), bound to their place (app and name) so a sealed value
//! cannot be moved to another app or name. The key never leaves this server.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secrets key {path}: {error}")]
    Key { path: String, error: String },
    #[error("secret {0} cannot be opened: it was sealed with another key or altered")]
    Open(String),
}

pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(…)")
    }
}

const KEY_FILE: &str = "secrets.key";

impl Sealer {
    /// Loads the key from `data_dir`, or creates it (0600) the first time. A key readable by others is
    /// refused, not used.
    pub fn open(data_dir: &Path) -> Result<Sealer, SecretError> {
        let path = data_dir.join(KEY_FILE);
        let err = |error: String| SecretError::Key { path: path.display().to_string(), error };
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(&path) {
            Ok(b) => {
                let mode = std::fs::metadata(&path).map_err(|e| err(e.to_string()))?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(err(format!("mode {:o} lets others read it; chmod 600 it", mode & 0o777)));
                }
                b
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut b = vec![0u8; 32];
                rng.fill(&mut b).map_err(|_| err("no randomness".into()))?;
                let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| err(e.to_string()))?;
                f.write_all(&b).and_then(|()| f.sync_all()).map_err(|e| err(e.to_string()))?;
                std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
                b
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| err("not a 32-byte key".into()))?;
        Ok(Sealer { key: LessSafeKey::new(key), rng })
    }

    /// `value` sealed for `place` (e.g. `app/NAME`), as base64 of nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, place: &str, value: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system has randomness (checked when the key was made)");
        let mut buf = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(place.as_bytes()), &mut buf)
            .expect("a secret fits");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    pub fn open_sealed(&self, place: &str, sealed: &str) -> Result<String, SecretError> {
        let bad = || SecretError::Open(place.to_string());
        let raw = base64::engine::general_purpose::STANDARD.decode(sealed).map_err(|_| bad())?;
        if raw.len() < NONCE_LEN {
            return Err(bad());
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut body = body.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(place.as_bytes()), &mut body).map_err(|_| bad())?;
        String::from_utf8(plain.to_vec()).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_in_their_place_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = s.seal("web/DATABASE_URL", "postgres://u:p@db");
        assert!(!sealed.contains("postgres"));
        assert_ne!(sealed, s.seal("web/DATABASE_URL", "postgres://u:p@db"), "a fresh nonce each time");
        assert_eq!(s.open_sealed("web/DATABASE_URL", &sealed).unwrap(), "postgres://u:p@db");
        assert!(s.open_sealed("api/DATABASE_URL", &sealed).is_err(), "bound to its place");
        // The same key after a restart; another key cannot open it.
        assert_eq!(
            Sealer::open(dir.path()).unwrap().open_sealed("web/DATABASE_URL", &sealed).unwrap(),
            "postgres://u:p@db"
        );
        let other = tempfile::tempdir().unwrap();
        assert!(Sealer::open(other.path()).unwrap().open_sealed("web/DATABASE_URL", &sealed).is_err());
        std::fs::set_permissions(dir.path().join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Sealer::open(dir.path()).unwrap_err().to_string().contains("chmod 600"));
    }
}
