//! The double-write journal: a durable copy of every block that holds
//! durable data, taken before the block is rewritten in place.
//!
//! Why: a block is 4136 bytes on disk, so it straddles sectors, and a power
//! cut during its rewrite can leave part old and part new: it then fails
//! authentication and every byte in it is lost, including bytes an earlier
//! `fsync` made durable (an append rewrites the partial last block; growing
//! a file re-seals its old last block as not last). So before a block that
//! was durable at the file's last sync is first rewritten, its stored bytes
//! go here, and the journal is synced before the rewrite starts. After a
//! crash, a block that fails authentication and has a copy here is put back
//! as it was (by the mount when it first opens the file, or by
//! `fsck --repair`). Once the file is synced again its copies are released.
//!
//! A sync of a file whose only unsynced changes are rewrites held in
//! memory (`content::guard`) writes them here instead, as commits: the
//! journal's one flush makes them durable, where writing them in place
//! would need the journal's flush (for their copies) and then the file's.
//! A commit is written to its place whatever the file holds when the
//! volume is next opened, so it must never outlive a newer durable version
//! of its block: its slot is released, and the journal synced, before the
//! file's next sync returns.
//!
//! The file, `chronicle.volume.journal` in the backing root, is an array of
//! fixed slots (docs/FORMAT.md): a record header with a checksum of its own
//! (telling records from free or torn slots), then the stored block (empty
//! for a hole), which authenticates itself when it is put back. The copies are ciphertext authenticated
//! by their own block's associated data, so a forged record cannot be put
//! back; an attacker can at most offer an older authentic version of a
//! block, which rolling the main file back already allows. Slots are reused;
//! a released slot's magic is cleared, and when no slot is live a journal
//! past `IDLE_SLOTS_KEPT` slots is cut back to that many.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{IoContext, Result, VolumeError};
use crate::faults::{check, Point};
use crate::layout::{CIPHER_BLOCK_SIZE, FILE_ID_LEN};

/// The journal's name in the backing root (`chronicle.volume*` is the
/// volume's own in both name modes, so no plaintext name can collide).
pub const JOURNAL_NAME: &str = "chronicle.volume.journal";
/// Opens every live record.
pub const RECORD_MAGIC: [u8; 4] = *b"CHRJ";
/// Record header field offsets, each derived from the one before.
pub const SEQ_AT: usize = RECORD_MAGIC.len();
pub const CONTENT_ID_AT: usize = SEQ_AT + 8;
pub const INDEX_AT: usize = CONTENT_ID_AT + FILE_ID_LEN;
pub const STORED_LEN_AT: usize = INDEX_AT + 8;
pub const MTIME_SECS_AT: usize = STORED_LEN_AT + 4;
pub const MTIME_NANOS_AT: usize = MTIME_SECS_AT + 8;
pub const CRC_AT: usize = MTIME_NANOS_AT + 4;
/// Record header length (the checksum covers everything before it; the
/// stored bytes after it are authenticated as the block they are).
pub const RECORD_HEADER_LEN: usize = CRC_AT + 4;
/// One slot: a header and room for a whole stored block.
pub const SLOT_LEN: u64 = RECORD_HEADER_LEN as u64 + CIPHER_BLOCK_SIZE;

/// A content id: which file contents (and keys) a copy belongs to.
pub type ContentId = [u8; FILE_ID_LEN];

/// A file's id (`FileHeader::file_id`): unlike its contents id, kept when
/// the file is emptied.
pub type FileId = [u8; FILE_ID_LEN];

/// One block to copy: its index and its bytes as stored (all zeros for a
/// hole, which is recorded without them).
pub struct Original<'a> {
    pub index: u64,
    pub stored: &'a [u8],
}

/// A file's modification time, as a commit records it.
pub use crate::untimed::Timestamp as Mtime;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A block as it was durable, before a rewrite in place: put back only
    /// if the block as stored fails.
    Copy,
    /// A block as a sync made it durable before it was written in place,
    /// with the file's modification time at that sync: written to its
    /// place whatever the file holds (`Journal::commit`).
    Commit(Mtime),
}

/// A record found in the journal when the volume was opened: left by a
/// session that ended before the file was synced again. Its bytes stay on
/// disk until they are put back (`Journal::read_copy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub slot: u64,
    pub seq: u64,
    pub index: u64,
    /// The block's stored length.
    pub stored_len: usize,
    /// A hole: the block was all zeros and no bytes were recorded.
    pub hole: bool,
    pub kind: Kind,
}

/// The largest journal a mount reads: far more than a session leaves
/// (4096 copies per open file), and a bound on what a planted file costs.
pub const MAX_JOURNAL_LEN: u64 = 16 << 30;
/// Rewritten blocks the files of a volume may hold back in memory (8 MiB);
/// past it a rewrite is written at once (`content::guard::hold`).
const MAX_HELD_IN_VOLUME: usize = 2048;
/// Slots an idle journal keeps when it is cut back (8 MiB): a sync
/// cycle of a file that is synced after every write (a database's log)
/// keeps one per held block (its commit, `content::guard`), and a record written
/// over an old slot costs the backing file system no metadata change, so
/// the journal's sync is a flush of data alone (on ext4 about 40 µs against
/// 90 µs for a record that grows the file; docs/PERFORMANCE.md).
const IDLE_SLOTS_KEPT: u64 = 2048;
/// Slots a journal grows by at least when a reservation finds too few
/// free (about 1 MiB): one allocation for many held rewrites.
const GROWTH_SLOTS: usize = 256;
/// Block indices a file can have (see `content::write::MAX_PLAINTEXT_SIZE`).
const MAX_INDEX: u64 = (i64::MAX as u64 - 64) / CIPHER_BLOCK_SIZE;

struct Slots {
    /// Slots `0..end` exist in the file.
    end: u64,
    free: Vec<u64>,
    live: u64,
    next_seq: u64,
    carried: HashMap<ContentId, Vec<Carried>>,
}

/// The volume's journal, shared by every open file of a mount.
pub struct Journal {
    file: File,
    path: PathBuf,
    slots: Mutex<Slots>,
    /// Crash tests: released copies stay on disk, as they do when a crash
    /// comes before their clearing reaches it.
    keep_released: bool,
    /// Rewritten blocks that files hold back in memory, volume-wide
    /// (`add_held`): the journal is what every guarded file of a volume
    /// shares, so it keeps their memory budget too.
    held_blocks: AtomicUsize,
    /// Syncs of the journal file begun (`syncs`); each sync's number is
    /// this count when it begins.
    syncs: AtomicU64,
    /// The number of the latest sync that succeeded: every write made
    /// before a sync with a larger number began is durable (`is_durable`).
    synced_through: AtomicU64,
    /// A sync failed: no later one is trusted (`sync`).
    sync_failed: AtomicBool,
    /// Held across each sync and its check (`sync`).
    syncing: Mutex<()>,
    /// Files whose own sync failed, by file id, for the rest of the
    /// session (`remember_failure`).
    failed_files: Mutex<HashMap<FileId, Failure>>,
}

/// What failed for a file this session (`remember_failure`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Failure {
    /// A sync: no later one vouches for its data.
    Sync,
    /// A sync, and its live records could not be handed back
    /// (`carry_again`): they are on disk for the next mount, and the file
    /// must not be opened before.
    RecordsLost,
}

impl Journal {
    /// Opens (creating if missing) the journal of the volume at `backing`
    /// and reads the copies an earlier session left in it.
    pub fn open(backing: &Path) -> Result<Journal> {
        let path = backing.join(JOURNAL_NAME);
        let dir = crate::config::open_backing_dir(backing)?;
        let crate::lock::OwnFile { file, created } =
            crate::lock::open_own_file_at(dir.as_fd(), JOURNAL_NAME, &path)?;
        // Anything else planted under the name (a FIFO, a link to another
        // file) is refused rather than written through.
        let meta = file
            .metadata()
            .context(|| format!("examining {}", path.display()))?;
        refuse_planted(&meta, &path)?;
        // Its name must be durable before any copy in it is relied on.
        if created {
            File::open(backing)
                .and_then(|dir| dir.sync_all())
                .context(|| format!("syncing {}", backing.display()))?;
        }
        let (carried, end) = read_records(&file, &path)?;
        let mut free = Vec::new();
        let mut live = 0;
        let mut next_seq = 1;
        let taken: std::collections::HashSet<u64> = carried
            .values()
            .flatten()
            .map(|c| {
                next_seq = next_seq.max(c.seq.saturating_add(1));
                live += 1;
                c.slot
            })
            .collect();
        for slot in (0..end).rev() {
            if !taken.contains(&slot) {
                free.push(slot);
            }
        }
        let journal = Journal {
            file,
            path,
            slots: Mutex::new(Slots {
                end,
                free,
                live,
                next_seq,
                carried,
            }),
            keep_released: false,
            held_blocks: AtomicUsize::new(0),
            syncs: AtomicU64::new(0),
            synced_through: AtomicU64::new(0),
            sync_failed: AtomicBool::new(false),
            syncing: Mutex::new(()),
            failed_files: Mutex::new(HashMap::new()),
        };
        journal.cut_back(&mut journal.slots(), IDLE_SLOTS_KEPT)?;
        Ok(journal)
    }

    /// Commits an earlier session left in the journal of the volume at
    /// `backing`, read without changing anything: blocks that a sync made
    /// durable there and that may not be in their files yet. A read-only
    /// user of the volume would see their files' older contents.
    pub fn pending_commits(backing: &Path) -> Result<usize> {
        let path = backing.join(JOURNAL_NAME);
        // Never through a planted symlink, never blocking on a FIFO.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let file = match file {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).context(|| format!("opening {}", path.display())),
        };
        let meta = file
            .metadata()
            .context(|| format!("examining {}", path.display()))?;
        refuse_planted(&meta, &path)?;
        let (carried, _) = read_records(&file, &path)?;
        Ok(commits_in(&carried))
    }

    /// Fails, saying what to do, while the journal of the volume at
    /// `backing` holds commits: for whatever reads files as BACKING holds
    /// them without the journal (a read-only mount, re-encryption, a check).
    pub fn refuse_pending_commits(backing: &Path) -> Result<()> {
        let pending = Self::pending_commits(backing)?;
        match Self::commits_waiting(backing, pending) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// What `refuse_pending_commits` says when `pending` commits wait in
    /// the journal of the volume at `backing`; `None` for none.
    pub fn commits_waiting(backing: &Path, pending: usize) -> Option<VolumeError> {
        (pending > 0).then(|| {
            VolumeError::eio(format!(
                "{}: the journal holds {pending} synced blocks not yet in their files \
                 (the last session ended uncleanly); mount the volume read-write once, \
                 or run `chronicle fsck --repair`, to write them",
                backing.display()
            ))
        })
    }

    /// Remembers that a sync of the file `file_id` (its header's file id,
    /// random and kept for the file's life) failed, and whether its live
    /// records were lost with it: the mount lets go of files it cannot see
    /// closed, and the file opened again must not forget it (a later sync
    /// could vouch for data that was lost). Every file of a volume shares
    /// the journal, so it keeps the list. `RecordsLost` is never
    /// downgraded to `Sync`.
    pub fn remember_failure(&self, file_id: &FileId, failure: Failure) {
        let mut failed = self.failed_files();
        let known = failed.entry(*file_id).or_insert(failure);
        if failure == Failure::RecordsLost {
            *known = failure;
        }
    }

    /// What failed for the file `file_id` in this session, if anything.
    pub fn failure_of(&self, file_id: &FileId) -> Option<Failure> {
        self.failed_files().get(file_id).copied()
    }

    /// For crash tests: released copies are neither cleared nor cut away,
    /// which is what the disk holds when a crash comes before the clearing.
    #[doc(hidden)]
    pub fn keeping_released(mut self) -> Self {
        self.keep_released = true;
        self
    }

    /// For tests: the journal as after a sync that failed (`sync`).
    #[doc(hidden)]
    pub fn as_if_a_sync_failed(self) -> Self {
        self.sync_failed.store(true, Ordering::Relaxed);
        self
    }

    /// Copies `originals` of the contents `content_id` into free slots and
    /// syncs the journal; returns the slots, to be released once the file's
    /// rewrite is durable.
    pub fn save(&self, content_id: &ContentId, originals: &[Original]) -> Result<Vec<u64>> {
        self.copy(content_id, originals, Kind::Copy, true, &[])
    }

    /// Writes `blocks`, new contents of the file `content_id` sealed for
    /// their places, as commits with the file's modification time, and
    /// syncs the journal: they are then durable as if written in place and
    /// synced. The commits go first into `reserved` (slots from `reserve`,
    /// no more than there are blocks), then into slots taken now. Returns
    /// the slot of each block, in order: a slot goes only by `release` once
    /// a newer commit of its block is durable, or by `release_durably` once
    /// the file's own sync covers the block. On failure `reserved` stays
    /// the caller's, emptied.
    pub fn commit(
        &self,
        content_id: &ContentId,
        blocks: &[Original],
        mtime: Mtime,
        reserved: &[u64],
    ) -> Result<Vec<u64>> {
        self.copy(content_id, blocks, Kind::Commit(mtime), true, reserved)
    }

    /// `release`, then a sync, so that no released commit can come back
    /// after a crash and be written over newer contents.
    pub fn release_durably(&self, released: &[u64]) -> Result<()> {
        if released.is_empty() {
            return Ok(());
        }
        self.release(released);
        self.sync()
    }

    /// `save` into `reserved` (slots from `reserve`, one per original),
    /// without the sync: the caller must `sync` before any block
    /// these copies guard is rewritten in place (a file holding its
    /// rewrites back shares one sync among many). Needs no new space, so
    /// it cannot fail for want of it where the backing file system writes
    /// in place. On failure `reserved` stays the caller's, emptied.
    pub fn save_reserved(
        &self,
        content_id: &ContentId,
        originals: &[Original],
        reserved: &[u64],
    ) -> Result<()> {
        debug_assert_eq!(originals.len(), reserved.len());
        self.copy(content_id, originals, Kind::Copy, false, reserved)
            .map(drop)
    }

    /// Sets aside `n` slots for records to be written later
    /// (`save_reserved`, `commit`), so that a write already acknowledged
    /// cannot fail later for want of journal space: free slots (each
    /// written or allocated before, so a file system that writes in place
    /// needs no new space to write it), else new ones allocated at the end
    /// (`grow`).
    /// They count as live until the records written into them are
    /// released, or until they are given back unused with `release`.
    pub fn reserve(&self, n: usize) -> Result<Vec<u64>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        self.refuse_after_failure()?;
        let mut slots = self.slots();
        if let Some(at) = slots.free.len().checked_sub(n) {
            let taken = slots.free.split_off(at);
            slots.live += n as u64;
            return Ok(taken);
        }
        // By many slots at once where the store has room, else by as few
        // as are needed.
        if self.grow(&mut slots, n.max(GROWTH_SLOTS)).is_err() {
            self.grow(&mut slots, n)?;
        }
        let at = slots.free.len() - n;
        let taken = slots.free.split_off(at);
        slots.live += n as u64;
        Ok(taken)
    }

    /// Adds `n` free slots at the end, their space allocated without
    /// writing them (`fallocate`; written as zeros where the file system
    /// cannot allocate): they read as zeros, which no record has.
    fn grow(&self, slots: &mut Slots, n: usize) -> Result<()> {
        let old_end = slots.end;
        let (at, len) = (old_end * SLOT_LEN, n as u64 * SLOT_LEN);
        let flags = rustix::fs::FallocateFlags::empty();
        let allocated = match rustix::fs::fallocate(&self.file, flags, at, len) {
            Ok(()) => Ok(()),
            // Out of space: a write of zeros would be too.
            Err(e @ (rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT)) => Err(e.into()),
            // Not offered here, refused or interrupted: written instead.
            Err(_) => self.file.write_all_at(&vec![0u8; len as usize], at),
        };
        if let Err(e) = allocated {
            // Whatever landed holds no record; cut it, to give space back.
            if let Err(cut) = self.truncate(slots, old_end) {
                log::warn!("{cut}");
            }
            return Err(e).context(|| format!("growing {}", self.path.display()));
        }
        slots.end += n as u64;
        // The lowest on top: taken first.
        slots.free.extend((old_end..slots.end).rev());
        Ok(())
    }

    /// Makes every copy written so far durable. A journal whose sync
    /// failed once is not trusted again: Linux reports a write-back error
    /// once and then calls the lost pages clean, so a second sync could
    /// "succeed" with copies missing; every later sync fails until the
    /// volume is mounted again.
    pub fn sync(&self) -> Result<()> {
        // One sync at a time: of two at once, only one would see the error.
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        self.refuse_after_failure()?;
        let number = self.syncs.fetch_add(1, Ordering::AcqRel) + 1;
        let synced = self.file.sync_data();
        match synced {
            Ok(()) => {
                self.synced_through.fetch_max(number, Ordering::AcqRel);
            }
            Err(_) => self.sync_failed.store(true, Ordering::Relaxed),
        }
        synced.context(|| format!("syncing {}", self.path.display()))
    }

    /// A mark for what was written to the journal so far (`is_durable`).
    pub fn ticket(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }

    /// Whether everything written before `ticket` was taken is durable: a
    /// sync begun after it has succeeded.
    pub fn is_durable(&self, ticket: u64) -> bool {
        self.synced_through.load(Ordering::Acquire) > ticket
    }

    /// Fails once a sync of the journal has failed (see `sync`).
    pub fn refuse_after_failure(&self) -> Result<()> {
        if !self.sync_failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(VolumeError::eio(format!(
            "{}: an earlier sync failed, so its copies cannot be trusted; \
             rewrites of synced data are refused until the volume is mounted again",
            self.path.display()
        )))
    }

    /// Syncs so far (by `save` and `sync`), for tests and metrics.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// `n` more blocks are held back in memory by the volume's files.
    pub fn add_held(&self, n: usize) {
        self.held_blocks.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` held blocks were written (or dropped).
    pub fn remove_held(&self, n: usize) {
        self.held_blocks.fetch_sub(n, Ordering::Relaxed);
    }

    /// Whether the volume's files may hold `more` blocks within the
    /// volume's budget.
    pub fn held_budget_allows(&self, more: usize) -> bool {
        self.held_blocks() + more <= MAX_HELD_IN_VOLUME
    }

    /// Blocks the volume's files hold back now, for tests and metrics.
    pub fn held_blocks(&self) -> usize {
        self.held_blocks.load(Ordering::Relaxed)
    }

    /// Writes `originals` as records of `kind`, into `reserved` first,
    /// then into slots taken now; returns the slot of each, in order.
    fn copy(
        &self,
        content_id: &ContentId,
        originals: &[Original],
        kind: Kind,
        sync: bool,
        reserved: &[u64],
    ) -> Result<Vec<u64>> {
        self.refuse_after_failure()?;
        let mut slots = self.slots();
        let old_end = slots.end;
        let more = originals.len() - reserved.len();
        // Many copies at once (an overwrite of a long range) take fresh
        // slots at the end, so that they go out in one write.
        let fresh = more > slots.free.len();
        let new: Vec<u64> = (0..more)
            .map(|_| match slots.free.pop() {
                Some(slot) if !fresh => slot,
                other => {
                    if let Some(slot) = other {
                        slots.free.push(slot);
                    }
                    slots.end += 1;
                    slots.end - 1
                }
            })
            .collect();
        let mut taken = [reserved, &new].concat();
        // Ascending, so that neighbouring free slots go out in one write.
        taken.sort_unstable();
        let mut buf = Vec::with_capacity(originals.len() * SLOT_LEN as usize);
        let mut run_start = 0;
        let mut written = Ok(());
        for (i, original) in originals.iter().enumerate() {
            let seq = slots.next_seq;
            slots.next_seq += 1;
            let at = buf.len();
            encode_into(&mut buf, seq, content_id, original, kind);
            buf.resize(at + SLOT_LEN as usize, 0);
            let run_ends = i + 1 == originals.len() || taken[i + 1] != taken[i] + 1;
            if run_ends {
                written = written
                    .and_then(|()| self.file.write_all_at(&buf, taken[run_start] * SLOT_LEN));
                buf.clear();
                run_start = i + 1;
            }
        }
        // Reserved slots were counted live when they were reserved.
        slots.live += new.len() as u64;
        // Held across the sync: a slot must not be reused before its copy
        // is durable.
        let result = written
            .context(|| format!("writing {}", self.path.display()))
            .and_then(|()| if sync { self.sync() } else { Ok(()) });
        if let Err(e) = result {
            let to_release = self.cut_fresh(&mut slots, &new, old_end);
            // The reserved slots stay reserved, emptied of what may have
            // landed in them (a clearing that fails ends the journal's use).
            for &slot in reserved {
                self.clear(slot);
            }
            drop(slots);
            self.release(&to_release);
            return Err(e);
        }
        Ok(taken)
    }

    /// After a failed `copy`: cuts away the fresh slots it took at the end
    /// (`old_end` on). Returns the slots still to be released and cleared:
    /// none once the cut is made; all of `taken` when `copy` wrote over
    /// free slots, or when the cut fails. A write that failed for want of
    /// space (ENOSPC) would fail again clearing records past the end of
    /// what it wrote, and a record that cannot be cleared ends the
    /// journal's use; a cut needs no space.
    fn cut_fresh(&self, slots: &mut Slots, taken: &[u64], old_end: u64) -> Vec<u64> {
        if slots.end == old_end {
            return taken.to_vec();
        }
        // `copy` takes its slots either all from the free list or all at
        // the end.
        debug_assert!(taken.iter().all(|&slot| slot >= old_end));
        if let Err(e) = self.truncate(slots, old_end) {
            log::warn!("{e}");
            return taken.to_vec();
        }
        slots.live -= taken.len() as u64;
        Vec::new()
    }

    /// Gives slots back: the rewrites they guarded are durable. Clearing a
    /// slot's magic keeps a stale copy from ever being put back; it needs no
    /// sync, since an uncleared one is only used for a block that fails
    /// authentication and has no newer copy.
    pub fn release(&self, released: &[u64]) {
        if released.is_empty() {
            return;
        }
        let mut slots = self.slots();
        slots.live -= released.len() as u64;
        if self.keep_released {
            return;
        }
        // Going idle after a burst: the journal is cut back to its kept
        // slots, and released slots past them need no clearing. Below
        // them every slot stays, its record cleared: cutting the journal
        // and growing it again in every sync cycle would cost the backing
        // file system a metadata change, and the journal's sync a metadata
        // commit, each time.
        let cut = slots.live == 0 && slots.carried.is_empty() && slots.end > IDLE_SLOTS_KEPT;
        let kept_end = if cut { IDLE_SLOTS_KEPT } else { slots.end };
        let mut all_cleared = true;
        for &slot in released.iter().filter(|&&slot| slot < kept_end) {
            match self.clear(slot) {
                true => slots.free.push(slot),
                false => all_cleared = false,
            }
        }
        if !cut {
            return;
        }
        // A record that could not be cleared goes with the whole journal
        // (nothing in it is live).
        let to = if all_cleared { IDLE_SLOTS_KEPT } else { 0 };
        if let Err(e) = self.cut_back(&mut slots, to) {
            log::warn!("{e}");
            // The slots past the cut stay: their records are cleared.
            for &slot in released.iter().filter(|&&slot| slot >= kept_end) {
                if self.clear(slot) {
                    slots.free.push(slot);
                }
            }
        }
    }

    /// Clears the record in `slot` (its magic): it can never come back.
    /// On failure the journal is not trusted again this session: a record
    /// that stays could come back (a commit over newer contents), so
    /// nothing more relies on the journal and no sync vouches for it.
    fn clear(&self, slot: u64) -> bool {
        let cleared = check(Point::JournalClear)
            .and_then(|()| self.file.write_all_at(&[0u8; 4], slot * SLOT_LEN));
        match cleared {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "{}: could not clear slot {slot}: {e}; the journal is not used again until the volume is mounted again",
                    self.path.display()
                );
                self.sync_failed.store(true, Ordering::Relaxed);
                false
            }
        }
    }

    /// The stored bytes of a copy an earlier session left (all zeros for a
    /// hole).
    pub fn read_copy(&self, copy: &Carried) -> Result<Vec<u8>> {
        let mut stored = vec![0u8; copy.stored_len];
        if !copy.hole {
            self.file
                .read_exact_at(&mut stored, copy.slot * SLOT_LEN + RECORD_HEADER_LEN as u64)
                .context(|| format!("reading {}", self.path.display()))?;
        }
        Ok(stored)
    }

    /// The copies an earlier session left for `content_id`, oldest first,
    /// handed over once: the caller puts back what the crash destroyed and
    /// then releases their slots.
    pub fn take_carried(&self, content_id: &ContentId) -> Vec<Carried> {
        let mut carried = self.slots().carried.remove(content_id).unwrap_or_default();
        carried.sort_by_key(|c| c.seq);
        carried
    }

    /// Gives back records `take_carried` handed over, when putting them
    /// back failed: they wait for the file's next opening.
    pub fn return_carried(&self, content_id: &ContentId, records: Vec<Carried>) {
        self.slots()
            .carried
            .entry(*content_id)
            .or_default()
            .extend(records);
    }

    /// Whether copies from an earlier session are still waiting for their
    /// files.
    pub fn carried_files(&self) -> usize {
        self.slots().carried.len()
    }

    /// Hands live records back to be put back when their file is next
    /// opened (`take_carried`), read from their slots: a file whose
    /// recovery failed keeps them, and so does one the mount let go of
    /// before it could write what its commits stand for.
    pub fn carry_again(&self, slots: &[u64]) -> Result<()> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        let mut records = Vec::with_capacity(slots.len());
        for &slot in slots {
            check(Point::JournalRead)
                .and_then(|()| self.file.read_exact_at(&mut header, slot * SLOT_LEN))
                .context(|| format!("reading {}", self.path.display()))?;
            records.extend(decode(slot, &header));
        }
        let mut inner = self.slots();
        for (content_id, record) in records {
            let kept = inner.carried.entry(content_id).or_default();
            if !kept.iter().any(|c| c.slot == record.slot) {
                kept.push(record);
            }
        }
        Ok(())
    }

    /// Commits among the records an earlier session left.
    pub fn carried_commits(&self) -> usize {
        commits_in(&self.slots().carried)
    }

    /// Drops every copy an earlier session left (after `fsck --repair` has
    /// visited every file, nothing can claim them any more).
    pub fn forget_carried(&self) {
        let slots: Vec<u64> = {
            let mut inner = self.slots();
            let carried = std::mem::take(&mut inner.carried);
            carried.values().flatten().map(|c| c.slot).collect()
        };
        self.release(&slots);
    }

    /// Live slots (copies not yet released), for tests and metrics.
    pub fn live(&self) -> u64 {
        self.slots().live
    }

    /// Cuts an idle journal back to `to` slots. Every slot below the cut
    /// holds no record (a record is live, or its slot was cleared when it
    /// was released).
    fn cut_back(&self, slots: &mut Slots, to: u64) -> Result<()> {
        if slots.live > 0 || slots.end <= to {
            return Ok(());
        }
        self.truncate(slots, to)
    }

    /// Cuts the journal file to its first `to` slots.
    fn truncate(&self, slots: &mut Slots, to: u64) -> Result<()> {
        check(Point::JournalCut)
            .and_then(|()| self.file.set_len(to * SLOT_LEN))
            .context(|| format!("truncating {}", self.path.display()))?;
        slots.end = to;
        slots.free.retain(|&slot| slot < to);
        Ok(())
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // The slot table is updated in whole steps; a panic elsewhere
        // leaves it consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed_files(&self) -> MutexGuard<'_, HashMap<FileId, Failure>> {
        // One insert or lookup at a time: always consistent.
        self.failed_files.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Refuses a planted journal: not a regular file, linked elsewhere, or too
/// large.
fn refuse_planted(meta: &std::fs::Metadata, path: &Path) -> Result<()> {
    if meta.file_type().is_file() && meta.nlink() == 1 && meta.len() <= MAX_JOURNAL_LEN {
        return Ok(());
    }
    Err(VolumeError::io(
        format!(
            "{} is not a journal this build wrote (not a regular file, linked elsewhere, or over {} GiB); \
             if no crash needs it, remove it",
            path.display(),
            MAX_JOURNAL_LEN >> 30
        ),
        std::io::Error::from_raw_os_error(libc::EINVAL),
    ))
}

/// Commits among `carried`.
fn commits_in(carried: &HashMap<ContentId, Vec<Carried>>) -> usize {
    carried
        .values()
        .flatten()
        .filter(|c| matches!(c.kind, Kind::Commit(_)))
        .count()
}

/// Appends the record for `original` to `out`.
fn encode_into(
    out: &mut Vec<u8>,
    seq: u64,
    content_id: &ContentId,
    original: &Original,
    kind: Kind,
) {
    let hole = original.stored.iter().all(|&b| b == 0);
    let payload: &[u8] = if hole { &[] } else { original.stored };
    // A hole records its stored length with no bytes: the top bit says so;
    // the next one marks a commit.
    let mut stored_len = original.stored.len() as u32 | if hole { HOLE_BIT } else { 0 };
    let mtime = match kind {
        Kind::Copy => Mtime { secs: 0, nanos: 0 },
        Kind::Commit(mtime) => {
            stored_len |= COMMIT_BIT;
            mtime
        }
    };
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(content_id);
    out.extend_from_slice(&original.index.to_le_bytes());
    out.extend_from_slice(&stored_len.to_le_bytes());
    out.extend_from_slice(&mtime.secs.to_le_bytes());
    out.extend_from_slice(&mtime.nanos.to_le_bytes());
    let crc = crc32fast::hash(&out[start..start + CRC_AT]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Set in a record's stored length when the block was a hole.
pub const HOLE_BIT: u32 = 1 << 31;
/// Set in a record's stored length when the record is a commit.
pub const COMMIT_BIT: u32 = 1 << 30;

/// Decodes one slot's record header; `None` for a free, torn or foreign
/// slot, or one that names a block no file can have.
pub fn decode(slot: u64, header: &[u8]) -> Option<(ContentId, Carried)> {
    let header = header.get(..RECORD_HEADER_LEN)?;
    if header[..SEQ_AT] != RECORD_MAGIC {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[..CRC_AT]) != u32_at(CRC_AT) {
        return None;
    }
    let raw_len = u32_at(STORED_LEN_AT);
    let stored_len = (raw_len & !(HOLE_BIT | COMMIT_BIT)) as usize;
    let index = u64_at(INDEX_AT);
    if stored_len as u64 > CIPHER_BLOCK_SIZE || stored_len == 0 || index > MAX_INDEX {
        return None;
    }
    let mtime = Mtime {
        secs: u64_at(MTIME_SECS_AT) as i64,
        nanos: u32_at(MTIME_NANOS_AT),
    };
    let kind = match raw_len & COMMIT_BIT != 0 {
        false if mtime == (Mtime { secs: 0, nanos: 0 }) => Kind::Copy,
        true if mtime.nanos < 1_000_000_000 => Kind::Commit(mtime),
        // A copy with a time, or a time no clock gives: not this build's.
        _ => return None,
    };
    let content_id: ContentId = header[CONTENT_ID_AT..INDEX_AT]
        .try_into()
        .expect("16 bytes");
    Some((
        content_id,
        Carried {
            slot,
            seq: u64_at(SEQ_AT),
            index,
            stored_len,
            hole: raw_len & HOLE_BIT != 0,
            kind,
        },
    ))
}

/// Every live record in the file, by content id, and the slot count. Reads
/// the record headers only (a copy's bytes are read when it is put back),
/// skipping the file's holes.
fn read_records(file: &File, path: &Path) -> Result<(HashMap<ContentId, Vec<Carried>>, u64)> {
    let len = file
        .metadata()
        .context(|| format!("examining {}", path.display()))?
        .len();
    let end = len.div_ceil(SLOT_LEN);
    let mut carried: HashMap<ContentId, Vec<Carried>> = HashMap::new();
    let mut header = [0u8; RECORD_HEADER_LEN];
    let mut slot = 0;
    while slot < end {
        let at = slot * SLOT_LEN;
        match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
            // A slot whose header begins in a hole holds no record: the
            // next candidate is the first slot starting at or after the data.
            Ok(data) if data > at => {
                slot = data.div_ceil(SLOT_LEN);
                continue;
            }
            Err(rustix::io::Errno::NXIO) => break,
            _ => {}
        }
        let n = (len - at).min(RECORD_HEADER_LEN as u64) as usize;
        file.read_exact_at(&mut header[..n], at)
            .context(|| format!("reading {}", path.display()))?;
        if let Some((content_id, record)) = decode(slot, &header[..n]) {
            carried.entry(content_id).or_default().push(record);
        }
        slot += 1;
    }
    Ok((carried, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: the journal that root makes when it mounts a user's volume
    // is the user's, who could not mount the volume again otherwise.
    #[test]
    fn a_journal_made_by_root_is_the_owners() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let nobody = rustix::process::Uid::from_raw(65534);
        let nogroup = rustix::process::Gid::from_raw(65534);
        rustix::fs::chown(dir.path(), Some(nobody), Some(nogroup)).expect("chown");
        drop(Journal::open(dir.path()).expect("journal"));
        let made = rustix::fs::stat(dir.path().join(JOURNAL_NAME)).expect("stat");
        assert_eq!((made.st_uid, made.st_gid), (65534, 65534));
    }

    // Protects: the record layout docs/FORMAT.md draws.
    #[test]
    fn record_layout() {
        assert_eq!(RECORD_HEADER_LEN, 56);
        assert_eq!(SLOT_LEN, 4192);
    }

    // Protects: a record reads back as written, a hole costs no bytes, and
    // a torn or flipped record is not a record.
    #[test]
    fn records_round_trip_and_torn_ones_are_ignored() {
        let id = [7u8; FILE_ID_LEN];
        let stored: Vec<u8> = (0..200u32).map(|i| i as u8 | 1).collect();
        let mut out = Vec::new();
        encode_into(
            &mut out,
            9,
            &id,
            &Original {
                index: 3,
                stored: &stored,
            },
            Kind::Copy,
        );
        let (got_id, record) = decode(0, &out).expect("decodes");
        assert_eq!(got_id, id);
        assert_eq!((record.seq, record.index), (9, 3));
        assert_eq!((record.stored_len, record.hole), (stored.len(), false));
        assert_eq!(record.kind, Kind::Copy);
        assert_eq!(&out[RECORD_HEADER_LEN..], &stored[..]);
        for cut in [0, 10, RECORD_HEADER_LEN - 1] {
            assert!(decode(0, &out[..cut]).is_none(), "cut at {cut}");
        }
        let mut flipped = out.clone();
        flipped[SEQ_AT + 2] ^= 1;
        assert!(decode(0, &flipped).is_none(), "a flipped header bit");

        let zeros = vec![0u8; CIPHER_BLOCK_SIZE as usize];
        out.clear();
        encode_into(
            &mut out,
            10,
            &id,
            &Original {
                index: 4,
                stored: &zeros,
            },
            Kind::Copy,
        );
        assert_eq!(out.len(), RECORD_HEADER_LEN);
        let hole = decode(1, &out).expect("hole").1;
        assert_eq!((hole.stored_len, hole.hole), (zeros.len(), true));

        // A record naming a block no file can have is not a record.
        out.clear();
        encode_into(
            &mut out,
            11,
            &id,
            &Original {
                index: u64::MAX / 2,
                stored: &stored,
            },
            Kind::Copy,
        );
        assert!(decode(2, &out).is_none());

        // A commit carries the file's modification time.
        out.clear();
        let mtime = Mtime {
            secs: 1_796_080_399,
            nanos: 334_536_459,
        };
        encode_into(
            &mut out,
            12,
            &id,
            &Original {
                index: 5,
                stored: &stored,
            },
            Kind::Commit(mtime),
        );
        let commit = decode(3, &out).expect("commit").1;
        assert_eq!((commit.index, commit.stored_len), (5, stored.len()));
        assert_eq!((commit.kind, commit.hole), (Kind::Commit(mtime), false));
        let mut flipped = out.clone();
        flipped[MTIME_NANOS_AT] ^= 1;
        assert!(decode(3, &flipped).is_none(), "the time is checksummed");
    }

    // Protects: copies survive a reopen (a crash) until released, slots are
    // reused and cleared, a small idle journal keeps its length and a large
    // one is cut back to its kept slots, every record in them cleared.
    #[test]
    fn copies_survive_reopen_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = [1u8; FILE_ID_LEN];
        let block = vec![5u8; 100];
        let journal = Journal::open(dir.path()).expect("open");
        let first = journal
            .save(
                &id,
                &[Original {
                    index: 0,
                    stored: &block,
                }],
            )
            .expect("save");
        let second = journal
            .save(
                &id,
                &[Original {
                    index: 1,
                    stored: &block,
                }],
            )
            .expect("save");
        journal.release(&first);
        drop(journal);

        let reopened = Journal::open(dir.path()).expect("reopen");
        assert_eq!(reopened.live(), 1);
        let carried = reopened.take_carried(&id);
        assert_eq!(carried.len(), 1);
        assert_eq!((carried[0].slot, carried[0].index), (second[0], 1));
        assert!(reopened.take_carried(&id).is_empty(), "handed over once");
        // The next copy reuses the released slot, and numbers go on.
        let third = reopened
            .save(
                &[2u8; FILE_ID_LEN],
                &[Original {
                    index: 0,
                    stored: &block,
                }],
            )
            .expect("save");
        assert_eq!(third, first);
        reopened.release(&third);
        reopened.release(&[carried[0].slot]);
        assert_eq!(reopened.live(), 0);
        let len = std::fs::metadata(dir.path().join(JOURNAL_NAME))
            .expect("stat")
            .len();
        assert_eq!(len, 2 * SLOT_LEN, "a small idle journal keeps its slots");
        drop(reopened);
        let cleared = Journal::open(dir.path()).expect("reopen");
        assert_eq!(cleared.live(), 0, "released slots are cleared");

        // A burst past the kept slots is cut back to them once idle.
        let burst: Vec<Original> = (0..IDLE_SLOTS_KEPT + 1)
            .map(|index| Original {
                index,
                stored: &block,
            })
            .collect();
        let taken = cleared.save(&id, &burst).expect("save burst");
        cleared.release(&taken);
        let len = std::fs::metadata(dir.path().join(JOURNAL_NAME))
            .expect("stat")
            .len();
        assert_eq!(
            len,
            IDLE_SLOTS_KEPT * SLOT_LEN,
            "an idle journal past its kept slots is cut back to them"
        );
        drop(cleared);
        let reopened = Journal::open(dir.path()).expect("reopen");
        assert_eq!(reopened.live(), 0, "the kept slots were cleared");
    }
}
