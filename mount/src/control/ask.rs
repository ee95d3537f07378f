//! The caller's side of the control request: one `ioctl` into a buffer of
//! the report's size (the only unsafe code of `chronicle stats`), sent
//! only to the FUSE mount the caller named.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use rustix::fs::{AtFlags, FsWord, Mode, OFlags, StatxFlags};

use super::{Malformed, Report, REPORT_MAX, STATS};
use crate::mountinfo::{MountEntry, CHRONICLE_FSTYPE};

/// `statfs`'s type for every FUSE file system, which the kernel sets
/// itself whatever the server answers.
const FUSE_SUPER_MAGIC: FsWord = 0x6573_5546;

/// Why a mount's report was not had.
#[derive(Debug)]
pub enum AskError {
    /// The mount point could not be opened or looked at (EACCES: the
    /// kernel does not let the caller into the mount).
    Open(io::Error),
    /// What is mounted there is not a FUSE file system of chronicle's type.
    NotFuse,
    /// Something else is mounted there now than the mount asked about.
    Moved,
    /// The mount's answer: EPERM, it refuses the caller; EINVAL, the
    /// directory is not the volume's root (a bind mount of one inside it);
    /// ENOTTY, it does not know the request (an earlier build).
    Refused(io::Error),
    /// The mount's report could not be read.
    Malformed(String),
}

/// Asks the mount `entry` for its report.
pub fn ask(entry: &MountEntry) -> Result<Report, AskError> {
    if entry.fstype != CHRONICLE_FSTYPE {
        return Err(AskError::NotFuse);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rustix::fs::open(&entry.point, flags, Mode::empty())
        .map_err(|e| AskError::Open(e.into()))?;
    // The kernel sets the type of a FUSE file system itself (a server
    // that fails the STATFS fails the call instead).
    let fs = rustix::fs::fstatfs(&dir).map_err(|e| AskError::Open(e.into()))?;
    if fs.f_type != FUSE_SUPER_MAGIC {
        return Err(AskError::NotFuse);
    }
    // The directory opened is the mount the caller chose from mountinfo,
    // not one made there since.
    let at = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let stat = rustix::fs::statx(&dir, "", at, StatxFlags::empty())
        .map_err(|e| AskError::Open(e.into()))?;
    if format!("{}:{}", stat.stx_dev_major, stat.stx_dev_minor) != entry.device {
        return Err(AskError::Moved);
    }
    let mut buffer = [0u8; REPORT_MAX];
    // SAFETY: the directory is on a FUSE file system (its type checked on
    // the descriptor itself, above), so no other driver takes the number
    // for one of its own. `STATS` is a read request of REPORT_MAX bytes,
    // and for such a request FUSE copies back to `buffer`, which is valid
    // for REPORT_MAX bytes of writes, at most that many, whatever its
    // server replies (a longer reply is an error, EIO).
    let got = unsafe { libc::ioctl(dir.as_raw_fd(), STATS as libc::Ioctl, buffer.as_mut_ptr()) };
    if got < 0 {
        return Err(AskError::Refused(io::Error::last_os_error()));
    }
    // The mount returns the report's length; the rest was never written.
    let len = (got as usize).min(REPORT_MAX);
    Report::decode(&buffer[..len]).map_err(|Malformed(why)| AskError::Malformed(why))
}
