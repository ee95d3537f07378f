//! Symlinks whose sealed target does not fit in a backing symlink (targets
//! of more than 3043 bytes with encrypted names; PATH_MAX allows 4095).
//! Such a symlink is stored as an encrypted file holding the target, marked
//! by the set-sticky bit on a regular file (which Linux otherwise ignores,
//! and which the mount never lets a program set on a regular file). The
//! mark says "symlink" cheaply, from `stat`; the target inside is sealed
//! and authenticated like any file's contents, so flipping the mark on
//! another file shows that file's contents as a target at worst, which the
//! attacker could have written into a real symlink anyway.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::{FileType, Mode, Stat};

use crate::content::{ContentCrypto, EncryptedFile};
use crate::error::{IoContext, Result, VolumeError};
use crate::names::NameMode;

/// The backing mode of a file-form symlink: a regular file, sticky,
/// readable and writable by its owner only.
pub const FILE_FORM_MODE: u32 = 0o1600;

/// Whether a backing file with this status is a file-form symlink in a
/// volume whose names are stored as `mode`.
pub fn is_file_form(mode: NameMode, stat: &Stat) -> bool {
    mode == NameMode::Encrypted
        && FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
        && stat.st_mode & libc::S_ISVTX != 0
}

/// Creates the file-form symlink `entry` in `dir` holding `target`; it
/// appears whole (see `crate::create`).
pub fn create(
    dir: BorrowedFd,
    entry: &std::ffi::OsStr,
    target: &[u8],
    crypto: &Arc<ContentCrypto>,
) -> Result<File> {
    let made = crate::create::create_whole(
        dir,
        entry,
        Mode::from_raw_mode(FILE_FORM_MODE),
        crypto,
        |contents| {
            contents.write_at(0, target)?;
            contents.sync(false)
        },
    );
    let file = match made {
        Ok(file) => file,
        Err(crate::create::CreateError::Exists) => {
            return Err(VolumeError::io(
                "creating a symlink",
                std::io::Error::from_raw_os_error(libc::EEXIST),
            ))
        }
        Err(crate::create::CreateError::Volume(e)) => return Err(e),
    };
    // The mode again: creation masks it with the umask.
    rustix::fs::fchmod(&file, Mode::from_raw_mode(FILE_FORM_MODE))
        .map_err(|e| VolumeError::io("marking a symlink", e.into()))?;
    Ok(file)
}

/// The target a file-form symlink holds (`file` opened for reading).
pub fn read(file: File, crypto: &Arc<ContentCrypto>, label: PathBuf) -> Result<Vec<u8>> {
    let contents = EncryptedFile::open(file, Arc::clone(crypto), label)?;
    let mut target = Vec::new();
    contents.read_to_end(&mut target)?;
    Ok(target)
}

/// Reads the target of the file-form symlink open as `fd` (any descriptor,
/// `O_PATH` included).
pub fn read_at(fd: BorrowedFd, crypto: &Arc<ContentCrypto>) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let file = File::open(&path).context(|| "opening a symlink".to_string())?;
    read(file, crypto, PathBuf::from(path))
}
