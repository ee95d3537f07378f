//! The mount's figures of itself, and who may read them (`crate::control`
//! is how they are asked for): the requests it served by operation (counted
//! where fuser dispatches them) and the authentication failures it met.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use fuser::counters::RequestCounters;
use fuser::Errno;

use crate::control::{self, Report};

pub struct MountStats {
    /// The user the mount runs as (its real uid, the kernel's `user_id=`).
    owner: u32,
    started: Instant,
    requests: RequestCounters,
    authentication_failures: AtomicU64,
}

impl MountStats {
    pub fn new(owner: u32) -> Self {
        MountStats {
            owner,
            started: Instant::now(),
            requests: RequestCounters::new(),
            authentication_failures: AtomicU64::new(0),
        }
    }

    pub fn requests(&self) -> &RequestCounters {
        &self.requests
    }

    /// A request met a block, header, name, symlink target or extended
    /// attribute that failed authentication, and was refused.
    pub fn authentication_failed(&self) {
        self.authentication_failures.fetch_add(1, Relaxed);
    }

    pub fn report(&self) -> Report {
        Report {
            uptime: self.started.elapsed(),
            authentication_failures: self.authentication_failures.load(Relaxed),
            operations: self.requests.snapshot(),
        }
    }

    /// The answer to control request `cmd` from `uid` on inode `ino`.
    /// Only the root directory answers, and only to root and to the user
    /// the mount runs as: the figures tell how busy the volume is and
    /// whether it is under attack, which other users of an `--allow-other`
    /// mount have no business knowing. Any other request is ENOTTY, as a
    /// file system without ioctls answers; this one elsewhere than the
    /// root (a bind mount of a directory inside the volume) is EINVAL.
    pub fn control(&self, uid: u32, ino: u64, cmd: u32, out_size: u32) -> Result<Vec<u8>, Errno> {
        if cmd != control::STATS {
            return Err(Errno::ENOTTY);
        }
        if ino != fuser::INodeNo::ROOT.0 {
            return Err(Errno::EINVAL);
        }
        if uid != 0 && uid != self.owner {
            return Err(Errno::EPERM);
        }
        let report = self.report().encode();
        if report.len() > out_size as usize {
            return Err(Errno::EOVERFLOW);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LOOKUP: u32 = 1;
    const READDIRPLUS: u32 = 44;

    #[test]
    fn requests_are_counted_by_operation_and_unknown_opcodes_together() {
        let stats = MountStats::new(1_000);
        let requests = stats.requests();
        requests.record(LOOKUP, Duration::from_micros(3));
        requests.record(LOOKUP, Duration::from_micros(4));
        requests.record(READDIRPLUS, Duration::from_nanos(10));
        requests.record(7, Duration::from_nanos(1)); // no opcode 7
        requests.record(9_999, Duration::from_nanos(2));
        requests.record(52, Duration::from_nanos(5)); // not in fuser's list
        let counted: Vec<_> = stats
            .report()
            .operations
            .into_iter()
            .map(|o| (o.name, o.requests, o.nanos))
            .collect();
        assert_eq!(
            counted,
            vec![
                ("OTHER".to_string(), 2, 3),
                ("LOOKUP".to_string(), 2, 7_000),
                ("READDIRPLUS".to_string(), 1, 10),
                ("STATX".to_string(), 1, 5),
            ]
        );
    }

    #[test]
    fn a_handler_that_panics_is_counted() {
        let stats = MountStats::new(1_000);
        let handler = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _serving = stats.requests().serving(LOOKUP);
            panic!("a handler's bug");
        }));
        assert!(handler.is_err());
        let counted: Vec<_> = stats
            .report()
            .operations
            .into_iter()
            .map(|o| (o.name, o.requests))
            .collect();
        assert_eq!(counted, vec![("LOOKUP".to_string(), 1)]);
    }

    #[test]
    fn only_root_and_the_owner_read_the_figures_of_the_root() {
        let owner = 1_000;
        let stats = MountStats::new(owner);
        stats.authentication_failed();
        let root = fuser::INodeNo::ROOT.0;
        let max = control::REPORT_MAX as u32;
        for uid in [0, owner] {
            let bytes = stats.control(uid, root, control::STATS, max);
            let report = control::Report::decode(&bytes.expect("the owner may ask"));
            assert_eq!(report.map(|r| r.authentication_failures), Ok(1));
        }
        for stranger in [owner + 1, 65_534] {
            assert_eq!(
                stats.control(stranger, root, control::STATS, max),
                Err(Errno::EPERM)
            );
        }
        assert_eq!(
            stats.control(0, root + 1, control::STATS, max),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            stats.control(0, root, control::STATS + 1, max),
            Err(Errno::ENOTTY)
        );
        assert_eq!(
            stats.control(0, root, control::STATS, 16),
            Err(Errno::EOVERFLOW)
        );
    }
}
