//! Checking a whole file (`fsck`) and repairing what a crash leaves at its
//! end (`fsck --repair`).
//!
//! The crash model: the mount writes each file's blocks in ascending order,
//! header first when it changes, and cuts the backing file only after the
//! new last block is sealed, with the size it cuts to recorded in the header
//! while it does. A crash (of the mount, or of the machine with writes
//! reaching the disk in that order, or with a file's new size reaching it
//! before its data) therefore damages only the end: the last write may be
//! short, trailing blocks may be all zeros, an extension may stop after the
//! old last block was re-sealed, a shrink may stop before its cut. No single
//! operation writes more than `TAIL_WINDOW` blocks past the old end, so
//! repair looks at that many and no further. Damage with authentic blocks
//! after it, damage longer than the window, a whole block that fails with
//! data in it, or an end sealed early with authentic blocks behind it and no
//! shrink recorded: none of these is what a crash leaves, and repair reports
//! them and changes nothing.

use std::os::unix::fs::FileExt;

use super::blocks::{is_zero, try_open};
use super::{EncryptedFile, Header, State};
use crate::error::{IoContext, Result, VolumeError};
use crate::layout::{
    self, block_offset, FileHeader, Malformed, BLOCK_OVERHEAD, BLOCK_SIZE, CIPHER_BLOCK_SIZE,
    HEADER_LEN,
};

/// Blocks at the end of a file that repair examines: more than any one
/// operation writes past the old end (a 1 MiB write, a 1 MiB gap filled
/// with zeros, the old and new last blocks).
const TAIL_WINDOW: u64 = 1024;

/// What `repair_tail` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailRepair {
    /// Nothing to repair.
    Clean,
    /// A crash's damage was cut away; `size` plaintext bytes remain.
    Repaired { what: String, size: u64 },
    /// Damage that a crash does not leave: nothing was changed.
    NotACrash { reason: String },
}

/// How one stored block opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Hole,
    NotLast,
    /// Opens as the file's last block, at its stored length.
    Last,
    /// All zeros where no hole is allowed: written size, unwritten data.
    Zeros,
    Bad,
}

impl EncryptedFile {
    /// Authenticates every block, calling `bad` with the error of each one
    /// that fails (and of a damaged header or tail); returns the blocks
    /// checked. Holes in a sparse file are skipped without reading them.
    /// Other errors (I/O) stop the check.
    pub fn verify_each(&self, mut bad: impl FnMut(VolumeError)) -> Result<u64> {
        let state = self.state()?;
        let header = match &state.header {
            Header::Valid(header) => *header,
            other => {
                bad(self.header_error(other));
                return Ok(0);
            }
        };
        let cipher_len = self.cipher_len()?;
        let (size, cut) = match layout::plaintext_size(cipher_len) {
            Ok(size) => (size, None),
            Err(Malformed::TornHeader) => (0, None),
            Err(Malformed::CutBlock(block)) => (block * BLOCK_SIZE, Some(block)),
        };
        if header.has_blocks() != (size > 0 || cut.is_some()) {
            bad(self.auth_failed(0));
            return Ok(0);
        }
        let Some(keys) = state.keys.as_ref() else {
            return Ok(0);
        };
        let blocks = layout::block_count(size);
        let mut checked = 0;
        let mut stored = vec![0u8; CIPHER_BLOCK_SIZE as usize];
        let mut index = 0;
        while index < blocks {
            if header.sparse() {
                match self.next_data_block(index)? {
                    Some(next) if next < blocks => index = next,
                    // The last block always holds data; nothing else does.
                    _ => index = blocks - 1,
                }
            }
            let len = (layout::ciphertext_size(size).min(block_offset(index + 1))
                - block_offset(index)) as usize;
            let slot = &mut stored[..len];
            self.file
                .read_exact_at(slot, block_offset(index))
                .context(|| format!("reading {}", self.backing_path().display()))?;
            // With a cut fragment behind them, no whole block is the end.
            let is_last = index == blocks - 1 && cut.is_none();
            // Behind a cut fragment no block may read as a hole: the cut
            // could otherwise turn zeroed blocks into plausible holes.
            let sparse = header.sparse() && cut.is_none();
            if let Err(e) = self.open_block(keys, sparse, index, is_last, slot) {
                bad(e);
            }
            checked += 1;
            index += 1;
        }
        if let Some(block) = cut {
            bad(self.auth_failed(block));
        }
        Ok(checked)
    }

    /// Repairs the damage a crash leaves at the end of a file (see the
    /// module comment) and nothing else.
    pub fn repair_tail(&self) -> Result<TailRepair> {
        let mut state = self.state_mut()?;
        self.repair_tail_locked(&mut state)
    }

    pub(super) fn repair_tail_locked(&self, state: &mut State) -> Result<TailRepair> {
        let cipher_len = self.cipher_len()?;
        let header = match &state.header {
            Header::Valid(header) => *header,
            Header::Missing => {
                self.reset_to_empty(state)?;
                return Ok(repaired("the header was never written; now empty", 0));
            }
            Header::Damaged(_) if cipher_len < HEADER_LEN as u64 => {
                self.reset_to_empty(state)?;
                return Ok(repaired("the header was torn; now empty", 0));
            }
            // A new file whose size reached the disk before its header did:
            // nothing in it was ever synced (a sync writes the header
            // first), and a header is only ever rewritten whole in its
            // first sector, never zeroed.
            Header::Damaged(_) if self.header_is_zeros()? => {
                self.reset_to_empty(state)?;
                return Ok(repaired("the header never reached the disk; now empty", 0));
            }
            Header::Damaged(reason) => {
                return Ok(not_a_crash(reason.clone()));
            }
        };
        if header.pending_size != 0 {
            return self.finish_shrink(state, header, cipher_len);
        }
        if !header.has_blocks() || cipher_len == HEADER_LEN as u64 {
            if cipher_len == HEADER_LEN as u64 && !header.has_blocks() {
                return Ok(TailRepair::Clean);
            }
            self.reset_to_empty(state)?;
            return Ok(repaired(
                "an interrupted emptying or first write; now empty",
                0,
            ));
        }
        let count = (cipher_len - HEADER_LEN as u64).div_ceil(CIPHER_BLOCK_SIZE);
        let first = count.saturating_sub(TAIL_WINDOW);
        let slots = self.classify_slots(state, header.sparse(), cipher_len, first..count)?;
        self.repair_window(state, first, &slots, cipher_len)
    }

    fn header_is_zeros(&self) -> Result<bool> {
        let mut bytes = [0u8; HEADER_LEN];
        self.file
            .read_exact_at(&mut bytes, 0)
            .context(|| format!("reading {}", self.backing_path().display()))?;
        Ok(is_zero(&bytes))
    }

    /// How each stored block of `range` opens, in order.
    fn classify_slots(
        &self,
        state: &State,
        sparse: bool,
        cipher_len: u64,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<Slot>> {
        let Some(keys) = state.keys.as_ref() else {
            return Ok(Vec::new());
        };
        let last = range.end.saturating_sub(1);
        let mut slots = Vec::with_capacity((range.end - range.start) as usize);
        let mut stored = vec![0u8; CIPHER_BLOCK_SIZE as usize];
        for index in range {
            let buf = self.read_slot(index, cipher_len, &mut stored)?;
            let slot = if is_zero(buf) {
                if index < last && sparse {
                    Slot::Hole
                } else {
                    Slot::Zeros
                }
            } else if try_open(&self.crypto, keys, index, false, &mut buf.to_vec()).is_some() {
                Slot::NotLast
            } else if try_open(&self.crypto, keys, index, true, buf).is_some() {
                Slot::Last
            } else {
                Slot::Bad
            };
            slots.push(slot);
        }
        Ok(slots)
    }

    /// Stored block `index` (shorter at the end of the file) into `buf`.
    pub(super) fn read_slot<'b>(
        &self,
        index: u64,
        cipher_len: u64,
        buf: &'b mut [u8],
    ) -> Result<&'b mut [u8]> {
        let end = cipher_len.min(block_offset(index + 1));
        let len = end.saturating_sub(block_offset(index)) as usize;
        let slot = &mut buf[..len];
        self.file
            .read_exact_at(slot, block_offset(index))
            .context(|| format!("reading {}", self.backing_path().display()))?;
        Ok(slot)
    }

    /// Decides on the last `slots` of the file (the first of them is block
    /// `first`).
    fn repair_window(
        &self,
        state: &mut State,
        first: u64,
        slots: &[Slot],
        cipher_len: u64,
    ) -> Result<TailRepair> {
        let count = first + slots.len() as u64;
        let at = |index: u64| slots[(index - first) as usize];
        let authentic_after =
            |index: u64| (index + 1..count).any(|i| matches!(at(i), Slot::NotLast | Slot::Last));
        let Some(end) =
            (first..count).find(|&i| matches!(at(i), Slot::Last | Slot::Bad | Slot::Zeros))
        else {
            // Every block authentic and none the last: an extension stopped
            // at a block boundary. The last one becomes the end again.
            return self.reseal_as_last(state, count, "an interrupted extension");
        };
        if at(end) == Slot::Last {
            if end + 1 == count {
                return Ok(TailRepair::Clean);
            }
            if authentic_after(end) {
                return Ok(not_a_crash(format!(
                    "block {end} is sealed as the end but authentic blocks follow it, and no shrink was under way"
                )));
            }
            // The old end, with an extension's unfinished blocks behind it.
            let cut =
                block_offset(end) + (cipher_len.min(block_offset(end + 1)) - block_offset(end));
            self.truncate_backing(cut)?;
            self.sync_backing(false)?;
            let size = layout::plaintext_size_lossy(cut);
            return Ok(repaired("an interrupted extension", size));
        }
        if end == first && first > 0 {
            return Ok(not_a_crash(format!(
                "damage from block {end} on is longer than any one write"
            )));
        }
        if authentic_after(end) {
            return Ok(not_a_crash(format!(
                "block {end} fails authentication but later blocks are intact"
            )));
        }
        // A short write leaves a short last block; a size that reached the
        // disk before its data leaves zeros. A whole block with data that
        // fails was changed, not cut short.
        let short_or_zero = (end..count).all(|i| {
            let stored = cipher_len.min(block_offset(i + 1)) - block_offset(i);
            at(i) == Slot::Zeros || (i + 1 == count && stored < CIPHER_BLOCK_SIZE)
        });
        if !short_or_zero {
            return Ok(not_a_crash(format!(
                "block {end} fails authentication at its full length, which a short write does not leave"
            )));
        }
        if end == 0 {
            self.reset_to_empty(state)?;
            return Ok(repaired("the first block was torn; now empty", 0));
        }
        if at(end - 1) != Slot::NotLast {
            return Ok(not_a_crash(format!(
                "block {} before the damage is not a block that can end the file",
                end - 1
            )));
        }
        self.reseal_as_last(state, end, "a torn write at the end")
    }

    /// A shrink was under way: complete it if its new last block was
    /// written, or drop it if not; either way the size is one the program
    /// could have seen.
    fn finish_shrink(
        &self,
        state: &mut State,
        mut header: FileHeader,
        cipher_len: u64,
    ) -> Result<TailRepair> {
        let target = header.pending_size;
        let index = (target - 1) / BLOCK_SIZE;
        let keep = target - index * BLOCK_SIZE;
        let written = match state.keys.as_ref() {
            Some(keys) if block_offset(index) + keep + BLOCK_OVERHEAD <= cipher_len => {
                let mut stored = vec![0u8; (keep + BLOCK_OVERHEAD) as usize];
                self.file
                    .read_exact_at(&mut stored, block_offset(index))
                    .context(|| format!("reading {}", self.backing_path().display()))?;
                try_open(&self.crypto, keys, index, true, &mut stored).is_some()
            }
            _ => false,
        };
        header.pending_size = 0;
        if written {
            self.truncate_backing(layout::ciphertext_size(target))?;
            self.store_header(state, header)?;
            self.sync_backing(false)?;
            return Ok(repaired("an interrupted shrink, completed", target));
        }
        self.store_header(state, header)?;
        self.sync_backing(false)?;
        match layout::plaintext_size(cipher_len) {
            Ok(size) => Ok(repaired(
                "an interrupted shrink that had not begun; dropped",
                size,
            )),
            Err(_) => Ok(not_a_crash(
                "the block an interrupted shrink was rewriting is torn".to_string(),
            )),
        }
    }

    /// Keeps the first `blocks` whole blocks, re-sealing the last of them as
    /// the file's end, and cuts everything after.
    fn reseal_as_last(&self, state: &mut State, blocks: u64, what: &str) -> Result<TailRepair> {
        let sparse = self.valid_header(state)?.sparse();
        let index = blocks - 1;
        let keys = self.keys_for_writing(state)?;
        let mut stored = vec![0u8; CIPHER_BLOCK_SIZE as usize];
        self.file
            .read_exact_at(&mut stored, block_offset(index))
            .context(|| format!("reading {}", self.backing_path().display()))?;
        // A hole must never become the end: the end is always sealed data.
        if sparse && is_zero(&stored) {
            return Ok(not_a_crash(format!(
                "block {index} would end the file but is a hole"
            )));
        }
        let mut plain = [0u8; BLOCK_SIZE as usize];
        self.read_block(keys, false, index, BLOCK_SIZE, false, &mut plain)?;
        let mut sealed = Vec::with_capacity(CIPHER_BLOCK_SIZE as usize);
        self.seal_block(keys, index, true, &plain, &mut sealed);
        self.write_stored(index, &sealed)?;
        self.truncate_backing(block_offset(blocks))?;
        self.sync_backing(false)?;
        Ok(repaired(what, blocks * BLOCK_SIZE))
    }
}

fn repaired(what: &str, size: u64) -> TailRepair {
    TailRepair::Repaired {
        what: what.to_string(),
        size,
    }
}

fn not_a_crash(reason: String) -> TailRepair {
    TailRepair::NotACrash { reason }
}
