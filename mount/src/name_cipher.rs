//! The cryptography of encrypted names and symlink targets (the name
//! encryption issue's core; the FUSE front end and the tree tools do not
//! use it yet: every volume still stores names as given).
//!
//! - A name is encrypted with AES-256-SIV (RFC 5297): deterministic, so a
//!   lookup encrypts the name and opens the backing entry directly, no
//!   directory scan; authenticated, so an edited or renamed backing name
//!   fails to decrypt; with the directory's id as associated data, so the
//!   same name in two directories looks different. Encoded in unpadded
//!   base64url, which every Linux file system takes.
//! - A name whose encoded form is longer than 255 bytes is stored under a
//!   digest of it (`chronicle.long.` and 43 characters), with the encoded
//!   name in a file beside it; the digest binds the two.
//! - A directory's id is 16 random bytes in a small record inside it
//!   (`chronicle.dirid`), authenticated so only ids this volume made are
//!   accepted. Renaming a directory moves its id with it: nothing below it
//!   is re-encrypted (EncFS's chained IVs re-encrypt every descendant).
//! - A symlink target is sealed (AES-256-GCM, random nonce, the volume's one
//!   sealing routine) and encoded in base64url.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use aes_siv::aead::KeyInit;
use aes_siv::siv::Aes256Siv;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::cipher::{self, Aead};
use crate::content::ContentCrypto;

/// Length of a directory id.
pub const DIR_ID_LEN: usize = 16;
/// The longest name a Linux file system stores.
pub const NAME_MAX: usize = 255;
/// Prefix of the backing name of a long name; base64url has no `.`, so no
/// short encrypted name can take this form.
pub const LONG_PREFIX: &str = "chronicle.long.";
/// Suffix of the file beside a long name that holds its encoded name.
pub const LONG_NAME_SUFFIX: &str = ".name";
/// The directory id record inside every directory.
pub const DIR_ID_NAME: &str = "chronicle.dirid";
/// The longest plaintext name whose encoding fits in `NAME_MAX`:
/// ⌊255 × 3 / 4⌋ − 16 (the SIV tag).
pub const MAX_SHORT_NAME: usize = NAME_MAX * 3 / 4 - 16;

const DIR_ID_MAGIC: [u8; 4] = *b"CHRD";
const DIR_ID_VERSION: u16 = 1;
/// The record: magic ‖ version u16 LE ‖ id ‖ tag.
pub const DIR_ID_RECORD_LEN: usize = 4 + 2 + DIR_ID_LEN + 16;

/// Why a backing name or target cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forged {
    /// Not the encoding of any name this directory could hold.
    Name,
    /// A long name's file does not match its digest.
    LongName,
    /// A symlink target that does not authenticate.
    Target,
    /// A directory id record that does not authenticate.
    DirId,
}

/// Where an encrypted name is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingName {
    /// The encoded name itself is the backing name.
    Short(OsString),
    /// Stored as `digest_name`, with `encoded` in `digest_name` + `.name`.
    Long {
        digest_name: OsString,
        encoded: Vec<u8>,
    },
}

/// Encrypts and decrypts the names and symlink targets of one volume.
pub struct NameCipher {
    siv_key: Zeroizing<[u8; 64]>,
    targets: Box<dyn Aead>,
    dir_id_key: Zeroizing<[u8; 32]>,
}

impl NameCipher {
    pub fn new(crypto: &ContentCrypto) -> Self {
        let master = crypto.master();
        let mut siv_key = Zeroizing::new([0u8; 64]);
        siv_key[..32].copy_from_slice(master.derive(&[b"chronicle names v1 mac"]).as_bytes());
        siv_key[32..].copy_from_slice(master.derive(&[b"chronicle names v1 ctr"]).as_bytes());
        NameCipher {
            siv_key,
            targets: crypto.derive_aead(b"chronicle symlink targets v1"),
            dir_id_key: Zeroizing::new(*master.derive(&[b"chronicle dirid v1"]).as_bytes()),
        }
    }

    fn siv(&self) -> Aes256Siv {
        Aes256Siv::new(self.siv_key.as_slice().into())
    }

    /// The backing form of `name` in the directory `dir_id`.
    pub fn encrypt_name(&self, dir_id: &[u8; DIR_ID_LEN], name: &OsStr) -> BackingName {
        let sealed = self
            .siv()
            .encrypt([dir_id.as_slice()], name.as_bytes())
            .unwrap_or_else(|_| panic!("invariant: AES-SIV seals a {}-byte name", name.len()));
        let encoded = URL_SAFE_NO_PAD.encode(sealed);
        if encoded.len() <= NAME_MAX {
            return BackingName::Short(OsString::from(encoded));
        }
        BackingName::Long {
            digest_name: long_digest_name(encoded.as_bytes()),
            encoded: encoded.into_bytes(),
        }
    }

    /// The plaintext of a short backing name in the directory `dir_id`.
    /// An encoding longer than a name can be is refused: it is only ever
    /// stored in a long name's file.
    pub fn decrypt_name(
        &self,
        dir_id: &[u8; DIR_ID_LEN],
        backing: &OsStr,
    ) -> Result<OsString, Forged> {
        if backing.len() > NAME_MAX {
            return Err(Forged::Name);
        }
        self.open_encoded(dir_id, backing.as_bytes())
    }

    fn open_encoded(&self, dir_id: &[u8; DIR_ID_LEN], encoded: &[u8]) -> Result<OsString, Forged> {
        let sealed = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| Forged::Name)?;
        let plain = self
            .siv()
            .decrypt([dir_id.as_slice()], &sealed)
            .map_err(|_| Forged::Name)?;
        valid_name(plain)
    }

    /// The plaintext of a long name stored as `digest_name` whose file
    /// holds `encoded`.
    pub fn decrypt_long_name(
        &self,
        dir_id: &[u8; DIR_ID_LEN],
        digest_name: &OsStr,
        encoded: &[u8],
    ) -> Result<OsString, Forged> {
        if long_digest_name(encoded) != digest_name {
            return Err(Forged::LongName);
        }
        self.open_encoded(dir_id, encoded)
    }

    /// The stored form of a symlink target.
    pub fn seal_target(&self, target: &OsStr) -> OsString {
        let mut sealed = Vec::with_capacity(target.len() + cipher::FRAME_OVERHEAD);
        cipher::seal_framed(&*self.targets, b"symlink", target.as_bytes(), &mut sealed);
        OsString::from(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The target a stored symlink target holds.
    pub fn open_target(&self, stored: &OsStr) -> Result<OsString, Forged> {
        let mut sealed = URL_SAFE_NO_PAD
            .decode(stored.as_bytes())
            .map_err(|_| Forged::Target)?;
        let plain = cipher::open_framed(&*self.targets, b"symlink", &mut sealed)
            .map_err(|_| Forged::Target)?;
        Ok(OsString::from_vec(plain.to_vec()))
    }

    /// A new directory id record.
    pub fn new_dir_id(&self) -> ([u8; DIR_ID_LEN], [u8; DIR_ID_RECORD_LEN]) {
        let id = crate::random::bytes::<DIR_ID_LEN>();
        (id, self.dir_id_record(&id))
    }

    fn dir_id_record(&self, id: &[u8; DIR_ID_LEN]) -> [u8; DIR_ID_RECORD_LEN] {
        let mut record = [0u8; DIR_ID_RECORD_LEN];
        record[..4].copy_from_slice(&DIR_ID_MAGIC);
        record[4..6].copy_from_slice(&DIR_ID_VERSION.to_le_bytes());
        record[6..6 + DIR_ID_LEN].copy_from_slice(id);
        let tag = self.dir_id_tag(&record[..6 + DIR_ID_LEN]);
        record[6 + DIR_ID_LEN..].copy_from_slice(&tag);
        record
    }

    fn dir_id_tag(&self, bytes: &[u8]) -> [u8; 16] {
        use hkdf::Hkdf;
        let hk = Hkdf::<Sha256>::from_prk(self.dir_id_key.as_slice())
            .unwrap_or_else(|_| panic!("invariant: a 32-byte key is a valid HKDF PRK"));
        let mut tag = [0u8; 16];
        hk.expand(bytes, &mut tag)
            .unwrap_or_else(|_| panic!("invariant: HKDF-SHA256 expands to 16 bytes"));
        tag
    }

    /// The id in a directory id record, if it is one this volume made.
    pub fn open_dir_id(&self, record: &[u8]) -> Result<[u8; DIR_ID_LEN], Forged> {
        let record: &[u8; DIR_ID_RECORD_LEN] = record.try_into().map_err(|_| Forged::DirId)?;
        let mut id = [0u8; DIR_ID_LEN];
        id.copy_from_slice(&record[6..6 + DIR_ID_LEN]);
        let expected = self.dir_id_record(&id);
        let same = expected
            .iter()
            .zip(record)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if same {
            Ok(id)
        } else {
            Err(Forged::DirId)
        }
    }
}

/// `chronicle.long.` and the unpadded base64url SHA-256 of the encoded name.
fn long_digest_name(encoded: &[u8]) -> OsString {
    let digest = Sha256::digest(encoded);
    OsString::from(format!("{LONG_PREFIX}{}", URL_SAFE_NO_PAD.encode(digest)))
}

/// Refuses what no directory entry can be called, even if it decrypts.
fn valid_name(plain: Vec<u8>) -> Result<OsString, Forged> {
    let bad = plain.is_empty()
        || plain.len() > NAME_MAX
        || plain.contains(&b'/')
        || plain.contains(&0)
        || plain == b"."
        || plain == b"..";
    if bad {
        return Err(Forged::Name);
    }
    Ok(OsString::from_vec(plain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Backend;
    use crate::keys::SecretKey;

    fn cipher() -> NameCipher {
        NameCipher::new(&ContentCrypto::new(
            SecretKey::from_bytes([6; 32]),
            Backend::Ring,
        ))
    }

    fn decrypt(
        c: &NameCipher,
        dir: &[u8; DIR_ID_LEN],
        stored: &BackingName,
    ) -> Result<OsString, Forged> {
        match stored {
            BackingName::Short(name) => c.decrypt_name(dir, name),
            BackingName::Long {
                digest_name,
                encoded,
            } => c.decrypt_long_name(dir, digest_name, encoded),
        }
    }

    // Protects: every name length from 1 to 255 bytes (and bytes that are
    // not UTF-8) round-trips; backing names are at most 255 bytes of the
    // base64url alphabet (or the long form); short and long forms split at
    // MAX_SHORT_NAME.
    #[test]
    fn every_length_round_trips() {
        let c = cipher();
        let dir = [1u8; DIR_ID_LEN];
        for len in 1..=NAME_MAX {
            let name: Vec<u8> = (0..len).map(|i| [b'a', 0xff, b' ', 0x80][i % 4]).collect();
            let name = OsString::from_vec(name);
            let stored = c.encrypt_name(&dir, &name);
            let backing = match &stored {
                BackingName::Short(n) => {
                    assert!(len <= MAX_SHORT_NAME, "{len}");
                    n.clone()
                }
                BackingName::Long { digest_name, .. } => {
                    assert!(len > MAX_SHORT_NAME, "{len}");
                    digest_name.clone()
                }
            };
            assert!(backing.len() <= NAME_MAX);
            assert!(backing
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b)));
            assert_eq!(decrypt(&c, &dir, &stored), Ok(name), "{len}");
        }
    }

    // Protects: deterministic (lookups need no scan), bound to the
    // directory, and authenticated (an edited, moved or swapped name fails).
    #[test]
    fn deterministic_bound_and_authenticated() {
        let c = cipher();
        let (a, b) = ([1u8; DIR_ID_LEN], [2u8; DIR_ID_LEN]);
        let name = OsStr::new("metrics.seg");
        assert_eq!(c.encrypt_name(&a, name), c.encrypt_name(&a, name));
        assert_ne!(c.encrypt_name(&a, name), c.encrypt_name(&b, name));
        let BackingName::Short(stored) = c.encrypt_name(&a, name) else {
            panic!("a short name");
        };
        assert_eq!(
            c.decrypt_name(&b, &stored),
            Err(Forged::Name),
            "moved to another directory"
        );
        let mut edited = stored.clone().into_vec();
        edited[3] = if edited[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            c.decrypt_name(&a, OsStr::from_bytes(&edited)),
            Err(Forged::Name)
        );
        assert_eq!(
            c.decrypt_name(&a, OsStr::new("plain.txt")),
            Err(Forged::Name)
        );
        // A long name's file swapped for another long name's.
        let long = OsString::from("x".repeat(200));
        let other = OsString::from("y".repeat(200));
        let (BackingName::Long { digest_name, .. }, BackingName::Long { encoded, .. }) =
            (c.encrypt_name(&a, &long), c.encrypt_name(&a, &other))
        else {
            panic!("long names");
        };
        assert_eq!(
            c.decrypt_long_name(&a, &digest_name, &encoded),
            Err(Forged::LongName)
        );
        // Regression (found by the `names` fuzz target): a long name's
        // encoding is not a short backing name, though it decrypts.
        assert_eq!(
            c.decrypt_name(&a, OsStr::from_bytes(&encoded)),
            Err(Forged::Name)
        );
    }

    // Protects: symlink targets up to the POSIX limit round-trip and are
    // authenticated; the stored form fits a backing symlink up to 3043
    // bytes of target (longer ones need the sidecar form the wiring adds).
    #[test]
    fn symlink_targets() {
        let c = cipher();
        for len in [1usize, 100, 3043, 4095] {
            let target = OsString::from("t".repeat(len));
            let stored = c.seal_target(&target);
            assert_eq!(c.open_target(&stored), Ok(target));
            assert_eq!(stored.len() <= 4095, len <= 3043, "{len}");
        }
        let mut stored = c.seal_target(OsStr::new("../data")).into_vec();
        stored[5] = if stored[5] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            c.open_target(OsStr::from_bytes(&stored)),
            Err(Forged::Target)
        );
    }

    // Protects: directory id records: only this volume's authenticate.
    #[test]
    fn dir_id_records() {
        let c = cipher();
        let (id, record) = c.new_dir_id();
        assert_eq!(c.open_dir_id(&record), Ok(id));
        let mut edited = record;
        edited[8] ^= 1;
        assert_eq!(c.open_dir_id(&edited), Err(Forged::DirId));
        assert_eq!(c.open_dir_id(&record[..10]), Err(Forged::DirId));
        let other = NameCipher::new(&ContentCrypto::new(
            SecretKey::from_bytes([7; 32]),
            Backend::Ring,
        ));
        assert_eq!(other.open_dir_id(&record), Err(Forged::DirId));
        assert_eq!(MAX_SHORT_NAME, 175);
    }
}
