//! Integrity: every way of changing the ciphertext that the format promises
//! to detect yields an authentication error naming the file and the block.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chronicle_mount::cipher::Backend;
use chronicle_mount::content::{ContentCrypto, EncryptedFile};
use chronicle_mount::layout::{block_offset, CIPHER_BLOCK_SIZE, HEADER_LEN};
use chronicle_mount::{SecretKey, VolumeError};

const BLOCK: usize = 4096;

fn crypto() -> Arc<ContentCrypto> {
    Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([7; 32]),
        Backend::RustCrypto,
    ))
}

fn open(path: &Path) -> Result<EncryptedFile, VolumeError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open backing file");
    EncryptedFile::open(file, crypto(), path.to_path_buf())
}

/// A file of `blocks` full blocks, block i filled with byte i+1.
fn make(dir: &Path, name: &str, blocks: usize) -> PathBuf {
    let path = dir.join(name);
    let file = open(&path).expect("open");
    for i in 0..blocks {
        file.write_at((i * BLOCK) as u64, &vec![i as u8 + 1; BLOCK])
            .expect("write");
    }
    path
}

fn read_block(path: &Path, index: u64) -> Result<Vec<u8>, VolumeError> {
    let file = open(path)?;
    let mut buf = vec![0u8; BLOCK];
    let n = file.read_at(index * BLOCK as u64, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

fn assert_auth_failure(result: Result<Vec<u8>, VolumeError>, path: &Path, block: u64) {
    match result {
        Err(VolumeError::AuthenticationFailed { file, block: b }) => {
            assert_eq!(b, block, "wrong block named");
            assert_eq!(
                file.canonicalize().ok(),
                path.canonicalize().ok(),
                "wrong file named"
            );
            let text = VolumeError::AuthenticationFailed { file, block: b }.to_string();
            assert!(text.starts_with("authentication failed: "), "{text}");
            assert!(text.ends_with(&format!(" block {block}")), "{text}");
        }
        other => panic!("expected authentication failure of block {block}, got {other:?}"),
    }
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut raw = fs::read(path).expect("read raw");
    f(&mut raw);
    fs::write(path, raw).expect("write raw");
}

// Protects: a flipped bit anywhere in a block (nonce, ciphertext or tag)
// fails that block only.
#[test]
fn flipped_bits_fail_their_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (what, within) in [
        ("nonce", 3usize),
        ("ciphertext", 500),
        ("tag", CIPHER_BLOCK_SIZE as usize - 1),
    ] {
        let path = make(dir.path(), what, 3);
        edit(&path, |raw| raw[block_offset(1) as usize + within] ^= 0x04);
        assert_auth_failure(read_block(&path, 1), &path, 1);
        assert_eq!(
            read_block(&path, 0).expect("block 0 intact"),
            vec![1u8; BLOCK],
            "{what}"
        );
        assert_eq!(
            read_block(&path, 2).expect("block 2 intact"),
            vec![3u8; BLOCK],
            "{what}"
        );
    }
}

// Protects: a block moved to another offset of the same file fails.
#[test]
fn swapped_blocks_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "f", 2);
    edit(&path, |raw| {
        let (a, b) = (block_offset(0) as usize, block_offset(1) as usize);
        let first = raw[a..b].to_vec();
        let second = raw[b..b + CIPHER_BLOCK_SIZE as usize].to_vec();
        raw[a..b].copy_from_slice(&second);
        raw[b..b + CIPHER_BLOCK_SIZE as usize].copy_from_slice(&first);
    });
    assert_auth_failure(read_block(&path, 0), &path, 0);
    assert_auth_failure(read_block(&path, 1), &path, 1);
}

// Protects: a block copied into another file, at the same index, fails.
#[test]
fn block_moved_between_files_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = make(dir.path(), "a", 2);
    let b = make(dir.path(), "b", 2);
    let from_a = fs::read(&a).expect("raw a");
    edit(&b, |raw| {
        let at = block_offset(1) as usize;
        raw[at..at + CIPHER_BLOCK_SIZE as usize]
            .copy_from_slice(&from_a[at..at + CIPHER_BLOCK_SIZE as usize]);
    });
    assert_auth_failure(read_block(&b, 1), &b, 1);
    assert_eq!(read_block(&b, 0).expect("block 0 intact"), vec![1u8; BLOCK]);
}

// Protects: a header swapped between two files makes the blocks fail.
#[test]
fn swapped_header_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = make(dir.path(), "a", 1);
    let b = make(dir.path(), "b", 1);
    let header_a = fs::read(&a).expect("raw a")[..HEADER_LEN].to_vec();
    edit(&b, |raw| raw[..HEADER_LEN].copy_from_slice(&header_a));
    assert_auth_failure(read_block(&b, 0), &b, 0);
}

// Protects: a cut inside a block fails that block, whatever is left of it.
#[test]
fn cut_inside_a_block_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    for keep in [1usize, 20, 28, 29, 1000, CIPHER_BLOCK_SIZE as usize - 1] {
        let path = make(dir.path(), &format!("cut{keep}"), 3);
        edit(&path, |raw| raw.truncate(block_offset(2) as usize + keep));
        assert_auth_failure(read_block(&path, 2), &path, 2);
        assert_eq!(
            read_block(&path, 1).expect("block 1 intact"),
            vec![2u8; BLOCK],
            "keep {keep}"
        );
    }
}

// Protects: a damaged header is refused with a clear error, not read.
#[test]
fn bad_header_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "f", 1);
    edit(&path, |raw| raw[0] = b'X');
    assert!(matches!(
        open(&path),
        Err(VolumeError::BadFileHeader { .. })
    ));
    let torn = make(dir.path(), "torn", 1);
    edit(&torn, |raw| raw.truncate(10));
    assert!(matches!(
        open(&torn),
        Err(VolumeError::BadFileHeader { .. })
    ));
}

// Protects: the documented limit (docs/SECURITY.md): cutting whole blocks
// off the end, like deleting or rolling back a whole file, is not detected
// by the content format.
#[test]
fn whole_block_truncation_is_a_documented_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "f", 3);
    edit(&path, |raw| raw.truncate(block_offset(2) as usize));
    assert_eq!(
        open(&path).expect("open").len().expect("len"),
        2 * BLOCK as u64
    );
}

/// Known answer: this file (header + one block) was written by the format
/// described in docs/FORMAT.md with master key 0x11 * 32.
const KAT_FILE: &str = include_str!("kat_block.hex");
const KAT_PLAINTEXT: &[u8] = b"Chronicle known-answer block: AES-256-GCM, HKDF-SHA256 file key.\n";

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

// Protects: the on-disk format. The library reads a file written by an
// earlier build, and an independent decryption following docs/FORMAT.md
// (HKDF file key, AAD = version || file id || index) agrees.
#[test]
fn known_answer_block() {
    let raw = unhex(KAT_FILE);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kat");
    fs::write(&path, &raw).expect("write");
    for backend in Backend::ALL {
        let crypto = Arc::new(ContentCrypto::new(
            SecretKey::from_bytes([0x11; 32]),
            backend,
        ));
        let file = fs::File::open(&path).expect("open");
        let file = EncryptedFile::open(file, crypto, path.clone()).expect("open kat");
        let mut out = Vec::new();
        file.read_to_end(&mut out).expect("read kat");
        assert_eq!(out, KAT_PLAINTEXT);
    }

    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let file_id = &raw[8..24];
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &[0x11; 32]);
    let mut key = [0u8; 32];
    hk.expand_multi_info(&[b"chronicle content v1", file_id], &mut key)
        .expect("hkdf");
    let block = &raw[HEADER_LEN..];
    let (nonce, rest) = block.split_at(12);
    let (body, tag) = rest.split_at(rest.len() - 16);
    let mut aad = Vec::new();
    aad.extend_from_slice(&1u16.to_le_bytes());
    aad.extend_from_slice(file_id);
    aad.extend_from_slice(&0u64.to_le_bytes());
    let mut plain = body.to_vec();
    aes_gcm::Aes256Gcm::new((&key).into())
        .decrypt_in_place_detached(nonce.into(), &aad, &mut plain, tag.into())
        .expect("independent decryption");
    assert_eq!(plain, KAT_PLAINTEXT);
}
