//! Bounds in time how long a file holds rewrites back: a file that holds
//! blocks (`content::guard`, one journal sync shared by many rewrites)
//! writes them when it is next synced, read, changed otherwise or let go;
//! one that is left alone has them written within about `AFTER` of a
//! write anyway, from a thread of its own, so that acknowledged writes do
//! not wait in the mount's memory alone for longer than the kernel keeps
//! dirty pages.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::nodes::Node;
use crate::content::EncryptedFile;

/// How long a file's held rewrites may wait for something else to write
/// them.
const AFTER: Duration = Duration::from_secs(1);

/// The files that hold blocks back, and the thread that writes them; the
/// thread is stopped and joined when this is dropped (with the mount's
/// operations), so that no file is written after the mount ends.
pub struct HeldWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// By inode; a failed write is tried again a second later.
    nodes: HashMap<u64, Noted>,
    stopped: bool,
}

struct Noted {
    node: Weak<Node>,
    /// Its last write failed (logged once, not every second).
    failed: bool,
}

impl HeldWriter {
    pub fn start() -> io::Result<HeldWriter> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("chronicle-held".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.serve()
            })?;
        Ok(HeldWriter {
            shared,
            thread: Some(thread),
        })
    }

    /// After `content` of `node` was written to: notes it if it now holds
    /// blocks back.
    pub fn note_if_holding(&self, node: &Arc<Node>, content: &EncryptedFile) {
        if content.holds_back() {
            self.shared.note(node, false);
        }
    }
}

impl Drop for HeldWriter {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the thread writing held rewrites had stopped (it panicked)");
            }
        }
    }
}

impl Shared {
    fn note(&self, node: &Arc<Node>, failed: bool) {
        let mut state = self.lock();
        let first = state.nodes.is_empty();
        // Replaced, not kept: an entry may be a forgotten node's whose
        // inode number came back.
        state.nodes.insert(
            node.ino,
            Noted {
                node: Arc::downgrade(node),
                failed,
            },
        );
        // Only the first note wakes the thread (it then waits out `AFTER`
        // on its own): a wake-up per write would cost task switches.
        if first {
            self.wake.notify_one();
        }
    }

    /// Waits for noted files, lets them hold for `AFTER`, writes what they
    /// still hold; until stopped.
    fn serve(&self) {
        loop {
            let noted = {
                let mut state = self.lock();
                while state.nodes.is_empty() && !state.stopped {
                    state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.stopped {
                    return;
                }
                let (mut state, _) = self
                    .wake
                    .wait_timeout_while(state, AFTER, |s| !s.stopped)
                    .unwrap_or_else(|p| p.into_inner());
                if state.stopped {
                    return;
                }
                std::mem::take(&mut state.nodes)
            };
            for noted in noted.into_values() {
                let Some(node) = noted.node.upgrade() else {
                    continue;
                };
                if let Err(e) = write_held(&node) {
                    if !noted.failed {
                        log::error!("{e}; trying again every second");
                    }
                    self.note(&node, true);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A map of weak references and a flag cannot be left half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes what `node`'s file holds back, if it is still open. Under the
/// node's content lock, as every last drop of a file is (`Ops::let_go`).
fn write_held(node: &Node) -> crate::error::Result<()> {
    let slot = node.content.lock().unwrap_or_else(|p| p.into_inner());
    let Some(content) = slot.upgrade() else {
        return Ok(());
    };
    let written = content.write_held_back();
    super::ops::Ops::let_go_locked(slot, content);
    written
}
