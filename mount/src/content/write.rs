//! Writes, extensions, shrinks and holes.
//!
//! A write re-seals every block its range touches. When it moves the end of
//! the file, the old last block is re-sealed as not last and the new last
//! block is sealed as last; the blocks in between are sealed zeros when
//! there are few of them, and left as holes (the backing file's own holes,
//! which take no space) when there are many.

use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::blocks::{Opened, SCRATCH};
use super::keys::ContentKeys;
use super::{block_len, EncryptedFile, State};
use crate::error::{IoContext, Result, VolumeError};
use crate::layout::{self, block_count, block_offset, BLOCK_OVERHEAD, BLOCK_SIZE, FLAG_SPARSE};

/// Blocks sealed per `pwrite` when writing long ranges (1 MiB of plaintext):
/// bounds memory while keeping system calls large.
const BLOCKS_PER_BATCH: u64 = 256;

/// Blocks punched per step: each step's synced blocks are copied to the
/// journal before they are zeroed.
const PUNCH_RUN_BLOCKS: u64 = 1024;

/// A gap of up to this many blocks between the old end of the file and a
/// write past it is sealed as zeros; a longer one is left as a hole. Small
/// gaps come from write-back that reaches the mount out of order and are
/// filled a moment later; keeping them dense keeps most files free of holes,
/// where zeroed blocks are detected as forgeries.
const GAP_FILL_BLOCKS: u64 = 256;

/// What a range of plaintext is overwritten with.
#[derive(Clone, Copy)]
pub(super) enum Fill<'a> {
    Bytes(&'a [u8]),
    Zeros,
}

impl<'a> Fill<'a> {
    /// The bytes for `len` bytes at `at`, when the fill is bytes written
    /// at `offset` that cover them all.
    fn whole(self, offset: u64, at: u64, len: usize) -> Option<&'a [u8]> {
        match self {
            Fill::Bytes(data) => {
                let from = usize::try_from(at.checked_sub(offset)?).ok()?;
                data.get(from..from.checked_add(len)?)
            }
            Fill::Zeros => None,
        }
    }
}

/// The blocks a change seals, in order, and whether it leaves holes.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    runs: Vec<Range<u64>>,
    holes: bool,
}

/// Plans overwriting [offset, end) of a file of `size` bytes.
fn plan(size: u64, offset: u64, end: u64, zeros: bool) -> Plan {
    let new_size = size.max(end);
    let old_blocks = block_count(size);
    let new_blocks = block_count(new_size);
    let first = offset / BLOCK_SIZE;
    let last = (end - 1) / BLOCK_SIZE;
    let mut runs = Vec::new();
    if !zeros {
        runs.push(first..last + 1);
    } else if first < old_blocks {
        // Zeros past the old end need no sealing but in the new last block.
        runs.push(first..(last + 1).min(old_blocks));
    }
    let mut holes = false;
    if new_blocks > old_blocks {
        if old_blocks > 0 {
            runs.push(old_blocks - 1..old_blocks);
        }
        runs.push(new_blocks - 1..new_blocks);
        for gap in uncovered(&merge(runs.clone()), old_blocks..new_blocks) {
            if gap.end - gap.start <= GAP_FILL_BLOCKS {
                runs.push(gap);
            } else {
                holes = true;
            }
        }
    }
    Plan {
        runs: merge(runs),
        holes,
    }
}

/// Sorted, non-overlapping, with touching ranges joined.
fn merge(mut runs: Vec<Range<u64>>) -> Vec<Range<u64>> {
    runs.retain(|r| r.start < r.end);
    runs.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(runs.len());
    for run in runs {
        match out.last_mut() {
            Some(prev) if run.start <= prev.end => prev.end = prev.end.max(run.end),
            _ => out.push(run),
        }
    }
    out
}

/// The parts of `within` that no run in `runs` (merged) covers.
fn uncovered(runs: &[Range<u64>], within: Range<u64>) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = within.start;
    for run in runs {
        if run.end <= at || run.start >= within.end {
            continue;
        }
        if run.start > at {
            out.push(at..run.start);
        }
        at = at.max(run.end);
    }
    if at < within.end {
        out.push(at..within.end);
    }
    out
}

/// Largest plaintext size whose ciphertext size fits in an `off_t`.
pub const MAX_PLAINTEXT_SIZE: u64 =
    (i64::MAX as u64 - layout::HEADER_LEN as u64) / layout::CIPHER_BLOCK_SIZE * BLOCK_SIZE;

fn too_big() -> VolumeError {
    VolumeError::io(
        "growing a file",
        std::io::Error::from_raw_os_error(libc::EFBIG),
    )
}

/// One change being sealed: the old and new sizes and the range filled.
struct Change<'a> {
    size: u64,
    new_size: u64,
    offset: u64,
    end: u64,
    fill: Fill<'a>,
    sparse: bool,
    /// When the change grows the file: the old last block as stored, read
    /// once, both to re-seal it and to put it back if a later write fails.
    old_last: Option<Vec<u8>>,
    /// The sealed blocks are held back rather than written (`hold`).
    hold: bool,
}

impl EncryptedFile {
    /// Overwrites [offset, offset+len) with `fill`, as planned by `plan`.
    pub(super) fn rewrite(
        &self,
        state: &mut State,
        offset: u64,
        len: u64,
        fill: Fill,
    ) -> Result<()> {
        let size = self.checked_size(state)?;
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= MAX_PLAINTEXT_SIZE)
            .ok_or_else(too_big)?;
        let plan = plan(size, offset, end, matches!(fill, Fill::Zeros));
        let new_size = size.max(end);
        let touched = match (plan.runs.first(), plan.runs.last()) {
            (Some(first), Some(last)) => first.start..last.end,
            _ => 0..0,
        };
        let hold = self.may_hold(size, new_size, &touched);
        let whole = offset.div_ceil(BLOCK_SIZE)..end / BLOCK_SIZE;
        self.settle_held(touched, whole, hold)?;
        if plan.holes {
            // A growth re-seals the old last block.
            self.mark_sparse(state, block_count(size).saturating_sub(1))?;
        }
        let old_last = match block_count(size).checked_sub(1) {
            Some(index) if new_size > size => Some(self.read_stored(index, size)?),
            _ => None,
        };
        let change = Change {
            size,
            new_size,
            offset,
            end,
            fill,
            sparse: self.valid_header(state)?.sparse(),
            old_last,
            hold,
        };
        let keys = self.keys_for_writing(state)?;
        for run in plan.runs {
            if let Err(e) = self.seal_run(keys, &change, run) {
                self.undo_growth(&change);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Block `index` of a file of `size` bytes, as stored.
    fn read_stored(&self, index: u64, size: u64) -> Result<Vec<u8>> {
        let mut stored = vec![0u8; (block_len(size, index) + BLOCK_OVERHEAD) as usize];
        self.file
            .read_exact_at(&mut stored, block_offset(index))
            .context(|| format!("reading {}", self.backing_path().display()))?;
        Ok(stored)
    }

    /// A growing write failed part way (the backing store full, say): puts
    /// the old last block back as it was and cuts what was added, so that
    /// no byte the file held before is lost. Best effort: the failure that
    /// got us here is what the caller reports.
    fn undo_growth(&self, change: &Change) {
        let Some(stored) = &change.old_last else {
            return;
        };
        let index = block_count(change.size) - 1;
        // A sync during the change (too many journal copies) made the
        // growth so far durable; rewriting the old last block now would
        // need a copy of its own. The grown file stays, its end repaired
        // by `fsck --repair` if a crash follows.
        if self.durable_beyond(index + 1) {
            log::warn!(
                "{}: a failed write that grew the file is kept (already synced)",
                self.backing_path().display()
            );
            return;
        }
        self.note_unsynced();
        let restored = self
            .file
            .write_all_at(stored, block_offset(index))
            .and_then(|()| self.file.set_len(layout::ciphertext_size(change.size)));
        if let Err(e) = restored {
            log::error!(
                "{}: could not undo a failed write that grew the file: {e}",
                self.backing_path().display()
            );
        }
    }

    /// Seals and writes the blocks of `run`, in batches.
    fn seal_run(&self, keys: &mut ContentKeys, change: &Change, run: Range<u64>) -> Result<()> {
        let last_old = block_count(change.size).checked_sub(1);
        let last_new = block_count(change.new_size) - 1;
        let mut plain = [0u8; BLOCK_SIZE as usize];
        SCRATCH.with_borrow_mut(|out| {
            let mut batch_start = run.start;
            while batch_start < run.end {
                let batch_end = run.end.min(batch_start + BLOCKS_PER_BATCH);
                out.clear();
                for index in batch_start..batch_end {
                    let block_start = index * BLOCK_SIZE;
                    let new_len = block_len(change.new_size, index) as usize;
                    let old_len = block_len(change.size, index);
                    // A block the bytes written fill whole is sealed from
                    // them as they are, without a copy.
                    if let Some(bytes) = change.fill.whole(change.offset, block_start, new_len) {
                        self.seal_block(keys, index, index == last_new, bytes, out);
                        continue;
                    }
                    let plain = &mut plain[..new_len];
                    let covered =
                        change.offset <= block_start && change.end >= block_start + old_len;
                    if old_len > 0 && !covered {
                        let was_last = Some(index) == last_old;
                        match (&change.old_last, was_last) {
                            (Some(stored), true) => {
                                let mut copy = stored.clone();
                                match self.open_block(
                                    keys,
                                    change.sparse,
                                    index,
                                    true,
                                    &mut copy,
                                )? {
                                    Opened::Plain(old) => plain[..old.len()].copy_from_slice(old),
                                    Opened::Hole => plain.fill(0),
                                }
                            }
                            _ => self.read_block(
                                keys,
                                change.sparse,
                                index,
                                old_len,
                                was_last,
                                plain,
                            )?,
                        }
                        plain[old_len as usize..].fill(0);
                    } else {
                        plain.fill(0);
                    }
                    overlay(plain, block_start, change.offset, change.end, change.fill);
                    self.seal_block(keys, index, index == last_new, plain, out);
                }
                if change.hold {
                    let blocks = batch_start..batch_end;
                    self.hold(&keys.content_id, change.size, change.sparse, blocks, out)?;
                } else {
                    self.save_originals(
                        &keys.content_id,
                        change.size,
                        change.old_last.as_deref(),
                        batch_start..batch_end,
                    )?;
                    self.write_stored(batch_start, out)?;
                }
                batch_start = batch_end;
            }
            Ok(())
        })
    }

    /// Cuts the file from `size` to `new_size` (both above zero): records
    /// the new size in the header, re-seals the new last block as last, cuts
    /// the backing file after it, and clears the record. A crash in between
    /// leaves a state `fsck --repair` completes or drops (see `verify`).
    pub(super) fn shrink(&self, state: &mut State, size: u64, new_size: u64) -> Result<()> {
        // Refused before anything changes if it could not finish.
        self.refuse_untrusted_syncs()?;
        let mut header = self.valid_header(state)?;
        let sparse = header.sparse();
        header.pending_size = new_size;
        self.store_header(state, header)?;
        let keys = self.keys_for_writing(state)?;
        let index = (new_size - 1) / BLOCK_SIZE;
        let old_len = block_len(size, index);
        let was_last = index == block_count(size) - 1;
        let mut plain = [0u8; BLOCK_SIZE as usize];
        self.read_block(keys, sparse, index, old_len, was_last, &mut plain)?;
        let keep = block_len(new_size, index) as usize;
        let mut sealed = Vec::with_capacity(layout::CIPHER_BLOCK_SIZE as usize);
        self.seal_block(keys, index, true, &plain[..keep], &mut sealed);
        let content_id = keys.content_id;
        self.save_originals(&content_id, size, None, index..index + 1)?;
        self.write_stored(index, &sealed)?;
        // When durable blocks are cut: the re-sealed block is made durable
        // before the cut (a cut that survives a crash must not leave it
        // torn, with its copy no longer the file's end), and the cut is made
        // durable before the next write (a block cut away here and written
        // anew would otherwise have no copy of what the cut removed, should
        // the cut not survive).
        let cuts_durable = self.durable_beyond(block_count(new_size));
        if cuts_durable {
            self.sync_backing(true)?;
        }
        self.truncate_backing(layout::ciphertext_size(new_size))?;
        header.pending_size = 0;
        self.store_header(state, header)?;
        if cuts_durable {
            self.sync_backing(true)?;
            self.synced()?;
        }
        Ok(())
    }

    /// Turns [offset, offset+len) into zeros without changing the size;
    /// whole blocks become holes in the backing file (no space), the edges
    /// and the last block are sealed zeros.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        let mut state = self.state_mut()?;
        let size = self.checked_size(&state)?;
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(());
        }
        // The last block is never a hole: it carries the file's end.
        let first_whole = offset.div_ceil(BLOCK_SIZE);
        let end_whole = (end / BLOCK_SIZE).min(block_count(size) - 1);
        if first_whole >= end_whole {
            return self.rewrite(&mut state, offset, end - offset, Fill::Zeros);
        }
        self.mark_sparse(&mut state, first_whole)?;
        // Zeroing in place can tear like any rewrite: synced blocks are
        // copied first, a bounded run at a time.
        let content_id = self.keys_for_writing(&mut state)?.content_id;
        let mut at = first_whole;
        while at < end_whole {
            let to = end_whole.min(at + PUNCH_RUN_BLOCKS);
            self.save_originals(&content_id, size, None, at..to)?;
            self.zero_backing(block_offset(at), block_offset(to))?;
            at = to;
        }
        let head_end = first_whole * BLOCK_SIZE;
        if offset < head_end {
            self.rewrite(&mut state, offset, head_end - offset, Fill::Zeros)?;
        }
        let tail_start = end_whole * BLOCK_SIZE;
        if tail_start < end {
            self.rewrite(&mut state, tail_start, end - tail_start, Fill::Zeros)?;
        }
        Ok(())
    }

    /// Reserves backing space for a plaintext size of `end` without
    /// changing the file (fallocate with KEEP_SIZE), where the backing file
    /// system can.
    pub fn reserve(&self, end: u64) -> Result<()> {
        let _exclusive = self.state_mut()?;
        let from = self.cipher_len()?;
        let to = layout::ciphertext_size(end.min(MAX_PLAINTEXT_SIZE));
        if to <= from {
            return Ok(());
        }
        // Asked for by a program, which a sync then promises (space for
        // held rewrites, reserved by `hold`, is the mount's own affair).
        self.note_unsynced();
        self.reserve_backing(from, to)
    }

    /// Allocates backing bytes [from, to) that are not yet (fallocate with
    /// KEEP_SIZE), where the backing file system can.
    pub(super) fn reserve_backing(&self, from: u64, to: u64) -> Result<()> {
        let flags = rustix::fs::FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, from, to - from) {
            Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(VolumeError::io(
                format!("reserving space in {}", self.backing_path().display()),
                e.into(),
            )),
        }
    }

    /// Zeroes backing bytes [from, to): a punched hole where the file
    /// system has them, written zeros where it does not.
    fn zero_backing(&self, from: u64, to: u64) -> Result<()> {
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        let context = || format!("punching a hole in {}", self.backing_path().display());
        self.note_unsynced();
        match rustix::fs::fallocate(&self.file, flags, from, to - from) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(VolumeError::io(context(), e.into())),
        }
        let zeros = vec![0u8; (BLOCKS_PER_BATCH * layout::CIPHER_BLOCK_SIZE) as usize];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at).context(context)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Sets the header's sparse flag, durably, before any hole exists: a
    /// crash must never leave a hole in a file whose header forbids them.
    /// For a change that also rewrites blocks from `rewrites_from` on:
    /// refused first, the header left as it is, when that change would be
    /// refused (the flag's sync would be, or a durable block among them
    /// needs a journal that is not trusted): a refused change changes
    /// nothing (the flag lets an all-zero block read as a hole).
    fn mark_sparse(&self, state: &mut State, rewrites_from: u64) -> Result<()> {
        let mut header = self.valid_header(state)?;
        if header.sparse() {
            return Ok(());
        }
        self.refuse_after_failed_sync()?;
        if self.durable_beyond(rewrites_from) {
            self.journal_trusted()?;
        }
        header.flags |= FLAG_SPARSE;
        self.store_header(state, header)?;
        self.sync_backing(true)
    }
}

/// Copies the part of the fill range [offset, end) that falls in the block
/// starting at `block_start` into `plain`.
fn overlay(plain: &mut [u8], block_start: u64, offset: u64, end: u64, fill: Fill) {
    let block_end = block_start + plain.len() as u64;
    let from = offset.max(block_start);
    let to = end.min(block_end);
    if from >= to {
        return;
    }
    let target = &mut plain[(from - block_start) as usize..(to - block_start) as usize];
    match fill {
        Fill::Bytes(data) => {
            target.copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize])
        }
        Fill::Zeros => target.fill(0),
    }
}

#[cfg(test)]
#[allow(
    clippy::single_range_in_vec_init,
    reason = "plans are lists of block ranges; one range is a list of one"
)]
mod tests {
    use super::*;

    const B: u64 = BLOCK_SIZE;

    // Protects: which blocks a change seals. An append re-seals the old
    // last block (it stops being last); a far write or truncate leaves a
    // hole instead of sealing every block in between.
    #[test]
    fn plans() {
        // Overwrite inside the file: just the touched blocks.
        assert_eq!(
            plan(10 * B, 3 * B + 5, 4 * B + 1, false),
            Plan {
                runs: vec![3..5],
                holes: false
            }
        );
        // Append across a block boundary: old last block and the new one.
        assert_eq!(
            plan(2 * B, 2 * B, 2 * B + 10, false),
            Plan {
                runs: vec![1..3],
                holes: false
            }
        );
        // A small gap is filled.
        assert_eq!(
            plan(B, 10 * B, 10 * B + 1, false),
            Plan {
                runs: vec![0..11],
                holes: false
            }
        );
        // A large gap is a hole.
        let far = (GAP_FILL_BLOCKS + 10) * B;
        assert_eq!(
            plan(B, far, far + 1, false),
            Plan {
                runs: vec![0..1, GAP_FILL_BLOCKS + 10..GAP_FILL_BLOCKS + 11],
                holes: true
            }
        );
        // Growing by truncate to 1 PiB from empty: one block sealed.
        let pib = 1u64 << 50;
        assert_eq!(
            plan(0, 0, pib, true),
            Plan {
                runs: vec![pib / B - 1..pib / B],
                holes: true
            }
        );
        // Zeroing inside the file rewrites what it covers.
        assert_eq!(
            plan(10 * B, B, 3 * B, true),
            Plan {
                runs: vec![1..3],
                holes: false
            }
        );
    }

    #[test]
    fn uncovered_parts() {
        assert_eq!(uncovered(&[2..4, 6..7], 0..10), vec![0..2, 4..6, 7..10]);
        assert_eq!(uncovered(&[0..10], 0..10), Vec::<Range<u64>>::new());
        assert_eq!(merge(vec![5..6, 1..3, 3..4, 2..3]), vec![1..4, 5..6]);
    }
}
