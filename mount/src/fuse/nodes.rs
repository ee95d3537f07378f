//! The inode table: one entry per inode the kernel knows about, each with an
//! `O_PATH` descriptor of its backing file. Operations address backing
//! files through these descriptors (`*at` system calls relative to the
//! parent's descriptor), never through stored paths, so renames anywhere in
//! the tree cannot make an entry point at the wrong file.
//!
//! Descriptors are bounded: where the backing file system gives file
//! handles and the mount may open them (root), an entry keeps its file's
//! handle, and the descriptors of entries not in use are closed, oldest
//! first, once more than `budget` are open; a later use reopens the file by
//! its handle, which, like the descriptor, follows the file through any
//! rename. A tree of any size then needs descriptors only for the files in
//! use at once. Elsewhere every entry keeps its descriptor, so the table's
//! limit (below) is half the budget, and a lookup past the budget waits
//! briefly for the kernel to forget some.
//!
//! The number of entries is bounded too: past `limit`, the table picks
//! entries no request has used since its last pick (a clock) and asks the
//! kernel to forget them (`prune`); the kernel's FORGET then removes them.
//!
//! A backing file is identified by (device, inode), never by inode number
//! alone: BACKING may span file systems (a btrfs subvolume, a bind mount,
//! another file system mounted inside it), whose inode numbers overlap.
//! Files on BACKING's own device keep their backing inode numbers (the root
//! is 1 and trades places with a backing inode numbered 1, if any); files
//! on any other device get numbers of their own from the upper half of the
//! range, which no backing file system here hands out. Numbers are stable
//! for the life of the mount and shared by hard links. A backing inode
//! cannot be reused while its entry holds a descriptor on it; once an
//! entry's descriptor is closed, a reused number is told apart by the
//! file's handle (which carries a generation), and the new file gets a
//! number from the upper half too, while the old number keeps failing for
//! whoever still holds the old file.

use std::collections::{HashMap, VecDeque};
use std::ops::Deref;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use fuser::Errno;
use rustix::fs::{FileType, Mode, OFlags, Stat};

use super::handles::{self, FileHandle};
use super::prune::PruneSignal;
use crate::content::EncryptedFile;
use crate::names::DirKey;

pub const ROOT_INO: u64 = 1;

/// Inode numbers with this bit are given to files on other devices.
const FOREIGN_BIT: u64 = 1 << 63;

/// One inode the kernel has looked up.
pub struct Node {
    pub ino: u64,
    /// The backing device: the key of the inode, with the backing inode.
    pub dev: u64,
    backing_ino: u64,
    pub kind: FileType,
    /// Kernel lookups not yet forgotten; changed under the table's lock.
    lookups: AtomicU64,
    /// The table's pruning round in which a request last used the entry.
    used: AtomicU32,
    /// `O_PATH` descriptor of the backing file, while open (see the module
    /// comment); use it through `NodeTable::pin`.
    slot: Mutex<Option<Arc<OwnedFd>>>,
    /// The file's handle, to reopen it; `None` where descriptors are kept.
    handle: Option<FileHandle>,
    /// Names of the file being removed now (`NodeTable::removing`): while
    /// any is, its descriptor stays open.
    removals: AtomicU32,
    /// The file has lost its last name: its descriptor stays open until
    /// the entry goes.
    nameless: AtomicBool,
    /// The plaintext view of a regular file, shared by every user (the
    /// kept files, requests in flight, the held-rewrite writer) so that
    /// one lock orders all writers (see `Ops::content`).
    pub content: Mutex<Weak<EncryptedFile>>,
    /// A directory's name key, read from its id record on first use (it
    /// moves with the directory, so it never changes).
    pub dir_key: OnceLock<DirKey>,
    /// Names were added to a directory through the mount this many times
    /// (`gaining_entries`): a listing parked before one is not gone on
    /// with after it (`listing`).
    entries_version: AtomicU64,
    /// Names were removed from a directory through the mount this many
    /// times (`lost_entry`): a listing opened before one checks that what
    /// it gives still exists (`Ops::list_from`).
    entries_removed: AtomicU64,
}

/// Directory `dir` (an `O_PATH` descriptor, as nodes hold) opened so that it
/// can be listed, synced, asked about its file system or have handles
/// opened relative to it.
pub fn open_dir(dir: impl AsFd) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Moves a directory's entries version on when dropped, once the names it
/// stands for were added (`Node::gaining_entries`).
pub struct EntriesGained<'a>(&'a Node);

impl Drop for EntriesGained<'_> {
    fn drop(&mut self) {
        self.0.entries_version.fetch_add(1, Ordering::AcqRel);
    }
}

impl Node {
    fn new(ino: u64, stat: &Stat, kind: FileType, fd: OwnedFd, handle: Option<FileHandle>) -> Node {
        Node {
            ino,
            dev: stat.st_dev,
            backing_ino: stat.st_ino,
            kind,
            lookups: AtomicU64::new(0),
            used: AtomicU32::new(0),
            slot: Mutex::new(Some(Arc::new(fd))),
            handle,
            removals: AtomicU32::new(0),
            nameless: AtomicBool::new(false),
            content: Mutex::new(Weak::new()),
            dir_key: OnceLock::new(),
            entries_version: AtomicU64::new(0),
            entries_removed: AtomicU64::new(0),
        }
    }

    /// Held from just before names are added to this directory (a file,
    /// directory, link or symlink made, or a rename into it): the version
    /// moves when it is dropped, after the names are there, and a listing
    /// opened meanwhile has the old version and is not gone on with.
    /// Removals are counted apart (`lost_entry`) and retire nothing:
    /// programs that delete what they list as they list it (`rm -rf`) go
    /// on in the listing they opened, which on a file system that numbers
    /// entries by their place must not be sought anew; such a listing
    /// checks that each entry it gives still exists.
    pub fn gaining_entries(&self) -> EntriesGained<'_> {
        EntriesGained(self)
    }

    /// A name of this directory is gone (called once it is).
    pub fn lost_entry(&self) {
        self.entries_removed.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times names were removed from this directory.
    pub fn entries_removed(&self) -> u64 {
        self.entries_removed.load(Ordering::Acquire)
    }

    /// How many times names were added to this directory.
    pub fn entries_version(&self) -> u64 {
        self.entries_version.load(Ordering::Acquire)
    }

    /// For tests: an entry numbered `ino` for the file at `path`.
    #[cfg(test)]
    pub(super) fn for_test(ino: u64, path: &std::path::Path) -> Arc<Node> {
        let fd = rustix::fs::open(path, rustix::fs::OFlags::PATH, rustix::fs::Mode::empty())
            .expect("open");
        let stat = rustix::fs::fstat(&fd).expect("fstat");
        Arc::new(Node::new(ino, &stat, FileType::RegularFile, fd, None))
    }

    /// A name of the file is being removed, or none is left (`removing`).
    fn reachable_only_by_descriptor(&self) -> bool {
        self.removals.load(Ordering::Relaxed) > 0 || self.nameless.load(Ordering::Relaxed)
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<OwnedFd>>> {
        // A slot holds a descriptor or nothing; a panic cannot leave it
        // half-updated, so poisoning is ignored.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A node with its backing descriptor held open while this lives.
#[derive(Clone)]
pub struct Pinned {
    node: Arc<Node>,
    pub fd: Arc<OwnedFd>,
}

impl Deref for Pinned {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Pinned {
    /// `/proc/self/fd/N`: reopens the backing file with real access modes.
    pub fn proc_path(&self) -> String {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", self.fd.as_fd().as_raw_fd())
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Where the backing file is now (for messages).
    pub fn backing_path(&self) -> std::path::PathBuf {
        std::fs::read_link(self.proc_path()).unwrap_or_default()
    }
}

#[derive(Default)]
struct Table {
    entries: HashMap<u64, Arc<Node>>,
    /// (device, backing inode) → inode number, for files on other devices
    /// and for files whose backing number was reused (`remember`).
    foreign: HashMap<(u64, u64), u64>,
    next_foreign: u64,
    /// The table's size at which it next picks entries to prune.
    next_prune_at: usize,
}

impl Table {
    /// The inode number of the backing file (`dev`, `backing_ino`): the
    /// number it was given, or on BACKING's device its backing number;
    /// `None` for a file on another device that has none yet.
    fn number_of(&self, nodes: &NodeTable, dev: u64, backing_ino: u64) -> Option<u64> {
        match self.foreign.get(&(dev, backing_ino)) {
            Some(&ino) => Some(ino),
            None if dev == nodes.root_dev => Some(nodes.fuse_ino(backing_ino)),
            None => None,
        }
    }

    /// Gives the backing file `stat` a number of its own.
    fn new_number(&mut self, stat: &Stat) -> u64 {
        self.next_foreign += 1;
        let ino = FOREIGN_BIT | self.next_foreign;
        self.foreign.insert((stat.st_dev, stat.st_ino), ino);
        ino
    }
}

pub struct NodeTable {
    /// Shared with the pruning thread's `Picker`.
    table: Arc<Mutex<Table>>,
    root_backing_ino: u64,
    root_dev: u64,
    /// A (readable, not `O_PATH`) descriptor of BACKING's root, for opening
    /// handles on its file system.
    mount_fd: OwnedFd,
    /// Whether entries keep handles (and may close their descriptors).
    handles: bool,
    /// Entries with an open descriptor that may be closed, oldest first.
    open: Mutex<VecDeque<Weak<Node>>>,
    /// Most such descriptors open at once.
    budget: usize,
    /// Most entries kept before asking the kernel to forget some.
    limit: usize,
    /// The current pruning round (see `Node::used`).
    round: Arc<AtomicU32>,
    prune: Arc<PruneSignal>,
}

impl NodeTable {
    /// `budget`: how many descriptors of entries may stay open at once
    /// where handles let them be reopened; `limit`: how many entries to
    /// keep before asking the kernel, through `prune`, to forget some.
    pub fn new(
        root_fd: OwnedFd,
        budget: usize,
        limit: usize,
        prune: Arc<PruneSignal>,
    ) -> std::io::Result<Self> {
        let stat = rustix::fs::fstat(&root_fd)?;
        // Handles are used only where they work here: the file system gives
        // them and this process may open them.
        let mount_fd = open_dir(&root_fd)?;
        let handles = handles::handle_of(root_fd.as_fd())
            .and_then(|h| handles::open_handle(mount_fd.as_fd(), &h))
            .is_ok();
        let budget = budget.max(16);
        // Without handles every entry keeps its descriptor, so the entries
        // themselves must stay within the descriptors' budget, with room
        // for those the kernel is slow to forget.
        let limit = match handles {
            true => limit,
            false => limit.min(budget / 2),
        }
        .max(64);
        if !handles {
            log::info!(
                "no file handles here: the mount keeps a descriptor per file the kernel \
                 remembers, and asks the kernel to forget files past {limit}"
            );
        }
        let root = Arc::new(Node::new(
            ROOT_INO,
            &stat,
            FileType::Directory,
            root_fd,
            None,
        ));
        // The root is never forgotten: one lookup that no forget undoes.
        root.lookups.store(1, Ordering::Relaxed);
        let mut table = Table {
            next_prune_at: limit,
            ..Table::default()
        };
        table.entries.insert(ROOT_INO, root);
        Ok(NodeTable {
            table: Arc::new(Mutex::new(table)),
            root_backing_ino: stat.st_ino,
            root_dev: stat.st_dev,
            mount_fd,
            handles,
            open: Mutex::new(VecDeque::new()),
            budget,
            limit,
            round: Arc::new(AtomicU32::new(1)),
            prune,
        })
    }

    /// Holds `node`'s descriptor open, reopening it by its handle if it was
    /// closed.
    pub fn pin(&self, node: &Arc<Node>) -> Result<Pinned, Errno> {
        node.used
            .store(self.round.load(Ordering::Relaxed), Ordering::Relaxed);
        let mut slot = node.slot();
        if let Some(fd) = slot.as_ref() {
            return Ok(Pinned {
                node: Arc::clone(node),
                fd: Arc::clone(fd),
            });
        }
        let handle = node.handle.as_ref().ok_or(Errno::ESTALE)?;
        let fd = Arc::new(
            handles::open_handle(self.mount_fd.as_fd(), handle)
                .map_err(|e| Errno::from_i32(e.raw_os_error().unwrap_or(libc::ESTALE)))?,
        );
        *slot = Some(Arc::clone(&fd));
        drop(slot);
        self.opened(node);
        Ok(Pinned {
            node: Arc::clone(node),
            fd,
        })
    }

    /// Counts a descriptor that may be closed, and closes the oldest unused
    /// ones while more than the budget are open.
    fn opened(&self, node: &Arc<Node>) {
        if node.handle.is_none() {
            return;
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.push_back(Arc::downgrade(node));
        let mut scanned = 0;
        while open.len() > self.budget && scanned < open.len() {
            scanned += 1;
            let Some(oldest) = open.pop_front() else {
                break;
            };
            let Some(oldest) = oldest.upgrade() else {
                continue;
            };
            let mut slot = oldest.slot();
            // Read under the slot's lock, which `removing` takes after
            // counting a removal: the descriptor is not closed after that.
            if oldest.reachable_only_by_descriptor() {
                continue;
            }
            match slot.as_ref() {
                // In use (a request holds it): keep, look further.
                Some(fd) if Arc::strong_count(fd) > 1 => {
                    drop(slot);
                    open.push_back(Arc::downgrade(&oldest));
                }
                Some(_) => *slot = None,
                None => {}
            }
        }
    }

    /// The inode number a directory entry reports (`readdir`): exact on
    /// BACKING's device; for a directory on another device, the number of
    /// an entry already known, or a hint the later lookup replaces.
    pub fn entry_ino(&self, dir: &Node, backing_ino: u64) -> u64 {
        // (`dir` may be a `Pinned`: it dereferences to its node.)
        self.lock()
            .number_of(self, dir.dev, backing_ino)
            .unwrap_or(FOREIGN_BIT | (backing_ino & !FOREIGN_BIT))
    }

    /// The FUSE inode number for a backing inode number on BACKING's device.
    fn fuse_ino(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_backing_ino {
            ROOT_INO
        } else if backing_ino == ROOT_INO {
            self.root_backing_ino
        } else {
            backing_ino
        }
    }

    pub fn get(&self, ino: u64) -> Result<Pinned, Errno> {
        self.pin(&self.entry(ino)?)
    }

    /// The entry for `ino`, without opening its descriptor.
    pub fn entry(&self, ino: u64) -> Result<Arc<Node>, Errno> {
        self.lock()
            .entries
            .get(&ino)
            .map(Arc::clone)
            .ok_or(Errno::ESTALE)
    }

    /// Before a name of the backing file `stat` is removed (unlink, or a
    /// rename over it): keeps the descriptor of its entry (if the kernel
    /// knows the file) open while the removal runs, and for good if the
    /// file is left without a name (`removed`, called after the removal).
    /// The kernel opens files without telling the mount (`kept`), so
    /// requests for a file without a name may still come, and a handle
    /// cannot reopen such a file on every file system.
    pub fn removing(&self, stat: &Stat) -> Option<Arc<Node>> {
        let node = {
            let table = self.lock();
            let ino = table.number_of(self, stat.st_dev, stat.st_ino)?;
            table.entries.get(&ino).map(Arc::clone)
        }?;
        if (node.dev, node.backing_ino) != (stat.st_dev, stat.st_ino) {
            return None;
        }
        node.removals.fetch_add(1, Ordering::Relaxed);
        // Reopened now if it was closed, while the name still stands; the
        // count keeps `opened` from closing it again.
        if let Err(e) = self.pin(&node) {
            log::warn!(
                "inode {}: cannot keep its descriptor before it loses a name ({e:?}); \
                 a program that still has it open may get ESTALE",
                node.ino
            );
        }
        Some(node)
    }

    /// After the removal `removing` prepared (done or failed): a file left
    /// without a name keeps its descriptor until its entry goes; one that
    /// still has a name may have it closed again.
    pub fn removed(&self, node: &Arc<Node>) {
        if let Ok(pinned) = self.pin(node) {
            if rustix::fs::fstat(&pinned.fd).is_ok_and(|stat| stat.st_nlink == 0) {
                node.nameless.store(true, Ordering::Relaxed);
            }
        }
        // Under the slot's lock, like the check in `opened`.
        let slot = node.slot();
        node.removals.fetch_sub(1, Ordering::Relaxed);
        drop(slot);
        // `opened` may have dropped it from its queue meanwhile: a file that
        // kept a name goes back, so that its descriptor can be closed again.
        if !node.reachable_only_by_descriptor() {
            self.opened(node);
        }
    }

    /// Records one kernel lookup of the backing file open as `fd` (whose
    /// status is `stat`), reusing the existing entry for that file if any.
    /// `kind` is what the program sees (a file-form symlink is a symlink).
    pub fn remember(&self, fd: OwnedFd, stat: &Stat, kind: FileType) -> Result<Pinned, Errno> {
        if !self.handles {
            self.make_room();
        }
        // The handle of a file on BACKING's own device (others keep their
        // descriptors: their handles would need a descriptor on their own
        // file system to open).
        let handle = if self.handles && stat.st_dev == self.root_dev {
            handles::handle_of(fd.as_fd()).ok()
        } else {
            None
        };
        if stat.st_dev == self.root_dev && stat.st_ino & FOREIGN_BIT != 0 {
            log::error!(
                "backing inode number {} is too large to pass through; refusing it",
                stat.st_ino
            );
            return Err(Errno::EOVERFLOW);
        }
        let mut table = self.lock();
        let mut ino = match table.number_of(self, stat.st_dev, stat.st_ino) {
            Some(ino) => ino,
            None => table.new_number(stat),
        };
        // An entry whose descriptor was closed no longer pins its inode: the
        // file may be gone and its backing number reused by another. Handles
        // differ then (they carry a generation), and the new file gets a
        // number of its own: the kernel may still send requests for the old
        // number (a program holding the old file open), which must fail
        // (its entry can no longer reopen it), not reach the new file. The
        // old entry stays until the kernel forgets it.
        let reused = matches!(
            (table.entries.get(&ino).map(|node| &node.handle), &handle),
            (Some(Some(old)), Some(new)) if old != new
        );
        if reused {
            ino = table.new_number(stat);
        }
        let mut fresh = None;
        let node = table.entries.entry(ino).or_insert_with(|| {
            let node = Arc::new(Node::new(ino, stat, kind, fd, handle));
            fresh = Some(Arc::clone(&node));
            node
        });
        node.lookups.fetch_add(1, Ordering::Relaxed);
        let node = Arc::clone(node);
        if fresh.is_some() && table.entries.len() > table.next_prune_at {
            self.prune.wake();
        }
        drop(table);
        let pinned = self.pin(&node)?;
        if let Some(fresh) = fresh {
            self.opened(&fresh);
        }
        Ok(pinned)
    }

    /// Without handles every entry holds a descriptor: past the budget,
    /// waits a little for the kernel to forget some (other serving threads
    /// take its FORGETs) rather than let the next open fail with EMFILE.
    fn make_room(&self) {
        for _ in 0..40 {
            if self.lock().entries.len() < self.budget || !self.prune.supported() {
                return;
            }
            self.prune.wake();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Whether entry `ino` holds its descriptor open now (`remember_known`
    /// may then count a lookup on it); false while another thread holds
    /// the descriptor's slot (reopening it, say).
    pub fn holds_descriptor(&self, ino: u64) -> bool {
        let Some(node) = self.lock().entries.get(&ino).map(Arc::clone) else {
            return false;
        };
        node.slot.try_lock().is_ok_and(|slot| slot.is_some())
    }

    /// Counts one kernel lookup on entry `ino` if `stat`, read through a
    /// name just now, is of the entry's own backing file and the entry
    /// holds that file's descriptor open: an open descriptor pins the
    /// backing inode, so its number cannot have passed to another file
    /// (the module's assumption, true of local file systems), and nothing
    /// need be opened to tell (a listing's entries cost one `statat` each
    /// instead of an open, a stat, a handle and a close). None otherwise:
    /// the caller opens the file and `remember`s it.
    pub fn remember_known(&self, ino: u64, stat: &Stat) -> Option<Pinned> {
        let node = self.lock().entries.get(&ino).map(Arc::clone)?;
        if (node.dev, node.backing_ino) != (stat.st_dev, stat.st_ino) {
            return None;
        }
        // Not under the table's lock: a reopen by handle may hold the slot
        // through I/O. Held from here, the descriptor pins the file.
        let fd = Arc::clone(node.slot().as_ref()?);
        let table = self.lock();
        if !table
            .entries
            .get(&ino)
            .is_some_and(|current| Arc::ptr_eq(current, &node))
        {
            return None;
        }
        node.lookups.fetch_add(1, Ordering::Relaxed);
        node.used
            .store(self.round.load(Ordering::Relaxed), Ordering::Relaxed);
        drop(table);
        Some(Pinned { node, fd })
    }

    /// Adds a lookup to an entry the caller already holds (hard links).
    pub fn add_lookup(&self, ino: u64) {
        if let Some(node) = self.lock().entries.get(&ino) {
            node.lookups.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The kernel dropped `count` lookups. When none remain, returns the
    /// entry, which stays until `remove_forgotten`: the caller lets go of
    /// what the entry's file holds first, while a LOOKUP meanwhile still
    /// finds this entry (and counts on it again) instead of making another
    /// for the same file.
    pub fn forget(&self, ino: u64, count: u64) -> Option<Arc<Node>> {
        if ino == ROOT_INO {
            return None;
        }
        let table = self.lock();
        let node = table.entries.get(&ino)?;
        let left = node.lookups.load(Ordering::Relaxed).saturating_sub(count);
        node.lookups.store(left, Ordering::Relaxed);
        (left == 0).then(|| Arc::clone(node))
    }

    /// Removes `node`'s entry if it is still the entry for its number and
    /// still forgotten.
    pub fn remove_forgotten(&self, node: &Arc<Node>) {
        let mut table = self.lock();
        let current = table.entries.get(&node.ino);
        if !current.is_some_and(|c| Arc::ptr_eq(c, node))
            || node.lookups.load(Ordering::Relaxed) > 0
        {
            return;
        }
        let key = (node.dev, node.backing_ino);
        if table.foreign.get(&key) == Some(&node.ino) {
            table.foreign.remove(&key);
        }
        table.entries.remove(&node.ino);
        let len = table.entries.len();
        table.next_prune_at = table
            .next_prune_at
            .min(len.max(self.limit) + self.limit / 10);
    }

    /// Most entries kept before asking the kernel to forget some.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Most descriptors of entries open at once where handles reopen them.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Whether entries keep handles and may close their descriptors.
    pub fn reopens_by_handle(&self) -> bool {
        self.handles
    }

    /// What the pruning thread picks entries with.
    pub fn picker(&self) -> Picker {
        Picker {
            table: Arc::downgrade(&self.table),
            round: Arc::clone(&self.round),
            limit: self.limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // The table stays consistent across a panic in another thread (no
    // update spans a point that can panic), so poisoning is ignored.
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// Picks entries of a `NodeTable` for the kernel to forget (see `prune`).
pub struct Picker {
    table: Weak<Mutex<Table>>,
    round: Arc<AtomicU32>,
    limit: usize,
}

impl Picker {
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The table's size and the entries to ask the kernel to forget, enough
    /// to bring it back to nine tenths of its limit: those no request has
    /// used since the last pick and that nothing holds now (no kept file,
    /// listing or request). Starts a new round. `None` once the table is
    /// gone.
    ///
    /// The table wakes the pruning thread again only once it is a tenth of
    /// the limit past the larger of the limit and its smallest size since
    /// this pick, so that entries the kernel keeps (in use there) cost one
    /// scan per tenth, not one per lookup.
    pub fn pick(&self) -> Option<(usize, Vec<u64>)> {
        let table = self.table.upgrade()?;
        let mut table = lock(&table);
        let len = table.entries.len();
        table.next_prune_at = len.max(self.limit) + self.limit / 10;
        if len <= self.limit {
            return Some((len, Vec::new()));
        }
        let round = self.round.fetch_add(1, Ordering::Relaxed);
        let picked: Vec<u64> = table
            .entries
            .iter()
            .filter(|(&ino, node)| {
                ino != ROOT_INO
                    && node.used.load(Ordering::Relaxed) != round
                    && Arc::strong_count(node) == 1
            })
            .map(|(&ino, _)| ino)
            .take(len - self.limit * 9 / 10)
            .collect();
        log::debug!(
            "{len} inodes remembered (limit {}): asking the kernel to forget {}",
            self.limit,
            picked.len()
        );
        Some((len, picked))
    }
}

impl Drop for NodeTable {
    fn drop(&mut self) {
        self.prune.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{openat, statat, AtFlags, Mode, OFlags};

    fn open_path(dir: &OwnedFd, name: &str) -> OwnedFd {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        openat(dir, name, flags, Mode::empty()).expect("open")
    }

    // Protects: a listing counts a lookup on an entry by the status of its
    // name alone (`remember_known`) only while the entry's descriptor pins
    // the file the name leads to; anything else is opened and remembered.
    #[test]
    fn a_known_entry_held_open_is_counted_by_its_status_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["a", "b"] {
            std::fs::write(dir.path().join(name), name).expect("write");
        }
        let root = openat(
            rustix::fs::CWD,
            dir.path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("root");
        let dir_fd = root.try_clone().expect("clone");
        let table = NodeTable::new(root, 16, 64, Arc::new(PruneSignal::new())).expect("table");
        let status = |name: &str| statat(&dir_fd, name, AtFlags::SYMLINK_NOFOLLOW).expect("stat");
        let fd = open_path(&dir_fd, "a");
        let stat = rustix::fs::fstat(&fd).expect("fstat");
        let a = table
            .remember(fd, &stat, FileType::RegularFile)
            .expect("remember")
            .ino;
        let lookups = |ino| {
            table
                .entry(ino)
                .expect("entry")
                .lookups
                .load(Ordering::Relaxed)
        };
        assert_eq!(lookups(a), 1);
        assert!(table.holds_descriptor(a));

        let known = table.remember_known(a, &status("a")).expect("held open");
        assert_eq!(known.ino, a);
        assert_eq!(lookups(a), 2, "counted");
        assert!(
            table.remember_known(a, &status("b")).is_none(),
            "the name leads to another file"
        );
        assert!(
            table.remember_known(a + 1000, &status("a")).is_none(),
            "no such entry"
        );
        assert_eq!(lookups(a), 2);

        // Once its descriptor is closed, the number could have passed to
        // another file: only opening it tells.
        let entry = table.entry(a).expect("entry");
        drop(known);
        *entry.slot() = None;
        assert!(!table.holds_descriptor(a));
        assert!(table.remember_known(a, &status("a")).is_none(), "closed");
        assert_eq!(lookups(a), 2);
    }
}
