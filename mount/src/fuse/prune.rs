//! Keeps the number of inodes the kernel remembers, and so the inode
//! table's memory, bounded: once the table holds more entries than its
//! limit, it picks entries no request has used lately and this module asks
//! the kernel to drop them (`FUSE_NOTIFY_PRUNE`, protocol 7.45, Linux 6.18).
//! The kernel drops only what nothing uses (no open file, no working
//! directory, no cached child), exactly as under memory pressure, and sends
//! FORGET for each inode it lets go, which removes the entry. A later use of
//! the name costs one LOOKUP.
//!
//! Notifications go out from a thread of their own: the kernel may need
//! answers from the serving threads while it prunes (writing back a file's
//! times), so a serving thread must never be the one waiting on it. Where
//! the kernel does not know the notification, it refuses the first one, and
//! the table then follows the kernel's own cache as before (logged once).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::nodes::Picker;

/// `fuse_notify_code::FUSE_NOTIFY_PRUNE` (include/uapi/linux/fuse.h).
const FUSE_NOTIFY_PRUNE: i32 = 9;
/// Node ids per notification: the kernel handles them 512 at a time.
const BATCH: usize = 512;
/// How long the kernel's FORGETs get to arrive before the table is looked
/// at again.
const SETTLE: Duration = Duration::from_millis(10);
/// While the table stays over its limit (its newest entries are skipped by
/// one pick, and the kernel may be slow to answer), it is looked at again
/// this often, this many times, before waiting for it to grow.
const RETRY: Duration = Duration::from_millis(100);
const RETRIES: u32 = 10;

/// How the inode table wakes the pruning thread, and how it ends it.
pub struct PruneSignal {
    state: Mutex<Signal>,
    wake: Condvar,
    /// Cleared when the kernel refuses the notification.
    supported: AtomicBool,
}

#[derive(Default)]
struct Signal {
    woken: bool,
    closed: bool,
}

impl PruneSignal {
    pub fn new() -> Self {
        PruneSignal {
            state: Mutex::default(),
            wake: Condvar::new(),
            supported: AtomicBool::new(true),
        }
    }

    /// Whether the kernel takes prune notifications (as far as known).
    pub fn supported(&self) -> bool {
        self.supported.load(Ordering::Relaxed)
    }

    /// The table has grown past where it should be pruned.
    pub fn wake(&self) {
        if self.supported() {
            self.lock().woken = true;
            self.wake.notify_one();
        }
    }

    /// Lets the thread end (the table is going away).
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Signal> {
        // Two flags cannot be left half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits to be woken, or for `timeout` if given; `false` once closed.
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let asleep = |s: &mut Signal| !s.woken && !s.closed;
        let mut signal = match timeout {
            Some(timeout) => {
                self.wake
                    .wait_timeout_while(self.lock(), timeout, asleep)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => self
                .wake
                .wait_while(self.lock(), asleep)
                .unwrap_or_else(|p| p.into_inner()),
        };
        signal.woken = false;
        !signal.closed
    }
}

/// Asks the kernel whether it takes prune notifications (an empty one),
/// then starts the thread that prunes `picker`'s table through `device` (a
/// duplicate of the session's /dev/fuse descriptor) each time `signal`
/// wakes it. It ends when the signal closes or the table is gone.
pub fn spawn(signal: Arc<PruneSignal>, device: OwnedFd, picker: Picker) -> io::Result<()> {
    match send(&device, &[]) {
        Ok(()) => log::info!(
            "the kernel forgets inodes on request: the mount remembers at most {}",
            picker.limit()
        ),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            log::info!(
                "the kernel cannot be asked to forget inodes (FUSE_NOTIFY_PRUNE, Linux 6.18): \
                 the mount's inode table follows the kernel's cache"
            );
            signal.supported.store(false, Ordering::Relaxed);
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    std::thread::Builder::new()
        .name("chronicle-prune".into())
        .spawn(move || {
            let mut retries = 0;
            while signal.wait((retries > 0).then_some(RETRY)) {
                match prune(&device, &picker) {
                    None => return,
                    Some(true) if retries == 0 => retries = RETRIES,
                    Some(true) => retries -= 1,
                    Some(false) => retries = 0,
                }
            }
        })?;
    Ok(())
}

/// Asks the kernel to forget picked entries until the table is back under
/// its limit or stops shrinking (what is left, the kernel uses now).
/// Whether the table is still over its limit; `None` when pruning is over
/// for good.
fn prune(device: &OwnedFd, picker: &Picker) -> Option<bool> {
    let mut before = usize::MAX;
    loop {
        let (len, inos) = picker.pick()?;
        if inos.is_empty() || len >= before {
            return Some(len > picker.limit());
        }
        before = len;
        for batch in inos.chunks(BATCH) {
            if let Err(e) = send(device, batch) {
                // The mount is going away (ENODEV) or the kernel is short
                // of memory: nothing is lost by not pruning now.
                log::debug!("prune notification not sent: {e}");
                return Some(true);
            }
        }
        std::thread::sleep(SETTLE);
    }
}

/// One notification: `fuse_out_header` (length, the code where a reply has
/// its error, unique 0), `fuse_notify_prune_out` (count, padding, spare),
/// then the node ids.
fn send(device: &OwnedFd, inos: &[u64]) -> io::Result<()> {
    let len = 16 + 16 + 8 * inos.len();
    let mut message = Vec::with_capacity(len);
    message.extend_from_slice(&(len as u32).to_ne_bytes());
    message.extend_from_slice(&FUSE_NOTIFY_PRUNE.to_ne_bytes());
    message.extend_from_slice(&0u64.to_ne_bytes());
    message.extend_from_slice(&(inos.len() as u32).to_ne_bytes());
    message.extend_from_slice(&[0; 12]);
    for ino in inos {
        message.extend_from_slice(&ino.to_ne_bytes());
    }
    let written = rustix::io::write(device, &message)?;
    if written != len {
        return Err(io::Error::other("short write of a prune notification"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_is_kept_until_waited_for_and_close_ends_the_wait() {
        let signal = PruneSignal::new();
        signal.wake();
        assert!(signal.wait(None));
        assert!(
            signal.wait(Some(Duration::from_millis(1))),
            "a timeout is not a close"
        );
        signal.close();
        assert!(!signal.wait(None));
    }
}
