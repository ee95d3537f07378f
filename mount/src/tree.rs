//! Walking a directory tree that someone else may be changing, without ever
//! being redirected out of it.
//!
//! Every directory is opened relative to its parent's descriptor, one name
//! at a time, with `O_NOFOLLOW`: a symlink planted anywhere is refused, never
//! followed, so a walk cannot leave the tree. Every entry is listed with
//! `fstatat(AT_SYMLINK_NOFOLLOW)`, and what is later opened is checked to be
//! that same file (device and inode): a name swapped for another file
//! between the listing and the open is an error, not a silent substitution.
//! Only the descriptors of the directories on the current path are open, so
//! a tree of any size walks in bounded descriptors and memory.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use crate::names::NameMode;

/// One entry of the walk.
pub struct Visit<'a> {
    /// Path relative to the walked root.
    pub relative: &'a Path,
    /// The directory that holds it (opened by the walk).
    pub dir: BorrowedFd<'a>,
    /// Its name in `dir`.
    pub name: &'a OsStr,
    /// Its status as listed (symlinks not followed).
    pub stat: &'a Stat,
}

impl Visit<'_> {
    pub fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    /// Opens the entry (never through a symlink) and checks that it is the
    /// file that was listed.
    pub fn open(&self, flags: OFlags) -> io::Result<File> {
        let fd = open_checked(self.dir, self.name, flags, self.stat, self.relative)?;
        Ok(File::from(fd))
    }

    /// The target of a symlink entry.
    pub fn read_link(&self) -> io::Result<OsString> {
        let target = rustix::fs::readlinkat(self.dir, self.name, Vec::new())?;
        Ok(OsString::from_vec(target.into_bytes()))
    }
}

/// What a walk calls, in order: every entry (a directory before its
/// children), and every directory again once its children are done.
pub trait Visitor {
    fn entry(&mut self, visit: &Visit) -> io::Result<()>;
    fn leave_dir(&mut self, _visit: &Visit) -> io::Result<()> {
        Ok(())
    }
}

/// Which entries a walk leaves out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// A volume's backing directory, its names stored as given: the
    /// volume's own files (`crate::names::is_internal`) are not part of
    /// the tree.
    Volume(NameMode),
    /// Any other directory: everything.
    Plain,
}

/// Walks the tree under `root`, names sorted in each directory. `root` is
/// the caller's choice and may be reached through a symlink; nothing below
/// it is.
pub fn walk(root: &Path, kind: Root, visitor: &mut dyn Visitor) -> io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rustix::fs::open(root, flags, Mode::empty()).map_err(|e| with_path(e.into(), root))?;
    walk_dir(&fd, PathBuf::new(), kind, visitor)
}

/// Like `walk`, from the directory already open as `root`.
pub fn walk_in(root: &OwnedFd, kind: Root, visitor: &mut dyn Visitor) -> io::Result<()> {
    walk_dir(root, PathBuf::new(), kind, visitor)
}

/// Sums what `walk` would visit: regular files and their bytes.
pub fn total_bytes(root: &Path, kind: Root) -> io::Result<(u64, u64)> {
    struct Sum(u64, u64);
    impl Visitor for Sum {
        fn entry(&mut self, visit: &Visit) -> io::Result<()> {
            if visit.kind() == FileType::RegularFile {
                self.0 += 1;
                self.1 += u64::try_from(visit.stat.st_size).unwrap_or(0);
            }
            Ok(())
        }
    }
    let mut sum = Sum(0, 0);
    walk(root, kind, &mut sum)?;
    Ok((sum.0, sum.1))
}

/// Deepest directory nesting walked: each level holds a descriptor and a
/// stack frame.
pub const MAX_DEPTH: usize = 1024;

fn walk_dir(
    dir: &OwnedFd,
    relative: PathBuf,
    kind: Root,
    visitor: &mut dyn Visitor,
) -> io::Result<()> {
    let in_root = relative.as_os_str().is_empty();
    if relative.components().count() > MAX_DEPTH {
        return Err(io::Error::other(format!(
            "{}: directories nested deeper than {MAX_DEPTH} levels",
            relative.display()
        )));
    }
    for name in sorted_names(dir, &relative)? {
        if let Root::Volume(mode) = kind {
            if crate::names::is_internal(mode, &name, in_root) {
                continue;
            }
        }
        let path = relative.join(&name);
        let stat = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| with_path(e.into(), &path))?;
        let visit = Visit {
            relative: &path,
            dir: dir.as_fd(),
            name: &name,
            stat: &stat,
        };
        visitor.entry(&visit)?;
        if visit.kind() == FileType::Directory {
            let sub = open_checked(dir.as_fd(), &name, dir_flags(), &stat, &path)?;
            walk_dir(&sub, path.clone(), kind, visitor)?;
            visitor.leave_dir(&visit)?;
        }
    }
    Ok(())
}

fn sorted_names(dir: &OwnedFd, relative: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    let mut listing = rustix::fs::Dir::read_from(dir).map_err(|e| with_path(e.into(), relative))?;
    while let Some(entry) = listing.read() {
        let entry = entry.map_err(|e| with_path(e.into(), relative))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    names.sort();
    Ok(names)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// `openat` of one name with `O_NOFOLLOW`, then a check that the file opened
/// is the one listed as `expected`.
fn open_checked(
    dir: BorrowedFd,
    name: &OsStr,
    flags: OFlags,
    expected: &Stat,
    shown: &Path,
) -> io::Result<OwnedFd> {
    // Never blocking: a FIFO swapped in for a listed file would otherwise
    // hold the walk until someone opened it for writing.
    let fd = rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| with_path(e.into(), shown))?;
    let now = rustix::fs::fstat(&fd).map_err(|e| with_path(e.into(), shown))?;
    if (now.st_dev, now.st_ino) != (expected.st_dev, expected.st_ino) {
        return Err(io::Error::other(format!(
            "{} was replaced while the tree was being walked; run the command again",
            shown.display()
        )));
    }
    Ok(fd)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    let shown = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    io::Error::new(e.kind(), format!("{}: {e}", shown.display()))
}
