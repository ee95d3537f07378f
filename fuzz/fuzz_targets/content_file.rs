//! An encrypted file's header and blocks, as someone writing BACKING could
//! leave them: opening, reading, seeking, verifying and repairing never
//! panic, and a repair is final (a second one finds nothing to repair).
#![no_main]
use std::sync::Arc;

use chronicle_mount::cipher::Backend;
use chronicle_mount::content::{ContentCrypto, EncryptedFile, TailRepair};
use chronicle_mount::SecretKey;
use libfuzzer_sys::fuzz_target;

fn crypto() -> Arc<ContentCrypto> {
    // The key the seed corpus was written with (scripts/fuzz.sh).
    Arc::new(ContentCrypto::new(
        SecretKey::from_bytes([0x5e; 32]),
        Backend::Ring,
    ))
}

fn open(path: &std::path::Path) -> EncryptedFile {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the fuzzed file");
    EncryptedFile::open(file, crypto(), path.to_path_buf()).expect("open never fails on content")
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, data).expect("write");
    let file = open(&path);
    let size = file.len().expect("len");
    let mut buf = vec![0u8; 8192];
    let mut at = 0;
    while at < size.min(1 << 20) {
        match file.read_at(at, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => at += n as u64,
        }
    }
    let _ = file.seek_data(0);
    let _ = file.seek_hole(0);
    let _ = file.verify_each(|_| {});
    if let Ok(TailRepair::Repaired { .. }) = file.repair_tail() {
        drop(file);
        let again = open(&path).repair_tail().expect("repair");
        assert!(
            !matches!(again, TailRepair::Repaired { .. }),
            "a repaired file needed a second repair: {again:?}"
        );
    }
});
