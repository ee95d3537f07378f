//! Backing `stat` → plaintext `FileAttr`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use rustix::fs::{FileType as RawType, Stat};

use crate::layout;

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

fn time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = u32::try_from(nsecs).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into())
    }
}

/// Attributes as the program using the mount sees them: a regular file's
/// size is its plaintext size, computed from the ciphertext size.
pub fn from_stat(ino: u64, stat: &Stat) -> FileAttr {
    let kind = RawType::from_raw_mode(stat.st_mode);
    let backing_size = u64::try_from(stat.st_size).unwrap_or(0);
    let size = if kind == RawType::RegularFile {
        layout::plaintext_size_lossy(backing_size)
    } else {
        backing_size
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: u64::try_from(stat.st_blocks).unwrap_or(0),
        atime: time(stat.st_atime, stat.st_atime_nsec as i64),
        mtime: time(stat.st_mtime, stat.st_mtime_nsec as i64),
        ctime: time(stat.st_ctime, stat.st_ctime_nsec as i64),
        crtime: time(stat.st_ctime, stat.st_ctime_nsec as i64),
        kind: file_type(kind),
        perm: (stat.st_mode & 0o7777) as u16,
        nlink: stat.st_nlink as u32,
        uid: stat.st_uid,
        gid: stat.st_gid,
        rdev: stat.st_rdev as u32,
        blksize: layout::BLOCK_SIZE as u32,
        flags: 0,
    }
}
