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
//! use at once. Elsewhere every entry keeps its descriptor, as before.
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
//! file's handle (which carries a generation) and the entry is renewed.

use std::collections::{HashMap, VecDeque};
use std::ops::Deref;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use fuser::Errno;
use rustix::fs::{FileType, Stat};

use super::handles::{self, FileHandle};
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
    pub kind: FileType,
    /// `O_PATH` descriptor of the backing file, while open (see the module
    /// comment); use it through `NodeTable::pin`.
    slot: Mutex<Option<Arc<OwnedFd>>>,
    /// The file's handle, to reopen it; `None` where descriptors are kept.
    handle: Option<FileHandle>,
    /// The plaintext view of a regular file, shared by every open handle so
    /// that one lock orders all writers (see `content`).
    pub content: Mutex<Weak<EncryptedFile>>,
    /// A directory's name key, read from its id record on first use (it
    /// moves with the directory, so it never changes).
    pub dir_key: OnceLock<DirKey>,
}

impl Node {
    fn new(ino: u64, dev: u64, kind: FileType, fd: OwnedFd, handle: Option<FileHandle>) -> Node {
        Node {
            ino,
            dev,
            kind,
            slot: Mutex::new(Some(Arc::new(fd))),
            handle,
            content: Mutex::new(Weak::new()),
            dir_key: OnceLock::new(),
        }
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
}

struct Entry {
    node: Arc<Node>,
    lookups: u64,
    /// (device, backing inode) of a file on another device.
    foreign: Option<(u64, u64)>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    /// (device, backing inode) → inode number, for other devices.
    foreign: HashMap<(u64, u64), u64>,
    next_foreign: u64,
}

pub struct NodeTable {
    table: Mutex<Table>,
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
}

impl NodeTable {
    /// `budget`: how many descriptors of entries may stay open at once
    /// where handles let them be reopened.
    pub fn new(root_fd: OwnedFd, budget: usize) -> std::io::Result<Self> {
        let stat = rustix::fs::fstat(&root_fd)?;
        // Handles are used only where they work here: the file system gives
        // them and this process may open them.
        let mount_fd = rustix::fs::openat(
            &root_fd,
            ".",
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let handles = handles::handle_of(root_fd.as_fd())
            .and_then(|h| handles::open_handle(mount_fd.as_fd(), &h))
            .is_ok();
        if !handles {
            log::info!(
                "no file handles here: the mount keeps a descriptor per file the kernel remembers"
            );
        }
        let root = Arc::new(Node::new(
            ROOT_INO,
            stat.st_dev,
            FileType::Directory,
            root_fd,
            None,
        ));
        let mut table = Table::default();
        // The root is never forgotten: one lookup that no forget undoes.
        table.entries.insert(
            ROOT_INO,
            Entry {
                node: root,
                lookups: 1,
                foreign: None,
            },
        );
        Ok(NodeTable {
            table: Mutex::new(table),
            root_backing_ino: stat.st_ino,
            root_dev: stat.st_dev,
            mount_fd,
            handles,
            open: Mutex::new(VecDeque::new()),
            budget: budget.max(16),
        })
    }

    /// Holds `node`'s descriptor open, reopening it by its handle if it was
    /// closed.
    pub fn pin(&self, node: &Arc<Node>) -> Result<Pinned, Errno> {
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
        if dir.dev == self.root_dev {
            return self.fuse_ino(backing_ino);
        }
        let table = self.lock();
        match table.foreign.get(&(dir.dev, backing_ino)) {
            Some(&ino) => ino,
            None => FOREIGN_BIT | (backing_ino & !FOREIGN_BIT),
        }
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
        let node = self
            .lock()
            .entries
            .get(&ino)
            .map(|e| Arc::clone(&e.node))
            .ok_or(Errno::ESTALE)?;
        self.pin(&node)
    }

    /// Records one kernel lookup of the backing file open as `fd` (whose
    /// status is `stat`), reusing the existing entry for that file if any.
    /// `kind` is what the program sees (a file-form symlink is a symlink).
    pub fn remember(&self, fd: OwnedFd, stat: &Stat, kind: FileType) -> Result<Pinned, Errno> {
        // The handle of a file on BACKING's own device (others keep their
        // descriptors: their handles would need a descriptor on their own
        // file system to open).
        let handle = if self.handles && stat.st_dev == self.root_dev {
            handles::handle_of(fd.as_fd()).ok()
        } else {
            None
        };
        let mut table = self.lock();
        let (ino, foreign) = if stat.st_dev == self.root_dev {
            if stat.st_ino & FOREIGN_BIT != 0 {
                log::error!(
                    "backing inode number {} is too large to pass through; refusing it",
                    stat.st_ino
                );
                return Err(Errno::EOVERFLOW);
            }
            (self.fuse_ino(stat.st_ino), None)
        } else {
            let key = (stat.st_dev, stat.st_ino);
            let ino = match table.foreign.get(&key) {
                Some(&ino) => ino,
                None => {
                    table.next_foreign += 1;
                    let ino = FOREIGN_BIT | table.next_foreign;
                    table.foreign.insert(key, ino);
                    ino
                }
            };
            (ino, Some(key))
        };
        let mut fresh = None;
        // An entry whose descriptor was closed no longer pins its inode: the
        // file may be gone and its number reused by another. Handles differ
        // then (they carry a generation), and the entry is renewed.
        let reused = matches!(
            (table.entries.get(&ino).map(|e| &e.node.handle), &handle),
            (Some(Some(old)), Some(new)) if old != new
        );
        // The kernel's lookups of the number carry over to the new entry.
        let carried = if reused {
            table.entries.remove(&ino).map_or(0, |e| e.lookups)
        } else {
            0
        };
        let entry = table.entries.entry(ino).or_insert_with(|| {
            let node = Arc::new(Node::new(ino, stat.st_dev, kind, fd, handle));
            fresh = Some(Arc::clone(&node));
            Entry {
                node,
                lookups: carried,
                foreign,
            }
        });
        entry.lookups += 1;
        let node = Arc::clone(&entry.node);
        drop(table);
        let pinned = self.pin(&node)?;
        if let Some(fresh) = fresh {
            self.opened(&fresh);
        }
        Ok(pinned)
    }

    /// Adds a lookup to an entry the caller already holds (hard links).
    pub fn add_lookup(&self, ino: u64) {
        if let Some(entry) = self.lock().entries.get_mut(&ino) {
            entry.lookups += 1;
        }
    }

    /// The kernel dropped `count` lookups; the entry goes when none remain.
    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut table = self.lock();
        if let Some(entry) = table.entries.get_mut(&ino) {
            entry.lookups = entry.lookups.saturating_sub(count);
            if entry.lookups == 0 {
                if let Some(key) = entry.foreign {
                    table.foreign.remove(&key);
                }
                table.entries.remove(&ino);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent across a panic in another thread
        // (no update spans a point that can panic), so poisoning is ignored.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}
