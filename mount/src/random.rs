//! The one source of randomness for keys, identifiers and nonces: `rand`'s
//! thread-local generator (ChaCha12, a CSPRNG seeded from the operating
//! system and reseeded periodically). One source is one thing to audit, and
//! drawing a nonce per block costs no system call.

use rand::RngCore;

/// Fills `buf` with cryptographically secure random bytes.
pub fn fill(buf: &mut [u8]) {
    rand::rng().fill_bytes(buf);
}

/// `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill(&mut out);
    out
}
