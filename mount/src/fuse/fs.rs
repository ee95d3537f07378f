//! The `fuser::Filesystem` implementation. Each trait method only turns the
//! `Result` of a helper in `ops` into a reply.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::ops::{Ops, XattrReply};

/// How long the kernel may cache attributes and directory entries. Every
/// change goes through this mount, and the kernel updates what it caches
/// from the replies, so the timeout mostly bounds how long a change made
/// to the backing directory behind the mount's back may go unseen (stale
/// sizes or names, never forged data: contents are always read and
/// authenticated by the mount). The mount's own changes that no reply
/// carries are cosmetic: a set-user-id bit it clears on a write (the
/// mount is `nosuid`, so the bit never takes effect) and a directory's
/// backing size and times after its hidden records change. At one second,
/// a program that lists a tree and then opens its files a second later
/// sent a LOOKUP per file (`md5sum` of a source tree: 0.67 a file).
const TTL: Duration = Duration::from_secs(30);
const GENERATION: Generation = Generation(0);

/// The largest write and readahead we ask the kernel for (1 MiB, the
/// kernel's FUSE maximum of 256 pages).
const MAX_IO: u32 = 1 << 20;

/// The same over io_uring: every ring entry's buffer must hold the largest
/// request, and there are eight entries per CPU, each resident up to the
/// largest request it has carried. At 1 MiB the rings cost about 14 MiB of
/// resident memory per CPU, at 256 KiB about 4.5, with writes and reads as
/// fast over the rings (through /dev/fuse, 256 KiB writes are slower:
/// docs/PERFORMANCE.md, "Smaller requests over the rings").
const RING_MAX_IO: u32 = 1 << 18;

pub struct ChronicleFs {
    pub(super) ops: Ops,
    pub(super) writeback_cache: bool,
    /// Serve over io_uring if the kernel offers it (`MountOptions`).
    pub(super) io_uring: bool,
    /// The kernel opens directories by itself when told ENOSYS (Linux 5.1
    /// and later; `opendir`).
    pub(super) kernel_opens_dirs: bool,
}

impl fuser::Filesystem for ChronicleFs {
    fn request_counters(&self) -> Option<&fuser::counters::RequestCounters> {
        Some(self.ops.stats().requests())
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_DIO
            // Not FUSE_ATOMIC_O_TRUNC: OPEN is never sent (see `open`), so
            // a truncating open must reach the mount as a SETATTR.
            // We clear set-user-id and set-group-id bits ourselves (see
            // `Ops::write`); in exchange the kernel stops asking for
            // security.capability before every write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if self.writeback_cache {
            wanted |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        // A listing with attributes makes the kernel remember every entry
        // at once. Where each remembered file costs the mount a descriptor
        // (no file handles), listings stay plain and the kernel looks up
        // only the files a program goes on to use.
        if self.ops.reopens_by_handle() {
            wanted |= InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO;
        }
        for flag in wanted.iter() {
            if config.add_capabilities(flag).is_err() {
                log::debug!("kernel lacks FUSE capability {flag:?}");
            }
        }
        let granted = config.capabilities();
        self.kernel_opens_dirs = granted.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        self.ops.set_kernel_keeps_times(
            self.writeback_cache && granted.contains(InitFlags::FUSE_WRITEBACK_CACHE),
        );
        let rings = self.io_uring && granted.contains(InitFlags::FUSE_OVER_IO_URING);
        let max_io = if rings { RING_MAX_IO } else { MAX_IO };
        // Each setter returns the value it replaced, or the largest it
        // takes when asked for more.
        let write = match config.set_max_write(max_io) {
            Ok(_) => max_io,
            Err(max) => {
                let _ = config.set_max_write(max);
                max
            }
        };
        let readahead = match config.set_max_readahead(max_io) {
            Ok(_) => max_io,
            Err(max) => {
                let _ = config.set_max_readahead(max);
                max
            }
        };
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        log::debug!("max write {write}, max readahead {readahead}");
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.ops.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            // A negative entry (inode 0) lets the kernel remember that the
            // name does not exist, saving a round trip before each create.
            Err(e) if e == Errno::ENOENT => reply.entry(&TTL, &negative_entry(), GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ops.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.ops.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        // Files have no handles (`open`): a truncate finds the file by inode.
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = super::ops::AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            ctime,
        };
        match self.ops.setattr(req.into(), ino.0, change) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.ops.readlink(ino.0) {
            Ok(target) => reply.data(target.as_encoded_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self
            .ops
            .mknod(req.into(), parent.0, name, mode & !umask, rdev)
        {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.ops.mkdir(req.into(), parent.0, name, mode & !umask) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.ops.unlink(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.ops.unlink(parent.0, name, true));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self
            .ops
            .symlink(req.into(), parent.0, link_name, target.as_os_str())
        {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
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
        empty(
            reply,
            self.ops
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.ops.link(ino.0, newparent.0, newname) {
            Ok(attr) => reply.entry(&TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS tells the kernel to open regular files by itself for the
        // rest of the mount: no OPEN and no RELEASE, and the file's
        // requests come with handle 0 and find its contents by inode
        // (`kept`). A damaged file then fails at its first read instead of
        // at open. Opening keeps the file's cached pages: every change goes
        // through this mount, so the cache is never stale for the programs
        // using it, and reopening a file (as the engine does with its
        // segments) need not decrypt it again. Data changed in the backing
        // directory behind the mount's back is not noticed until the pages
        // are evicted; it could never be returned as forged data, only as
        // the authentic older version.
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.ops.read(ino.0, offset, size, |result| match result {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(e),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill_suidgid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.ops.write(ino.0, offset, data, kill_suidgid) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing needs a FLUSH at every close: writes reach the backing
        // file before they are acknowledged, but for rewrites a file holds
        // back to share one journal sync (content::guard), which its next
        // fsync or read writes, or `held` within a second (an
        // error then goes to that fsync or read; otherwise it is logged and
        // the journal's copies are kept). ENOSYS tells the kernel so for
        // the whole mount: it stops sending a FLUSH at every close (it
        // still writes cached pages back first, and close reports their
        // errors).
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.ops.fsync(ino.0, datasync));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // As with files (`open`): ENOSYS has the kernel open directories
        // by itself for the rest of the mount, with no OPENDIR and no
        // RELEASEDIR, and cache what it listed (a listing from offset 0
        // reuses it unless the directory changed through the mount since;
        // docs/SECURITY.md on changes behind the mount's back). Listings
        // need no handle: an entry's position is its backing directory's
        // (`listing`).
        if self.kernel_opens_dirs {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_CACHE_DIR)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.ops.readdir(ino.0, offset, |ino, next, kind, name| {
            reply.add(INodeNo(ino), next, kind, name)
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let result = self.ops.readdirplus(ino.0, offset, |next, name, attr| {
            reply.add(attr.ino, next, name, &TTL, attr, GENERATION)
        });
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
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.ops.fsyncdir(ino.0, datasync));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.ops.statfs() {
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
            Err(e) => reply.error(e),
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
        empty(reply, self.ops.setxattr(ino.0, name, value, flags));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.ops.getxattr(ino.0, name));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.ops.listxattr(ino.0));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.ops.removexattr(ino.0, name));
    }

    /// The control requests of `chronicle stats` (`crate::control`).
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let answer = self.ops.stats().control(req.uid(), ino.0, cmd, out_size);
        match answer {
            // The result is the report's length (at most REPORT_MAX).
            Ok(report) => reply.ioctl(report.len() as i32, &report),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.ops.access(ino.0, mask.bits()));
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // ENOSYS tells the kernel to make new regular files with MKNOD for
        // the rest of the mount and open them by itself (OPEN is ENOSYS
        // too): a file made by CREATE has a handle, whose RELEASE at close
        // would be a round trip more per new file.
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.ops.fallocate(ino.0, offset, length, mode));
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.ops.lseek(ino.0, offset, whence) {
            Ok(at) => reply.offset(at),
            Err(e) => reply.error(e),
        }
    }
}

fn negative_entry() -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// The xattr protocol: a zero `size` asks for the length; a short buffer is `ERANGE`.
fn xattr_reply(reply: ReplyXattr, size: u32, result: Result<XattrReply, Errno>) {
    match result {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}
