//! The contents of files the kernel opened without asking the mount.
//!
//! The mount answers OPEN with ENOSYS; the kernel then opens regular files
//! by itself for the rest of the mount and sends neither OPEN nor RELEASE
//! (two round trips fewer for every open and close), and reads, writes,
//! syncs and truncates arrive with file handle 0. Their `EncryptedFile`
//! is found here by inode number, opened on first use. CREATE is answered
//! ENOSYS too (a handle it gave would be released at close), so the
//! kernel makes new files with MKNOD; a file made so is kept here from the
//! start, open for its first write.
//!
//! With no close to say when a file is no longer used, the set is bounded:
//! past `CAPACITY` files, the ones unused longest are let go (their
//! descriptors closed), and a later request opens them again; not one that
//! still holds rewrites back (`let_go_oldest`). A file whose sync failed
//! may go: the journal remembers the failure for its next opening (which
//! fails until the volume is remounted if its journal records were still
//! live: `EncryptedFile::recover_from`). The
//! kernel's FORGET lets a file go at once: nothing can reach that inode
//! number any more. A file whose name is removed while the kernel may hold
//! it open stays reachable through its node's descriptor
//! (`NodeTable::removing`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::nodes::{Node, NodeTable};
use crate::content::EncryptedFile;

/// Most files kept open at once: each holds a descriptor and its blocks'
/// state, so the bound is far below the mount's memory bound, and lower
/// still under a small open-file limit or inode limit (`Kept::new`). A
/// program that works on more files at once pays an open of the backing
/// file per file, as it did when OPEN was sent.
pub const CAPACITY: usize = 256;

/// A file let go: the caller drops it through `Ops::let_go`, which is
/// where the last user of a file's contents must drop them.
pub type LetGo = (Arc<Node>, Arc<EncryptedFile>);

pub struct Kept {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    files: HashMap<u64, Entry>,
    /// Counts uses; an entry's `used` is the count at its last use.
    clock: u64,
}

struct Entry {
    node: Arc<Node>,
    content: Arc<EncryptedFile>,
    used: u64,
}

impl Kept {
    /// Keeps at most `CAPACITY` files, within what `nodes` allows: a kept
    /// file holds a descriptor and keeps its entry in the table, so at
    /// most the table's descriptor budget and a quarter of its limit (at
    /// least 16).
    pub fn new(nodes: &NodeTable) -> Kept {
        Kept {
            inner: Mutex::default(),
            capacity: CAPACITY.min(nodes.budget()).min(nodes.limit() / 4).max(16),
        }
    }

    /// The kept contents of `node`'s file, marked used. An entry of an
    /// older node with the same number (a file gone, its number reused)
    /// is not returned.
    pub fn get(&self, node: &Arc<Node>) -> Option<Arc<EncryptedFile>> {
        let mut inner = self.lock();
        let now = inner.tick();
        let entry = inner.files.get_mut(&node.ino)?;
        if !Arc::ptr_eq(&entry.node, node) {
            return None;
        }
        entry.used = now;
        Some(Arc::clone(&entry.content))
    }

    /// Keeps `content` as `node`'s file; returns what this displaced (an
    /// older entry for the number, the files unused longest past the
    /// capacity) for the caller to let go.
    pub fn keep(&self, node: &Arc<Node>, content: &Arc<EncryptedFile>) -> Vec<LetGo> {
        let mut inner = self.lock();
        let used = inner.tick();
        let entry = Entry {
            node: Arc::clone(node),
            content: Arc::clone(content),
            used,
        };
        let mut gone: Vec<LetGo> = inner
            .files
            .insert(node.ino, entry)
            .map(|old| (old.node, old.content))
            .into_iter()
            .collect();
        if inner.files.len() > self.capacity {
            gone.extend(inner.let_go_oldest(self.capacity - self.capacity / 8));
        }
        gone
    }

    /// Takes `node`'s file out (the kernel forgot it).
    pub fn remove(&self, node: &Arc<Node>) -> Option<Arc<EncryptedFile>> {
        let mut inner = self.lock();
        let entry = inner.files.get(&node.ino)?;
        if !Arc::ptr_eq(&entry.node, node) {
            return None;
        }
        inner.files.remove(&node.ino).map(|old| old.content)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a single map operation: a panic elsewhere cannot
        // leave the set half-changed, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Takes out the files unused longest until `keep` are left, in one
    /// pass: an eighth of the capacity at a time, so that each file kept
    /// costs one scan per eighth, not one scan each. Not a file that is
    /// not `idle` (it holds rewrites back, or is writing or syncing now):
    /// let go, it would have to write them at once, and if that failed,
    /// forget them. The held-rewrite writer writes them within a second;
    /// a later pass takes the file.
    fn let_go_oldest(&mut self, keep: usize) -> Vec<LetGo> {
        let mut by_age: Vec<(u64, u64)> =
            self.files.iter().map(|(&ino, e)| (e.used, ino)).collect();
        by_age.sort_unstable();
        let mut excess = self.files.len().saturating_sub(keep);
        let mut gone = Vec::with_capacity(excess);
        for (_, ino) in by_age {
            if excess == 0 {
                break;
            }
            if !self.files.get(&ino).is_some_and(|e| e.content.idle()) {
                continue;
            }
            if let Some(old) = self.files.remove(&ino) {
                gone.push((old.node, old.content));
                excess -= 1;
            }
        }
        gone
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Backend;
    use crate::content::ContentCrypto;
    use crate::keys::SecretKey;

    /// `count` files, each with its node (numbered from 1) and contents.
    fn files(dir: &std::path::Path, count: u64) -> Vec<LetGo> {
        let crypto = Arc::new(ContentCrypto::new(
            SecretKey::from_bytes([7; 32]),
            Backend::Ring,
        ));
        (1..=count)
            .map(|ino| {
                let path = dir.join(ino.to_string());
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .expect("create");
                let content = EncryptedFile::create(file, Arc::clone(&crypto), path.clone())
                    .expect("contents");
                (Node::for_test(ino, &path), Arc::new(content))
            })
            .collect()
    }

    fn kept(capacity: usize) -> Kept {
        Kept {
            inner: Mutex::default(),
            capacity,
        }
    }

    fn inos(gone: &[LetGo]) -> Vec<u64> {
        let mut inos: Vec<u64> = gone.iter().map(|(node, _)| node.ino).collect();
        inos.sort_unstable();
        inos
    }

    // Protects: past its capacity the set lets go of the files unused
    // longest, an eighth of the capacity at once, and a file used lately
    // stays.
    #[test]
    fn the_files_unused_longest_go_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = files(dir.path(), 18);
        let set = kept(16);
        for (node, content) in &all[..16] {
            assert!(set.keep(node, content).is_empty());
        }
        assert!(set.get(&all[0].0).is_some(), "file 1 used again");
        let (node, content) = &all[16];
        // 17 files, 14 stay: the three unused longest (2, 3, 4) go.
        assert_eq!(inos(&set.keep(node, content)), vec![2, 3, 4]);
        assert!(set.get(&all[0].0).is_some());
        assert!(set.get(&all[1].0).is_none());
    }

    // Protects: a newer node with the same inode number (the file gone,
    // its number reused) neither finds the old node's file nor takes it out
    // at FORGET; the old node does both.
    #[test]
    fn a_reused_number_does_not_reach_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = files(dir.path(), 1);
        let set = kept(16);
        set.keep(&all[0].0, &all[0].1);
        let newer = Node::for_test(1, &dir.path().join("1"));
        assert!(set.get(&newer).is_none());
        assert!(set.remove(&newer).is_none());
        assert!(set.get(&all[0].0).is_some());
        assert!(set.remove(&all[0].0).is_some());
        assert!(set.get(&all[0].0).is_none());
    }
}
