//! Names through a real mount, in both name modes (this file runs in the
//! `e2e` and `e2e_plaintext` binaries): every length and byte a Linux name
//! can hold, renames and links across directories, long names, listing at
//! scale, forged names, crashes in the middle of renames.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::util::*;

fn listing(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect()
}

/// Entries of the backing directory for `dir` (inside the mount), the
/// volume's own files aside.
fn backing_entries(m: &Mounted, dir: &str) -> Vec<OsString> {
    let path = if dir.is_empty() {
        m.fixture.backing.clone()
    } else {
        m.backing(dir)
    };
    fs::read_dir(path)
        .expect("readdir backing")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| !n.as_bytes().starts_with(b"chronicle.volume"))
        .collect()
}

// Protects: names of every length from 1 to 255 bytes, and names that are
// not UTF-8, are created, listed exactly, looked up and read; with
// encrypted names none of them shows in BACKING.
#[test]
fn every_name_length_and_byte() {
    let Some(m) = mount_or_skip(&[]) else { return };
    fs::create_dir(m.path("d")).expect("mkdir");
    let mut names = BTreeSet::new();
    for len in 1..=255usize {
        let bytes: Vec<u8> = (0..len)
            .map(|i| [b'a', 0xe9, b' ', 0xff, b'-'][i % 5])
            .collect();
        names.insert(OsString::from_vec(bytes));
    }
    names.insert(OsString::from("plain-looking-name.txt"));
    for name in &names {
        fs::write(m.path("d").join(name), name.as_bytes()).expect("create");
    }
    drop_caches();
    assert_eq!(listing(&m.path("d")), names);
    for name in names.iter().step_by(17) {
        assert_eq!(
            fs::read(m.path("d").join(name)).expect("read"),
            name.as_bytes()
        );
    }
    let stored = backing_entries(&m, "d");
    if crate::PLAINTEXT_NAMES {
        assert!(stored.iter().any(|n| n == "plain-looking-name.txt"));
    } else {
        assert!(stored.iter().all(|n| n.len() <= 255));
        assert!(!stored
            .iter()
            .any(|n| n.as_bytes().windows(5).any(|w| w == b"plain")));
    }
    let err = fs::write(m.path("d").join("n".repeat(256)), b"x").expect_err("256 bytes");
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    let out = run(&["inspect", m.fixture.b(), "--grep", "plain-looking"], None);
    let expected = if crate::PLAINTEXT_NAMES { 3 } else { 0 };
    assert_eq!(out.status.code(), Some(expected), "{}", stdout(&out));
}

// Protects: renames and hard links across directories, with short and
// long names, and RENAME_EXCHANGE; a long name's file follows its name and
// nothing is left behind.
#[test]
fn renames_and_links_across_directories() {
    let Some(m) = mount_or_skip(&[]) else { return };
    for d in ["a", "b", "a/deep"] {
        fs::create_dir(m.path(d)).expect("mkdir");
    }
    let long = "L".repeat(240);
    let other = "M".repeat(230);
    fs::write(m.path("a").join(&long), b"long").expect("write");
    fs::write(m.path("a/short"), b"short").expect("write");
    fs::rename(m.path("a").join(&long), m.path("b").join(&other)).expect("rename long");
    fs::rename(m.path("a/short"), m.path("b").join(&long)).expect("rename to long");
    fs::hard_link(m.path("b").join(&other), m.path("a/deep/link")).expect("link");
    assert_eq!(fs::read(m.path("a/deep/link")).expect("read"), b"long");
    assert_eq!(
        fs::metadata(m.path("a/deep/link")).expect("stat").ino(),
        fs::metadata(m.path("b").join(&other)).expect("stat").ino()
    );
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        m.path("b").join(&other),
        rustix::fs::CWD,
        m.path("b").join(&long),
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .expect("RENAME_EXCHANGE");
    assert_eq!(fs::read(m.path("b").join(&other)).expect("read"), b"short");
    assert_eq!(fs::read(m.path("b").join(&long)).expect("read"), b"long");
    // Onto an existing empty directory, as POSIX allows; not onto a full one.
    fs::create_dir(m.path("b/moved")).expect("mkdir");
    fs::rename(m.path("a/deep"), m.path("b/moved")).expect("rename onto an empty directory");
    fs::create_dir(m.path("a/full")).expect("mkdir");
    fs::write(m.path("a/full/x"), b"x").expect("write");
    fs::create_dir(m.path("a/other")).expect("mkdir");
    let err = fs::rename(m.path("a/other"), m.path("a/full")).expect_err("not empty");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    assert_eq!(fs::read(m.path("a/full/x")).expect("kept"), b"x");
    fs::remove_file(m.path("a/full/x")).expect("rm");
    fs::remove_dir(m.path("a/full")).expect("rmdir");
    fs::remove_dir(m.path("a/other")).expect("rmdir");
    assert_eq!(fs::read(m.path("b/moved/link")).expect("read"), b"long");
    drop_caches();
    assert_eq!(
        listing(&m.path("b")),
        [long.clone(), other.clone(), "moved".into()]
            .into_iter()
            .map(OsString::from)
            .collect()
    );
    assert!(listing(&m.path("a")).is_empty());
    fs::remove_file(m.path("b").join(&long)).expect("unlink");
    fs::remove_file(m.path("b").join(&other)).expect("unlink");
    fs::remove_file(m.path("b/moved/link")).expect("unlink");
    fs::remove_dir(m.path("b/moved")).expect("rmdir");
    fs::remove_dir(m.path("b")).expect("rmdir");
    fs::remove_dir(m.path("a")).expect("rmdir");
    let left = backing_entries(&m, "");
    let expected: Vec<OsString> = if crate::PLAINTEXT_NAMES {
        Vec::new()
    } else {
        vec!["chronicle.dirid".into()]
    };
    assert_eq!(left, expected, "nothing left behind");
    let out = run(&["fsck", m.fixture.b()], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
}

// Protects: a backing name edited, or moved into another directory, is
// refused (hidden from listings and logged), never shown as some other
// name; with plaintext names there is nothing to check.
#[test]
fn forged_and_moved_names_are_refused() {
    if crate::PLAINTEXT_NAMES {
        return;
    }
    let Some(m) = mount_or_skip(&[]) else { return };
    fs::create_dir(m.path("x")).expect("mkdir");
    fs::create_dir(m.path("y")).expect("mkdir");
    fs::write(m.path("x/victim"), b"v").expect("write");
    fs::write(m.path("x/edited"), b"e").expect("write");
    let victim = m.backing("x/victim");
    fs::rename(
        &victim,
        m.backing("y").join(victim.file_name().expect("name")),
    )
    .expect("move");
    let edited = m.backing("x/edited");
    let mut name = edited.file_name().expect("name").as_bytes().to_vec();
    name[4] = if name[4] == b'A' { b'B' } else { b'A' };
    fs::rename(&edited, edited.with_file_name(OsStr::from_bytes(&name))).expect("edit");
    drop_caches();
    assert!(
        listing(&m.path("x")).is_empty(),
        "{:?}",
        listing(&m.path("x"))
    );
    assert!(
        listing(&m.path("y")).is_empty(),
        "{:?}",
        listing(&m.path("y"))
    );
    assert!(
        m.log_text().contains("authentication failed: a name"),
        "{}",
        m.log_text()
    );
}

// Protects: symlink targets of every size up to the POSIX limit (4095
// bytes) round-trip, with their own length as st_size, both those sealed
// into a backing symlink and longer ones (stored as marked encrypted
// files); a regular file cannot be made to look like one (chmod +t).
#[test]
fn symlink_targets() {
    let Some(m) = mount_or_skip(&[]) else { return };
    for len in [1usize, 100, 3043, 3044, 4000, 4095] {
        let target = "t".repeat(len);
        let link = m.path(&format!("link{len}"));
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert_eq!(fs::read_link(&link).expect("readlink"), Path::new(&target));
        assert_eq!(
            fs::symlink_metadata(&link).expect("lstat").len(),
            len as u64
        );
    }
    // `inspect` searches symlink targets: the needle is in no name.
    std::os::unix::fs::symlink("secret-target-9", m.path("q")).expect("symlink");
    let out = run(&["inspect", m.fixture.b(), "--grep", "secret-target"], None);
    let expected = if crate::PLAINTEXT_NAMES { 3 } else { 0 };
    assert_eq!(out.status.code(), Some(expected), "{}", stdout(&out));
    drop_caches();
    let link = m.path("link4095");
    assert!(fs::symlink_metadata(&link)
        .expect("lstat")
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read_link(&link).expect("readlink").as_os_str().len(),
        4095
    );
    let kinds: Vec<bool> = fs::read_dir(&m.mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_type().expect("type").is_symlink())
        .collect();
    assert!(kinds.iter().all(|&k| k), "every entry lists as a symlink");
    let err = std::os::unix::fs::symlink("t".repeat(4096), m.path("too-long")).expect_err("4096");
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    // The mark of a stored-as-file symlink set on a regular file from
    // BACKING: its contents are no sealed target, so readlink fails.
    if !crate::PLAINTEXT_NAMES {
        use std::os::unix::fs::PermissionsExt;
        fs::write(m.path("victim"), b"../../etc/passwd").expect("write");
        let raw = m.backing("victim");
        fs::set_permissions(&raw, fs::Permissions::from_mode(0o1600)).expect("mark");
        drop_caches();
        let err = fs::read_link(m.path("victim")).expect_err("not a sealed target");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        let out = run(&["fsck", m.fixture.b()], Some(KEY));
        assert_eq!(
            out.status.code(),
            Some(26),
            "fsck sees it: {}",
            stdout(&out)
        );
        fs::set_permissions(&raw, fs::Permissions::from_mode(0o600)).expect("unmark");
    }
    // chmod +t on a regular file keeps it a regular file.
    use std::os::unix::fs::PermissionsExt;
    fs::write(m.path("plain"), b"data").expect("write");
    fs::set_permissions(m.path("plain"), fs::Permissions::from_mode(0o1644)).expect("chmod");
    drop_caches();
    let meta = fs::symlink_metadata(m.path("plain")).expect("lstat");
    assert!(meta.is_file());
    assert_eq!(fs::read(m.path("plain")).expect("read"), b"data");
    let out = run(&["fsck", m.fixture.b()], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
}

// Protects: a symlink stored as a file (a long target) lists as a symlink
// in a plain listing too (a mount without file handles lists without
// attributes), beside a short one and a regular file.
#[test]
fn symlinks_list_as_symlinks_in_plain_listings() {
    if !fuse_available() {
        return;
    }
    let m = mount_limited(1024, Handles::Unavailable);
    std::os::unix::fs::symlink("t".repeat(4000), m.path("long")).expect("symlink");
    std::os::unix::fs::symlink("t", m.path("short")).expect("symlink");
    fs::write(m.path("file"), b"f").expect("write");
    drop_caches();
    let mut kinds: Vec<(String, bool)> = fs::read_dir(&m.mnt)
        .expect("readdir")
        .map(|e| {
            let e = e.expect("entry");
            let name = e.file_name().into_string().expect("utf-8");
            (name, e.file_type().expect("type").is_symlink())
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("file".to_string(), false),
            ("long".to_string(), true),
            ("short".to_string(), true)
        ]
    );
}

// Protects: a directory of 100,000 entries is listed whole and its entries
// looked up after the kernel's caches are dropped, and `chronicle path`
// maps names both ways.
#[test]
fn a_large_directory_and_path_mapping() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let dir = m.path("many");
    fs::create_dir(&dir).expect("mkdir");
    let count = 100_000;
    for i in 0..count {
        fs::File::create(dir.join(format!("entry-{i:06}"))).expect("create");
    }
    drop_caches();
    let listed = listing(&dir);
    assert_eq!(listed.len(), count);
    for i in (0..count).step_by(997) {
        assert!(fs::metadata(dir.join(format!("entry-{i:06}"))).is_ok());
    }
    let out = run(&["path", m.fixture.b(), "many/entry-000042"], Some(KEY));
    assert!(out.status.success(), "{}", stderr(&out));
    let mapped = stdout(&out).trim().to_string();
    assert!(Path::new(&mapped).exists(), "{mapped}");
    let relative = Path::new(&mapped)
        .strip_prefix(&m.fixture.backing)
        .expect("inside BACKING")
        .to_path_buf();
    let out = run(
        &["path", m.fixture.b(), path_str(&relative), "--to-plain"],
        Some(KEY),
    );
    assert_eq!(
        stdout(&out).trim(),
        "many/entry-000042",
        "{relative:?}: {}",
        stderr(&out)
    );
}

/// File `i` of the listing tests: long names, so that each reply holds a
/// few dozen entries at most and a listing takes many.
fn listed_name(i: usize) -> String {
    format!("{i:05}-{}", "n".repeat(90))
}

/// Makes directory `dir` of the mount holding files `0..count`
/// (`listed_name`), with the kernel's caches dropped after.
fn directory_of(m: &Mounted, dir: &str, count: usize) -> std::path::PathBuf {
    let dir = m.path(dir);
    fs::create_dir(&dir).expect("mkdir");
    for i in 0..count {
        fs::File::create(dir.join(listed_name(i))).expect("create");
    }
    drop_caches();
    dir
}

/// Asserts that `seen` names no entry twice and each of `stayed`.
fn assert_listed_once(seen: &[String], stayed: impl IntoIterator<Item = String>) {
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was listed twice");
    let missing: Vec<String> = stayed.into_iter().filter(|n| !unique.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} entries that stayed were skipped, such as {:?}",
        missing.len(),
        missing.first()
    );
}

// Protects: a listing read in many requests goes on where it left off
// while entries are removed and added between them (the mount keeps no
// listing: positions are the backing directory's): no entry comes twice,
// and none that stayed throughout is skipped.
#[test]
fn a_listing_goes_on_where_it_left_off_while_entries_come_and_go() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let dir = directory_of(&m, "busy", 3_000);
    let text = |e: std::io::Result<fs::DirEntry>| {
        let name = e.expect("entry").file_name();
        name.into_string().expect("utf-8")
    };
    let mut entries = fs::read_dir(&dir).expect("readdir");
    let mut seen: Vec<String> = entries.by_ref().take(50).map(text).collect();
    let removed: BTreeSet<String> = (0..3_000)
        .map(listed_name)
        .filter(|n| !seen.contains(n))
        .step_by(3)
        .collect();
    for n in &removed {
        fs::remove_file(dir.join(n)).expect("remove");
    }
    for i in 3_000..4_000 {
        fs::File::create(dir.join(listed_name(i))).expect("create");
    }
    seen.extend(entries.map(text));
    let stayed = (0..3_000).map(listed_name).filter(|n| !removed.contains(n));
    assert_listed_once(&seen, stayed);
    assert_eq!(listing(&dir).len(), 4_000 - removed.len());
}

/// The names `getdents64` gives for directory `dir`, `buffer` bytes at a
/// time, calling `between` after each call; fails past `most` names (a
/// listing that goes round).
fn getdents_names(
    dir: &fs::File,
    buffer: usize,
    most: usize,
    mut between: impl FnMut(),
) -> Vec<Vec<u8>> {
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); buffer];
    let mut entries = rustix::fs::RawDir::new(dir, &mut buf);
    let mut names = Vec::new();
    loop {
        let refill = entries.is_buffer_empty();
        if refill && !names.is_empty() {
            between();
        }
        match entries.next() {
            Some(entry) => names.push(entry.expect("getdents64").file_name().to_bytes().to_vec()),
            None => return names,
        }
        assert!(names.len() <= most, "more than {most} names listed");
    }
}

// Protects: a program whose buffer takes less than each reply holds goes on
// from inside the reply (the mount gives the rest again), while entries are
// removed between its calls: nothing twice, no survivor skipped.
#[test]
fn a_small_buffer_goes_on_from_inside_a_reply() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let dir = directory_of(&m, "small", 2_000);
    let handle = fs::File::open(&dir).expect("open");
    let mut removed = BTreeSet::new();
    let mut next_victim = 1_999;
    let names = getdents_names(&handle, 600, 4_000, || {
        // Removes from the end, which the listing has not reached yet.
        if next_victim > 1_000 {
            fs::remove_file(dir.join(listed_name(next_victim))).expect("remove");
            removed.insert(listed_name(next_victim));
            next_victim -= 1;
        }
    });
    let names: Vec<String> = names
        .into_iter()
        .map(|n| String::from_utf8(n).expect("utf-8"))
        .filter(|n| n != "." && n != "..")
        .collect();
    let stayed = (0..2_000).map(listed_name).filter(|n| !removed.contains(n));
    assert_listed_once(&names, stayed);
}

// Protects: a directory whose id record is damaged in BACKING fails its
// listing with EIO (and logs it) rather than listing as empty, which a
// program could take for the end.
#[test]
fn a_damaged_directory_record_fails_its_listing() {
    if crate::PLAINTEXT_NAMES {
        return;
    }
    let Some(m) = mount_or_skip(&[]) else { return };
    fs::create_dir(m.path("d")).expect("mkdir");
    fs::write(m.path("d/f"), b"f").expect("write");
    m.unmount();
    let record = m
        .backing("d")
        .join(chronicle_mount::name_cipher::DIR_ID_NAME);
    let mut bytes = fs::read(&record).expect("record");
    bytes[20] ^= 1;
    fs::write(&record, bytes).expect("damage");
    let out = m.remount();
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = fs::read_dir(m.path("d")).and_then(|it| it.collect::<Result<Vec<_>, _>>());
    let err = listed.expect_err("a damaged directory listed");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        m.log_text().contains("authentication failed"),
        "{}",
        m.log_text()
    );
}

// Protects: killing the mount process while it renames and creates files
// with long names leaves a consistent tree: after a remount every entry
// lists (no name fails to decode), each renamed file is under exactly one
// of its two names, and fsck is clean.
#[test]
fn killed_during_long_renames() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let dir = m.path("r");
    fs::create_dir(&dir).expect("mkdir");
    let files = 50;
    for i in 0..files {
        fs::write(
            dir.join(format!("{i:03}{}", "a".repeat(200))),
            i.to_string(),
        )
        .expect("write");
    }
    let worker_dir = dir.clone();
    let worker = std::thread::spawn(move || {
        for round in 0.. {
            for i in 0..files {
                let (from, to) = if round % 2 == 0 {
                    ("a", "b")
                } else {
                    ("b", "a")
                };
                let old = worker_dir.join(format!("{i:03}{}", from.repeat(200)));
                let new = worker_dir.join(format!("{i:03}{}", to.repeat(200)));
                if fs::rename(old, new).is_err() {
                    return;
                }
            }
        }
    });
    let made = m.path("made");
    fs::create_dir(&made).expect("mkdir");
    let creator = std::thread::spawn(move || {
        for i in 0.. {
            let name = format!("{i:06}{}", "c".repeat(220));
            if fs::write(made.join(name), b"x").is_err() {
                return;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(150));
    kill_mount(&m.mnt);
    worker.join().expect("worker");
    creator.join().expect("creator");
    let out = m.remount();
    assert!(out.status.success(), "{}", stderr(&out));
    let names = listing(&dir);
    assert_eq!(names.len(), files, "{names:?}");
    for name in listing(&m.path("made")) {
        assert_eq!(name.len(), 226, "{name:?}");
    }
    for i in 0..files {
        let a = dir.join(format!("{i:03}{}", "a".repeat(200)));
        let b = dir.join(format!("{i:03}{}", "b".repeat(200)));
        let there: Vec<_> = [a, b].into_iter().filter(|p| p.exists()).collect();
        assert_eq!(there.len(), 1, "file {i}");
        assert_eq!(fs::read_to_string(&there[0]).expect("read"), i.to_string());
    }
    assert!(
        !m.log_text().contains("authentication failed"),
        "{}",
        m.log_text()
    );
    // A kill between a new file's header and its first block leaves the
    // shape a crash leaves (docs/RELIABILITY.md, "After a crash"), which
    // `fsck` names and `fsck --repair` mends; nothing else may be there.
    m.unmount();
    let out = run(&["fsck", m.fixture.b(), "--repair"], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
    let out = run(&["fsck", m.fixture.b()], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
}

// Protects: the number of files in use is not bounded by the mount's
// open-file limit: under a limit of 1,024 descriptors (the usual default),
// 5,000 files are created in one directory, listed, looked up, read and
// removed (the mount closes the descriptors of files not in use and reopens
// them by handle).
#[test]
fn many_files_under_a_small_open_file_limit() {
    many_files_under_a_small_limit(Handles::Used);
}

// Protects: the same, where the mount cannot reopen files by handle (here:
// root without CAP_DAC_READ_SEARCH, as a mount without root would be): then
// every remembered file keeps its descriptor, and the mount asks the kernel
// to forget files past a quarter of the limit instead of failing with
// EMFILE.
#[test]
fn many_files_under_a_small_open_file_limit_without_handles() {
    many_files_under_a_small_limit(Handles::Unavailable);
}

fn many_files_under_a_small_limit(handles: Handles) {
    if !fuse_available() {
        return;
    }
    let m = mount_limited(1024, handles);
    if handles == Handles::Unavailable {
        let log = m.log_text();
        assert!(log.contains("no file handles here"), "{log}");
        if log.contains("cannot be asked to forget") {
            eprintln!("skipped: this kernel has no FUSE_NOTIFY_PRUNE (Linux 6.18)");
            return;
        }
    }
    let dir = m.path("many");
    fs::create_dir(&dir).expect("mkdir");
    let count = 5_000;
    for i in 0..count {
        fs::write(dir.join(format!("f{i:05}")), i.to_string()).expect("create");
    }
    drop_caches();
    assert_eq!(listing(&dir).len(), count);
    for i in (0..count).step_by(7) {
        assert_eq!(
            fs::read_to_string(dir.join(format!("f{i:05}"))).expect("read"),
            i.to_string()
        );
    }
    fs::remove_dir_all(&dir).expect("remove");
    assert!(!m.log_text().contains("ERROR"), "{}", m.log_text());
}

/// A mount under an open-file limit of 256 that reopens files by handle,
/// with directory `name` holding `files` (synced); the first `open` of
/// them are held open for reading and writing, then 200 more files are
/// made, past the mount's descriptor budget (64 here), so that it has
/// closed its own descriptors of the open ones and would have to reopen
/// them by handle.
fn open_past_the_descriptor_budget(
    name: &str,
    files: &[(&str, Vec<u8>)],
    open: usize,
) -> (Mounted, std::path::PathBuf, Vec<fs::File>) {
    let m = mount_limited(256, Handles::Used);
    // (Where handles cannot be used every entry keeps its descriptor, and
    // the tests using this would pass regardless.)
    assert!(!m.log_text().contains("no file handles here"));
    let dir = m.path(name);
    fs::create_dir(&dir).expect("mkdir");
    for (file, bytes) in files {
        fs::write(dir.join(file), bytes).expect("create");
    }
    let _ = std::process::Command::new("sync").status();
    let held = files[..open]
        .iter()
        .map(|(file, _)| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(file))
                .expect("open")
        })
        .collect();
    for i in 0..200 {
        fs::write(dir.join(format!("pad{i}")), "x")
            .unwrap_or_else(|e| panic!("pad {i}: {e}\n{}", m.log_text()));
    }
    (m, dir, held)
}

// Protects: a file stays readable and writable through a descriptor
// opened before it lost its last name, by unlink or by a rename over it,
// even where the mount had closed its own descriptor of the file (a small
// open-file limit) and a file handle cannot reopen a file without a name.
// The kernel opens files without telling the mount, so the mount keeps a
// descriptor of every file that loses its last name while the kernel
// remembers it.
#[test]
fn removed_files_stay_usable_while_open() {
    if !fuse_available() {
        return;
    }
    let body = |tag: u8| vec![tag; 9_000];
    let files = [
        ("unlinked", body(1)),
        ("replaced", body(2)),
        ("other", body(3)),
    ];
    let (m, dir, open) = open_past_the_descriptor_budget("removed", &files, 2);
    let [unlinked, replaced] = <[fs::File; 2]>::try_from(open).expect("two open");
    fs::remove_file(dir.join("unlinked")).expect("unlink");
    fs::rename(dir.join("other"), dir.join("replaced")).expect("rename over");
    drop_caches();
    for (file, tag) in [(&unlinked, 1), (&replaced, 2)] {
        let mut back = vec![0; 9_000];
        file.read_exact_at(&mut back, 0)
            .expect("read a removed file");
        assert!(back == body(tag), "file {tag} read back wrong");
        file.write_all_at(b"still here", 4_000).expect("write");
        file.sync_all().expect("fsync");
        drop_caches();
        let mut back = vec![0; 10];
        file.read_exact_at(&mut back, 4_000).expect("read again");
        assert_eq!(&back, b"still here");
    }
    assert_eq!(fs::read(dir.join("replaced")).expect("read"), body(3));
    assert!(!m.log_text().contains("ERROR"), "{}", m.log_text());
}

// Protects: a file removed from the backing directory behind the mount's
// back, whose backing inode number the backing file system then gives to a
// new file, is not reached through a descriptor still open on the old
// file: reads and writes through it fail, and the new file keeps its own
// contents. (The new file gets an inode number of its own in the mount.)
// Needs the backing file system to reuse the number (ext4 usually does at
// once); says so and checks nothing more where it did not.
#[test]
fn a_reused_backing_inode_is_not_reached_through_the_old_file() {
    if !fuse_available() {
        return;
    }
    let files = [("victim", vec![1u8; 9_000])];
    let (m, dir, mut open) = open_past_the_descriptor_budget("reuse", &files, 1);
    let old = open.remove(0);
    let victim_backing = m.backing("reuse/victim");
    let old_number = fs::metadata(&victim_backing).expect("stat").ino();
    fs::remove_file(&victim_backing).expect("remove behind the mount");
    fs::write(dir.join("new"), vec![2u8; 9_000]).expect("create the new file");
    let new_number = fs::metadata(m.backing("reuse/new")).expect("stat").ino();
    if new_number != old_number {
        eprintln!("skipped: the backing file system did not reuse inode {old_number}");
        return;
    }
    drop_caches();
    let mut back = vec![0; 9_000];
    assert!(
        old.read_exact_at(&mut back, 0).is_err(),
        "the old file's descriptor read {:?}...",
        &back[..4]
    );
    let wrote = old
        .write_all_at(&[3u8; 100], 0)
        .and_then(|()| old.sync_all());
    assert!(wrote.is_err(), "the old file's descriptor wrote");
    assert_eq!(fs::read(dir.join("new")).expect("read"), vec![2u8; 9_000]);
}

// Protects: a file the mount could open only for reading (its mode denies
// writing, and the mount cannot override that, as without root) and keeps
// open that way, then made writable with chmod, takes writes: the mount
// opens it again for writing instead of failing them (they would be lost
// from the page cache at write-back).
#[test]
fn a_file_made_writable_takes_writes() {
    if !fuse_available() {
        return;
    }
    let m = mount_limited(1024, Handles::NoOverride);
    let path = m.path("ro");
    fs::write(&path, b"before").expect("create");
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o444))
        .expect("chmod 444");
    drop_caches();
    assert_eq!(fs::read(&path).expect("read"), b"before");
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod 644");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open for appending");
    std::io::Write::write_all(&mut file, b" after").expect("append");
    file.sync_all().expect("fsync");
    drop(file);
    drop_caches();
    assert_eq!(fs::read(&path).expect("read"), b"before after");
}

// Protects: the mount's memory stays bounded however many files the kernel
// would remember. Past `--max-inodes` the mount asks the kernel to forget
// the inodes used least lately, so after a few thousand files are created
// and stat'ed it keeps about the limit of entries (seen as backing
// descriptors: one per entry while they fit in a quarter of the open-file
// limit), where a mount with the default limit keeps them all; every file
// still reads back.
#[test]
fn remembered_inodes_are_bounded() {
    if !fuse_available() {
        return;
    }
    // The mount raises its open-file limit to the hard limit and keeps a
    // quarter of it for entries' descriptors: stay well inside that.
    let hard: usize = fs::read_to_string("/proc/self/limits")
        .expect("limits")
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(4)?.parse().ok())
        .unwrap_or(1024);
    let dirs = (hard / 4).saturating_sub(500) / 1_000;
    if dirs < 2 {
        eprintln!("skipped: an open-file limit of {hard} is too small to tell");
        return;
    }
    let dirs = dirs.min(4);
    let files = dirs * 1_000;
    let bound = 600;
    let descriptors = |extra: &[&str]| -> (usize, Mounted) {
        // Another test's drop of the caches would make the kernel forget
        // these files too, whatever the limit.
        let _no_drops = hold_caches();
        let m = Mounted::new(extra);
        let pid = mount_pid(&m.mnt);
        for d in 0..dirs {
            let dir = m.path(&format!("d{d}"));
            fs::create_dir(&dir).expect("mkdir");
            for i in 0..1_000 {
                fs::write(dir.join(format!("f{i}")), format!("{d}/{i}")).expect("create");
            }
        }
        for d in 0..dirs {
            for entry in fs::read_dir(m.path(&format!("d{d}"))).expect("list") {
                entry.expect("entry").metadata().expect("stat");
            }
        }
        let count = || {
            fs::read_dir(format!("/proc/{pid}/fd"))
                .expect("fds")
                .count()
        };
        let mut open = count();
        // Pruning is asynchronous: give the kernel's FORGETs a moment.
        for _ in 0..50 {
            if open < bound || extra.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            open = count();
        }
        for d in 0..dirs {
            for i in (0..1_000).step_by(13) {
                let path = m.path(&format!("d{d}/f{i}"));
                assert_eq!(fs::read_to_string(path).expect("read"), format!("{d}/{i}"));
            }
        }
        (open, m)
    };
    let (bounded, m) = descriptors(&["--max-inodes", "256"]);
    if m.log_text().contains("cannot be asked to forget") {
        eprintln!("skipped: this kernel has no FUSE_NOTIFY_PRUNE (Linux 6.18)");
        return;
    }
    assert!(
        m.log_text()
            .contains("the kernel forgets inodes on request"),
        "{}",
        m.log_text()
    );
    assert!(!m.log_text().contains("ERROR"), "{}", m.log_text());
    drop(m);
    let (unbounded, m) = descriptors(&[]);
    drop(m);
    assert!(
        unbounded > files,
        "the default limit kept only {unbounded} descriptors for {files} files: \
         the test no longer sees what it measures"
    );
    assert!(
        bounded < bound,
        "{bounded} descriptors open with --max-inodes 256"
    );
}

// Protects: removing an empty directory succeeds while other processes
// list it: a listing that gives the emptied directory a new id record
// between the two steps of rmdir does not make rmdir fail with ENOTEMPTY.
#[test]
fn rmdir_while_the_directory_is_listed() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let dir = m.path("busy");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let (dir, stop) = (dir.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(entries) = fs::read_dir(&dir) {
                    entries.for_each(drop);
                }
            }
        })
    };
    let mut failures = Vec::new();
    for _ in 0..2_000 {
        fs::create_dir(&dir).expect("mkdir");
        if let Err(e) = fs::remove_dir(&dir) {
            failures.push(e.to_string());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    lister.join().expect("lister");
    assert!(
        failures.is_empty(),
        "{} rmdirs failed: {:?}",
        failures.len(),
        failures.first()
    );
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Handles {
    Used,
    /// The mount runs without CAP_DAC_READ_SEARCH, which
    /// `open_by_handle_at` needs.
    Unavailable,
    /// Nor CAP_DAC_OVERRIDE: the mount cannot open a read-only file for
    /// writing, as a mount without root could not.
    NoOverride,
}

/// A mount whose open-file limit is `nofile` (soft and hard, so it cannot
/// raise it).
fn mount_limited(nofile: u32, handles: Handles) -> Mounted {
    let fixture = Fixture::new();
    let mnt = fixture.dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let log = fixture.dir.path().join("mount.log");
    let mut command = std::process::Command::new("prlimit");
    command.arg(format!("--nofile={nofile}:{nofile}"));
    match handles {
        Handles::Used => {}
        Handles::Unavailable => {
            command.args([
                "setpriv",
                "--inh-caps=-dac_read_search",
                "--bounding-set=-dac_read_search",
                "--",
            ]);
        }
        Handles::NoOverride => {
            command.args([
                "setpriv",
                "--inh-caps=-dac_read_search,-dac_override",
                "--bounding-set=-dac_read_search,-dac_override",
                "--",
            ]);
        }
    }
    let out = command
        .arg(env!("CARGO_BIN_EXE_chronicle"))
        .args([
            "mount",
            fixture.b(),
            path_str(&mnt),
            "--log-file",
            path_str(&log),
        ])
        .env("CHRONICLE_ENCRYPTION_KEY", KEY)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("prlimit");
    assert!(out.status.success(), "{}", stderr(&out));
    Mounted { fixture, mnt, log }
}
