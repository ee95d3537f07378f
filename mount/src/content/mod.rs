//! Random access to the plaintext of one encrypted backing file.
//!
//! Locking: each `EncryptedFile` holds one reader-writer lock. Reads take it
//! shared, so parallel readers proceed; writes, truncates and extensions take
//! it exclusive, so a read-modify-write of a partial block never interleaves
//! with another writer and no update is lost. Callers that open the same
//! backing file more than once must share one `EncryptedFile` (the FUSE front
//! end keeps one per inode); two instances over one file would each lock only
//! themselves.
//!
//! Integrity: every block is authenticated with its position and with
//! whether it is the file's last block, so a cut at any byte and blocks
//! appended behind the last one are detected when a read reaches them. The
//! header is authenticated too and says whether the file holds blocks at all
//! (a file cut back to its header is not an empty file) and whether it may
//! hold holes (without that flag, a zeroed block is a forgery).

mod blocks;
#[cfg(test)]
mod failing_store;
mod guard;
mod holes;
mod keys;
mod times;
mod verify;
mod write;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub use keys::{ContentCrypto, MAX_SEALS_PER_KEY};
pub use verify::TailRepair;

use crate::error::{IoContext, Result, VolumeError};
use crate::faults::{check, Point};
use crate::journal::Mtime;
use crate::layout::{
    self, FileHeader, Malformed, BLOCK_SIZE, FILE_ID_LEN, FLAG_HAS_BLOCKS, HEADER_LEN,
};
use keys::ContentKeys;

/// What the file's header says, once checked.
enum Header {
    /// A zero-byte backing file: cut to nothing, or not made by Chronicle
    /// (every file Chronicle creates gets a header at once).
    Missing,
    /// Torn, forged or of another format: the reason.
    Damaged(String),
    Valid(FileHeader),
}

struct State {
    header: Header,
    /// The keys of the current contents; `None` while the file holds no
    /// blocks: its next block draws a new content id, so a header planted
    /// from another file never lends this file that file's keys.
    keys: Option<ContentKeys>,
}

/// One encrypted backing file, read and written as plaintext.
pub struct EncryptedFile {
    file: File,
    crypto: Arc<ContentCrypto>,
    state: RwLock<State>,
    /// The journal that keeps durable blocks through torn rewrites, once
    /// `guarded_by` gives it one (the mount does; offline tools that write
    /// new files need none).
    guard: Mutex<Option<guard::Guard>>,
    /// Shown in errors when the file's current path cannot be found.
    label: PathBuf,
    /// A sync of the backing file failed (`sync_backing`).
    sync_failed: AtomicBool,
    /// Held across each sync of the backing file and its check.
    syncing: Mutex<()>,
    /// Writes to the backing file (bytes, size, header) so far, and
    /// changes this type does not see: a sync may commit held rewrites
    /// instead of syncing the backing file (`guard::commit_held`) only
    /// while none has come since the last sync that ended a cycle.
    changes: AtomicU64,
    /// The backing file's last sync: its attributes and `changes` when it
    /// began; it counts once the cycle it ended is over (`cycle_ended`).
    last_sync: Mutex<Option<(SyncedAttrs, u64)>>,
    /// The last sync that ended a cycle (every held rewrite written, every
    /// copy and commit released): what a commit may build on.
    at_last_sync: Mutex<Option<(SyncedAttrs, u64)>>,
    /// Commits of this file are live in the journal: a sync of the backing
    /// file is then an `fsync`, whatever was asked, since the commits that
    /// carry the modification time an `fsync` promised go once it returns.
    commits_live: AtomicBool,
    /// The modification time the mount last set on the backing file for
    /// the kernel, with `changes` before it was set (`set_kernel_mtime`).
    mtime_set: Mutex<Option<(u64, Mtime)>>,
}

/// What a sync of the backing file covered besides its bytes: a commit of
/// held rewrites alone can stand for a sync only while these are unchanged.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SyncedAttrs {
    mode: u32,
    uid: u32,
    gid: u32,
    len: u64,
    /// By `fsync` (attributes included), not `fdatasync`.
    full: bool,
}

/// The header of a file that holds no blocks.
fn empty_header(file_id: [u8; FILE_ID_LEN]) -> FileHeader {
    FileHeader {
        flags: 0,
        file_id,
        content_id: [0; FILE_ID_LEN],
        pending_size: 0,
    }
}

impl EncryptedFile {
    /// Wraps an open backing file (opened for reading, and for writing if
    /// writes will follow). A damaged header is not an error here: reads
    /// report it, and truncating to zero repairs it.
    pub fn open(file: File, crypto: Arc<ContentCrypto>, label: PathBuf) -> Result<Self> {
        let this = Self::unexamined(file, crypto, label);
        let loaded = this.load_state()?;
        *this.state_mut_keeping_held() = loaded;
        Ok(this)
    }

    /// The file with no header known yet, before anything is read of it.
    fn unexamined(file: File, crypto: Arc<ContentCrypto>, label: PathBuf) -> Self {
        EncryptedFile {
            file,
            crypto,
            state: RwLock::new(State {
                header: Header::Missing,
                keys: None,
            }),
            guard: Mutex::new(None),
            label,
            sync_failed: AtomicBool::new(false),
            syncing: Mutex::new(()),
            changes: AtomicU64::new(0),
            last_sync: Mutex::new(None),
            at_last_sync: Mutex::new(None),
            commits_live: AtomicBool::new(false),
            mtime_set: Mutex::new(None),
        }
    }

    /// Wraps a backing file that was just created (empty), giving it a
    /// header with a new file id.
    pub fn create(file: File, crypto: Arc<ContentCrypto>, label: PathBuf) -> Result<Self> {
        let this = Self::open(file, crypto, label)?;
        {
            let mut state = this.state_mut()?;
            this.reset_to_empty(&mut state)?;
        }
        Ok(this)
    }

    /// Wraps a backing file this process has just made anonymously
    /// (`O_TMPFILE`), empty since nobody else can reach it, giving it a
    /// header with a new file id: `create` without examining or cutting the
    /// file first.
    pub(crate) fn create_new(
        file: File,
        crypto: Arc<ContentCrypto>,
        label: PathBuf,
    ) -> Result<Self> {
        let this = Self::unexamined(file, crypto, label);
        let header = empty_header(crate::random::bytes());
        this.store_header(&mut *this.state_mut()?, header)?;
        Ok(this)
    }

    /// The same file through `file`, another descriptor of it that the
    /// caller checked is the same file (one opened by the name the file
    /// was given, so that messages show that name).
    pub(crate) fn reached_through(mut self, file: File) -> Self {
        self.file = file;
        self
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
        let _shared = self.state_keeping_held();
        Ok(layout::plaintext_size_lossy(self.cipher_len()?))
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The id that binds this file's extended attributes to it.
    pub fn file_id(&self) -> Result<[u8; FILE_ID_LEN]> {
        Ok(self.valid_header(&self.state_keeping_held())?.file_id)
    }

    /// Writes `data` at `offset`, extending the file when needed (a gap
    /// between the old end and `offset` reads as zeros; a large one is left
    /// as a hole).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut state = self.state_mut_keeping_held();
        self.rewrite(
            &mut state,
            offset,
            data.len() as u64,
            write::Fill::Bytes(data),
        )
    }

    /// Overwrites `len` bytes at `offset` with zeros, extending the file if
    /// the range ends past it.
    pub fn write_zeros(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let mut state = self.state_mut()?;
        self.rewrite(&mut state, offset, len, write::Fill::Zeros)
    }

    /// Overwrites [offset, offset+len) with zeros; with `keep_size`, only
    /// the part inside the file as it is under the lock (fallocate's
    /// ZERO_RANGE with KEEP_SIZE), so a concurrent extension is never cut.
    pub fn zero_range(&self, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        let mut state = self.state_mut()?;
        let end = offset.saturating_add(len);
        let end = if keep_size {
            end.min(self.checked_size(&state)?)
        } else {
            end
        };
        if offset >= end {
            return Ok(());
        }
        self.rewrite(&mut state, offset, end - offset, write::Fill::Zeros)
    }

    /// Grows the file to `size` if it is smaller, never shrinking it: the
    /// size is compared under the lock, so a write that lands meanwhile is
    /// kept (fallocate without KEEP_SIZE).
    pub fn grow_to(&self, size: u64) -> Result<()> {
        let mut state = self.state_mut()?;
        let current = self.checked_size(&state)?;
        if size <= current {
            return Ok(());
        }
        self.rewrite(&mut state, current, size - current, write::Fill::Zeros)
    }

    /// Sets the plaintext length. Shrinking re-seals the new last block;
    /// growing re-seals the old last block and seals a new one, leaving a
    /// large gap as a hole (no space, no time in proportion to it).
    pub fn set_len(&self, new_size: u64) -> Result<()> {
        let mut state = self.state_mut()?;
        if new_size == 0 {
            return self.reset_to_empty(&mut state);
        }
        let size = self.checked_size(&state)?;
        if new_size > size {
            return self.rewrite(&mut state, size, new_size - size, write::Fill::Zeros);
        }
        if new_size < size {
            self.shrink(&mut state, size, new_size)?;
        }
        Ok(())
    }

    /// Writes the rewrites held back (after one sync of the journal), so
    /// that the backing file holds everything acknowledged.
    pub fn write_held_back(&self) -> Result<()> {
        self.state().map(drop)
    }

    /// `fsync` (or `fdatasync` when `data_only`) of the backing file.
    /// Writers wait meanwhile, so that everything the journal holds copies
    /// for is covered by the sync and the copies can go. When rewrites held
    /// in memory are all that changed since the backing file's last sync,
    /// they are committed to the journal instead, which takes one flush
    /// where writing them and syncing the file takes two.
    pub fn sync(&self, data_only: bool) -> Result<()> {
        {
            let state = self.state_keeping_held();
            if self.commit_held(&state, data_only)? {
                return Ok(());
            }
        }
        let _no_writers = self.state()?;
        self.sync_backing(data_only)?;
        self.synced()
    }

    /// The backing file's modification time when nothing but held
    /// rewrites changed the file since its last sync (by `fsync` unless
    /// `data_only`): its bytes, size, mode and owner are then as durable as
    /// that sync made them. `None` otherwise.
    fn only_held_since_sync(&self, data_only: bool) -> Result<Option<Mtime>> {
        let last = *self.at_last_sync.lock().unwrap_or_else(|p| p.into_inner());
        let Some((at_sync, changes)) = last else {
            return Ok(None);
        };
        if self.changes.load(Ordering::Acquire) != changes {
            return Ok(None);
        }
        let unchanged = self.backing_attrs()?
            == SyncedAttrs {
                full: false,
                ..at_sync
            };
        if !(unchanged && (data_only || at_sync.full)) {
            return Ok(None);
        }
        self.current_mtime().map(Some)
    }

    /// What a sync of the backing file covers besides its bytes, read
    /// without its times (`crate::untimed`).
    fn backing_attrs(&self) -> Result<SyncedAttrs> {
        let status = crate::untimed::status(&self.file)
            .context(|| format!("examining {}", self.backing_path().display()))?;
        Ok(SyncedAttrs {
            mode: status.mode,
            uid: status.uid,
            gid: status.gid,
            len: status.size,
            full: false,
        })
    }

    /// Writes to the backing file so far (`times`).
    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Called before every write to the backing file (`changes`).
    fn note_unsynced(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// The cycle the last sync of the backing file ended is over: a
    /// commit may build on that sync if nothing changed since it began.
    fn cycle_ended(&self) {
        let last = self
            .last_sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        *self.at_last_sync.lock().unwrap_or_else(|p| p.into_inner()) = last;
    }

    /// Something this type does not see changed the backing file (its
    /// extended attributes): its next sync syncs the backing file.
    pub fn changed_elsewhere(&self) {
        self.note_unsynced();
    }

    /// The backing file's `fsync` alone, one at a time. Once one has
    /// failed, every later one does: Linux reports a lost write-back once
    /// and then calls the pages clean, so a second `fsync` could succeed
    /// with data missing, and the journal's copies must not be released on
    /// its word.
    fn sync_backing(&self, data_only: bool) -> Result<()> {
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        self.refuse_after_failed_sync()?;
        // Taken before the sync: a change that lands meanwhile counts as
        // after it.
        let changes = self.changes.load(Ordering::Acquire);
        let attrs = self.backing_attrs()?;
        let data_only = data_only && !self.commits_live.load(Ordering::Acquire);
        let result = check(Point::BackingSync).and_then(|()| match data_only {
            true => self.file.sync_data(),
            false => self.file.sync_all(),
        });
        let synced = result.is_ok().then_some((
            SyncedAttrs {
                full: !data_only,
                ..attrs
            },
            changes,
        ));
        *self.last_sync.lock().unwrap_or_else(|p| p.into_inner()) = synced;
        if result.is_err() {
            self.sync_failed.store(true, Ordering::Relaxed);
            *self.at_last_sync.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        result.context(|| format!("syncing {}", self.backing_path().display()))
    }

    /// Whether a sync of the backing file has failed (every later one will).
    pub fn sync_failed(&self) -> bool {
        self.sync_failed.load(Ordering::Relaxed)
    }

    /// For tests: this file's sync failed.
    #[cfg(test)]
    pub(crate) fn as_if_a_sync_failed(&self) {
        self.sync_failed.store(true, Ordering::Relaxed);
    }

    /// Fails once a sync of this file, or of the journal guarding it, has
    /// failed: what needs one could not be finished. (Not under the
    /// guard's lock: it takes it.)
    fn refuse_untrusted_syncs(&self) -> Result<()> {
        self.refuse_after_failed_sync()?;
        self.journal_trusted()
    }

    fn refuse_after_failed_sync(&self) -> Result<()> {
        if self.sync_failed.load(Ordering::Relaxed) {
            return Err(VolumeError::eio(format!(
                "{}: an earlier sync failed, so a later one cannot vouch for the data; \
                 remount the volume to clear this",
                self.backing_path().display()
            )));
        }
        Ok(())
    }

    /// Plaintext of the whole file into `out` (for re-encryption and tests).
    pub fn read_to_end(&self, out: &mut Vec<u8>) -> Result<()> {
        let size = self.len()?;
        let start = out.len();
        let want = usize::try_from(size).map_err(|_| {
            VolumeError::io(
                "reading a whole file",
                std::io::Error::from_raw_os_error(libc::EFBIG),
            )
        })?;
        out.resize(start + want, 0);
        let n = self.read_at(0, &mut out[start..])?;
        out.truncate(start + n);
        Ok(())
    }

    /// Seals counted against the key this file currently seals with.
    #[doc(hidden)]
    pub fn seals_under_current_key(&self) -> u64 {
        self.state_keeping_held()
            .keys
            .as_ref()
            .map_or(0, ContentKeys::current_seals)
    }

    // ---- header and state -------------------------------------------------

    fn load_state(&self) -> Result<State> {
        let cipher_len = self.cipher_len()?;
        if cipher_len == 0 {
            return Ok(State {
                header: Header::Missing,
                keys: None,
            });
        }
        if cipher_len < HEADER_LEN as u64 {
            return Ok(State {
                header: Header::Damaged("the header is incomplete".into()),
                keys: None,
            });
        }
        let mut bytes = [0u8; HEADER_LEN];
        self.file
            .read_exact_at(&mut bytes, 0)
            .context(|| format!("reading {}", self.backing_path().display()))?;
        let header = match FileHeader::decode(&bytes) {
            Err(e) => Header::Damaged(e.to_string()),
            Ok((header, tag)) => {
                let expected = self.crypto.header_tag(&header.encode_unsigned());
                if crate::keys::constant_time_eq(&expected, &tag) {
                    Header::Valid(header)
                } else {
                    Header::Damaged("the header fails authentication".into())
                }
            }
        };
        let keys = match &header {
            Header::Valid(h) if h.has_blocks() => Some(ContentKeys::new(h.content_id)),
            _ => None,
        };
        Ok(State { header, keys })
    }

    /// Writes `header` with its tag over the file's first bytes.
    fn store_header(&self, state: &mut State, header: FileHeader) -> Result<()> {
        let tag = self.crypto.header_tag(&header.encode_unsigned());
        self.note_unsynced();
        check(Point::HeaderWrite)
            .and_then(|()| self.file.write_all_at(&header.encode(&tag), 0))
            .context(|| format!("writing {}", self.backing_path().display()))?;
        state.header = Header::Valid(header);
        Ok(())
    }

    /// Makes the file empty: its header alone, saying it holds no blocks.
    /// Keeps the file id (extended attributes stay bound to it) unless the
    /// header was missing or damaged, which this repairs.
    fn reset_to_empty(&self, state: &mut State) -> Result<()> {
        // Refused before anything changes if it could not finish.
        self.refuse_untrusted_syncs()?;
        let file_id = match &state.header {
            Header::Valid(h) => h.file_id,
            Header::Missing | Header::Damaged(_) => crate::random::bytes(),
        };
        let header = empty_header(file_id);
        // The header first: a crash before the cut leaves blocks behind a
        // header that holds none, which reads fail on and `fsck --repair`
        // cuts; the other order could make a cut file look whole.
        self.store_header(state, header)?;
        state.keys = None;
        self.truncate_backing(HEADER_LEN as u64)?;
        self.emptied()
    }

    /// Keys for sealing: those of the current contents, or, for a file that
    /// holds no blocks, a new content id recorded in the header first.
    fn keys_for_writing<'s>(&self, state: &'s mut State) -> Result<&'s mut ContentKeys> {
        if state.keys.is_none() {
            let old = self.valid_header(state)?;
            let header = FileHeader {
                // An emptied file's flags were cleared; a sparse flag set
                // just now for this very write stays.
                flags: old.flags | FLAG_HAS_BLOCKS,
                file_id: old.file_id,
                content_id: crate::random::bytes(),
                pending_size: 0,
            };
            self.store_header(state, header)?;
            state.keys = Some(ContentKeys::new(header.content_id));
        }
        state
            .keys
            .as_mut()
            .ok_or_else(|| self.header_error(&state.header))
    }

    fn valid_header(&self, state: &State) -> Result<FileHeader> {
        match &state.header {
            Header::Valid(header) => Ok(*header),
            other => Err(self.header_error(other)),
        }
    }

    // ---- sizes and errors ---------------------------------------------------

    fn cipher_len(&self) -> Result<u64> {
        // Without its times: this runs for every write (`crate::untimed`).
        Ok(crate::untimed::status(&self.file)
            .context(|| format!("examining {}", self.label.display()))?
            .size)
    }

    /// The plaintext size, refusing a damaged header or tail (writes must
    /// not build on them).
    fn checked_size(&self, state: &State) -> Result<u64> {
        let header = self.valid_header(state)?;
        let cipher_len = self.cipher_len()?;
        match layout::plaintext_size(cipher_len) {
            Ok(0) if header.has_blocks() => Err(self.auth_failed(0)),
            Ok(size) if size > 0 && !header.has_blocks() => Err(self.auth_failed(0)),
            Ok(size) => Ok(size),
            Err(Malformed::TornHeader) => Err(self.header_error(&state.header)),
            Err(Malformed::CutBlock(block)) => Err(self.auth_failed(block)),
        }
    }

    /// Writes blocks as stored, one after another from block `first`.
    fn write_stored(&self, first: u64, stored: &[u8]) -> Result<()> {
        self.note_unsynced();
        check(Point::BlocksWrite)
            .and_then(|()| self.file.write_all_at(stored, layout::block_offset(first)))
            .context(|| format!("writing {}", self.backing_path().display()))
    }

    fn truncate_backing(&self, len: u64) -> Result<()> {
        self.note_unsynced();
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

    /// The state, shared, with every held rewrite written (`guard::hold`):
    /// whatever reads the backing file then finds the file's contents.
    /// Writers are out while it is held, so none can be held anew.
    fn state(&self) -> Result<RwLockReadGuard<'_, State>> {
        let state = self.state_keeping_held();
        self.write_all_held()?;
        Ok(state)
    }

    /// The state, exclusive, with every held rewrite written.
    fn state_mut(&self) -> Result<RwLockWriteGuard<'_, State>> {
        let state = self.state_mut_keeping_held();
        self.write_all_held()?;
        Ok(state)
    }

    /// The state, shared, for what needs neither blocks nor holes (sizes,
    /// the header): held rewrites change neither.
    fn state_keeping_held(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves the file's bytes as they
        // were on disk; the cached header is still valid, so poisoning is ignored.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The state, exclusive, for a write: it settles the held blocks it
    /// touches itself (`guard::settle_held`).
    fn state_mut_keeping_held(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Plaintext bytes in block `index` of a file of `size` bytes.
fn block_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index * BLOCK_SIZE).min(BLOCK_SIZE)
}
