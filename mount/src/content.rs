//! Random access to the plaintext of one encrypted backing file.
//!
//! Locking: each `EncryptedFile` holds one reader-writer lock. Reads take it
//! shared, so parallel readers proceed; writes, truncates and extensions take
//! it exclusive, so a read-modify-write of a partial block never interleaves
//! with another writer and no update is lost. Callers that open the same
//! backing file more than once must share one `EncryptedFile` (the FUSE front
//! end keeps one per inode); two instances over one file would each lock only
//! themselves.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rand::RngCore;

use crate::cipher::{Aead, Backend, NONCE_LEN, TAG_LEN};
use crate::error::{IoContext, Result, VolumeError};
use crate::keys::SecretKey;
use crate::layout::{
    self, block_aad, block_offset, FileHeader, Malformed, BLOCK_OVERHEAD, BLOCK_SIZE,
    CIPHER_BLOCK_SIZE, FILE_ID_LEN, HEADER_LEN,
};

/// Blocks sealed per `pwrite` when writing long ranges (1 MiB of plaintext):
/// bounds memory for huge extensions while keeping system calls large.
const BLOCKS_PER_BATCH: u64 = 256;

/// The volume-wide part of content encryption: the master key and the AES-GCM
/// implementation. Per-file keys are derived from it.
pub struct ContentCrypto {
    master: SecretKey,
    backend: Backend,
}

impl ContentCrypto {
    pub fn new(master: SecretKey, backend: Backend) -> Self {
        ContentCrypto { master, backend }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A cipher for a volume-wide purpose other than file contents
    /// (extended attributes, names), keyed by HKDF of the master key.
    pub fn derive_aead(&self, purpose: &[u8]) -> Box<dyn Aead> {
        let key = self.master.derive(&[purpose]);
        self.backend.new_key(key.as_bytes())
    }

    pub(crate) fn master(&self) -> &SecretKey {
        &self.master
    }

    /// The cipher for one file: AES-256-GCM keyed with
    /// HKDF-SHA256(master, info = "chronicle content v1" || file id).
    /// A key per file keeps the number of random nonces per key far below
    /// the 2^32 that NIST SP 800-38D allows (see docs/FORMAT.md).
    fn file_cipher(&self, file_id: &[u8; FILE_ID_LEN]) -> Box<dyn Aead> {
        let key = self.master.derive(&[b"chronicle content v1", file_id]);
        self.backend.new_key(key.as_bytes())
    }
}

/// What a range of plaintext is overwritten with.
#[derive(Clone, Copy)]
enum Fill<'a> {
    Bytes(&'a [u8]),
    Zeros,
}

struct Keyed {
    file_id: [u8; FILE_ID_LEN],
    aead: Box<dyn Aead>,
}

/// One encrypted backing file, read and written as plaintext.
pub struct EncryptedFile {
    file: File,
    crypto: Arc<ContentCrypto>,
    /// `None` while the file is empty (an empty file has no header).
    state: RwLock<Option<Keyed>>,
    /// Shown in errors when the file's current path cannot be found.
    label: PathBuf,
}

thread_local! {
    /// Per-thread scratch for ciphertext, so steady-state I/O allocates nothing.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl EncryptedFile {
    /// Wraps an open backing file (opened for reading, and for writing if
    /// writes will follow). Reads and checks the header of a non-empty file.
    pub fn open(file: File, crypto: Arc<ContentCrypto>, label: PathBuf) -> Result<Self> {
        let this = EncryptedFile {
            file,
            crypto,
            state: RwLock::new(None),
            label,
        };
        let keyed = this.load_header()?;
        *this.state_mut() = keyed;
        Ok(this)
    }

    /// The backing file, e.g. for `fsync` or `fstat`.
    pub fn backing(&self) -> &File {
        &self.file
    }

    /// The path of the backing file now (it follows renames), for messages.
    pub fn backing_path(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            .unwrap_or_else(|_| self.label.clone())
    }

    /// Plaintext length, from the ciphertext length alone.
    pub fn len(&self) -> Result<u64> {
        let _shared = self.state();
        Ok(layout::plaintext_size_lossy(self.cipher_len()?))
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads plaintext at `offset` into `buf`; returns the bytes read, which
    /// is less than `buf.len()` only at end of file. A block that fails
    /// authentication is an error, never data.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let state = self.state();
        let cipher_len = self.cipher_len()?;
        let size = match layout::plaintext_size(cipher_len) {
            Ok(size) => size,
            Err(Malformed::TornHeader) => return Err(self.torn_header()),
            Err(Malformed::CutBlock(block)) => {
                // Readable up to the cut; the cut block itself is an error.
                let end = offset.saturating_add(buf.len() as u64);
                if end > block * BLOCK_SIZE && !buf.is_empty() {
                    return Err(self.auth_failed(block));
                }
                block * BLOCK_SIZE
            }
        };
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let Some(keyed) = state.as_ref() else {
            return Err(self.torn_header());
        };
        let end = size.min(offset + buf.len() as u64);
        let first = offset / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        SCRATCH.with_borrow_mut(|scratch| {
            let want = (block_offset(last + 1).min(cipher_len) - block_offset(first)) as usize;
            scratch.resize(want, 0);
            self.file
                .read_exact_at(scratch, block_offset(first))
                .context(|| format!("reading {}", self.backing_path().display()))?;
            let mut copied = 0usize;
            for (i, chunk) in scratch.chunks_mut(CIPHER_BLOCK_SIZE as usize).enumerate() {
                let index = first + i as u64;
                let plain = self.open_block(keyed, index, chunk)?;
                let block_start = index * BLOCK_SIZE;
                let from = offset.max(block_start) - block_start;
                let to = (end - block_start).min(plain.len() as u64);
                let piece = &plain[from as usize..to as usize];
                buf[copied..copied + piece.len()].copy_from_slice(piece);
                copied += piece.len();
            }
            Ok(copied)
        })
    }

    /// Writes `data` at `offset`, extending the file (with zeros between the
    /// old end and `offset`) when needed.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut state = self.state_mut();
        self.rewrite(&mut state, offset, data.len() as u64, Fill::Bytes(data))
    }

    /// Overwrites `len` bytes at `offset` with zeros (a punched hole reads as
    /// zeros; the blocks stay allocated and authenticated).
    pub fn write_zeros(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let mut state = self.state_mut();
        self.rewrite(&mut state, offset, len, Fill::Zeros)
    }

    /// Sets the plaintext length. Shrinking re-encrypts the new last block;
    /// growing appends encrypted zeros.
    pub fn set_len(&self, new_size: u64) -> Result<()> {
        let mut state = self.state_mut();
        let size = self.checked_size()?;
        if new_size == size {
            return Ok(());
        }
        if new_size > size {
            return self.rewrite(&mut state, size, new_size - size, Fill::Zeros);
        }
        if new_size == 0 {
            // An empty file has no header: the next write picks a new file id.
            *state = None;
            return self.truncate_backing(0);
        }
        let keyed = state.as_ref().ok_or_else(|| self.torn_header())?;
        let index = new_size / BLOCK_SIZE;
        let keep = new_size % BLOCK_SIZE;
        if keep != 0 {
            let old_len = (size - index * BLOCK_SIZE).min(BLOCK_SIZE);
            let mut plain = [0u8; BLOCK_SIZE as usize];
            self.read_block(keyed, index, old_len, &mut plain)?;
            let mut sealed = Vec::with_capacity(CIPHER_BLOCK_SIZE as usize);
            self.seal_block(keyed, index, &plain[..keep as usize], &mut sealed)?;
            self.file
                .write_all_at(&sealed, block_offset(index))
                .context(|| format!("writing {}", self.backing_path().display()))?;
        }
        self.truncate_backing(layout::ciphertext_size(new_size))
    }

    /// `fsync` (or `fdatasync` when `data_only`) of the backing file.
    pub fn sync(&self, data_only: bool) -> Result<()> {
        let result = if data_only {
            self.file.sync_data()
        } else {
            self.file.sync_all()
        };
        result.context(|| format!("syncing {}", self.backing_path().display()))
    }

    /// Authenticates every block, calling `bad` with the error of each one
    /// that fails (and of a cut or torn tail); returns the blocks checked.
    /// Other errors (I/O) stop the check.
    pub fn verify_each(&self, mut bad: impl FnMut(VolumeError)) -> Result<u64> {
        let cipher_len = {
            let _shared = self.state();
            self.cipher_len()?
        };
        let (size, cut) = match layout::plaintext_size(cipher_len) {
            Ok(size) => (size, None),
            Err(Malformed::TornHeader) => {
                bad(self.torn_header());
                return Ok(0);
            }
            Err(Malformed::CutBlock(block)) => (block * BLOCK_SIZE, Some(block)),
        };
        let mut buf = vec![0u8; BLOCK_SIZE as usize];
        let blocks = size.div_ceil(BLOCK_SIZE);
        for index in 0..blocks {
            match self.read_at(index * BLOCK_SIZE, &mut buf) {
                Ok(_) => {}
                Err(e @ VolumeError::AuthenticationFailed { .. }) => bad(e),
                Err(e @ VolumeError::BadFileHeader { .. }) => {
                    bad(e);
                    return Ok(index);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(block) = cut {
            bad(self.auth_failed(block));
        }
        Ok(blocks)
    }

    /// Plaintext of the whole file into `out` (for re-encryption and tests).
    pub fn read_to_end(&self, out: &mut Vec<u8>) -> Result<()> {
        let size = self.len()?;
        let start = out.len();
        out.resize(start + size as usize, 0);
        let n = self.read_at(0, &mut out[start..])?;
        out.truncate(start + n);
        Ok(())
    }

    // ---- internals -------------------------------------------------------

    /// Overwrites [offset, offset+len) with `fill`, re-encrypting every block
    /// the range touches, plus the zero-padded blocks between the old end of
    /// file and `offset`. Writes in batches of whole blocks.
    fn rewrite(&self, state: &mut Option<Keyed>, offset: u64, len: u64, fill: Fill) -> Result<()> {
        let size = self.checked_size()?;
        if state.is_none() {
            *state = Some(self.create_header()?);
        }
        let keyed = state.as_ref().ok_or_else(|| self.torn_header())?;
        let end = offset + len;
        let new_size = size.max(end);
        let first = offset.min(size) / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let mut plain = [0u8; BLOCK_SIZE as usize];
        SCRATCH.with_borrow_mut(|out| {
            let mut batch_start = first;
            while batch_start <= last {
                let batch_end = last.min(batch_start + BLOCKS_PER_BATCH - 1);
                out.clear();
                for index in batch_start..=batch_end {
                    let block_start = index * BLOCK_SIZE;
                    let block_len = (new_size - block_start).min(BLOCK_SIZE) as usize;
                    let old_len = size.saturating_sub(block_start).min(BLOCK_SIZE);
                    let plain = &mut plain[..block_len];
                    let covered = offset <= block_start && end >= block_start + old_len;
                    if old_len > 0 && !covered {
                        self.read_block(keyed, index, old_len, plain)?;
                        plain[old_len as usize..].fill(0);
                    } else {
                        plain.fill(0);
                    }
                    overlay(plain, block_start, offset, end, fill);
                    self.seal_block(keyed, index, plain, out)?;
                }
                self.file
                    .write_all_at(out, block_offset(batch_start))
                    .context(|| format!("writing {}", self.backing_path().display()))?;
                batch_start = batch_end + 1;
            }
            Ok(())
        })
    }

    /// Decrypts block `index` (holding `len` plaintext bytes) into `plain`.
    fn read_block(&self, keyed: &Keyed, index: u64, len: u64, plain: &mut [u8]) -> Result<()> {
        let mut buffer = [0u8; CIPHER_BLOCK_SIZE as usize];
        let sealed = &mut buffer[..(len + BLOCK_OVERHEAD) as usize];
        self.file
            .read_exact_at(sealed, block_offset(index))
            .context(|| format!("reading {}", self.backing_path().display()))?;
        let opened = self.open_block(keyed, index, sealed)?;
        plain[..opened.len()].copy_from_slice(opened);
        Ok(())
    }

    /// Authenticates and decrypts one sealed block in place; returns the plaintext.
    fn open_block<'b>(&self, keyed: &Keyed, index: u64, sealed: &'b mut [u8]) -> Result<&'b [u8]> {
        if sealed.len() as u64 <= BLOCK_OVERHEAD {
            return Err(self.auth_failed(index));
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let nonce: &[u8; NONCE_LEN] = (&*nonce).try_into().map_err(|_| self.auth_failed(index))?;
        let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| self.auth_failed(index))?;
        let aad = block_aad(&keyed.file_id, index);
        keyed
            .aead
            .open(nonce, &aad, body, tag)
            .map_err(|_| self.auth_failed(index))?;
        Ok(body)
    }

    /// Appends block `index` sealed with a fresh random nonce to `out`.
    fn seal_block(&self, keyed: &Keyed, index: u64, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let start = out.len();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let aad = block_aad(&keyed.file_id, index);
        let tag = keyed.aead.seal(&nonce, &aad, &mut out[start + NONCE_LEN..]);
        out.extend_from_slice(&tag);
        Ok(())
    }

    fn load_header(&self) -> Result<Option<Keyed>> {
        let cipher_len = self.cipher_len()?;
        if cipher_len == 0 {
            return Ok(None);
        }
        if cipher_len < HEADER_LEN as u64 {
            return Err(self.torn_header());
        }
        let mut bytes = [0u8; HEADER_LEN];
        self.file
            .read_exact_at(&mut bytes, 0)
            .context(|| format!("reading {}", self.backing_path().display()))?;
        let header = FileHeader::decode(&bytes).map_err(|e| VolumeError::BadFileHeader {
            file: self.backing_path(),
            reason: e.to_string(),
        })?;
        Ok(Some(self.keyed(header.file_id)))
    }

    fn create_header(&self) -> Result<Keyed> {
        let mut file_id = [0u8; FILE_ID_LEN];
        crate::keys::fill_random(&mut file_id)?;
        let header = FileHeader { file_id };
        self.file
            .write_all_at(&header.encode(), 0)
            .context(|| format!("writing {}", self.backing_path().display()))?;
        Ok(self.keyed(file_id))
    }

    fn keyed(&self, file_id: [u8; FILE_ID_LEN]) -> Keyed {
        Keyed {
            file_id,
            aead: self.crypto.file_cipher(&file_id),
        }
    }

    fn cipher_len(&self) -> Result<u64> {
        Ok(self
            .file
            .metadata()
            .context(|| format!("examining {}", self.label.display()))?
            .len())
    }

    /// The plaintext size, refusing a damaged tail (writes must not build on it).
    fn checked_size(&self) -> Result<u64> {
        match layout::plaintext_size(self.cipher_len()?) {
            Ok(size) => Ok(size),
            Err(Malformed::TornHeader) => Err(self.torn_header()),
            Err(Malformed::CutBlock(block)) => Err(self.auth_failed(block)),
        }
    }

    fn truncate_backing(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .context(|| format!("truncating {}", self.backing_path().display()))
    }

    fn auth_failed(&self, block: u64) -> VolumeError {
        VolumeError::AuthenticationFailed {
            file: self.backing_path(),
            block,
        }
    }

    fn torn_header(&self) -> VolumeError {
        VolumeError::BadFileHeader {
            file: self.backing_path(),
            reason: "the header is incomplete".into(),
        }
    }

    fn state(&self) -> RwLockReadGuard<'_, Option<Keyed>> {
        // A panic while holding the lock leaves the file's bytes as they
        // were on disk; the cached header is still valid, so poisoning is ignored.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn state_mut(&self) -> RwLockWriteGuard<'_, Option<Keyed>> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
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
