//! Bounds in time how long a file holds rewrites back: a file that holds
//! blocks (`content::guard`, one journal sync shared by many rewrites)
//! writes them when it is next synced, read, changed otherwise or closed;
//! one that is left alone writes them within `AFTER` anyway, from a thread
//! of its own, so that acknowledged writes do not wait in the mount's
//! memory alone for longer than the kernel keeps dirty pages.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::nodes::Node;

/// How long a file's held rewrites may wait for something else to write
/// them.
const AFTER: Duration = Duration::from_secs(1);

/// The files that held blocks back after a write, by inode.
#[derive(Default)]
pub struct HeldFiles {
    nodes: Mutex<HashMap<u64, Weak<Node>>>,
}

impl HeldFiles {
    /// `node`'s file holds rewrites back.
    pub fn note(&self, node: &Arc<Node>) {
        self.lock()
            .entry(node.ino)
            .or_insert_with(|| Arc::downgrade(node));
    }

    fn take(&self) -> HashMap<u64, Weak<Node>> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Weak<Node>>> {
        // A map of weak references cannot be left half-updated.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the thread that writes what noted files still hold, every
/// `AFTER`; it ends once `files` is dropped (with the mount's operations).
pub fn spawn(files: &Arc<HeldFiles>) -> io::Result<()> {
    let files = Arc::downgrade(files);
    std::thread::Builder::new()
        .name("chronicle-held".into())
        .spawn(move || loop {
            std::thread::sleep(AFTER);
            let Some(files) = files.upgrade() else {
                return;
            };
            for node in files.take().into_values().filter_map(|n| n.upgrade()) {
                write_held(&node);
            }
        })
        .map(drop)
}

/// Writes what `node`'s file holds back, if it is still open. Under the
/// node's content lock, as every last drop of a file is (`Ops::let_go`).
fn write_held(node: &Node) {
    let slot = node.content.lock().unwrap_or_else(|p| p.into_inner());
    let Some(content) = slot.upgrade() else {
        return;
    };
    if let Err(e) = content.write_held_back() {
        log::error!("{e}");
    }
    super::ops::Ops::let_go_locked(slot, content);
}
