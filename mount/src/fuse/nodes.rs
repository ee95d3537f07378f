//! The inode table: one entry per inode the kernel knows about, each holding
//! an `O_PATH` descriptor of its backing file. Operations address backing
//! files through these descriptors (`*at` system calls relative to the
//! parent's descriptor), never through stored paths, so renames anywhere in
//! the tree cannot make an entry point at the wrong file.
//!
//! A backing file is identified by (device, inode), never by inode number
//! alone: BACKING may span file systems (a btrfs subvolume, a bind mount,
//! another file system mounted inside it), whose inode numbers overlap.
//! Files on BACKING's own device keep their backing inode numbers (the root
//! is 1 and trades places with a backing inode numbered 1, if any); files
//! on any other device get numbers of their own from the upper half of the
//! range, which no backing file system here hands out. Numbers are stable
//! for the life of the mount and shared by hard links; a backing file
//! cannot be reused while its entry holds a descriptor on it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use fuser::Errno;
use rustix::fs::{FileType, Stat};

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
    /// `O_PATH | O_NOFOLLOW` descriptor of the backing file.
    pub fd: OwnedFd,
    /// The plaintext view of a regular file, shared by every open handle so
    /// that one lock orders all writers (see `content`).
    pub content: Mutex<Weak<EncryptedFile>>,
    /// A directory's name key, read from its id record on first use (it
    /// moves with the directory, so it never changes).
    pub dir_key: OnceLock<DirKey>,
}

impl Node {
    /// `/proc/self/fd/N`: reopens the backing file with real access modes.
    pub fn proc_path(&self) -> String {
        use std::os::fd::AsRawFd;
        format!("/proc/self/fd/{}", self.fd.as_fd().as_raw_fd())
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
}

impl NodeTable {
    pub fn new(root_fd: OwnedFd) -> std::io::Result<Self> {
        let stat = rustix::fs::fstat(&root_fd)?;
        let root = Arc::new(Node {
            ino: ROOT_INO,
            dev: stat.st_dev,
            kind: FileType::Directory,
            fd: root_fd,
            content: Mutex::new(Weak::new()),
            dir_key: OnceLock::new(),
        });
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
        })
    }

    /// The inode number a directory entry reports (`readdir`): exact on
    /// BACKING's device; for a directory on another device, the number of
    /// an entry already known, or a hint the later lookup replaces.
    pub fn entry_ino(&self, dir: &Node, backing_ino: u64) -> u64 {
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

    pub fn get(&self, ino: u64) -> Result<Arc<Node>, Errno> {
        self.lock()
            .entries
            .get(&ino)
            .map(|e| Arc::clone(&e.node))
            .ok_or(Errno::ESTALE)
    }

    /// Records one kernel lookup of the backing file open as `fd` (whose
    /// status is `stat`), reusing the existing entry for that file if any.
    /// `kind` is what the program sees (a file-form symlink is a symlink).
    pub fn remember(&self, fd: OwnedFd, stat: &Stat, kind: FileType) -> Result<Arc<Node>, Errno> {
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
        let entry = table.entries.entry(ino).or_insert_with(|| Entry {
            node: Arc::new(Node {
                ino,
                dev: stat.st_dev,
                kind,
                fd,
                content: Mutex::new(Weak::new()),
                dir_key: OnceLock::new(),
            }),
            lookups: 0,
            foreign,
        });
        entry.lookups += 1;
        Ok(Arc::clone(&entry.node))
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
