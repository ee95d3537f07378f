//! Which requests may take long: the ring transport serves them from a pool
//! so that they do not hold back the quick requests of a CPU, and the
//! /dev/fuse loop calls in a reserve thread when its pollers take them; and
//! which are syncs, whose time tells the pollers whether a disk is behind
//! the mount (`polling.rs`).

use crate::ll::fuse_abi as abi;
use crate::ll::fuse_abi::fuse_opcode;

/// How a request may hold the thread that serves it (`request_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Served in microseconds, unless it waits for a lock.
    Quick,
    /// May take long: a truncation, a release, bulk I/O.
    MayTakeLong,
    /// Flushes to stable storage (FSYNC, FSYNCDIR): may take long, and
    /// while they take `polling::SLOW_SYNC` or longer on average, no
    /// thread polls.
    Sync,
}

impl RequestKind {
    pub(crate) fn may_take_long(self) -> bool {
        self != RequestKind::Quick
    }
}

/// Reads and writes of at least this many bytes may take long.
const BULK_BYTES: usize = 128 * 1024;

/// `FATTR_SIZE` in `fuse_setattr_in.valid`: a truncation, which may copy
/// or zero many blocks.
const FATTR_SIZE: u32 = 1 << 3;

/// Where a request's arguments begin, in the classic /dev/fuse layout.
pub(crate) const IN_HEADER_LEN: usize = size_of::<abi::fuse_in_header>();

/// How a request (in the classic /dev/fuse layout) may hold the thread
/// that serves it: a sync, another that `may_take_long`, or a quick one.
pub fn request_kind(request: &[u8]) -> RequestKind {
    let syncs = [
        fuse_opcode::FUSE_FSYNC as u32,
        fuse_opcode::FUSE_FSYNCDIR as u32,
    ];
    if opcode(request).is_some_and(|op| syncs.contains(&op)) {
        RequestKind::Sync
    } else if may_take_long(request) {
        RequestKind::MayTakeLong
    } else {
        RequestKind::Quick
    }
}

fn u32_at(request: &[u8], at: usize) -> Option<u32> {
    let bytes = request.get(at..at + 4)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

/// `fuse_in_header.opcode`, after the length.
fn opcode(request: &[u8]) -> Option<u32> {
    u32_at(request, 4)
}

/// Whether a request (in the classic /dev/fuse layout) may take long: a
/// sync, flush, release, fallocate, copy_file_range or truncation, or a
/// read or write of `BULK_BYTES` or more.
pub(crate) fn may_take_long(request: &[u8]) -> bool {
    use fuse_opcode::*;
    let Some(opcode) = opcode(request) else {
        return false;
    };
    let arg_u32 = |at: usize| u32_at(request, IN_HEADER_LEN + at);
    match opcode {
        // fuse_read_in.size follows fh and offset.
        op if op == FUSE_READ as u32 => arg_u32(16).is_some_and(|n| n as usize >= BULK_BYTES),
        op if op == FUSE_WRITE as u32 => request.len() >= BULK_BYTES,
        // fuse_setattr_in.valid comes first.
        op if op == FUSE_SETATTR as u32 => arg_u32(0).is_some_and(|valid| valid & FATTR_SIZE != 0),
        op => [
            FUSE_FSYNC as u32,
            FUSE_FSYNCDIR as u32,
            FUSE_FLUSH as u32,
            FUSE_RELEASE as u32,
            FUSE_FALLOCATE as u32,
            FUSE_COPY_FILE_RANGE as u32,
        ]
        .contains(&op),
    }
}
