//! A volume: a backing directory with its configuration and, once opened
//! with the right key, the content crypto that reads and writes its files.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cipher::{self, Backend};
use crate::config::{config_path, VolumeConfig};
use crate::content::{ContentCrypto, EncryptedFile};
use crate::error::{IoContext, Result, VolumeError};
use crate::keys::{KdfParams, SecretKey, UserKey};

/// An opened volume.
pub struct Volume {
    backing: PathBuf,
    config: VolumeConfig,
    crypto: Arc<ContentCrypto>,
}

impl Volume {
    /// Creates a volume in `backing` (created if missing): a fresh random
    /// master key wrapped under `user`. Refuses a directory that already has
    /// a configuration.
    pub fn init(backing: &Path, user: &UserKey, kdf: Option<KdfParams>) -> Result<Volume> {
        // Only the owner may list it: names and sizes are visible there.
        if !backing.exists() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(backing)
                .context(|| format!("creating {}", backing.display()))?;
        }
        let path = config_path(backing);
        if path.exists() {
            return Err(VolumeError::AlreadyInitialized {
                path: backing.to_path_buf(),
            });
        }
        // Files already there would be read as ciphertext they are not.
        let mut entries =
            fs::read_dir(backing).context(|| format!("listing {}", backing.display()))?;
        if entries.next().is_some() {
            return Err(VolumeError::NotEmpty {
                path: backing.to_path_buf(),
            });
        }
        let master = SecretKey::random()?;
        let config = VolumeConfig::create(&master, user, kdf)?;
        config.store(backing)?;
        Ok(Self::assemble(backing, config, master))
    }

    /// Opens an existing volume. A key that does not open it is `KeyMismatch`.
    pub fn open(backing: &Path, user: &UserKey) -> Result<Volume> {
        let config = VolumeConfig::load(backing)?;
        let master = config.unwrap(user, &config_path(backing))?;
        Ok(Self::assemble(backing, config, master))
    }

    fn assemble(backing: &Path, config: VolumeConfig, master: SecretKey) -> Volume {
        Volume {
            backing: backing.to_path_buf(),
            config,
            crypto: Arc::new(ContentCrypto::new(master, cipher::fastest())),
        }
    }

    /// Re-wraps the master key under a new user key. The file contents are
    /// untouched; the old key stops working once the new configuration is in
    /// place (atomically).
    pub fn rewrap(&mut self, new_key: &UserKey, kdf: Option<KdfParams>) -> Result<()> {
        let config = self.config.rewrap(self.crypto.master(), new_key, kdf)?;
        config.store(&self.backing)?;
        self.config = config;
        Ok(())
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    pub fn config(&self) -> &VolumeConfig {
        &self.config
    }

    pub fn crypto(&self) -> &Arc<ContentCrypto> {
        &self.crypto
    }

    /// The AES-GCM implementation in use.
    pub fn backend(&self) -> Backend {
        self.crypto.backend()
    }

    /// Opens a backing file for plaintext access.
    pub fn open_file(&self, relative: &Path, writable: bool) -> Result<EncryptedFile> {
        let path = self.backing.join(relative);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        EncryptedFile::open(file, Arc::clone(&self.crypto), path)
    }

    /// Creates a new backing file (refusing an existing one) with its
    /// header, for plaintext access.
    pub fn create_file(&self, relative: &Path) -> Result<EncryptedFile> {
        let path = self.backing.join(relative);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .context(|| format!("creating {}", path.display()))?;
        EncryptedFile::create(file, Arc::clone(&self.crypto), path)
    }
}

/// What a backing directory holds, from sizes alone (no key needed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub files: u64,
    pub directories: u64,
    pub plaintext_bytes: u64,
    pub ciphertext_bytes: u64,
}

/// Counts the files and bytes of the volume in `backing`.
pub fn usage(backing: &Path) -> std::io::Result<Usage> {
    use crate::tree::{Root, Visit, Visitor};
    use rustix::fs::FileType;
    struct Count(Usage);
    impl Visitor for Count {
        fn entry(&mut self, visit: &Visit) -> std::io::Result<()> {
            match visit.kind() {
                FileType::Directory => self.0.directories += 1,
                FileType::RegularFile => {
                    let len = u64::try_from(visit.stat.st_size).unwrap_or(0);
                    self.0.files += 1;
                    self.0.ciphertext_bytes += len;
                    self.0.plaintext_bytes += crate::layout::plaintext_size_lossy(len);
                }
                _ => {}
            }
            Ok(())
        }
    }
    let mut count = Count(Usage::default());
    crate::tree::walk(backing, Root::Volume, &mut count)?;
    Ok(count.0)
}
