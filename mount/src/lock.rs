//! One writer of a volume at a time. A mount, a repair and a re-encryption
//! each take an exclusive `flock` on `BACKING/chronicle.volume.lock` for as
//! long as they run; a second one is refused at once instead of racing the
//! first (two mounts of one BACKING would each keep their own idea of every
//! file's last block and header). The lock lives on the open file, so a
//! background mount keeps it across its fork, and the kernel drops it when
//! the holder dies: there is never a stale lock to clear.
//!
//! A change of the volume's key is not a writer (a mounted volume may be
//! given a new key) but must not meet another: `KeyLock`, a lock of its
//! own, held for moments.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FileType, FlockOperation, Mode, OFlags};

use crate::error::{Result, VolumeError};

/// File name of the lock inside the backing directory (hidden, like every
/// name that begins with `chronicle.volume`).
pub const LOCK_NAME: &str = "chronicle.volume.lock";

/// One of the volume's own files in the backing root, opened for reading
/// and writing by `open_own_file_at`.
pub(crate) struct OwnFile {
    pub file: File,
    /// This call made it (it did not exist).
    pub created: bool,
}

/// Opens the volume's own file `name` in the backing directory open as
/// `dir` for reading and writing, never through a symlink, creating it
/// (mode 0600) if it is missing. A file that root creates in another
/// user's volume (mounting or re-keying it) is handed to the directory's
/// owner, who could not open it otherwise; never one that was already
/// there, which anybody able to write the directory could have put there.
pub(crate) fn open_own_file_at(dir: BorrowedFd<'_>, name: &str, shown: &Path) -> Result<OwnFile> {
    let io =
        |e: rustix::io::Errno| VolumeError::io(format!("opening {}", shown.display()), e.into());
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o600);
    // Bounded: someone making and removing the name as fast as it is
    // tried would otherwise keep this turning.
    let mut tries = 0;
    let (fd, created) = loop {
        tries += 1;
        match rustix::fs::openat(dir, name, flags | OFlags::CREATE | OFlags::EXCL, mode) {
            Ok(fd) => break (fd, true),
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(e)),
        }
        match rustix::fs::openat(dir, name, flags, mode) {
            Ok(fd) => break (fd, false),
            // Removed in between: make it.
            Err(rustix::io::Errno::NOENT) if tries < 10 => continue,
            Err(e) => return Err(io(e)),
        }
    };
    let file = File::from(fd);
    if created {
        give_to_owner(&file, dir, shown)?;
    }
    Ok(OwnFile { file, created })
}

/// Hands `file`, which this process has just created in the backing
/// directory open as `dir`, to the directory's owner when this process is
/// root and the owner is another user.
pub(crate) fn give_to_owner(file: &File, dir: BorrowedFd<'_>, shown: &Path) -> Result<()> {
    let owner = owner_to_give_to(dir).map_err(|e| {
        VolumeError::io(format!("examining the directory of {}", shown.display()), e)
    })?;
    match owner {
        Some(owner) => give_to(file, owner, shown),
        None => Ok(()),
    }
}

/// Who files this process makes in the backing directory open as `dir`
/// are given to: the directory's owner, when this process is root and the
/// owner is another user (whose own mount must read them).
pub(crate) fn owner_to_give_to(dir: BorrowedFd<'_>) -> std::io::Result<Option<(u32, u32)>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let owner = rustix::fs::fstat(dir)?;
    Ok((owner.st_uid != 0).then_some((owner.st_uid, owner.st_gid)))
}

/// Hands `file`, which this process (root) has just created, to `uid` and
/// `gid` (the volume's owner) unless that is root or has it already. Where
/// the file system does not let root give files away, the file stays as
/// it is, with a warning.
pub(crate) fn give_to(file: &File, (uid, gid): (u32, u32), shown: &Path) -> Result<()> {
    let mine = rustix::fs::fstat(file)
        .map_err(|e| VolumeError::io(format!("examining {}", shown.display()), e.into()))?;
    if uid == 0 || mine.st_uid == uid {
        return Ok(());
    }
    let uid = rustix::process::Uid::from_raw(uid);
    let gid = rustix::process::Gid::from_raw(gid);
    match rustix::fs::fchown(file, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        // NFS with root_squash, some FUSE file systems: as before.
        Err(e) if cannot_give_away(e) => {
            log::warn!(
                "{}: cannot give it to the volume's owner: {e}",
                shown.display()
            );
            Ok(())
        }
        Err(e) => Err(VolumeError::io(
            format!("giving {} to the volume's owner", shown.display()),
            e.into(),
        )),
    }
}

/// Whether a directory's status says it is root's alone: nobody else can
/// have put anything in it, so what root does in it by name is safe.
pub(crate) fn is_roots_alone(dir: &rustix::fs::Stat) -> bool {
    dir.st_uid == 0 && dir.st_mode & 0o077 == 0
}

/// Whether `e`, from a chown by root, means the file system does not let
/// root give files away (NFS with root_squash, some FUSE file systems: EPERM,
/// EACCES, ...) or the new owner cannot take it (EDQUOT: over her quota),
/// rather than that something is wrong.
pub(crate) fn cannot_give_away(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    matches!(
        e,
        Errno::PERM | Errno::ACCESS | Errno::DQUOT | Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS
    )
}

/// Opens (creating if missing) the lock file `name` in the backing
/// directory open as `dir`, and only if nobody but the volume's owner can
/// hold it: whoever can open a lock file can hold the lock for ever. So it
/// must be a regular file of one link (not a FIFO, not a link to another
/// of the volume's files), owned by this user or the directory's owner,
/// and it is made mode 0600 if it is not.
fn open_lock_file_at(dir: BorrowedFd<'_>, name: &str, shown: &Path) -> Result<File> {
    let file = open_own_file_at(dir, name, shown)?.file;
    let io = |what: &str, e: rustix::io::Errno| {
        VolumeError::io(format!("{what} {}", shown.display()), e.into())
    };
    let stat = rustix::fs::fstat(&file).map_err(|e| io("examining", e))?;
    let dir_stat = rustix::fs::fstat(dir).map_err(|e| io("examining the directory of", e))?;
    let me = rustix::process::geteuid().as_raw();
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile || stat.st_nlink != 1 {
        return Err(VolumeError::io(
            shown.display().to_string(),
            std::io::Error::other(
                "not a lock file the volume made (not a regular file, or linked elsewhere); \
                 it holds nothing: remove it",
            ),
        ));
    }
    // In a directory that is root's alone only root can have made it (a
    // re-encryption cut short while handing its new volume over).
    let roots_own = me == 0 && is_roots_alone(&dir_stat);
    if stat.st_uid != me && stat.st_uid != dir_stat.st_uid && !roots_own {
        return Err(VolumeError::io(
            shown.display().to_string(),
            std::io::Error::other(
                "belongs to another user (root, if root used this volume with an earlier \
                 version); it holds nothing: remove it while nothing uses the volume",
            ),
        ));
    }
    if stat.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&file, Mode::from_raw_mode(0o600))
            .map_err(|e| io("setting the mode of", e))?;
    }
    Ok(file)
}

/// Tries an exclusive `flock` of `file` until `timeout` has passed: false
/// if another process held it all along.
fn lock_within(file: &File, timeout: Duration) -> rustix::io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Held while the volume is being written by this process.
#[derive(Debug)]
pub struct VolumeLock {
    _file: File,
}

impl VolumeLock {
    /// Takes the volume in `backing`, or says who may hold it.
    pub fn acquire(backing: &Path) -> Result<VolumeLock> {
        VolumeLock::acquire_within(backing, Duration::ZERO)
    }

    /// Takes the volume in `backing`, waiting up to `timeout` for whoever
    /// holds it to let it go: a process that has just died (its mount
    /// cleared as dead) or whose session has ended drops the lock only when
    /// its last descriptors are closed, a moment after its mount is gone.
    pub fn acquire_within(backing: &Path, timeout: Duration) -> Result<VolumeLock> {
        let dir = crate::config::find_backing_dir(backing)
            .map_err(|e| VolumeError::io(format!("opening {}", backing.display()), e.into()))?;
        VolumeLock::acquire_in(dir.as_fd(), backing, timeout)
    }

    /// Takes the volume in the backing directory open as `dir` (`backing`
    /// names it in messages).
    pub fn acquire_in(
        dir: BorrowedFd<'_>,
        backing: &Path,
        timeout: Duration,
    ) -> Result<VolumeLock> {
        let path = lock_path(backing);
        let file = open_lock_file_at(dir, LOCK_NAME, &path)?;
        match lock_within(&file, timeout) {
            Ok(true) => Ok(VolumeLock { _file: file }),
            Ok(false) => Err(VolumeError::Busy {
                path: backing.to_path_buf(),
            }),
            Err(e) => Err(VolumeError::io(
                format!("locking {}", path.display()),
                e.into(),
            )),
        }
    }

    /// Hands the lock file this process holds (made by root while its
    /// directory was root's alone) to `owner` (uid, gid), through the
    /// descriptor: never a file put at its name since.
    pub fn hand_to(&self, owner: (u32, u32), backing: &Path) -> Result<()> {
        if !rustix::process::geteuid().is_root() {
            return Ok(());
        }
        let path = lock_path(backing);
        let stat = rustix::fs::fstat(&self._file)
            .map_err(|e| VolumeError::io(format!("examining {}", path.display()), e.into()))?;
        let regular = rustix::fs::FileType::from_raw_mode(stat.st_mode).is_file();
        if !regular || stat.st_nlink != 1 {
            return Err(VolumeError::io(
                path.display().to_string(),
                std::io::Error::other("not a lone regular file; move it away and run again"),
            ));
        }
        give_to(&self._file, owner, &path)
    }

    /// Waits up to `timeout` for whoever holds the volume in `backing` to
    /// let it go (a mount whose session has ended finishes writing, then
    /// exits); true once it is free. Takes the lock only for a moment.
    pub fn wait_until_free(backing: &Path, timeout: std::time::Duration) -> Result<bool> {
        match VolumeLock::acquire_within(backing, timeout) {
            Ok(_free) => Ok(true),
            Err(VolumeError::Busy { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// File name of the key-change lock inside the backing directory (one of
/// the volume's own names).
pub const KEY_LOCK_NAME: &str = "chronicle.volume.keylock";

/// How long a key change waits for another to finish before giving up.
const KEY_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Held by whatever replaces a volume's configuration (a new user key) or
/// the whole volume (a re-encryption's swap), for the check that the
/// configuration is still the one it read and the replacement after it:
/// an exclusive `flock` on `KEY_LOCK_NAME` in the backing directory open as
/// `dir` (`open_lock_file_at`: only the volume's owner can hold it;
/// found through `dir`, so that it follows the directory through a swap).
/// Each holder keeps it for milliseconds: a wait beyond `KEY_LOCK_WAIT` is
/// refused as another key change under way. Where the backing
/// file system cannot lock files, it goes on unlocked and says so in the
/// log.
pub struct KeyLock {
    _file: Option<File>,
}

impl KeyLock {
    pub fn acquire(dir: BorrowedFd<'_>, backing: &Path) -> Result<KeyLock> {
        let path = backing.join(KEY_LOCK_NAME);
        let file = open_lock_file_at(dir, KEY_LOCK_NAME, &path)?;
        match lock_within(&file, KEY_LOCK_WAIT) {
            Ok(true) => Ok(KeyLock { _file: Some(file) }),
            Ok(false) => Err(VolumeError::KeyChangeBusy {
                path: backing.to_path_buf(),
            }),
            Err(e @ (rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP)) => {
                log::warn!(
                    "{}: cannot be locked ({e}): a concurrent change of the key is not kept out",
                    path.display()
                );
                Ok(KeyLock { _file: None })
            }
            Err(e) => Err(VolumeError::io(
                format!("locking {}", path.display()),
                e.into(),
            )),
        }
    }
}

pub fn lock_path(backing: &Path) -> PathBuf {
    backing.join(LOCK_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: a second writer is refused while the first holds the lock,
    // and admitted once it is gone; waiting for it ends when it is gone.
    #[test]
    fn one_writer_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = VolumeLock::acquire(dir.path()).expect("first");
        assert!(matches!(
            VolumeLock::acquire(dir.path()),
            Err(VolumeError::Busy { .. })
        ));
        let short = std::time::Duration::from_millis(30);
        assert!(!VolumeLock::wait_until_free(dir.path(), short).expect("wait"));
        drop(first);
        assert!(VolumeLock::wait_until_free(dir.path(), short).expect("wait"));
        VolumeLock::acquire(dir.path()).expect("after the first is gone");
    }

    // Protects: a mount taken just after a dead mount is cleared waits for
    // the dying holder to let go, and is still refused when nobody does.
    #[test]
    fn a_lock_let_go_soon_is_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = VolumeLock::acquire(dir.path()).expect("first");
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(first);
        });
        let long = std::time::Duration::from_secs(10);
        let second = VolumeLock::acquire_within(dir.path(), long).expect("taken once let go");
        holder.join().expect("holder");
        let short = std::time::Duration::from_millis(30);
        assert!(matches!(
            VolumeLock::acquire_within(dir.path(), short),
            Err(VolumeError::Busy { .. })
        ));
        drop(second);
    }

    // Protects: a lock file of another user's in a directory that is
    // root's alone (a re-encryption cut short while handing its new volume
    // over) does not lock root out: only root can have put it there.
    #[test]
    fn roots_own_directory_takes_any_lock_file_it_holds() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        rustix::fs::chmod(dir.path(), Mode::from_raw_mode(0o700)).expect("chmod");
        let lock = lock_path(dir.path());
        std::fs::write(&lock, b"").expect("write");
        std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).expect("chown");

        assert!(VolumeLock::acquire(dir.path()).is_ok());
    }

    // Protects: a lock file someone else planted (a FIFO, a link to another
    // file, another user's file) is refused rather than used, since whoever
    // can open it can hold the lock for ever; one of the owner's own that
    // others may open is made 0600.
    #[test]
    fn a_planted_lock_file_is_refused() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        type Plant = fn(&Path);
        let planted: [(&str, Plant); 3] = [
            ("fifo", |p| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    p,
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .expect("mkfifo")
            }),
            ("hard link", |p| {
                let other = p.with_file_name("elsewhere");
                std::fs::write(&other, b"").expect("write");
                std::fs::set_permissions(
                    &other,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .expect("chmod");
                std::fs::hard_link(&other, p).expect("link");
            }),
            ("someone else's", |p| {
                std::fs::write(p, b"").expect("write");
                let nobody = rustix::process::Uid::from_raw(65534);
                rustix::fs::chown(p, Some(nobody), None).expect("chown");
            }),
        ];
        for (what, plant) in planted {
            let dir = tempfile::tempdir().expect("tempdir");
            plant(&lock_path(dir.path()));
            let refused = VolumeLock::acquire(dir.path());
            assert!(
                matches!(&refused, Err(e) if e.to_string().contains("holds nothing: remove it")),
                "{what}: {refused:?}"
            );
        }
    }

    // Protects: a lock file root makes in another user's volume is that
    // user's, or the user could not mount the volume afterwards; one that
    // others may open is made the owner's alone.
    #[test]
    fn a_lock_file_made_by_root_is_the_owners() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let nobody = (
            rustix::process::Uid::from_raw(65534),
            rustix::process::Gid::from_raw(65534),
        );
        rustix::fs::chown(dir.path(), Some(nobody.0), Some(nobody.1)).expect("chown");
        drop(VolumeLock::acquire(dir.path()).expect("lock"));
        let made = rustix::fs::stat(lock_path(dir.path())).expect("stat");
        assert_eq!((made.st_uid, made.st_gid), (65534, 65534));
        std::fs::set_permissions(
            lock_path(dir.path()),
            std::os::unix::fs::PermissionsExt::from_mode(0o666),
        )
        .expect("chmod");
        VolumeLock::acquire(dir.path()).expect("taken again");
        let mode = rustix::fs::stat(lock_path(dir.path()))
            .expect("stat")
            .st_mode;
        assert_eq!(mode & 0o777, 0o600, "made the owner's alone");
    }
}
