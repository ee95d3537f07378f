//! The caller's side of the control request: one `ioctl` into a buffer of
//! the report's size, the only unsafe code of `chronicle stats`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use rustix::fs::{AtFlags, FsWord, Mode, OFlags, StatxFlags};

use super::{Malformed, Report, REPORT_MAX, STATS};
use crate::mountinfo::{MountEntry, CHRONICLE_FSTYPE};

/// `statfs`'s type for every FUSE file system, which the kernel sets
/// itself whatever the server answers.
const FUSE_SUPER_MAGIC: FsWord = 0x6573_5546;

/// Asks the mount `entry` for its report. ENOTTY: it does not answer the
/// request (an earlier build), or is not a FUSE mount of chronicle's type;
/// EACCES: the kernel does not let the caller in; EPERM: the mount refuses
/// the caller; ESTALE: something else is mounted there now.
pub fn ask(entry: &MountEntry) -> io::Result<Report> {
    if entry.fstype != CHRONICLE_FSTYPE {
        return Err(io::Error::from_raw_os_error(libc::ENOTTY));
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rustix::fs::open(&entry.point, flags, Mode::empty())?;
    if rustix::fs::fstatfs(&dir)?.f_type != FUSE_SUPER_MAGIC {
        return Err(io::Error::from_raw_os_error(libc::ENOTTY));
    }
    // The directory opened is the mount the caller chose from mountinfo,
    // not one made there since.
    let at = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let stat = rustix::fs::statx(&dir, "", at, StatxFlags::empty())?;
    if format!("{}:{}", stat.stx_dev_major, stat.stx_dev_minor) != entry.device {
        return Err(io::Error::from_raw_os_error(libc::ESTALE));
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
        return Err(io::Error::last_os_error());
    }
    // The mount returns the report's length; the rest was never written.
    let len = (got as usize).min(REPORT_MAX);
    Report::decode(&buffer[..len])
        .map_err(|Malformed(why)| io::Error::new(io::ErrorKind::InvalidData, why))
}
