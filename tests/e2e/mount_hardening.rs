//! Format version 2's promises, tried through a real mount as an attacker
//! who can write BACKING would: cuts, appended and zeroed blocks and copied
//! attribute values give EIO and a log line; sparse files cost nothing;
//! a second file system inside BACKING is kept apart; the mount process
//! does not give its key away.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use chronicle_mount::layout::{block_offset, CIPHER_BLOCK_SIZE, HEADER_LEN};

use crate::util::*;

fn edit(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut raw = fs::read(path).expect("raw");
    f(&mut raw);
    fs::write(path, raw).expect("tamper");
}

/// Reads the whole file through the mount the way `cat` does.
fn read_through(path: &Path) -> std::io::Result<Vec<u8>> {
    fs::read(path)
}

fn assert_eio(result: std::io::Result<Vec<u8>>, what: &str) {
    match result {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
        Ok(bytes) => panic!("{what}: read {} bytes, expected EIO", bytes.len()),
    }
}

// Protects: every change to a file's length made behind the mount's back
// is an error for the program that reads to it, with the log line: a cut
// leaving 1 to 40 bytes of a block, a cut at a block boundary, a cut back
// to the header, blocks appended; and a zeroed block in a file without
// holes.
#[test]
fn changed_lengths_and_zeroed_blocks_are_eio() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let content = vec![5u8; 2 * 4096 + 100];
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "small cut",
            Box::new(|raw: &mut Vec<u8>| raw.truncate(block_offset(2) as usize + 10)),
        ),
        (
            "cut at a block boundary",
            Box::new(|raw: &mut Vec<u8>| raw.truncate(block_offset(2) as usize)),
        ),
        (
            "cut to the header",
            Box::new(|raw: &mut Vec<u8>| raw.truncate(HEADER_LEN)),
        ),
        (
            "appended block",
            Box::new(|raw: &mut Vec<u8>| {
                let copy = raw[block_offset(0) as usize..block_offset(1) as usize].to_vec();
                raw.extend_from_slice(&copy);
            }),
        ),
        (
            "zeroed block",
            Box::new(|raw: &mut Vec<u8>| {
                let at = block_offset(1) as usize;
                raw[at..at + CIPHER_BLOCK_SIZE as usize].fill(0);
            }),
        ),
    ];
    for (i, (what, damage)) in cases.iter().enumerate() {
        let name = format!("victim{i}");
        fs::write(m.path(&name), &content).expect("write");
        assert_eq!(read_through(&m.path(&name)).expect("intact"), content);
        drop_caches();
        edit(&m.backing(&name), damage);
        drop_caches();
        assert_eio(read_through(&m.path(&name)), what);
    }
    let log = m.log_text();
    assert!(
        log.matches("authentication failed").count() >= cases.len(),
        "one log line per case:\n{log}"
    );
    // A damaged file can still be emptied through the mount and used again.
    for i in 0..cases.len() {
        let path = m.path(&format!("victim{i}"));
        fs::write(&path, b"fresh").expect("O_TRUNC empties a damaged file");
        drop_caches();
        assert_eq!(fs::read(&path).expect("read"), b"fresh");
    }
}

// Protects: an attribute value copied from one file onto another fails
// authentication: values are bound to the file id (format version 1 bound
// them to the name only).
#[test]
fn copied_xattr_is_eio() {
    let Some(m) = mount_xattrs_or_skip() else {
        return;
    };
    let name = std::ffi::CString::new("user.tag").expect("name");
    for (file, value) in [("a", &b"secret of a"[..]), ("b", &b"secret of b"[..])] {
        fs::write(m.path(file), file).expect("write");
        assert_eq!(
            setxattr(&cstr(&m.path(file)), &name, value),
            0,
            "errno {}",
            errno()
        );
    }
    let mut raw_a = vec![0u8; 256];
    let n = getxattr(&cstr(&m.backing("a")), &name, &mut raw_a);
    assert!(n > 0, "errno {}", errno());
    raw_a.truncate(n as usize);
    assert_eq!(setxattr(&cstr(&m.backing("b")), &name, &raw_a), 0);
    drop_caches();
    let mut buf = vec![0u8; 256];
    let n = getxattr(&cstr(&m.path("b")), &name, &mut buf);
    assert_eq!(
        (n, errno()),
        (-1, libc::EIO),
        "a copied value must not read"
    );
    let n = getxattr(&cstr(&m.path("a")), &name, &mut buf);
    assert_eq!(&buf[..n as usize], b"secret of a");
    assert!(m
        .log_text()
        .contains("authentication failed: extended attribute"));
    // `chronicle stats` counts the one request that met it.
    let out = run(&["stats", "--raw", path_str(&m.mnt)], None);
    assert!(
        stdout(&out).contains("\nauthentication_failures 1\n"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// A size-limited tmpfs, unmounted (and its directory removed) on drop,
/// even when the test fails.
struct Tmpfs {
    path: PathBuf,
    /// The temporary directory it is mounted in, when it has its own:
    /// removed after the unmount.
    _owner: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// A tmpfs mounted at `path` (created if missing).
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        fs::create_dir_all(&path).expect("mkdir tmpfs");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount tmpfs");
        assert!(status.success(), "mount -t tmpfs {}", path.display());
        Tmpfs { path, _owner: None }
    }

    /// A tmpfs in a temporary directory of its own.
    fn new(size: &str) -> Tmpfs {
        let owner = tempfile::tempdir().expect("tempdir");
        let mut store = Tmpfs::mount(owner.path().join("store"), size);
        store._owner = Some(owner);
        store
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = fs::remove_dir(&self.path);
    }
}

/// A volume whose BACKING is on a fresh tmpfs of `size`, mounted with
/// `extra`. Bound as `let (store, m)`, the mount is dropped (unmounted)
/// before the tmpfs.
fn mounted_on_tmpfs(size: &str, extra: &[&str]) -> (Tmpfs, Mounted) {
    let store = Tmpfs::new(size);
    let backing = store.path.join("backing");
    let out = run(&["init", path_str(&backing)], Some(KEY));
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Mounted::with_fixture(Fixture { dir, backing }, extra);
    (store, m)
}

// Protects: a journal that runs out of space taking fresh slots stays in
// use. Clearing the records it failed to write would need space too, and a
// record that cannot be cleared ends the journal's use until the next
// mount (every rewrite of synced data refused); the fresh slots are cut
// away instead, part-written ones included, and taken again from the same
// place once there is space.
#[test]
fn a_journal_out_of_space_stays_in_use() {
    use chronicle_mount::journal::{Journal, Original, JOURNAL_NAME, SLOT_LEN};
    if !fuse_available() {
        return;
    }
    let store = Tmpfs::new("1m");
    let journal = Journal::open(&store.path).expect("open the journal");
    let journal_path = store.path.join(JOURNAL_NAME);
    // Room for about a third of the copies: the write lands in part.
    let filler = fill_store(&store);
    leave_free(&filler, 96 << 10);
    let block = vec![7u8; CIPHER_BLOCK_SIZE as usize];
    let originals: Vec<Original> = (0..64)
        .map(|index| Original {
            index,
            stored: &block,
        })
        .collect();
    let id = [1u8; chronicle_mount::layout::FILE_ID_LEN];
    let err = journal
        .save(&id, &originals)
        .expect_err("the store is full");
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    journal
        .refuse_after_failure()
        .expect("the journal is still in use");
    assert_eq!(journal.live(), 0, "the failed copies hold no slot");
    let len = fs::metadata(&journal_path).expect("stat").len();
    assert_eq!(len, 0, "the fresh slots, part written, were cut away");
    free_store(&filler, &store);
    let taken = journal.save(&id, &originals).expect("save with space");
    assert_eq!(taken, (0..64).collect::<Vec<u64>>(), "from the old end");
    let len = fs::metadata(&journal_path).expect("stat").len();
    assert_eq!(len, 64 * SLOT_LEN);
    journal.release(&taken);
    assert_eq!(journal.live(), 0);
}

// Protects: growing a file costs neither space nor time in proportion to
// the hole: `truncate -s 1P` on a volume whose BACKING is a 64 MiB tmpfs
// succeeds, the hole reads as zeros, SEEK_HOLE/SEEK_DATA report it, the
// backing file stays small, and fsck accepts it.
#[test]
fn petabyte_sparse_file() {
    if !fuse_available() {
        return;
    }
    let (_store, m) = mounted_on_tmpfs("64m", &[]);
    let backing = m.fixture.backing.clone();
    let path = m.path("huge");
    const PIB: u64 = 1 << 50;
    let out = Command::new("truncate")
        .args(["-s", "1P"])
        .arg(&path)
        .output()
        .expect("truncate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    assert_eq!(f.metadata().expect("stat").len(), PIB);
    let mut buf = vec![1u8; 4096];
    f.read_exact_at(&mut buf, PIB / 2).expect("read the middle");
    assert!(buf.iter().all(|&b| b == 0));
    f.read_exact_at(&mut buf, PIB - 4096).expect("read the end");
    assert!(buf.iter().all(|&b| b == 0));
    f.write_all_at(b"start", 0).expect("write at 0");
    f.sync_all().expect("fsync");
    use rustix::fs::{seek, SeekFrom};
    let hole = seek(&f, SeekFrom::Hole(0)).expect("SEEK_HOLE");
    // Blocks are not aligned to the backing file's pages: the block that
    // shares a page with data counts as data.
    assert!(
        (4096..=8192).contains(&hole),
        "the first hole follows the first block or two: {hole}"
    );
    let data = seek(&f, SeekFrom::Data(hole)).expect("SEEK_DATA");
    assert!(
        (PIB - 8192..=PIB - 4096).contains(&data),
        "the next data is at the last block or the one before: {data}"
    );
    let raw = fs::metadata(m.backing("huge")).expect("raw stat");
    assert!(
        raw.blocks() * 512 < 1 << 20,
        "{} bytes allocated for a 1 PiB sparse file",
        raw.blocks() * 512
    );
    drop(f);
    let out = run(&["fsck", path_str(&backing)], Some(KEY));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

// Protects: a full backing store never costs a byte written before: an
// append that runs out of space fails with ENOSPC (not EIO) and leaves the
// file as it was, its old last block put back; after space is freed the
// same file takes writes again.
#[test]
fn full_backing_store_keeps_old_data() {
    if !fuse_available() {
        return;
    }
    // Without write-back caching each write reaches the mount at once, so
    // the error belongs to the write that caused it.
    let (store, m) = mounted_on_tmpfs("4m", &["--no-writeback-cache"]);
    let backing = m.fixture.backing.clone();
    let path = m.path("log");
    let synced: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
    let f = create_rw(&path);
    f.write_all_at(&synced, 0).expect("write");
    f.sync_all().expect("fsync");
    // 64 KiB are left free: the append's copy of the old last block to
    // the journal fits, its megabyte of data does not, so the data write
    // is what runs out of space.
    let filler = fill_store(&store);
    leave_free(&filler, 64 << 10);
    // An append far larger than what is left.
    let big = vec![1u8; 1 << 20];
    let err = f
        .write_all_at(&big, synced.len() as u64)
        .expect_err("the store is full");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop_caches();
    // The kernel may have sent part of the append in a request that
    // succeeded; the rest was undone, and every byte reads as written.
    let now = fs::read(&path).expect("the file reads whole");
    assert!(now.len() >= synced.len() && now.len() < synced.len() + big.len());
    assert_eq!(&now[..synced.len()], &synced[..]);
    assert!(now[synced.len()..].iter().all(|&b| b == 1));
    let out = run(&["fsck", path_str(&backing)], Some(KEY));
    assert!(out.status.success(), "clean after ENOSPC: {}", stdout(&out));
    // Space again: the same file takes writes and reads back whole.
    free_store(&filler, &store);
    f.write_all_at(&big[..100_000], synced.len() as u64)
        .expect("write after freeing space");
    f.sync_all().expect("fsync");
    drop(f);
    drop_caches();
    let all = fs::read(&path).expect("read");
    assert_eq!(&all[..synced.len()], &synced[..]);
    assert_eq!(all.len(), synced.len() + 100_000);
    assert!(all[synced.len()..].iter().all(|&b| b == 1));
    let out = run(&["fsck", path_str(&backing)], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
}

/// Creates (or empties) `path` and opens it for reading and writing.
fn create_rw(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .expect("create")
}

/// Fills `store` to its last page with a file beside BACKING (filling it
/// through the mount would leave the pages of the last write the mount
/// undid); returns that file.
fn fill_store(store: &Tmpfs) -> PathBuf {
    let filler = store.path.join("filler");
    let mut g = fs::File::create(&filler).expect("filler");
    loop {
        match std::io::Write::write_all(&mut g, &[9u8; 4096]) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    filler
}

/// Cuts `filler` (made by `fill_store`) so that `bytes` are free.
fn leave_free(filler: &Path, bytes: u64) {
    let filled = fs::metadata(filler).expect("stat filler").len();
    fs::OpenOptions::new()
        .write(true)
        .open(filler)
        .and_then(|f| f.set_len(filled - bytes))
        .expect("cut the filler");
}

/// Removes `filler` and waits for its space to be back: at once, unless a
/// program another test of this process spawned was between its fork and
/// its exec while the filler was open, and so holds it open for a moment.
fn free_store(filler: &Path, store: &Tmpfs) {
    fs::remove_file(filler).expect("free space");
    let free = || {
        let free = rustix::fs::statvfs(&store.path).expect("statvfs");
        free.f_bavail * free.f_frsize
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while free() < 512 << 10 {
        if std::time::Instant::now() > deadline {
            let held = Command::new("du")
                .args(["-a", "--apparent-size", path_str(&store.path)])
                .output()
                .map(|out| stdout(&out))
                .unwrap_or_default();
            panic!("space is back: {} bytes free, holding:\n{held}", free());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

// Protects: a held rewrite of synced data takes its journal slot when it
// is held, not when it is written. On a full store the rewrite itself
// fails with ENOSPC when the journal has no slot for it; once held, its
// commit (`fsync`) and the copy of its original (a read writes held
// blocks in place) go into that slot and need no new space: an
// acknowledged write never fails later for want of it.
#[test]
fn a_held_rewrite_takes_its_journal_slot_when_held() {
    if !fuse_available() {
        return;
    }
    let (store, m) = mounted_on_tmpfs("4m", &["--no-writeback-cache"]);
    let backing = m.fixture.backing.clone();
    let journal = backing.join(chronicle_mount::journal::JOURNAL_NAME);
    let journal_len = || fs::metadata(&journal).expect("journal").len();
    let path = m.path("db");
    let f = create_rw(&path);
    let mut expected: Vec<u8> = (0..64 << 10).map(|i| (i / 4096) as u8).collect();
    f.write_all_at(&expected, 0).expect("write");
    f.sync_all().expect("fsync");
    let block = |index: u64, byte: u8| (vec![byte; 4096], index * 4096);
    let read_back = |expected: &[u8]| {
        drop_caches();
        let now = fs::read(&path).expect("read writes what is held");
        assert!(now == expected, "the file reads as written");
    };

    // No journal slot and no space to grow: refused at once.
    let filler = fill_store(&store);
    let (bytes, at) = block(5, 50);
    let err = f.write_all_at(&bytes, at).expect_err("no journal slot");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    read_back(&expected);

    // Held with two slots reserved; the commit takes them, on a full store.
    // Room for a few slots only: the journal grows by what it needs, not
    // by its usual step.
    leave_free(&filler, 64 << 10);
    let (bytes, at) = block(2, 20);
    f.write_all_at(&[bytes.clone(), vec![30; 4096]].concat(), at)
        .expect("rewrite two blocks");
    expected[at as usize..at as usize + 4096].copy_from_slice(&bytes);
    expected[3 * 4096..4 * 4096].fill(30);
    let slot_len = chronicle_mount::journal::SLOT_LEN;
    assert_eq!(journal_len(), 2 * slot_len, "two slots reserved");
    let filler = fill_store(&store);
    let len = journal_len();
    f.sync_all()
        .expect("the commit goes into the reserved slots");
    assert_eq!(journal_len(), len, "the commit took no new slot");
    let commits = chronicle_mount::journal::Journal::pending_commits(&backing).expect("commits");
    assert_eq!(commits, 2, "the sync was a commit of both blocks");
    // A block with a commit needs no slot to be held again.
    let (bytes, at) = block(2, 21);
    f.write_all_at(&bytes, at)
        .expect("rewrite of a committed block");
    expected[at as usize..at as usize + 4096].copy_from_slice(&bytes);
    read_back(&expected);
    free_store(&filler, &store);

    // Held with a slot reserved; the copy of its original goes into it
    // when a read writes it in place, on a full store.
    let (bytes, at) = block(7, 70);
    f.write_all_at(&bytes, at).expect("rewrite");
    expected[at as usize..at as usize + 4096].copy_from_slice(&bytes);
    let filler = fill_store(&store);
    let len = journal_len();
    read_back(&expected);
    assert_eq!(journal_len(), len, "the copy took no new slot");
    free_store(&filler, &store);

    f.sync_all().expect("fsync");
    drop(f);
    m.unmount();
    let out = m.remount();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read(&path).expect("read after remount") == expected);
    m.unmount();
    let out = run(&["fsck", path_str(&backing)], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
}

// Protects: a rewrite of a hole in a synced sparse file takes its backing
// space when it is held, so on a full store the write itself fails with
// ENOSPC and nothing is held; a write acknowledged and then failing when
// the held block is written in place would lose it. With space again the
// same write lands and survives a remount.
#[test]
fn a_held_rewrite_of_a_hole_on_a_full_store_fails_at_once() {
    if !fuse_available() {
        return;
    }
    let (store, m) = mounted_on_tmpfs("4m", &["--no-writeback-cache"]);
    let backing = m.fixture.backing.clone();
    let path = m.path("db");
    let f = create_rw(&path);
    let head = vec![3u8; 16 << 10];
    f.write_all_at(&head, 0).expect("write");
    f.set_len(1 << 20).expect("grow");
    let hole_at = 512 << 10;
    use rustix::fs::FallocateFlags;
    rustix::fs::fallocate(
        &f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        hole_at,
        64 << 10,
    )
    .expect("punch a hole");
    f.sync_all().expect("fsync");
    // Rewrites of synced data, so that the journal has slots to reuse.
    for round in 0..3u8 {
        f.write_all_at(&[round; 4096], 0).expect("rewrite");
        f.sync_all().expect("fsync");
    }
    // A change beside the contents makes the next sync one of the file's
    // own, which writes what is held and frees every journal slot.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    f.sync_all().expect("fsync");
    let journal = backing.join(chronicle_mount::journal::JOURNAL_NAME);
    let journal_len = fs::metadata(&journal).expect("journal").len();
    assert!(journal_len > 0, "the rewrites left the journal slots");
    let filler = fill_store(&store);
    let err = f
        .write_all_at(&[7u8; 4096], hole_at)
        .expect_err("the store is full");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // The hole's copy went to a slot the journal had: the reservation is
    // what ran out of space.
    let now_len = fs::metadata(&journal).expect("journal").len();
    assert_eq!(now_len, journal_len, "the journal took no new slot");
    f.sync_all().expect("fsync after the refused write");
    drop_caches();
    let now = fs::read(&path).expect("read");
    assert_eq!(now.len(), 1 << 20);
    assert!(
        now[..4096].iter().all(|&b| b == 2),
        "the last rewrite stays"
    );
    assert_eq!(&now[4096..head.len()], &head[4096..]);
    assert!(
        now[head.len()..].iter().all(|&b| b == 0),
        "the hole stays a hole"
    );
    free_store(&filler, &store);
    f.write_all_at(&[7u8; 4096], hole_at)
        .expect("the same write with space");
    f.sync_all().expect("fsync");
    drop(f);
    m.unmount();
    let out = m.remount();
    assert!(out.status.success(), "{}", stderr(&out));
    let now = fs::read(&path).expect("read after remount");
    let hole = hole_at as usize;
    assert!(now[hole..hole + 4096].iter().all(|&b| b == 7));
    assert!(now[4096..hole]
        .iter()
        .zip(&head[4096..])
        .all(|(a, b)| a == b));
    m.unmount();
    let out = run(&["fsck", path_str(&backing)], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
}

// Protects: BACKING spanning two file systems (a tmpfs mounted inside it):
// inode numbers repeat across them, yet every file keeps its own identity
// through the mount (its own inode number and its own contents).
#[test]
fn second_file_system_inside_backing_is_kept_apart() {
    let Some(m) = mount_or_skip(&[]) else { return };
    fs::create_dir(m.path("sub")).expect("mkdir");
    fs::create_dir(m.path("outer")).expect("mkdir");
    let inner = Tmpfs::mount(m.backing("sub"), "16m");
    let outer = Tmpfs::mount(m.backing("outer"), "16m");
    // Two tmpfs instances number their inodes alike: the same backing
    // numbers appear on both sides.
    drop_caches();
    for i in 0..20 {
        fs::write(m.path(&format!("sub/f{i}")), format!("inner {i}")).expect("write inner");
        fs::write(m.path(&format!("outer/f{i}")), format!("outer {i}")).expect("write outer");
    }
    let backing_inos: Vec<(u64, u64)> = (0..20)
        .map(|i| {
            let a = fs::metadata(m.backing(&format!("sub/f{i}"))).expect("raw");
            let b = fs::metadata(m.backing(&format!("outer/f{i}"))).expect("raw");
            (a.ino(), b.ino())
        })
        .collect();
    assert!(
        backing_inos.iter().any(|(a, b)| a == b),
        "the test needs colliding backing inode numbers: {backing_inos:?}"
    );
    drop_caches();
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        for side in ["sub", "outer"] {
            let path = m.path(&format!("{side}/f{i}"));
            let expected = format!("{} {i}", if side == "sub" { "inner" } else { "outer" });
            assert_eq!(fs::read_to_string(&path).expect("read"), expected);
            assert!(
                seen.insert(fs::metadata(&path).expect("stat").ino()),
                "{side}/f{i}"
            );
        }
    }
    fs::hard_link(m.path("sub/f0"), m.path("sub/link")).expect("link inside the tmpfs");
    assert_eq!(
        fs::metadata(m.path("sub/link")).expect("stat").ino(),
        fs::metadata(m.path("sub/f0")).expect("stat").ino()
    );
    drop(outer);
    drop(inner);
}

// Protects: the long-running mount process keeps its key to itself: the
// key variable's bytes are gone from /proc/PID/environ, core dumps are
// off, and its memory is locked (root may lock).
#[test]
fn mount_process_keeps_the_key_to_itself() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let pid = mount_pid(&m.mnt);
    let environ = fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        !environ.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
        "the key is still in /proc/{pid}/environ"
    );
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    assert!(
        core.split_whitespace().nth(4) == Some("0") && core.split_whitespace().nth(5) == Some("0"),
        "{core}"
    );
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let locked: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmLck");
    assert!(locked > 0, "no memory locked:\n{status}");
}

// Protects: opening an existing, open file with O_CREAT|O_TRUNC empties it
// through the same file object, so later writes land in a consistent file
// (format version 1 could keep a stale header here).
#[test]
fn create_with_truncate_over_an_open_file() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let path = m.path("f");
    let first = fs::File::create(&path).expect("create");
    first.write_all_at(&vec![1u8; 10_000], 0).expect("write");
    first.sync_all().expect("fsync");
    let second = fs::File::create(&path).expect("create again (O_TRUNC)");
    second.write_all_at(b"fresh", 0).expect("write");
    second.sync_all().expect("fsync");
    drop((first, second));
    drop_caches();
    assert_eq!(fs::read(&path).expect("read"), b"fresh");
    let out = run(&["fsck", m.fixture.b()], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
}

// Protects: truncating a set-user-id file as an ordinary user drops the
// bit, as a local file system does.
#[test]
fn unprivileged_truncate_drops_setuid() {
    let Some(m) = mount_or_skip(&["--allow-other"]) else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(m.fixture.dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = m.path("prog");
    fs::write(&path, b"#!/bin/sh\n").expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o4777)).expect("chmod");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "truncate",
            "-s",
            "3",
        ])
        .arg(&path)
        .output()
        .expect("setpriv");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o7777, 0o777, "mode {mode:o}");
}

// Protects: a mount process killed with SIGKILL while programs use the
// mount gives those programs errors, never wrong data; `chronicle mount` on
// the dead mount point clears it and says so; what was fsynced before the
// kill reads back intact after the remount.
#[test]
fn killed_mount_is_cleared_and_synced_data_kept() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let synced: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let f = fs::File::create(m.path("synced")).expect("create");
    f.write_all_at(&synced, 0).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    let busy = m.path("busy");
    let writer = std::thread::spawn(move || {
        let f = fs::File::create(&busy).expect("create");
        let record = vec![7u8; 1000];
        let mut at = 0u64;
        loop {
            if let Err(e) = f.write_all_at(&record, at).and_then(|()| f.sync_data()) {
                return e;
            }
            at += record.len() as u64;
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    kill_mount(&m.mnt);
    let err = writer.join().expect("writer thread");
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::EIO) | Some(libc::ECONNABORTED)
        ),
        "the writer gets an error: {err}"
    );
    // ENOTCONN once the kernel has ended the connection; ECONNABORTED for a
    // request it had queued while the process's descriptors were closing.
    let dead = fs::metadata(m.path("synced")).expect_err("the mount is dead");
    assert!(
        matches!(
            dead.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
        "{dead}"
    );
    let out = m.remount();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cleared the dead mount"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read(m.path("synced")).expect("read after remount"),
        synced
    );
}

// Protects: a mount started at once on the point of a mount whose process
// was killed succeeds. The dying process lets go of the volume lock only as
// it finishes exiting, a moment after its mount died; the new mount waits
// for that (here the test holds the lock for two seconds) instead of
// refusing the volume as in use.
#[test]
fn a_remount_waits_for_the_dead_mount_to_let_go() {
    use chronicle_mount::lock::VolumeLock;
    let Some(m) = mount_or_skip(&[]) else { return };
    let f = fs::File::create(m.path("kept")).expect("create");
    f.write_all_at(b"kept", 0).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    kill_mount(&m.mnt);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rustix::fs::statfs(&m.mnt).is_ok() {
        assert!(std::time::Instant::now() < deadline, "the mount never died");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let lock = VolumeLock::acquire_within(&m.fixture.backing, std::time::Duration::from_secs(10))
        .expect("the killed process lets go");
    let held = std::time::Duration::from_secs(2);
    let started = std::time::Instant::now();
    let dying = std::thread::spawn(move || {
        std::thread::sleep(held);
        drop(lock);
    });
    let out = m.remount();
    let took = started.elapsed();
    dying.join().expect("holder");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(took >= held, "the mount took the lock in {took:?}");
    assert!(
        stderr(&out).contains("cleared the dead mount"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(m.path("kept")).expect("read"), b"kept");
}

/// Preallocates `log` (8 pages, fsynced), rewrites page `index` with
/// `byte` and fsyncs it (a commit to the journal), then kills the mount;
/// returns the page.
fn commit_a_page_then_kill(m: &Mounted, index: u64, byte: u8) -> Vec<u8> {
    let f = fs::File::create(m.path("log")).expect("create");
    f.write_all_at(&vec![0u8; 8 * 4096], 0)
        .expect("preallocate");
    f.sync_all().expect("fsync");
    let page = vec![byte; 4096];
    f.write_all_at(&page, index * 4096).expect("rewrite");
    f.sync_all().expect("fsync the rewrite");
    kill_mount(&m.mnt);
    page
}

// Protects: an fsync of rewrites the mount holds (here a page of a
// preallocated file, as a database's log) is made durable by a commit to
// the journal. After the mount dies, the commit is what holds the synced
// page: a read-only mount, which would show the older page, refuses to
// start and says what to do; `fsck` reports it; `fsck --repair` writes
// it; then the read-only mount shows the synced page.
#[test]
fn a_killed_mount_keeps_a_committed_sync() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let page = commit_a_page_then_kill(&m, 1, 0x5a);
    let ro_mnt = m.fixture.dir.path().join("ro");
    fs::create_dir_all(&ro_mnt).expect("mkdir");
    let _ = run(&["umount", path_str(&m.mnt)], None);
    let refused = run(
        &["mount", m.fixture.b(), path_str(&ro_mnt), "--read-only"],
        Some(KEY),
    );
    assert!(!refused.status.success(), "a read-only mount started");
    assert!(
        stderr(&refused).contains("fsck --repair"),
        "{}",
        stderr(&refused)
    );
    let check = run(&["fsck", m.fixture.b()], Some(KEY));
    assert!(!check.status.success(), "fsck passed: {}", stdout(&check));
    let told = format!("{}{}", stdout(&check), stderr(&check));
    assert!(told.contains("synced blocks"), "{told}");
    let repair = run(&["fsck", m.fixture.b(), "--repair"], Some(KEY));
    assert!(repair.status.success(), "{}", stderr(&repair));
    let check = run(&["fsck", m.fixture.b()], Some(KEY));
    assert!(check.status.success(), "{}", stdout(&check));
    let ro = run(
        &["mount", m.fixture.b(), path_str(&ro_mnt), "--read-only"],
        Some(KEY),
    );
    assert!(ro.status.success(), "{}", stderr(&ro));
    let got = fs::read(ro_mnt.join("log"));
    let _ = run(&["umount", path_str(&ro_mnt)], None);
    let got = got.expect("read");
    assert_eq!(&got[4096..8192], &page[..], "the synced page");
    assert_eq!(got.len(), 8 * 4096);
}

// Protects: a read-write mount after a crash writes every commit to its
// file before it serves, files it is never asked for included: `fsck`
// then passes with no commit waiting, and the file reads as synced.
#[test]
fn a_read_write_mount_writes_commits_a_crash_left() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let page = commit_a_page_then_kill(&m, 2, 0xa5);
    let out = m.remount();
    assert!(out.status.success(), "{}", stderr(&out));
    m.unmount();
    assert!(
        m.log_text().contains("is now written to them"),
        "{}",
        m.log_text()
    );
    let check = run(&["fsck", m.fixture.b()], Some(KEY));
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    let out = m.remount();
    assert!(out.status.success(), "{}", stderr(&out));
    let got = fs::read(m.path("log")).expect("read");
    assert_eq!(&got[2 * 4096..3 * 4096], &page[..], "the synced page");
}

// Protects: rewrites a file holds back in memory (one journal sync shared
// by many) reach the backing file within seconds even when the program
// neither syncs, reads nor closes the file: a mount killed after that has
// lost none of them. Without write-back caching each write reaches the
// mount at once.
#[test]
fn held_rewrites_are_written_without_a_sync() {
    let Some(m) = mount_or_skip(&["--no-writeback-cache"]) else {
        return;
    };
    let old = vec![1u8; 64 * 1024];
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.path("f"))
        .expect("create");
    f.write_all_at(&old, 0).expect("write");
    f.sync_all().expect("fsync");
    let mut expected = old.clone();
    for block in [2usize, 5, 9] {
        let new = vec![block as u8 + 10; 4096];
        f.write_all_at(&new, (block * 4096) as u64)
            .expect("rewrite");
        expected[block * 4096..(block + 1) * 4096].copy_from_slice(&new);
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    kill_mount(&m.mnt);
    drop(f);
    for _ in 0..100 {
        if fs::metadata(m.path("f")).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = m.remount();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        fs::read(m.path("f")).expect("read after remount") == expected,
        "a held rewrite was lost"
    );
}

// Protects: one BACKING is mounted once: a second mount of it (at another
// mount point) is refused with one line, and nothing is mounted; two mount
// processes would each keep their own view of every file's end.
#[test]
fn a_volume_mounts_once() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let second = m.fixture.dir.path().join("second");
    fs::create_dir(&second).expect("mkdir");
    let out = run(&["mount", m.fixture.b(), path_str(&second)], Some(KEY));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in use by another chronicle process"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(!is_mounted(&second));
}

// Protects: the bundled engine on a mount whose backing store fills up
// reports the error and loses no acknowledged point: writes with
// `sync=always` until the store is full, then, after space is freed, the
// reopened engine returns every point it acknowledged.
#[test]
fn engine_on_a_full_backing_store_keeps_acknowledged_points() {
    use chronicle_engine::{Engine, Options, SyncPolicy};
    if !fuse_available() {
        return;
    }
    let (store, m) = mounted_on_tmpfs("16m", &[]);
    // Leave about 1 MiB free so the engine fills it quickly.
    let filler = store.path.join("filler");
    let free = rustix::fs::statvfs(&store.path).expect("statvfs");
    let room = free.f_bavail * free.f_frsize;
    fs::write(&filler, vec![0u8; (room - (1 << 20)) as usize]).expect("filler");
    let options = || Options {
        sync: SyncPolicy::Always,
        memtable_points: 5_000,
        retention: None,
        ..Options::default()
    };
    let db = m.path("db");
    let engine = Engine::open(&db, options()).expect("open");
    let mut acknowledged = 0u64;
    let mut failure = None;
    for batch in 0..10_000u64 {
        let mut text = String::new();
        for i in 0..100 {
            let n = batch * 100 + i;
            // Full-precision values: decimals would compress so well
            // that the store would not fill.
            text.push_str(&format!(
                "cpu,host=h{} value={:?} {}\n",
                n % 97,
                n as f64 / 7.0,
                1_000_000_000 + n
            ));
        }
        match engine.write_lines(text.as_bytes(), batch * 100 + 1) {
            Ok(_) => acknowledged += 100,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let failure = failure.expect("the store fills up");
    assert!(
        failure.contains("No space left") || failure.contains("ENOSPC"),
        "the error says the disk is full: {failure}"
    );
    drop(engine);
    fs::remove_file(&filler).expect("free space");
    // Other tests of this process spawn programs: a child between fork and
    // exec briefly shares the old engine's locked descriptor.
    let mut tries = 0;
    let engine = loop {
        match Engine::open(&db, options()) {
            Err(chronicle_engine::EngineError::Locked { .. }) if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            opened => break opened.expect("reopen after space is freed"),
        }
    };
    let mut exported = Vec::new();
    engine.export_json(&mut exported).expect("export");
    let text = String::from_utf8(exported).expect("utf-8");
    let kept: std::collections::HashSet<u64> = text
        .lines()
        .filter_map(|l| l.split("\"timestamp\":").nth(1))
        .filter_map(|rest| rest.split([',', '}']).next()?.parse().ok())
        .collect();
    let lost = (0..acknowledged)
        .filter(|n| !kept.contains(&(1_000_000_000 + n)))
        .count();
    assert_eq!(lost, 0, "of {acknowledged} acknowledged points ({failure})");
    assert!(
        acknowledged >= 10_000,
        "{acknowledged} points before the store filled"
    );
    engine.close().expect("close");
    assert!(
        !m.log_text().contains("authentication failed"),
        "{}",
        m.log_text()
    );
}
