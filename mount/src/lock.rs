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

use std::fs::{File, OpenOptions};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::error::{IoContext, Result, VolumeError};

/// File name of the lock inside the backing directory (hidden, like every
/// name that begins with `chronicle.volume`).
pub const LOCK_NAME: &str = "chronicle.volume.lock";

/// Opens (creating if missing, mode 0600) one of the volume's own files in
/// the backing root for reading and writing, never through a symlink.
pub(crate) fn open_volume_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .context(|| format!("opening {}", path.display()))
}

/// Held while the volume is being written by this process.
#[derive(Debug)]
pub struct VolumeLock {
    _file: File,
}

impl VolumeLock {
    /// Takes the volume in `backing`, or says who may hold it.
    pub fn acquire(backing: &Path) -> Result<VolumeLock> {
        let path = lock_path(backing);
        let file = open_volume_file(&path)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(VolumeLock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(VolumeError::Busy {
                path: backing.to_path_buf(),
            }),
            Err(e) => Err(VolumeError::io(
                format!("locking {}", path.display()),
                e.into(),
            )),
        }
    }
}

impl VolumeLock {
    /// Takes the volume in `backing`, waiting up to `timeout` for whoever
    /// holds it to let it go: a process that has just died (its mount
    /// cleared as dead) or whose session has ended drops the lock only when
    /// its last descriptors are closed, a moment after its mount is gone.
    pub fn acquire_within(backing: &Path, timeout: std::time::Duration) -> Result<VolumeLock> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match VolumeLock::acquire(backing) {
                Err(VolumeError::Busy { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                taken => return taken,
            }
        }
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
const KEY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Held by whatever replaces a volume's configuration (a new user key) or
/// the whole volume (a re-encryption's swap), for the check that the
/// configuration is still the one it read and the replacement after it:
/// an exclusive `flock` on `KEY_LOCK_NAME` in the backing directory open as
/// `dir` (a file of mode 0600, so that only the volume's owner can hold
/// it; found through `dir`, so that it follows the directory through a
/// swap). Each holder keeps it for milliseconds: a wait beyond
/// `KEY_LOCK_WAIT` is refused as the volume being busy. Where the backing
/// file system cannot lock files, it goes on unlocked and says so in the
/// log.
pub struct KeyLock {
    _file: Option<File>,
}

impl KeyLock {
    pub fn acquire(dir: BorrowedFd<'_>, backing: &Path) -> Result<KeyLock> {
        let path = backing.join(KEY_LOCK_NAME);
        let flags = rustix::fs::OFlags::RDWR
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC;
        let file = rustix::fs::openat(
            dir,
            KEY_LOCK_NAME,
            flags,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .map(File::from)
        .map_err(|e| VolumeError::io(format!("opening {}", path.display()), e.into()))?;
        let deadline = std::time::Instant::now() + KEY_LOCK_WAIT;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(KeyLock { _file: Some(file) }),
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(VolumeError::Busy {
                        path: backing.to_path_buf(),
                    })
                }
                Err(e @ (rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP)) => {
                    log::warn!(
                        "{}: cannot be locked ({e}): a concurrent change of the key is not kept out",
                        path.display()
                    );
                    return Ok(KeyLock { _file: None });
                }
                Err(e) => {
                    return Err(VolumeError::io(
                        format!("locking {}", path.display()),
                        e.into(),
                    ))
                }
            }
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
}
