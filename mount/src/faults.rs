//! Backing-store failures on demand, for the unit tests of paths that only
//! a failing store takes: a journal record that cannot be cleared, a
//! journal that cannot be cut back, a shrink whose header cannot be written
//! after its cut, records that cannot be read back to be handed on.
//!
//! Each `Point` is one kind of call to the backing store. A test arms a
//! point (`fail_nth`) on its own thread, so tests running side by side do
//! not trip over each other's failures (a process-wide registry such as the
//! `fail` crate's would need every test serialised). Outside unit tests
//! `check` is empty and compiles away.

use std::io;

/// A kind of call to the backing store that a test can make fail.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Point {
    /// A file's header written over its first bytes (`store_header`).
    HeaderWrite,
    /// Sealed blocks written in place (`write_stored`).
    BlocksWrite,
    /// A backing file's `fsync` or `fdatasync` (`sync_backing`).
    BackingSync,
    /// A journal record's magic cleared (`Journal::clear`).
    JournalClear,
    /// The journal file cut back (`Journal::truncate`).
    JournalCut,
    /// A journal record's header read back (`Journal::carry_again`).
    JournalRead,
}

/// Fails with EIO if a test armed `point` on this thread and its turn has
/// come.
#[inline(always)]
pub(crate) fn check(point: Point) -> io::Result<()> {
    #[cfg(test)]
    if armed::take(point) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    let _ = point;
    Ok(())
}

#[cfg(test)]
pub(crate) use armed::{disarm, fail_nth};

#[cfg(test)]
mod armed {
    use super::Point;
    use std::cell::RefCell;

    thread_local! {
        /// Armed points, each with the calls still to let through.
        static ARMED: RefCell<Vec<(Point, usize)>> = const { RefCell::new(Vec::new()) };
    }

    /// Makes the `n`-th next call at `point` on this thread fail (the
    /// first is `n == 1`); the calls before it and after it succeed. A
    /// point armed again counts its `n` from after the earlier failure.
    pub(crate) fn fail_nth(point: Point, n: usize) {
        assert!(n >= 1, "calls are counted from 1");
        ARMED.with_borrow_mut(|armed| armed.push((point, n - 1)));
    }

    /// Disarms every point on this thread; `true` if one was still armed
    /// (its call never came).
    pub(crate) fn disarm() -> bool {
        ARMED.with_borrow_mut(|armed| !std::mem::take(armed).is_empty())
    }

    /// Whether this call at `point` is the one to fail.
    pub(super) fn take(point: Point) -> bool {
        ARMED.with_borrow_mut(|armed| {
            let Some(at) = armed.iter().position(|&(p, _)| p == point) else {
                return false;
            };
            match &mut armed[at].1 {
                0 => {
                    armed.remove(at);
                    true
                }
                left => {
                    *left -= 1;
                    false
                }
            }
        })
    }

    #[test]
    fn only_the_nth_call_fails() {
        fail_nth(Point::HeaderWrite, 2);
        assert!(super::check(Point::JournalClear).is_ok());
        assert!(super::check(Point::HeaderWrite).is_ok());
        assert!(super::check(Point::HeaderWrite).is_err());
        assert!(super::check(Point::HeaderWrite).is_ok());
        assert!(!disarm());
        fail_nth(Point::BackingSync, 1);
        let other = std::thread::spawn(|| super::check(Point::BackingSync).is_ok());
        assert!(other.join().expect("thread"), "armed on this thread only");
        assert!(disarm());
    }
}
