//! Making a new encrypted file appear whole: created anonymously
//! (`O_TMPFILE`), given its header (and contents, for a file-form symlink),
//! then linked under its name. A crash at any point leaves either no entry
//! or a complete one, never a name without a header. Where the backing file
//! system has no `O_TMPFILE`, the file is created under its name and the
//! header written next (a crash between leaves a zero-byte file, which
//! `fsck --repair` gives a header).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
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
/// on it before its name appears. Returns it, over a read-write descriptor.
pub fn create_whole(
    dir: BorrowedFd,
    entry: &OsStr,
    mode: Mode,
    crypto: &Arc<ContentCrypto>,
    fill: impl FnOnce(&EncryptedFile) -> Result<()>,
) -> std::result::Result<EncryptedFile, CreateError> {
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
            // Others may write it before its header is in: `create` cuts
            // whatever they wrote.
            let contents =
                EncryptedFile::create(File::from(fd), Arc::clone(crypto), PathBuf::from(entry))?;
            fill(&contents)?;
            return Ok(contents);
        }
        Err(e) => return Err(io("creating a file", e)),
    };
    // Nobody else can reach an anonymous file: it is empty.
    let contents =
        EncryptedFile::create_new(File::from(fd), Arc::clone(crypto), PathBuf::from(entry))?;
    fill(&contents)?;
    link_fd_at(contents.backing().as_fd(), dir, entry).map_err(|e| match e {
        rustix::io::Errno::EXIST => CreateError::Exists,
        e => io("linking a new file", e),
    })?;
    Ok(reopen_by_name(dir, entry, contents))
}

/// Links the file open as `fd` (an `O_TMPFILE` or an `O_PATH` descriptor)
/// as `name` in `dir`. `linkat` with `AT_EMPTY_PATH` needs
/// `CAP_DAC_READ_SEARCH`; the descriptor's `/proc` link, followed, names
/// the same inode for anyone.
pub(crate) fn link_fd_at(
    fd: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> rustix::io::Result<()> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::linkat(
        rustix::fs::CWD,
        path.as_str(),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )
}

/// A descriptor from `O_TMPFILE` keeps its anonymous name in
/// `/proc/self/fd` even after `linkat`, and that name is what logs and
/// error messages show. Reopening through the new entry gives a descriptor
/// that names the file; if the entry is no longer this file (someone
/// replaced it in between), the anonymous descriptor is kept.
fn reopen_by_name(dir: BorrowedFd, entry: &OsStr, contents: EncryptedFile) -> EncryptedFile {
    let named = rustix::fs::openat(
        dir,
        entry,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let (Ok(named), Ok(ours)) = (named, rustix::fs::fstat(contents.backing())) else {
        return contents;
    };
    match rustix::fs::fstat(&named) {
        Ok(st) if st.st_dev == ours.st_dev && st.st_ino == ours.st_ino => {
            contents.reached_through(File::from(named))
        }
        _ => contents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Backend;
    use crate::keys::SecretKey;
    use std::os::fd::AsFd;

    // Protects: a new file appears under its name with its header and what
    // `fill` wrote, read back through a fresh open; the contents returned
    // are reached through the name (messages name the file); a taken name
    // is refused and left as it was.
    #[test]
    fn a_new_file_appears_whole_under_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dir_path = dir.path().canonicalize().expect("canonical");
        let crypto = Arc::new(ContentCrypto::new(
            SecretKey::from_bytes([5; 32]),
            Backend::Ring,
        ));
        let at = File::open(&dir_path).expect("open dir");
        let made = create_whole(
            at.as_fd(),
            OsStr::new("new"),
            Mode::from_raw_mode(0o600),
            &crypto,
            |contents| contents.write_at(0, b"filled"),
        )
        .unwrap_or_else(|e| panic!("create: {e:?}"));
        // Read back through a descriptor opened by the name, not the
        // anonymous one it was made through.
        assert_eq!(made.backing_path(), dir_path.join("new"));
        drop(made);

        let path = dir_path.join("new");
        let again = EncryptedFile::open(
            File::open(&path).expect("open"),
            crypto.clone(),
            path.clone(),
        )
        .expect("reopen");
        assert!(again.damage().is_none(), "{:?}", again.damage());
        let mut read = vec![0u8; 6];
        assert_eq!(again.read_at(0, &mut read).expect("read"), 6);
        assert_eq!(&read, b"filled");

        let taken = create_whole(
            at.as_fd(),
            OsStr::new("new"),
            Mode::from_raw_mode(0o600),
            &crypto,
            |_| Ok(()),
        );
        assert!(
            matches!(taken, Err(CreateError::Exists)),
            "{:?}",
            taken.err()
        );
        let reread = EncryptedFile::open(
            File::open(&path).expect("open"),
            crypto.clone(),
            path.clone(),
        )
        .expect("reopen");
        assert_eq!(
            reread.len().expect("len"),
            6,
            "the taken name is left alone"
        );
    }
}
