//! AES-256-GCM behind one small trait, with two implementations: RustCrypto's
//! `aes-gcm` (pure Rust, constant-time, hardware-accelerated when the CPU has
//! AES-NI and CLMUL) and `ring` (BoringSSL's assembly). Both produce the same
//! bytes; a test checks that each opens what the other sealed. The volume uses
//! whichever is faster on this machine, measured once per process.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use zeroize::Zeroizing;

/// AES-256 key length.
pub const KEY_LEN: usize = 32;
/// GCM nonce length: 96 bits, the length GCM is specified for.
pub const NONCE_LEN: usize = 12;
/// GCM tag length: the full 128 bits.
pub const TAG_LEN: usize = 16;

/// A tag that did not verify. Carries nothing on purpose: the caller knows
/// which file and block it was opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagMismatch;

/// One AES-256-GCM key, ready to seal and open.
pub trait Aead: Send + Sync {
    /// Encrypts `in_out` in place and returns the tag.
    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN];
    /// Decrypts `in_out` in place if `tag` authenticates it and `aad`;
    /// on failure the contents of `in_out` are unspecified and must not be used.
    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), TagMismatch>;
}

/// Bytes a framed value adds to its plaintext: the nonce in front, the tag behind.
pub const FRAME_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The one sealing routine: appends `nonce ‖ ciphertext ‖ tag` of `plain` to
/// `out`, with a fresh random 96-bit nonce (NIST SP 800-38D's random
/// construction; callers keep each key under 2^32 seals). File contents,
/// extended attributes and anything sealed later all go through it.
pub fn seal_framed(aead: &dyn Aead, aad: &[u8], plain: &[u8], out: &mut Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    crate::random::fill(&mut nonce);
    let start = out.len();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = aead.seal(&nonce, aad, &mut out[start + NONCE_LEN..]);
    out.extend_from_slice(&tag);
}

/// Opens a value framed by `seal_framed` in place and returns its plaintext,
/// or `TagMismatch` if it is too short, altered, or bound to other `aad`.
pub fn open_framed<'a>(
    aead: &dyn Aead,
    aad: &[u8],
    framed: &'a mut [u8],
) -> Result<&'a [u8], TagMismatch> {
    if framed.len() < FRAME_OVERHEAD {
        return Err(TagMismatch);
    }
    let (nonce, rest) = framed.split_at_mut(NONCE_LEN);
    let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let nonce: &[u8; NONCE_LEN] = (&*nonce).try_into().map_err(|_| TagMismatch)?;
    let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| TagMismatch)?;
    aead.open(nonce, aad, body, tag)?;
    Ok(body)
}

/// The available AES-256-GCM implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    RustCrypto,
    Ring,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::RustCrypto, Backend::Ring];

    pub fn name(self) -> &'static str {
        match self {
            Backend::RustCrypto => "aes-gcm (RustCrypto)",
            Backend::Ring => "ring",
        }
    }

    /// Builds a keyed cipher. The caller's key bytes are not kept.
    pub fn new_key(self, key: &[u8; KEY_LEN]) -> Box<dyn Aead> {
        match self {
            Backend::RustCrypto => Box::new(RustCryptoKey(aes_gcm::Aes256Gcm::new(key.into()))),
            Backend::Ring => Box::new(RingKey::new(key)),
        }
    }
}

struct RustCryptoKey(aes_gcm::Aes256Gcm);

impl Aead for RustCryptoKey {
    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        // The only failure is a message longer than GCM's 64 GiB limit; our
        // callers seal at most one block.
        let tag = self
            .0
            .encrypt_in_place_detached(nonce.into(), aad, in_out)
            .unwrap_or_else(|_| panic!("invariant: a {}-byte message fits GCM", in_out.len()));
        tag.into()
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), TagMismatch> {
        self.0
            .decrypt_in_place_detached(nonce.into(), aad, in_out, tag.into())
            .map_err(|_| TagMismatch)
    }
}

struct RingKey(ring::aead::LessSafeKey);

impl RingKey {
    fn new(key: &[u8; KEY_LEN]) -> Self {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            .unwrap_or_else(|_| panic!("invariant: ring accepts a {KEY_LEN}-byte AES-256 key"));
        RingKey(ring::aead::LessSafeKey::new(unbound))
    }
}

impl Aead for RingKey {
    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), in_out)
            .unwrap_or_else(|_| panic!("invariant: a {}-byte message fits GCM", in_out.len()));
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), TagMismatch> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = ring::aead::Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), tag, in_out, 0..)
            .map(|_| ())
            .map_err(|_| TagMismatch)
    }
}

/// Throughput of one backend on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub backend: Backend,
    pub seal_mb_per_s: f64,
    pub open_mb_per_s: f64,
}

/// Seals and opens 4 KiB blocks for about `budget` (split between the two)
/// and reports MB/s (10^6 bytes per second).
pub fn measure(backend: Backend, budget: Duration) -> Throughput {
    let key = Zeroizing::new([0x42u8; KEY_LEN]);
    let aead = backend.new_key(&key);
    let nonce = [7u8; NONCE_LEN];
    let aad = [1u8; 26];
    let mut block = vec![0xA5u8; 4096];
    let half = budget / 2;

    let start = Instant::now();
    let mut sealed = 0u64;
    let mut tag = [0u8; TAG_LEN];
    while start.elapsed() < half {
        for _ in 0..64 {
            tag = aead.seal(&nonce, &aad, &mut block);
            sealed += block.len() as u64;
        }
    }
    let seal_rate = sealed as f64 / start.elapsed().as_secs_f64() / 1e6;

    // Each open must verify, so reseal once and reopen the same bytes,
    // re-encrypting after each open to restore the ciphertext.
    let start = Instant::now();
    let mut opened = 0u64;
    let ciphertext = block.clone();
    while start.elapsed() < half {
        for _ in 0..64 {
            block.copy_from_slice(&ciphertext);
            if aead.open(&nonce, &aad, &mut block, &tag).is_ok() {
                opened += block.len() as u64;
            }
        }
    }
    let open_rate = opened as f64 / start.elapsed().as_secs_f64() / 1e6;
    Throughput {
        backend,
        seal_mb_per_s: seal_rate,
        open_mb_per_s: open_rate,
    }
}

/// The faster backend on this machine, measured on first use (about 40 ms).
pub fn fastest() -> Backend {
    static CHOICE: OnceLock<Backend> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let budget = Duration::from_millis(20);
        let score = |t: Throughput| t.seal_mb_per_s + t.open_mb_per_s;
        let best = Backend::ALL
            .iter()
            .map(|&b| measure(b, budget))
            .max_by(|a, b| score(*a).total_cmp(&score(*b)))
            .map_or(Backend::RustCrypto, |t| t.backend);
        log::debug!("AES-256-GCM implementation: {}", best.name());
        best
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: both implementations are the same AES-256-GCM, byte for byte,
    // so a volume written with one reads with the other.
    #[test]
    fn backends_interoperate() {
        let key = [9u8; KEY_LEN];
        let nonce = [3u8; NONCE_LEN];
        let plain: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        for sealer in Backend::ALL {
            let mut buf = plain.clone();
            let tag = sealer.new_key(&key).seal(&nonce, b"aad", &mut buf);
            for opener in Backend::ALL {
                let mut copy = buf.clone();
                opener
                    .new_key(&key)
                    .open(&nonce, b"aad", &mut copy, &tag)
                    .unwrap_or_else(|_| panic!("{} cannot open {}", opener.name(), sealer.name()));
                assert_eq!(copy, plain);
                let mut copy = buf.clone();
                assert_eq!(
                    opener.new_key(&key).open(&nonce, b"aaX", &mut copy, &tag),
                    Err(TagMismatch)
                );
            }
        }
    }

    // Protects: we really run AES-256-GCM. NIST GCM test vector (Test Case 16
    // of the original GCM specification: 256-bit key, 96-bit IV, with AAD).
    #[test]
    fn known_answer_gcm_spec_test_case_16() {
        let key: [u8; 32] =
            hex32("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
        let nonce: [u8; 12] = hex_vec("cafebabefacedbaddecaf888")
            .try_into()
            .expect("12 bytes");
        let aad = hex_vec("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let plain = hex_vec(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let expect_ct = hex_vec(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        );
        let expect_tag = hex_vec("76fc6ece0f4e1768cddf8853bb2d551b");
        for backend in Backend::ALL {
            let mut buf = plain.clone();
            let tag = backend.new_key(&key).seal(&nonce, &aad, &mut buf);
            assert_eq!(buf, expect_ct, "{}", backend.name());
            assert_eq!(tag.to_vec(), expect_tag, "{}", backend.name());
        }
    }

    // Protects: a framed value opens only with its own associated data and
    // bytes, and a value shorter than the frame is refused, not panicked on.
    #[test]
    fn framed_round_trip_and_refusals() {
        let aead = Backend::RustCrypto.new_key(&[4u8; KEY_LEN]);
        let mut out = Vec::new();
        seal_framed(&*aead, b"ctx", b"hello", &mut out);
        assert_eq!(out.len(), 5 + FRAME_OVERHEAD);
        let mut copy = out.clone();
        assert_eq!(open_framed(&*aead, b"ctx", &mut copy), Ok(&b"hello"[..]));
        let mut copy = out.clone();
        assert_eq!(open_framed(&*aead, b"ctX", &mut copy), Err(TagMismatch));
        let mut copy = out.clone();
        copy[NONCE_LEN] ^= 1;
        assert_eq!(open_framed(&*aead, b"ctx", &mut copy), Err(TagMismatch));
        let mut short = out[..FRAME_OVERHEAD - 1].to_vec();
        assert_eq!(open_framed(&*aead, b"ctx", &mut short), Err(TagMismatch));
        let mut again = Vec::new();
        seal_framed(&*aead, b"ctx", b"hello", &mut again);
        assert_ne!(out[..NONCE_LEN], again[..NONCE_LEN], "nonces are fresh");
    }

    fn hex_vec(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn hex32(s: &str) -> [u8; 32] {
        hex_vec(s).try_into().expect("32 bytes")
    }
}
