//! Backing `stat` → plaintext `FileAttr`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use rustix::fs::{FileType as RawType, Stat};

use crate::layout;
use crate::untimed::{mtime_of, Status, Timestamp};

/// The file type of a backing `st_mode`.
pub fn file_type(kind: RawType) -> FileType {
    match kind {
        RawType::Directory => FileType::Directory,
        RawType::Symlink => FileType::Symlink,
        RawType::Fifo => FileType::NamedPipe,
        RawType::Socket => FileType::Socket,
        RawType::CharacterDevice => FileType::CharDevice,
        RawType::BlockDevice => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn time(stamp: Timestamp) -> SystemTime {
    let Timestamp { secs, nanos } = stamp;
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into())
    }
}

/// Attributes as the program using the mount sees them: a regular file's
/// size is its plaintext size, computed from the ciphertext size.
pub fn from_stat(ino: u64, stat: &Stat) -> FileAttr {
    let ctime = Timestamp {
        secs: stat.st_ctime,
        nanos: u32::try_from(stat.st_ctime_nsec).unwrap_or(0),
    };
    from_status(ino, &Status::from(stat), time(mtime_of(stat)), time(ctime))
}

/// `from_stat` for a status read without times (`crate::untimed`), with
/// the times the caller knows.
pub fn from_status(ino: u64, status: &Status, mtime: SystemTime, ctime: SystemTime) -> FileAttr {
    let kind = RawType::from_raw_mode(status.mode);
    let size = if kind == RawType::RegularFile {
        layout::plaintext_size_lossy(status.size)
    } else {
        status.size
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: status.blocks,
        atime: time(status.atime),
        mtime,
        ctime,
        crtime: ctime,
        kind: file_type(kind),
        perm: (status.mode & 0o7777) as u16,
        nlink: status.nlink,
        uid: status.uid,
        gid: status.gid,
        rdev: status.rdev as u32,
        blksize: layout::BLOCK_SIZE as u32,
        flags: 0,
    }
}
