//! Keeping durable blocks through torn rewrites: the file's side of the
//! double-write journal (`crate::journal` says why).
//!
//! A file guarded by a journal copies each block that was durable at its
//! last sync into the journal before the block's first rewrite in place
//! since then, and releases the copies when it is synced again. Blocks
//! written since the last sync hold nothing a program was promised, so
//! rewriting them needs no copy: an append loop copies the partial last
//! block once per `fsync`, not once per write. A rewrite held in memory
//! (`hold`) only reserves the slot for its copy; a commit of it to the
//! journal stands for it instead of the copy (`commit_held`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::blocks::{is_zero, try_open};
use super::{block_len, EncryptedFile, Header, State, TailRepair};
use crate::error::{IoContext, Result};
use crate::journal::{Carried, ContentId, Failure, Journal, Kind, Mtime, Original};
use crate::layout::{self, block_count, block_offset, BLOCK_OVERHEAD};

/// Copies one file may hold before it is synced instead (which makes what
/// it wrote durable and frees them): bounds the journal under a program that
/// rewrites a large file and never syncs it.
const MAX_COPIES_PER_FILE: usize = 4096;

/// Rewritten blocks one file holds back in memory (2 MiB) before writing
/// them: they share one journal sync (`hold`).
const MAX_HELD_PER_FILE: usize = 512;

pub(super) struct Guard {
    journal: Arc<Journal>,
    /// Blocks `0..durable_blocks` held their contents at the file's last
    /// sync (or when it was opened): tearing one could lose durable bytes.
    durable_blocks: u64,
    /// Durable blocks copied since the last sync.
    saved: HashSet<u64>,
    /// The journal slots holding those copies.
    slots: Vec<u64>,
    /// Rewritten blocks held back (`hold`), as stored, by index.
    held: BTreeMap<u64, Box<[u8]>>,
    /// The contents the held blocks belong to.
    held_for: ContentId,
    /// A journal slot for each held block whose durable original nothing
    /// in the journal stands for yet, by index: taken when the block is
    /// first held, so that the copy of its original, which must be durable
    /// before the block is written in place, cannot fail later for want of
    /// journal space. The copy is written only if the block goes in place
    /// before a commit stands for it (`write_held`); a commit takes the
    /// slot instead (`commit_held`).
    reserved: BTreeMap<u64, u64>,
    /// Held blocks whose contents a commit made durable (`commit_held`).
    committed: HashSet<u64>,
    /// Each committed block's newest commit, by index: its journal slot,
    /// released (durably) by the file's next sync, once the block is in
    /// place.
    commits: HashMap<u64, u64>,
    /// The modification time the newest commit recorded.
    committed_mtime: Option<Mtime>,
    /// A commit replaced by a newer one was cleared since this journal
    /// ticket: that clearing must be durable before the newer one is
    /// cleared, or a crash between the two could bring the older back.
    superseded: Option<u64>,
    /// The backing file is open for writing (a read-only descriptor must
    /// fail a write at once, not when held blocks are written).
    writable: bool,
}

/// Whether a guard holds rewrites back (`hold`).
fn holding(guard: &Option<Guard>) -> bool {
    guard.as_ref().is_some_and(|g| !g.held.is_empty())
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            log::error!(
                "{} rewritten blocks were never written (an error was logged when writing them)",
                self.held.len()
            );
            self.journal.remove_held(self.held.len());
        }
        let reserved: Vec<u64> = self.reserved.values().copied().collect();
        self.journal.release(&reserved);
    }
}

impl Guard {
    /// The blocks among `blocks`, of a file of `size` bytes, that held
    /// durable data at the last sync and that nothing in the journal
    /// stands for: no copy of the original (made or reserved), and no
    /// commit unless the block is the file's last. After a crash a commit
    /// is written back over whatever its block holds (`put_back`), but
    /// not over the file's last block. A committed block is never the
    /// last when committed, and a shrink that makes it the last ends the
    /// cycle (`shrink`), but one that failed after its cut may not have:
    /// such a block is copied, as last. Otherwise a copy would be newer
    /// than the commit and hide it.
    fn unguarded(&self, blocks: Range<u64>, size: u64) -> Vec<u64> {
        let count = block_count(size);
        let durable = self.durable_blocks.min(count);
        let committed = |i: u64| i + 1 < count && self.commits.contains_key(&i);
        blocks
            .filter(|&i| {
                i < durable
                    && !self.saved.contains(&i)
                    && !self.reserved.contains_key(&i)
                    && !committed(i)
            })
            .collect()
    }
}

impl EncryptedFile {
    /// Guards this file's durable blocks with `journal`, after recovering
    /// what a crash left (`recover_from`).
    pub fn guarded_by(self, journal: &Arc<Journal>) -> Result<Self> {
        // A sync of this file failed before the mount let go of it
        // (`close_guard`): known before recovery, whose own sync could not
        // vouch for anything now (Linux reports a lost write-back once).
        let file_id = match &self.state_keeping_held().header {
            Header::Valid(header) => Some(header.file_id),
            _ => None,
        };
        match file_id.and_then(|id| journal.failure_of(&id)) {
            Some(Failure::RecordsLost) => {
                return Err(crate::error::VolumeError::eio(format!(
                    "{}: its sync failed and its journal records could not be read back; \
                     remount the volume to put them back",
                    self.backing_path().display()
                )));
            }
            Some(Failure::Sync) => self.sync_failed.store(true, Ordering::Relaxed),
            None => {}
        }
        if let Some(outcome) = self.recover_from(journal)? {
            log::info!(
                "{}: recovered from an interrupted session: {outcome:?}",
                self.backing_path().display()
            );
        }
        let durable_blocks = self.current_blocks()?;
        let writable = rustix::fs::fcntl_getfl(&self.file).is_ok_and(|flags| {
            flags.contains(rustix::fs::OFlags::RDWR) || flags.contains(rustix::fs::OFlags::WRONLY)
        });
        *self.guard() = Some(Guard {
            journal: Arc::clone(journal),
            durable_blocks,
            saved: HashSet::new(),
            slots: Vec::new(),
            held: BTreeMap::new(),
            held_for: ContentId::default(),
            reserved: BTreeMap::new(),
            committed: HashSet::new(),
            commits: HashMap::new(),
            committed_mtime: None,
            superseded: None,
            writable,
        });
        Ok(self)
    }

    /// When an earlier session left records of this file's blocks in
    /// `journal`: writes its commits, puts back every block a crash tore,
    /// then repairs what the crash left at the end (see `repair_tail`), and
    /// releases the records. `None` when there were none.
    pub fn recover_from(&self, journal: &Journal) -> Result<Option<TailRepair>> {
        let mut state = self.state_mut()?;
        let (content_id, file_id, carried) = match &state.header {
            Header::Valid(header) if header.has_blocks() => (
                header.content_id,
                header.file_id,
                journal.take_carried(&header.content_id),
            ),
            _ => return Ok(None),
        };
        if carried.is_empty() {
            return Ok(None);
        }
        // Nothing is put back or released on the word of a sync that
        // cannot vouch for it (this file's failed this session, and one on
        // a new descriptor would not hear of the write-back that was
        // lost): the records wait for the next mount, and the file for
        // them. (Put back unsynced and kept, they would be shadowed by the
        // copies of the blocks they put back, which are not durable.)
        if let Err(e) = self.refuse_after_failed_sync() {
            journal.return_carried(&content_id, carried);
            return Err(e);
        }
        match self.recover_carried(&mut state, &carried, journal) {
            // Released once the file holds what they stood for (a failure
            // to release leaves the journal untrusted, which keeps any
            // record left on disk from mattering this session).
            Ok(outcome) => release_recovered(&carried, journal).map(|()| outcome),
            // Kept for the file's next opening, which fails the same way
            // until they can be put back: never the older contents. A sync
            // that failed here is remembered, as one that failed while the
            // file was open would be (`hand_on_a_failure`).
            Err(e) => {
                if self.sync_failed() {
                    journal.remember_failure(&file_id, Failure::Sync);
                }
                journal.return_carried(&content_id, carried);
                Err(e)
            }
        }
    }

    /// Puts back what `carried` holds for this file and repairs its end
    /// where a copy went back; releases nothing.
    fn recover_carried(
        &self,
        state: &mut State,
        carried: &[Carried],
        journal: &Journal,
    ) -> Result<Option<TailRepair>> {
        let PutBack { copies, commits } = self.put_back(state, carried, journal)?;
        let mut what = Vec::new();
        if copies > 0 {
            what.push(format!("{copies} torn blocks put back from the journal"));
        }
        if commits > 0 {
            what.push(format!(
                "{commits} blocks synced through the journal written to their place"
            ));
        }
        let what = what.join("; ");
        // Nothing torn that a copy mends: the file's end is left as it is
        // (it is `fsck --repair`'s to judge), so that a planted record
        // cannot make the mount cut a file on its own.
        let tail = match copies {
            0 => TailRepair::Clean,
            _ => self.repair_tail_locked(state)?,
        };
        let size = layout::plaintext_size_lossy(self.cipher_len()?);
        Ok(match tail {
            TailRepair::Clean if what.is_empty() => None,
            TailRepair::Clean => Some(TailRepair::Repaired { what, size }),
            TailRepair::Repaired {
                what: repaired,
                size,
            } => Some(TailRepair::Repaired {
                what: format!("{what}; {repaired}"),
                size,
            }),
            other => Some(other),
        })
    }

    /// Before blocks `blocks` of a file of `size` bytes are rewritten in
    /// place: copies those that hold durable data and have no copy yet.
    /// `old_last` is the old last block as stored, when the caller has it.
    pub(super) fn save_originals(
        &self,
        content_id: &ContentId,
        size: u64,
        old_last: Option<&[u8]>,
        blocks: Range<u64>,
    ) -> Result<()> {
        let mut guard = self.guard();
        let Some(g) = guard.as_mut() else {
            return Ok(());
        };
        self.copy_originals(g, content_id, size, old_last, blocks)
    }

    /// Copies the durable originals of `blocks` that nothing in the
    /// journal stands for yet (`Guard::unguarded`), and syncs the journal.
    fn copy_originals(
        &self,
        g: &mut Guard,
        content_id: &ContentId,
        size: u64,
        old_last: Option<&[u8]>,
        blocks: Range<u64>,
    ) -> Result<()> {
        // Held blocks in the way were written first (`settle_held`), with
        // the copies their slots were reserved for.
        debug_assert!(g.reserved.range(blocks.clone()).next().is_none());
        let old_blocks = block_count(size);
        let mut indices = g.unguarded(blocks.clone(), size);
        if indices.is_empty() {
            return Ok(());
        }
        if self.bound_copies(g, indices.len())? {
            indices = g.unguarded(blocks.clone(), size);
        }
        // The originals as stored, read in one go (they are one run unless
        // some were copied already); the old last block the caller has.
        let first = indices[0];
        let end = indices[indices.len() - 1] + 1;
        let stored_end = block_offset(end - 1) + block_len(size, end - 1) + BLOCK_OVERHEAD;
        let mut stored = vec![0u8; (stored_end - block_offset(first)) as usize];
        match old_last {
            Some(bytes) if end == old_blocks => {
                let at = (block_offset(end - 1) - block_offset(first)) as usize;
                stored[at..].copy_from_slice(bytes);
                self.read_stored_range(&mut stored[..at], first)?;
            }
            _ => self.read_stored_range(&mut stored, first)?,
        }
        let originals: Vec<Original> = indices
            .iter()
            .map(|&index| {
                let at = (block_offset(index) - block_offset(first)) as usize;
                let len = (block_len(size, index) + BLOCK_OVERHEAD) as usize;
                Original {
                    index,
                    stored: &stored[at..at + len],
                }
            })
            .collect();
        let slots = g.journal.save(content_id, &originals)?;
        g.slots.extend(slots);
        g.saved.extend(&indices);
        Ok(())
    }

    /// Ends the file's sync cycle early (writes what it holds, syncs it,
    /// releases its copies) when `more` copies would pass its bound;
    /// whether it did.
    fn bound_copies(&self, g: &mut Guard, more: usize) -> Result<bool> {
        if g.slots.len() + g.reserved.len() + more <= MAX_COPIES_PER_FILE {
            return Ok(false);
        }
        self.write_held(g)?;
        self.sync_backing(true)?;
        self.end_cycle(g)?;
        Ok(true)
    }

    /// Whether a rewrite from `size` to `new_size` bytes of `blocks` may
    /// be held back (`hold`): the file is guarded and open for writing,
    /// keeps its size, and the rewrite stays clear of the last block, whose
    /// rewrites move the end recovery judges.
    pub(super) fn may_hold(&self, size: u64, new_size: u64, blocks: &Range<u64>) -> bool {
        new_size == size && blocks.end < block_count(size) && self.writable()
    }

    /// Before a rewrite of `blocks` reads and writes them: the held blocks
    /// among them are written first, except those the rewrite replaces
    /// `whole` while being held itself (`holding`).
    pub(super) fn settle_held(
        &self,
        blocks: Range<u64>,
        whole: Range<u64>,
        holding: bool,
    ) -> Result<()> {
        let mut guard = self.guard();
        let Some(g) = guard.as_mut() else {
            return Ok(());
        };
        let in_the_way = g
            .held
            .range(blocks)
            .any(|(index, _)| !holding || !whole.contains(index));
        if in_the_way {
            self.write_held(g)?;
        }
        Ok(())
    }

    /// Holds back the sealed whole blocks `stored` of `blocks` instead of
    /// writing them in place. A durable original they replace is copied
    /// to the journal only if the block is written in place before a
    /// commit stands for it (a journal slot for the copy is reserved now);
    /// one journal sync then covers every copy (`write_held`). So a run of
    /// random overwrites pays one flush per batch rather than one per
    /// block, and an `fsync` loop over rewrites one journal write per
    /// cycle, the commit. Held blocks are written when the file holds
    /// `MAX_HELD_PER_FILE`, the volume its budget, when anything else
    /// touches the file (`state` writes them first), or by
    /// `write_held_back` (the mount calls it within a second:
    /// `fuse::held`); a crash of the mount loses them as a power cut loses
    /// the kernel's dirty pages: they were never synced.
    pub(super) fn hold(
        &self,
        content_id: &ContentId,
        size: u64,
        sparse: bool,
        blocks: Range<u64>,
        stored: &[u8],
    ) -> Result<()> {
        let mut guard = self.guard();
        let Some(g) = guard.as_mut() else {
            return self.write_stored(blocks.start, stored);
        };
        // Nothing is held that no journal sync can ever let out.
        g.journal.refuse_after_failure()?;
        // Room first, so that a write that fails leaves nothing held: this
        // file's held blocks are written when they would pass its share or
        // the volume's budget; if other files hold the budget, the rewrite
        // is written as it comes, its copies synced.
        let new = blocks.clone().filter(|i| !g.held.contains_key(i)).count();
        if g.held.len() + new > MAX_HELD_PER_FILE || !g.journal.held_budget_allows(new) {
            self.write_held(g)?;
            if !g
                .journal
                .held_budget_allows(stored.len() / layout::CIPHER_BLOCK_SIZE as usize)
            {
                self.copy_originals(g, content_id, size, None, blocks.clone())?;
                return self.write_stored(blocks.start, stored);
            }
        }
        let mut unguarded = g.unguarded(blocks.clone(), size);
        if self.bound_copies(g, unguarded.len())? {
            unguarded = g.unguarded(blocks.clone(), size);
        }
        // Nothing durable replaced and nothing held to replace: plain write.
        if unguarded.is_empty() && g.held.range(blocks.clone()).next().is_none() {
            return self.write_stored(blocks.start, stored);
        }
        if sparse {
            self.reserve_holes(g, blocks.clone())?;
        }
        let slots = g.journal.reserve(unguarded.len())?;
        g.reserved.extend(unguarded.into_iter().zip(slots));
        g.held_for = *content_id;
        let whole = layout::CIPHER_BLOCK_SIZE as usize;
        let mut added = 0;
        for (index, bytes) in blocks.zip(stored.chunks(whole)) {
            if g.held.insert(index, bytes.into()).is_none() {
                added += 1;
            }
            g.committed.remove(&index);
        }
        g.journal.add_held(added);
        Ok(())
    }

    /// In a sparse file, before `blocks` (whole blocks, not the last) are
    /// held: space for those not held yet that are holes in the backing
    /// file, so that a rewrite that cannot have it fails now, not when
    /// the held blocks are written later (held ones got theirs when first
    /// held). A block read with data has its space: an `fsync` loop over
    /// rewrites then changes nothing in the backing file until the held
    /// blocks are written.
    fn reserve_holes(&self, g: &Guard, blocks: Range<u64>) -> Result<()> {
        if blocks.clone().all(|index| g.held.contains_key(&index)) {
            return Ok(());
        }
        let whole = layout::CIPHER_BLOCK_SIZE as usize;
        let mut stored = vec![0u8; (blocks.end - blocks.start) as usize * whole];
        self.read_stored_range(&mut stored, blocks.start)?;
        let hole = blocks
            .clone()
            .zip(stored.chunks(whole))
            .any(|(index, bytes)| !g.held.contains_key(&index) && is_zero(bytes));
        if !hole {
            return Ok(());
        }
        let from = block_offset(blocks.start);
        self.reserve_backing(from, from + stored.len() as u64)
    }

    /// Writes the held blocks in place, after copying the durable
    /// originals no commit stands for and syncing the copies (a torn
    /// block is put back from its copy or its commit). On failure they
    /// stay held (and the error goes to whoever asked: `fsync`, a read, a
    /// truncate).
    fn write_held(&self, g: &mut Guard) -> Result<()> {
        if g.held.is_empty() {
            return Ok(());
        }
        self.copy_reserved(g)?;
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0;
        let mut next = None;
        for (&index, bytes) in &g.held {
            if next != Some(index) && !run.is_empty() {
                self.write_stored(run_start, &run)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = index;
            }
            run.extend_from_slice(bytes);
            next = Some(index + 1);
        }
        self.write_stored(run_start, &run)?;
        g.journal.remove_held(g.held.len());
        g.held.clear();
        g.committed.clear();
        Ok(())
    }

    /// Copies the originals of the held blocks with reserved slots (still
    /// in place: held blocks are not written yet) into those slots, and
    /// syncs the journal; the blocks then count as copied.
    fn copy_reserved(&self, g: &mut Guard) -> Result<()> {
        if g.reserved.is_empty() {
            return Ok(());
        }
        let whole = layout::CIPHER_BLOCK_SIZE as usize;
        let mut stored = vec![0u8; g.reserved.len() * whole];
        // Read run by run (held blocks are whole: never the last).
        let indices: Vec<u64> = g.reserved.keys().copied().collect();
        let mut at = 0;
        for run in indices.chunk_by(|a, b| a + 1 == *b) {
            let len = run.len() * whole;
            self.read_stored_range(&mut stored[at..at + len], run[0])?;
            at += len;
        }
        let originals: Vec<Original> = indices
            .iter()
            .zip(stored.chunks(whole))
            .map(|(&index, stored)| Original { index, stored })
            .collect();
        let slots: Vec<u64> = g.reserved.values().copied().collect();
        g.journal.save_reserved(&g.held_for, &originals, &slots)?;
        g.journal.sync()?;
        g.saved.extend(&indices);
        g.slots.extend(slots);
        g.reserved.clear();
        Ok(())
    }

    /// A sync by commit (`Journal::commit`): when held rewrites are all
    /// that changed since the backing file's last sync, the held blocks
    /// not yet committed go to the journal as commits, with the file's
    /// modification time, and one journal sync makes them durable; they
    /// stay held, to be written in place later. `false` when the file
    /// needs a sync of its own. The caller keeps writers out.
    pub(super) fn commit_held(&self, state: &State, data_only: bool) -> Result<bool> {
        let mut guard = self.guard();
        let Some(g) = guard.as_mut() else {
            return Ok(false);
        };
        let Header::Valid(header) = &state.header else {
            return Ok(false);
        };
        if g.held.is_empty() {
            return Ok(false);
        }
        let Some(mtime) = self.only_held_since_sync(data_only)? else {
            return Ok(false);
        };
        self.refuse_after_failed_sync()?;
        let mut indices: Vec<u64> = g
            .held
            .keys()
            .filter(|index| !g.committed.contains(index))
            .copied()
            .collect();
        if indices.is_empty() {
            if g.committed_mtime == Some(mtime) {
                return Ok(true);
            }
            // Only the time changed: one block committed again carries it.
            indices.extend(g.held.keys().next().copied());
        }
        let blocks: Vec<Original> = indices
            .iter()
            .map(|index| Original {
                index: *index,
                stored: &g.held[index],
            })
            .collect();
        // A block's commit takes the slot reserved for its copy: it stands
        // for the block instead.
        let reserved: Vec<u64> = indices
            .iter()
            .filter_map(|index| g.reserved.get(index))
            .copied()
            .collect();
        let slots = g
            .journal
            .commit(&header.content_id, &blocks, mtime, &reserved)?;
        drop(blocks);
        for (index, slot) in indices.into_iter().zip(slots) {
            g.reserved.remove(&index);
            // The newer commit is durable: the older can go without a sync
            // (but before the newer goes: `end_cycle`).
            if let Some(older) = g.commits.insert(index, slot) {
                g.journal.release(&[older]);
                g.superseded = Some(g.journal.ticket());
            }
            g.committed.insert(index);
        }
        g.committed_mtime = Some(mtime);
        self.commits_live.store(true, Ordering::Release);
        Ok(true)
    }

    /// Writes whatever is held, so that the backing file holds the file's
    /// contents: before anything but a held rewrite looks at it.
    pub(super) fn write_all_held(&self) -> Result<()> {
        match self.guard().as_mut() {
            Some(g) => self.write_held(g),
            None => Ok(()),
        }
    }

    /// The file was synced: everything in it is durable, its copies are no
    /// longer needed. The caller keeps writers out between the sync and
    /// this.
    pub(super) fn synced(&self) -> Result<()> {
        match self.guard().as_mut() {
            Some(g) => self.end_cycle(g),
            None => Ok(()),
        }
    }

    /// The file was emptied. When it held durable blocks the emptying is
    /// made durable at once: new contents written over the old blocks'
    /// places need no copies only if the old blocks can never come back.
    pub(super) fn emptied(&self) -> Result<()> {
        if !self.durable_beyond(0) {
            return Ok(());
        }
        self.sync_backing(true)?;
        self.synced()
    }

    fn end_cycle(&self, g: &mut Guard) -> Result<()> {
        // Held blocks are written before the sync that ends a cycle: their
        // copies must outlive their writing. Every caller sees to it; were
        // one not to, the copies are kept rather than lost.
        if !g.held.is_empty() {
            return Err(crate::error::VolumeError::eio(format!(
                "{}: a sync ended with rewrites still held (a bug); their copies are kept",
                self.backing_path().display()
            )));
        }
        g.durable_blocks = self.current_blocks()?;
        g.saved.clear();
        g.journal.release(&std::mem::take(&mut g.slots));
        // Commits are written to their place whatever the file holds: one
        // left on disk could come back over a newer version, so they go
        // durably, before the sync that made them needless returns.
        if let Some(ticket) = g.superseded.take() {
            if !g.journal.is_durable(ticket) {
                g.journal.sync()?;
            }
        }
        let commits: Vec<u64> = g.commits.drain().map(|(_, slot)| slot).collect();
        g.committed_mtime = None;
        g.journal.release_durably(&commits)?;
        self.commits_live.store(false, Ordering::Release);
        self.cycle_ended();
        Ok(())
    }

    /// Whether blocks from `blocks` on held durable data at the last sync
    /// (a shrink below them must then be made durable before they can be
    /// written anew without a copy).
    pub(super) fn durable_beyond(&self, blocks: u64) -> bool {
        self.guard()
            .as_ref()
            .is_some_and(|g| g.durable_blocks > blocks)
    }

    /// Fails once a sync of the guarding journal has failed.
    pub(super) fn journal_trusted(&self) -> Result<()> {
        match self.guard().as_ref() {
            Some(g) => g.journal.refuse_after_failure(),
            None => Ok(()),
        }
    }

    /// Whether rewrites are held back in memory (`hold`), to be written by
    /// the next sync, read, other change, `write_held_back` or the last
    /// drop.
    pub fn holds_back(&self) -> bool {
        holding(&self.guard())
    }

    /// Whether the mount may let go of this file without writing anything
    /// (nothing held back), answered without waiting: a file busy writing
    /// or syncing (its guard locked) is not.
    pub fn idle(&self) -> bool {
        match self.guard.try_lock() {
            Ok(g) => !holding(&g),
            Err(std::sync::TryLockError::Poisoned(p)) => !holding(&p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    /// Whether the backing file is open for writing (`guarded_by` found
    /// out once); an unguarded file is taken as not.
    pub fn writable(&self) -> bool {
        self.guard().as_ref().is_some_and(|g| g.writable)
    }

    /// Copies, commits and reserved slots still held (they are released
    /// by the next sync).
    pub(super) fn held_copies(&self) -> usize {
        self.guard()
            .as_ref()
            .map_or(0, |g| g.slots.len() + g.commits.len() + g.reserved.len())
    }

    /// Writes what is held and releases the copies after a final sync,
    /// when the mount lets the file go (its last drop).
    pub(super) fn close_guard(&mut self) {
        let held = self.held_copies();
        if held > 0 {
            match self.write_all_held().and_then(|()| self.sync_backing(true)) {
                Ok(()) => {
                    if let Err(e) = self.synced() {
                        log::warn!("{e}");
                    }
                }
                // Kept live, and handed back to the journal: the file's
                // next opening (in this session or the next) puts back
                // what its commits stand for and what a crash tore.
                Err(e) => {
                    log::warn!("{e}; keeping {held} journal records");
                    if !self.carry_records_on() {
                        return self.hand_on_a_failure(Failure::RecordsLost);
                    }
                }
            }
        }
        if self.sync_failed() {
            self.hand_on_a_failure(Failure::Sync);
        }
    }

    /// The guard's live records, handed back to the journal (`close_guard`);
    /// whether they could be. If not, they wait on disk for the next mount,
    /// and so does the file (`hand_on_a_failure`): opened again this
    /// session, it would show contents older than its commits stand for,
    /// and a later write could be overwritten by them at the next mount.
    fn carry_records_on(&mut self) -> bool {
        let Some(g) = self.guard.get_mut().unwrap_or_else(|p| p.into_inner()) else {
            return true;
        };
        let slots: Vec<u64> = g.slots.iter().chain(g.commits.values()).copied().collect();
        match g.journal.carry_again(&slots) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "{e}: {} journal records wait for the next mount, and the file with them",
                    slots.len()
                );
                false
            }
        }
    }

    /// A file whose sync failed stays untrusted when it is opened again in
    /// this session, and one whose records were lost is not opened again
    /// (`guarded_by`): the journal remembers them.
    fn hand_on_a_failure(&mut self, failure: Failure) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let Header::Valid(header) = &state.header else {
            return;
        };
        let file_id = header.file_id;
        if let Some(g) = self.guard.get_mut().unwrap_or_else(|p| p.into_inner()) {
            g.journal.remember_failure(&file_id, failure);
        }
    }

    /// Puts back each block whose newest copy is in `carried` and which no
    /// longer authenticates; a copy of the old last block also cuts what
    /// was appended after it (none of it had been synced). A block whose
    /// newest record is a commit gets the commit, whatever it holds, and the
    /// file the newest commit's modification time where that is later.
    fn put_back(
        &self,
        state: &mut State,
        carried: &[Carried],
        journal: &Journal,
    ) -> Result<PutBack> {
        let mut done = PutBack::default();
        let Some(keys) = state.keys.as_ref() else {
            return Ok(done);
        };
        let sparse = matches!(&state.header, Header::Valid(h) if h.sparse());
        // Each block's records, newest last (`carried` is in seq order).
        let mut by_index: BTreeMap<u64, Vec<&Carried>> = BTreeMap::new();
        for record in carried {
            by_index.entry(record.index).or_default().push(record);
        }
        let mut buf = vec![0u8; layout::CIPHER_BLOCK_SIZE as usize];
        let mut mtime = None;
        // Taken before anything is written (writing moves it to now), and
        // only where a commit may set it.
        let has_commits = carried.iter().any(|c| matches!(c.kind, Kind::Commit(_)));
        let mtime_before = match has_commits {
            true => Some(self.stored_mtime()?),
            false => None,
        };
        for (&index, records) in &by_index {
            let cipher_len = self.cipher_len()?;
            if block_offset(index) >= cipher_len {
                break;
            }
            let at_end = block_offset(index + 1) >= cipher_len;
            // Newest first: a commit that does not authenticate was torn
            // while it was written, so its sync never returned and the
            // record before it still stands. Commits are of held blocks,
            // never the last (`may_hold`).
            let mut copy = None;
            for record in records.iter().rev().copied() {
                match record.kind {
                    Kind::Commit(_) if at_end => {}
                    Kind::Commit(committed) => {
                        if self.replay_commit(keys, sparse, index, record, journal)? {
                            done.commits += 1;
                            mtime = mtime.max(Some(committed));
                            break;
                        }
                    }
                    Kind::Copy => {
                        copy = Some(record);
                        break;
                    }
                }
            }
            let Some(copy) = copy else {
                continue;
            };
            let current = self.read_slot(index, cipher_len, &mut buf)?;
            // Authentic as what its place makes it: the last block sealed
            // as last, any other sealed as not last or a hole. (An old last
            // block whose re-seal was lost, with an extension behind it,
            // opens as last but is not the end, and must go back.)
            let authentic = (!at_end && sparse && is_zero(current))
                || try_open(&self.crypto, keys, index, at_end, current).is_some();
            if authentic {
                continue;
            }
            let stored = journal.read_copy(copy)?;
            let as_last = try_open(&self.crypto, keys, index, true, &mut stored.clone()).is_some();
            let valid = (sparse && is_zero(&stored))
                || as_last
                || try_open(&self.crypto, keys, index, false, &mut stored.clone()).is_some();
            if !valid {
                log::warn!(
                    "{}: the journal's copy of block {index} does not authenticate; not used",
                    self.backing_path().display()
                );
                continue;
            }
            self.write_back(index, &stored, as_last)?;
            done.copies += 1;
            if as_last {
                break;
            }
        }
        // No torn block, but a torn end (a growth whose new end did not
        // land while the old end's re-seal did): the newest copy sealed as
        // the end is the durable end; it goes back, and what follows it was
        // never synced.
        if done.copies == 0 && self.end_is_damaged(keys)? {
            for copy in carried.iter().rev() {
                if copy.kind != Kind::Copy {
                    continue;
                }
                let stored = journal.read_copy(copy)?;
                let end = block_offset(copy.index) + stored.len() as u64;
                if end > self.cipher_len()?
                    || try_open(&self.crypto, keys, copy.index, true, &mut stored.clone()).is_none()
                {
                    continue;
                }
                self.write_back(copy.index, &stored, true)?;
                done.copies = 1;
                break;
            }
        }
        if let (Some(committed), Some(before)) = (mtime, mtime_before) {
            self.set_mtime(committed.max(before));
        }
        self.sync_backing(false)?;
        Ok(done)
    }

    /// Writes a commit to its place (not the file's last block) if it
    /// authenticates there; whether it did.
    fn replay_commit(
        &self,
        keys: &super::keys::ContentKeys,
        sparse: bool,
        index: u64,
        commit: &Carried,
        journal: &Journal,
    ) -> Result<bool> {
        let stored = journal.read_copy(commit)?;
        let valid = (sparse && is_zero(&stored))
            || try_open(&self.crypto, keys, index, false, &mut stored.clone()).is_some();
        if !valid {
            log::warn!(
                "{}: the journal's commit of block {index} does not authenticate; not used",
                self.backing_path().display()
            );
            return Ok(false);
        }
        self.write_stored(index, &stored)?;
        Ok(true)
    }

    /// Whether the file's end fails: a cut block, or a last block that
    /// does not open as the end.
    fn end_is_damaged(&self, keys: &super::keys::ContentKeys) -> Result<bool> {
        let cipher_len = self.cipher_len()?;
        let size = match layout::plaintext_size(cipher_len) {
            Ok(0) => return Ok(false),
            Ok(size) => size,
            Err(_) => return Ok(true),
        };
        let last = block_count(size) - 1;
        let mut buf = vec![0u8; layout::CIPHER_BLOCK_SIZE as usize];
        let stored = self.read_slot(last, cipher_len, &mut buf)?;
        Ok(try_open(&self.crypto, keys, last, true, stored).is_none())
    }

    /// Writes a copy back as block `index`; a copy of the file's end also
    /// cuts everything after it.
    fn write_back(&self, index: u64, stored: &[u8], is_end: bool) -> Result<()> {
        self.write_stored(index, stored)?;
        if is_end {
            self.truncate_backing(block_offset(index) + stored.len() as u64)?;
        }
        Ok(())
    }

    fn read_stored_range(&self, buf: &mut [u8], first: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, block_offset(first))
            .context(|| format!("reading {}", self.backing_path().display()))
    }

    fn current_blocks(&self) -> Result<u64> {
        Ok(block_count(layout::plaintext_size_lossy(
            self.cipher_len()?,
        )))
    }

    fn guard(&self) -> MutexGuard<'_, Option<Guard>> {
        // Updated in whole steps under the file's own lock.
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Releases the records a recovery used, now that the file holds what
/// they stood for and is synced. Commits are written over whatever a file
/// holds, so none may come back: each block's older records are cleared
/// durably before its newest, and then the newest, durably too.
fn release_recovered(carried: &[Carried], journal: &Journal) -> Result<()> {
    if carried.iter().all(|c| c.kind == Kind::Copy) {
        journal.release(&carried.iter().map(|c| c.slot).collect::<Vec<_>>());
        return Ok(());
    }
    let mut newest: HashMap<u64, &Carried> = HashMap::new();
    for record in carried {
        newest.insert(record.index, record);
    }
    let older: Vec<u64> = carried
        .iter()
        .filter(|c| newest[&c.index].slot != c.slot)
        .map(|c| c.slot)
        .collect();
    journal.release_durably(&older)?;
    journal.release_durably(&newest.values().map(|c| c.slot).collect::<Vec<_>>())
}

/// What `put_back` wrote: copies of torn blocks, and commits.
#[derive(Default)]
struct PutBack {
    copies: u64,
    commits: u64,
}

impl Drop for EncryptedFile {
    fn drop(&mut self) {
        self.close_guard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cipher::Backend;
    use crate::content::ContentCrypto;
    use crate::keys::SecretKey;

    // Protects: a file whose sync failed stays untrusted when it is opened
    // again in the same session (the mount lets go of files it cannot see
    // closed): its syncs keep failing, so none vouches for lost data.
    #[test]
    fn a_failed_sync_outlives_the_file_being_let_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Arc::new(Journal::open(dir.path()).expect("journal"));
        let crypto = Arc::new(ContentCrypto::new(
            SecretKey::from_bytes([3; 32]),
            Backend::Ring,
        ));
        // A file by name, made anew or opened as it is, guarded by `journal`.
        let guarded = |name: &str, create: bool| {
            let path = dir.path().join(name);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(create)
                .open(&path)
                .expect("open");
            let content = match create {
                true => EncryptedFile::create(file, Arc::clone(&crypto), path),
                false => EncryptedFile::open(file, Arc::clone(&crypto), path),
            };
            content
                .and_then(|c| c.guarded_by(&journal))
                .expect("contents")
        };
        // An empty file, whose contents id is all zeros as every empty
        // file's is: the failure must not pass on to the others.
        let fresh = guarded("other", true);
        let first = guarded("f", true);
        first.as_if_a_sync_failed();
        drop(first);
        let again = guarded("f", false);
        assert!(again.sync_failed());
        assert!(again.sync(true).is_err(), "a later sync must not vouch");
        again.write_at(0, b"data").expect("write");
        drop(again);
        assert!(
            guarded("f", false).sync_failed(),
            "nor after it gets contents"
        );
        assert!(fresh.sync(true).is_ok(), "other files are not affected");
        let third = guarded("third", true);
        assert!(third.sync(true).is_ok(), "nor to files made later");
    }
}
