//! Randomized reads, writes, truncates and extensions through the content
//! API, checked after every step against a `Vec<u8>` per file. The seed is
//! printed; CHRONICLE_TEST_SEED=N replays a failure.

use std::sync::Arc;

use chronicle_mount::cipher::Backend;
use chronicle_mount::content::{ContentCrypto, EncryptedFile};
use chronicle_mount::journal::Journal;
use chronicle_mount::SecretKey;
use rand::{Rng, SeedableRng};

fn seed() -> u64 {
    std::env::var("CHRONICLE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// Opens `name`, creating it (with its header) if it does not exist.
fn open(dir: &std::path::Path, name: &str, crypto: &Arc<ContentCrypto>) -> EncryptedFile {
    let path = dir.join(name);
    let exists = path.exists();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("open backing file");
    let crypto = Arc::clone(crypto);
    if exists {
        EncryptedFile::open(file, crypto, path).expect("open encrypted file")
    } else {
        EncryptedFile::create(file, crypto, path).expect("create encrypted file")
    }
}

// Protects: the random-access API returns exactly what a plain file would,
// across block boundaries, shrinking and growing, and after reopening.
#[test]
fn random_operations_match_a_model() {
    let seed = seed();
    println!("seed {seed} (replay with CHRONICLE_TEST_SEED={seed})");
    for backend in Backend::ALL {
        let _ = run_model(seed, backend, 40_000, 2500, None);
    }
}

// Protects: the same through the double-write journal, with syncs, so that
// rewrites of synced blocks are held back in memory (content::guard):
// reads, partial writes over held blocks, truncates, zeroing, punching,
// seeks and reopening all see what was held.
#[test]
fn guarded_operations_match_a_model() {
    let seed = seed();
    println!("seed {seed} (replay with CHRONICLE_TEST_SEED={seed})");
    let dir = tempfile::tempdir().expect("journal dir");
    let journal = Arc::new(Journal::open(dir.path()).expect("journal"));
    let (_, held) = run_model(seed, Backend::Ring, 80_000, 6000, Some(&journal));
    assert!(held > 200, "seed {seed}: only {held} writes were held back");
    assert_eq!(journal.held_blocks(), 0, "everything held was written");
}

// Protects: the same with files large enough that growing leaves holes
// (gaps past the end longer than the mount fills) and with punched holes:
// holes read as zeros, SEEK_DATA/SEEK_HOLE agree with the contents, and
// `verify_each` accepts them.
#[test]
fn sparse_operations_match_a_model() {
    let seed = seed();
    println!("seed {seed} (replay with CHRONICLE_TEST_SEED={seed})");
    let (sparse_files, _) = run_model(seed, Backend::Ring, 6 << 20, 600, None);
    assert!(sparse_files > 0, "seed {seed}: the run made no holes");
}

/// Runs `steps` random operations on four files, guarded by `journal` if
/// given; returns how many of them ended with the sparse flag in their
/// header, and after how many writes the volume held blocks back.
fn run_model(
    seed: u64,
    backend: Backend,
    max: u64,
    steps: usize,
    journal: Option<&Arc<Journal>>,
) -> (usize, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let crypto = Arc::new(ContentCrypto::new(SecretKey::from_bytes([3; 32]), backend));
    let names = ["a", "b", "c", "d"];
    let open = |name: &str| {
        let file = open(dir.path(), name, &crypto);
        match journal {
            Some(journal) => file.guarded_by(journal).expect("guard"),
            None => file,
        }
    };
    let mut files: Vec<EncryptedFile> = names.iter().map(|n| open(n)).collect();
    let mut held = 0;
    let mut models: Vec<Vec<u8>> = vec![Vec::new(); names.len()];
    for step in 0..steps {
        let i = rng.random_range(0..names.len());
        let (file, model) = (&files[i], &mut models[i]);
        let at = format!("seed {seed} step {step}");
        match rng.random_range(0..100) {
            0..=39 => {
                let offset = pick_offset(&mut rng, model.len() as u64, max);
                let len = pick_len(&mut rng);
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                file.write_at(offset, &data).expect("write");
                let end = offset as usize + data.len();
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&data);
                if journal.is_some_and(|j| j.held_blocks() > 0) {
                    held += 1;
                }
            }
            40..=64 => {
                let offset = pick_offset(&mut rng, model.len() as u64, max);
                let len = pick_len(&mut rng);
                let mut buf = vec![0u8; len];
                let n = file.read_at(offset, &mut buf).expect("read");
                let from = (offset as usize).min(model.len());
                let to = (offset as usize + len).min(model.len());
                assert_eq!(&buf[..n], &model[from..to], "{at}: read {offset}+{len}");
            }
            65..=74 => {
                let size = pick_offset(&mut rng, model.len() as u64, max);
                file.set_len(size).expect("set_len");
                model.resize(size as usize, 0);
            }
            75..=79 => {
                let offset = pick_offset(&mut rng, model.len() as u64, max);
                let len = pick_len(&mut rng) as u64;
                file.write_zeros(offset, len).expect("zeros");
                let end = (offset + len) as usize;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[offset as usize..end].fill(0);
            }
            // Fewer punches when guarded, to leave more of the run to writes.
            83..=86 if journal.is_some() => file.sync(rng.random()).expect("sync"),
            80..=86 => {
                let offset = pick_offset(&mut rng, model.len() as u64, max);
                let len = if rng.random_bool(0.5) {
                    pick_len(&mut rng) as u64
                } else {
                    rng.random_range(0..=max)
                };
                file.punch_hole(offset, len).expect("punch");
                let end = ((offset + len) as usize).min(model.len());
                if (offset as usize) < end {
                    model[offset as usize..end].fill(0);
                }
            }
            87..=93 => check_seeks(
                file,
                model,
                pick_offset(&mut rng, model.len() as u64, max),
                &at,
            ),
            94..=96 if journal.is_some() => file.sync(rng.random()).expect("sync"),
            // Emptied, a file is dense again and may hold rewrites back.
            97 if journal.is_some() => {
                file.set_len(0).expect("empty");
                model.clear();
            }
            _ => {
                // Reopen: nothing may live only in memory.
                files[i] = open(names[i]);
            }
        }
        assert_eq!(files[i].len().expect("len"), models[i].len() as u64, "{at}");
    }
    for (file, model) in files.iter().zip(&models) {
        let mut all = Vec::new();
        file.read_to_end(&mut all).expect("read all");
        assert_eq!(&all, model, "seed {seed}: final contents");
        let mut bad = Vec::new();
        file.verify_each(|e| bad.push(e.to_string()))
            .expect("verify");
        assert_eq!(bad, Vec::<String>::new(), "seed {seed}");
    }
    drop(files);
    let flags_at = chronicle_mount::layout::FLAGS_OFFSET;
    let sparse = names
        .iter()
        .filter(|n| {
            let raw = std::fs::read(dir.path().join(n)).expect("raw");
            raw.len() > flags_at && raw[flags_at] & chronicle_mount::layout::FLAG_SPARSE as u8 != 0
        })
        .count();
    (sparse, held)
}

/// SEEK_DATA never skips data and SEEK_HOLE never reports a hole where the
/// model holds data; both report ENXIO (None) at or past the end.
fn check_seeks(file: &EncryptedFile, model: &[u8], offset: u64, at: &str) {
    let size = model.len() as u64;
    let data = file.seek_data(offset).expect("seek data");
    let hole = file.seek_hole(offset).expect("seek hole");
    if offset >= size {
        assert_eq!((data, hole), (None, None), "{at}: past the end");
        return;
    }
    let data = data.expect("data before the end");
    assert!(
        data >= offset && data < size,
        "{at}: SEEK_DATA {offset} -> {data}"
    );
    assert!(
        model[offset as usize..data as usize]
            .iter()
            .all(|&b| b == 0),
        "{at}: SEEK_DATA {offset} skipped data"
    );
    let hole = hole.expect("a hole before the end");
    assert!(
        hole >= offset && hole <= size,
        "{at}: SEEK_HOLE {offset} -> {hole}"
    );
    if hole < size {
        let block_end = ((hole / 4096 + 1) * 4096).min(size);
        assert!(
            model[hole as usize..block_end as usize]
                .iter()
                .all(|&b| b == 0),
            "{at}: SEEK_HOLE {offset} -> {hole} is not a hole"
        );
    }
}

/// Offsets near block boundaries and the end of file are where bugs live.
fn pick_offset(rng: &mut impl Rng, size: u64, max: u64) -> u64 {
    match rng.random_range(0..4) {
        0 => rng.random_range(0..=max),
        1 => size,
        2 => {
            let block = rng.random_range(0..=max / 4096);
            (block * 4096)
                .saturating_add_signed(rng.random_range(-2i64..=2))
                .min(max)
        }
        _ => rng.random_range(0..=size.max(1)),
    }
}

fn pick_len(rng: &mut impl Rng) -> usize {
    match rng.random_range(0..4) {
        0 => rng.random_range(1..=8),
        1 => 4096,
        2 => rng.random_range(1..=3 * 4096 + 7),
        _ => rng.random_range(1..=40_000),
    }
}

// Protects: concurrent writers to one file never lose each other's updates,
// and readers never see a torn block.
#[test]
fn concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crypto = Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([5; 32]),
        Backend::Ring,
    ));
    let file = Arc::new(open(dir.path(), "shared", &crypto));
    // Each thread owns every 8th 100-byte record; records share blocks.
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let file = Arc::clone(&file);
            std::thread::spawn(move || {
                for r in 0..200u64 {
                    let record = r * 8 + u64::from(t);
                    file.write_at(record * 100, &[t + 1; 100]).expect("write");
                    let mut check = [0u8; 100];
                    file.read_at(record * 100, &mut check).expect("read");
                    assert_eq!(check, [t + 1; 100]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
    let mut all = Vec::new();
    file.read_to_end(&mut all).expect("read");
    assert_eq!(all.len(), 1600 * 100);
    for (record, chunk) in all.chunks(100).enumerate() {
        assert_eq!(chunk, &[(record % 8) as u8 + 1; 100][..], "record {record}");
    }
}

// Protects: a new file is its header alone and reads as empty; emptying a
// file keeps its file id (extended attributes are bound to it) and the next
// write draws a new content id; a zero-byte backing file is a missing
// header (a cut), refused until truncated to zero, which repairs it.
#[test]
fn empty_files() {
    use chronicle_mount::layout::{
        CONTENT_ID_OFFSET, FILE_ID_OFFSET, HEADER_LEN, HEADER_TAG_OFFSET,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let crypto = Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([5; 32]),
        Backend::RustCrypto,
    ));
    let raw = |name: &str| std::fs::read(dir.path().join(name)).expect("raw");
    let file = open(dir.path(), "e", &crypto);
    let mut buf = [0u8; 10];
    assert_eq!(file.read_at(0, &mut buf).expect("read"), 0);
    assert_eq!(raw("e").len(), HEADER_LEN);
    file.write_at(0, b"x").expect("write");
    let first = raw("e");
    file.set_len(0).expect("truncate");
    assert_eq!(raw("e").len(), HEADER_LEN);
    file.write_at(0, b"y").expect("write");
    let second = raw("e");
    assert_eq!(
        first[FILE_ID_OFFSET..CONTENT_ID_OFFSET],
        second[FILE_ID_OFFSET..CONTENT_ID_OFFSET],
        "the file id stays"
    );
    assert_ne!(
        first[CONTENT_ID_OFFSET..HEADER_TAG_OFFSET],
        second[CONTENT_ID_OFFSET..HEADER_TAG_OFFSET],
        "a new content id after emptying"
    );
    assert_eq!(file.read_at(0, &mut buf).expect("read"), 1);
    assert_eq!(buf[0], b'y');

    std::fs::write(dir.path().join("zero"), b"").expect("zero-byte file");
    let zero = open(dir.path(), "zero", &crypto);
    assert!(matches!(
        zero.read_at(0, &mut buf),
        Err(chronicle_mount::VolumeError::BadFileHeader { .. })
    ));
    assert!(
        zero.write_at(0, b"z").is_err(),
        "no writes on a missing header"
    );
    zero.set_len(0).expect("truncating to zero repairs");
    zero.write_at(0, b"z").expect("write after repair");
    assert_eq!(zero.read_at(0, &mut buf).expect("read"), 1);
}

// Protects: a read on a thread that read a longer file before gives this
// file's bytes only: the per-thread buffers keep what earlier reads left
// behind, and none of it may reach a later read's result.
#[test]
fn a_short_read_after_a_long_one_gives_only_its_own_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crypto = Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([4; 32]),
        Backend::Ring,
    ));
    let long = open(dir.path(), "long", &crypto);
    long.write_at(0, &vec![0xaa; 256 << 10]).expect("write");
    let short = open(dir.path(), "short", &crypto);
    short.write_at(0, b"short tail").expect("write");

    let mut buf = vec![0u8; 256 << 10];
    assert_eq!(long.read_at(0, &mut buf).expect("read"), 256 << 10);
    let mut buf = vec![0x55u8; 256 << 10];
    let n = short.read_at(0, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"short tail");
    assert!(
        buf[n..].iter().all(|&b| b == 0x55),
        "nothing past the end written"
    );
}
