//! Key material: the user's key (raw or passphrase), the volume's master key,
//! and the subkeys derived from it. Every key lives in a zeroizing container
//! and none implements a `Debug` that shows its bytes.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::cipher::KEY_LEN;
use crate::error::{Result, VolumeError};

/// 32 secret bytes, wiped on drop, redacted in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(bytes)
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes)?;
        Ok(SecretKey(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// HKDF-SHA256 expansion of this key for one purpose. `info` names the
    /// purpose (and, for file keys, the file), so distinct uses never share a key.
    pub fn derive(&self, info: &[&[u8]]) -> SecretKey {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let mut out = [0u8; KEY_LEN];
        // HKDF-SHA256 can expand up to 255 * 32 bytes; 32 always fits.
        hk.expand_multi_info(info, &mut out)
            .unwrap_or_else(|_| panic!("invariant: HKDF-SHA256 expands to {KEY_LEN} bytes"));
        SecretKey(out)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// What the user supplies to open a volume.
pub enum UserKey {
    /// 32 raw bytes (from hex, a key file or a key command).
    Raw(SecretKey),
    /// A passphrase, stretched with Argon2id using the parameters stored in
    /// the volume configuration.
    Passphrase(Zeroizing<String>),
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserKey::Raw(_) => f.write_str("UserKey::Raw(<redacted>)"),
            UserKey::Passphrase(_) => f.write_str("UserKey::Passphrase(<redacted>)"),
        }
    }
}

impl UserKey {
    /// Parses a key given as text: 64 hex characters, surrounding whitespace
    /// ignored. `source` names where it came from, for the error message.
    pub fn from_hex(text: &str, source: &str) -> Result<Self> {
        let trimmed = text.trim();
        if trimmed.len() != 2 * KEY_LEN {
            return Err(VolumeError::BadKey {
                reason: format!(
                    "{source}: expected 32 bytes ({} hex characters), got {} characters",
                    2 * KEY_LEN,
                    trimmed.len()
                ),
            });
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        for (i, pair) in trimmed.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]);
            let lo = hex_digit(pair[1]);
            match (hi, lo, bytes.get_mut(i)) {
                (Some(hi), Some(lo), Some(slot)) => *slot = hi << 4 | lo,
                _ => {
                    return Err(VolumeError::BadKey {
                        reason: format!(
                            "{source}: not hexadecimal (expected 32 bytes as {} hex characters)",
                            2 * KEY_LEN
                        ),
                    })
                }
            }
        }
        Ok(UserKey::Raw(SecretKey::from_bytes(*bytes)))
    }

    /// Parses key-file contents: exactly 32 raw bytes, or 64 hex characters
    /// with optional surrounding whitespace.
    pub fn from_file_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        if let Ok(raw) = <[u8; KEY_LEN]>::try_from(bytes) {
            // 32 bytes that are all hex digits would be a 16-byte hex key,
            // which from_hex rejects anyway; raw bytes win.
            return Ok(UserKey::Raw(SecretKey::from_bytes(raw)));
        }
        match std::str::from_utf8(bytes) {
            Ok(text) if text.trim().bytes().all(|c| c.is_ascii_hexdigit()) => {
                Self::from_hex(text, source)
            }
            _ => Err(VolumeError::BadKey {
                reason: format!(
                    "{source}: expected 32 raw bytes or 64 hex characters, got {} bytes",
                    bytes.len()
                ),
            }),
        }
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Argon2id cost parameters, stored in the volume configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: [u8; 16],
}

impl KdfParams {
    /// Defaults: 64 MiB, 3 passes, 1 lane (the second RFC 9106 recommended
    /// option), fresh salt.
    pub fn new_default() -> Result<Self> {
        Self::with_cost(64 * 1024, 3)
    }

    pub fn with_cost(memory_kib: u32, iterations: u32) -> Result<Self> {
        let mut salt = [0u8; 16];
        fill_random(&mut salt)?;
        Ok(KdfParams {
            memory_kib,
            iterations,
            parallelism: 1,
            salt,
        })
    }

    /// Stretches a passphrase into a key-encryption key.
    pub fn stretch(&self, passphrase: &str) -> Result<SecretKey> {
        let params = argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEY_LEN),
        )
        .map_err(|e| VolumeError::BadKey {
            reason: format!("invalid Argon2id parameters: {e}"),
        })?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; KEY_LEN];
        argon
            .hash_password_into(passphrase.as_bytes(), &self.salt, &mut out)
            .map_err(|e| VolumeError::BadKey {
                reason: format!("Argon2id failed: {e}"),
            })?;
        let key = SecretKey::from_bytes(out);
        out.zeroize();
        Ok(key)
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf)
        .map_err(|e| VolumeError::io("reading the system random number generator", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: key bytes never appear in Debug output (and so never in logs).
    #[test]
    fn debug_redacts_keys() {
        let key = SecretKey::from_bytes([0xAB; 32]);
        let shown = format!("{key:?} {:?}", UserKey::Raw(key.clone()));
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        let pass = UserKey::Passphrase(Zeroizing::new("hunter2".into()));
        assert!(!format!("{pass:?}").contains("hunter2"));
    }

    // Protects: hex parsing accepts exactly 64 hex characters, whitespace-trimmed.
    #[test]
    fn hex_keys() {
        let hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let UserKey::Raw(k) = UserKey::from_hex(&format!(" {hex}\n"), "t").expect("valid") else {
            panic!("raw key expected")
        };
        assert_eq!(k.as_bytes()[31], 0x1f);
        let short = UserKey::from_hex("00ff", "t").expect_err("short");
        assert!(short.to_string().contains("expected 32 bytes"), "{short}");
        assert!(short.to_string().contains("got 4"), "{short}");
        let bad = UserKey::from_hex(&hex.replace('0', "g"), "t").expect_err("non-hex");
        assert!(bad.to_string().contains("not hexadecimal"), "{bad}");
    }

    // Protects: key files may hold raw bytes or hex; other lengths are refused.
    #[test]
    fn key_file_forms() {
        assert!(matches!(
            UserKey::from_file_bytes(&[7u8; 32], "f"),
            Ok(UserKey::Raw(_))
        ));
        let err = UserKey::from_file_bytes(&[0xffu8; 31], "f").expect_err("31 bytes");
        assert!(err.to_string().contains("got 31 bytes"), "{err}");
    }

    // Protects: derivation separates purposes and is deterministic.
    #[test]
    fn derivation_separates_purposes() {
        let master = SecretKey::from_bytes([1; 32]);
        let a = master.derive(&[b"content", &[0; 16]]);
        let b = master.derive(&[b"content", &[1; 16]]);
        let a2 = master.derive(&[b"content", &[0; 16]]);
        assert_ne!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.as_bytes(), a2.as_bytes());
    }
}
