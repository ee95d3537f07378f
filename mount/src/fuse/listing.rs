//! Reading backing directories across READDIR requests.
//!
//! The kernel opens directories by itself (`fs.rs`, `opendir`), so a
//! listing has no handle: a READDIR names its directory by inode and where
//! to go on by the position of the last entry sent, which is the backing
//! directory's own (`d_off`). A listing that takes several requests goes
//! on in the backing directory it opened (parked here between them), not
//! in a new one sought to that position: a file system may keep state per
//! open directory that a new one would lose (ext4 finds its place among
//! entries whose names hash alike; tmpfs before Linux 6.6, overlayfs's
//! merged directories and SMB number entries by their place, which
//! entries removed meanwhile shift), and a request costs no new open.
//!
//! A position no parked directory can go on from opens the directory anew
//! and seeks there: after a program's `lseek`, once parked ones were let
//! go, or after names were added to the directory through the mount (a
//! listing begun after that must show them; `Node::gaining_entries`).
//! What a listing then shows is what the backing file system shows from
//! that position: on the file systems that number entries by their place,
//! entries may be skipped or shown twice; on btrfs, a program that adds a
//! name to the directory for each entry it lists (renaming each, or
//! writing a copy beside each) may meet the new names again, without end,
//! where btrfs itself stops at the entries the directory had when it was
//! opened.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, Weak};

use fuser::Errno;
use rustix::fs::{Dir, FileType as RawType};

use super::errno::sys;
use super::nodes::{open_dir, Node};

/// Listings parked between requests, the oldest let go first: each holds
/// a descriptor, the backing listing's buffer (at most about 48 KiB) and
/// the entries of its last reply (at most `MOST_SENT`). A listing
/// abandoned part way stays until sixteen newer replies have been parked.
const PARKED: usize = 16;

/// Entries of one reply kept to be given again (with names of up to 255
/// bytes, at most about 300 KiB); a listing whose reply held more (a
/// program reading with a buffer of hundreds of kilobytes) is not parked,
/// and goes on in a newly opened directory.
const MOST_SENT: usize = 1024;

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
    /// The directory's `entries_version` before it was opened: names
    /// added through the mount since may not show in it.
    version: u64,
    /// The directory's `entries_removed` before it was opened: names
    /// removed since may still show in it.
    removed: u64,
    /// Entries read but not sent (or sent in a reply the kernel did not
    /// use whole), to give before reading on.
    queued: VecDeque<RawEntry>,
    /// The entries sent in this reply, in order: the kernel goes on after
    /// whichever of them was the last a program took (a reply can hold more
    /// than the program's buffer), or sends the request again.
    sent: Vec<RawEntry>,
}

impl Stream {
    /// Opens directory `node`, whose descriptor is `dir`, for listing from
    /// `position` (0: the start).
    fn open(node: &Node, dir: BorrowedFd, position: u64) -> Result<Stream, Errno> {
        let version = node.entries_version();
        let removed = node.entries_removed();
        let fd = open_dir(dir).map_err(sys)?;
        let mut stream = Stream {
            dir: Dir::new(fd).map_err(sys)?,
            version,
            removed,
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

    /// Makes the stream ready to go on from `position`: the position its
    /// last reply started from (the request came again) or the one after
    /// an entry it sent, whose successors are then given again. False,
    /// changing nothing, if neither.
    fn resume_at(&mut self, from: u64, position: u64) -> bool {
        let again = match position == from {
            true => 0,
            false => match self.sent.iter().position(|e| e.next == position) {
                Some(i) => i + 1,
                None => return false,
            },
        };
        for entry in self.sent.drain(again..).rev() {
            self.queued.push_front(entry);
        }
        self.sent.clear();
        true
    }

    /// Whether names were removed from directory `node` since this was
    /// opened (what it gives may be gone).
    pub fn outlived_removals(&self, node: &Node) -> bool {
        self.removed != node.entries_removed()
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
    /// from there (the newest, which is the listing that last gave entries
    /// there), or a new one. A stream opened before names were last added
    /// to the directory through the mount is not gone on with: it may lack
    /// them, which a listing begun after must show.
    pub fn at(&self, node: &Arc<Node>, dir: BorrowedFd, position: u64) -> Result<Stream, Errno> {
        if position > 0 {
            let version = node.entries_version();
            let weak = Arc::downgrade(node);
            let mut parked = self.lock();
            // Listings that can never be gone on with again leave room.
            // (One opened after `version` was read is newer, not stale.)
            parked.retain(|p| {
                p.node.strong_count() > 0 && !(p.node.ptr_eq(&weak) && p.stream.version < version)
            });
            for i in (0..parked.len()).rev() {
                let p = &mut parked[i];
                if p.node.ptr_eq(&weak) && p.stream.resume_at(p.from, position) {
                    return Ok(parked.remove(i).expect("an index in range").stream);
                }
            }
        }
        Stream::open(node, dir, position)
    }

    /// Keeps `stream` of directory `node`, whose reply started at `from`,
    /// for the request that goes on after it (or sends it again).
    pub fn park(&self, node: &Arc<Node>, from: u64, stream: Stream) {
        if stream.sent.len() > MOST_SENT {
            return;
        }
        let mut parked = self.lock();
        if parked.len() == PARKED {
            parked.pop_front();
        }
        parked.push_back(Parked {
            node: Arc::downgrade(node),
            from,
            stream,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Parked>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::fs::{Mode, OFlags};

    use super::*;

    /// A directory of `files` entries, its node, and a descriptor of it.
    fn directory(files: usize) -> (tempfile::TempDir, Arc<Node>, std::os::fd::OwnedFd) {
        let dir = tempfile::tempdir().expect("tempdir");
        for i in 0..files {
            std::fs::write(dir.path().join(format!("f{i:03}")), b"").expect("create");
        }
        let node = Node::for_test(7, dir.path());
        let fd = rustix::fs::open(dir.path(), OFlags::PATH, Mode::empty()).expect("open");
        (dir, node, fd)
    }

    /// A listing of `node` from the start, `count` entries sent, parked;
    /// the position after each.
    fn park_after(streams: &Streams, node: &Arc<Node>, dir: BorrowedFd, count: usize) -> Vec<u64> {
        let mut stream = streams.at(node, dir, 0).expect("open");
        let mut nexts = Vec::new();
        for _ in 0..count {
            let entry = stream.next_entry().expect("an entry").expect("read");
            nexts.push(entry.next);
            stream.sent(entry);
        }
        streams.park(node, 0, stream);
        nexts
    }

    // Protects: a listing goes on in the directory it parked, from inside
    // its last reply, giving again what followed there.
    #[test]
    fn a_parked_listing_goes_on_from_inside_its_reply() {
        let (_dir, node, fd) = directory(20);
        let streams = Streams::default();
        let mut stream = streams.at(&node, fd.as_fd(), 0).expect("open");
        let mut sent = Vec::new();
        for _ in 0..6 {
            let entry = stream.next_entry().expect("an entry").expect("read");
            sent.push((entry.name.clone(), entry.next));
            stream.sent(entry);
        }
        streams.park(&node, 0, stream);
        let mut resumed = streams.at(&node, fd.as_fd(), sent[2].1).expect("resume");
        assert!(streams.lock().is_empty(), "the parked listing was taken");
        let again = resumed.next_entry().expect("an entry").expect("read");
        assert_eq!(again.name, sent[3].0);
    }

    // Protects: a listing parked before names were added to the directory
    // through the mount is not gone on with (it may lack them), and is let
    // go rather than keep a place among the parked.
    #[test]
    fn a_change_retires_parked_listings() {
        let (_dir, node, fd) = directory(20);
        let streams = Streams::default();
        let nexts = park_after(&streams, &node, fd.as_fd(), 5);
        drop(node.gaining_entries());
        let _fresh = streams.at(&node, fd.as_fd(), nexts[4]).expect("reopen");
        assert!(streams.lock().is_empty(), "the retired listing was let go");
    }

    // Protects: a listing opened before a name was removed knows it (its
    // entries are then checked to exist); one opened after does not.
    #[test]
    fn a_listing_knows_it_outlived_a_removal() {
        let (_dir, node, fd) = directory(20);
        let streams = Streams::default();
        let nexts = park_after(&streams, &node, fd.as_fd(), 5);
        node.lost_entry();
        // Only the parked listing can have outlived it: a new one cannot.
        let resumed = streams.at(&node, fd.as_fd(), nexts[4]).expect("resume");
        assert!(resumed.outlived_removals(&node), "the parked one went on");
        let fresh = streams.at(&node, fd.as_fd(), 0).expect("open");
        assert!(!fresh.outlived_removals(&node));
    }

    // Protects: of two listings parked at one place, the newest goes on.
    #[test]
    fn the_newest_listing_at_a_place_goes_on() {
        let (_dir, node, fd) = directory(20);
        let streams = Streams::default();
        let older = park_after(&streams, &node, fd.as_fd(), 6);
        let newer = park_after(&streams, &node, fd.as_fd(), 5);
        assert_eq!(older[4], newer[4]);
        let _resumed = streams.at(&node, fd.as_fd(), newer[4]).expect("resume");
        let parked = streams.lock();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].stream.sent.len(), 6, "the older one stays whole");
    }

    // Protects: a reply of more than `MOST_SENT` entries is not kept; one
    // of exactly that many is.
    #[test]
    fn a_huge_reply_is_not_parked() {
        let (_dir, node, fd) = directory(MOST_SENT + 1);
        let streams = Streams::default();
        park_after(&streams, &node, fd.as_fd(), MOST_SENT + 1);
        assert!(streams.lock().is_empty());
        park_after(&streams, &node, fd.as_fd(), MOST_SENT);
        assert_eq!(streams.lock().len(), 1);
    }
}
