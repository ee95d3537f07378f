//! The volume configuration, `BACKING/chronicle.volume`: a fixed-size binary
//! record (docs/FORMAT.md draws it) holding the format parameters, the KDF
//! parameters and the master key wrapped with AES-256-GCM under the user's
//! key. The wrap's associated data is every byte before the wrap, so editing
//! any field makes the configuration fail authentication.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::cipher::{self, Backend, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{IoContext, Result, VolumeError};
use crate::keys::{KdfParams, SecretKey, UserKey};
use crate::layout::BLOCK_SIZE;
use crate::names::NameMode;

/// File name of the configuration inside the backing directory.
pub const CONFIG_NAME: &str = "chronicle.volume";
/// Magic number of the configuration.
pub const CONFIG_MAGIC: [u8; 8] = *b"CHRONVOL";
/// The configuration format version written and read by this build.
pub const CONFIG_VERSION: u16 = 4;
/// Algorithm identifier for AES-256-GCM.
pub const ALGORITHM_AES_256_GCM: u16 = 1;
/// Feature flag: file names and symlink targets are encrypted (the default;
/// `init --plaintext-names` leaves it clear).
pub const FEATURE_ENCRYPTED_NAMES: u64 = 1;
/// Feature flag: the volume stores `user.*` extended attributes
/// (`init --xattrs`). Without it the mount answers every extended-attribute
/// request with "not supported" once, and the kernel stops asking: `ls -l`
/// asks every file for its security label and ACL.
pub const FEATURE_XATTRS: u64 = 2;
/// Feature flags this build understands; any other is refused rather than
/// misread.
pub const KNOWN_FEATURES: u64 = FEATURE_ENCRYPTED_NAMES | FEATURE_XATTRS;

/// The choices a volume is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeFeatures {
    pub names: NameMode,
    /// `user.*` extended attributes are stored (sealed).
    pub xattrs: bool,
}

/// A name mode alone: no extended attributes (the default).
impl From<NameMode> for VolumeFeatures {
    fn from(names: NameMode) -> Self {
        VolumeFeatures {
            names,
            xattrs: false,
        }
    }
}

/// Field offsets, each derived from the one before.
pub const MAGIC_AT: usize = 0;
pub const VERSION_AT: usize = MAGIC_AT + CONFIG_MAGIC.len();
pub const ALGORITHM_AT: usize = VERSION_AT + 2;
pub const BLOCK_SIZE_AT: usize = ALGORITHM_AT + 2;
pub const FEATURES_AT: usize = BLOCK_SIZE_AT + 4;
pub const VOLUME_ID_AT: usize = FEATURES_AT + 8;
pub const KEY_SOURCE_AT: usize = VOLUME_ID_AT + 16;
pub const KDF_MEMORY_AT: usize = KEY_SOURCE_AT + 4;
pub const KDF_ITERATIONS_AT: usize = KDF_MEMORY_AT + 4;
pub const KDF_PARALLELISM_AT: usize = KDF_ITERATIONS_AT + 4;
pub const KDF_SALT_AT: usize = KDF_PARALLELISM_AT + 4;
pub const KEY_CHECK_AT: usize = KDF_SALT_AT + 16;
pub const WRAP_NONCE_AT: usize = KEY_CHECK_AT + 16;
pub const WRAPPED_KEY_AT: usize = WRAP_NONCE_AT + NONCE_LEN;
pub const WRAP_TAG_AT: usize = WRAPPED_KEY_AT + KEY_LEN;
/// Total length of the configuration file.
pub const CONFIG_LEN: usize = WRAP_TAG_AT + TAG_LEN;

/// How the key-encryption key is obtained from what the user supplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// A 32-byte key used directly.
    RawKey,
    /// A passphrase stretched with Argon2id.
    Passphrase(KdfParams),
}

impl KeySource {
    fn code(&self) -> u8 {
        match self {
            KeySource::RawKey => 1,
            KeySource::Passphrase(_) => 2,
        }
    }

    /// One line for `info`.
    pub fn describe(&self) -> String {
        match self {
            KeySource::RawKey => "raw key".into(),
            KeySource::Passphrase(p) => format!(
                "passphrase (Argon2id, memory {} KiB, iterations {}, parallelism {})",
                p.memory_kib, p.iterations, p.parallelism
            ),
        }
    }
}

/// The parsed configuration. The master key stays wrapped until `unwrap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeConfig {
    pub format_version: u16,
    pub algorithm: u16,
    pub block_size: u32,
    pub features: u64,
    pub volume_id: [u8; 16],
    pub key_source: KeySource,
    key_check: [u8; 16],
    wrap_nonce: [u8; NONCE_LEN],
    wrapped_key: [u8; KEY_LEN],
    wrap_tag: [u8; TAG_LEN],
}

impl VolumeConfig {
    /// A new configuration wrapping `master` under `user`.
    pub fn create(
        master: &SecretKey,
        user: &UserKey,
        kdf: Option<KdfParams>,
        features: impl Into<VolumeFeatures>,
    ) -> Result<Self> {
        let features = features.into();
        let key_source = match user {
            UserKey::Raw(_) => KeySource::RawKey,
            UserKey::Passphrase(_) => KeySource::Passphrase(match kdf {
                Some(params) => params,
                None => KdfParams::new_default()?,
            }),
        };
        let mut volume_id = [0u8; 16];
        crate::random::fill(&mut volume_id);
        let mut config = VolumeConfig {
            format_version: CONFIG_VERSION,
            algorithm: ALGORITHM_AES_256_GCM,
            block_size: BLOCK_SIZE as u32,
            features: match features.names {
                NameMode::Encrypted => FEATURE_ENCRYPTED_NAMES,
                NameMode::Plaintext => 0,
            } | if features.xattrs { FEATURE_XATTRS } else { 0 },
            volume_id,
            key_source,
            key_check: [0; 16],
            wrap_nonce: [0; NONCE_LEN],
            wrapped_key: [0; KEY_LEN],
            wrap_tag: [0; TAG_LEN],
        };
        config.wrap(master, user)?;
        Ok(config)
    }

    /// Wraps `master` under `user` (a new key source, a new salt for a
    /// passphrase, a new nonce); every other field stays.
    pub fn rewrap(
        &self,
        master: &SecretKey,
        user: &UserKey,
        kdf: Option<KdfParams>,
    ) -> Result<Self> {
        let fresh = Self::create(master, user, kdf, self.name_mode())?;
        let mut config = VolumeConfig {
            key_source: fresh.key_source,
            ..self.clone()
        };
        config.wrap(master, user)?;
        Ok(config)
    }

    fn wrap(&mut self, master: &SecretKey, user: &UserKey) -> Result<()> {
        let kek = self.key_encryption_key(user)?;
        self.key_check = key_check(&kek, &self.volume_id);
        let wrap_key = wrap_key(&kek, &self.volume_id);
        let aead = Backend::RustCrypto.new_key(wrap_key.as_bytes());
        // The wrap's three fields are one framed value (nonce ‖ ciphertext
        // ‖ tag), sealed by the volume's one sealing routine.
        let mut framed =
            zeroize::Zeroizing::new(Vec::with_capacity(WRAP_TAG_AT + TAG_LEN - WRAP_NONCE_AT));
        cipher::seal_framed(
            &*aead,
            &self.authenticated_prefix(),
            master.as_bytes(),
            &mut framed,
        );
        self.wrap_nonce = array(&framed[..NONCE_LEN]);
        self.wrapped_key = array(&framed[NONCE_LEN..NONCE_LEN + KEY_LEN]);
        self.wrap_tag = array(&framed[NONCE_LEN + KEY_LEN..]);
        Ok(())
    }

    /// Whether the volume stores `user.*` extended attributes.
    pub fn xattrs(&self) -> bool {
        self.features & FEATURE_XATTRS != 0
    }

    /// The choices the volume was made with.
    pub fn features(&self) -> VolumeFeatures {
        VolumeFeatures {
            names: self.name_mode(),
            xattrs: self.xattrs(),
        }
    }

    /// How the volume stores names.
    pub fn name_mode(&self) -> NameMode {
        if self.features & FEATURE_ENCRYPTED_NAMES != 0 {
            NameMode::Encrypted
        } else {
            NameMode::Plaintext
        }
    }

    /// Recovers the master key. A key that fails the key check is
    /// `KeyMismatch`; a key that passes it but does not open the wrap means
    /// the file was edited: `ConfigTampered`.
    pub fn unwrap(&self, user: &UserKey, path: &Path) -> Result<SecretKey> {
        let kek = self.key_encryption_key(user)?;
        if !crate::keys::constant_time_eq(&key_check(&kek, &self.volume_id), &self.key_check) {
            return Err(VolumeError::KeyMismatch);
        }
        let wrap_key = wrap_key(&kek, &self.volume_id);
        let aead = Backend::RustCrypto.new_key(wrap_key.as_bytes());
        let mut framed =
            zeroize::Zeroizing::new(Vec::with_capacity(WRAP_TAG_AT + TAG_LEN - WRAP_NONCE_AT));
        framed.extend_from_slice(&self.wrap_nonce);
        framed.extend_from_slice(&self.wrapped_key);
        framed.extend_from_slice(&self.wrap_tag);
        let master = cipher::open_framed(&*aead, &self.authenticated_prefix(), &mut framed)
            .map_err(|_| VolumeError::ConfigTampered {
                path: path.to_path_buf(),
            })?;
        Ok(SecretKey::from_bytes(array(master)))
    }

    fn key_encryption_key(&self, user: &UserKey) -> Result<SecretKey> {
        match (user, &self.key_source) {
            (UserKey::Raw(key), KeySource::RawKey) => Ok(key.clone()),
            (UserKey::Passphrase(pass), KeySource::Passphrase(params)) => params.stretch(pass),
            // A raw key for a passphrase volume (or the reverse) cannot open it.
            _ => Err(VolumeError::KeyMismatch),
        }
    }

    /// Every byte before the wrap nonce: the associated data of the wrap.
    fn authenticated_prefix(&self) -> [u8; WRAP_NONCE_AT] {
        let bytes = self.encode();
        let mut prefix = [0u8; WRAP_NONCE_AT];
        prefix.copy_from_slice(&bytes[..WRAP_NONCE_AT]);
        prefix
    }

    pub fn encode(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        let (code, kdf) = match &self.key_source {
            KeySource::RawKey => (1, None),
            KeySource::Passphrase(p) => (2, Some(p)),
        };
        debug_assert_eq!(code, self.key_source.code());
        b[MAGIC_AT..VERSION_AT].copy_from_slice(&CONFIG_MAGIC);
        b[VERSION_AT..ALGORITHM_AT].copy_from_slice(&self.format_version.to_le_bytes());
        b[ALGORITHM_AT..BLOCK_SIZE_AT].copy_from_slice(&self.algorithm.to_le_bytes());
        b[BLOCK_SIZE_AT..FEATURES_AT].copy_from_slice(&self.block_size.to_le_bytes());
        b[FEATURES_AT..VOLUME_ID_AT].copy_from_slice(&self.features.to_le_bytes());
        b[VOLUME_ID_AT..KEY_SOURCE_AT].copy_from_slice(&self.volume_id);
        b[KEY_SOURCE_AT] = code;
        if let Some(p) = kdf {
            b[KDF_MEMORY_AT..KDF_ITERATIONS_AT].copy_from_slice(&p.memory_kib.to_le_bytes());
            b[KDF_ITERATIONS_AT..KDF_PARALLELISM_AT].copy_from_slice(&p.iterations.to_le_bytes());
            b[KDF_PARALLELISM_AT..KDF_SALT_AT].copy_from_slice(&p.parallelism.to_le_bytes());
            b[KDF_SALT_AT..KEY_CHECK_AT].copy_from_slice(&p.salt);
        }
        b[KEY_CHECK_AT..WRAP_NONCE_AT].copy_from_slice(&self.key_check);
        b[WRAP_NONCE_AT..WRAPPED_KEY_AT].copy_from_slice(&self.wrap_nonce);
        b[WRAPPED_KEY_AT..WRAP_TAG_AT].copy_from_slice(&self.wrapped_key);
        b[WRAP_TAG_AT..CONFIG_LEN].copy_from_slice(&self.wrap_tag);
        b
    }

    /// Parses and checks the structure (not the authenticity, which needs the key).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| VolumeError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() < MAGIC_AT + CONFIG_MAGIC.len()
            || bytes[MAGIC_AT..VERSION_AT] != CONFIG_MAGIC
        {
            return Err(bad(
                "not a chronicle volume configuration (bad magic)".into()
            ));
        }
        if bytes.len() < ALGORITHM_AT {
            return Err(bad(format!("truncated to {} bytes", bytes.len())));
        }
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let format_version = u16_at(VERSION_AT);
        if format_version != CONFIG_VERSION {
            return Err(VolumeError::UnsupportedVersion {
                what: "volume configuration",
                found: format_version.into(),
                supported: CONFIG_VERSION.into(),
            });
        }
        if bytes.len() != CONFIG_LEN {
            return Err(bad(format!(
                "expected {CONFIG_LEN} bytes, found {} (truncated or garbled)",
                bytes.len()
            )));
        }
        let u32_at = |at: usize| u32::from_le_bytes(array(&bytes[at..at + 4]));
        let algorithm = u16_at(ALGORITHM_AT);
        if algorithm != ALGORITHM_AES_256_GCM {
            return Err(bad(format!("unknown algorithm {algorithm}")));
        }
        let block_size = u32_at(BLOCK_SIZE_AT);
        if u64::from(block_size) != BLOCK_SIZE {
            return Err(bad(format!("unsupported block size {block_size}")));
        }
        let features = u64::from_le_bytes(array(&bytes[FEATURES_AT..VOLUME_ID_AT]));
        if features & !KNOWN_FEATURES != 0 {
            return Err(VolumeError::UnsupportedFeatures {
                path: path.to_path_buf(),
                flags: features & !KNOWN_FEATURES,
            });
        }
        let key_source = match bytes[KEY_SOURCE_AT] {
            1 => KeySource::RawKey,
            2 => {
                let params = KdfParams {
                    memory_kib: u32_at(KDF_MEMORY_AT),
                    iterations: u32_at(KDF_ITERATIONS_AT),
                    parallelism: u32_at(KDF_PARALLELISM_AT),
                    salt: array(&bytes[KDF_SALT_AT..KEY_CHECK_AT]),
                };
                if let Some(reason) = params.out_of_bounds() {
                    return Err(bad(reason));
                }
                KeySource::Passphrase(params)
            }
            other => return Err(bad(format!("unknown key source {other}"))),
        };
        let config = VolumeConfig {
            format_version,
            algorithm,
            block_size,
            features,
            volume_id: array(&bytes[VOLUME_ID_AT..KEY_SOURCE_AT]),
            key_source,
            key_check: array(&bytes[KEY_CHECK_AT..WRAP_NONCE_AT]),
            wrap_nonce: array(&bytes[WRAP_NONCE_AT..WRAPPED_KEY_AT]),
            wrapped_key: array(&bytes[WRAPPED_KEY_AT..WRAP_TAG_AT]),
            wrap_tag: array(&bytes[WRAP_TAG_AT..CONFIG_LEN]),
        };
        // The wrap authenticates the re-encoded fields; bytes that parsing
        // ignores (reserved bytes, KDF fields of a raw-key volume) must be
        // exactly what encoding writes, or an edit there would go unnoticed.
        if config.encode()[..] != *bytes {
            return Err(VolumeError::ConfigTampered {
                path: path.to_path_buf(),
            });
        }
        Ok(config)
    }

    /// Reads `BACKING/chronicle.volume`.
    pub fn load(backing: &Path) -> Result<Self> {
        match find_backing_dir(backing) {
            Ok(dir) => Self::load_in(dir.as_fd(), backing),
            Err(rustix::io::Errno::NOENT) => Err(VolumeError::NotAVolume {
                path: backing.to_path_buf(),
            }),
            Err(e) => Err(VolumeError::io(
                format!("opening {}", backing.display()),
                e.into(),
            )),
        }
    }

    /// Reads the configuration of the backing directory open as `dir`
    /// (`backing` names it in messages): never through a planted symlink,
    /// never blocking on a FIFO, never more than a configuration's size.
    pub fn load_in(dir: BorrowedFd<'_>, backing: &Path) -> Result<Self> {
        let path = config_path(backing);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let file = match rustix::fs::openat(dir, CONFIG_NAME, flags, Mode::empty()) {
            Ok(file) => File::from(file),
            Err(rustix::io::Errno::NOENT) => {
                return Err(VolumeError::NotAVolume {
                    path: backing.to_path_buf(),
                })
            }
            Err(e) => {
                return Err(VolumeError::io(
                    format!("opening {}", path.display()),
                    e.into(),
                ))
            }
        };
        let regular = file.metadata().map(|m| m.is_file());
        if !regular.context(|| format!("examining {}", path.display()))? {
            return Err(VolumeError::io(
                path.display().to_string(),
                std::io::Error::other("not a regular file"),
            ));
        }
        let mut bytes = Vec::with_capacity(CONFIG_LEN);
        file.take(CONFIG_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .context(|| format!("reading {}", path.display()))?;
        Self::decode(&bytes, &path)
    }

    /// Writes the configuration atomically into `BACKING`.
    pub fn store(&self, backing: &Path) -> Result<()> {
        self.store_in(open_backing_dir(backing)?.as_fd(), backing)
    }

    /// Writes the configuration atomically into the backing directory open
    /// as `dir`: a temporary file of its own name, fsync, rename over the
    /// old one, fsync of the directory. Mode 0400. Through the descriptor,
    /// so that it lands in the directory it was meant for even if another
    /// took its name.
    pub fn store_in(&self, dir: BorrowedFd<'_>, backing: &Path) -> Result<()> {
        let suffix: [u8; 8] = crate::random::bytes();
        let tmp_name = format!(
            "{CONFIG_NAME}.tmp.{}",
            suffix
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let tmp = backing.join(&tmp_name);
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let file = rustix::fs::openat(dir, &tmp_name, flags, Mode::from_raw_mode(0o400))
            .map(File::from)
            .map_err(|e| VolumeError::io(format!("creating {}", tmp.display()), e.into()))?;
        // Root re-keying a user's volume: still the user's to open.
        let placed = crate::lock::give_to_owner(&file, dir, &tmp)
            .and_then(|()| write_whole(file, &self.encode(), &tmp))
            .and_then(|()| {
                rustix::fs::renameat(dir, &tmp_name, dir, CONFIG_NAME).map_err(|e| {
                    VolumeError::io(format!("renaming {} into place", tmp.display()), e.into())
                })
            });
        if placed.is_err() {
            let _ = rustix::fs::unlinkat(dir, &tmp_name, AtFlags::empty());
        }
        placed?;
        rustix::fs::fsync(dir).map_err(|e| {
            VolumeError::io(
                format!(
                    "syncing directory {} (the new configuration is in place, maybe not durably)",
                    backing.display()
                ),
                e.into(),
            )
        })
    }
}

/// Writes `bytes` into the new file `file`, mode 0400, durably.
fn write_whole(mut file: File, bytes: &[u8], path: &Path) -> Result<()> {
    // The mode asked of `openat` is cut by the umask; set it whole, before
    // the sync that makes it durable with the bytes.
    rustix::fs::fchmod(&file, Mode::from_raw_mode(0o400)).map_err(|e| {
        VolumeError::io(format!("setting the mode of {}", path.display()), e.into())
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .context(|| format!("writing {}", path.display()))
}

/// The backing directory, found (`O_PATH`: searching it is all that is
/// needed) for what opens its own files through it.
pub fn find_backing_dir(backing: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        backing,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The backing directory, open for `load_in`, `store_in` and `KeyLock`.
pub fn open_backing_dir(backing: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        backing,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| VolumeError::io(format!("opening {}", backing.display()), e.into()))
}

/// Removes what earlier stores of the configuration left when they were
/// cut short (`chronicle.volume.tmp*`): one may hold the master key
/// wrapped under a key its user thinks was never set. Only under
/// `lock::KeyLock`, which every store into an existing volume holds.
pub fn remove_stale_stores(dir: BorrowedFd<'_>, backing: &Path) -> Result<()> {
    let prefix = format!("{CONFIG_NAME}.tmp");
    let io =
        |e: rustix::io::Errno| VolumeError::io(format!("listing {}", backing.display()), e.into());
    let listing = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)?;
    let mut stale = Vec::new();
    for entry in rustix::fs::Dir::read_from(&listing).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_bytes();
        // Only files: anything else there is not a store's, and an entry
        // that cannot be removed must not stop every later key change.
        if !name.starts_with(prefix.as_bytes()) {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_or(FileType::Unknown, |st| FileType::from_raw_mode(st.st_mode)),
            kind => kind,
        };
        if kind == FileType::RegularFile {
            stale.push(name.to_vec());
        }
    }
    for name in stale {
        let shown = backing.join(String::from_utf8_lossy(&name).as_ref());
        match rustix::fs::unlinkat(dir, name.as_slice(), AtFlags::empty()) {
            Ok(()) => log::info!(
                "removed {}, left by a key change cut short",
                shown.display()
            ),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => log::warn!(
                "cannot remove {}, left by a key change cut short: {e}",
                shown.display()
            ),
        }
    }
    Ok(())
}

pub fn config_path(backing: &Path) -> PathBuf {
    backing.join(CONFIG_NAME)
}

/// Salted with the volume id: the same key gives a different check in every
/// volume, so checks cannot be compared across volumes or precomputed.
fn key_check(kek: &SecretKey, volume_id: &[u8; 16]) -> [u8; 16] {
    let derived = kek.derive_salted(volume_id, &[b"chronicle key check v2"]);
    array(&derived.as_bytes()[..16])
}

fn wrap_key(kek: &SecretKey, volume_id: &[u8; 16]) -> SecretKey {
    kek.derive_salted(volume_id, &[b"chronicle master key wrap v2"])
}

/// Copies a slice whose length the caller derived from the layout constants.
fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(byte: u8) -> UserKey {
        UserKey::Raw(SecretKey::from_bytes([byte; 32]))
    }

    // Protects: the byte layout drawn in docs/FORMAT.md.
    #[test]
    fn layout_matches_format_doc() {
        assert_eq!(
            [
                VERSION_AT,
                ALGORITHM_AT,
                BLOCK_SIZE_AT,
                FEATURES_AT,
                VOLUME_ID_AT,
                KEY_SOURCE_AT
            ],
            [8, 10, 12, 16, 24, 40]
        );
        assert_eq!(
            [
                KDF_MEMORY_AT,
                KDF_SALT_AT,
                KEY_CHECK_AT,
                WRAP_NONCE_AT,
                WRAPPED_KEY_AT,
                WRAP_TAG_AT
            ],
            [44, 56, 72, 88, 100, 132]
        );
        assert_eq!(CONFIG_LEN, 148);
    }

    // Protects: the right key unwraps, a wrong one is KeyMismatch.
    #[test]
    fn wrap_unwrap_and_mismatch() {
        let master = SecretKey::from_bytes([9; 32]);
        let config =
            VolumeConfig::create(&master, &raw(1), None, NameMode::Encrypted).expect("create");
        let back = VolumeConfig::decode(&config.encode(), Path::new("c")).expect("decode");
        assert_eq!(back, config);
        let unwrapped = back.unwrap(&raw(1), Path::new("c")).expect("unwrap");
        assert_eq!(unwrapped.as_bytes(), master.as_bytes());
        assert!(matches!(
            back.unwrap(&raw(2), Path::new("c")),
            Err(VolumeError::KeyMismatch)
        ));
    }

    // Protects: editing any authenticated byte is refused (as tampering or a
    // mismatch, never accepted), while the right key still fails closed.
    #[test]
    fn every_edited_byte_is_refused() {
        let master = SecretKey::from_bytes([9; 32]);
        let config =
            VolumeConfig::create(&master, &raw(1), None, NameMode::Encrypted).expect("create");
        let bytes = config.encode();
        for i in 0..CONFIG_LEN {
            let mut edited = bytes;
            edited[i] ^= 0x01;
            let outcome = VolumeConfig::decode(&edited, Path::new("c"))
                .and_then(|c| c.unwrap(&raw(1), Path::new("c")));
            assert!(outcome.is_err(), "flipping byte {i} was accepted");
        }
        // A flipped volume id changes the salted key check: it reads as a
        // key that does not open the volume (docs/FORMAT.md says so).
        let mut edited = bytes;
        edited[VOLUME_ID_AT] ^= 1;
        let result = VolumeConfig::decode(&edited, Path::new("c"))
            .and_then(|c| c.unwrap(&raw(1), Path::new("c")));
        assert!(matches!(result, Err(VolumeError::KeyMismatch)));
        // A flipped algorithm field passes the key check but fails the wrap.
        let mut edited = bytes;
        edited[WRAP_NONCE_AT] ^= 1;
        let result = VolumeConfig::decode(&edited, Path::new("c"))
            .and_then(|c| c.unwrap(&raw(1), Path::new("c")));
        assert!(matches!(result, Err(VolumeError::ConfigTampered { .. })));
    }

    // Protects: the key check is salted with the volume id: one key gives a
    // different check in every volume.
    #[test]
    fn key_check_differs_across_volumes() {
        let master = SecretKey::from_bytes([9; 32]);
        let a = VolumeConfig::create(&master, &raw(1), None, NameMode::Encrypted).expect("create");
        let b = VolumeConfig::create(&master, &raw(1), None, NameMode::Encrypted).expect("create");
        assert_ne!(
            a.encode()[KEY_CHECK_AT..WRAP_NONCE_AT],
            b.encode()[KEY_CHECK_AT..WRAP_NONCE_AT]
        );
    }

    // Protects: Argon2id parameters read from a damaged configuration are
    // bounded before anything is stretched (a huge memory cost must not be
    // attempted).
    #[test]
    fn absurd_kdf_parameters_refused() {
        let params = KdfParams::with_cost(8, 1).expect("params");
        let config = VolumeConfig::create(
            &SecretKey::from_bytes([9; 32]),
            &UserKey::Passphrase(zeroize::Zeroizing::new("pw".into())),
            Some(params),
            NameMode::Plaintext,
        )
        .expect("create");
        for (at, value) in [
            (KDF_MEMORY_AT, u32::MAX),
            (KDF_ITERATIONS_AT, 0),
            (KDF_ITERATIONS_AT, 1_000_000),
            (KDF_PARALLELISM_AT, 0),
            (KDF_PARALLELISM_AT, 1000),
        ] {
            let mut bytes = config.encode();
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            assert!(
                matches!(
                    VolumeConfig::decode(&bytes, Path::new("c")),
                    Err(VolumeError::BadConfig { .. })
                ),
                "field at {at} = {value}"
            );
        }
    }

    // Protects: unknown versions and feature flags are refused, not guessed at.
    #[test]
    fn unknown_version_and_features_refused() {
        let config = VolumeConfig::create(
            &SecretKey::from_bytes([9; 32]),
            &raw(1),
            None,
            NameMode::Encrypted,
        )
        .expect("create");
        let mut bytes = config.encode();
        bytes[VERSION_AT] = 5;
        assert!(matches!(
            VolumeConfig::decode(&bytes, Path::new("c")),
            Err(VolumeError::UnsupportedVersion { found: 5, .. })
        ));
        // Version 3 volumes had a journal of copies only, in a record
        // layout this build misreads (no commits, 44-byte headers).
        bytes[VERSION_AT] = 3;
        let older = VolumeConfig::decode(&bytes, Path::new("c"));
        assert!(matches!(
            older,
            Err(VolumeError::UnsupportedVersion { found: 3, .. })
        ));
        let message = older.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("older chronicle"), "{message}");
        let mut bytes = config.encode();
        bytes[FEATURES_AT] = 0x10;
        assert!(matches!(
            VolumeConfig::decode(&bytes, Path::new("c")),
            Err(VolumeError::UnsupportedFeatures { flags: 0x10, .. })
        ));
        assert_eq!(config.name_mode(), NameMode::Encrypted);
        assert!(!config.xattrs(), "no extended attributes unless asked");
        let with = VolumeConfig::create(
            &SecretKey::from_bytes([9; 32]),
            &raw(1),
            None,
            VolumeFeatures {
                names: NameMode::Plaintext,
                xattrs: true,
            },
        )
        .expect("create");
        let back = VolumeConfig::decode(&with.encode(), Path::new("c")).expect("decode");
        assert!(back.xattrs());
        assert_eq!(back.name_mode(), NameMode::Plaintext);
        assert!(matches!(
            VolumeConfig::decode(&bytes[..100], Path::new("c")),
            Err(VolumeError::BadConfig { .. }) | Err(VolumeError::UnsupportedFeatures { .. })
        ));
        assert!(matches!(
            VolumeConfig::decode(b"garbage", Path::new("c")),
            Err(VolumeError::BadConfig { .. })
        ));
    }

    // Protects: passphrase volumes store their KDF parameters and open only
    // with the same passphrase.
    #[test]
    fn passphrase_wrap() {
        let master = SecretKey::from_bytes([4; 32]);
        let pass = |s: &str| UserKey::Passphrase(zeroize::Zeroizing::new(s.to_string()));
        let kdf = KdfParams::with_cost(256, 1).expect("kdf");
        let config = VolumeConfig::create(
            &master,
            &pass("correct horse"),
            Some(kdf),
            NameMode::Encrypted,
        )
        .expect("create");
        let back = VolumeConfig::decode(&config.encode(), Path::new("c")).expect("decode");
        assert!(matches!(back.key_source, KeySource::Passphrase(p) if p == kdf));
        let got = back
            .unwrap(&pass("correct horse"), Path::new("c"))
            .expect("unwrap");
        assert_eq!(got.as_bytes(), master.as_bytes());
        assert!(matches!(
            back.unwrap(&pass("wrong"), Path::new("c")),
            Err(VolumeError::KeyMismatch)
        ));
        assert!(matches!(
            back.unwrap(&raw(4), Path::new("c")),
            Err(VolumeError::KeyMismatch)
        ));
    }
}
