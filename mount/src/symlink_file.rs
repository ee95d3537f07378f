//! Symlinks whose sealed target does not fit in a backing symlink (targets
//! of more than 3043 bytes with encrypted names; PATH_MAX allows 4095).
//! Such a symlink is stored as an encrypted file holding the target, marked
//! by the set-sticky bit on a regular file (which Linux otherwise ignores,
//! and which the mount never lets a program set on a regular file). The
//! mark says "symlink" cheaply, from `stat`; the contents are the target's
//! sealed form (as a backing symlink would hold it, under the symlink-target
//! key), inside the file's own encryption. The mark is not authenticated,
//! but flipping it onto another file gains nothing: that file's contents do
//! not open as a sealed target, so `readlink` fails.

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

/// The longest contents a file-form symlink may have: the sealed form of a
/// 4095-byte target is 5,498 bytes.
pub const MAX_CONTENTS: u64 = 8192;

/// Creates the file-form symlink `entry` in `dir` holding `sealed` (the
/// target's sealed form); it appears whole (see `crate::create`).
pub fn create(
    dir: BorrowedFd,
    entry: &std::ffi::OsStr,
    sealed: &[u8],
    crypto: &Arc<ContentCrypto>,
) -> Result<EncryptedFile> {
    let made = crate::create::create_whole(
        dir,
        entry,
        Mode::from_raw_mode(FILE_FORM_MODE),
        crypto,
        |contents| {
            contents.write_at(0, sealed)?;
            contents.sync(false)
        },
    );
    let contents = match made {
        Ok(contents) => contents,
        Err(crate::create::CreateError::Exists) => {
            return Err(VolumeError::io(
                "creating a symlink",
                std::io::Error::from_raw_os_error(libc::EEXIST),
            ))
        }
        Err(crate::create::CreateError::Volume(e)) => return Err(e),
    };
    // The mode again: creation masks it with the umask.
    rustix::fs::fchmod(contents.backing(), Mode::from_raw_mode(FILE_FORM_MODE))
        .map_err(|e| VolumeError::io("marking a symlink", e.into()))?;
    Ok(contents)
}

/// The sealed target a file-form symlink holds (`file` opened for reading);
/// refuses contents longer than any sealed target.
pub fn read(file: File, crypto: &Arc<ContentCrypto>, label: PathBuf) -> Result<Vec<u8>> {
    let contents = EncryptedFile::open(file, Arc::clone(crypto), label)?;
    if contents.len()? > MAX_CONTENTS {
        return Err(VolumeError::BadName {
            dir: contents.backing_path(),
            what: "a symlink longer than any sealed target".into(),
        });
    }
    let mut sealed = Vec::new();
    contents.read_to_end(&mut sealed)?;
    Ok(sealed)
}

/// Reads the sealed target of the file-form symlink open as `fd` (any
/// descriptor, `O_PATH` included).
pub fn read_at(fd: BorrowedFd, crypto: &Arc<ContentCrypto>) -> Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let file = File::open(&path).context(|| "opening a symlink".to_string())?;
    read(file, crypto, PathBuf::from(path))
}
