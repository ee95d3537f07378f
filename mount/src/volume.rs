//! A volume: a backing directory with its configuration and, once opened
//! with the right key, the content crypto that reads and writes its files.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::OFlags;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cipher::{self, Backend};
use crate::config::{
    config_path, open_backing_dir, remove_stale_stores, VolumeConfig, VolumeFeatures,
};
use crate::content::{ContentCrypto, EncryptedFile};
use crate::error::{IoContext, Result, VolumeError};
use crate::keys::{KdfParams, SecretKey, UserKey};
use crate::lock::KeyLock;
use crate::names::{NameError, Names};

/// An opened volume.
pub struct Volume {
    backing: PathBuf,
    /// BACKING's device and inode when the volume was opened.
    root: (u64, u64),
    config: VolumeConfig,
    crypto: Arc<ContentCrypto>,
    names: Arc<Names>,
}

impl Volume {
    /// Creates a volume in `backing` (created if missing): a fresh random
    /// master key wrapped under `user`. Refuses a directory that already has
    /// a configuration.
    pub fn init(
        backing: &Path,
        user: &UserKey,
        kdf: Option<KdfParams>,
        features: impl Into<VolumeFeatures>,
    ) -> Result<Volume> {
        let root = make_backing_dir(backing)?;
        let nofollow = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
        match rustix::fs::statat(&root, crate::config::CONFIG_NAME, nofollow) {
            Err(rustix::io::Errno::NOENT) => {}
            Ok(_) => {
                return Err(VolumeError::AlreadyInitialized {
                    path: backing.to_path_buf(),
                })
            }
            Err(e) => {
                let path = config_path(backing);
                return Err(VolumeError::io(
                    format!("examining {}", path.display()),
                    e.into(),
                ));
            }
        }
        // Files already there would be read as ciphertext they are not.
        let listing = |e: rustix::io::Errno| {
            VolumeError::io(format!("listing {}", backing.display()), e.into())
        };
        for entry in rustix::fs::Dir::read_from(&root).map_err(listing)? {
            if ![&b"."[..], b".."].contains(&entry.map_err(listing)?.file_name().to_bytes()) {
                return Err(VolumeError::NotEmpty {
                    path: backing.to_path_buf(),
                });
            }
        }
        let master = SecretKey::random()?;
        let config = VolumeConfig::create(&master, user, kdf, features)?;
        config.store_in(root.as_fd(), backing)?;
        let volume = Self::assemble(backing, root.as_fd(), config, master)?;
        // The root's id record (encrypted names). A crash before it leaves
        // an empty root, which gets one when it is first read. Made by root
        // in a user's directory, it is hers, as the configuration is.
        volume
            .names
            .init_dir(root.as_fd(), crate::names::GiveTo::DirOwner)
            .map_err(|e| name_error(e, backing))?;
        Ok(volume)
    }

    /// Opens an existing volume. A key that does not open it is `KeyMismatch`.
    pub fn open(backing: &Path, user: &UserKey) -> Result<Volume> {
        let root = match open_backing_dir(backing) {
            Err(VolumeError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(VolumeError::NotAVolume {
                    path: backing.to_path_buf(),
                })
            }
            other => other?,
        };
        let config = VolumeConfig::load_in(root.as_fd(), backing)?;
        let master = config.unwrap(user, &config_path(backing))?;
        Self::assemble(backing, root.as_fd(), config, master)
    }

    fn assemble(
        backing: &Path,
        root: BorrowedFd<'_>,
        config: VolumeConfig,
        master: SecretKey,
    ) -> Result<Volume> {
        let root = rustix::fs::fstat(root)
            .map_err(|e| VolumeError::io(format!("examining {}", backing.display()), e.into()))?;
        let crypto = Arc::new(ContentCrypto::new(master, cipher::fastest()));
        let names = Arc::new(Names::new(config.name_mode(), &crypto));
        Ok(Volume {
            backing: backing.to_path_buf(),
            root: (root.st_dev, root.st_ino),
            config,
            crypto,
            names,
        })
    }

    /// BACKING's device and inode when this volume was made or opened.
    pub fn root_id(&self) -> (u64, u64) {
        self.root
    }

    /// BACKING, open, if it is still the directory this volume was opened
    /// in: a command that works on it for long (a copy) must not follow
    /// its name somewhere else if someone renames things meanwhile.
    pub fn open_root(&self) -> Result<OwnedFd> {
        let root = open_backing_dir(&self.backing)?;
        let found = rustix::fs::fstat(&root).map_err(|e| {
            VolumeError::io(format!("examining {}", self.backing.display()), e.into())
        })?;
        if (found.st_dev, found.st_ino) != self.root {
            return Err(VolumeError::io(
                self.backing.display().to_string(),
                std::io::Error::other("replaced by another directory while this command ran"),
            ));
        }
        Ok(root)
    }

    /// How this volume's names are stored and translated.
    pub fn names(&self) -> &Arc<Names> {
        &self.names
    }

    /// The backing path (relative to BACKING) of the plaintext path
    /// `plain` (relative to the mount's root), one component at a time
    /// through each directory's key, never through a symlink.
    pub fn backing_path(&self, plain: &Path) -> Result<PathBuf> {
        let mut dir = open_backing_dir(&self.backing)?;
        let mut out = PathBuf::new();
        let parts: Vec<_> = plain.components().collect();
        for (i, part) in parts.iter().enumerate() {
            let name = part.as_os_str();
            let key = self
                .names
                .dir_key(dir.as_fd())
                .map_err(|e| name_error(e, &out))?;
            let entry = self
                .names
                .entry(&key, name, i == 0)
                .map_err(|e| name_error(e, &out))?;
            if i + 1 < parts.len() {
                dir = rustix::fs::openat(&dir, &entry, dir_flags(), rustix::fs::Mode::empty())
                    .map_err(|e| {
                        VolumeError::io(format!("opening {}", out.join(&entry).display()), e.into())
                    })?;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// The plaintext path of the backing path `backing` (relative to
    /// BACKING): the inverse of `backing_path`.
    pub fn plain_path(&self, backing: &Path) -> Result<PathBuf> {
        let mut dir = open_backing_dir(&self.backing)?;
        let mut out = PathBuf::new();
        let parts: Vec<_> = backing.components().collect();
        for (i, part) in parts.iter().enumerate() {
            let entry = part.as_os_str();
            let key = self
                .names
                .dir_key(dir.as_fd())
                .map_err(|e| name_error(e, &out))?;
            let name = match self.names.decode(dir.as_fd(), &key, entry, i == 0) {
                Some(decoded) => decoded.map_err(|e| name_error(e, Path::new(entry)))?,
                None => {
                    return Err(VolumeError::io(
                        format!(
                            "{} is one of the volume's own files",
                            entry.to_string_lossy()
                        ),
                        std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    ))
                }
            };
            if i + 1 < parts.len() {
                dir = rustix::fs::openat(&dir, entry, dir_flags(), rustix::fs::Mode::empty())
                    .map_err(|e| {
                        VolumeError::io(format!("opening {}", backing.display()), e.into())
                    })?;
            }
            out.push(name);
        }
        Ok(out)
    }

    /// Re-wraps the master key under a new user key. The file contents are
    /// untouched; the old key stops working once the new configuration is in
    /// place (atomically).
    pub fn rewrap(&mut self, new_key: &UserKey, kdf: Option<KdfParams>) -> Result<()> {
        self.rewrap_with(new_key, kdf, || {})
    }

    /// `rewrap`, calling `before_store` between the check and the store
    /// (tests race it there).
    fn rewrap_with(
        &mut self,
        new_key: &UserKey,
        kdf: Option<KdfParams>,
        before_store: impl FnOnce(),
    ) -> Result<()> {
        let config = self.config.rewrap(self.crypto.master(), new_key, kdf)?;
        // Deriving the new key takes seconds: another `rotate-key` may have
        // stored its configuration meanwhile, or a re-encryption swapped in
        // a volume with another master key; a re-encryption may still swap
        // at any moment (it checks under the same lock, but only where the
        // backing file system can lock files). So: the lock, then the
        // check, and the store into the directory checked, through its
        // descriptor, never over another volume's configuration (whose
        // master key it would lose). If that directory is no longer BACKING
        // afterwards, the change went to the volume swapped out.
        let dir = open_backing_dir(&self.backing)?;
        let _lock = KeyLock::acquire(dir.as_fd(), &self.backing)?;
        // A re-encryption cut short after its swap is finished with its own
        // new key: a key changed before then would keep it from finishing.
        let unfinished = crate::reencrypt::is_unfinished(dir.as_fd())
            .context(|| format!("examining {}", self.backing.display()))?;
        if unfinished {
            return Err(VolumeError::ReencryptionUnfinished {
                path: self.backing.clone(),
            });
        }
        let stored = match self.is_still(dir.as_fd())?
            && VolumeConfig::load_in(dir.as_fd(), &self.backing)? == self.config
        {
            true => {
                before_store();
                remove_stale_stores(dir.as_fd(), &self.backing)
                    .and_then(|()| config.store_in(dir.as_fd(), &self.backing))
            }
            false => Err(self.changed()),
        };
        // A re-encryption finishing meanwhile deletes the directory from
        // under the store: what failed then is that the volume changed.
        match (stored, self.is_still(dir.as_fd())) {
            (_, Ok(false)) => return Err(self.changed()),
            (Err(e), _) | (Ok(()), Err(e)) => return Err(e),
            (Ok(()), Ok(true)) => {}
        }
        self.config = config;
        Ok(())
    }

    /// Fails if the configuration in BACKING is no longer the one this
    /// volume was opened with: another command re-encrypted the volume
    /// (a new master key) or gave it a new key since. A command that takes
    /// the volume lock after opening checks this once it holds it.
    pub fn still_current(&self) -> Result<()> {
        match VolumeConfig::load(&self.backing)? == self.config {
            true => Ok(()),
            false => Err(self.changed()),
        }
    }

    fn changed(&self) -> VolumeError {
        VolumeError::Changed {
            path: self.backing.clone(),
        }
    }

    /// Whether BACKING still names the directory open as `dir`.
    fn is_still(&self, dir: BorrowedFd<'_>) -> Result<bool> {
        let io = |e: rustix::io::Errno| {
            VolumeError::io(format!("reading {}", self.backing.display()), e.into())
        };
        let named = rustix::fs::stat(&self.backing).map_err(io)?;
        let opened = rustix::fs::fstat(dir).map_err(io)?;
        Ok((named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino))
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

    /// Opens the file at plaintext path `relative` for plaintext access.
    pub fn open_file(&self, relative: &Path, writable: bool) -> Result<EncryptedFile> {
        let path = self.backing.join(self.backing_path(relative)?);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .context(|| format!("opening {}", path.display()))?;
        EncryptedFile::open(file, Arc::clone(&self.crypto), path)
    }
}

fn dir_flags() -> rustix::fs::OFlags {
    use rustix::fs::OFlags;
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A directory the operator named on the command line, with the symlinks
/// in its path resolved once, before anything else (the key prompt
/// included). As root, the last component is left as named: a user who can
/// write its parent could swap it for a symlink between any check and any
/// use, so it is never followed (`init` and re-encryption open it with
/// `O_NOFOLLOW` and say so if it is a symlink).
pub fn resolve_named_dir(dir: &Path) -> Result<PathBuf> {
    let finding = |e: std::io::Error| VolumeError::io(format!("finding {}", dir.display()), e);
    if !rustix::process::geteuid().is_root() {
        match dir.canonicalize() {
            Ok(resolved) => return Ok(resolved),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(finding(e)),
        }
    }
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return dir.canonicalize().map_err(finding);
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    match parent.canonicalize() {
        Ok(resolved) => Ok(resolved.join(name)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir.to_path_buf()),
        Err(e) => Err(finding(e)),
    }
}

/// BACKING for `init`: created (mode 0700: only the owner may list it,
/// names and sizes are visible there) unless it exists, and opened through
/// its parent without following a symlink. Whoever can write the parent
/// (a user, when root makes a volume in the user's directory) could put a
/// symlink there at any moment; a symlinked BACKING is refused, so give
/// the directory it points to.
fn make_backing_dir(backing: &Path) -> Result<OwnedFd> {
    let shown = || backing.display().to_string();
    // `.` or `..`: named by its parent.
    let canonical;
    let backing = match backing.file_name() {
        Some(_) => backing,
        None => {
            canonical = backing
                .canonicalize()
                .context(|| format!("finding {}", shown()))?;
            canonical.as_path()
        }
    };
    let (parent, name) = match (backing.parent(), backing.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => {
            return Err(VolumeError::io(
                shown(),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ))
        }
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .context(|| format!("creating {}", parent.display()))?;
    }
    // O_PATH: searching the parent is all that is needed.
    let parent = rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| VolumeError::io(format!("opening {}", parent.display()), e.into()))?;
    let made = match rustix::fs::mkdirat(&parent, name, rustix::fs::Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(VolumeError::io(format!("creating {}", shown()), e.into())),
    };
    let dir = crate::remove::open_existing_dir_at(parent.as_fd(), name, backing)?;
    // As root: the directory just made must be the one opened (whoever can
    // write the parent could rename it away and put one of theirs there).
    if made && rustix::process::geteuid().is_root() {
        let stat = rustix::fs::fstat(&dir)
            .map_err(|e| VolumeError::io(format!("examining {}", shown()), e.into()))?;
        if !crate::lock::is_roots_alone(&stat) {
            return Err(VolumeError::io(
                shown(),
                std::io::Error::other("replaced by another user's directory as it was made"),
            ));
        }
    }
    Ok(dir)
}

/// A name that cannot be translated, as the volume's error.
pub fn name_error(e: NameError, at: &Path) -> VolumeError {
    match e {
        NameError::Io(e) => VolumeError::io(format!("reading names in {}", at.display()), e),
        NameError::Reserved => VolumeError::io(
            format!(
                "{}: the name is reserved for the volume's own files",
                at.display()
            ),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        ),
        NameError::TooLong => VolumeError::io(
            format!(
                "{}: symlink target too long to store encrypted",
                at.display()
            ),
            std::io::Error::from_raw_os_error(libc::ENAMETOOLONG),
        ),
        NameError::Forged(what) => VolumeError::BadName {
            dir: at.to_path_buf(),
            what: format!("{what:?}"),
        },
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
    let mode = VolumeConfig::load(backing)
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .name_mode();
    crate::tree::walk(backing, Root::Volume(mode), &mut count)?;
    Ok(count.0)
}

/// What the tests of the modules that make volumes share.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::keys::SecretKey;
    use crate::names::NameMode;

    /// A raw user key of 32 `byte`s.
    pub fn key(byte: u8) -> UserKey {
        UserKey::Raw(SecretKey::from_bytes([byte; 32]))
    }

    /// A new volume with encrypted names in `backing`, under `key(byte)`.
    pub fn new_volume(backing: &Path, byte: u8) -> Volume {
        Volume::init(backing, &key(byte), None, NameMode::Encrypted).expect("init")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: a BACKING that does not exist is "not a chronicle volume",
    // as before opening went through one descriptor.
    #[test]
    fn a_missing_backing_is_not_a_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        let user = testing::key(1);
        let opened = Volume::open(&dir.path().join("missing"), &user);
        assert!(matches!(opened, Err(VolumeError::NotAVolume { .. })));
    }

    // Protects: a directory named through a symlink is resolved for a
    // user; as root the last component is never followed (a user who can
    // write its parent could swap it at any moment) and a symlink there
    // is refused when the volume is made; a path not made yet is taken as
    // given.
    #[test]
    fn a_named_directory_is_resolved_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let new = dir.path().join("new");
        let canonical = dir.path().canonicalize().expect("canonical");
        assert_eq!(
            resolve_named_dir(&new).expect("resolve"),
            canonical.join("new")
        );
        let resolved = resolve_named_dir(&link).expect("resolve");
        if rustix::process::geteuid().is_root() {
            assert_eq!(resolved, canonical.join("link"));
            let user = testing::key(1);
            assert!(Volume::init(&resolved, &user, None, NameMode::Encrypted).is_err());
            assert_eq!(std::fs::read_dir(&real).expect("list").count(), 0);
        } else {
            assert_eq!(resolved, real.canonicalize().expect("canonical"));
        }
    }

    use crate::names::NameMode;

    // Protects: a volume root makes in a user's empty directory is hers to
    // mount: its configuration and its root's id record are hers.
    #[test]
    fn a_volume_made_by_root_in_a_users_directory_is_hers() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("vol");
        std::fs::create_dir(&backing).expect("mkdir");
        std::os::unix::fs::chown(&backing, Some(65534), Some(65534)).expect("chown");
        testing::new_volume(&backing, 1);
        for name in [crate::config::CONFIG_NAME, crate::name_cipher::DIR_ID_NAME] {
            let stat = rustix::fs::lstat(backing.join(name)).expect("stat");
            assert_eq!((stat.st_uid, stat.st_gid), (65534, 65534), "{name}");
        }
    }

    // Protects: a command that opened a volume notices when another one
    // swapped in a volume with another master key (a re-encryption) before
    // it took the lock or stored a new configuration: it is refused, and a
    // re-wrap stores nothing over the swapped-in volume's configuration.
    #[test]
    fn a_volume_swapped_in_meanwhile_is_noticed() {
        let user = testing::key(1);
        let ours = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        testing::new_volume(ours.path(), 1);
        testing::new_volume(other.path(), 1);
        let mut opened = Volume::open(ours.path(), &user).expect("open");
        opened.still_current().expect("unchanged");

        let swapped_in = std::fs::read(config_path(other.path())).expect("read");
        std::fs::write(config_path(ours.path()), &swapped_in).expect("swap");
        assert!(matches!(
            opened.still_current(),
            Err(VolumeError::Changed { .. })
        ));
        let new_key = testing::key(9);
        assert!(matches!(
            opened.rewrap(&new_key, None),
            Err(VolumeError::Changed { .. })
        ));
        assert_eq!(
            std::fs::read(config_path(ours.path())).expect("read"),
            swapped_in,
            "the swapped-in configuration is left as it is"
        );
        Volume::open(ours.path(), &user).expect("the swapped-in volume opens with its key");
    }

    // Protects: a re-wrap whose volume is swapped out (a re-encryption's
    // exchange of directories) between its check of the configuration and
    // its store never stores over the swapped-in volume's configuration
    // (whose master key would be lost), and reports the swap.
    #[test]
    fn a_rewrap_raced_by_a_swap_touches_only_its_own_volume() {
        let user = testing::key(1);
        let parent = tempfile::tempdir().expect("tempdir");
        let backing = parent.path().join("volume");
        let other = parent.path().join("other");
        testing::new_volume(&backing, 1);
        testing::new_volume(&other, 1);
        let mut opened = Volume::open(&backing, &user).expect("open");
        let swapped_in = std::fs::read(config_path(&other)).expect("read");

        let new_key = testing::key(9);
        let raced = opened.rewrap_with(&new_key, None, || {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &backing,
                rustix::fs::CWD,
                &other,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .expect("swap");
        });

        assert!(
            matches!(raced, Err(VolumeError::Changed { .. })),
            "{raced:?}"
        );
        assert_eq!(
            std::fs::read(config_path(&backing)).expect("read"),
            swapped_in,
            "the swapped-in volume keeps its configuration"
        );
        Volume::open(&backing, &user).expect("the swapped-in volume opens with its key");
    }

    // Protects: two re-wraps of one volume at once: the second waits for
    // the first, then finds the configuration changed and stores nothing,
    // so the key the first one reported is the key that opens the volume.
    #[test]
    fn a_second_rewrap_waits_then_refuses() {
        let user = testing::key(1);
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().to_path_buf();
        testing::new_volume(&backing, 1);
        let mut first = Volume::open(&backing, &user).expect("open");
        let first_key = testing::key(2);
        let mut second_run = None;
        first
            .rewrap_with(&first_key, None, || {
                let mut second = Volume::open(&backing, &user).expect("open");
                let run = std::thread::spawn(move || second.rewrap(&testing::key(3), None));
                std::thread::sleep(std::time::Duration::from_millis(300));
                assert!(
                    !run.is_finished(),
                    "the second re-wrap went ahead of the lock"
                );
                second_run = Some(run);
            })
            .expect("the first re-wrap");
        let second = second_run.expect("ran").join().expect("join");
        assert!(
            matches!(second, Err(VolumeError::Changed { .. })),
            "{second:?}"
        );
        Volume::open(&backing, &first_key).expect("the first re-wrap's key opens it");
    }

    // Protects: a configuration store cut short (a crash between creating
    // its temporary file and renaming it) leaves a file that may hold the
    // master key under a key its user thinks was never set; the next key
    // change removes it.
    #[test]
    fn a_rewrap_removes_what_a_cut_short_store_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut volume = testing::new_volume(dir.path(), 1);
        let left = [
            "chronicle.volume.tmp",
            "chronicle.volume.tmp.0123456789abcdef",
        ];
        for name in left {
            std::fs::write(dir.path().join(name), b"cut short").expect("write");
        }
        // Not a store's: left alone, and no reason to refuse.
        let planted = dir.path().join("chronicle.volume.tmp.dir");
        std::fs::create_dir(&planted).expect("mkdir");
        volume.rewrap(&testing::key(2), None).expect("rewrap");
        for name in left {
            assert!(!dir.path().join(name).exists(), "{name} is left");
        }
        assert!(planted.is_dir());
        let lock = std::fs::metadata(dir.path().join(crate::lock::KEY_LOCK_NAME)).expect("lock");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            lock.permissions().mode() & 0o777,
            0o600,
            "only the owner may hold it"
        );
    }

    // Protects: a re-encryption interrupted after its swap finishes with
    // its own new key; a key change before then is refused instead of
    // leaving it unable to finish.
    #[test]
    fn a_rewrap_waits_for_an_unfinished_reencryption() {
        let user = testing::key(1);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut volume = testing::new_volume(dir.path(), 1);
        std::fs::write(dir.path().join(crate::reencrypt::MARK_NAME), b"").expect("mark");
        let refused = volume.rewrap(&testing::key(2), None);
        assert!(
            matches!(refused, Err(VolumeError::ReencryptionUnfinished { .. })),
            "{refused:?}"
        );
        Volume::open(dir.path(), &user).expect("the key is unchanged");
    }
}
