//! Checking a whole file (`fsck`) and repairing what a crash leaves at its
//! end (`fsck --repair`).
//!
//! The crash model: the mount writes each file's blocks in ascending order,
//! header first when it changes, and cuts the backing file only after the
//! new last block is sealed. A crash (of the mount, or of the machine with
//! writes reaching the disk in that order) therefore damages only the end:
//! the last write may be short, an extension may stop after the old last
//! block was re-sealed, and a shrink may stop before the cut. Damage with
//! authentic blocks after it is not explained by a crash; repair leaves it
//! alone and reports it.

use std::os::unix::fs::FileExt;

use super::blocks::{is_zero, try_open};
use super::{EncryptedFile, Header, State};
use crate::error::{IoContext, Result, VolumeError};
use crate::layout::{
    self, block_offset, Malformed, BLOCK_OVERHEAD, BLOCK_SIZE, CIPHER_BLOCK_SIZE, HEADER_LEN,
};

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
    /// Opens as the file's last block with this many plaintext bytes.
    Last(u64),
    Bad,
}

impl EncryptedFile {
    /// Authenticates every block, calling `bad` with the error of each one
    /// that fails (and of a damaged header or tail); returns the blocks
    /// checked. Holes in a sparse file are skipped without reading them.
    /// Other errors (I/O) stop the check.
    pub fn verify_each(&self, mut bad: impl FnMut(VolumeError)) -> Result<u64> {
        let state = self.state();
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
            if let Err(e) = self.open_block(keys, header.sparse(), index, is_last, slot) {
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
        let mut state = self.state_mut();
        let cipher_len = self.cipher_len()?;
        let header = match &state.header {
            Header::Valid(header) => *header,
            Header::Missing => {
                self.reset_to_empty(&mut state)?;
                return Ok(repaired("the header was never written; now empty", 0));
            }
            Header::Damaged(_) if cipher_len < HEADER_LEN as u64 => {
                self.reset_to_empty(&mut state)?;
                return Ok(repaired("the header was torn; now empty", 0));
            }
            Header::Damaged(reason) => {
                return Ok(TailRepair::NotACrash {
                    reason: reason.clone(),
                })
            }
        };
        if !header.has_blocks() || cipher_len == HEADER_LEN as u64 {
            if cipher_len == HEADER_LEN as u64 && !header.has_blocks() {
                return Ok(TailRepair::Clean);
            }
            self.reset_to_empty(&mut state)?;
            return Ok(repaired(
                "an interrupted emptying or first write; now empty",
                0,
            ));
        }
        let mut slots = self.classify_slots(&state, header.sparse(), cipher_len)?;
        if let Some(first_bad) = slots.iter().position(|s| *s == Slot::Bad) {
            if let Some(plain) = self.last_block_inside(&state, first_bad as u64)? {
                slots[first_bad] = Slot::Last(plain);
            }
        }
        self.repair_slots(&mut state, &slots, cipher_len)
    }

    /// How each stored block opens, in order.
    fn classify_slots(&self, state: &State, sparse: bool, cipher_len: u64) -> Result<Vec<Slot>> {
        let Some(keys) = state.keys.as_ref() else {
            return Ok(Vec::new());
        };
        let count = (cipher_len - HEADER_LEN as u64).div_ceil(CIPHER_BLOCK_SIZE);
        let mut slots = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut stored = vec![0u8; CIPHER_BLOCK_SIZE as usize];
        for index in 0..count {
            let buf = self.read_slot(index, cipher_len, &mut stored)?;
            let slot = if index + 1 < count && sparse && is_zero(buf) {
                Slot::Hole
            } else if try_open(&self.crypto, keys, index, false, &mut buf.to_vec()).is_some() {
                Slot::NotLast
            } else if try_open(&self.crypto, keys, index, true, buf).is_some() {
                Slot::Last(buf.len() as u64 - BLOCK_OVERHEAD)
            } else {
                Slot::Bad
            };
            slots.push(slot);
        }
        Ok(slots)
    }

    /// Stored block `index` (shorter at the end of the file) into `buf`.
    fn read_slot<'b>(
        &self,
        index: u64,
        cipher_len: u64,
        buf: &'b mut [u8],
    ) -> Result<&'b mut [u8]> {
        let len = (cipher_len.min(block_offset(index + 1)) - block_offset(index)) as usize;
        let slot = &mut buf[..len];
        self.file
            .read_exact_at(slot, block_offset(index))
            .context(|| format!("reading {}", self.backing_path().display()))?;
        Ok(slot)
    }

    /// A shrink that stopped before its cut leaves the new last block at
    /// the front of a longer slot: its plaintext length, found by trying
    /// each one (only for the one slot where the damage starts).
    fn last_block_inside(&self, state: &State, index: u64) -> Result<Option<u64>> {
        let Some(keys) = state.keys.as_ref() else {
            return Ok(None);
        };
        let mut stored = vec![0u8; CIPHER_BLOCK_SIZE as usize];
        let buf = self.read_slot(index, self.cipher_len()?, &mut stored)?;
        let longest = (buf.len() as u64).saturating_sub(BLOCK_OVERHEAD);
        Ok((1..=longest).rev().find(|&plain| {
            let mut copy = buf[..(plain + BLOCK_OVERHEAD) as usize].to_vec();
            try_open(&self.crypto, keys, index, true, &mut copy).is_some()
        }))
    }

    fn repair_slots(
        &self,
        state: &mut State,
        slots: &[Slot],
        cipher_len: u64,
    ) -> Result<TailRepair> {
        let end = slots
            .iter()
            .position(|s| matches!(s, Slot::Last(_) | Slot::Bad));
        let Some(end) = end else {
            // Every block authentic and none the last: an extension stopped
            // at a block boundary. The last one becomes the end again.
            return self.reseal_as_last(state, slots.len() as u64, "an interrupted extension");
        };
        match slots[end] {
            Slot::Last(plain) => {
                let cut = block_offset(end as u64) + plain + BLOCK_OVERHEAD;
                if cut == self.cipher_len()? {
                    return Ok(TailRepair::Clean);
                }
                self.truncate_backing(cut)?;
                self.sync(false)?;
                let size = end as u64 * BLOCK_SIZE + plain;
                Ok(repaired(
                    "stale blocks behind the last block (an interrupted shrink)",
                    size,
                ))
            }
            _ => {
                let later_authentic = slots[end + 1..]
                    .iter()
                    .any(|s| matches!(s, Slot::NotLast | Slot::Last(_)));
                if later_authentic {
                    return Ok(TailRepair::NotACrash {
                        reason: format!(
                            "block {end} fails authentication but later blocks are intact"
                        ),
                    });
                }
                // A write cut short leaves its last block short; a whole
                // block that fails was changed, not torn by a short write.
                let is_final_slot = end + 1 == slots.len();
                let stored = cipher_len.saturating_sub(block_offset(end as u64));
                if !is_final_slot || stored >= CIPHER_BLOCK_SIZE {
                    return Ok(TailRepair::NotACrash {
                        reason: format!(
                            "block {end} fails authentication at its full length, which a short write does not leave"
                        ),
                    });
                }
                if end == 0 {
                    self.reset_to_empty(state)?;
                    return Ok(repaired("the first block was torn; now empty", 0));
                }
                self.reseal_as_last(state, end as u64, "a torn write at the end")
            }
        }
    }

    /// Keeps the first `blocks` whole blocks, re-sealing the last of them as
    /// the file's end, and cuts everything after.
    fn reseal_as_last(&self, state: &mut State, blocks: u64, what: &str) -> Result<TailRepair> {
        let sparse = self.valid_header(state)?.sparse();
        let index = blocks - 1;
        let keys = self.keys_for_writing(state)?;
        let mut plain = [0u8; BLOCK_SIZE as usize];
        self.read_block(keys, sparse, index, BLOCK_SIZE, false, &mut plain)?;
        let mut sealed = Vec::with_capacity(CIPHER_BLOCK_SIZE as usize);
        self.seal_block(keys, index, true, &plain, &mut sealed);
        self.file
            .write_all_at(&sealed, block_offset(index))
            .context(|| format!("writing {}", self.backing_path().display()))?;
        self.truncate_backing(block_offset(blocks))?;
        self.sync(false)?;
        Ok(repaired(what, blocks * BLOCK_SIZE))
    }
}

fn repaired(what: &str, size: u64) -> TailRepair {
    TailRepair::Repaired {
        what: what.to_string(),
        size,
    }
}
