//! `repair_tail` (fsck --repair): what a crash leaves at the end of a file
//! is repaired and everything before it kept; any other damage is reported
//! and the file left exactly as it was.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chronicle_mount::cipher::Backend;
use chronicle_mount::content::{ContentCrypto, EncryptedFile, TailRepair};
use chronicle_mount::layout::{block_offset, HEADER_LEN};
use chronicle_mount::SecretKey;

const BLOCK: usize = 4096;

fn crypto() -> Arc<ContentCrypto> {
    Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([8; 32]),
        Backend::Ring,
    ))
}

fn open(path: &Path) -> EncryptedFile {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    EncryptedFile::open(file, crypto(), path.to_path_buf()).expect("wrap")
}

/// A file holding `content`.
fn make(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create");
    let file = EncryptedFile::create(file, crypto(), path.clone()).expect("wrap");
    file.write_at(0, content).expect("write");
    path
}

fn content(blocks: usize, extra: usize) -> Vec<u8> {
    (0..blocks * BLOCK + extra)
        .map(|i| (i / BLOCK) as u8 + 1)
        .collect()
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    open(path).read_to_end(&mut out).expect("read after repair");
    out
}

fn verify_clean(path: &Path) {
    let mut bad = Vec::new();
    open(path)
        .verify_each(|e| bad.push(e.to_string()))
        .expect("verify");
    assert_eq!(bad, Vec::<String>::new());
}

fn repaired(outcome: TailRepair) -> u64 {
    match outcome {
        TailRepair::Repaired { size, .. } => size,
        other => panic!("expected a repair, got {other:?}"),
    }
}

// Protects: the crash shapes at the end of a file are repaired, keeping
// every block before the damage: a short last write (a partial block, or a
// fragment of up to 40 bytes), an extension stopped at a block boundary,
// and a shrink stopped before its cut.
#[test]
fn crash_shapes_are_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = content(3, 1000);

    let short = make(dir.path(), "short", &data);
    let len = fs::metadata(&short).expect("stat").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .expect("open")
        .set_len(len - 300)
        .expect("cut");
    assert_eq!(
        repaired(open(&short).repair_tail().expect("repair")),
        3 * BLOCK as u64
    );
    assert_eq!(read_all(&short), data[..3 * BLOCK]);
    verify_clean(&short);

    let fragment = make(dir.path(), "fragment", &data);
    let raw = fs::read(&fragment).expect("raw");
    fs::write(&fragment, &raw[..block_offset(3) as usize + 20]).expect("cut");
    assert_eq!(
        repaired(open(&fragment).repair_tail().expect("repair")),
        3 * BLOCK as u64
    );
    assert_eq!(read_all(&fragment), data[..3 * BLOCK]);

    let boundary = make(dir.path(), "boundary", &data);
    let raw = fs::read(&boundary).expect("raw");
    fs::write(&boundary, &raw[..block_offset(2) as usize]).expect("cut");
    assert_eq!(
        repaired(open(&boundary).repair_tail().expect("repair")),
        2 * BLOCK as u64
    );
    assert_eq!(read_all(&boundary), data[..2 * BLOCK]);
    verify_clean(&boundary);

    // A shrink to 2.5 blocks that wrote its new last block but did not cut.
    let shrink = make(dir.path(), "shrink", &data);
    let before = fs::read(&shrink).expect("raw");
    open(&shrink)
        .set_len(2 * BLOCK as u64 + 2048)
        .expect("shrink");
    let after = fs::read(&shrink).expect("raw");
    let mut crashed = before.clone();
    crashed[block_offset(2) as usize..after.len()]
        .copy_from_slice(&after[block_offset(2) as usize..]);
    // The header as the shrink left it: the size it cuts to recorded.
    crashed[..HEADER_LEN].copy_from_slice(&header_with_pending(&after, 2 * BLOCK as u64 + 2048));
    fs::write(&shrink, &crashed).expect("crash state");
    assert_eq!(
        repaired(open(&shrink).repair_tail().expect("repair")),
        2 * BLOCK as u64 + 2048
    );
    assert_eq!(read_all(&shrink), data[..2 * BLOCK + 2048]);
    verify_clean(&shrink);

    // The same shrink stopped before it wrote anything but its record: the
    // old contents stay, whole.
    let early = make(dir.path(), "early", &data);
    let mut raw = fs::read(&early).expect("raw");
    let header = header_with_pending(&raw, 100);
    raw[..HEADER_LEN].copy_from_slice(&header);
    fs::write(&early, &raw).expect("crash state");
    assert_eq!(
        repaired(open(&early).repair_tail().expect("repair")),
        data.len() as u64
    );
    assert_eq!(read_all(&early), data);
    verify_clean(&early);
}

/// `raw`'s header with its pending size set, tagged as docs/FORMAT.md says
/// (computed here independently of the library).
fn header_with_pending(raw: &[u8], pending: u64) -> Vec<u8> {
    use chronicle_mount::layout::{HEADER_TAG_OFFSET, PENDING_SIZE_OFFSET};
    let mut header = raw[..HEADER_LEN].to_vec();
    header[PENDING_SIZE_OFFSET..HEADER_TAG_OFFSET].copy_from_slice(&pending.to_le_bytes());
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &[8; 32]);
    let mut tag = [0u8; 32];
    hk.expand_multi_info(
        &[b"chronicle header v2", &header[..HEADER_TAG_OFFSET]],
        &mut tag,
    )
    .expect("hkdf");
    header[HEADER_TAG_OFFSET..].copy_from_slice(&tag[..16]);
    header
}

// Protects: what only looks like a crash is left alone: an old block of the
// same file planted in the middle (sealed as the end of an older, shorter
// version) with the current blocks intact behind it; a cut fragment behind
// zeroed blocks of a sparse file (which must not be sealed as a forged end).
#[test]
fn planted_crash_shapes_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = make(dir.path(), "f", &content(2, 100));
    let old_end = fs::read(&path).expect("raw")[block_offset(2) as usize..].to_vec();
    let file = open(&path);
    file.write_at(2 * BLOCK as u64, &content(4, 0)[..2 * BLOCK + 500])
        .expect("grow");
    drop(file);
    let mut raw = fs::read(&path).expect("raw");
    let at = block_offset(2) as usize;
    raw[at..at + old_end.len()].copy_from_slice(&old_end);
    fs::write(&path, &raw).expect("plant");
    let outcome = open(&path).repair_tail().expect("repair");
    assert!(
        matches!(outcome, TailRepair::NotACrash { .. }),
        "{outcome:?}"
    );
    assert_eq!(fs::read(&path).expect("raw"), raw, "nothing cut");

    let sparse = make(dir.path(), "sparse", &content(3, 0));
    open(&sparse).punch_hole(0, BLOCK as u64).expect("punch");
    let mut raw = fs::read(&sparse).expect("raw");
    let at = block_offset(2) as usize;
    raw[at..].fill(0);
    raw.extend_from_slice(&vec![0u8; 2 * 4136]);
    raw.push(1);
    fs::write(&sparse, &raw).expect("forge");
    let mut buf = vec![0u8; BLOCK];
    assert!(
        open(&sparse).read_at(2 * BLOCK as u64, &mut buf).is_err(),
        "zeroed blocks behind a cut are not holes"
    );
    let outcome = open(&sparse).repair_tail().expect("repair");
    assert!(
        matches!(outcome, TailRepair::NotACrash { .. }),
        "{outcome:?}"
    );
    assert_eq!(fs::read(&sparse).expect("raw"), raw, "nothing sealed");
}

// Protects: header-level crash shapes: a file created but never given its
// header (zero bytes), and a first write that reached the header only.
#[test]
fn header_crash_shapes_are_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zero = dir.path().join("zero");
    fs::write(&zero, b"").expect("zero-byte file");
    assert_eq!(repaired(open(&zero).repair_tail().expect("repair")), 0);
    assert_eq!(fs::metadata(&zero).expect("stat").len(), HEADER_LEN as u64);

    let header_only = make(dir.path(), "h", &content(1, 0));
    let raw = fs::read(&header_only).expect("raw");
    fs::write(&header_only, &raw[..HEADER_LEN]).expect("cut to header");
    assert_eq!(
        repaired(open(&header_only).repair_tail().expect("repair")),
        0
    );
    assert_eq!(read_all(&header_only), Vec::<u8>::new());
    assert!(open(&header_only).damage().is_none());

    // The size of a new file reached the disk, its header did not (found by
    // the power-loss simulator): zeros where the header goes, with or
    // without unsynced blocks behind them.
    for blocks_behind in [false, true] {
        let path = make(dir.path(), &format!("z{blocks_behind}"), &content(2, 10));
        let mut raw = fs::read(&path).expect("raw");
        raw[..HEADER_LEN].fill(0);
        if !blocks_behind {
            raw.truncate(HEADER_LEN);
        }
        fs::write(&path, &raw).expect("zero the header");
        assert!(open(&path).damage().is_some());
        assert_eq!(repaired(open(&path).repair_tail().expect("repair")), 0);
        assert_eq!(read_all(&path), Vec::<u8>::new());
        assert!(open(&path).damage().is_none());
    }
}

// Protects: damage a crash does not leave is reported and nothing is
// changed: a flipped bit in a full last block, in a middle block, and a
// forged header. A clean file is left alone.
#[test]
fn other_damage_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = content(4, 0);
    for (name, at) in [
        ("last", block_offset(3) as usize + 100),
        ("middle", block_offset(1) as usize + 100),
        ("header", 10),
    ] {
        let path = make(dir.path(), name, &data);
        let mut raw = fs::read(&path).expect("raw");
        raw[at] ^= 1;
        fs::write(&path, &raw).expect("tamper");
        let outcome = open(&path).repair_tail().expect("repair");
        assert!(
            matches!(outcome, TailRepair::NotACrash { .. }),
            "{name}: {outcome:?}"
        );
        assert_eq!(
            fs::read(&path).expect("raw"),
            raw,
            "{name}: nothing changed"
        );
    }
    let clean = make(dir.path(), "clean", &data);
    let raw = fs::read(&clean).expect("raw");
    assert_eq!(
        open(&clean).repair_tail().expect("repair"),
        TailRepair::Clean
    );
    assert_eq!(fs::read(&clean).expect("raw"), raw);
    assert_eq!(raw.len() as u64, block_offset(4));
}
