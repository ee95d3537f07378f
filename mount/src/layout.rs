//! The byte layout of an encrypted file (docs/FORMAT.md draws it):
//!
//! ```text
//! [header: magic "CHRF" | version u16 LE | flags u16 LE | file id 16 bytes]
//! [block 0: nonce 12 | ciphertext 1..=4096 | tag 16]
//! [block 1: ...]
//! ```
//!
//! An empty file has no header. Every block but the last holds exactly
//! `BLOCK_SIZE` plaintext bytes. Offsets are pure arithmetic: sizes convert
//! both ways without reading the file.

use crate::cipher::{NONCE_LEN, TAG_LEN};

/// Plaintext bytes per block.
pub const BLOCK_SIZE: u64 = 4096;
/// Magic number that opens every non-empty encrypted file.
pub const FILE_MAGIC: [u8; 4] = *b"CHRF";
/// The content format version written by this build.
pub const FILE_VERSION: u16 = 1;
/// Length of the random file identifier.
pub const FILE_ID_LEN: usize = 16;

/// Header field offsets, each derived from the one before.
pub const MAGIC_OFFSET: usize = 0;
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + FILE_MAGIC.len();
pub const FLAGS_OFFSET: usize = VERSION_OFFSET + 2;
pub const FILE_ID_OFFSET: usize = FLAGS_OFFSET + 2;
/// Total header length.
pub const HEADER_LEN: usize = FILE_ID_OFFSET + FILE_ID_LEN;

/// Per-block overhead: the nonce in front, the tag behind.
pub const BLOCK_OVERHEAD: u64 = (NONCE_LEN + TAG_LEN) as u64;
/// On-disk size of a full block.
pub const CIPHER_BLOCK_SIZE: u64 = BLOCK_SIZE + BLOCK_OVERHEAD;

/// Length of a block's associated data: version, file id, block index.
pub const AAD_LEN: usize = 2 + FILE_ID_LEN + 8;

/// A ciphertext length that no plaintext length produces: a block was cut
/// to `BLOCK_OVERHEAD` bytes or fewer, or the header is incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Fewer than `HEADER_LEN` bytes, but not zero.
    TornHeader,
    /// The last block (this index) is too short to hold any plaintext.
    CutBlock(u64),
}

/// Ciphertext file size for a plaintext size.
pub fn ciphertext_size(plain: u64) -> u64 {
    if plain == 0 {
        return 0;
    }
    let full = plain / BLOCK_SIZE;
    let rest = plain % BLOCK_SIZE;
    let partial = if rest == 0 { 0 } else { rest + BLOCK_OVERHEAD };
    HEADER_LEN as u64 + full * CIPHER_BLOCK_SIZE + partial
}

/// Plaintext size for a ciphertext size, or why that size cannot be.
pub fn plaintext_size(cipher: u64) -> Result<u64, Malformed> {
    if cipher == 0 {
        return Ok(0);
    }
    let body = cipher
        .checked_sub(HEADER_LEN as u64)
        .ok_or(Malformed::TornHeader)?;
    let full = body / CIPHER_BLOCK_SIZE;
    let rest = body % CIPHER_BLOCK_SIZE;
    match rest {
        0 => Ok(full * BLOCK_SIZE),
        r if r <= BLOCK_OVERHEAD => Err(Malformed::CutBlock(full)),
        r => Ok(full * BLOCK_SIZE + r - BLOCK_OVERHEAD),
    }
}

/// The plaintext size to report for a file that may be malformed: the bytes
/// that can be read before the damage.
pub fn plaintext_size_lossy(cipher: u64) -> u64 {
    match plaintext_size(cipher) {
        Ok(size) => size,
        Err(Malformed::TornHeader) => 0,
        Err(Malformed::CutBlock(block)) => block * BLOCK_SIZE,
    }
}

/// Offset of block `index` in the ciphertext file.
pub fn block_offset(index: u64) -> u64 {
    HEADER_LEN as u64 + index * CIPHER_BLOCK_SIZE
}

/// The associated data of block `index` of the file with `file_id`: binds
/// the block to its format, its file and its position.
pub fn block_aad(file_id: &[u8; FILE_ID_LEN], index: u64) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    let (version, rest) = aad.split_at_mut(2);
    let (id, idx) = rest.split_at_mut(FILE_ID_LEN);
    version.copy_from_slice(&FILE_VERSION.to_le_bytes());
    id.copy_from_slice(file_id);
    idx.copy_from_slice(&index.to_le_bytes());
    aad
}

/// A file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub file_id: [u8; FILE_ID_LEN],
}

/// Why a header cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    BadMagic,
    UnsupportedVersion(u16),
    UnknownFlags(u16),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::BadMagic => write!(f, "not a chronicle file: bad magic"),
            HeaderError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "content format version {v}, this build reads {FILE_VERSION}"
                )
            }
            HeaderError::UnknownFlags(flags) => write!(f, "unknown header flags {flags:#x}"),
        }
    }
}

impl FileHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&FILE_MAGIC);
        out[VERSION_OFFSET..FLAGS_OFFSET].copy_from_slice(&FILE_VERSION.to_le_bytes());
        out[FLAGS_OFFSET..FILE_ID_OFFSET].copy_from_slice(&0u16.to_le_bytes());
        out[FILE_ID_OFFSET..HEADER_LEN].copy_from_slice(&self.file_id);
        out
    }

    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, HeaderError> {
        let field = |from: usize, to: usize| &bytes[from..to];
        if field(MAGIC_OFFSET, VERSION_OFFSET) != FILE_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[VERSION_OFFSET], bytes[VERSION_OFFSET + 1]]);
        if version != FILE_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = u16::from_le_bytes([bytes[FLAGS_OFFSET], bytes[FLAGS_OFFSET + 1]]);
        if flags != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let mut file_id = [0u8; FILE_ID_LEN];
        file_id.copy_from_slice(field(FILE_ID_OFFSET, HEADER_LEN));
        Ok(FileHeader { file_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: the worked sizes printed in docs/FORMAT.md.
    #[test]
    fn worked_sizes_match_format_doc() {
        assert_eq!(HEADER_LEN, 24);
        assert_eq!(CIPHER_BLOCK_SIZE, 4124);
        assert_eq!(AAD_LEN, 26);
        for (plain, cipher) in [
            (0, 0),
            (1, 53),
            (4096, 4148),
            (4097, 4177),
            (1 << 20, 1_055_768),
        ] {
            assert_eq!(ciphertext_size(plain), cipher, "plaintext {plain}");
            assert_eq!(plaintext_size(cipher), Ok(plain), "ciphertext {cipher}");
        }
    }

    // Protects: every plaintext size round-trips, and every impossible
    // ciphertext size is reported rather than guessed.
    #[test]
    fn sizes_round_trip_and_reject_cuts() {
        for plain in 0..3 * BLOCK_SIZE + 5 {
            assert_eq!(plaintext_size(ciphertext_size(plain)), Ok(plain));
        }
        assert_eq!(plaintext_size(1), Err(Malformed::TornHeader));
        assert_eq!(plaintext_size(HEADER_LEN as u64), Ok(0));
        assert_eq!(
            plaintext_size(HEADER_LEN as u64 + 28),
            Err(Malformed::CutBlock(0))
        );
        assert_eq!(
            plaintext_size(HEADER_LEN as u64 + CIPHER_BLOCK_SIZE + 3),
            Err(Malformed::CutBlock(1))
        );
        assert_eq!(
            plaintext_size_lossy(HEADER_LEN as u64 + CIPHER_BLOCK_SIZE + 3),
            4096
        );
    }

    // Protects: header round trip, and refusal of unknown versions and flags.
    #[test]
    fn header_codec() {
        let header = FileHeader { file_id: [5; 16] };
        let mut bytes = header.encode();
        assert_eq!(&bytes[..4], b"CHRF");
        assert_eq!(FileHeader::decode(&bytes), Ok(header));
        bytes[VERSION_OFFSET] = 2;
        assert_eq!(
            FileHeader::decode(&bytes),
            Err(HeaderError::UnsupportedVersion(2))
        );
        bytes[VERSION_OFFSET] = 1;
        bytes[FLAGS_OFFSET] = 1;
        assert_eq!(
            FileHeader::decode(&bytes),
            Err(HeaderError::UnknownFlags(1))
        );
        bytes[0] = b'X';
        assert_eq!(FileHeader::decode(&bytes), Err(HeaderError::BadMagic));
    }
}
