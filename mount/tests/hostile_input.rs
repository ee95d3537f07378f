//! Hostile and damaged input never panics the volume layer: a garbled
//! configuration or ciphertext file is an error. Seed printed
//! (CHRONICLE_TEST_SEED replays).

use std::path::Path;
use std::sync::Arc;

use chronicle_mount::cipher::Backend;
use chronicle_mount::content::{ContentCrypto, EncryptedFile};
use chronicle_mount::{SecretKey, UserKey, VolumeConfig};
use rand::{Rng, SeedableRng};

fn rng() -> (u64, rand::rngs::StdRng) {
    let seed = std::env::var("CHRONICLE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with CHRONICLE_TEST_SEED={seed})");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

// Protects: any bytes as a configuration are refused or decoded, never a
// panic, and never accepted by the wrong key.
#[test]
fn configs_never_panic() {
    let (seed, mut rng) = rng();
    let user = UserKey::Raw(SecretKey::from_bytes([1; 32]));
    let good = VolumeConfig::create(
        &SecretKey::from_bytes([2; 32]),
        &user,
        None,
        chronicle_mount::names::NameMode::Encrypted,
    )
    .expect("create")
    .encode();
    for round in 0..20_000 {
        let mut bytes = good.to_vec();
        match rng.random_range(0..3) {
            0 => bytes.truncate(rng.random_range(0..bytes.len())),
            1 => {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            _ => {
                bytes = (0..rng.random_range(0..200))
                    .map(|_| rng.random())
                    .collect()
            }
        }
        let changed = bytes[..] != good[..];
        if let Ok(config) = VolumeConfig::decode(&bytes, Path::new("c")) {
            let opened = config.unwrap(&user, Path::new("c"));
            assert!(
                !(changed && opened.is_ok()),
                "seed {seed} round {round}: an edited config opened"
            );
        }
    }
}

// Protects: random damage to an encrypted file is an error on read, never a
// panic and never wrong bytes.
#[test]
fn damaged_ciphertext_never_panics() {
    let (seed, mut rng) = rng();
    let dir = tempfile::tempdir().expect("tempdir");
    let crypto = Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([3; 32]),
        Backend::Ring,
    ));
    let plain: Vec<u8> = (0..3 * 4096 + 500).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join("f");
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        EncryptedFile::create(f, Arc::clone(&crypto), path.clone())
            .expect("wrap")
            .write_at(0, &plain)
            .expect("write");
    }
    let good = std::fs::read(&path).expect("read");
    for round in 0..2000 {
        let mut bytes = good.clone();
        match rng.random_range(0..2) {
            0 => bytes.truncate(rng.random_range(0..bytes.len())),
            _ => {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
        }
        std::fs::write(&path, &bytes).expect("write");
        let f = std::fs::File::open(&path).expect("open");
        let Ok(file) = EncryptedFile::open(f, Arc::clone(&crypto), path.clone()) else {
            continue;
        };
        let mut out = vec![0u8; plain.len() + 10];
        let total = out.len();
        let mut offset = 0usize;
        while offset < total {
            let end = total.min(offset + 4096);
            match file.read_at(offset as u64, &mut out[offset..end]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    assert_eq!(
                        &out[offset..offset + n],
                        &plain[offset..offset + n],
                        "seed {seed} round {round}: wrong bytes returned"
                    );
                    offset += n;
                }
            }
        }
    }
}
