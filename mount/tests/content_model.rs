//! Randomized reads, writes, truncates and extensions through the content
//! API, checked after every step against a `Vec<u8>` per file. The seed is
//! printed; CHRONICLE_TEST_SEED=N replays a failure.

use std::sync::Arc;

use chronicle_mount::cipher::Backend;
use chronicle_mount::content::{ContentCrypto, EncryptedFile};
use chronicle_mount::SecretKey;
use rand::{Rng, SeedableRng};

fn seed() -> u64 {
    std::env::var("CHRONICLE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn open(dir: &std::path::Path, name: &str, crypto: &Arc<ContentCrypto>) -> EncryptedFile {
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("open backing file");
    EncryptedFile::open(file, Arc::clone(crypto), path).expect("open encrypted file")
}

// Protects: the random-access API returns exactly what a plain file would,
// across block boundaries, holes, shrinking and growing, and after reopening.
#[test]
fn random_operations_match_a_model() {
    let seed = seed();
    println!("seed {seed} (replay with CHRONICLE_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let crypto = Arc::new(ContentCrypto::new(SecretKey::from_bytes([3; 32]), backend));
        let names = ["a", "b", "c", "d"];
        let mut files: Vec<EncryptedFile> =
            names.iter().map(|n| open(dir.path(), n, &crypto)).collect();
        let mut models: Vec<Vec<u8>> = vec![Vec::new(); names.len()];
        for step in 0..2500 {
            let i = rng.random_range(0..names.len());
            let (file, model) = (&files[i], &mut models[i]);
            let max = 40_000u64;
            match rng.random_range(0..100) {
                0..=44 => {
                    let offset = pick_offset(&mut rng, model.len() as u64, max);
                    let len = pick_len(&mut rng);
                    let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    file.write_at(offset, &data).expect("write");
                    let end = offset as usize + data.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].copy_from_slice(&data);
                }
                45..=74 => {
                    let offset = pick_offset(&mut rng, model.len() as u64, max);
                    let len = pick_len(&mut rng);
                    let mut buf = vec![0u8; len];
                    let n = file.read_at(offset, &mut buf).expect("read");
                    let from = (offset as usize).min(model.len());
                    let to = (offset as usize + len).min(model.len());
                    assert_eq!(
                        &buf[..n],
                        &model[from..to],
                        "seed {seed} step {step}: read {offset}+{len}"
                    );
                }
                75..=84 => {
                    let size = pick_offset(&mut rng, model.len() as u64, max);
                    file.set_len(size).expect("set_len");
                    model.resize(size as usize, 0);
                }
                85..=89 => {
                    let offset = pick_offset(&mut rng, model.len() as u64, max);
                    let len = pick_len(&mut rng) as u64;
                    file.write_zeros(offset, len).expect("zeros");
                    let end = (offset + len) as usize;
                    if model.len() < end {
                        model.resize(end, 0);
                    }
                    model[offset as usize..end].fill(0);
                }
                _ => {
                    // Reopen: nothing may live only in memory.
                    files[i] = open(dir.path(), names[i], &crypto);
                }
            }
            assert_eq!(
                files[i].len().expect("len"),
                models[i].len() as u64,
                "seed {seed} step {step}"
            );
        }
        for (file, model) in files.iter().zip(&models) {
            let mut all = Vec::new();
            file.read_to_end(&mut all).expect("read all");
            assert_eq!(&all, model, "seed {seed}: final contents");
            let mut bad = 0;
            file.verify_each(|_| bad += 1).expect("verify");
            assert_eq!(bad, 0);
        }
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

// Protects: an empty file has no header and reads as empty; a file
// truncated to zero starts over with a new header.
#[test]
fn empty_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crypto = Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([5; 32]),
        Backend::RustCrypto,
    ));
    let file = open(dir.path(), "e", &crypto);
    let mut buf = [0u8; 10];
    assert_eq!(file.read_at(0, &mut buf).expect("read"), 0);
    assert_eq!(
        std::fs::metadata(dir.path().join("e")).expect("stat").len(),
        0
    );
    file.write_at(0, b"x").expect("write");
    let first_header = std::fs::read(dir.path().join("e")).expect("raw")[..24].to_vec();
    file.set_len(0).expect("truncate");
    assert_eq!(
        std::fs::metadata(dir.path().join("e")).expect("stat").len(),
        0
    );
    file.write_at(0, b"y").expect("write");
    let second_header = std::fs::read(dir.path().join("e")).expect("raw")[..24].to_vec();
    assert_ne!(
        first_header, second_header,
        "a new file id after truncation to zero"
    );
    assert_eq!(file.read_at(0, &mut buf).expect("read"), 1);
    assert_eq!(buf[0], b'y');
}
