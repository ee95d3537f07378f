//! Reading, opening and sealing blocks.

use std::cell::RefCell;
use std::os::unix::fs::FileExt;

use super::keys::ContentKeys;
use super::{EncryptedFile, Header};
use crate::cipher;
use crate::error::{IoContext, Result};
use crate::layout::{
    self, block_aad, block_offset, Malformed, BLOCK_OVERHEAD, BLOCK_SIZE, CIPHER_BLOCK_SIZE,
    KEY_ID_LEN,
};

thread_local! {
    /// Per-thread scratch for ciphertext, so steady-state I/O allocates nothing.
    pub(super) static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The first `len` bytes of `buf`, grown to hold them. Never shrunk: what
/// it held before is overwritten by the caller, and zeroing the bytes that
/// a shorter use left behind again at each use would cost a `memset` of
/// every read.
fn at_least(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        buf.resize(len, 0);
    }
    &mut buf[..len]
}

/// What a stored block turned out to be.
pub(super) enum Opened<'b> {
    Plain(&'b [u8]),
    /// All zeros in a file that may hold holes: reads as zeros.
    Hole,
}

impl EncryptedFile {
    /// Reads plaintext at `offset` into `buf`; returns the bytes read, which
    /// is less than `buf.len()` only at end of file. A block that fails
    /// authentication is an error, never data.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::Result<usize> {
        let state = self.state()?;
        let header = self.valid_header(&state)?;
        let cipher_len = self.cipher_len()?;
        // A cut fragment behind the last whole block: the whole blocks read
        // as blocks that are not the end, and a read that reaches the
        // fragment fails there (the reported size includes one byte of it).
        let (size, cut) = match layout::plaintext_size(cipher_len) {
            Ok(size) => (size, None),
            Err(Malformed::TornHeader) => return Err(self.header_error(&state.header)),
            Err(Malformed::CutBlock(block)) => (block * BLOCK_SIZE, Some(block)),
        };
        if header.has_blocks() != (size > 0 || cut.is_some()) && !buf.is_empty() {
            return Err(self.auth_failed(0));
        }
        if let Some(block) = cut {
            if offset.saturating_add(buf.len() as u64) > size && !buf.is_empty() {
                return Err(self.auth_failed(block));
            }
        }
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let Some(keys) = state.keys.as_ref() else {
            return Err(self.auth_failed(0));
        };
        let end = size.min(offset + buf.len() as u64);
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        // With a cut fragment, no whole block is the end.
        let final_block = match cut {
            Some(_) => u64::MAX,
            None => layout::block_count(size) - 1,
        };
        SCRATCH.with_borrow_mut(|scratch| {
            let want = (block_offset(last + 1).min(cipher_len) - block_offset(first)) as usize;
            let scratch = at_least(scratch, want);
            // All of it or an error: a short read would leave an earlier
            // read's bytes in the scratch (`at_least`).
            self.file
                .read_exact_at(scratch, block_offset(first))
                .context(|| format!("reading {}", self.backing_path().display()))?;
            let mut copied = 0usize;
            for (i, chunk) in scratch.chunks_mut(CIPHER_BLOCK_SIZE as usize).enumerate() {
                let index = first + i as u64;
                let block_start = index * BLOCK_SIZE;
                let from = (offset.max(block_start) - block_start) as usize;
                let to = (end - block_start).min(BLOCK_SIZE) as usize;
                let target = &mut buf[copied..copied + (to - from)];
                let is_last = index == final_block;
                // Behind a cut fragment no block may read as a hole.
                let sparse = header.sparse() && cut.is_none();
                match self.open_block(keys, sparse, index, is_last, chunk)? {
                    Opened::Plain(plain) => target.copy_from_slice(&plain[from..to]),
                    Opened::Hole => target.fill(0),
                }
                copied += to - from;
            }
            Ok(copied)
        })
    }

    /// Decrypts block `index` (holding `len` plaintext bytes; `is_last` if
    /// the file ends with it) into `plain`.
    pub(super) fn read_block(
        &self,
        keys: &ContentKeys,
        sparse: bool,
        index: u64,
        len: u64,
        is_last: bool,
        plain: &mut [u8],
    ) -> Result<()> {
        let mut buffer = [0u8; CIPHER_BLOCK_SIZE as usize];
        let sealed = &mut buffer[..(len + BLOCK_OVERHEAD) as usize];
        self.file
            .read_exact_at(sealed, block_offset(index))
            .context(|| format!("reading {}", self.backing_path().display()))?;
        match self.open_block(keys, sparse, index, is_last, sealed)? {
            Opened::Plain(opened) => plain[..opened.len()].copy_from_slice(opened),
            Opened::Hole => plain[..len as usize].fill(0),
        }
        Ok(())
    }

    /// Authenticates and decrypts one stored block in place.
    pub(super) fn open_block<'b>(
        &self,
        keys: &ContentKeys,
        sparse: bool,
        index: u64,
        is_last: bool,
        stored: &'b mut [u8],
    ) -> Result<Opened<'b>> {
        // The last block is always sealed; any other all-zero block is a
        // hole if the file may hold holes, and a forgery otherwise.
        if !is_last && sparse && is_zero(stored) {
            return Ok(Opened::Hole);
        }
        try_open(&self.crypto, keys, index, is_last, stored)
            .map(Opened::Plain)
            .ok_or_else(|| self.auth_failed(index))
    }

    /// Appends block `index` (`is_last` if the file ends with it), sealed
    /// under the file's current key, to `out`.
    pub(super) fn seal_block(
        &self,
        keys: &mut ContentKeys,
        index: u64,
        is_last: bool,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) {
        let (key_id, aead) = keys.sealer(&self.crypto);
        out.extend_from_slice(&key_id);
        let aad = block_aad(&keys.content_id, index, is_last);
        cipher::seal_framed(&*aead, &aad, plain, out);
    }

    /// The reason a missing or damaged header cannot be used.
    pub(super) fn header_error(&self, header: &Header) -> crate::VolumeError {
        let reason = match header {
            Header::Damaged(reason) => reason.clone(),
            Header::Missing => {
                "the header is missing: the file was cut to 0 bytes or not made by chronicle".into()
            }
            Header::Valid(_) => "the header does not match the file".into(),
        };
        crate::VolumeError::BadFileHeader {
            file: self.backing_path(),
            reason,
        }
    }

    /// Whether the file is unusable as a whole (its header missing, damaged,
    /// or contradicted by its length), so that opening it can fail at once.
    pub fn damage(&self) -> Option<crate::VolumeError> {
        let state = self.state_keeping_held();
        self.checked_size(&state).err()
    }
}

/// Opens `stored` (key id ‖ nonce ‖ ciphertext ‖ tag) as block `index`.
pub(super) fn try_open<'b>(
    crypto: &super::ContentCrypto,
    keys: &ContentKeys,
    index: u64,
    is_last: bool,
    stored: &'b mut [u8],
) -> Option<&'b [u8]> {
    if stored.len() as u64 <= BLOCK_OVERHEAD {
        return None;
    }
    let (key_id, framed) = stored.split_at_mut(KEY_ID_LEN);
    let key_id: &[u8; KEY_ID_LEN] = (&*key_id).try_into().ok()?;
    let aead = keys.opener(crypto, key_id);
    let aad = block_aad(&keys.content_id, index, is_last);
    cipher::open_framed(&*aead, &aad, framed).ok()
}

pub(super) fn is_zero(bytes: &[u8]) -> bool {
    // A sealed block starts with a random key id, so this stops at its first
    // bytes; only real holes are scanned to the end.
    bytes.iter().all(|&b| b == 0)
}
