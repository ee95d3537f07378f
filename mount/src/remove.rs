//! Deleting directory trees through descriptors, for commands that may run
//! as root over directories whose parents a user can write: a name is
//! looked up once, relative to a descriptor, never followed through a
//! symlink, and nothing but directories is ever opened (a FIFO would block,
//! a device would be opened as root).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// Removes the entry `name` of the directory `parent`, with everything
/// under it when it is a directory. `dev` is the file system the tree is
/// on: a directory of another (a mount point moved in) is refused, never
/// emptied. An entry already gone counts as removed.
pub fn remove_tree_at(parent: BorrowedFd<'_>, name: &CStr, dev: u64) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = match open_subdir(parent, name) {
        Ok(dir) => dir,
        // Gone meanwhile: removed all the same.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if rustix::fs::fstat(&dir)?.st_dev != dev {
        return Err(io::Error::other(format!(
            "{} is on another file system (a mount point?); not removed",
            name.to_string_lossy()
        )));
    }
    remove_contents(dir.as_fd(), dev, &[])?;
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes everything in the directory `dir` but the entries named in
/// `except`.
pub fn remove_contents(dir: BorrowedFd<'_>, dev: u64, except: &[&str]) -> io::Result<()> {
    let mut names: Vec<CString> = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let bytes = name.to_bytes();
        if bytes != b"." && bytes != b".." && !except.iter().any(|e| e.as_bytes() == bytes) {
            names.push(name.to_owned());
        }
    }
    for name in names {
        remove_tree_at(dir, &name, dev)?;
    }
    Ok(())
}

/// The subdirectory `name` of `parent`, opened without following a
/// symlink and without blocking.
pub fn open_subdir(parent: BorrowedFd<'_>, name: impl rustix::path::Arg) -> io::Result<OwnedFd> {
    let flags =
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?)
}

/// The directory `name` in `parent` (`shown` in messages), never through a
/// symlink and without blocking; `None` if there is nothing by that name.
pub fn open_dir_at(
    parent: BorrowedFd<'_>,
    name: impl rustix::path::Arg,
    shown: &Path,
) -> crate::error::Result<Option<OwnedFd>> {
    use crate::error::VolumeError;
    match open_subdir(parent, name) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        // O_DIRECTORY|O_NOFOLLOW on a symlink gives ENOTDIR.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
            Err(VolumeError::io(
                shown.display().to_string(),
                io::Error::other(
                    "not a directory (a symlink is not followed here: give the directory it \
                     points to)",
                ),
            ))
        }
        Err(e) => Err(VolumeError::io(format!("opening {}", shown.display()), e)),
    }
}

/// Like `open_dir_at`, for a directory that must be there.
pub fn open_existing_dir_at(
    parent: BorrowedFd<'_>,
    name: impl rustix::path::Arg,
    shown: &Path,
) -> crate::error::Result<OwnedFd> {
    open_dir_at(parent, name, shown)?.ok_or_else(|| {
        crate::error::VolumeError::io(
            format!("opening {}", shown.display()),
            io::Error::from(io::ErrorKind::NotFound),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path) -> OwnedFd {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        rustix::fs::open(path, flags, Mode::empty()).expect("open")
    }

    // Protects: a tree holding what a user can leave in a volume (a FIFO,
    // a socket, a file nobody may open, a symlink to a directory outside)
    // is removed without blocking, opening or following any of them.
    #[test]
    fn a_tree_goes_and_nothing_it_points_to() {
        let top = tempfile::tempdir().expect("tempdir");
        let tree = top.path().join("tree");
        let outside = top.path().join("outside");
        std::fs::create_dir_all(tree.join("sub/deeper")).expect("mkdir");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("kept"), b"kept").expect("write");
        let sub = tree.join("sub");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            sub.join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::RUSR,
            0,
        )
        .expect("mkfifo");
        std::os::unix::net::UnixListener::bind(sub.join("socket")).expect("socket");
        std::fs::write(sub.join("deeper/locked"), b"x").expect("write");
        rustix::fs::chmod(sub.join("deeper/locked"), Mode::empty()).expect("chmod");
        std::os::unix::fs::symlink(&outside, sub.join("link")).expect("symlink");
        let dev = rustix::fs::stat(top.path()).expect("stat").st_dev;

        remove_tree_at(open(top.path()).as_fd(), c"tree", dev).expect("remove");

        assert!(!tree.exists());
        assert_eq!(std::fs::read(outside.join("kept")).expect("read"), b"kept");
    }

    // Protects: a directory on another file system is refused, not emptied.
    #[test]
    fn another_file_system_is_refused() {
        let top = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(top.path().join("tree")).expect("mkdir");
        std::fs::write(top.path().join("tree/kept"), b"kept").expect("write");
        let other_dev = rustix::fs::stat(top.path()).expect("stat").st_dev + 1;

        let removed = remove_tree_at(open(top.path()).as_fd(), c"tree", other_dev);

        assert!(removed.is_err());
        assert!(top.path().join("tree/kept").exists());
    }
}
