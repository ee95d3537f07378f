//! Making a new encrypted file appear whole: created anonymously
//! (`O_TMPFILE`), given its header (and contents, for a file-form symlink),
//! then linked under its name. A crash at any point leaves either no entry
//! or a complete one, never a name without a header. Where the backing file
//! system has no `O_TMPFILE`, the file is created under its name and the
//! header written next (a crash between leaves a zero-byte file, which
//! `fsck --repair` gives a header).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::content::{ContentCrypto, EncryptedFile};
use crate::error::{Result, VolumeError};

/// Why a new file was not made.
#[derive(Debug)]
pub enum CreateError {
    /// The name is taken.
    Exists,
    Volume(VolumeError),
}

impl From<VolumeError> for CreateError {
    fn from(e: VolumeError) -> Self {
        CreateError::Volume(e)
    }
}

/// Creates the encrypted file `entry` in `dir` with `mode`, running `fill`
/// on it before its name appears. Returns a read-write descriptor of it.
pub fn create_whole(
    dir: BorrowedFd,
    entry: &OsStr,
    mode: Mode,
    crypto: &Arc<ContentCrypto>,
    fill: impl FnOnce(&EncryptedFile) -> Result<()>,
) -> std::result::Result<File, CreateError> {
    let io =
        |what: &str, e: rustix::io::Errno| CreateError::Volume(VolumeError::io(what, e.into()));
    let anonymous = rustix::fs::openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        mode,
    );
    let fd = match anonymous {
        Ok(fd) => fd,
        // No O_TMPFILE here: made under its name, header next.
        Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::ISDIR) => {
            let fd = rustix::fs::openat(
                dir,
                entry,
                OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                mode,
            )
            .map_err(|e| match e {
                rustix::io::Errno::EXIST => CreateError::Exists,
                e => io("creating a file", e),
            })?;
            let file = File::from(fd);
            fill_file(&file, entry, crypto, fill)?;
            return Ok(file);
        }
        Err(e) => return Err(io("creating a file", e)),
    };
    let file = File::from(fd);
    fill_file(&file, entry, crypto, fill)?;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        path.as_str(),
        dir,
        entry,
        AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(|e| match e {
        rustix::io::Errno::EXIST => CreateError::Exists,
        e => io("linking a new file", e),
    })?;
    Ok(reopen_by_name(dir, entry, file))
}

/// A descriptor from `O_TMPFILE` keeps its anonymous name in
/// `/proc/self/fd` even after `linkat`, and that name is what logs and
/// error messages show. Reopening through the new entry gives a descriptor
/// that names the file; if the entry is no longer this file (someone
/// replaced it in between), the anonymous descriptor is kept.
fn reopen_by_name(dir: BorrowedFd, entry: &OsStr, file: File) -> File {
    let named = rustix::fs::openat(
        dir,
        entry,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let (Ok(named), Ok(ours)) = (named, rustix::fs::fstat(&file)) else {
        return file;
    };
    match rustix::fs::fstat(&named) {
        Ok(st) if st.st_dev == ours.st_dev && st.st_ino == ours.st_ino => File::from(named),
        _ => file,
    }
}

fn fill_file(
    file: &File,
    entry: &OsStr,
    crypto: &Arc<ContentCrypto>,
    fill: impl FnOnce(&EncryptedFile) -> Result<()>,
) -> Result<()> {
    let clone = file
        .try_clone()
        .map_err(|e| VolumeError::io("duplicating a descriptor", e))?;
    let contents = EncryptedFile::create(clone, Arc::clone(crypto), PathBuf::from(entry))?;
    fill(&contents)
}
