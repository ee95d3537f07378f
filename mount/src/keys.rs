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

    /// A fresh key from the volume's one source of randomness (`random`).
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        crate::random::fill(&mut bytes);
        Ok(SecretKey(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// HKDF-SHA256 of this key with `salt` (a volume id, so the same key
    /// gives unrelated values in two volumes) for one purpose.
    pub fn derive_salted(&self, salt: &[u8], info: &[&[u8]]) -> SecretKey {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let mut out = [0u8; KEY_LEN];
        hk.expand_multi_info(info, &mut out)
            .unwrap_or_else(|_| panic!("invariant: HKDF-SHA256 expands to {KEY_LEN} bytes"));
        SecretKey(out)
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
            // 32 random bytes are all printable text with odds of about
            // 10^-14; 32 bytes of text are a typed password, which must be
            // stretched, not used as a key.
            if raw
                .iter()
                .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
            {
                return Err(VolumeError::BadKey {
                    reason: format!(
                        "{source}: 32 bytes of text look like a password, not a raw key; use --passphrase, or write the key as 64 hex characters"
                    ),
                });
            }
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
        crate::random::fill(&mut salt);
        Ok(KdfParams {
            memory_kib,
            iterations,
            parallelism: 1,
            salt,
        })
    }

    /// Bounds on stored parameters: a damaged configuration must not make
    /// opening it allocate terabytes or spin for hours before the wrap is
    /// even checked.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    pub const MAX_ITERATIONS: u32 = 64;
    pub const MAX_PARALLELISM: u32 = 16;

    /// Why these parameters are out of bounds, if they are.
    pub fn out_of_bounds(&self) -> Option<String> {
        if !(1..=Self::MAX_PARALLELISM).contains(&self.parallelism) {
            return Some(format!(
                "Argon2id parallelism {} is outside 1..={}",
                self.parallelism,
                Self::MAX_PARALLELISM
            ));
        }
        let min_memory = 8 * self.parallelism;
        if !(min_memory..=Self::MAX_MEMORY_KIB).contains(&self.memory_kib) {
            return Some(format!(
                "Argon2id memory {} KiB is outside {min_memory}..={} KiB",
                self.memory_kib,
                Self::MAX_MEMORY_KIB
            ));
        }
        if !(1..=Self::MAX_ITERATIONS).contains(&self.iterations) {
            return Some(format!(
                "Argon2id iterations {} is outside 1..={}",
                self.iterations,
                Self::MAX_ITERATIONS
            ));
        }
        None
    }

    /// Stretches a passphrase into a key-encryption key.
    pub fn stretch(&self, passphrase: &str) -> Result<SecretKey> {
        if let Some(reason) = self.out_of_bounds() {
            return Err(VolumeError::BadKey { reason });
        }
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

/// Compares a computed MAC with a stored one in time that does not depend
/// on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        // A typed password of 31 characters and a newline is not a raw key.
        let typed = b"correct horse battery staple 12\n";
        assert_eq!(typed.len(), 32);
        let err = UserKey::from_file_bytes(typed, "f").expect_err("typed password");
        assert!(err.to_string().contains("--passphrase"), "{err}");
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
