//! Secrets the hub must hold for a while, sealed: the arguments of a command waiting for its agent (an
//! `app-apply` spec with its `[secrets]`) and a deprovisioned customer's archive.
//!
//! Architecture invariant: the hub holds no secret in the clear. What it writes (the store, the archive
//! directory) carries only `sealed:v1:KID:BASE64`, ChaCha20-Poly1305 under a key derived from the fleet CA's
//! private key (`FleetCa::seal_secret`), with the record's purpose as associated data, so a sealed value
//! cannot be moved to another use. KID names the key (from the CA pin, `pki::rotation::kid`): after a rotation of
//! the CA, values are sealed with the new CA's key and the retired CA's key (`ca/retired/KID.key`) still
//! opens what it sealed (`pki::rotation`).

use std::collections::BTreeMap;

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

const PREFIX: &str = "sealed:v1:";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SealError {
    #[error("sealed with another key ({0}): was the fleet CA replaced? Its old key is needed to open it")]
    OtherKey(String),
    #[error("a sealed value is damaged or was moved from another record")]
    Damaged,
}

/// The seal key, and the keys of retired CAs (open only).
pub struct Sealer {
    keys: std::sync::RwLock<Vec<(LessSafeKey, String)>>,
}

fn key(secret: &[u8; 32], kid: &str) -> (LessSafeKey, String) {
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, secret).expect("a 32-byte key"));
    (key, crate::pki::rotation::kid(kid))
}

impl Sealer {
    pub fn new(secret: [u8; 32], kid: &str) -> Sealer {
        Sealer { keys: std::sync::RwLock::new(vec![key(&secret, kid)]) }
    }

    /// Seals with `secret` from now on; opens with it and with each of `retired` (a rotated CA's keys).
    pub fn rekey(&self, secret: [u8; 32], kid: &str, retired: &[([u8; 32], String)]) {
        let keys = std::iter::once(key(&secret, kid)).chain(retired.iter().map(|(s, k)| key(s, k))).collect();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// The sealer of the fleet CA's `keys`: the current CA's key seals, retired ones open.
    pub fn of(keys: &crate::pki::rotation::Keys) -> Sealer {
        let sealer = Sealer::new(keys.current().seal_secret(), keys.current().pin());
        sealer.follow(keys);
        sealer
    }

    /// After a rotation: [`Sealer::of`] the new `keys`.
    pub fn follow(&self, keys: &crate::pki::rotation::Keys) {
        self.rekey(keys.current().seal_secret(), keys.current().pin(), &keys.retired);
    }

    /// `plain` sealed for `purpose`.
    pub fn seal(&self, plain: &[u8], purpose: &str) -> String {
        let nonce = outpost_common::random_bytes::<NONCE_LEN>();
        let mut buf = plain.to_vec();
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let (key, kid) = &keys[0];
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.as_bytes()), &mut buf)
            .expect("sealing a message shorter than 256 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{PREFIX}{kid}:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(out))
    }

    /// The plain bytes of `sealed` (made by [`Sealer::seal`] with the same `purpose`).
    pub fn open(&self, sealed: &str, purpose: &str) -> Result<Vec<u8>, SealError> {
        let rest = sealed.strip_prefix(PREFIX).ok_or(SealError::Damaged)?;
        let (kid, b64) = rest.split_once(':').ok_or(SealError::Damaged)?;
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let Some((key, _)) = keys.iter().find(|(_, k)| k == kid) else {
            return Err(SealError::OtherKey(kid.chars().take(16).collect()));
        };
        let mut bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64).map_err(|_| SealError::Damaged)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Damaged);
        }
        let mut body = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SealError::Damaged)?;
        let plain =
            key.open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut body).map_err(|_| SealError::Damaged)?;
        Ok(plain.to_vec())
    }

    pub fn is_sealed(s: &str) -> bool {
        s.starts_with(PREFIX)
    }

    /// `args` of `action` as they may be stored: every secret-bearing value (a secret argument, an app spec)
    /// sealed, bound to the action and the argument's name.
    pub fn seal_args(&self, action: &str, args: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        args.iter()
            .map(|(k, v)| {
                let v = if outpost_common::actions::is_secret_bearing(action, k) {
                    self.seal(v.as_bytes(), &format!("args/{action}/{k}"))
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }

    /// The arguments [`Sealer::seal_args`] stored, opened (a value stored in the clear by an older hub is
    /// taken as it is).
    pub fn open_args(
        &self,
        action: &str,
        args: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SealError> {
        args.into_iter()
            .map(|(k, v)| {
                if Self::is_sealed(&v) {
                    let plain = self.open(&v, &format!("args/{action}/{k}"))?;
                    Ok((k, String::from_utf8(plain).map_err(|_| SealError::Damaged)?))
                } else {
                    Ok((k, v))
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let s = Sealer::new([7; 32], "abcdef0123456789ff");
        let sealed = s.seal(b"hunter2", "archive/web-1");
        assert!(sealed.starts_with("sealed:v1:abcdef0123456789:") && !sealed.contains("hunter2"), "{sealed}");
        assert_eq!(s.open(&sealed, "archive/web-1").unwrap(), b"hunter2");
        assert_eq!(s.open(&sealed, "archive/web-2"), Err(SealError::Damaged), "bound to its purpose");
        let other = Sealer::new([8; 32], "abcdef0123456789");
        assert_eq!(other.open(&sealed, "archive/web-1"), Err(SealError::Damaged), "another key");
        let renamed = Sealer::new([7; 32], "1111222233334444");
        assert!(matches!(renamed.open(&sealed, "archive/web-1"), Err(SealError::OtherKey(_))));
        let mut bad = sealed.clone();
        bad.pop();
        assert!(s.open(&bad, "archive/web-1").is_err());
        assert_ne!(s.seal(b"x", "p"), s.seal(b"x", "p"), "a fresh nonce each time");
        // After a CA rotation: new values are sealed with the new key, old ones still open.
        s.rekey([9; 32], "9999888877776666", &[([7; 32], "abcdef0123456789".into())]);
        assert_eq!(s.open(&sealed, "archive/web-1").unwrap(), b"hunter2");
        assert!(s.seal(b"x", "p").starts_with("sealed:v1:9999888877776666:"));
    }

    #[test]
    fn only_secret_bearing_arguments_are_sealed() {
        let s = Sealer::new([1; 32], "kid");
        let spec = "name = \"web\"\n[secrets]\nDB = \"hunter2\"\n";
        let args: BTreeMap<String, String> =
            [("spec".to_string(), spec.to_string()), ("unit".to_string(), "k3s".to_string())].into();
        let stored = s.seal_args("app-apply", &args);
        assert!(!stored["spec"].contains("hunter2") && Sealer::is_sealed(&stored["spec"]));
        assert_eq!(stored["unit"], "k3s");
        assert_eq!(s.open_args("app-apply", stored.clone()).unwrap(), args);
        assert!(s.open_args("app-deploy", stored).is_err(), "bound to its action");
        let plain = s.seal_args("service-status", &[("unit".to_string(), "k3s".to_string())].into());
        assert_eq!(plain["unit"], "k3s");
    }
}
