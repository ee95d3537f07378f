//! The one place where plaintext names become backing names and back.
//!
//! Every directory operation of the FUSE front end and every tree tool goes
//! through `Names`. A volume stores names either encrypted (the default:
//! `name_cipher`, each directory holding an id record that the names in it
//! are bound to) or as given (`init --plaintext-names`). The volume's own
//! files are hidden either way: `chronicle.volume*` in the root, and, with
//! encrypted names, the id records, long names' files and the temporary
//! directories of an unfinished `mkdir` in every directory (base64url
//! never produces a `.`, so no encrypted name can begin `chronicle.`).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::config::CONFIG_NAME;
use crate::content::ContentCrypto;
use crate::name_cipher::{
    BackingName, Forged, NameCipher, DIR_ID_LEN, DIR_ID_NAME, DIR_ID_RECORD_LEN, LONG_NAME_SUFFIX,
    LONG_PREFIX,
};

/// Prefix of a directory being made (encrypted names): it gets its id
/// record under this name and is then renamed into place.
pub const MKDIR_PREFIX: &str = "chronicle.mkdir.";

/// How a volume stores names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMode {
    Encrypted,
    Plaintext,
}

/// Why a name cannot be used.
#[derive(Debug)]
pub enum NameError {
    /// The name is reserved for the volume's own files.
    Reserved,
    /// A backing name, long name file or id record that does not
    /// authenticate.
    Forged(Forged),
    /// A name longer than 255 bytes, or a symlink target longer than a
    /// backing symlink can hold sealed.
    TooLong,
    Io(io::Error),
}

impl From<io::Error> for NameError {
    fn from(e: io::Error) -> Self {
        NameError::Io(e)
    }
}

impl From<rustix::io::Errno> for NameError {
    fn from(e: rustix::io::Errno) -> Self {
        NameError::Io(e.into())
    }
}

/// The longest symlink target a backing symlink holds (PATH_MAX less its NUL).
const SYMLINK_MAX: usize = 4095;

/// What names in one directory are bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirKey {
    Plain,
    Id([u8; DIR_ID_LEN]),
}

/// The name translation of one volume.
pub struct Names {
    cipher: Option<NameCipher>,
}

impl Names {
    pub fn new(mode: NameMode, crypto: &ContentCrypto) -> Names {
        Names {
            cipher: match mode {
                NameMode::Encrypted => Some(NameCipher::new(crypto)),
                NameMode::Plaintext => None,
            },
        }
    }

    pub fn mode(&self) -> NameMode {
        match self.cipher {
            Some(_) => NameMode::Encrypted,
            None => NameMode::Plaintext,
        }
    }

    /// Whether a backing entry is one of the volume's own (never shown).
    pub fn is_internal(&self, backing: &OsStr, in_root: bool) -> bool {
        is_internal(self.mode(), backing, in_root)
    }

    /// The key of the directory open as `dir` (any descriptor, `O_PATH`
    /// included). A directory without its record is damaged, unless it is
    /// empty: then a crash came between removing the record and the
    /// directory (`rmdir`), and it gets a new one.
    pub fn dir_key(&self, dir: BorrowedFd) -> Result<DirKey, NameError> {
        let Some(cipher) = &self.cipher else {
            return Ok(DirKey::Plain);
        };
        let record = match read_small(dir, OsStr::new(DIR_ID_NAME), DIR_ID_RECORD_LEN as u64 + 1) {
            Ok(bytes) => bytes,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && self.is_empty_dir(dir)? => {
                return self.init_dir(dir, GiveTo::DirOwner);
            }
            Err(e) => return Err(e.into()),
        };
        cipher
            .open_dir_id(&record)
            .map(DirKey::Id)
            .map_err(NameError::Forged)
    }

    /// Gives a new, empty directory its id record, durably; returns its key.
    /// Never replaces a record: if another thread or process gave the
    /// directory one meanwhile, that one is read and used.
    pub fn init_dir(&self, dir: BorrowedFd, owner: GiveTo) -> Result<DirKey, NameError> {
        let Some(cipher) = &self.cipher else {
            return Ok(DirKey::Plain);
        };
        let (id, record) = cipher.new_dir_id();
        match write_durably(dir, OsStr::new(DIR_ID_NAME), &record, owner) {
            Ok(()) => Ok(DirKey::Id(id)),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let winner =
                    read_small(dir, OsStr::new(DIR_ID_NAME), DIR_ID_RECORD_LEN as u64 + 1)?;
                cipher
                    .open_dir_id(&winner)
                    .map(DirKey::Id)
                    .map_err(NameError::Forged)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `record` is a directory id record of this volume.
    pub fn valid_record(&self, record: &[u8]) -> bool {
        self.cipher
            .as_ref()
            .is_some_and(|c| c.open_dir_id(record).is_ok())
    }

    fn is_empty_dir(&self, dir: BorrowedFd) -> Result<bool, NameError> {
        // `dir` may be an O_PATH descriptor, which cannot be listed.
        let readable = rustix::fs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut listing = rustix::fs::Dir::read_from(&readable)?;
        while let Some(entry) = listing.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." && !self.is_internal(OsStr::from_bytes(name), false) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The backing entry name of `name` in a directory with `key`.
    pub fn entry(&self, key: &DirKey, name: &OsStr, in_root: bool) -> Result<OsString, NameError> {
        match self.stored(key, name, in_root)? {
            BackingName::Short(entry) => Ok(entry),
            BackingName::Long { digest_name, .. } => Ok(digest_name),
        }
    }

    fn stored(&self, key: &DirKey, name: &OsStr, in_root: bool) -> Result<BackingName, NameError> {
        // The limit of every Linux file system, kept whatever the encoding
        // (a long encrypted name would otherwise take a longer one).
        if name.len() > crate::name_cipher::NAME_MAX {
            return Err(NameError::TooLong);
        }
        match (&self.cipher, key) {
            (Some(cipher), DirKey::Id(id)) => Ok(cipher.encrypt_name(id, name)),
            _ => {
                if in_root && name.as_bytes().starts_with(CONFIG_NAME.as_bytes()) {
                    return Err(NameError::Reserved);
                }
                Ok(BackingName::Short(name.to_os_string()))
            }
        }
    }

    /// Like `entry`, for an entry about to be made: a long name's file is
    /// written (durably) first, so that a crash never leaves an entry whose
    /// name cannot be read.
    pub fn create_entry(
        &self,
        dir: BorrowedFd,
        key: &DirKey,
        name: &OsStr,
        in_root: bool,
        owner: GiveTo,
    ) -> Result<OsString, NameError> {
        match self.stored(key, name, in_root)? {
            BackingName::Short(entry) => Ok(entry),
            BackingName::Long {
                digest_name,
                encoded,
            } => {
                let mut file = digest_name.clone();
                file.push(LONG_NAME_SUFFIX);
                match write_durably(dir, &file, &encoded, owner) {
                    // The name's file is there already (the entry exists,
                    // or a crash left it): the encoding is deterministic.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    other => other?,
                }
                Ok(digest_name)
            }
        }
    }

    /// After the entry `name` is gone from `dir`: removes a long name's file.
    pub fn remove_entry(&self, dir: BorrowedFd, key: &DirKey, name: &OsStr) {
        if let Ok(BackingName::Long {
            mut digest_name, ..
        }) = self.stored(key, name, false)
        {
            digest_name.push(LONG_NAME_SUFFIX);
            // A leftover file is hidden and harmless; nothing to report.
            let _ = rustix::fs::unlinkat(dir, &digest_name, AtFlags::empty());
        }
    }

    /// The plaintext name of the backing entry `backing` in `dir`: `None`
    /// for the volume's own files, an error for a name that does not
    /// authenticate.
    pub fn decode(
        &self,
        dir: BorrowedFd,
        key: &DirKey,
        backing: &OsStr,
        in_root: bool,
    ) -> Option<Result<OsString, NameError>> {
        if self.is_internal(backing, in_root) {
            return None;
        }
        let (Some(cipher), DirKey::Id(id)) = (&self.cipher, key) else {
            return Some(Ok(backing.to_os_string()));
        };
        if !backing.as_bytes().starts_with(LONG_PREFIX.as_bytes()) {
            return Some(cipher.decrypt_name(id, backing).map_err(NameError::Forged));
        }
        let mut file = backing.to_os_string();
        file.push(LONG_NAME_SUFFIX);
        let encoded = match read_small(dir, &file, 4096) {
            Ok(encoded) => encoded,
            Err(e) => return Some(Err(e.into())),
        };
        Some(
            cipher
                .decrypt_long_name(id, backing, &encoded)
                .map_err(NameError::Forged),
        )
    }

    /// What a symlink stores for `target`.
    pub fn seal_target(&self, target: &OsStr) -> Result<OsString, NameError> {
        let Some(cipher) = &self.cipher else {
            return Ok(target.to_os_string());
        };
        let stored = cipher.seal_target(target);
        if stored.len() > SYMLINK_MAX {
            return Err(NameError::TooLong);
        }
        Ok(stored)
    }

    /// The sealed form of `target` whatever its length (a file-form
    /// symlink holds it as its contents).
    pub fn seal_target_any(&self, target: &OsStr) -> OsString {
        match &self.cipher {
            Some(cipher) => cipher.seal_target(target),
            None => target.to_os_string(),
        }
    }

    /// The length of the target a symlink whose stored target is
    /// `stored_len` bytes stands for (`st_size` of a symlink).
    pub fn target_len(&self, stored_len: u64) -> u64 {
        match self.cipher {
            // Unpadded base64: 4 characters per 3 bytes.
            Some(_) => (stored_len.saturating_mul(3) / 4)
                .saturating_sub(crate::cipher::FRAME_OVERHEAD as u64),
            None => stored_len,
        }
    }

    /// The target a symlink's stored target stands for.
    pub fn open_target(&self, stored: &OsStr) -> Result<OsString, NameError> {
        match &self.cipher {
            Some(cipher) => cipher.open_target(stored).map_err(NameError::Forged),
            None => Ok(stored.to_os_string()),
        }
    }
}

/// Whether a backing entry of a volume whose names are stored as `mode` is
/// one of the volume's own (no key needed to tell).
pub fn is_internal(mode: NameMode, backing: &OsStr, in_root: bool) -> bool {
    let bytes = backing.as_bytes();
    if in_root && bytes.starts_with(CONFIG_NAME.as_bytes()) {
        return true;
    }
    // Every `chronicle.` name is the volume's own, except a long name's
    // entry itself (its file, `.name`, is internal).
    let long_entry =
        bytes.starts_with(LONG_PREFIX.as_bytes()) && !bytes.ends_with(LONG_NAME_SUFFIX.as_bytes());
    mode == NameMode::Encrypted && bytes.starts_with(b"chronicle.") && !long_entry
}

/// Puts a directory's id record back (after a failed removal).
pub fn restore_record(dir: BorrowedFd, record: &[u8]) -> io::Result<()> {
    write_durably(dir, OsStr::new(DIR_ID_NAME), record, GiveTo::DirOwner)
}

/// Who the volume's own small files (id records, long names' files) that
/// this process makes are given to. Made by root in a user's volume they
/// are hers, as everything else her directories hold: her own mount can
/// then also remove them where a directory is sticky.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveTo {
    /// Nobody: they stay this process's.
    Nobody,
    /// This user and group (root copying a tree: the owner the directory
    /// they are made in will have).
    User(u32, u32),
    /// As root, the owner of the directory they are made in, when that is
    /// another user (`lock::owner_to_give_to`); looked up only when a file
    /// is written.
    DirOwner,
}

impl GiveTo {
    /// `User(uid, gid)` when `who` is Some, else `Nobody`.
    pub fn user(who: Option<(u32, u32)>) -> GiveTo {
        who.map_or(GiveTo::Nobody, |(uid, gid)| GiveTo::User(uid, gid))
    }

    fn resolve(self, dir: BorrowedFd) -> io::Result<Option<(u32, u32)>> {
        match self {
            GiveTo::Nobody => Ok(None),
            GiveTo::User(uid, gid) => Ok(Some((uid, gid))),
            GiveTo::DirOwner => crate::lock::owner_to_give_to(dir),
        }
    }
}

/// The mode of the volume's own small files: read-only, and readable by
/// everyone, whatever the umask. Who may read a directory's names is
/// decided by the directory's own mode, as on any file system; these
/// files hold nothing secret (a directory's random id, a name already
/// encrypted), and one that only its owner could read would keep every
/// other user's mount from listing her directory.
pub const SMALL_FILE_MODE: u32 = 0o444;

/// Writes a small file of the volume's own, durably: a temporary name,
/// made readable by all, given to `owner` (if any) and synced, then
/// renamed into place (a crash leaves the old file or the new). The file
/// is given away through its own descriptor before it has its name:
/// whoever can write `dir` could put another file (a hard link to one of
/// root's) at the name by then.
fn write_durably(dir: BorrowedFd, name: &OsStr, bytes: &[u8], owner: GiveTo) -> io::Result<()> {
    let owner = owner.resolve(dir)?;
    let (tmp, fd) = create_temporary(dir)?;
    let mut file = std::fs::File::from(fd);
    make_readable(&file, name);
    let written = give_to(&file, owner, name)
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            // Never over an existing file: a concurrent writer's stands.
            rustix::fs::renameat_with(dir, &tmp, dir, name, rustix::fs::RenameFlags::NOREPLACE)
                .map_err(io::Error::from)
        });
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(dir, &tmp, AtFlags::empty());
        return Err(e);
    }
    Ok(())
}

/// Creates a new temporary file of the volume's own in `dir`. A name
/// already taken (a crash's leftover, or one someone put there) is not
/// the file's: another name is tried.
fn create_temporary(dir: BorrowedFd) -> io::Result<(OsString, rustix::fd::OwnedFd)> {
    let mut tries = 0;
    loop {
        let mut tmp = OsString::from("chronicle.tmp.");
        tmp.push(OsString::from_vec(
            crate::random::bytes::<12>()
                .iter()
                .map(|b| b"abcdefghijklmnop"[usize::from(b & 15)])
                .collect(),
        ));
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, &tmp, flags, Mode::from_raw_mode(SMALL_FILE_MODE)) {
            Ok(fd) => return Ok((tmp, fd)),
            Err(rustix::io::Errno::EXIST) if tries < 8 => tries += 1,
            // Not EEXIST: the caller reads that as the file being there.
            Err(rustix::io::Errno::EXIST) => {
                return Err(io::Error::other("no free temporary name"))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sets `file`'s mode to `SMALL_FILE_MODE` whatever the umask. Where the
/// backing file system refuses modes (vfat, some network and FUSE file
/// systems) the file keeps the mode it was made with, never a wider one:
/// a warning, not a failure, or such a store could not hold a long name.
fn make_readable(file: &std::fs::File, name: &OsStr) {
    if let Err(e) = rustix::fs::fchmod(file, Mode::from_raw_mode(SMALL_FILE_MODE)) {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!(
                "{}: cannot make it readable by all: {e}; other users' mounts may not list \
                 its directory (further such files are not reported)",
                name.to_string_lossy()
            );
        }
    }
}

/// Gives `file`, to be named `name`, to `owner`. Where the file system
/// does not let root give files away (NFS with root_squash, some FUSE file
/// systems), the file stays this process's, with a warning.
fn give_to(file: &std::fs::File, owner: Option<(u32, u32)>, name: &OsStr) -> io::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let uid = rustix::fs::Uid::from_raw(uid);
    let gid = rustix::fs::Gid::from_raw(gid);
    match rustix::fs::fchown(file, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if crate::lock::cannot_give_away(e) => {
            // Once: on such a file system every long name would say it.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                log::warn!(
                    "{}: cannot give it to uid {}: {e}; it stays root's, which that user's own \
                     mount cannot remove from a sticky directory (further files not given away \
                     are not reported)",
                    name.to_string_lossy(),
                    uid.as_raw()
                );
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads at most `limit` bytes of the volume's own small file `name`:
/// never through a symlink, never blocking on a fifo planted in its place,
/// and only from a regular file.
pub fn read_small(dir: BorrowedFd, name: &OsStr, limit: u64) -> io::Result<Vec<u8>> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let stat = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(limit)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::cipher::Backend;
    use crate::keys::SecretKey;

    fn names(mode: NameMode) -> Names {
        Names::new(
            mode,
            &ContentCrypto::new(SecretKey::from_bytes([4; 32]), Backend::Ring),
        )
    }

    fn open_dir(path: &std::path::Path) -> std::os::fd::OwnedFd {
        rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open")
    }

    // Protects: a directory's id record is made durably and read back; an
    // empty directory that lost it (a crash in rmdir) gets a new one; a
    // forged record is refused.
    #[test]
    fn dir_keys() {
        let n = names(NameMode::Encrypted);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = open_dir(tmp.path());
        let key = n.init_dir(dir.as_fd(), GiveTo::Nobody).expect("init");
        assert_eq!(n.dir_key(dir.as_fd()).expect("read"), key);
        std::fs::remove_file(tmp.path().join(DIR_ID_NAME)).expect("rm");
        let fresh = n
            .dir_key(dir.as_fd())
            .expect("an empty directory is repaired");
        assert_ne!(fresh, key);
        std::fs::write(tmp.path().join("entry"), b"").expect("write");
        std::fs::remove_file(tmp.path().join(DIR_ID_NAME)).expect("rm");
        assert!(matches!(n.dir_key(dir.as_fd()), Err(NameError::Io(_))));
        std::fs::write(tmp.path().join(DIR_ID_NAME), [0u8; DIR_ID_RECORD_LEN]).expect("forge");
        assert!(matches!(
            n.dir_key(dir.as_fd()),
            Err(NameError::Forged(Forged::DirId))
        ));
        assert_eq!(
            names(NameMode::Plaintext)
                .dir_key(dir.as_fd())
                .expect("plain"),
            DirKey::Plain
        );
    }

    // Protects: as root, the volume's own files made for another user (a
    // copy of her volume, a mount in her directory) are hers; a file
    // someone put at a long name's file beforehand (a hard link to one of
    // root's) is neither replaced nor given away. (That they are hers
    // before they have their names is `write_durably`'s order, read, not
    // tested: a race would be needed.)
    #[test]
    fn files_made_for_an_owner_are_hers_and_a_planted_one_is_left() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let n = names(NameMode::Encrypted);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = open_dir(tmp.path());
        let nobody = GiveTo::User(65534, 65534);
        let key = n.init_dir(dir.as_fd(), nobody).expect("init");
        let owner = |name: &OsStr| {
            let stat = rustix::fs::lstat(tmp.path().join(name)).expect("stat");
            (stat.st_uid, stat.st_gid)
        };
        assert_eq!(owner(OsStr::new(DIR_ID_NAME)), (65534, 65534));
        // A record root gives anew to a user's empty directory (a check or
        // a mount after a crash in rmdir) is hers too.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        std::os::unix::fs::chown(&empty, Some(65533), Some(65533)).expect("chown");
        n.dir_key(open_dir(&empty).as_fd()).expect("key");
        let record = rustix::fs::lstat(empty.join(DIR_ID_NAME)).expect("stat");
        assert_eq!((record.st_uid, record.st_gid), (65533, 65533));
        // And a long name's file made in her directory for its owner.
        let hers = open_dir(&empty);
        let her_key = n.dir_key(hers.as_fd()).expect("key");
        let her_long = OsString::from("h".repeat(255));
        let mut file = n
            .create_entry(hers.as_fd(), &her_key, &her_long, false, GiveTo::DirOwner)
            .expect("create");
        file.push(LONG_NAME_SUFFIX);
        let made = rustix::fs::lstat(empty.join(&file)).expect("stat");
        assert_eq!((made.st_uid, made.st_gid), (65533, 65533));
        let long = OsString::from("m".repeat(255));
        let entry = n
            .create_entry(dir.as_fd(), &key, &long, false, nobody)
            .expect("create");
        let mut file = entry.clone();
        file.push(LONG_NAME_SUFFIX);
        assert_eq!(owner(&file), (65534, 65534));

        let planted_long = OsString::from("p".repeat(255));
        let BackingName::Long { digest_name, .. } =
            n.stored(&key, &planted_long, false).expect("stored")
        else {
            panic!("a long name");
        };
        let mut planted = digest_name;
        planted.push(LONG_NAME_SUFFIX);
        std::fs::write(tmp.path().join(&planted), b"root's").expect("plant");
        n.create_entry(dir.as_fd(), &key, &planted_long, false, nobody)
            .expect("create");
        assert_eq!(owner(&planted), (0, 0), "not given away");
        let kept = std::fs::read(tmp.path().join(&planted)).expect("read");
        assert_eq!(kept, b"root's", "not replaced");
    }

    // Protects: long names get their file before the entry exists and lose
    // it after; decoding reads it; internal names are hidden in both modes.
    #[test]
    fn long_names_and_internal_entries() {
        let n = names(NameMode::Encrypted);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = open_dir(tmp.path());
        let key = n.init_dir(dir.as_fd(), GiveTo::Nobody).expect("init");
        let long = OsString::from("n".repeat(255));
        let entry = n
            .create_entry(dir.as_fd(), &key, &long, false, GiveTo::Nobody)
            .expect("create");
        assert!(entry.as_bytes().starts_with(LONG_PREFIX.as_bytes()));
        assert!(
            !n.is_internal(&entry, false),
            "a long name's entry is shown"
        );
        let decoded = n.decode(dir.as_fd(), &key, &entry, false).expect("shown");
        assert_eq!(decoded.expect("decodes"), long);
        let mut file = entry.clone();
        file.push(LONG_NAME_SUFFIX);
        assert!(tmp.path().join(&file).is_file());
        assert!(n.is_internal(&file, false));
        assert!(n.is_internal(OsStr::new(DIR_ID_NAME), false));
        n.remove_entry(dir.as_fd(), &key, &long);
        assert!(!tmp.path().join(&file).exists());
        let plain = names(NameMode::Plaintext);
        assert!(!plain.is_internal(OsStr::new("chronicle.notes"), false));
        assert!(plain.is_internal(OsStr::new("chronicle.volume"), true));
        assert!(matches!(
            plain.entry(&DirKey::Plain, OsStr::new("chronicle.volume"), true),
            Err(NameError::Reserved)
        ));
    }

    // Protects: targets too long to store sealed are refused, not cut.
    #[test]
    fn symlink_target_limits() {
        let n = names(NameMode::Encrypted);
        let ok = OsString::from("t".repeat(3043));
        let stored = n.seal_target(&ok).expect("fits");
        assert_eq!(n.open_target(&stored).expect("opens"), ok);
        for len in [1usize, 2, 3, 17, 100, 3043] {
            let target = OsString::from("x".repeat(len));
            let stored = n.seal_target(&target).expect("fits");
            assert_eq!(n.target_len(stored.len() as u64), len as u64, "{len}");
        }
        assert!(matches!(
            n.seal_target(&OsString::from("t".repeat(3044))),
            Err(NameError::TooLong)
        ));
        let plain = names(NameMode::Plaintext);
        let long = OsString::from("t".repeat(4095));
        assert_eq!(plain.seal_target(&long).expect("plain"), long);
    }
}
