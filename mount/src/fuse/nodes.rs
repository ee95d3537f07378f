//! The inode table: one entry per inode the kernel knows about, each holding
//! an `O_PATH` descriptor of its backing file. Operations address backing
//! files through these descriptors (`*at` system calls relative to the
//! parent's descriptor), never through stored paths, so renames anywhere in
//! the tree cannot make an entry point at the wrong file.
//!
//! Inode numbers are the backing inode numbers (the root is 1 and trades
//! places with a backing inode numbered 1, if any). They are stable for the
//! life of the mount and shared by hard links; a backing number cannot be
//! reused while its entry holds a descriptor on it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use fuser::Errno;
use rustix::fs::{FileType, Stat};

use crate::content::EncryptedFile;

pub const ROOT_INO: u64 = 1;

/// One inode the kernel has looked up.
pub struct Node {
    pub ino: u64,
    pub kind: FileType,
    /// `O_PATH | O_NOFOLLOW` descriptor of the backing file.
    pub fd: OwnedFd,
    /// The plaintext view of a regular file, shared by every open handle so
    /// that one lock orders all writers (see `content`).
    pub content: Mutex<Weak<EncryptedFile>>,
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
}

pub struct NodeTable {
    entries: Mutex<HashMap<u64, Entry>>,
    root_backing_ino: u64,
}

impl NodeTable {
    pub fn new(root_fd: OwnedFd) -> std::io::Result<Self> {
        let stat = rustix::fs::fstat(&root_fd)?;
        let root = Arc::new(Node {
            ino: ROOT_INO,
            kind: FileType::Directory,
            fd: root_fd,
            content: Mutex::new(Weak::new()),
        });
        let mut entries = HashMap::new();
        // The root is never forgotten: one lookup that no forget undoes.
        entries.insert(
            ROOT_INO,
            Entry {
                node: root,
                lookups: 1,
            },
        );
        Ok(NodeTable {
            entries: Mutex::new(entries),
            root_backing_ino: stat.st_ino,
        })
    }

    /// The FUSE inode number for a backing inode number.
    pub fn fuse_ino(&self, backing_ino: u64) -> u64 {
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
            .get(&ino)
            .map(|e| Arc::clone(&e.node))
            .ok_or(Errno::ESTALE)
    }

    /// Records one kernel lookup of the backing file open as `fd` (whose
    /// status is `stat`), reusing the existing entry for that inode if any.
    pub fn remember(&self, fd: OwnedFd, stat: &Stat) -> Arc<Node> {
        let ino = self.fuse_ino(stat.st_ino);
        let mut entries = self.lock();
        let entry = entries.entry(ino).or_insert_with(|| Entry {
            node: Arc::new(Node {
                ino,
                kind: FileType::from_raw_mode(stat.st_mode),
                fd,
                content: Mutex::new(Weak::new()),
            }),
            lookups: 0,
        });
        entry.lookups += 1;
        Arc::clone(&entry.node)
    }

    /// Adds a lookup to an entry the caller already holds (hard links).
    pub fn add_lookup(&self, ino: u64) {
        if let Some(entry) = self.lock().get_mut(&ino) {
            entry.lookups += 1;
        }
    }

    /// The kernel dropped `count` lookups; the entry goes when none remain.
    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&ino) {
            entry.lookups = entry.lookups.saturating_sub(count);
            if entry.lookups == 0 {
                entries.remove(&ino);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // Entries stay consistent across a panic in another thread (each
        // update is a single map operation), so poisoning is ignored.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}
