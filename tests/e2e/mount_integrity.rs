//! Integrity and refusal at mount time: forged blocks give EIO and a log
//! line; a wrong key mounts nothing.

use std::fs;

use crate::util::*;

// Protects: a block changed in the backing directory while mounted is
// never returned: the program gets EIO, the mount logs the file and block.
#[test]
fn tampered_block_is_eio_and_logged() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[]);
    fs::write(m.path("victim"), vec![3u8; 3 * 4096]).expect("write");
    let backing = m.backing("victim");
    let mut raw = fs::read(&backing).expect("raw");
    raw[24 + 4124 + 100] ^= 0x80; // block 1
    fs::write(&backing, raw).expect("tamper");
    // Drop the kernel's cached pages, so the read reaches the mount.
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    let mut buf = vec![0u8; 4096];
    let f = fs::File::open(m.path("victim")).expect("open");
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut buf, 0).expect("block 0 is intact");
    assert_eq!(buf, vec![3u8; 4096]);
    let err = f
        .read_exact_at(&mut buf, 4096)
        .expect_err("block 1 is forged");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let expected = format!(
        "authentication failed: {} block 1",
        backing.canonicalize().expect("canon").display()
    );
    let log = m.log_text();
    assert!(
        log.contains(&expected) && log.contains("ERROR"),
        "log lacks {expected:?}:\n{log}"
    );
}

// Protects: a wrong key exits 12 with the contract's message and mounts nothing.
#[test]
fn wrong_key_mounts_nothing() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    let mnt = f.dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let before = snapshot(&f.backing);
    let out = run(&["mount", f.b(), path_str(&mnt)], Some(WRONG_KEY));
    assert_eq!(out.status.code(), Some(12));
    assert_eq!(stderr(&out).trim(), "error: encryption key mismatch");
    assert!(!is_mounted(&mnt));
    assert_eq!(snapshot(&f.backing), before);
}

// Protects: umount of something that is not mounted is a clear error.
#[test]
fn umount_not_mounted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&["umount", path_str(dir.path())], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: cannot unmount"),
        "{}",
        stderr(&out)
    );
}
