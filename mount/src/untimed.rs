//! A backing file's status read without its modification and change
//! times, for the paths that serve every write-back and `fsync`.
//!
//! Why: since Linux 6.13, file systems with multigrain timestamps (ext4,
//! XFS, btrfs, tmpfs) stamp a change with a coarse time (one per clock
//! tick) unless the file's times were read since its last change; then the
//! change gets a fine-grained time, and the floor that every coarse
//! timestamp is raised to moves up to it. FUSE inodes take coarse
//! timestamps. A mount that read a backing file's times while serving each
//! `fsync` cycle of a file (write back, SETATTR, FSYNC) moved that floor in
//! every cycle: the kernel then gave the file a new mtime at each write
//! and sent a SETATTR to carry it before each `fsync`, a round trip and a
//! change of the backing file (which kept the loop going). With the times
//! left out, the kernel sends it once per clock tick (docs/PERFORMANCE.md,
//! "Times without a round trip"). Asking for the access time is harmless:
//! only the modification and change times mark a file's times as read.

use std::os::fd::AsFd;

use rustix::fs::{AtFlags, Stat, StatxFlags};

/// A second and nanoseconds since the epoch, as `stat` gives them
/// (ordered by time: seconds are floored, nanoseconds below 10^9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// The times for `utimensat`/`futimens` that set this as the
    /// modification time and leave the access time as it is.
    pub fn as_modification_time(self) -> rustix::fs::Timestamps {
        rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: self.secs,
                tv_nsec: self.nanos.into(),
            },
        }
    }
}

/// What `status` tells of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub mode: u32,
    pub size: u64,
    pub blocks: u64,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub atime: Timestamp,
}

/// Every field of `Status`, and no time but the access time.
fn wanted() -> StatxFlags {
    StatxFlags::TYPE
        | StatxFlags::MODE
        | StatxFlags::NLINK
        | StatxFlags::UID
        | StatxFlags::GID
        | StatxFlags::ATIME
        | StatxFlags::SIZE
        | StatxFlags::BLOCKS
}

/// The status of the open file `fd` (an `O_PATH` descriptor will do),
/// without reading its modification or change time. Where `statx` is
/// missing (a kernel before 4.11, a sandbox that forbids it), `fstat`
/// answers instead, times read and all: only speed is lost.
pub fn status(fd: impl AsFd) -> std::io::Result<Status> {
    match rustix::fs::statx(&fd, "", AtFlags::EMPTY_PATH, wanted()) {
        Ok(stx) if stx.stx_mask & wanted().bits() == wanted().bits() => Ok(Status {
            mode: stx.stx_mode.into(),
            size: stx.stx_size,
            blocks: stx.stx_blocks,
            nlink: stx.stx_nlink,
            uid: stx.stx_uid,
            gid: stx.stx_gid,
            rdev: rustix::fs::makedev(stx.stx_rdev_major, stx.stx_rdev_minor),
            atime: Timestamp {
                secs: stx.stx_atime.tv_sec,
                nanos: stx.stx_atime.tv_nsec,
            },
        }),
        Ok(_) | Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            Ok(Status::from(&rustix::fs::fstat(&fd)?))
        }
        Err(e) => Err(e.into()),
    }
}

impl From<&Stat> for Status {
    fn from(stat: &Stat) -> Status {
        Status {
            mode: stat.st_mode,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            blocks: u64::try_from(stat.st_blocks).unwrap_or(0),
            nlink: stat.st_nlink as u32,
            uid: stat.st_uid,
            gid: stat.st_gid,
            rdev: stat.st_rdev,
            atime: Timestamp {
                secs: stat.st_atime,
                nanos: stat.st_atime_nsec as u32,
            },
        }
    }
}

/// The modification time in `stat`.
pub fn mtime_of(stat: &Stat) -> Timestamp {
    Timestamp {
        secs: stat.st_mtime,
        nanos: stat.st_mtime_nsec as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: the status without times agrees with `fstat` on every
    // field it carries, for a file and for an O_PATH descriptor.
    #[test]
    fn status_agrees_with_fstat() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 10_000]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let by_path = rustix::fs::open(
            &path,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .expect("open O_PATH");
        let expected = Status::from(&rustix::fs::fstat(&file).expect("fstat"));
        assert_eq!(status(&file).expect("status"), expected);
        assert_eq!(status(&by_path).expect("status"), expected);
        assert_eq!(expected.size, 10_000);
    }
}
