//! A pass-through file system that loses what was not made durable when
//! the power is cut: the power-loss simulator that Chronicle's backing
//! directory is put on.
//!
//! Everything is served from a real directory (`<under>/tree`), except:
//!
//! - **Writes and truncates** of a file are held in memory, in order, and
//!   reads see them; `fsync`/`fdatasync` of the file writes them through and
//!   syncs. At the cut, each held write independently reaches the disk whole,
//!   torn (a random subset of its 512-byte sectors, so any 512-byte or 4 KiB
//!   boundary), not at all, or not at all but with the file's size grown over
//!   it (the size reached the disk before the data); each held truncate
//!   happens or not.
//! - **Names** (creations, links, removals, renames) are applied at once but
//!   logged; `fsync` of any directory commits the log (as a journaling file
//!   system commits its journal in order). At the cut a random suffix of the
//!   uncommitted log is undone, newest first. A removed or replaced entry is
//!   kept in `<under>/graveyard` until its removal commits, so that undoing
//!   it brings it back.
//!
//! Attributes (modes, owners, times) and extended attributes are written
//! through. Opens use direct I/O and every attribute and entry is served
//! with a zero timeout, so the kernel caches nothing that a cut could make
//! stale.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use rand::Rng;

const TTL: Duration = Duration::ZERO;
const SECTOR: u64 = 512;

/// A change to a file's contents not yet synced.
enum Held {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// A change to names not yet committed, with what undoes it.
enum NameChange {
    /// `path` was created (file, directory, link, symlink, node).
    Created { path: PathBuf, dir: bool },
    /// `path` was removed: it waits in the graveyard as `kept`.
    Removed { path: PathBuf, kept: PathBuf },
    /// `from` was renamed to `to`, replacing what is now kept as `replaced`.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
    /// `a` and `b` were exchanged.
    Exchanged { a: PathBuf, b: PathBuf },
}

/// What the power cut did, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct CutReport {
    pub writes_whole: u64,
    pub writes_torn: u64,
    pub writes_dropped: u64,
    pub truncates_dropped: u64,
    pub names_undone: u64,
    pub names_kept: u64,
}

struct State {
    /// FUSE inode → path relative to the tree (the root is "").
    paths: HashMap<u64, PathBuf>,
    /// Real inode → its held changes, in order.
    held: HashMap<u64, Vec<Held>>,
    /// Open handles: the real inode and a descriptor.
    handles: HashMap<u64, (u64, Arc<File>)>,
    /// Name changes since the last commit, in order.
    log: Vec<NameChange>,
}

struct Inner {
    /// Changes received so far (writes, truncates, syncs, name changes).
    changes: AtomicU64,
    /// The power fails as change number `cut_at` arrives: it and every
    /// later one wait, then fail, and none reaches the disk.
    cut_at: AtomicU64,
    frozen: AtomicBool,
    released: AtomicBool,
    tree: PathBuf,
    graveyard: PathBuf,
    root_ino: u64,
    next_fh: AtomicU64,
    next_grave: AtomicU64,
    state: Mutex<State>,
}

/// The simulator, shared between the FUSE session and the test.
#[derive(Clone)]
pub struct PowerCut(Arc<Inner>);

impl PowerCut {
    /// A simulator over `under` (made if missing): the served tree is
    /// `under/tree`.
    pub fn new(under: &Path) -> io::Result<PowerCut> {
        let tree = under.join("tree");
        let graveyard = under.join("graveyard");
        fs::create_dir_all(&tree)?;
        fs::create_dir_all(&graveyard)?;
        let root_ino = fs::metadata(&tree)?.ino();
        let mut paths = HashMap::new();
        paths.insert(1, PathBuf::new());
        Ok(PowerCut(Arc::new(Inner {
            changes: AtomicU64::new(0),
            cut_at: AtomicU64::new(u64::MAX),
            frozen: AtomicBool::new(false),
            released: AtomicBool::new(false),
            tree,
            graveyard,
            root_ino,
            next_fh: AtomicU64::new(1),
            next_grave: AtomicU64::new(1),
            state: Mutex::new(State {
                paths,
                held: HashMap::new(),
                handles: HashMap::new(),
                log: Vec::new(),
            }),
        })))
    }

    /// Mounts the simulator at `mountpoint`, served on background threads.
    pub fn mount(&self, mountpoint: &Path) -> io::Result<fuser::BackgroundSession> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("powercut".into()),
            fuser::MountOption::RW,
            fuser::MountOption::DefaultPermissions,
        ];
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(4);
        fuser::Session::new(Fs(self.clone()), mountpoint, &config)?.spawn()
    }

    /// The power fails when change number `n` arrives (counting writes,
    /// truncates, syncs and name changes from 0): the mount above then hangs
    /// in that request until it is killed.
    pub fn fail_at(&self, n: u64) {
        self.0.cut_at.store(n, Ordering::SeqCst);
    }

    /// Whether the power has failed (see `fail_at`).
    pub fn failed(&self) -> bool {
        self.0.frozen.load(Ordering::SeqCst)
    }

    /// Lets requests held at the failure go (they fail), so that the
    /// session can end. Call once the mount above is dead.
    pub fn release(&self) {
        self.0.released.store(true, Ordering::SeqCst);
    }

    /// Changes received so far.
    pub fn changes(&self) -> u64 {
        self.0.changes.load(Ordering::SeqCst)
    }

    /// Cuts the power: decides, with `rng`, what of everything not durable
    /// reached the disk, makes the tree so, and forgets the rest. Call it
    /// once nothing uses the mount (the session unmounted).
    pub fn cut(&self, rng: &mut impl Rng) -> io::Result<CutReport> {
        let mut report = CutReport::default();
        let mut st = self.0.state();
        let held = std::mem::take(&mut st.held);
        let by_real: HashMap<u64, PathBuf> = st
            .paths
            .values()
            .filter_map(|p| {
                let full = self.0.tree.join(p);
                fs::symlink_metadata(&full).ok().map(|m| (m.ino(), full))
            })
            .collect();
        for (real, changes) in held {
            let Some(path) = by_real.get(&real) else {
                continue;
            };
            let file = OpenOptions::new().write(true).open(path)?;
            for change in changes {
                persist_some(&file, change, rng, &mut report)?;
            }
            file.sync_all()?;
        }
        let log = std::mem::take(&mut st.log);
        let keep = rng.random_range(0..=log.len());
        report.names_kept = keep as u64;
        for change in log.into_iter().skip(keep).rev() {
            self.0.undo(change)?;
            report.names_undone += 1;
        }
        st.handles.clear();
        Ok(report)
    }
}

/// Persists what a power cut lets through of one held change.
fn persist_some(
    file: &File,
    change: Held,
    rng: &mut impl Rng,
    report: &mut CutReport,
) -> io::Result<()> {
    match change {
        Held::SetLen(len) => {
            if rng.random_bool(0.5) {
                file.set_len(len)?;
            } else {
                report.truncates_dropped += 1;
            }
        }
        Held::Write { offset, data } => match rng.random_range(0..4) {
            0 => {
                file.write_all_at(&data, offset)?;
                report.writes_whole += 1;
            }
            1 => {
                // Torn: each sector (at absolute 512-byte boundaries) on its own.
                let end = offset + data.len() as u64;
                let mut at = offset;
                while at < end {
                    let next = ((at / SECTOR) + 1) * SECTOR;
                    let to = next.min(end);
                    if rng.random_bool(0.5) {
                        let from = (at - offset) as usize;
                        file.write_all_at(&data[from..(to - offset) as usize], at)?;
                    }
                    at = to;
                }
                report.writes_torn += 1;
            }
            2 => {
                // The size reached the disk, the data did not.
                let end = offset + data.len() as u64;
                if file.metadata()?.len() < end {
                    file.set_len(end)?;
                }
                report.writes_dropped += 1;
            }
            _ => report.writes_dropped += 1,
        },
    }
    Ok(())
}

impl Inner {
    /// Counts a change; at and after the failure, holds it until released
    /// and refuses it.
    fn gate(&self) -> Result<(), Errno> {
        let n = self.changes.fetch_add(1, Ordering::SeqCst);
        if n < self.cut_at.load(Ordering::SeqCst) && !self.frozen.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.frozen.store(true, Ordering::SeqCst);
        while !self.released.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(Errno::EIO)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn full(&self, rel: &Path) -> PathBuf {
        self.tree.join(rel)
    }

    fn rel(&self, ino: u64) -> Result<PathBuf, Errno> {
        self.state().paths.get(&ino).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.rel(parent)?.join(name))
    }

    fn fuse_ino(&self, real: u64) -> u64 {
        if real == self.root_ino {
            1
        } else {
            real
        }
    }

    /// The attributes of `rel`, with held writes and truncates applied to
    /// the size; remembers the inode's path.
    fn attr(&self, rel: &Path) -> Result<FileAttr, Errno> {
        let meta = fs::symlink_metadata(self.full(rel)).map_err(Errno::from)?;
        let ino = self.fuse_ino(meta.ino());
        let mut st = self.state();
        st.paths.insert(ino, rel.to_path_buf());
        let size = effective_size(meta.len(), st.held.get(&meta.ino()));
        Ok(to_attr(ino, &meta, size))
    }

    fn grave(&self) -> PathBuf {
        let n = self.next_grave.fetch_add(1, Ordering::Relaxed);
        self.graveyard.join(n.to_string())
    }

    /// Moves `rel` to the graveyard instead of removing it; logs that.
    fn remove(&self, rel: &Path) -> Result<(), Errno> {
        let kept = self.grave();
        fs::rename(self.full(rel), &kept).map_err(Errno::from)?;
        self.state().log.push(NameChange::Removed {
            path: rel.to_path_buf(),
            kept,
        });
        Ok(())
    }

    fn undo(&self, change: NameChange) -> io::Result<()> {
        match change {
            NameChange::Created { path, dir } => {
                let full = self.full(&path);
                if dir {
                    fs::remove_dir(full)
                } else {
                    fs::remove_file(full)
                }
            }
            NameChange::Removed { path, kept } => fs::rename(kept, self.full(&path)),
            NameChange::Renamed { from, to, replaced } => {
                fs::rename(self.full(&to), self.full(&from))?;
                match replaced {
                    Some(kept) => fs::rename(kept, self.full(&to)),
                    None => Ok(()),
                }
            }
            NameChange::Exchanged { a, b } => rustix::fs::renameat_with(
                rustix::fs::CWD,
                self.full(&a),
                rustix::fs::CWD,
                self.full(&b),
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .map_err(io::Error::from),
        }
    }

    /// Every name change so far is durable: the graveyard's entries whose
    /// removal committed go for good.
    fn commit(&self) {
        let log = std::mem::take(&mut self.state().log);
        for change in log {
            let gone = match change {
                NameChange::Removed { kept, .. } => Some(kept),
                NameChange::Renamed {
                    replaced: Some(kept),
                    ..
                } => Some(kept),
                _ => None,
            };
            if let Some(kept) = gone {
                let _ = fs::remove_dir_all(&kept).or_else(|_| fs::remove_file(&kept));
            }
        }
    }

    fn created(&self, rel: &Path, dir: bool) {
        self.state().log.push(NameChange::Created {
            path: rel.to_path_buf(),
            dir,
        });
    }

    fn handle(&self, fh: u64) -> Result<(u64, Arc<File>), Errno> {
        self.state().handles.get(&fh).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&self, real: u64, file: File) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.state().handles.insert(fh, (real, Arc::new(file)));
        fh
    }

    fn open(&self, rel: &Path, flags: i32) -> Result<(u64, u64), Errno> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.full(rel))
            .or_else(|_| File::open(self.full(rel)))
            .map_err(Errno::from)?;
        let real = file.metadata().map_err(Errno::from)?.ino();
        Ok((self.add_handle(real, file), real))
    }

    fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let (real, file) = self.handle(fh)?;
        let disk_len = file.metadata().map_err(Errno::from)?.len();
        let st = self.state();
        let held = st.held.get(&real);
        let len = effective_size(disk_len, held);
        if offset >= len {
            return Ok(Vec::new());
        }
        let n = (u64::from(size)).min(len - offset) as usize;
        let mut buf = vec![0u8; n];
        // The disk as it is, then every held change over it, in order.
        let on_disk = disk_len.saturating_sub(offset).min(n as u64) as usize;
        file.read_exact_at(&mut buf[..on_disk], offset)
            .map_err(Errno::from)?;
        let mut size_now = disk_len;
        for change in held.into_iter().flatten() {
            match change {
                Held::Write { offset: at, data } => {
                    let from = (*at).max(offset);
                    let to = (at + data.len() as u64).min(offset + n as u64);
                    if from < to {
                        buf[(from - offset) as usize..(to - offset) as usize]
                            .copy_from_slice(&data[(from - at) as usize..(to - at) as usize]);
                    }
                    size_now = size_now.max(at + data.len() as u64);
                }
                Held::SetLen(cut) => {
                    if *cut < size_now && *cut < offset + n as u64 {
                        let from = cut.saturating_sub(offset) as usize;
                        buf[from..].fill(0);
                    }
                    size_now = *cut;
                }
            }
        }
        Ok(buf)
    }

    fn hold(&self, real: u64, change: Held) {
        self.state().held.entry(real).or_default().push(change);
    }

    /// Writes the held changes of `real` through `file` and syncs it.
    fn sync(&self, real: u64, file: &File) -> Result<(), Errno> {
        let held = self.state().held.remove(&real).unwrap_or_default();
        for change in held {
            match change {
                Held::Write { offset, data } => file.write_all_at(&data, offset),
                Held::SetLen(len) => file.set_len(len),
            }
            .map_err(Errno::from)?;
        }
        file.sync_all().map_err(Errno::from)
    }

    /// Follows a rename in the inode → path table.
    fn moved(&self, from: &Path, to: &Path) {
        let mut st = self.state();
        for path in st.paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(from) {
                *path = to.join(rest);
            }
        }
    }
}

fn effective_size(disk: u64, held: Option<&Vec<Held>>) -> u64 {
    let mut size = disk;
    for change in held.into_iter().flatten() {
        match change {
            Held::Write { offset, data } => size = size.max(offset + data.len() as u64),
            Held::SetLen(len) => size = *len,
        }
    }
    size
}

fn to_attr(ino: u64, meta: &fs::Metadata, size: u64) -> FileAttr {
    let time = |secs: i64, nanos: i64| {
        UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
    };
    let ft = meta.file_type();
    use std::os::unix::fs::FileTypeExt;
    let kind = if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_fifo() {
        FileType::NamedPipe
    } else if ft.is_socket() {
        FileType::Socket
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm: (meta.mode() & 0o7777) as u16,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: meta.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn to_timestamp(t: Option<TimeOrNow>) -> rustix::fs::Timespec {
    match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(at)) => {
            let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            rustix::fs::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()),
            }
        }
    }
}

fn sys(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

struct Fs(PowerCut);

impl Fs {
    fn inner(&self) -> &Inner {
        &self.0 .0
    }
}

fn entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl fuser::Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let fs = self.inner();
        entry(reply, fs.child(parent.0, name).and_then(|p| fs.attr(&p)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.inner();
        match fs.rel(ino.0).and_then(|p| fs.attr(&p)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        let result = (|| {
            let rel = fs.rel(ino.0)?;
            let full = fs.full(&rel);
            if let Some(mode) = mode {
                rustix::fs::chmod(&full, rustix::fs::Mode::from_raw_mode(mode)).map_err(sys)?;
            }
            if uid.is_some() || gid.is_some() {
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    &full,
                    uid.map(rustix::fs::Uid::from_raw),
                    gid.map(rustix::fs::Gid::from_raw),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(sys)?;
            }
            if atime.is_some() || mtime.is_some() {
                let times = rustix::fs::Timestamps {
                    last_access: to_timestamp(atime),
                    last_modification: to_timestamp(mtime),
                };
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    &full,
                    &times,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(sys)?;
            }
            if let Some(size) = size {
                let real = fs::symlink_metadata(&full).map_err(Errno::from)?.ino();
                fs.hold(real, Held::SetLen(size));
            }
            fs.attr(&rel)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.inner();
        match fs
            .rel(ino.0)
            .and_then(|p| fs::read_link(fs.full(&p)).map_err(Errno::from))
        {
            Ok(target) => reply.data(target.as_os_str().as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        let result = fs.child(parent.0, name).and_then(|rel| {
            let kind = rustix::fs::FileType::from_raw_mode(mode);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                fs.full(&rel),
                kind,
                rustix::fs::Mode::from_raw_mode(mode & 0o7777),
                u64::from(rdev),
            )
            .map_err(sys)?;
            fs.created(&rel, false);
            fs.attr(&rel)
        });
        entry(reply, result);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        let result = fs.child(parent.0, name).and_then(|rel| {
            rustix::fs::mkdir(fs.full(&rel), rustix::fs::Mode::from_raw_mode(mode)).map_err(sys)?;
            fs.created(&rel, true);
            fs.attr(&rel)
        });
        entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        empty(
            reply,
            fs.child(parent.0, name).and_then(|rel| fs.remove(&rel)),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        let result = fs.child(parent.0, name).and_then(|rel| {
            let full = fs.full(&rel);
            if fs::read_dir(&full).map_err(Errno::from)?.next().is_some() {
                return Err(Errno::ENOTEMPTY);
            }
            fs.remove(&rel)
        });
        empty(reply, result);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        let result = fs.child(parent.0, link_name).and_then(|rel| {
            std::os::unix::fs::symlink(target, fs.full(&rel)).map_err(Errno::from)?;
            fs.created(&rel, false);
            fs.attr(&rel)
        });
        entry(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        let result = (|| {
            let from = fs.child(parent.0, name)?;
            let to = fs.child(newparent.0, newname)?;
            let bits = flags.bits();
            if bits & libc::RENAME_EXCHANGE != 0 {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    fs.full(&from),
                    rustix::fs::CWD,
                    fs.full(&to),
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .map_err(sys)?;
                let swap = PathBuf::from("\0swap");
                fs.moved(&from, &swap);
                fs.moved(&to, &from);
                fs.moved(&swap, &to);
                fs.state()
                    .log
                    .push(NameChange::Exchanged { a: from, b: to });
                return Ok(());
            }
            if bits & !(libc::RENAME_NOREPLACE) != 0 {
                return Err(Errno::EINVAL);
            }
            fs::symlink_metadata(fs.full(&from)).map_err(Errno::from)?;
            let replaced = match fs::symlink_metadata(fs.full(&to)) {
                Ok(_) if bits & libc::RENAME_NOREPLACE != 0 => return Err(Errno::EEXIST),
                Ok(meta) => {
                    if meta.is_dir()
                        && fs::read_dir(fs.full(&to))
                            .map_err(Errno::from)?
                            .next()
                            .is_some()
                    {
                        return Err(Errno::ENOTEMPTY);
                    }
                    let kept = fs.grave();
                    fs::rename(fs.full(&to), &kept).map_err(Errno::from)?;
                    Some(kept)
                }
                Err(_) => None,
            };
            if let Err(e) = fs::rename(fs.full(&from), fs.full(&to)) {
                if let Some(kept) = &replaced {
                    let _ = fs::rename(kept, fs.full(&to));
                }
                return Err(Errno::from(e));
            }
            fs.moved(&from, &to);
            fs.state()
                .log
                .push(NameChange::Renamed { from, to, replaced });
            Ok(())
        })();
        empty(reply, result);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        let result = (|| {
            let from = fs.rel(ino.0)?;
            let to = fs.child(newparent.0, newname)?;
            fs::hard_link(fs.full(&from), fs.full(&to)).map_err(Errno::from)?;
            fs.created(&to, false);
            fs.attr(&to)
        })();
        entry(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.inner();
        match fs.rel(ino.0).and_then(|p| fs.open(&p, flags.0)) {
            Ok((fh, _)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.inner().read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        match fs.handle(fh.0) {
            Ok((real, _)) => {
                fs.hold(
                    real,
                    Held::Write {
                        offset,
                        data: data.to_vec(),
                    },
                );
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.inner().state().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        empty(
            reply,
            fs.handle(fh.0)
                .and_then(|(real, file)| fs.sync(real, &file)),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.inner().rel(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.inner();
        let result = (|| {
            let rel = fs.rel(ino.0)?;
            let mut entries: Vec<(u64, FileType, OsString)> = Vec::new();
            for entry in fs::read_dir(fs.full(&rel)).map_err(Errno::from)? {
                let entry = entry.map_err(Errno::from)?;
                let meta = entry.metadata().map_err(Errno::from)?;
                let kind = to_attr(0, &meta, 0).kind;
                entries.push((fs.fuse_ino(meta.ino()), kind, entry.file_name()));
            }
            entries.sort_by(|a, b| a.2.cmp(&b.2));
            for (i, (child, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*child), i as u64 + 1, *kind, name) {
                    break;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        let result = fs.rel(ino.0).and_then(|rel| {
            File::open(fs.full(&rel))
                .and_then(|d| d.sync_all())
                .map_err(Errno::from)?;
            fs.commit();
            Ok(())
        });
        empty(reply, result);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match rustix::fs::statvfs(&self.inner().tree) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(sys(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let fs = self.inner();
        let result = fs.rel(ino.0).and_then(|rel| {
            rustix::fs::lsetxattr(
                fs.full(&rel),
                name,
                value,
                rustix::fs::XattrFlags::from_bits_retain(flags as u32),
            )
            .map_err(sys)
        });
        empty(reply, result);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let fs = self.inner();
        let result = fs.rel(ino.0).and_then(|rel| {
            let mut buf = vec![0u8; 65536];
            let n = rustix::fs::lgetxattr(fs.full(&rel), name, &mut buf[..]).map_err(sys)?;
            buf.truncate(n);
            Ok(buf)
        });
        xattr(reply, size, result);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let fs = self.inner();
        let result = fs.rel(ino.0).and_then(|rel| {
            let mut buf = vec![0u8; 65536];
            let n = rustix::fs::llistxattr(fs.full(&rel), &mut buf[..]).map_err(sys)?;
            buf.truncate(n);
            Ok(buf)
        });
        xattr(reply, size, result);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let fs = self.inner();
        let result = fs
            .rel(ino.0)
            .and_then(|rel| rustix::fs::lremovexattr(fs.full(&rel), name).map_err(sys));
        empty(reply, result);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if let Err(e) = self.inner().gate() {
            return reply.error(e);
        }
        let fs = self.inner();
        let result = (|| {
            let rel = fs.child(parent.0, name)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode & 0o7777)
                .custom_flags(flags & libc::O_CLOEXEC)
                .open(fs.full(&rel))
                .map_err(Errno::from)?;
            fs.created(&rel, false);
            let real = file.metadata().map_err(Errno::from)?.ino();
            let fh = fs.add_handle(real, file);
            Ok((fs.attr(&rel)?, fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Chronicle writes zeros where it cannot punch or reserve.
        reply.error(Errno::EOPNOTSUPP);
    }
}

fn xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, Errno>) {
    match result {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}

impl PowerCut {
    /// Writes held for files, for reports.
    pub fn held_writes(&self) -> usize {
        let st = self.0.state();
        st.held.values().map(Vec::len).sum()
    }
}
