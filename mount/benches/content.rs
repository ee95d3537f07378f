//! Throughput of the content layer without a mount: sealing and opening
//! 4 KiB blocks with each AES-GCM implementation, and sequential writes and
//! reads of a file through `EncryptedFile`. Prints MB/s (10^6 bytes/s).
//!
//! Run: cargo bench -p chronicle-mount --bench content

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_mount::cipher::{self, Backend};
use chronicle_mount::content::{ContentCrypto, EncryptedFile};
use chronicle_mount::SecretKey;

const FILE_BYTES: usize = 256 << 20;
const CHUNK: usize = 1 << 20;

fn main() {
    println!("AES-256-GCM, 4 KiB blocks, one thread:");
    for backend in Backend::ALL {
        let t = cipher::measure(backend, Duration::from_secs(2));
        println!(
            "  {:<22} seal {:>7.0} MB/s  open {:>7.0} MB/s",
            backend.name(),
            t.seal_mb_per_s,
            t.open_mb_per_s
        );
    }
    println!("Chosen: {}", cipher::fastest().name());
    println!();
    println!(
        "EncryptedFile, {} MiB file in 1 MiB calls (page cache, no fsync):",
        FILE_BYTES >> 20
    );
    for backend in Backend::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bench");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        let crypto = Arc::new(ContentCrypto::new(SecretKey::from_bytes([1; 32]), backend));
        let file = EncryptedFile::open(file, crypto, path).expect("encrypted file");
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect();
        let start = Instant::now();
        for i in 0..FILE_BYTES / CHUNK {
            file.write_at((i * CHUNK) as u64, &chunk).expect("write");
        }
        let write = FILE_BYTES as f64 / start.elapsed().as_secs_f64() / 1e6;
        let mut buf = vec![0u8; CHUNK];
        let start = Instant::now();
        for i in 0..FILE_BYTES / CHUNK {
            file.read_at((i * CHUNK) as u64, &mut buf).expect("read");
        }
        let read = FILE_BYTES as f64 / start.elapsed().as_secs_f64() / 1e6;
        // Small appends, as a write-ahead log makes them.
        let start = Instant::now();
        let record = [7u8; 100];
        file.set_len(0).expect("truncate");
        let appends = 50_000u64;
        for i in 0..appends {
            file.write_at(i * 100, &record).expect("append");
        }
        let per_append = start.elapsed().as_secs_f64() / appends as f64 * 1e6;
        println!(
            "  {:<22} write {:>6.0} MB/s  read {:>6.0} MB/s  100-byte append {:>5.1} us",
            backend.name(),
            write,
            read,
            per_append
        );
    }
}
