//! Reading backing directories across READDIR requests.
//!
//! The kernel opens directories by itself (`fs.rs`, `opendir`), so a
//! listing has no handle: a READDIR names its directory by inode and where
//! to go on by the position of the last entry sent, which is the backing
//! directory's own (`d_off`). A listing that takes several requests goes
//! on in the backing directory it opened (parked here between them), not
//! in a new one sought to that position: a file system may keep state per
//! open directory that a new one would lose (btrfs stops each open
//! directory at the entries it had when opened, so a program renaming
//! every entry it lists cannot list forever; ext4 finds its place among
//! entries whose names hash alike; some number entries by their place,
//! which entries removed meanwhile would shift). Only a position the
//! kernel asks for that no parked directory is at, after a program's
//! `lseek` or once parked ones were let go, opens the directory anew and
//! seeks there.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, Weak};

use fuser::Errno;
use rustix::fs::{Dir, FileType as RawType, Mode, OFlags};

use super::errno::sys;
use super::nodes::{Node, Pinned};

/// Listings parked between requests, the oldest let go first: each holds
/// a descriptor and a buffer of up to about 24 KiB. A listing abandoned
/// part way stays until sixteen newer ones have been parked.
const PARKED: usize = 16;

/// One entry as the backing directory lists it.
pub struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: RawType,
    /// The position after it.
    pub next: u64,
}

/// A backing directory open for listing.
pub struct Stream {
    dir: Dir,
    /// Entries read but not sent (or sent in a reply the kernel did not
    /// use whole), to give before reading on.
    queued: VecDeque<RawEntry>,
    /// The entries sent in this reply, in order: the kernel goes on after
    /// whichever of them was the last a program took (a reply can hold more
    /// than the program's buffer), or sends the request again.
    sent: Vec<RawEntry>,
}

impl Stream {
    /// Opens `dir` for listing from `position` (0: the start).
    fn open(dir: &Pinned, position: u64) -> Result<Stream, Errno> {
        let fd = rustix::fs::openat(
            &dir.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys)?;
        let mut stream = Stream {
            dir: Dir::new(fd).map_err(sys)?,
            queued: VecDeque::new(),
            sent: Vec::new(),
        };
        if position > 0 {
            // Any position a program sets with lseek reaches here: one the
            // backing file system cannot take fails, as it would there.
            let position = i64::try_from(position).map_err(|_| Errno::EINVAL)?;
            stream.dir.seek(position).map_err(sys)?;
        }
        Ok(stream)
    }

    /// The next entry: a queued one first.
    pub fn next_entry(&mut self) -> Option<Result<RawEntry, Errno>> {
        if let Some(entry) = self.queued.pop_front() {
            return Some(Ok(entry));
        }
        let entry = match self.dir.read()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(sys(e))),
        };
        let name = OsStr::from_bytes(entry.file_name().to_bytes()).to_os_string();
        // A position of 0 would send the kernel back to the start.
        let Ok(next @ 1..) = u64::try_from(entry.offset()) else {
            log::error!("{name:?}: the backing file system gave no position after it");
            return Some(Err(Errno::EIO));
        };
        Some(Ok(RawEntry {
            name,
            ino: entry.ino(),
            kind: entry.file_type(),
            next,
        }))
    }

    /// `entry` went into the reply.
    pub fn sent(&mut self, entry: RawEntry) {
        self.sent.push(entry);
    }

    /// Keeps `entry`, read but not sent (the reply was full), for the next
    /// request.
    pub fn put_back(&mut self, entry: RawEntry) {
        self.queued.push_front(entry);
    }

    /// Ready to go on from `position`: the position this reply started
    /// from (the request came again) or the one after an entry it sent,
    /// whose successors are then given again. `None` if neither.
    fn resume_at(&mut self, from: u64, position: u64) -> Option<()> {
        let again = match position == from {
            true => 0,
            false => self.sent.iter().position(|e| e.next == position)? + 1,
        };
        for entry in self.sent.drain(again..).rev() {
            self.queued.push_front(entry);
        }
        self.sent.clear();
        Some(())
    }

    /// The backing directory (names are decoded relative to it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        // Infallible on Linux: the `Dir` owns its descriptor.
        self.dir.fd().expect("a Dir's own descriptor")
    }
}

/// A stream of directory `node` whose last reply started at `from`.
struct Parked {
    node: Weak<Node>,
    from: u64,
    stream: Stream,
}

/// The listings parked between requests.
#[derive(Default)]
pub struct Streams {
    parked: Mutex<VecDeque<Parked>>,
}

impl Streams {
    /// A stream of `dir` ready at `position`: a parked one that can go on
    /// from there, or a new one.
    pub fn at(&self, dir: &Pinned, position: u64) -> Result<Stream, Errno> {
        if position > 0 {
            let node = Arc::downgrade(dir.node());
            let mut parked = self.lock();
            for i in 0..parked.len() {
                let p = &mut parked[i];
                if p.node.ptr_eq(&node) && p.stream.resume_at(p.from, position).is_some() {
                    return Ok(parked.remove(i).expect("an index in range").stream);
                }
            }
        }
        Stream::open(dir, position)
    }

    /// Keeps `stream` of `dir`, whose reply started at `from`, for the
    /// request that goes on after it (or sends it again).
    pub fn park(&self, dir: &Pinned, from: u64, stream: Stream) {
        let mut parked = self.lock();
        if parked.len() == PARKED {
            parked.pop_front();
        }
        parked.push_back(Parked {
            node: Arc::downgrade(dir.node()),
            from,
            stream,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Parked>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}
