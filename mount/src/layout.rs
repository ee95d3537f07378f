//! The byte layout of an encrypted file (docs/FORMAT.md draws it):
//!
//! ```text
//! [header: magic "CHRF" | version u16 LE | flags u16 LE | file id 16
//!          | content id 16 | pending size u64 LE | header tag 16]
//! [block 0: key id 12 | nonce 12 | ciphertext 1..=4096 | tag 16]
//! [block 1: ...]
//! ```
//!
//! A file that never held a byte has no header; one that was emptied keeps
//! its header alone. Every block but the last holds exactly `BLOCK_SIZE`
//! plaintext bytes, and only the last is sealed as last, so the file's end
//! is authenticated. Offsets are pure arithmetic: sizes convert both ways
//! without reading the file.

use crate::cipher::{NONCE_LEN, TAG_LEN};

/// Plaintext bytes per block.
pub const BLOCK_SIZE: u64 = 4096;
/// Magic number that opens every encrypted file that has a header.
pub const FILE_MAGIC: [u8; 4] = *b"CHRF";
/// The content format version written and read by this build.
pub const FILE_VERSION: u16 = 2;
/// Length of the random file and content identifiers.
pub const FILE_ID_LEN: usize = 16;
/// Length of the header's authentication tag.
pub const HEADER_TAG_LEN: usize = 16;
/// Length of the key identifier in front of each block: which of the file's
/// sealing keys sealed it (see `content`).
pub const KEY_ID_LEN: usize = 12;

/// Header flag: the file may hold holes (all-zero stored blocks that read as
/// zeros). Without it, an all-zero block is a forgery.
pub const FLAG_SPARSE: u16 = 1;
/// Header flag: the file holds blocks (so a file cut back to its header is
/// told apart from an empty one).
pub const FLAG_HAS_BLOCKS: u16 = 2;
/// Every header flag this build understands.
pub const KNOWN_FLAGS: u16 = FLAG_SPARSE | FLAG_HAS_BLOCKS;

/// Header field offsets, each derived from the one before.
pub const MAGIC_OFFSET: usize = 0;
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + FILE_MAGIC.len();
pub const FLAGS_OFFSET: usize = VERSION_OFFSET + 2;
pub const FILE_ID_OFFSET: usize = FLAGS_OFFSET + 2;
pub const CONTENT_ID_OFFSET: usize = FILE_ID_OFFSET + FILE_ID_LEN;
pub const PENDING_SIZE_OFFSET: usize = CONTENT_ID_OFFSET + FILE_ID_LEN;
pub const HEADER_TAG_OFFSET: usize = PENDING_SIZE_OFFSET + 8;
/// Total header length.
pub const HEADER_LEN: usize = HEADER_TAG_OFFSET + HEADER_TAG_LEN;

/// Per-block overhead: key id and nonce in front, the tag behind.
pub const BLOCK_OVERHEAD: u64 = (KEY_ID_LEN + NONCE_LEN + TAG_LEN) as u64;
/// On-disk size of a full block.
pub const CIPHER_BLOCK_SIZE: u64 = BLOCK_SIZE + BLOCK_OVERHEAD;

/// Length of a block's associated data: version, content id, block index,
/// and whether it is the file's last block.
pub const AAD_LEN: usize = 2 + FILE_ID_LEN + 8 + 1;

/// A ciphertext length that no plaintext length produces: a block was cut
/// to `BLOCK_OVERHEAD` bytes or fewer, or the header is incomplete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Fewer than `HEADER_LEN` bytes, but not zero.
    TornHeader,
    /// The last block (this index) is too short to hold any plaintext.
    CutBlock(u64),
}

/// Ciphertext file size for a plaintext size, for a file with a header
/// (an emptied file keeps its header: `HEADER_LEN`).
pub fn ciphertext_size(plain: u64) -> u64 {
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

/// The plaintext size to report for a file that may be malformed. A cut
/// block counts one byte, so that a program reading to the end reaches the
/// damage and gets an error there, rather than a clean, shorter file.
pub fn plaintext_size_lossy(cipher: u64) -> u64 {
    match plaintext_size(cipher) {
        Ok(size) => size,
        Err(Malformed::TornHeader) => 0,
        Err(Malformed::CutBlock(block)) => block * BLOCK_SIZE + 1,
    }
}

/// Offset of block `index` in the ciphertext file.
pub fn block_offset(index: u64) -> u64 {
    HEADER_LEN as u64 + index * CIPHER_BLOCK_SIZE
}

/// The block that holds ciphertext byte `offset` (the header counts as
/// part of block 0).
pub fn block_at(offset: u64) -> u64 {
    offset.saturating_sub(HEADER_LEN as u64) / CIPHER_BLOCK_SIZE
}

/// Number of blocks of a file of `plain` plaintext bytes.
pub fn block_count(plain: u64) -> u64 {
    plain.div_ceil(BLOCK_SIZE)
}

/// The associated data of block `index` of the contents `content_id`:
/// binds the block to its format, its file's contents, its position and
/// whether the file ends with it (so a cut or an extension is detected).
pub fn block_aad(content_id: &[u8; FILE_ID_LEN], index: u64, last: bool) -> [u8; AAD_LEN] {
    let mut aad = [0u8; AAD_LEN];
    let (version, rest) = aad.split_at_mut(2);
    let (id, rest) = rest.split_at_mut(FILE_ID_LEN);
    let (idx, last_flag) = rest.split_at_mut(8);
    version.copy_from_slice(&FILE_VERSION.to_le_bytes());
    id.copy_from_slice(content_id);
    idx.copy_from_slice(&index.to_le_bytes());
    last_flag[0] = u8::from(last);
    aad
}

/// A file header. Its tag is computed by the caller (it needs the master
/// key); `encode_unsigned` gives the bytes the tag covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub flags: u16,
    /// Stable for the file's life: extended attributes are bound to it.
    pub file_id: [u8; FILE_ID_LEN],
    /// Keys and binds the blocks; new whenever the file gets its first block.
    pub content_id: [u8; FILE_ID_LEN],
    /// While a shrink is under way, the size it cuts to; 0 otherwise. Lets
    /// `fsck --repair` tell a shrink cut short by a crash from a block
    /// planted to look like one.
    pub pending_size: u64,
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
    pub fn sparse(&self) -> bool {
        self.flags & FLAG_SPARSE != 0
    }

    pub fn has_blocks(&self) -> bool {
        self.flags & FLAG_HAS_BLOCKS != 0
    }

    /// The header's bytes before its tag: what the tag authenticates.
    pub fn encode_unsigned(&self) -> [u8; HEADER_TAG_OFFSET] {
        let mut out = [0u8; HEADER_TAG_OFFSET];
        out[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&FILE_MAGIC);
        out[VERSION_OFFSET..FLAGS_OFFSET].copy_from_slice(&FILE_VERSION.to_le_bytes());
        out[FLAGS_OFFSET..FILE_ID_OFFSET].copy_from_slice(&self.flags.to_le_bytes());
        out[FILE_ID_OFFSET..CONTENT_ID_OFFSET].copy_from_slice(&self.file_id);
        out[CONTENT_ID_OFFSET..PENDING_SIZE_OFFSET].copy_from_slice(&self.content_id);
        out[PENDING_SIZE_OFFSET..HEADER_TAG_OFFSET]
            .copy_from_slice(&self.pending_size.to_le_bytes());
        out
    }

    /// The whole header with its tag.
    pub fn encode(&self, tag: &[u8; HEADER_TAG_LEN]) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..HEADER_TAG_OFFSET].copy_from_slice(&self.encode_unsigned());
        out[HEADER_TAG_OFFSET..].copy_from_slice(tag);
        out
    }

    /// Parses a header and returns it with its stored tag, which the caller
    /// must check before trusting any field.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<(Self, [u8; HEADER_TAG_LEN]), HeaderError> {
        let field = |from: usize, to: usize| &bytes[from..to];
        if field(MAGIC_OFFSET, VERSION_OFFSET) != FILE_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[VERSION_OFFSET], bytes[VERSION_OFFSET + 1]]);
        if version != FILE_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = u16::from_le_bytes([bytes[FLAGS_OFFSET], bytes[FLAGS_OFFSET + 1]]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let mut pending = [0u8; 8];
        pending.copy_from_slice(field(PENDING_SIZE_OFFSET, HEADER_TAG_OFFSET));
        let mut header = FileHeader {
            flags,
            file_id: [0; FILE_ID_LEN],
            content_id: [0; FILE_ID_LEN],
            pending_size: u64::from_le_bytes(pending),
        };
        header
            .file_id
            .copy_from_slice(field(FILE_ID_OFFSET, CONTENT_ID_OFFSET));
        header
            .content_id
            .copy_from_slice(field(CONTENT_ID_OFFSET, PENDING_SIZE_OFFSET));
        let mut tag = [0u8; HEADER_TAG_LEN];
        tag.copy_from_slice(field(HEADER_TAG_OFFSET, HEADER_LEN));
        Ok((header, tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Protects: the worked sizes printed in docs/FORMAT.md.
    #[test]
    fn worked_sizes_match_format_doc() {
        assert_eq!(HEADER_LEN, 64);
        assert_eq!(BLOCK_OVERHEAD, 40);
        assert_eq!(CIPHER_BLOCK_SIZE, 4136);
        assert_eq!(AAD_LEN, 27);
        for (plain, cipher) in [
            (0, 64),
            (1, 105),
            (4096, 4200),
            (4097, 4241),
            (1 << 20, 1_058_880),
        ] {
            assert_eq!(ciphertext_size(plain), cipher, "plaintext {plain}");
            assert_eq!(plaintext_size(cipher), Ok(plain), "ciphertext {cipher}");
        }
        assert_eq!(plaintext_size(0), Ok(0));
    }

    // Protects: every plaintext size round-trips, and every impossible
    // ciphertext size is reported rather than guessed.
    #[test]
    fn sizes_round_trip_and_reject_cuts() {
        for plain in 0..3 * BLOCK_SIZE + 5 {
            assert_eq!(plaintext_size(ciphertext_size(plain)), Ok(plain));
            assert_eq!(block_count(plain), plain.div_ceil(4096));
        }
        assert_eq!(plaintext_size(1), Err(Malformed::TornHeader));
        assert_eq!(plaintext_size(HEADER_LEN as u64), Ok(0));
        assert_eq!(
            plaintext_size(HEADER_LEN as u64 + BLOCK_OVERHEAD),
            Err(Malformed::CutBlock(0))
        );
        assert_eq!(
            plaintext_size(HEADER_LEN as u64 + CIPHER_BLOCK_SIZE + 3),
            Err(Malformed::CutBlock(1))
        );
        assert_eq!(
            plaintext_size_lossy(HEADER_LEN as u64 + CIPHER_BLOCK_SIZE + 3),
            4097
        );
        assert_eq!(block_at(0), 0);
        assert_eq!(block_at(block_offset(7)), 7);
        assert_eq!(block_at(block_offset(7) - 1), 6);
    }

    // Protects: the last-block flag and the position are both in the
    // associated data, so neither can be changed without detection.
    #[test]
    fn aad_binds_position_and_end() {
        let id = [3u8; FILE_ID_LEN];
        assert_ne!(block_aad(&id, 1, false), block_aad(&id, 1, true));
        assert_ne!(block_aad(&id, 1, false), block_aad(&id, 2, false));
        assert_eq!(block_aad(&id, 1, true)[AAD_LEN - 1], 1);
    }

    // Protects: header round trip, and refusal of unknown versions and flags.
    #[test]
    fn header_codec() {
        let header = FileHeader {
            flags: FLAG_SPARSE,
            file_id: [5; 16],
            content_id: [6; 16],
            pending_size: 12345,
        };
        let mut bytes = header.encode(&[7; HEADER_TAG_LEN]);
        assert_eq!(&bytes[..4], b"CHRF");
        assert_eq!(
            FileHeader::decode(&bytes),
            Ok((header, [7; HEADER_TAG_LEN]))
        );
        bytes[VERSION_OFFSET] = 1;
        assert_eq!(
            FileHeader::decode(&bytes),
            Err(HeaderError::UnsupportedVersion(1))
        );
        bytes[VERSION_OFFSET] = 2;
        bytes[FLAGS_OFFSET] = 4;
        assert_eq!(
            FileHeader::decode(&bytes),
            Err(HeaderError::UnknownFlags(4))
        );
        bytes[0] = b'X';
        assert_eq!(FileHeader::decode(&bytes), Err(HeaderError::BadMagic));
    }
}
