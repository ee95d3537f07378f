//! The control request: how `chronicle stats` asks a running mount for its
//! figures.
//!
//! It is an `ioctl` on the mount's root directory. The kernel hands it to
//! the mount as a FUSE request that carries the caller's uid, so the mount
//! itself decides who may ask (root and the user who mounted it, see
//! `fuse::stats`), and needs no socket or file of its own: nothing to
//! find, to squat on or to leave behind, and the same for a mount made by
//! /etc/fstab or systemd. Further requests fit beside it under other
//! numbers of the same group.
//!
//! The report is text, a line a figure, so that an older `chronicle stats`
//! skips figures it does not know:
//!
//! ```text
//! chronicle-stats 1
//! uptime_ns 81234000000
//! authentication_failures 0
//! op LOOKUP 13997 291000000
//! ```
//!
//! An `op` line is an operation's requests and the time the mount took
//! over them, in nanoseconds.

use std::fmt::Write as _;
use std::time::Duration;

mod ask;
pub use ask::{ask, AskError};

pub use fuser::counters::OperationCount;

/// The largest report: the size the request's number carries, which is
/// what the kernel lets the mount write back (a report of every opcode
/// there is would be under 4 KiB).
pub const REPORT_MAX: usize = 8192;
// The size field of an ioctl number has 14 bits in the layout of x86_64
// and aarch64 (13 on ppc, mips and sparc, where 8192 would not fit).
const _: () = assert!(
    REPORT_MAX < 1 << 14,
    "an ioctl number's size field has 14 bits"
);

/// `_IOR('C', 1, [u8; REPORT_MAX])`: read the mount's figures.
pub const STATS: rustix::ioctl::Opcode = rustix::ioctl::opcode::read::<[u8; REPORT_MAX]>(b'C', 1);

const MAGIC: &str = "chronicle-stats 1";

/// What a mount reports of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Since the mount started serving.
    pub uptime: Duration,
    /// Times a request met forged or damaged data in BACKING (a block,
    /// header, name, directory id, symlink target or extended attribute
    /// that failed authentication): a read of it got EIO, a listing left
    /// the name out. One piece of data counts at every request that meets
    /// it.
    pub authentication_failures: u64,
    /// Requests served, by FUSE operation, in opcode order.
    pub operations: Vec<OperationCount>,
}

/// A reply that is not a report of this version.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl Report {
    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!(
            "{MAGIC}\nuptime_ns {}\nauthentication_failures {}\n",
            self.uptime.as_nanos(),
            self.authentication_failures
        );
        for op in &self.operations {
            let _ = writeln!(text, "op {} {} {}", op.name, op.requests, op.nanos);
        }
        text.into_bytes()
    }

    /// Reads a report. Lines it does not know are skipped; an operation's
    /// name must look like one (`[A-Z0-9_]`, at most 32), since what a
    /// mount sends is printed to a terminal.
    pub fn decode(bytes: &[u8]) -> Result<Report, Malformed> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| Malformed("the report is not text".into()))?;
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(Malformed(format!(
                "the report does not start with {MAGIC:?}"
            )));
        }
        let mut report = Report {
            uptime: Duration::ZERO,
            authentication_failures: 0,
            operations: Vec::new(),
        };
        for line in lines {
            let fields: Vec<&str> = line.split(' ').collect();
            let number = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| Malformed(format!("not a number in {line:?}")))
            };
            match fields[..] {
                ["uptime_ns", n] => report.uptime = Duration::from_nanos(number(n)?),
                ["authentication_failures", n] => report.authentication_failures = number(n)?,
                ["op", name, requests, nanos] => report.operations.push(OperationCount {
                    name: operation_name(name)?,
                    requests: number(requests)?,
                    nanos: number(nanos)?,
                }),
                _ => {}
            }
        }
        Ok(report)
    }
}

fn operation_name(name: &str) -> Result<String, Malformed> {
    let fits = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_';
    match !name.is_empty() && name.len() <= 32 && name.bytes().all(fits) {
        true => Ok(name.to_string()),
        false => Err(Malformed(format!("not an operation's name: {name:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str, requests: u64, nanos: u64) -> OperationCount {
        OperationCount {
            name: name.into(),
            requests,
            nanos,
        }
    }

    #[test]
    fn a_report_reads_back_as_written_and_skips_what_it_does_not_know() {
        let report = Report {
            uptime: Duration::from_nanos(81_234_000_017),
            authentication_failures: 3,
            operations: vec![op("LOOKUP", 13_997, 291_000_000), op("READDIRPLUS", 1, 9)],
        };
        let mut bytes = report.encode();
        assert_eq!(Report::decode(&bytes), Ok(report.clone()));

        // A newer mount's extra figures.
        bytes.extend_from_slice(b"held_blocks 12\nop NEW 1 2 3 4\n");
        assert_eq!(Report::decode(&bytes), Ok(report));
    }

    #[test]
    fn anything_else_is_malformed() {
        assert!(Report::decode(b"").is_err());
        assert!(Report::decode(b"chronicle-stats 2\n").is_err());
        assert!(Report::decode(b"chronicle-stats 1\nuptime_ns x\n").is_err());
        assert!(Report::decode(b"chronicle-stats 1\nop READ 1 -5\n").is_err());
        assert!(Report::decode(&[0xff, 0xfe]).is_err());
        // What a terminal would act on, or no name at all.
        for name in ["\x1b[2J", "read", "", &"A".repeat(33), "OP\0"] {
            let line = format!("chronicle-stats 1\nop {name} 1 1\n");
            assert!(Report::decode(line.as_bytes()).is_err(), "{name:?}");
        }
        assert!(Report::decode(b"chronicle-stats 1\nop COPY_FILE_RANGE2 1 1\n").is_ok());
    }

    #[test]
    fn the_request_number_is_a_read_of_the_report_size() {
        // _IOR('C', 1, 8192) as the kernel's asm-generic/ioctl.h makes it.
        assert_eq!(STATS, (2 << 30) | (8192 << 16) | ((b'C' as u32) << 8) | 1);
    }
}
