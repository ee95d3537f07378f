//! Copying a whole tree into a volume: `encrypt` (from a plaintext
//! directory) and `rotate-key --reencrypt` (from another volume). Keeps
//! everything a restore needs: contents (holes stay holes), modes, owners,
//! times, `user.` extended attributes (re-sealed for the new file), hard
//! links, symlinks, fifos, sockets and device nodes.
//!
//! The source is read through `tree` (never through a symlink, every file
//! checked to be the one listed); the destination is written relative to
//! directory descriptors the copy itself created.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};

use crate::content::EncryptedFile;
use crate::error::{IoContext, Result, VolumeError};
use crate::names::{DirKey, GiveTo, Names};
use crate::tree::{self, Root, Visit, Visitor};
use crate::volume::name_error;
use crate::volume::Volume;
use crate::xattrs::{self, Owner, XattrSealer};

/// Where the plaintext comes from.
pub enum Source<'a> {
    /// A plaintext directory.
    Plain,
    /// Another volume's backing directory, opened with its key.
    Volume(&'a Volume),
}

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub files: u64,
    pub bytes: u64,
    /// Entries whose owner could not be kept (not running as root).
    pub owners_not_kept: u64,
}

/// Bytes read and written per step.
const CHUNK: usize = 1 << 20;

/// Copies the tree under `source_root` into `dest` (an empty volume).
/// `progress` hears of every chunk of plaintext bytes copied. The
/// destination root keeps its own owner, mode and times (a re-encryption
/// gives it the old root's with `keep_metadata` once nobody else can
/// reach it by name; `encrypt` keeps a new volume private).
pub fn copy_tree(
    source_root: &Path,
    source: Source,
    dest: &Volume,
    progress: &mut dyn FnMut(u64),
) -> Result<Copied> {
    let dest_root = dest.open_root()?;
    // A volume's own directory, not whatever its name leads to by now; a
    // plaintext tree's top never through a symlink (the caller resolves
    // the path it was given first): whoever can write its parent could
    // point one anywhere.
    let source_dir = match &source {
        Source::Volume(volume) => volume.open_root()?,
        Source::Plain => {
            crate::remove::open_existing_dir_at(rustix::fs::CWD, source_root, source_root)?
        }
    };
    let (root_kind, source_names, source_key) = match &source {
        Source::Plain => (Root::Plain, None, DirKey::Plain),
        Source::Volume(v) => {
            let names = Arc::clone(v.names());
            let key = names
                .dir_key(source_dir.as_fd())
                .map_err(|e| name_error(e, source_root))?;
            (Root::Volume(names.mode()), Some(names), key)
        }
    };
    let dest_key = dest
        .names()
        .dir_key(dest_root.as_fd())
        .map_err(|e| name_error(e, dest.backing()))?;
    // As root, who the volume's own files at the top are made for: a
    // copied volume's owner (a re-encryption hands the new volume to
    // whoever had the old), or the owner of the directory a plain tree is
    // copied into (a user's empty directory; a new one stays root's).
    let (top_dir, shown) = match &source {
        Source::Volume(_) => (source_dir.as_fd(), source_root),
        Source::Plain => (dest_root.as_fd(), dest.backing()),
    };
    let top_owner = crate::lock::owner_to_give_to(top_dir)
        .map(GiveTo::user)
        .map_err(|e| VolumeError::io(format!("examining {}", shown.display()), e))?;
    let mut copier = Copier {
        source_sealer: match &source {
            Source::Plain => None,
            Source::Volume(v) => Some(XattrSealer::new(v.crypto())),
        },
        source,
        source_names,
        dest,
        dest_sealer: XattrSealer::new(dest.crypto()),
        dirs: vec![Level {
            // The directory `dest_root` is, not a second look-up by path.
            fd: rustix::io::fcntl_dupfd_cloexec(&dest_root, 0)
                .map_err(|e| VolumeError::io("opening the new volume", e.into()))?,
            source_key,
            dest_key,
            dest_path: PathBuf::new(),
            owner: top_owner,
        }],
        dest_root,
        links: HashMap::new(),
        as_root: rustix::process::geteuid().is_root(),
        owners_not_kept: std::cell::Cell::new(0),
        buf: vec![0u8; CHUNK],
        copied: Copied::default(),
        progress,
    };
    tree::walk_in(&source_dir, root_kind, &mut copier)
        .map_err(|e| VolumeError::io(format!("copying {}", source_root.display()), e))?;
    let root = copier.dirs.pop().ok_or_else(|| {
        VolumeError::io(
            "copying",
            io::Error::other("invariant: the root stays on the stack"),
        )
    })?;
    copier.copy_xattrs(&source_dir, &root.fd, Owner::Other, Owner::Other)?;
    rustix::fs::fsync(&root.fd).map_err(|e| VolumeError::io("syncing the new volume", e.into()))?;
    Ok(Copied {
        owners_not_kept: copier.owners_not_kept.get(),
        ..copier.copied
    })
}

/// One destination directory on the current path.
struct Level {
    fd: OwnedFd,
    /// Key of the source directory's names (to read them).
    source_key: DirKey,
    /// Key of this directory's names (to write them).
    dest_key: DirKey,
    /// This directory, relative to the destination root, in backing names.
    dest_path: PathBuf,
    /// Who the volume's own files made in this directory (id record, long
    /// names' files) are given to.
    owner: GiveTo,
}

struct Copier<'a, 'p> {
    source: Source<'a>,
    source_names: Option<Arc<Names>>,
    source_sealer: Option<XattrSealer>,
    dest: &'a Volume,
    dest_sealer: XattrSealer,
    /// The destination directories on the current path; the last is where
    /// the current entry goes.
    dirs: Vec<Level>,
    dest_root: OwnedFd,
    /// Source (device, inode) of multiply linked files → where the first
    /// copy went, relative to the destination root.
    /// Where the first link of each multiply linked source file was copied
    /// to (relative to the destination's root), and its inode there.
    links: HashMap<(u64, u64), FirstLink>,
    as_root: bool,
    owners_not_kept: std::cell::Cell<u64>,
    buf: Vec<u8>,
    copied: Copied,
    progress: &'p mut dyn FnMut(u64),
}

impl Visitor for Copier<'_, '_> {
    fn entry(&mut self, visit: &Visit) -> io::Result<()> {
        let result = match visit.kind() {
            FileType::Directory => self.enter_dir(visit),
            FileType::RegularFile if self.source_file_form(visit) => self.copy_symlink(visit),
            FileType::RegularFile => self.copy_file(visit),
            FileType::Symlink => self.copy_symlink(visit),
            _ => self.copy_special(visit),
        };
        result.map_err(|e| io::Error::other(format!("{}: {e}", visit.relative.display())))
    }

    fn leave_dir(&mut self, visit: &Visit) -> io::Result<()> {
        let dir = self
            .dirs
            .pop()
            .ok_or_else(|| io::Error::other("invariant: every entered directory is on the stack"))?
            .fd;
        let source = visit.open(OFlags::RDONLY | OFlags::DIRECTORY)?;
        self.copy_xattrs(&source, &dir, Owner::Other, Owner::Other)
            .map_err(io::Error::other)?;
        self.finish_node(&dir, None, visit.stat)?;
        rustix::fs::fsync(&dir)?;
        Ok(())
    }
}

impl Copier<'_, '_> {
    fn level(&self) -> Result<&Level> {
        self.dirs.last().ok_or_else(|| {
            VolumeError::io(
                "copying",
                io::Error::other("invariant: the root stays on the stack"),
            )
        })
    }

    fn here(&self) -> io::Result<&OwnedFd> {
        self.dirs
            .last()
            .map(|level| &level.fd)
            .ok_or_else(|| io::Error::other("invariant: the root stays on the stack"))
    }

    /// The plaintext name of `visit` (read through the source's names) and
    /// the entry it gets in the destination directory (a long name's file
    /// written first).
    fn dest_entry(&self, visit: &Visit) -> Result<(OsString, OsString)> {
        let level = self.level()?;
        let in_root = self.dirs.len() == 1;
        let plain = match &self.source_names {
            None => visit.name.to_os_string(),
            Some(names) => match names.decode(visit.dir, &level.source_key, visit.name, in_root) {
                Some(decoded) => decoded.map_err(|e| name_error(e, visit.relative))?,
                None => {
                    return Err(VolumeError::io(
                        "copying",
                        io::Error::other("invariant: the walk hides the volume's own files"),
                    ))
                }
            },
        };
        let entry = self
            .dest
            .names()
            .create_entry(
                level.fd.as_fd(),
                &level.dest_key,
                &plain,
                in_root,
                level.owner,
            )
            .map_err(|e| name_error(e, visit.relative))?;
        Ok((plain, entry))
    }

    fn enter_dir(&mut self, visit: &Visit) -> Result<()> {
        let (_, entry) = self.dest_entry(visit)?;
        let level = self.level()?;
        rustix::fs::mkdirat(&level.fd, &entry, Mode::from_raw_mode(0o700))
            .map_err(|e| VolumeError::io("creating a directory", e.into()))?;
        let dir = rustix::fs::openat(
            &level.fd,
            &entry,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| VolumeError::io("opening a new directory", e.into()))?;
        // As root, what goes on inside is done by name (the id record, the
        // owners of special files): only in a directory that is root's
        // alone, never in one someone put in its place between the mkdir
        // and the open.
        if self.as_root {
            let made = rustix::fs::fstat(&dir)
                .map_err(|e| VolumeError::io("examining a new directory", e.into()))?;
            if !crate::lock::is_roots_alone(&made) {
                return Err(VolumeError::io(
                    format!(
                        "{}",
                        self.dest
                            .backing()
                            .join(&level.dest_path)
                            .join(&entry)
                            .display()
                    ),
                    io::Error::other(
                        "replaced by another user's directory while it was being made",
                    ),
                ));
            }
        }
        // As root, the directory's own files are made for the owner it
        // will have (its source's), as everything else it holds.
        let owner = GiveTo::user(
            self.as_root
                .then_some((visit.stat.st_uid, visit.stat.st_gid)),
        );
        let dest_key = self
            .dest
            .names()
            .init_dir(dir.as_fd(), owner)
            .map_err(|e| name_error(e, visit.relative))?;
        let source_key = match &self.source_names {
            None => DirKey::Plain,
            Some(names) => {
                let source = visit
                    .open(OFlags::RDONLY | OFlags::DIRECTORY)
                    .map_err(|e| VolumeError::io("opening the source", e))?;
                names
                    .dir_key(source.as_fd())
                    .map_err(|e| name_error(e, visit.relative))?
            }
        };
        let dest_path = level.dest_path.join(&entry);
        self.dirs.push(Level {
            fd: dir,
            owner,
            source_key,
            dest_key,
            dest_path,
        });
        Ok(())
    }

    fn copy_file(&mut self, visit: &Visit) -> Result<()> {
        let key = (visit.stat.st_dev, visit.stat.st_ino);
        let (_, entry) = self.dest_entry(visit)?;
        if visit.stat.st_nlink > 1 {
            // Fields borrowed one by one: the first link changes as it is used.
            if let (Some(first), Some(level)) = (self.links.get_mut(&key), self.dirs.last()) {
                return link_again(&self.dest_root, first, &level.fd, &entry)
                    .map_err(|e| VolumeError::io("linking", e));
            }
        }
        let level = self.level()?;
        let dest_path = level.dest_path.join(&entry);
        let here = &level.fd;
        let created = rustix::fs::openat(
            here,
            &entry,
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| VolumeError::io("creating a file", e.into()))?;
        let label = self.dest.backing().join(&dest_path);
        let to = EncryptedFile::create(
            File::from(created),
            std::sync::Arc::clone(self.dest.crypto()),
            label,
        )?;
        let from = visit
            .open(OFlags::RDONLY)
            .map_err(|e| VolumeError::io("opening the source", e))?;
        let source_owner = match &self.source {
            Source::Plain => {
                self.copy_plain(&from, &to)?;
                Owner::Other
            }
            Source::Volume(volume) => {
                let label = volume.backing().join(visit.relative);
                let from = EncryptedFile::open(
                    from.try_clone()
                        .context(|| "duplicating a descriptor".to_string())?,
                    std::sync::Arc::clone(volume.crypto()),
                    label,
                )?;
                self.copy_encrypted(&from, &to)?;
                Owner::File(from.file_id()?)
            }
        };
        let dest_owner = Owner::File(to.file_id()?);
        self.copy_xattrs(&from, to.backing(), source_owner, dest_owner)?;
        // Set-sticky on a regular file marks a file-form symlink: kept only
        // where it means that in the source.
        let source_mode = match &self.source_names {
            Some(names) => names.mode(),
            None => crate::names::NameMode::Plaintext,
        };
        let mut stat = *visit.stat;
        if !crate::symlink_file::is_file_form(source_mode, &stat) {
            stat.st_mode &= !libc::S_ISVTX;
        }
        self.finish_node(to.backing(), None, &stat)
            .context(|| "keeping owner, mode and times".to_string())?;
        to.sync(false)?;
        if visit.stat.st_nlink > 1 {
            // Seen once the copy is closed: nothing changes it after.
            let kept = rustix::io::dup(to.backing())
                .map_err(|e| VolumeError::io("examining a copied file", e.into()))?;
            drop(to);
            let made = rustix::fs::fstat(&kept)
                .map_err(|e| VolumeError::io("examining a copied file", e.into()))?;
            self.links.insert(key, FirstLink::seen(dest_path, &made));
        }
        self.copied.files += 1;
        Ok(())
    }

    /// Data regions of a plaintext file (holes stay holes).
    fn copy_plain(&mut self, from: &File, to: &EncryptedFile) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let size = from
            .metadata()
            .context(|| "examining the source".to_string())?
            .len();
        let mut at = 0;
        while at < size {
            let data = match rustix::fs::seek(from, rustix::fs::SeekFrom::Data(at)) {
                Ok(data) => data,
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => at,
            };
            let hole = rustix::fs::seek(from, rustix::fs::SeekFrom::Hole(data)).unwrap_or(size);
            let mut offset = data;
            while offset < hole.min(size) {
                let want = ((hole.min(size) - offset) as usize).min(CHUNK);
                let n = from
                    .read_at(&mut self.buf[..want], offset)
                    .context(|| "reading the source".to_string())?;
                if n == 0 {
                    break;
                }
                to.write_at(offset, &self.buf[..n])?;
                offset += n as u64;
                self.count(n as u64);
            }
            at = hole.max(offset).max(data + 1);
        }
        to.set_len(size)
    }

    /// Data regions of an encrypted file (holes stay holes).
    fn copy_encrypted(&mut self, from: &EncryptedFile, to: &EncryptedFile) -> Result<()> {
        let size = from.len()?;
        let mut at = 0;
        while let Some(data) = from.seek_data(at)? {
            let hole = from.seek_hole(data)?.unwrap_or(size);
            let mut offset = data;
            while offset < hole {
                let want = ((hole - offset) as usize).min(CHUNK);
                let n = from.read_at(offset, &mut self.buf[..want])?;
                if n == 0 {
                    break;
                }
                to.write_at(offset, &self.buf[..n])?;
                offset += n as u64;
                self.count(n as u64);
            }
            at = hole.max(data + 1);
        }
        to.set_len(size)
    }

    fn count(&mut self, bytes: u64) {
        self.copied.bytes += bytes;
        (self.progress)(bytes);
    }

    /// Copies the `user.` attributes of `from` onto `to`, opening each value
    /// as the source volume sealed it (or taking it as plaintext) and
    /// sealing it for the destination.
    fn copy_xattrs(
        &self,
        from: &impl AsFd,
        to: &impl AsFd,
        source_owner: Owner,
        dest_owner: Owner,
    ) -> Result<()> {
        let names = match list_xattrs(from) {
            Ok(names) => names,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
            Err(e) => return Err(VolumeError::io("listing extended attributes", e)),
        };
        for name in names.iter().filter(|n| xattrs::is_user(n)) {
            // Never dropped silently: a volume made without them refuses.
            if !self.dest.config().xattrs() {
                return Err(VolumeError::io(
                    format!(
                        "extended attribute {name:?}: the volume does not store extended attributes \
                         (make it with --xattrs)"
                    ),
                    io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                ));
            }
            let stored = get_xattr(from, name)
                .map_err(|e| VolumeError::io("reading an extended attribute", e))?;
            let value = match &self.source_sealer {
                None => stored,
                Some(sealer) => sealer.open(source_owner, name, stored).map_err(|_| {
                    VolumeError::io(
                        format!("extended attribute {name:?}"),
                        io::Error::other("authentication failed"),
                    )
                })?,
            };
            let sealed = self.dest_sealer.seal(dest_owner, name, &value);
            rustix::fs::fsetxattr(to, name, &sealed, rustix::fs::XattrFlags::CREATE)
                .map_err(|e| VolumeError::io("writing an extended attribute", e.into()))?;
        }
        Ok(())
    }

    /// Owner (as root), mode and times of a copied node: `fd` itself, or
    /// the entry `name` in directory `fd` for a symlink or special file,
    /// with what was made there to know it by.
    fn finish_node(
        &self,
        fd: &impl AsFd,
        name: Option<(&OsStr, Made<'_>)>,
        stat: &Stat,
    ) -> io::Result<()> {
        if !self.as_root
            && (stat.st_uid, stat.st_gid)
                != (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                )
        {
            self.owners_not_kept.set(self.owners_not_kept.get() + 1);
        }
        let times = times_of(stat);
        let owner = (
            Some(rustix::fs::Uid::from_raw(stat.st_uid)),
            Some(rustix::fs::Gid::from_raw(stat.st_gid)),
        );
        let mode = Mode::from_raw_mode(stat.st_mode & 0o7777);
        match name {
            None => keep_metadata(fd.as_fd(), stat)?,
            Some((name, what)) => {
                // Whoever can write this directory (the copy's top one may be
                // a user's own while root copies) could swap the entry just
                // made for a symlink, a hard link to a file of root's, or a
                // node made earlier: the entry is opened once, without
                // following, checked to be what was just made, and changed
                // through that descriptor only.
                let kind = FileType::from_raw_mode(stat.st_mode);
                let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let node = rustix::fs::openat(fd, name, flags, Mode::empty())?;
                if !what.is(&node, stat)? {
                    return Err(io::Error::other(
                        "replaced by another file while it was being made",
                    ));
                }
                if self.as_root {
                    rustix::fs::chownat(&node, "", owner.0, owner.1, AtFlags::EMPTY_PATH)?;
                }
                if kind != FileType::Symlink {
                    // fchmodat takes no empty path; the descriptor's /proc
                    // link resolves to the inode checked above.
                    let path = format!("/proc/self/fd/{}", node.as_raw_fd());
                    rustix::fs::chmod(path.as_str(), mode)?;
                }
                let at_node = AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW;
                rustix::fs::utimensat(&node, "", &times, at_node)?;
            }
        }
        Ok(())
    }

    /// Whether `visit` is a symlink stored as a file in the source volume.
    fn source_file_form(&self, visit: &Visit) -> bool {
        self.source_names
            .as_ref()
            .is_some_and(|names| crate::symlink_file::is_file_form(names.mode(), visit.stat))
    }

    fn copy_symlink(&mut self, visit: &Visit) -> Result<()> {
        let stored = match (&self.source, self.source_file_form(visit)) {
            (Source::Volume(volume), true) => {
                let file = visit
                    .open(OFlags::RDONLY)
                    .map_err(|e| VolumeError::io("opening a symlink", e))?;
                let label = volume.backing().join(visit.relative);
                let sealed = crate::symlink_file::read(file, volume.crypto(), label)?;
                std::os::unix::ffi::OsStringExt::from_vec(sealed)
            }
            _ => visit
                .read_link()
                .map_err(|e| VolumeError::io("reading a symlink", e))?,
        };
        let target = match &self.source_names {
            None => stored,
            Some(names) => names
                .open_target(&stored)
                .map_err(|e| name_error(e, visit.relative))?,
        };
        let sealed = match self.dest.names().seal_target(&target) {
            Ok(sealed) => Some(sealed),
            Err(crate::names::NameError::TooLong) => None,
            Err(e) => return Err(name_error(e, visit.relative)),
        };
        let (_, entry) = self.dest_entry(visit)?;
        let here = self.here().map_err(|e| VolumeError::io("copying", e))?;
        match sealed {
            Some(sealed) => {
                rustix::fs::symlinkat(sealed.as_os_str(), here, &entry)
                    .map_err(|e| VolumeError::io("creating a symlink", e.into()))?;
                // A symlink's status (the source may hold it as a file).
                let mut stat = *visit.stat;
                stat.st_mode = libc::S_IFLNK | 0o777;
                let made = Made::Symlink(sealed.as_os_str());
                self.finish_node(here, Some((&entry, made)), &stat)
                    .context(|| "keeping the symlink's owner and times".to_string())
            }
            None => {
                let sealed = self.dest.names().seal_target_any(&target);
                let made = crate::symlink_file::create(
                    here.as_fd(),
                    &entry,
                    std::os::unix::ffi::OsStrExt::as_bytes(sealed.as_os_str()),
                    self.dest.crypto(),
                )?;
                if self.as_root {
                    rustix::fs::fchown(
                        made.backing(),
                        Some(rustix::fs::Uid::from_raw(visit.stat.st_uid)),
                        Some(rustix::fs::Gid::from_raw(visit.stat.st_gid)),
                    )
                    .map_err(|e| VolumeError::io("keeping a symlink's owner", e.into()))?;
                }
                let mut stat = *visit.stat;
                stat.st_mode = libc::S_IFREG | crate::symlink_file::FILE_FORM_MODE;
                self.finish_node(made.backing(), None, &stat)
                    .context(|| "keeping the symlink's times".to_string())
            }
        }
    }

    fn copy_special(&mut self, visit: &Visit) -> Result<()> {
        if self.as_root && is_device(visit.kind()) {
            refuse_foreign_device(visit)?;
        }
        let (_, entry) = self.dest_entry(visit)?;
        let here = self.here().map_err(|e| VolumeError::io("copying", e))?;
        // Mode 0 until finish_node has checked it: how it knows the node.
        rustix::fs::mknodat(
            here,
            &entry,
            visit.kind(),
            Mode::empty(),
            visit.stat.st_rdev,
        )
        .map_err(|e| VolumeError::io("creating a special file", e.into()))?;
        self.finish_node(here, Some((&entry, Made::Special)), visit.stat)
            .context(|| "keeping the special file's owner, mode and times".to_string())
    }
}

fn is_device(kind: FileType) -> bool {
    matches!(kind, FileType::BlockDevice | FileType::CharacterDevice)
}

/// Root re-creates a device node only if it is root's on a file system
/// that honours device nodes: a user's FUSE mount or a mounted image of
/// theirs (mounted `nodev`) can show any device, owned by anyone, and a
/// copy of it made by root would be a live one.
fn refuse_foreign_device(visit: &Visit) -> Result<()> {
    let nodev = rustix::fs::fstatvfs(visit.dir)
        .map_err(|e| VolumeError::io(format!("examining {}", visit.relative.display()), e.into()))?
        .f_flag
        .contains(rustix::fs::StatVfsMountFlags::NODEV);
    if nodev || visit.stat.st_uid != 0 {
        return Err(VolumeError::io(
            visit.relative.display().to_string(),
            io::Error::other(
                "a device node that is not root's, or on a file system mounted nodev, which \
                 root does not re-create (remove it from the source, or make it again in \
                 the volume by hand)",
            ),
        ));
    }
    Ok(())
}

/// Gives the node open as `fd` the mode, times and (as root) owner of
/// `stat`.
pub fn keep_metadata(fd: BorrowedFd<'_>, stat: &Stat) -> io::Result<()> {
    if rustix::process::geteuid().is_root() {
        let uid = rustix::fs::Uid::from_raw(stat.st_uid);
        let gid = rustix::fs::Gid::from_raw(stat.st_gid);
        rustix::fs::fchown(fd, Some(uid), Some(gid))?;
    }
    // After chown, which clears set-user-id bits.
    rustix::fs::fchmod(fd, Mode::from_raw_mode(stat.st_mode & 0o7777))?;
    Ok(rustix::fs::futimens(fd, &times_of(stat))?)
}

fn times_of(stat: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: stat.st_atime,
            tv_nsec: stat.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: stat.st_mtime,
            tv_nsec: stat.st_mtime_nsec as _,
        },
    }
}

/// The first link of a multiply linked file, as copied: its path under
/// the destination's root and what it was when last seen there.
struct FirstLink {
    path: PathBuf,
    ino: u64,
    ctime: (i64, i64),
}

impl FirstLink {
    fn seen(path: PathBuf, stat: &Stat) -> FirstLink {
        FirstLink {
            path,
            ino: stat.st_ino,
            ctime: (stat.st_ctime, stat.st_ctime_nsec as i64),
        }
    }
}

/// Links `first` again as `name` in `dir`. The directories on the way may
/// be users' by now, so the path is walked from `root` one directory at a
/// time without following symlinks, and the file checked to be the one
/// the copy made (inode and change time: an inode number alone may be
/// reused) before it is linked, through its descriptor.
fn link_again(
    root: &OwnedFd,
    first: &mut FirstLink,
    dir: &OwnedFd,
    name: &OsStr,
) -> io::Result<()> {
    use std::path::Component;
    let replaced = || io::Error::other("replaced while the copy went on");
    let mut components = first.path.components().peekable();
    let mut at = rustix::io::dup(root)?;
    let mut node = None;
    while let Some(component) = components.next() {
        let Component::Normal(part) = component else {
            return Err(replaced());
        };
        if components.peek().is_some() {
            at = crate::remove::open_subdir(at.as_fd(), part)?;
        } else {
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            node = Some(rustix::fs::openat(&at, part, flags, Mode::empty())?);
        }
    }
    let node = node.ok_or_else(replaced)?;
    let found = rustix::fs::fstat(&node)?;
    if (found.st_ino, (found.st_ctime, found.st_ctime_nsec as i64)) != (first.ino, first.ctime) {
        return Err(replaced());
    }
    crate::create::link_fd_at(node.as_fd(), dir.as_fd(), name)?;
    // A link changes the change time: what the next one must find.
    *first = FirstLink::seen(first.path.clone(), &rustix::fs::fstat(&node)?);
    Ok(())
}

/// What the copy has just made by name, as `finish_node` must find it.
#[derive(Clone, Copy)]
enum Made<'a> {
    /// A symlink with this (stored) target.
    Symlink(&'a OsStr),
    /// A special file of the source's kind and device, made with mode 0
    /// (its mode comes after the check).
    Special,
}

impl Made<'_> {
    /// Whether `node` (opened with `O_PATH|O_NOFOLLOW`) is what was made
    /// for `source`: this process's, one link, and the target or the
    /// kind, device and empty mode it was made with.
    fn is(self, node: &OwnedFd, source: &Stat) -> io::Result<bool> {
        let found = rustix::fs::fstat(node)?;
        // Root's own; another user's may show as someone else on some file
        // systems (sshfs, CIFS with uid=, NFS mapping to nobody), and only
        // root's copy has anything to fear from a swapped node.
        let euid = rustix::process::geteuid();
        if (euid.is_root() && found.st_uid != 0) || found.st_nlink != 1 {
            return Ok(false);
        }
        let kind = FileType::from_raw_mode(found.st_mode);
        Ok(match self {
            Made::Symlink(target) => {
                kind == FileType::Symlink
                    && rustix::fs::readlinkat(node, "", Vec::new())?.as_bytes()
                        == std::os::unix::ffi::OsStrExt::as_bytes(target)
            }
            Made::Special => {
                let device = matches!(kind, FileType::BlockDevice | FileType::CharacterDevice);
                kind == FileType::from_raw_mode(source.st_mode)
                    && found.st_mode & 0o7777 == 0
                    && (!device || found.st_rdev == source.st_rdev)
            }
        })
    }
}

fn list_xattrs(fd: &impl AsFd) -> io::Result<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStringExt;
    let len = rustix::fs::flistxattr_query(fd)?;
    let mut all = vec![0u8; len];
    let got = rustix::fs::flistxattr(fd, &mut all[..])?;
    all.truncate(got);
    Ok(all
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| std::ffi::OsString::from_vec(n.to_vec()))
        .collect())
}

fn get_xattr(fd: &impl AsFd, name: &OsStr) -> io::Result<Vec<u8>> {
    let len = rustix::fs::fgetxattr_query(fd, name)?;
    let mut value = vec![0u8; len];
    let got = rustix::fs::fgetxattr(fd, name, &mut value[..])?;
    value.truncate(got);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::testing::new_volume;

    fn open_node(dir: &Path, name: &str) -> OwnedFd {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::open(dir.join(name), flags, Mode::empty()).expect("open")
    }

    // Protects: as root, the volume's own files at the top of a plain
    // tree's copy are for the destination directory's owner: a user's
    // empty directory gets hers, a new volume (root's) stays root's alone,
    // whoever owns the tree copied; below, each directory's owner's.
    #[test]
    fn roots_copy_makes_the_volumes_files_for_their_directorys_owner() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        std::fs::create_dir_all(source.join("sub")).expect("mkdir");
        for at in [source.clone(), source.join("sub")] {
            std::fs::write(at.join("l".repeat(200)), b"long").expect("write");
        }
        std::os::unix::fs::chown(&source, Some(65534), Some(65534)).expect("chown");
        std::os::unix::fs::chown(source.join("sub"), Some(65533), Some(65533)).expect("chown");
        let hers = dir.path().join("hers");
        std::fs::create_dir(&hers).expect("mkdir");
        std::os::unix::fs::chown(&hers, Some(65532), Some(65532)).expect("chown");
        for (dest, top) in [(dir.path().join("new"), 0), (hers, 65532)] {
            let volume = new_volume(&dest, 1);
            copy_tree(&source, Source::Plain, &volume, &mut |_| {}).expect("copy");
            let owners = |at: &Path| -> Vec<u32> {
                std::fs::read_dir(at)
                    .expect("list")
                    .map(|e| e.expect("entry").path())
                    .filter(|p| p.extension().is_some_and(|x| x == "name" || x == "dirid"))
                    .map(|p| rustix::fs::lstat(&p).expect("stat").st_uid)
                    .collect()
            };
            assert_eq!(owners(&dest), vec![top; 2], "{}", dest.display());
            let sub = volume.backing_path(Path::new("sub")).expect("sub");
            assert_eq!(
                owners(&dest.join(sub)),
                vec![65533; 2],
                "{}",
                dest.display()
            );
        }
    }

    // Protects: a copy goes only into the directory its destination
    // volume was made in: put a symlink (to anywhere) in its place after
    // `init`, and the copy refuses before writing a thing.
    #[test]
    fn a_copy_goes_only_where_its_volume_was_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        std::fs::create_dir(&source).expect("mkdir");
        std::fs::write(source.join("f"), b"data").expect("write");
        let dest = dir.path().join("dest");
        let volume = new_volume(&dest, 1);
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::fs::rename(&dest, dir.path().join("moved")).expect("move");
        std::os::unix::fs::symlink(&elsewhere, &dest).expect("plant");

        let copied = copy_tree(&source, Source::Plain, &volume, &mut |_| {});

        assert!(copied.is_err(), "{copied:?}");
        assert_eq!(std::fs::read_dir(&elsewhere).expect("list").count(), 0);
    }

    // Protects: as root, a plaintext tree's top is never read through a
    // symlink (whoever can write its parent could point it at another
    // user's files, which the copy would then disclose to whoever knows
    // the volume's key), and a device node that is not root's is never
    // re-created (a user's FUSE mount or image can show any device).
    #[test]
    fn root_copies_neither_through_a_symlink_nor_a_users_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("source");
        std::fs::create_dir(&source).expect("mkdir");
        std::fs::write(source.join("f"), b"data").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&source, &link).expect("symlink");
        let volume = new_volume(&dir.path().join("a"), 1);
        let through_link = copy_tree(&link, Source::Plain, &volume, &mut |_| {});
        let refused = matches!(&through_link, Err(e) if e.to_string().contains("symlink"));
        assert!(refused, "{through_link:?}");

        if !rustix::process::geteuid().is_root() {
            return;
        }
        let device = source.join("device");
        let char_device = FileType::CharacterDevice;
        let null = rustix::fs::makedev(1, 3);
        rustix::fs::mknodat(rustix::fs::CWD, &device, char_device, Mode::RUSR, null)
            .expect("mknod");
        std::os::unix::fs::lchown(&device, Some(65534), Some(65534)).expect("chown");
        let volume = new_volume(&dir.path().join("b"), 1);
        let copied = copy_tree(&source, Source::Plain, &volume, &mut |_| {});
        let refused = matches!(&copied, Err(e) if e.to_string().contains("device node"));
        assert!(refused, "{copied:?}");
    }

    // Protects: a hard link is made again only to the file the copy made,
    // never through a directory swapped for a symlink meanwhile (a file
    // outside the destination must not gain a link inside it).
    #[test]
    fn a_second_link_never_reaches_outside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root_path = dir.path().join("root");
        let outside = dir.path().join("outside");
        for d in [root_path.join("sub"), outside.clone()] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(root_path.join("sub/f"), b"copied").expect("write");
        std::fs::write(outside.join("f"), b"secret").expect("write");
        let ino = |p: &Path| rustix::fs::stat(p).expect("stat").st_ino;
        let open = |p: &Path| {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            rustix::fs::open(p, flags, Mode::empty()).expect("open")
        };
        let root = open(&root_path);
        let seen = |path: &Path| rustix::fs::stat(path).expect("stat");
        let mut first = FirstLink::seen(PathBuf::from("sub/f"), &seen(&root_path.join("sub/f")));

        link_again(&root, &mut first, &root, OsStr::new("again")).expect("link");
        link_again(&root, &mut first, &root, OsStr::new("third")).expect("link");
        assert_eq!(ino(&root_path.join("third")), ino(&root_path.join("sub/f")));

        // The same name, inode number and change time, but through a symlink.
        std::fs::rename(root_path.join("sub"), dir.path().join("moved")).expect("move");
        std::os::unix::fs::symlink(&outside, root_path.join("sub")).expect("plant");
        let mut outside_first = FirstLink::seen(PathBuf::from("sub/f"), &seen(&outside.join("f")));
        assert!(link_again(&root, &mut outside_first, &root, OsStr::new("leak")).is_err());
        assert!(!root_path.join("leak").exists());

        // The same path and inode number, another change time (a file
        // made in its place, reusing the number).
        std::fs::remove_file(root_path.join("sub")).expect("unplant");
        std::fs::rename(dir.path().join("moved"), root_path.join("sub")).expect("back");
        first.ctime.1 += 1;
        assert!(link_again(&root, &mut first, &root, OsStr::new("reused")).is_err());
    }

    // Protects: finish_node knows the node the copy made from anything an
    // attacker who can write the directory could put in its place: another
    // kind, a node made earlier (its mode already set), a second link, or
    // a symlink with another target.
    #[test]
    fn a_node_is_known_by_what_was_made() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| dir.path().join(name);
        let fifo = FileType::Fifo;
        rustix::fs::mknodat(rustix::fs::CWD, at("fifo"), fifo, Mode::empty(), 0).expect("mkfifo");
        std::os::unix::fs::symlink("target", at("link")).expect("symlink");
        let source = rustix::fs::lstat(at("fifo")).expect("stat");

        assert!(Made::Special
            .is(&open_node(dir.path(), "fifo"), &source)
            .expect("examine"));
        assert!(!Made::Special
            .is(&open_node(dir.path(), "link"), &source)
            .expect("examine"));
        let target = OsStr::new("target");
        assert!(Made::Symlink(target)
            .is(&open_node(dir.path(), "link"), &source)
            .expect("examine"));
        let other = OsStr::new("elsewhere");
        assert!(!Made::Symlink(other)
            .is(&open_node(dir.path(), "link"), &source)
            .expect("examine"));

        rustix::fs::chmod(at("fifo"), Mode::from_raw_mode(0o600)).expect("chmod");
        assert!(!Made::Special
            .is(&open_node(dir.path(), "fifo"), &source)
            .expect("examine"));
        rustix::fs::chmod(at("fifo"), Mode::empty()).expect("chmod");
        std::fs::hard_link(at("fifo"), at("second")).expect("link");
        assert!(!Made::Special
            .is(&open_node(dir.path(), "fifo"), &source)
            .expect("examine"));
    }
}
