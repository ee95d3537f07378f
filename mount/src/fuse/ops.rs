//! The file-system operations, each returning `Result<_, Errno>`. Backing
//! files are reached through the inode table's `O_PATH` descriptors; every
//! name goes through the `NameCodec`; every regular file's bytes go through
//! its shared `EncryptedFile`.

use std::cell::RefCell;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, MutexGuard, Weak};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, TimeOrNow};
use rustix::fs::{AtFlags, FileType as RawType, Mode, OFlags, Timespec, Timestamps, CWD};

use super::attr;
use super::errno::{io, sys, volume_errno_at};
use super::held::HeldWriter;
use super::kept::Kept;
use super::listing::Streams;
use super::nodes::{open_dir, Node, NodeTable, Pinned, ROOT_INO};
use super::prune::PruneSignal;
use super::stats::MountStats;
use super::xattr::{XattrCipher, XattrError};
use crate::content::{ContentCrypto, EncryptedFile};
use crate::create::{self, CreateError};
use crate::error::VolumeError;
use crate::journal::{Journal, Mtime};
use crate::names::{DirKey, GiveTo, NameError, NameMode, Names, MKDIR_PREFIX};
use crate::symlink_file;
use crate::xattrs::Owner;

pub type XattrReply = Vec<u8>;

/// Who asked: new files are given to the caller, as a local file system would.
#[derive(Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl From<&fuser::Request> for Caller {
    fn from(req: &fuser::Request) -> Self {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
        }
    }
}

/// The attribute changes of one `setattr`.
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    /// The change time the kernel keeps for the file (sent with the times
    /// it writes back).
    pub ctime: Option<SystemTime>,
}

/// What became of an entry offered to a reply (`list_from`).
enum Fed {
    Added,
    /// Left out (removed since it was read).
    Skipped,
    /// The reply is full: not added.
    Full,
}

impl Fed {
    /// What a reply's `add`, which answers whether it was full, did with
    /// an entry.
    fn by_reply(full: bool) -> Fed {
        match full {
            true => Fed::Full,
            false => Fed::Added,
        }
    }
}

/// One entry of a directory listing (`list_from`).
struct DirItem {
    name: OsString,
    /// Its name in the backing directory.
    backing: OsString,
    ino: u64,
    /// As the backing directory lists it (`listed_kind`).
    kind: FileType,
    /// The position after it: the backing directory's own cookie (stable
    /// while entries come and go on Linux's file systems and NFS), which
    /// the kernel hands back to go on from there.
    next: u64,
    /// Read before a name was removed from the directory: it may be gone,
    /// and is left out if it is (`listed_kind`; a listing with attributes
    /// finds it gone when it looks it up).
    maybe_gone: bool,
}

pub struct Ops {
    nodes: NodeTable,
    crypto: Arc<ContentCrypto>,
    /// Keeps durable blocks through torn rewrites; `None` when read-only.
    journal: Option<Arc<Journal>>,
    names: Arc<Names>,
    xattrs: XattrCipher,
    /// The volume stores `user.*` attributes (`init --xattrs`).
    xattrs_enabled: bool,
    read_only: bool,
    /// Running as root: new files are chowned to their creator.
    as_root: bool,
    /// Files holding rewrites back, written within a second (`held`).
    held: HeldWriter,
    /// The files the kernel opened by itself, by inode (`kept`).
    kept: Kept,
    /// Listings parked between READDIR requests (`listing`).
    listings: Streams,
    /// The kernel keeps regular files' times itself (write-back caching
    /// granted at `init`) and writes them back with a SETATTR.
    kernel_keeps_times: bool,
    /// What `chronicle stats` reads (`stats`).
    stats: MountStats,
}

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Drops the set-user-id bit, and the set-group-id bit where group execute
/// is set (otherwise it marks mandatory locking), as the kernel does when
/// an unprivileged user writes or truncates.
fn kill_suidgid(file: &File) -> Result<(), Errno> {
    let stat = rustix::fs::fstat(file).map_err(sys)?;
    let mode = stat.st_mode & 0o7777;
    let mut cleared = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        cleared &= !libc::S_ISGID;
    }
    if cleared != mode {
        rustix::fs::fchmod(file, Mode::from_raw_mode(cleared)).map_err(sys)?;
    }
    Ok(())
}

/// The mode a regular file may have: never set-sticky, which marks a
/// file-form symlink (and which Linux ignores on regular files anyway).
fn file_mode(kind: RawType, mode: u32) -> u32 {
    if kind == RawType::RegularFile {
        mode & !libc::S_ISVTX
    } else {
        mode
    }
}

/// How many backing descriptors the inode table may keep open: a quarter
/// of the open-file limit, the rest left to open files and listings.
fn descriptor_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let soft = limit.current.unwrap_or(1 << 20);
    usize::try_from(soft / 4).unwrap_or(usize::MAX)
}

fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A time as a journal commit records it (`utimensat` sets the same).
fn journal_mtime(at: SystemTime) -> Mtime {
    let set = timespec(TimeOrNow::SpecificTime(at));
    Mtime {
        secs: set.tv_sec,
        nanos: set.tv_nsec as u32,
    }
}

fn timespec(t: TimeOrNow) -> Timespec {
    match t {
        TimeOrNow::Now => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        TimeOrNow::SpecificTime(at) => {
            let (secs, nanos) = match at.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                // Before 1970: whole seconds down, nanoseconds up from there.
                Err(before) => {
                    let d = before.duration();
                    match d.subsec_nanos() {
                        0 => (-(d.as_secs() as i64), 0),
                        n => (-(d.as_secs() as i64) - 1, i64::from(1_000_000_000 - n)),
                    }
                }
            };
            Timespec {
                tv_sec: secs,
                tv_nsec: nanos as _,
            }
        }
    }
}

/// Who a node the mount makes is given to.
type NodeOwner = (rustix::fs::Uid, rustix::fs::Gid);

const OMIT: Timespec = Timespec {
    tv_sec: 0,
    tv_nsec: rustix::fs::UTIME_OMIT,
};

impl Ops {
    pub fn new(
        root: OwnedFd,
        crypto: Arc<ContentCrypto>,
        names: Arc<Names>,
        journal: Option<Arc<Journal>>,
        xattrs_enabled: bool,
        max_inodes: usize,
        prune: Arc<PruneSignal>,
    ) -> std::io::Result<Self> {
        let xattrs = XattrCipher::new(&crypto);
        let held = HeldWriter::start()?;
        let nodes = NodeTable::new(root, descriptor_budget(), max_inodes, prune)?;
        let kept = Kept::new(&nodes);
        Ok(Ops {
            nodes,
            read_only: journal.is_none(),
            journal,
            crypto,
            names,
            xattrs,
            xattrs_enabled,
            as_root: rustix::process::geteuid().is_root(),
            held,
            kept,
            kernel_keeps_times: false,
            listings: Streams::default(),
            stats: MountStats::new(rustix::process::getuid().as_raw()),
        })
    }

    /// The mount's figures of itself (`chronicle stats`).
    pub fn stats(&self) -> &MountStats {
        &self.stats
    }

    /// The kernel granted write-back caching: it keeps regular files'
    /// times and sends them back (`setattr`).
    pub fn set_kernel_keeps_times(&mut self, keeps: bool) {
        self.kernel_keeps_times = keeps;
    }

    // ---- names and nodes -------------------------------------------------

    /// Whether remembered files cost no descriptor while unused (see
    /// `nodes`).
    pub fn reopens_by_handle(&self) -> bool {
        self.nodes.reopens_by_handle()
    }

    /// What the pruning thread picks the inode table's entries with.
    pub fn picker(&self) -> super::nodes::Picker {
        self.nodes.picker()
    }

    fn node(&self, ino: u64) -> Result<Pinned, Errno> {
        self.nodes.get(ino)
    }

    /// A volume error as an errno, logged (integrity failures) with the
    /// file's path inside the mount beside its backing path.
    fn errno_of(&self, e: VolumeError) -> Errno {
        let plain = match &e {
            VolumeError::AuthenticationFailed { file, .. }
            | VolumeError::BadFileHeader { file, .. } => {
                self.stats.authentication_failed();
                self.plain_of(file)
            }
            VolumeError::BadName { .. } => {
                self.stats.authentication_failed();
                None
            }
            _ => None,
        };
        volume_errno_at(e, plain.as_deref())
    }

    /// The path inside the mount of the backing file at `backing` (for
    /// messages), decoding each name through its directory's key.
    fn plain_of(&self, backing: &std::path::Path) -> Option<std::path::PathBuf> {
        let root = self.node(ROOT_INO).ok()?;
        let root_path = std::fs::read_link(root.proc_path()).ok()?;
        let relative = backing.strip_prefix(&root_path).ok()?;
        let parts: Vec<_> = relative.components().collect();
        let mut dir: Option<OwnedFd> = None;
        let mut out = std::path::PathBuf::new();
        for (i, part) in parts.iter().enumerate() {
            let at = dir.as_ref().map_or(root.fd.as_fd(), |d| d.as_fd());
            let key = self.names.dir_key(at).ok()?;
            let name = self
                .names
                .decode(at, &key, part.as_os_str(), i == 0)?
                .ok()?;
            if i + 1 < parts.len() {
                let next = rustix::fs::openat(
                    at,
                    part.as_os_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .ok()?;
                dir = Some(next);
            }
            out.push(name);
        }
        Some(out)
    }

    /// The name key of directory `dir`, read once.
    fn dir_key(&self, dir: &Pinned) -> Result<DirKey, Errno> {
        if let Some(key) = dir.dir_key.get() {
            return Ok(*key);
        }
        let key = self
            .names
            .dir_key(dir.fd.as_fd())
            .map_err(|e| self.name_errno(e, dir))?;
        Ok(*dir.dir_key.get_or_init(|| key))
    }

    /// A name that cannot be translated, as the errno the program sees;
    /// a forged one is logged, like a forged block.
    fn name_errno(&self, e: NameError, dir: &Pinned) -> Errno {
        match e {
            NameError::Reserved => Errno::EPERM,
            NameError::TooLong => Errno::ENAMETOOLONG,
            NameError::Io(e) => io(e),
            NameError::Forged(what) => {
                self.stats.authentication_failed();
                log::error!(
                    "authentication failed: a name in {} ({what:?})",
                    dir.backing_path().display()
                );
                Errno::EIO
            }
        }
    }

    /// The backing entry of `name` in `parent` (for lookups).
    fn backing_name(&self, parent: &Pinned, name: &OsStr) -> Result<OsString, Errno> {
        let key = self.dir_key(parent)?;
        self.names
            .entry(&key, name, parent.ino == ROOT_INO)
            .map_err(|e| self.name_errno(e, parent))
    }

    /// The backing entry of `name` in `parent`, for an entry about to be
    /// made (a long name's file is written first).
    fn new_backing_name(&self, parent: &Pinned, name: &OsStr) -> Result<OsString, Errno> {
        let key = self.dir_key(parent)?;
        self.names
            .create_entry(
                parent.fd.as_fd(),
                &key,
                name,
                parent.ino == ROOT_INO,
                GiveTo::DirOwner,
            )
            .map_err(|e| self.name_errno(e, parent))
    }

    /// After the entry `name` left `parent`: its long name's file goes too.
    fn forget_backing_name(&self, parent: &Pinned, name: &OsStr) {
        if let Ok(key) = self.dir_key(parent) {
            self.names.remove_entry(parent.fd.as_fd(), &key, name);
        }
    }

    fn stat_attr(&self, node: &Pinned) -> Result<FileAttr, Errno> {
        let stat = rustix::fs::fstat(&node.fd).map_err(sys)?;
        Ok(self.attr_of(node, &stat))
    }

    /// The kind a program sees: a file-form symlink is a symlink.
    fn kind_of(&self, stat: &rustix::fs::Stat) -> RawType {
        if symlink_file::is_file_form(self.names.mode(), stat) {
            RawType::Symlink
        } else {
            RawType::from_raw_mode(stat.st_mode)
        }
    }

    /// What the program sees of `node`'s backing file (whose status is
    /// `stat`): plaintext sizes (a file's contents, a symlink's target).
    fn attr_of(&self, node: &Pinned, stat: &rustix::fs::Stat) -> FileAttr {
        let mut attr = attr::from_stat(node.ino, stat);
        if symlink_file::is_file_form(self.names.mode(), stat) {
            // Its contents are the sealed target, as a symlink would hold it.
            attr.kind = FileType::Symlink;
            attr.perm = 0o777;
            attr.size = self.names.target_len(attr.size);
        } else if attr.kind == FileType::Symlink {
            attr.size = self.names.target_len(attr.size);
        } else if attr.kind == FileType::RegularFile && attr.size == 0 && self.damaged(node, stat) {
            // The kernel opens files without asking the mount (`fs::open`)
            // and reads nothing of a file it believes empty: a file cut
            // back to its header, or short of one, is shown one byte long
            // so that reading it reaches the mount and fails there.
            attr.size = 1;
        }
        attr
    }

    /// Whether `node`'s file, which looks empty, is damaged as a whole:
    /// shorter than a header (the mount never makes one), or with a header
    /// that is damaged or claims blocks. A file that cannot be opened to
    /// tell is taken as empty: with write-back caching the kernel keeps the
    /// size it is first told, and a wrong byte would be read as a zero.
    fn damaged(&self, node: &Pinned, stat: &rustix::fs::Stat) -> bool {
        if u64::try_from(stat.st_size).unwrap_or(0) < crate::layout::HEADER_LEN as u64 {
            return true;
        }
        match self.content(node) {
            Ok(content) => {
                let damaged = content.damage().is_some();
                Self::let_go(node, content);
                damaged
            }
            Err(_) => false,
        }
    }

    /// Looks up `backing` in `parent`, counting one kernel lookup.
    fn lookup_backing(
        &self,
        parent: &Pinned,
        backing: &OsStr,
    ) -> Result<(Pinned, FileAttr), Errno> {
        let fd = rustix::fs::openat(
            &parent.fd,
            backing,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)?;
        let stat = rustix::fs::fstat(&fd).map_err(sys)?;
        let node = self.nodes.remember(fd, &stat, self.kind_of(&stat))?;
        let attr = self.attr_of(&node, &stat);
        Ok((node, attr))
    }

    /// Looks up a listed entry, counting one kernel lookup: by its status
    /// alone when the table holds its file open (`NodeTable::remember_known`),
    /// as `rm -rf` finds every entry it lists a second time.
    fn lookup_listed(&self, dir: &Pinned, item: &DirItem) -> Result<(Pinned, FileAttr), Errno> {
        if self.nodes.holds_descriptor(item.ino) {
            let stat = rustix::fs::statat(&dir.fd, &item.backing, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(sys)?;
            if let Some(node) = self.nodes.remember_known(item.ino, &stat) {
                let attr = self.attr_of(&node, &stat);
                return Ok((node, attr));
            }
        }
        self.lookup_backing(dir, &item.backing)
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let parent = self.node(parent)?;
        let backing = match self.backing_name(&parent, name) {
            Err(e) if e == Errno::EPERM => return Err(Errno::ENOENT),
            other => other?,
        };
        self.lookup_backing(&parent, &backing).map(|(_, attr)| attr)
    }

    pub fn forget(&self, ino: u64, count: u64) {
        // Once forgotten, no request can name the inode: its kept file goes,
        // before the entry does (`NodeTable::forget`). A LOOKUP of the file
        // meanwhile finds this node, and its next use waits on the node's
        // lock for the let-go (which may write and sync) instead of opening
        // the backing file a second time beside it.
        if let Some(node) = self.nodes.forget(ino, count) {
            if let Some(content) = self.kept.remove(&node) {
                Self::let_go(&node, content);
            }
            Self::wait_until_let_go(&node);
            self.nodes.remove_forgotten(&node);
        }
    }

    /// Waits (a little) for the last user of `node`'s file to let go of it:
    /// one that took it out of the kept files for room just before the
    /// FORGET, or a request still finishing. Once the entry is gone, a
    /// LOOKUP makes a new one, whose first use would open the backing file
    /// beside the old contents (which may still write rewrites they held).
    fn wait_until_let_go(node: &Node) {
        for _ in 0..200 {
            let slot = node.content.lock().unwrap_or_else(|p| p.into_inner());
            if slot.strong_count() == 0 {
                return;
            }
            drop(slot);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        log::warn!(
            "inode {}: its contents are still in use after it was forgotten",
            node.ino
        );
    }

    pub fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        self.stat_attr(&node)
    }

    /// Who a node made for `caller` in `parent` must belong to, when it is
    /// not this process already: the caller, when we run as root, with the
    /// group a local file system gives it (the parent's when the parent is
    /// set-group-id, the caller's otherwise).
    fn owner_for(&self, caller: Caller, parent: &Pinned) -> Result<Option<NodeOwner>, Errno> {
        if !self.gives_away(caller) {
            return Ok(None);
        }
        Ok(self.owner_in(caller, self.inherited_group(parent)?))
    }

    /// `owner_for` where the parent's inherited group is known already.
    fn owner_in(&self, caller: Caller, inherited: Option<u32>) -> Option<NodeOwner> {
        self.gives_away(caller).then(|| {
            (
                rustix::fs::Uid::from_raw(caller.uid),
                rustix::fs::Gid::from_raw(inherited.unwrap_or(caller.gid)),
            )
        })
    }

    /// Whether what the mount makes for `caller` must be given to them:
    /// we run as root, and they are not root.
    fn gives_away(&self, caller: Caller) -> bool {
        self.as_root && (caller.uid != 0 || caller.gid != 0)
    }

    /// The group of `parent` when it is set-group-id: what new entries in
    /// it belong to (and new directories in it are set-group-id too).
    fn inherited_group(&self, parent: &Pinned) -> Result<Option<u32>, Errno> {
        let dir = rustix::fs::fstat(&parent.fd).map_err(sys)?;
        Ok((dir.st_mode & libc::S_ISGID != 0).then_some(dir.st_gid))
    }

    /// Gives a node the mount just made by name (a directory, special
    /// file or symlink) to its creator when we run as root, through the
    /// node's own descriptor, and only if it still looks like what was
    /// made: of the kind asked for, ours, and new: a directory empty but
    /// for the volume's id record, anything else with one name. Whoever can
    /// write the parent in BACKING could have put another of root's nodes
    /// at the name meanwhile (a hard link, or one renamed from beside it);
    /// that is refused with EIO, not given away. What is left: a FIFO,
    /// socket or symlink of root's that was already in that directory with
    /// one name (docs/SECURITY.md).
    fn chown_new(
        &self,
        owner: Option<NodeOwner>,
        node: &Pinned,
        kind: RawType,
    ) -> Result<(), Errno> {
        let Some((uid, gid)) = owner else {
            return Ok(());
        };
        let stat = rustix::fs::fstat(&node.fd).map_err(sys)?;
        let new = match kind {
            RawType::Directory => self.holds_only_records(node)?,
            _ => stat.st_nlink == 1,
        };
        let ours = stat.st_uid == rustix::process::geteuid().as_raw();
        if node.kind != kind || !ours || !new {
            log::error!(
                "{}: not the {kind:?} the mount just made for uid {} (found a {:?} of uid {} \
                 with {} link(s){}): replaced in the backing directory, or a backing file \
                 system that does not let root own what it makes; left as it is",
                node.backing_path().display(),
                uid.as_raw(),
                node.kind,
                stat.st_uid,
                stat.st_nlink,
                if new { "" } else { ", not new" },
            );
            return Err(Errno::EIO);
        }
        rustix::fs::chownat(&node.fd, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH).map_err(sys)
    }

    /// Whether the directory `node` holds nothing but the volume's own
    /// files (a new directory's id record).
    fn holds_only_records(&self, node: &Pinned) -> Result<bool, Errno> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = rustix::fs::openat(&node.fd, ".", flags, Mode::empty()).map_err(sys)?;
        Ok(self.only_internal_entries(&dir)?.is_some())
    }

    /// The entries of the directory open as `dir` when they are all the
    /// volume's own (id records, leftovers of interrupted operations);
    /// `None` as soon as one is not.
    fn only_internal_entries(&self, dir: &OwnedFd) -> Result<Option<Vec<OsString>>, Errno> {
        let mut internal = Vec::new();
        let mut listing = rustix::fs::Dir::read_from(dir).map_err(sys)?;
        while let Some(entry) = listing.read() {
            let entry = entry.map_err(sys)?;
            let raw = OsStr::from_bytes(entry.file_name().to_bytes());
            if raw == "." || raw == ".." {
                continue;
            }
            if !self.names.is_internal(raw, false) {
                return Ok(None);
            }
            internal.push(raw.to_os_string());
        }
        Ok(Some(internal))
    }

    /// Looks up a node of `kind` the mount just created by name and gives
    /// it to `owner` (`owner_for` its creator); the node is what the lookup
    /// found, so the owner, the reply's attributes and the inode all name
    /// one file.
    fn created(
        &self,
        parent: &Pinned,
        backing: &OsStr,
        kind: RawType,
        owner: Option<NodeOwner>,
    ) -> Result<FileAttr, Errno> {
        let (node, _) = self.lookup_backing(parent, backing)?;
        self.or_uncounted(&node, || {
            self.chown_new(owner, &node, kind)?;
            self.stat_attr(&node)
        })
    }

    /// The node of a file the mount just opened, from the descriptor itself
    /// (not its name, which someone writing BACKING could swap meanwhile),
    /// counting one kernel lookup.
    fn node_of_opened(&self, file: &File) -> Result<(Pinned, rustix::fs::Stat), Errno> {
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let fd = rustix::fs::open(path.as_str(), OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(sys)?;
        let stat = rustix::fs::fstat(&fd).map_err(sys)?;
        Ok((self.nodes.remember(fd, &stat, self.kind_of(&stat))?, stat))
    }

    // ---- the plaintext contents of regular files -------------------------

    /// The shared `EncryptedFile` of a regular file, opened on first use.
    fn content(&self, node: &Pinned) -> Result<Arc<EncryptedFile>, Errno> {
        self.content_with(node, None)
    }

    /// Like `content`, taking the contents of the same file that the
    /// caller just made (as `make_file` does) instead of opening them.
    fn content_with(
        &self,
        node: &Pinned,
        made: Option<EncryptedFile>,
    ) -> Result<Arc<EncryptedFile>, Errno> {
        if node.kind != RawType::RegularFile {
            return Err(Errno::EISDIR);
        }
        let mut slot = node.content.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = slot.upgrade() {
            return Ok(existing);
        }
        let path = node.proc_path();
        let content = match made {
            Some(made) => Ok(made),
            // The label is only a fallback for messages: `EncryptedFile`
            // names the file by its current path when it reports an error.
            None => self
                .open_backing(path.as_ref())
                .and_then(|file| EncryptedFile::open(file, Arc::clone(&self.crypto), path.into())),
        };
        let content = match &self.journal {
            Some(journal) => content.and_then(|c| c.guarded_by(journal)),
            None => content,
        };
        let content = Arc::new(content.map_err(|e| self.errno_of(e))?);
        *slot = Arc::downgrade(&content);
        Ok(content)
    }

    /// A descriptor of the backing file at `path` for its contents:
    /// read-write even for read-only opens, since with writeback caching
    /// the kernel writes through any handle, and a partial block is always
    /// read before it is rewritten.
    fn open_backing(&self, path: &std::path::Path) -> crate::error::Result<File> {
        let file = match self.read_only {
            true => File::open(path),
            false => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .or_else(|_| File::open(path)),
        };
        file.map_err(|e| VolumeError::io("opening a file's contents", e))
    }

    /// The contents a request on an open file works on, with their node:
    /// files have no handles (the kernel opens them by itself, `kept`), so
    /// they are found by inode number. The caller ends with `let_go`.
    fn file(&self, ino: u64) -> Result<(Arc<Node>, Arc<EncryptedFile>), Errno> {
        let node = self.nodes.entry(ino)?;
        if let Some(content) = self.kept.get(&node) {
            return Ok((node, content));
        }
        let content = self.content(&self.nodes.pin(&node)?)?;
        self.keep(&node, &content);
        Ok((node, content))
    }

    /// Adds `node`'s file to the kept files, letting go of what that
    /// displaces.
    fn keep(&self, node: &Arc<Node>, content: &Arc<EncryptedFile>) {
        for (old_node, old) in self.kept.keep(node, content) {
            Self::let_go(&old_node, old);
        }
    }

    /// Makes the new regular file `backing` in `parent`: an empty
    /// encrypted file, header included, given to its creator, all before
    /// it takes its name (`crate::create`), and kept open for its first
    /// write.
    fn make_file(
        &self,
        caller: Caller,
        parent: &Pinned,
        backing: &OsStr,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        let mode = Mode::from_raw_mode(file_mode(RawType::RegularFile, mode));
        let owner = self.owner_for(caller, parent)?;
        // A change of owner drops set-user-id and set-group-id, even done by
        // root; the creator asked for them on a file of their own.
        let special = Mode::SUID | Mode::SGID;
        let give_away = |file: &EncryptedFile| match owner {
            Some((uid, gid)) => rustix::fs::fchown(file.backing(), Some(uid), Some(gid))
                .and_then(|()| match mode.intersects(special) {
                    true => rustix::fs::fchmod(file.backing(), mode),
                    false => Ok(()),
                })
                .map_err(|e| VolumeError::io("giving a new file to its creator", e.into())),
            None => Ok(()),
        };
        let made = create::create_whole(parent.fd.as_fd(), backing, mode, &self.crypto, give_away)
            .map_err(|e| match e {
                CreateError::Exists => Errno::EEXIST,
                CreateError::Volume(e) => self.errno_of(e),
            })?;
        let (node, stat) = self.node_of_opened(made.backing())?;
        self.or_uncounted(&node, || {
            let content = self.content_with(&node, Some(made))?;
            self.keep(node.node(), &content);
            Self::let_go(&node, content);
            // Its status once whole: an empty file of the mount's own
            // making, neither damaged nor a symlink (`attr_of`).
            Ok(attr::from_stat(node.ino, &stat))
        })
    }

    /// Runs the rest of a request that counted a lookup of `node`. The
    /// lookup reaches the kernel only with a reply that succeeds; on any
    /// failure it is taken back, or the entry would wait for a FORGET that
    /// never comes.
    fn or_uncounted<T>(
        &self,
        node: &Pinned,
        rest: impl FnOnce() -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let done = rest();
        if done.is_err() {
            self.forget(node.ino, 1);
        }
        done
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32, reply: impl FnOnce(Result<&[u8], Errno>)) {
        let (node, content) = match self.file(ino) {
            Ok(found) => found,
            Err(e) => return reply(Err(e)),
        };
        READ_BUF.with_borrow_mut(|buf| {
            // Grown, never shrunk: zeroing again what a shorter read left
            // would cost a `memset` of every read.
            let size = size as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            let buf = &mut buf[..size];
            let read = content.read_at(offset, buf);
            // Let go before the reply, which may be the last thing this
            // mount ever does with the file.
            Self::let_go(&node, content);
            match read {
                Ok(n) => reply(Ok(&buf[..n])),
                Err(e) => reply(Err(self.errno_of(e))),
            }
        });
    }

    /// `kill_suidgid`: the writer lacks CAP_FSETID, so, as on a local file
    /// system, the file loses its set-user-id and set-group-id bits.
    pub fn write(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Result<(), Errno> {
        self.rewriting(ino, |content| {
            content
                .write_at(offset, data)
                .map_err(|e| self.errno_of(e))?;
            if kill_suidgid {
                self::kill_suidgid(content.backing())?;
            }
            Ok(())
        })
    }

    /// Runs `change` on the contents of the open file (`file`), then notes
    /// the file for the held-rewrite writer if it now holds blocks back,
    /// even after a failure (earlier batches of a write may be held).
    fn rewriting(
        &self,
        ino: u64,
        change: impl FnOnce(&EncryptedFile) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let (node, content) = self.file(ino)?;
        let changed = change(&content);
        self.held.note_if_holding(&node, &content);
        Self::let_go(&node, content);
        changed
    }

    /// Drops one user's `content` of `node`'s file; every user ends with
    /// this. Once nobody uses the file it is gone, but its memory stays
    /// while the node's `Weak` points at it, so the slot is emptied. The
    /// last user's drop writes what the file held back and syncs it; it
    /// runs under the slot's lock, so that an open meanwhile waits for it
    /// instead of opening the backing file a second time beside a closing
    /// one.
    fn let_go(node: &Node, content: Arc<EncryptedFile>) {
        Self::let_go_locked(
            node.content.lock().unwrap_or_else(|p| p.into_inner()),
            content,
        );
    }

    /// `let_go` with the node's content slot already locked.
    pub(super) fn let_go_locked(
        mut slot: MutexGuard<'_, Weak<EncryptedFile>>,
        content: Arc<EncryptedFile>,
    ) {
        drop(content);
        if slot.strong_count() == 0 {
            *slot = Weak::new();
        }
    }

    pub fn fsync(&self, ino: u64, datasync: bool) -> Result<(), Errno> {
        let (node, content) = self.file(ino)?;
        let synced = content.sync(datasync).map_err(|e| self.errno_of(e));
        Self::let_go(&node, content);
        synced
    }

    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> Result<(), Errno> {
        // Zeroing inside the file rewrites blocks, which may be held.
        self.rewriting(ino, |content| self.change_space(content, offset, len, mode))
    }

    fn change_space(
        &self,
        content: &EncryptedFile,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => {
                // Reserve the ciphertext space (so later writes cannot run
                // out of it), then grow the size unless asked not to; the
                // new range reads as zeros and takes no time to make.
                content.reserve(end).map_err(|e| self.errno_of(e))?;
                if !keep_size {
                    content.grow_to(end).map_err(|e| self.errno_of(e))?;
                }
                Ok(())
            }
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => content
                .punch_hole(offset, len)
                .map_err(|e| self.errno_of(e)),
            libc::FALLOC_FL_ZERO_RANGE => content
                .zero_range(offset, len, keep_size)
                .map_err(|e| self.errno_of(e)),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    pub fn lseek(&self, ino: u64, offset: i64, whence: i32) -> Result<i64, Errno> {
        let (node, content) = self.file(ino)?;
        let found = self.seek_in(&content, offset, whence);
        Self::let_go(&node, content);
        found
    }

    fn seek_in(&self, content: &EncryptedFile, offset: i64, whence: i32) -> Result<i64, Errno> {
        let size = content.len().map_err(|e| self.errno_of(e))?;
        let at = |found: Option<u64>| {
            found
                .and_then(|at| i64::try_from(at).ok())
                .ok_or(Errno::ENXIO)
        };
        let from = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        match whence {
            libc::SEEK_DATA => at(content.seek_data(from).map_err(|e| self.errno_of(e))?),
            libc::SEEK_HOLE => at(content.seek_hole(from).map_err(|e| self.errno_of(e))?),
            libc::SEEK_SET => Ok(offset),
            libc::SEEK_END => i64::try_from(size)
                .ok()
                .and_then(|size| size.checked_add(offset))
                .ok_or(Errno::EINVAL),
            _ => Err(Errno::EINVAL),
        }
    }

    // ---- attributes -------------------------------------------------------

    pub fn setattr(&self, caller: Caller, ino: u64, change: AttrChange) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        if let Some(size) = change.size {
            let (file_node, content) = self.file(ino)?;
            let truncated = content.set_len(size).map_err(|e| self.errno_of(e));
            // As on a local file system, a truncate by anyone but root
            // drops the set-user-id bit (and set-group-id on a group-
            // executable file), unless this same call sets the mode.
            let truncated =
                truncated.and_then(|()| match caller.uid != 0 && change.mode.is_none() {
                    true => kill_suidgid(content.backing()),
                    false => Ok(()),
                });
            Self::let_go(&file_node, content);
            truncated?;
        }
        if let Some(mode) = change.mode {
            if node.kind == RawType::Symlink {
                return Err(Errno::EOPNOTSUPP);
            }
            rustix::fs::chmodat(
                CWD,
                node.proc_path(),
                Mode::from_raw_mode(file_mode(node.kind, mode)),
                AtFlags::empty(),
            )
            .map_err(sys)?;
            // A file kept open read-only (a mount without root could not
            // open it for writing) is opened again at its next use, now
            // that its mode may allow writing.
            if let Some(content) = self.kept.get(node.node()) {
                let read_only = !content.writable();
                Self::let_go(&node, content);
                if read_only {
                    if let Some(content) = self.kept.remove(node.node()) {
                        Self::let_go(&node, content);
                    }
                }
            }
        }
        if change.uid.is_some() || change.gid.is_some() {
            rustix::fs::chownat(
                &node.fd,
                "",
                change.uid.map(rustix::fs::Uid::from_raw),
                change.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH,
            )
            .map_err(sys)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let times = Timestamps {
                last_access: change.atime.map_or(OMIT, timespec),
                last_modification: change.mtime.map_or(OMIT, timespec),
            };
            // On the O_PATH descriptor itself, so that a symlink's own times
            // change (utimensat with AT_SYMLINK_NOFOLLOW on the mount).
            let set =
                || rustix::fs::utimensat(&node.fd, "", &times, AtFlags::EMPTY_PATH).map_err(sys);
            let Some(mtime) = self.written_back_mtime(&node, &change) else {
                set()?;
                // The time a commit would record is no longer the file's:
                // its next sync is one of the backing file.
                self.changed_beside_contents(&node);
                return self.stat_attr(&node);
            };
            match Self::live_content(&node) {
                Some(content) => {
                    let set = content.set_kernel_mtime(journal_mtime(mtime), set);
                    Self::let_go(&node, content);
                    set?;
                }
                None => set()?,
            }
            if let Some(attr) = self.untimed_attr(&node, mtime, change.ctime.unwrap_or(mtime))? {
                return Ok(attr);
            }
        }
        self.stat_attr(&node)
    }

    /// The modification time in `change` when it is the kernel writing back
    /// a regular file's times: with write-back caching the kernel keeps
    /// them and sends them alone, before each `fsync` that follows a write.
    fn written_back_mtime(&self, node: &Pinned, change: &AttrChange) -> Option<SystemTime> {
        let Some(TimeOrNow::SpecificTime(mtime)) = change.mtime else {
            return None;
        };
        let times_alone = change.mode.is_none()
            && change.uid.is_none()
            && change.gid.is_none()
            && change.size.is_none();
        (self.kernel_keeps_times && times_alone && node.kind == RawType::RegularFile)
            .then_some(mtime)
    }

    /// The attributes of `node`, a regular file, read without its backing
    /// file's times (`crate::untimed`), with the times given (the kernel
    /// keeps its own for such a file); `None` for a file-form symlink or a
    /// file that looks empty (which `attr_of` checks for damage).
    fn untimed_attr(
        &self,
        node: &Pinned,
        mtime: SystemTime,
        ctime: SystemTime,
    ) -> Result<Option<FileAttr>, Errno> {
        let status = crate::untimed::status(&node.fd).map_err(io)?;
        let plaintext = crate::layout::plaintext_size_lossy(status.size);
        if status.mode & libc::S_ISVTX != 0 || plaintext == 0 {
            return Ok(None);
        }
        Ok(Some(attr::from_status(node.ino, &status, mtime, ctime)))
    }

    pub fn access(&self, ino: u64, mask: i32) -> Result<(), Errno> {
        let node = self.node(ino)?;
        if node.kind == RawType::Symlink {
            return Ok(());
        }
        let access = rustix::fs::Access::from_bits_truncate(mask as _);
        rustix::fs::accessat(CWD, node.proc_path(), access, AtFlags::empty()).map_err(sys)
    }

    // ---- directory entries -------------------------------------------------

    pub fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        let parent = self.node(parent)?;
        let backing = self.new_backing_name(&parent, name)?;
        let _gained = parent.gaining_entries();
        let mode = Mode::from_raw_mode(mode);
        if self.names.mode() == NameMode::Plaintext {
            let owner = self.owner_for(caller, &parent)?;
            rustix::fs::mkdirat(&parent.fd, &backing, mode).map_err(sys)?;
            return self.created(&parent, &backing, RawType::Directory, owner);
        }
        let inherited = self.inherited_group(&parent)?;
        let owner = self.owner_in(caller, inherited);
        // In a set-group-id directory a new one is set-group-id too (the
        // mode given it below would drop what `mkdirat` inherited).
        let mode = match inherited {
            Some(_) => mode | Mode::SGID,
            None => mode,
        };
        // Made under a temporary name, given its id record, then renamed
        // into place: no crash leaves a directory without its record.
        let tmp = format!("{MKDIR_PREFIX}{}", hex_id(&crate::random::bytes::<8>()));
        rustix::fs::mkdirat(&parent.fd, tmp.as_str(), Mode::from_raw_mode(0o700)).map_err(sys)?;
        // The record goes to whoever the directory is made for.
        let record_owner = GiveTo::user(owner.map(|(u, g)| (u.as_raw(), g.as_raw())));
        let made = self.make_dir_record(&parent, &tmp, mode, record_owner);
        let made = made.and_then(|()| {
            rustix::fs::renameat_with(
                &parent.fd,
                tmp.as_str(),
                &parent.fd,
                &backing,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(sys)
        });
        if let Err(e) = made {
            self.remove_dir_record(&parent, OsStr::new(&tmp));
            let _ = rustix::fs::unlinkat(&parent.fd, tmp.as_str(), AtFlags::REMOVEDIR);
            return Err(e);
        }
        self.created(&parent, &backing, RawType::Directory, owner)
    }

    /// Writes the id record (for `owner`) into the new directory `tmp` and
    /// gives the directory its mode.
    fn make_dir_record(
        &self,
        parent: &Pinned,
        tmp: &str,
        mode: Mode,
        owner: GiveTo,
    ) -> Result<(), Errno> {
        let dir = rustix::fs::openat(
            &parent.fd,
            tmp,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)?;
        self.names
            .init_dir(dir.as_fd(), owner)
            .map_err(|e| self.name_errno(e, parent))?;
        rustix::fs::fchmod(&dir, mode).map_err(sys)
    }

    /// Deletes the volume's own entries in directory `backing` of `parent`
    /// (its id record, leftovers of interrupted operations), returning the
    /// record's bytes so a failed removal can put it back. `ENOTEMPTY` if
    /// it holds anything else.
    fn empty_dir_of_records(&self, parent: &Pinned, backing: &OsStr) -> Result<Vec<u8>, Errno> {
        let dir = rustix::fs::openat(
            &parent.fd,
            backing,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)?;
        let internal = self.only_internal_entries(&dir)?.ok_or(Errno::ENOTEMPTY)?;
        let record = crate::names::read_small(
            dir.as_fd(),
            OsStr::new(crate::name_cipher::DIR_ID_NAME),
            crate::name_cipher::DIR_ID_RECORD_LEN as u64 + 1,
        )
        .unwrap_or_default();
        for name in internal {
            let is_dir = rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| RawType::from_raw_mode(st.st_mode) == RawType::Directory);
            if is_dir {
                // An interrupted mkdir's temporary directory: only the
                // volume's own files are in it.
                let path = format!(
                    "/proc/self/fd/{}/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&dir),
                    name.to_string_lossy()
                );
                let _ = std::fs::remove_dir_all(path);
            } else {
                match rustix::fs::unlinkat(&dir, &name, AtFlags::empty()) {
                    // Renamed or removed meanwhile by a racing record write.
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(sys(e)),
                }
            }
        }
        Ok(record)
    }

    /// After a failed removal or replacement of directory `backing` in
    /// `parent`: its id record back, if it was one (never over a new one).
    fn put_record_back(&self, parent: &Pinned, backing: &OsStr, record: &[u8]) {
        if !self.names.valid_record(record) {
            return;
        }
        if let Ok(dir) = rustix::fs::openat(
            &parent.fd,
            backing,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            let _ = crate::names::restore_record(dir.as_fd(), record);
        }
    }

    /// Best effort, after a failed mkdir: the temporary directory's record.
    fn remove_dir_record(&self, parent: &Pinned, tmp: &OsStr) {
        let _ = rustix::fs::unlinkat(
            &parent.fd,
            std::path::Path::new(tmp).join(crate::name_cipher::DIR_ID_NAME),
            AtFlags::empty(),
        );
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr, Errno> {
        let parent = self.node(parent)?;
        let backing = self.new_backing_name(&parent, name)?;
        let _gained = parent.gaining_entries();
        let kind = RawType::from_raw_mode(mode);
        if kind == RawType::RegularFile {
            // The kernel makes every new regular file this way (`fs::create`).
            return self.make_file(caller, &parent, &backing, mode & 0o7777);
        }
        let owner = self.owner_for(caller, &parent)?;
        rustix::fs::mknodat(
            &parent.fd,
            &backing,
            kind,
            Mode::from_raw_mode(mode),
            u64::from(rdev),
        )
        .map_err(sys)?;
        self.created(&parent, &backing, kind, owner)
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<FileAttr, Errno> {
        let parent = self.node(parent)?;
        let stored = match self.names.seal_target(target) {
            Ok(stored) => Some(stored),
            Err(NameError::TooLong) if target.len() < 4096 => None,
            Err(e) => return Err(self.name_errno(e, &parent)),
        };
        let backing = self.new_backing_name(&parent, name)?;
        let _gained = parent.gaining_entries();
        let owner = self.owner_for(caller, &parent)?;
        match stored {
            Some(stored) => rustix::fs::symlinkat(&stored, &parent.fd, &backing).map_err(sys)?,
            // Too long to seal into a backing symlink: the file form.
            None => {
                let sealed = self.names.seal_target_any(target);
                drop(
                    symlink_file::create(
                        parent.fd.as_fd(),
                        &backing,
                        sealed.as_bytes(),
                        &self.crypto,
                    )
                    .map_err(|e| self.errno_of(e))?,
                )
            }
        }
        self.created(&parent, &backing, RawType::Symlink, owner)
    }

    pub fn readlink(&self, ino: u64) -> Result<OsString, Errno> {
        let node = self.node(ino)?;
        let stat = rustix::fs::fstat(&node.fd).map_err(sys)?;
        if symlink_file::is_file_form(self.names.mode(), &stat) {
            let sealed = symlink_file::read_at(node.fd.as_fd(), &self.crypto)
                .map_err(|e| self.errno_of(e))?;
            let sealed: OsString = std::os::unix::ffi::OsStringExt::from_vec(sealed);
            return self
                .names
                .open_target(&sealed)
                .map_err(|e| self.name_errno(e, &node));
        }
        let stored = rustix::fs::readlinkat(&node.fd, "", Vec::new()).map_err(sys)?;
        let stored = OsString::from(OsStr::from_bytes(stored.as_bytes()));
        self.names
            .open_target(&stored)
            .map_err(|e| self.name_errno(e, &node))
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        let parent = self.node(newparent)?;
        let backing = self.new_backing_name(&parent, newname)?;
        let _gained = parent.gaining_entries();
        rustix::fs::linkat(
            CWD,
            node.proc_path(),
            &parent.fd,
            &backing,
            AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(sys)?;
        self.nodes.add_lookup(node.ino);
        self.or_uncounted(&node, || self.stat_attr(&node))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let parent = self.node(parent)?;
        let backing = self.backing_name(&parent, name)?;
        if !dir {
            let stat = rustix::fs::statat(&parent.fd, &backing, AtFlags::SYMLINK_NOFOLLOW);
            let removing = stat.ok().and_then(|stat| self.removing(&stat));
            let unlinked = rustix::fs::unlinkat(&parent.fd, &backing, AtFlags::empty());
            if let Some(node) = removing {
                self.nodes.removed(&node);
            }
            unlinked.map_err(sys)?;
            parent.lost_entry();
            self.forget_backing_name(&parent, name);
            return Ok(());
        }
        if self.names.mode() == NameMode::Plaintext {
            rustix::fs::unlinkat(&parent.fd, &backing, AtFlags::REMOVEDIR).map_err(sys)?;
            parent.lost_entry();
            return Ok(());
        }
        // The directory holds its id record: remove it first, and put it
        // back if the directory turns out not to be removable.
        let record = self.empty_dir_of_records(&parent, &backing)?;
        // A listing racing this rmdir gives the emptied directory a new
        // record (an empty directory without one gets one): empty it again
        // and retry, unless something else has appeared in it.
        let mut retries = 0;
        loop {
            match rustix::fs::unlinkat(&parent.fd, &backing, AtFlags::REMOVEDIR) {
                Ok(()) => break,
                Err(rustix::io::Errno::NOTEMPTY)
                    if retries < 8 && self.empty_dir_of_records(&parent, &backing).is_ok() =>
                {
                    retries += 1;
                }
                Err(e) => {
                    self.put_record_back(&parent, &backing, &record);
                    return Err(sys(e));
                }
            }
        }
        parent.lost_entry();
        self.forget_backing_name(&parent, name);
        Ok(())
    }

    /// Before a name goes (unlink, or a rename over it): a regular file
    /// that may be losing its last name stays reachable for the kernel,
    /// which may hold it open without the mount knowing (`kept`). Any
    /// regular file: the link count read now may be stale by the time the
    /// name goes. The caller ends with `NodeTable::removed`.
    fn removing(&self, stat: &rustix::fs::Stat) -> Option<Arc<Node>> {
        match RawType::from_raw_mode(stat.st_mode) == RawType::RegularFile {
            true => self.nodes.removing(stat),
            false => None,
        }
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        let from_dir = self.node(parent)?;
        let to_dir = self.node(newparent)?;
        let flags = rustix::fs::RenameFlags::from_bits(flags).ok_or(Errno::EINVAL)?;
        if flags.contains(rustix::fs::RenameFlags::WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let from = self.backing_name(&from_dir, name)?;
        // The new name's file (a long name) before the entry takes it; the
        // old name's after it is gone, unless both names still stand
        // (an exchange, or a rename onto itself).
        let to = self.new_backing_name(&to_dir, newname)?;
        // An exchange gives the first directory a name too.
        let exchange = flags.contains(rustix::fs::RenameFlags::EXCHANGE);
        let _gained = (
            to_dir.gaining_entries(),
            exchange.then(|| from_dir.gaining_entries()),
        );
        let replaces = !exchange && !flags.contains(rustix::fs::RenameFlags::NOREPLACE);
        let target = match replaces {
            true => rustix::fs::statat(&to_dir.fd, &to, AtFlags::SYMLINK_NOFOLLOW).ok(),
            false => None,
        };
        let removing = target.as_ref().and_then(|target| self.removing(target));
        let renamed = self.rename_over(&from_dir, &from, &to_dir, &to, flags, target.as_ref());
        if let Some(node) = removing {
            self.nodes.removed(&node);
        }
        renamed?;
        let same = from_dir.ino == to_dir.ino && name == newname;
        if !exchange && !same {
            from_dir.lost_entry();
            self.forget_backing_name(&from_dir, name);
        }
        Ok(())
    }

    /// `rename`'s backing rename, `target` being what the new name names
    /// now (when it may be replaced). Onto an existing directory (encrypted
    /// names): its id record would make it look non-empty to the backing
    /// file system; removed first (the rename may then replace it), put
    /// back if the rename fails.
    fn rename_over(
        &self,
        from_dir: &Pinned,
        from: &OsStr,
        to_dir: &Pinned,
        to: &OsStr,
        flags: rustix::fs::RenameFlags,
        target: Option<&rustix::fs::Stat>,
    ) -> Result<(), Errno> {
        let mut replaced_record = None;
        if let Some(target) = target {
            if self.names.mode() == NameMode::Encrypted
                && RawType::from_raw_mode(target.st_mode) == RawType::Directory
            {
                replaced_record = Some(self.empty_dir_of_records(to_dir, to)?);
            }
        }
        if let Err(e) = rustix::fs::renameat_with(&from_dir.fd, from, &to_dir.fd, to, flags) {
            if let Some(record) = replaced_record {
                self.put_record_back(to_dir, to, &record);
            }
            return Err(sys(e));
        }
        Ok(())
    }

    // ---- directories --------------------------------------------------------

    /// Feeds directory `ino`'s entries to `each`, from position `offset`
    /// (0, or the `next` of an entry given before), until `each` reports a
    /// full reply; the listing is then parked for the request that goes on
    /// (`listing`). An error after some entries were given ends the reply
    /// with them: the next request, from the entry that failed, reports it
    /// (a reply that fails is dropped whole, and with it the lookups that
    /// READDIRPLUS counted for its entries).
    fn list_from(
        &self,
        ino: u64,
        offset: u64,
        mut each: impl FnMut(&Pinned, DirItem) -> Result<Fed, Errno>,
    ) -> Result<(), Errno> {
        let node = self.node(ino)?;
        if node.kind != RawType::Directory {
            return Err(Errno::ENOTDIR);
        }
        // A damaged or forged id record fails the listing with EIO, as a
        // local file system fails a damaged directory's getdents.
        let key = self.dir_key(&node)?;
        let mut stream = self.listings.at(node.node(), node.fd.as_fd(), offset)?;
        // A listing parked before names were removed may hold some of
        // them (read ahead, or given to another program's listing at the
        // same place): each entry is checked to still exist, by the
        // status its listing reads anyway (`DirItem::maybe_gone`).
        let maybe_gone = stream.outlived_removals(&node);
        let mut given = false;
        let failed = |e: Errno, given: bool| if given { Ok(()) } else { Err(e) };
        while let Some(entry) = stream.next_entry() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return failed(e, given),
            };
            // The kernel would come back here for ever: only a backing
            // file system with several entries at one position (two names
            // whose hashes collide on ext4) gives such an entry.
            if entry.next == offset {
                log::error!(
                    "{}: the backing directory gives several entries one position; \
                     the listing stops",
                    node.backing_path().display()
                );
                return failed(Errno::EIO, given);
            }
            let name = match self.shown_name(&node, &key, stream.fd(), &entry.name) {
                Ok(Some(name)) => name,
                Ok(None) => continue,
                Err(e) => return failed(e, given),
            };
            let item = DirItem {
                name,
                backing: entry.name.clone(),
                ino: self.nodes.entry_ino(&node, entry.ino),
                kind: attr::file_type(entry.kind),
                next: entry.next,
                maybe_gone,
            };
            match each(&node, item) {
                Ok(Fed::Added) => {
                    stream.sent(entry);
                    given = true;
                }
                Ok(Fed::Skipped) => {}
                Ok(Fed::Full) => {
                    stream.put_back(entry);
                    self.listings.park(node.node(), offset, stream);
                    return Ok(());
                }
                Err(e) => return failed(e, given),
            }
        }
        // Kept for the request after this one, which a program that took
        // only part of this reply makes from inside it.
        if given {
            self.listings.park(node.node(), offset, stream);
        }
        Ok(())
    }

    /// The name backing entry `raw` of `dir` shows as: `None` for the
    /// volume's own files, for a forged name (logged, like a forged block)
    /// and for a long name whose record is gone (removed while listed).
    fn shown_name(
        &self,
        dir: &Pinned,
        key: &DirKey,
        dir_fd: BorrowedFd,
        raw: &OsStr,
    ) -> Result<Option<OsString>, Errno> {
        if raw == "." || raw == ".." {
            return Ok(Some(raw.to_os_string()));
        }
        match self.names.decode(dir_fd, key, raw, dir.ino == ROOT_INO) {
            None => Ok(None),
            Some(Ok(name)) => Ok(Some(name)),
            Some(Err(NameError::Io(e))) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Some(Err(e @ NameError::Forged(_))) => {
                let _ = self.name_errno(e, dir);
                Ok(None)
            }
            Some(Err(e)) => Err(self.name_errno(e, dir)),
        }
    }

    /// Feeds entries from `offset` to `add` until it reports a full buffer.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Result<(), Errno> {
        self.list_from(ino, offset, |dir, item| {
            let Some(kind) = self.listed_kind(dir, &item) else {
                return Ok(Fed::Skipped);
            };
            Ok(Fed::by_reply(add(item.ino, item.next, kind, &item.name)))
        })
    }

    /// The type a plain listing shows for `item`, `None` for one that may
    /// be gone and is: a file-form symlink is stored as a regular file, and
    /// shows as a symlink. (A listing with attributes learns both from the
    /// entry's lookup instead.)
    fn listed_kind(&self, dir: &Pinned, item: &DirItem) -> Option<FileType> {
        let file_form =
            item.kind == FileType::RegularFile && self.names.mode() == NameMode::Encrypted;
        if !file_form && !item.maybe_gone {
            return Some(item.kind);
        }
        match rustix::fs::statat(&dir.fd, &item.backing, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if file_form && symlink_file::is_file_form(NameMode::Encrypted, &stat) => {
                Some(FileType::Symlink)
            }
            Err(rustix::io::Errno::NOENT) if item.maybe_gone => None,
            _ => Some(item.kind),
        }
    }

    /// Like `readdir`, with attributes; each entry returned counts as a lookup.
    pub fn readdirplus(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, &OsStr, &FileAttr) -> bool,
    ) -> Result<(), Errno> {
        self.list_from(ino, offset, |dir, item| {
            if item.name == "." || item.name == ".." {
                let attr = FileAttr {
                    ino: fuser::INodeNo(item.ino),
                    ..self.stat_attr(dir)?
                };
                // The kernel does not count lookups for these two.
                return Ok(Fed::by_reply(add(item.next, &item.name, &attr)));
            }
            let (node, attr) = match self.lookup_listed(dir, &item) {
                Ok(found) => found,
                // Removed since it was read.
                Err(e) if e == Errno::ENOENT => return Ok(Fed::Skipped),
                Err(e) => return Err(e),
            };
            if add(item.next, &item.name, &attr) {
                // Not sent: undo the lookup it counted.
                self.forget(node.ino, 1);
                return Ok(Fed::Full);
            }
            Ok(Fed::Added)
        })
    }

    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<(), Errno> {
        let node = self.node(ino)?;
        let dir = open_dir(&*node.fd).map_err(sys)?;
        if datasync {
            rustix::fs::fdatasync(&dir).map_err(sys)
        } else {
            rustix::fs::fsync(&dir).map_err(sys)
        }
    }

    pub fn statfs(&self) -> Result<rustix::fs::StatVfs, Errno> {
        let root = self.node(ROOT_INO)?;
        let dir = open_dir(&*root.fd).map_err(sys)?;
        rustix::fs::fstatvfs(dir.as_fd()).map_err(sys)
    }

    // ---- extended attributes ----------------------------------------------

    /// What a node's attribute values are bound to: a regular file's id.
    fn xattr_owner(&self, node: &Pinned) -> Result<Owner, Errno> {
        if node.kind != RawType::RegularFile {
            return Ok(Owner::Other);
        }
        let content = self.content(node)?;
        let id = content.file_id().map_err(|e| self.errno_of(e));
        Self::let_go(node, content);
        Ok(Owner::File(id?))
    }

    /// On a volume without extended attributes every request is ENOSYS,
    /// which the kernel remembers for the mount: it sends no more of them
    /// (`ls -l` would otherwise ask every file for two attributes).
    fn xattrs_stored(&self) -> Result<(), Errno> {
        match self.xattrs_enabled {
            true => Ok(()),
            false => Err(Errno::ENOSYS),
        }
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<(), Errno> {
        self.xattrs_stored()?;
        let node = self.node(ino)?;
        let owner = self.xattr_owner(&node)?;
        self.xattrs.set(&node, owner, name, value, flags)?;
        self.changed_beside_contents(&node);
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, Errno> {
        self.xattrs_stored()?;
        let node = self.node(ino)?;
        let owner = self.xattr_owner(&node)?;
        self.xattrs.get(&node, owner, name).map_err(|e| {
            if e == XattrError::Forged {
                self.stats.authentication_failed();
            }
            e.errno()
        })
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        self.xattrs_stored()?;
        let node = self.node(ino)?;
        self.xattrs.list(&node)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<(), Errno> {
        self.xattrs_stored()?;
        let node = self.node(ino)?;
        self.xattrs.remove(&node, name)?;
        self.changed_beside_contents(&node);
        Ok(())
    }

    /// The file's next sync must sync its backing file, not only commit
    /// held rewrites: it changed where the contents do not see (its
    /// extended attributes, its times set other than by the kernel's
    /// write-back). Only a file whose contents the mount has open has held
    /// rewrites; one opened later starts unsynced.
    fn changed_beside_contents(&self, node: &Pinned) {
        if let Some(content) = Self::live_content(node) {
            content.changed_elsewhere();
        }
    }

    /// `node`'s contents if the mount has them open.
    fn live_content(node: &Pinned) -> Option<Arc<EncryptedFile>> {
        node.content
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upgrade()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Backend;
    use crate::keys::SecretKey;

    fn ops_on(dir: &std::path::Path) -> Ops {
        let crypto = Arc::new(ContentCrypto::new(
            SecretKey::from_bytes([9; 32]),
            Backend::Ring,
        ));
        let names = Arc::new(Names::new(NameMode::Plaintext, &crypto));
        let root =
            rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).expect("open");
        Ops::new(
            root,
            crypto,
            names,
            None,
            false,
            64,
            Arc::new(PruneSignal::new()),
        )
        .expect("ops")
    }

    // Protects: a node the mount made by name is given to its creator only
    // if it still looks new; a hard link to one of root's files put at the
    // name, or a directory of root's with something in it renamed there
    // (by whoever can write that directory in BACKING), is refused and
    // stays root's.
    #[test]
    fn a_new_node_swapped_for_one_of_roots_is_not_given_away() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let ops = ops_on(tmp.path());
        let root = ops.node(ROOT_INO).expect("root");
        let her = Caller {
            uid: 65534,
            gid: 65534,
        };
        let hers = ops.owner_for(her, &root).expect("owner");
        let fifo = |name: &str| {
            rustix::fs::mknodat(&root.fd, name, RawType::Fifo, Mode::from_raw_mode(0o600), 0)
                .expect("mkfifo")
        };
        let owner = |name: &str| {
            let stat = rustix::fs::lstat(tmp.path().join(name)).expect("stat");
            (stat.st_uid, stat.st_nlink)
        };
        fifo("fresh");
        ops.created(&root, OsStr::new("fresh"), RawType::Fifo, hers)
            .expect("a fresh node is hers");
        assert_eq!(owner("fresh"), (65534, 1));

        fifo("roots");
        rustix::fs::linkat(&root.fd, "roots", &root.fd, "swapped", AtFlags::empty()).expect("link");
        let refused = ops.created(&root, OsStr::new("swapped"), RawType::Fifo, hers);
        assert_eq!(refused.err(), Some(Errno::EIO));
        assert_eq!(owner("roots"), (0, 2), "root's file is still root's");

        // A directory of root's renamed to the name (no link needed) is
        // refused unless it is as empty as a new one.
        std::fs::create_dir(tmp.path().join("fresh_dir")).expect("mkdir");
        ops.created(&root, OsStr::new("fresh_dir"), RawType::Directory, hers)
            .expect("a fresh directory is hers");
        assert_eq!(owner("fresh_dir").0, 65534);
        std::fs::create_dir(tmp.path().join("roots_dir")).expect("mkdir");
        std::fs::write(tmp.path().join("roots_dir/secret"), b"root's").expect("write");
        std::fs::rename(tmp.path().join("roots_dir"), tmp.path().join("renamed")).expect("rename");
        let refused = ops.created(&root, OsStr::new("renamed"), RawType::Directory, hers);
        assert_eq!(refused.err(), Some(Errno::EIO));
        assert_eq!(owner("renamed").0, 0, "root's directory is still root's");

        // Another kind than the one made is refused too.
        std::fs::write(tmp.path().join("file"), b"root's").expect("write");
        let refused = ops.created(&root, OsStr::new("file"), RawType::Symlink, hers);
        assert_eq!(refused.err(), Some(Errno::EIO));
        assert_eq!(owner("file"), (0, 1));
    }
}
