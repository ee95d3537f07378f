//! Counts of the requests a session served, by operation, and the time
//! their handlers took: a file system's account of its own traffic.
//!
//! A file system that wants them returns its `RequestCounters` from
//! `Filesystem::request_counters`; every request dispatched to it after
//! the handshake (over /dev/fuse or the rings) is then counted once its
//! handler returns or panics. The
//! time is the handler's, from dispatch to return (its reply included),
//! not the round trip the program saw: the kernel's queueing and the
//! wake-ups are not in it. The clock is read twice a request (`Instant`:
//! from the vDSO, no system call, where the clocksource allows, as TSC
//! does).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use std::time::Instant;

use crate::ll::fuse_abi::fuse_opcode;

/// Opcodes below this are counted each in a slot of their own (Linux
/// 6.18's are all below it); any other is counted in slot 0.
const SLOTS: usize = 64;

/// Request counts and handler times by opcode, updated without locks.
#[derive(Debug)]
pub struct RequestCounters {
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default)]
struct Slot {
    requests: AtomicU64,
    nanos: AtomicU64,
}

/// One operation's figures at the time of a `RequestCounters::snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationCount {
    /// The operation's name as the protocol spells it, without `FUSE_`
    /// (`LOOKUP`, `READDIRPLUS`); `OTHER` for opcodes this crate does not
    /// know.
    pub name: String,
    /// Requests served.
    pub requests: u64,
    /// Time their handlers took, in nanoseconds.
    pub nanos: u64,
}

impl Default for RequestCounters {
    fn default() -> Self {
        RequestCounters {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

impl RequestCounters {
    /// Counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the clock of a request of `opcode`; it is counted when the
    /// returned value is dropped, after its handler, which counts a
    /// handler that panicked too (the session answers it EIO).
    pub fn serving(&self, opcode: u32) -> Serving<'_> {
        Serving {
            counters: self,
            opcode,
            started: Instant::now(),
        }
    }

    /// Counts one request of `opcode` whose handler took `took`.
    pub fn record(&self, opcode: u32, took: Duration) {
        let slot = &self.slots[slot_of(opcode)];
        slot.requests.fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        slot.nanos.fetch_add(nanos, Relaxed);
    }

    /// Every operation served at least once, in opcode order. Each
    /// operation's two figures are read apart, so a request counted while
    /// the snapshot is taken may appear in one and not yet the other.
    pub fn snapshot(&self) -> Vec<OperationCount> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(opcode, slot)| {
                let requests = slot.requests.load(Relaxed);
                (requests > 0).then(|| OperationCount {
                    name: opcode_name(opcode as u32),
                    requests,
                    nanos: slot.nanos.load(Relaxed),
                })
            })
            .collect()
    }
}

/// A request being served (`RequestCounters::serving`).
#[derive(Debug)]
#[must_use = "the request is counted when this is dropped"]
pub struct Serving<'a> {
    counters: &'a RequestCounters,
    opcode: u32,
    started: Instant,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.counters.record(self.opcode, self.started.elapsed());
    }
}

fn slot_of(opcode: u32) -> usize {
    let known = fuse_opcode::try_from(opcode).is_ok()
        || NEWER_OPCODES.iter().any(|(number, _)| *number == opcode);
    match usize::try_from(opcode) {
        Ok(slot) if slot < SLOTS && known => slot,
        _ => 0,
    }
}

/// `LOOKUP` for opcode 1: the protocol's name without its `FUSE_` prefix.
fn opcode_name(opcode: u32) -> String {
    match fuse_opcode::try_from(opcode) {
        Ok(op) => {
            let name = format!("{op:?}");
            name.strip_prefix("FUSE_").unwrap_or(&name).to_string()
        }
        Err(_) => NEWER_OPCODES
            .iter()
            .find(|(number, _)| *number == opcode)
            .map_or("OTHER", |(_, name)| name)
            .to_string(),
    }
}

/// Opcodes of the protocol that this crate's `fuse_opcode` does not list
/// (Linux `include/uapi/linux/fuse.h`); the kernel sends them, and a file
/// system that does not serve them answers ENOSYS.
const NEWER_OPCODES: [(u32, &str); 5] = [
    (48, "SETUPMAPPING"),
    (49, "REMOVEMAPPING"),
    (50, "SYNCFS"),
    (51, "TMPFILE"),
    (52, "STATX"),
];
