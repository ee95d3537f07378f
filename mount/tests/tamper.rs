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

/// Opens `path`, creating it (with its header) if it does not exist.
fn open(path: &Path) -> Result<EncryptedFile, VolumeError> {
    let exists = path.exists();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .expect("open backing file");
    if exists {
        EncryptedFile::open(file, crypto(), path.to_path_buf())
    } else {
        EncryptedFile::create(file, crypto(), path.to_path_buf())
    }
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

// Protects: a flipped bit anywhere in a block (key id, nonce, ciphertext or
// tag) fails that block only.
#[test]
fn flipped_bits_fail_their_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (what, within) in [
        ("key id", 3usize),
        ("nonce", 15),
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

// Protects: a cut inside a block fails that block, whatever is left of it
// (1 to 40 bytes, which no length of plaintext leaves, included); the
// blocks before it still read.
#[test]
fn cut_inside_a_block_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    for keep in [1usize, 20, 28, 40, 41, 1000, CIPHER_BLOCK_SIZE as usize - 1] {
        let path = make(dir.path(), &format!("cut{keep}"), 3);
        edit(&path, |raw| raw.truncate(block_offset(2) as usize + keep));
        assert_auth_failure(read_block(&path, 2), &path, 2);
        assert_eq!(
            read_block(&path, 1).expect("block 1 intact"),
            vec![2u8; BLOCK],
            "keep {keep}"
        );
        let mut bad = Vec::new();
        open(&path)
            .expect("open")
            .verify_each(|e| bad.push(e.to_string()))
            .expect("verify");
        assert_eq!(bad.len(), 1, "keep {keep}: {bad:?}");
    }
}

// Protects: a cut at a block boundary is detected: the new last block was
// not sealed as the file's end. (Format version 1 missed this.)
#[test]
fn cut_at_a_block_boundary_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "f", 3);
    edit(&path, |raw| raw.truncate(block_offset(2) as usize));
    assert_auth_failure(read_block(&path, 1), &path, 1);
    assert_eq!(read_block(&path, 0).expect("block 0"), vec![1u8; BLOCK]);
    // Cut back to the header alone: not an empty file.
    let path = make(dir.path(), "g", 2);
    edit(&path, |raw| raw.truncate(HEADER_LEN));
    let file = open(&path).expect("open");
    assert!(
        file.damage().is_some(),
        "a file cut to its header is damaged"
    );
    assert_auth_failure(read_block(&path, 0), &path, 0);
    // Cut to nothing: the header is missing.
    let path = make(dir.path(), "h", 1);
    edit(&path, |raw| raw.clear());
    assert!(matches!(
        read_block(&path, 0),
        Err(VolumeError::BadFileHeader { .. })
    ));
}

// Protects: blocks appended behind the last block are detected: the old
// last block was sealed as the end, and an appended block is bound to
// another position or another file.
#[test]
fn appended_blocks_fail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "f", 3);
    let copy =
        fs::read(&path).expect("raw")[block_offset(1) as usize..block_offset(2) as usize].to_vec();
    edit(&path, |raw| raw.extend_from_slice(&copy));
    assert_auth_failure(read_block(&path, 2), &path, 2);
    assert_auth_failure(read_block(&path, 3), &path, 3);
    assert_eq!(read_block(&path, 1).expect("block 1"), vec![2u8; BLOCK]);
}

// Protects: blocks that a shrink cut off and an attacker put back are
// detected when a read reaches the file's current last block. The
// documented limit (docs/SECURITY.md): a read of only the resurrected
// block itself returns its old, authentic contents, as a rollback of the
// whole file would.
#[test]
fn resurrected_blocks_after_a_shrink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "f", 4);
    let old = fs::read(&path).expect("raw");
    open(&path)
        .expect("open")
        .set_len(3 * BLOCK as u64)
        .expect("shrink");
    edit(&path, |raw| {
        raw.extend_from_slice(&old[block_offset(3) as usize..])
    });
    assert_auth_failure(read_block(&path, 2), &path, 2);
    assert_eq!(
        read_block(&path, 3).expect("documented limit"),
        vec![4u8; BLOCK]
    );
}

// Protects: a header planted from another file (the gocryptfs audit's file
// ID poisoning) lends this file neither the victim's contents nor its keys:
// a header-only file with a victim's header is damaged, and once emptied
// and written through the API its blocks are sealed under a new content id,
// so they fail in the victim.
#[test]
fn planted_header_poisons_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = make(dir.path(), "victim", 2);
    let planted = dir.path().join("planted");
    fs::write(&planted, &fs::read(&victim).expect("raw")[..HEADER_LEN]).expect("plant");
    let file = open(&planted).expect("open");
    assert!(file.damage().is_some(), "header says blocks, file has none");
    file.set_len(0).expect("emptying repairs");
    file.write_at(0, &vec![9u8; 2 * BLOCK]).expect("write");
    let forged = fs::read(&planted).expect("raw");
    edit(&victim, |raw| {
        let at = block_offset(0) as usize;
        raw[at..at + CIPHER_BLOCK_SIZE as usize]
            .copy_from_slice(&forged[at..at + CIPHER_BLOCK_SIZE as usize]);
    });
    assert_auth_failure(read_block(&victim, 0), &victim, 0);
}

// Protects: in a file that never had a hole, a block of zeros is a forgery.
// The documented limit (docs/SECURITY.md): in a file that has had holes
// made in it (its header says so, authenticated), a zeroed block other
// than the last reads as a hole.
#[test]
fn zeroed_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "dense", 3);
    let zero = |raw: &mut Vec<u8>| {
        let at = block_offset(1) as usize;
        raw[at..at + CIPHER_BLOCK_SIZE as usize].fill(0);
    };
    edit(&path, zero);
    assert_auth_failure(read_block(&path, 1), &path, 1);

    let path = make(dir.path(), "sparse", 3);
    open(&path)
        .expect("open")
        .punch_hole(0, BLOCK as u64)
        .expect("punch");
    edit(&path, zero);
    assert_eq!(
        read_block(&path, 1).expect("documented limit"),
        vec![0u8; BLOCK]
    );
    // The last block is never a hole.
    edit(&path, |raw| {
        let at = block_offset(2) as usize;
        raw[at..].fill(0);
    });
    assert_auth_failure(read_block(&path, 2), &path, 2);
}

// Protects: the header is authenticated: no flag (such as the one that
// allows holes) and no id can be edited; a damaged header is reported on
// read, and the file can still be emptied.
#[test]
fn bad_header_refused() {
    use chronicle_mount::layout::FLAGS_OFFSET;
    let dir = tempfile::tempdir().expect("tempdir");
    for (what, damage) in [
        (
            "magic",
            Box::new(|raw: &mut Vec<u8>| raw[0] = b'X') as Box<dyn Fn(&mut Vec<u8>)>,
        ),
        (
            "sparse flag",
            Box::new(|raw: &mut Vec<u8>| raw[FLAGS_OFFSET] |= 1),
        ),
        ("file id", Box::new(|raw: &mut Vec<u8>| raw[10] ^= 1)),
        (
            "tag",
            Box::new(|raw: &mut Vec<u8>| raw[HEADER_LEN - 1] ^= 1),
        ),
        ("torn", Box::new(|raw: &mut Vec<u8>| raw.truncate(10))),
    ] {
        let path = make(dir.path(), what, 1);
        edit(&path, damage);
        let file = open(&path).expect("open");
        assert!(
            matches!(
                file.read_at(0, &mut [0u8; 10]),
                Err(VolumeError::BadFileHeader { .. })
            ),
            "{what}"
        );
        file.set_len(0).expect("emptying a damaged file");
        file.write_at(0, b"new").expect("write after emptying");
    }
}

// Protects: the nonce budget. A key seals at most its budget of blocks,
// then the file moves to a fresh key; blocks under every key stay readable.
#[test]
fn keys_are_replaced_at_their_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    let crypto = Arc::new(
        ContentCrypto::new(SecretKey::from_bytes([7; 32]), Backend::Ring).with_seals_per_key(5),
    );
    let backing = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create");
    let file = EncryptedFile::create(backing, Arc::clone(&crypto), path.clone()).expect("wrap");
    let mut key_ids = std::collections::BTreeSet::new();
    for i in 0..12u64 {
        file.write_at(i * BLOCK as u64, &vec![i as u8; BLOCK])
            .expect("write");
        assert!(file.seals_under_current_key() <= 5);
        let raw = fs::read(&path).expect("raw");
        let at = block_offset(i) as usize;
        key_ids.insert(raw[at..at + 12].to_vec());
    }
    assert!(
        key_ids.len() >= 3,
        "12 blocks, ~20 seals, budget 5: {key_ids:?}"
    );
    let mut all = Vec::new();
    file.read_to_end(&mut all).expect("read");
    for (i, block) in all.chunks(BLOCK).enumerate() {
        assert_eq!(block, vec![i as u8; BLOCK], "block {i}");
    }
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

fn hkdf(info: &[&[u8]]) -> [u8; 32] {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &[0x11; 32]);
    let mut out = [0u8; 32];
    hk.expand_multi_info(info, &mut out).expect("hkdf");
    out
}

// Protects: the on-disk format. The library reads a file written by an
// earlier build, and an independent check following docs/FORMAT.md agrees:
// header tag = HKDF(master, "chronicle header v2" ‖ header[0..48])[0..16];
// block key = HKDF(master, "chronicle content v2" ‖ content id ‖ key id);
// AAD = version ‖ content id ‖ index ‖ last.
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
    assert_eq!(
        &raw[..8],
        b"CHRF\x02\x00\x02\x00",
        "magic, version 2, flags: has blocks"
    );
    assert_eq!(&raw[40..48], &[0u8; 8], "no shrink pending");
    let tag = hkdf(&[b"chronicle header v2", &raw[..48]]);
    assert_eq!(&raw[48..64], &tag[..16], "header tag");
    let content_id = &raw[24..40];
    let block = &raw[HEADER_LEN..];
    let (key_id, rest) = block.split_at(12);
    let (nonce, rest) = rest.split_at(12);
    let (body, tag) = rest.split_at(rest.len() - 16);
    let key = hkdf(&[b"chronicle content v2", content_id, key_id]);
    let mut aad = Vec::new();
    aad.extend_from_slice(&2u16.to_le_bytes());
    aad.extend_from_slice(content_id);
    aad.extend_from_slice(&0u64.to_le_bytes());
    aad.push(1);
    let mut plain = body.to_vec();
    aes_gcm::Aes256Gcm::new((&key).into())
        .decrypt_in_place_detached(nonce.into(), &aad, &mut plain, tag.into())
        .expect("independent decryption");
    assert_eq!(plain, KAT_PLAINTEXT);
}
