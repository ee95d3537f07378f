//! The keys of file contents, and the nonce budget they keep.
//!
//! Each block is sealed with AES-256-GCM under a random 96-bit nonce, so
//! NIST SP 800-38D allows at most 2^32 seals per key. A block carries the id
//! of the key that sealed it: key = HKDF-SHA256(master, "chronicle content
//! v2" ‖ content id ‖ key id). A writer draws a fresh random key id when it
//! first seals a block of a file and again after `seals_per_key` seals, so
//! the count is kept in memory, exactly, and a crash or a remount can only
//! start a new key, never continue an old one past its budget. Nothing is
//! persisted, so nothing can be rolled back to make a key seal again.

use std::sync::{Arc, Mutex, OnceLock};

use crate::cipher::{Aead, Backend};
use crate::keys::SecretKey;
use crate::layout::{FILE_ID_LEN, HEADER_TAG_LEN, KEY_ID_LEN};

/// The most blocks one key ever seals: NIST SP 800-38D's bound for random
/// 96-bit nonces.
pub const MAX_SEALS_PER_KEY: u64 = 1 << 32;

/// Keys of other writers kept ready per file besides its first (a file
/// rewritten across many mounts holds blocks under many keys; a miss costs
/// one HKDF, about 2 µs).
const CACHED_KEYS: usize = 16;

/// The volume-wide part of content encryption: the master key and the AES-GCM
/// implementation. Per-file keys are derived from it.
pub struct ContentCrypto {
    master: SecretKey,
    backend: Backend,
    seals_per_key: u64,
}

impl ContentCrypto {
    pub fn new(master: SecretKey, backend: Backend) -> Self {
        ContentCrypto {
            master,
            backend,
            seals_per_key: MAX_SEALS_PER_KEY,
        }
    }

    /// A lower seal budget per key, so tests can watch keys being replaced
    /// without sealing 2^32 blocks.
    #[doc(hidden)]
    pub fn with_seals_per_key(mut self, seals: u64) -> Self {
        self.seals_per_key = seals.clamp(1, MAX_SEALS_PER_KEY);
        self
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

    /// The tag of a file header: HKDF-SHA256(master, "chronicle header v2"
    /// ‖ header bytes), a MAC, so no flag or id can be edited.
    pub(crate) fn header_tag(&self, unsigned: &[u8]) -> [u8; HEADER_TAG_LEN] {
        let derived = self.master.derive(&[b"chronicle header v2", unsigned]);
        let mut tag = [0u8; HEADER_TAG_LEN];
        tag.copy_from_slice(&derived.as_bytes()[..HEADER_TAG_LEN]);
        tag
    }

    fn block_key(
        &self,
        content_id: &[u8; FILE_ID_LEN],
        key_id: &[u8; KEY_ID_LEN],
    ) -> Arc<dyn Aead> {
        let key = self
            .master
            .derive(&[b"chronicle content v2", content_id, key_id]);
        Arc::from(self.backend.new_key(key.as_bytes()))
    }
}

/// Keys by id, most recently used first.
type KeyCache = Vec<([u8; KEY_ID_LEN], Arc<dyn Aead>)>;

/// The key a writer seals with, and how much of its budget is spent.
struct Sealer {
    key_id: [u8; KEY_ID_LEN],
    aead: Arc<dyn Aead>,
    seals: u64,
}

/// The keys of one generation of a file's contents.
pub(super) struct ContentKeys {
    pub content_id: [u8; FILE_ID_LEN],
    sealer: Option<Sealer>,
    /// The first key this file used, read without a lock: most files hold
    /// every block under one key, and the serving threads taking the
    /// cache's lock at every block pass its cache line between CPUs.
    first: OnceLock<([u8; KEY_ID_LEN], Arc<dyn Aead>)>,
    openers: Mutex<KeyCache>,
}

/// A key to open blocks with: the file's first key, borrowed, or another
/// from its cache.
pub(super) enum Opener<'k> {
    First(&'k (dyn Aead + 'static)),
    Cached(Arc<dyn Aead>),
}

impl std::ops::Deref for Opener<'_> {
    type Target = dyn Aead;

    fn deref(&self) -> &Self::Target {
        match self {
            Opener::First(aead) => *aead,
            Opener::Cached(aead) => &**aead,
        }
    }
}

impl ContentKeys {
    pub fn new(content_id: [u8; FILE_ID_LEN]) -> Self {
        ContentKeys {
            content_id,
            sealer: None,
            first: OnceLock::new(),
            openers: Mutex::new(Vec::new()),
        }
    }

    /// The key to seal the next block with, and its id. Starts a new key
    /// when none is open yet or the current one has used its budget.
    pub fn sealer(&mut self, crypto: &ContentCrypto) -> ([u8; KEY_ID_LEN], Arc<dyn Aead>) {
        let spent = self
            .sealer
            .as_ref()
            .is_none_or(|s| s.seals >= crypto.seals_per_key);
        if spent {
            let key_id = crate::random::bytes::<KEY_ID_LEN>();
            let aead = crypto.block_key(&self.content_id, &key_id);
            self.remember(key_id, Arc::clone(&aead));
            self.sealer = Some(Sealer {
                key_id,
                aead,
                seals: 0,
            });
        }
        match self.sealer.as_mut() {
            Some(sealer) => {
                sealer.seals += 1;
                (sealer.key_id, Arc::clone(&sealer.aead))
            }
            None => unreachable!("invariant: a sealer was just installed"),
        }
    }

    /// The key with id `key_id`, derived on a cache miss.
    pub fn opener(&self, crypto: &ContentCrypto, key_id: &[u8; KEY_ID_LEN]) -> Opener<'_> {
        if let Some((id, aead)) = self.first.get() {
            if id == key_id {
                return Opener::First(&**aead);
            }
        }
        {
            let mut cache = self.cache();
            if let Some(at) = cache.iter().position(|(id, _)| id == key_id) {
                let hit = cache.remove(at);
                let aead = Arc::clone(&hit.1);
                cache.insert(0, hit);
                return Opener::Cached(aead);
            }
        }
        let aead = crypto.block_key(&self.content_id, key_id);
        self.remember(*key_id, Arc::clone(&aead));
        Opener::Cached(aead)
    }

    fn remember(&self, key_id: [u8; KEY_ID_LEN], aead: Arc<dyn Aead>) {
        // Only the first key derived stays here; it stays in the cache too.
        let _ = self.first.set((key_id, Arc::clone(&aead)));
        let mut cache = self.cache();
        cache.insert(0, (key_id, aead));
        cache.truncate(CACHED_KEYS);
    }

    /// Seals counted against the current key (for tests of the budget).
    pub fn current_seals(&self) -> u64 {
        self.sealer.as_ref().map_or(0, |s| s.seals)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        // The cache holds only derived keys; a panic elsewhere cannot leave
        // it inconsistent, so poisoning is ignored.
        self.openers.lock().unwrap_or_else(|p| p.into_inner())
    }
}
