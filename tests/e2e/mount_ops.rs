//! Every operation the mount supports, through std::fs and libc, as a
//! program would use them.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use crate::util::*;

/// renameat2(2) of `from` to `to`: the return value and errno.
fn renameat2(from: &CString, to: &CString, flags: libc::c_uint) -> (i32, i32) {
    // SAFETY: valid NUL-terminated paths, relative to the working directory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    };
    (rc, if rc == 0 { 0 } else { errno() })
}

// Protects: files read back what was written, at any offset, with plaintext
// sizes, while the backing holds only ciphertext.
#[test]
fn files_read_write_append_truncate() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let p = m.path("data.txt");
    fs::write(&p, b"hello, encrypted world\n").expect("write");
    assert_eq!(fs::read(&p).expect("read"), b"hello, encrypted world\n");
    assert_eq!(fs::metadata(&p).expect("stat").len(), 23);
    let raw = fs::read(m.backing("data.txt")).expect("raw");
    assert_eq!(
        raw.len() as u64,
        chronicle_mount::layout::ciphertext_size(23)
    );
    assert!(!raw.windows(9).any(|w| w == b"encrypted"));

    // O_APPEND
    let mut f = OpenOptions::new().append(true).open(&p).expect("append");
    f.write_all(b"more\n").expect("append write");
    drop(f);
    assert_eq!(
        fs::read(&p).expect("read"),
        b"hello, encrypted world\nmore\n"
    );

    // pwrite past the end leaves a zero hole; pread across blocks.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("rw");
    f.write_all_at(b"XYZ", 10_000).expect("pwrite");
    let mut buf = vec![0u8; 10_003];
    f.read_exact_at(&mut buf, 0).expect("pread");
    assert_eq!(&buf[..28], b"hello, encrypted world\nmore\n");
    assert!(buf[28..10_000].iter().all(|&b| b == 0));
    assert_eq!(&buf[10_000..], b"XYZ");

    // ftruncate down and up.
    f.set_len(5).expect("shrink");
    assert_eq!(fs::read(&p).expect("read"), b"hello");
    f.set_len(8200).expect("grow");
    let got = fs::read(&p).expect("read");
    assert_eq!(got.len(), 8200);
    assert_eq!(&got[..5], b"hello");
    assert!(got[5..].iter().all(|&b| b == 0));
    drop(f);

    // O_TRUNC
    fs::write(&p, b"short").expect("truncate-write");
    assert_eq!(fs::read(&p).expect("read"), b"short");

    // O_EXCL on an existing file fails.
    let err = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .expect_err("excl");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);

    // A large file in 1 MiB writes.
    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("big"), &big).expect("big write");
    assert_eq!(fs::read(m.path("big")).expect("big read"), big);
}

// Protects: O_DIRECT opens and transfers work (the kernel sends them
// straight through; our backing I/O is independent of the caller's flags).
#[test]
fn o_direct_works() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let p = m.path("direct");
    let data = vec![0x5au8; 8192];
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .expect("open O_DIRECT");
    f.write_all(&data).expect("direct write");
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut back = vec![0u8; 8192];
    f.read_exact(&mut back).expect("direct read");
    assert_eq!(back, data);
}

// Protects: directories, renames (plain, NOREPLACE, EXCHANGE), hard links
// sharing an inode, symlinks, unlink of open files.
#[test]
fn namespace_operations() {
    let Some(m) = mount_or_skip(&[]) else { return };
    fs::create_dir_all(m.path("d/e")).expect("mkdir");
    fs::write(m.path("d/e/f"), b"one").expect("write");
    fs::write(m.path("g"), b"two").expect("write");
    let mut names: Vec<_> = fs::read_dir(m.path("d"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["e"]);
    let root: Vec<_> = fs::read_dir(&m.mnt)
        .expect("readdir")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert!(
        !root.iter().any(|n| n == "chronicle.volume"),
        "the configuration is hidden"
    );
    if crate::PLAINTEXT_NAMES {
        assert!(
            fs::write(m.path("chronicle.volume"), b"x").is_err(),
            "and cannot be created"
        );
    } else {
        // Encrypted, the name is stored as ciphertext: no clash with the
        // configuration, which stays as it was.
        let config = fs::read(m.fixture.backing.join("chronicle.volume")).expect("config");
        fs::write(m.path("chronicle.volume"), b"x").expect("an ordinary name");
        assert_eq!(fs::read(m.path("chronicle.volume")).expect("read"), b"x");
        assert_eq!(
            fs::read(m.fixture.backing.join("chronicle.volume")).expect("config"),
            config
        );
    }

    fs::rename(m.path("d/e/f"), m.path("f2")).expect("rename");
    assert_eq!(fs::read(m.path("f2")).expect("read"), b"one");
    fs::rename(m.path("d"), m.path("d2")).expect("rename dir");
    assert!(m.path("d2/e").is_dir());

    // renameat2 NOREPLACE and EXCHANGE
    let (a, b) = (cstr(&m.path("f2")), cstr(&m.path("g")));
    assert_eq!(
        renameat2(&a, &b, libc::RENAME_NOREPLACE),
        (-1, libc::EEXIST)
    );
    assert_eq!(renameat2(&a, &b, libc::RENAME_EXCHANGE), (0, 0));
    assert_eq!(fs::read(m.path("f2")).expect("read"), b"two");
    assert_eq!(fs::read(m.path("g")).expect("read"), b"one");

    // Hard links share contents and the inode number.
    fs::hard_link(m.path("g"), m.path("g-link")).expect("link");
    let (s1, s2) = (
        fs::metadata(m.path("g")).expect("s"),
        fs::metadata(m.path("g-link")).expect("s"),
    );
    assert_eq!(s1.ino(), s2.ino());
    assert_eq!(s1.nlink(), 2);
    fs::write(m.path("g-link"), b"changed through the link").expect("write link");
    assert_eq!(
        fs::read(m.path("g")).expect("read"),
        b"changed through the link"
    );

    // Symlinks
    std::os::unix::fs::symlink("d2/e", m.path("sym")).expect("symlink");
    assert_eq!(
        fs::read_link(m.path("sym")).expect("readlink").to_str(),
        Some("d2/e")
    );
    assert!(m.path("sym").is_dir());

    // Unlink while open: the open file keeps working.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("f2"))
        .expect("open");
    fs::remove_file(m.path("f2")).expect("unlink");
    assert!(!m.path("f2").exists());
    f.write_all_at(b"still here", 0)
        .expect("write after unlink");
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_string(&mut s).expect("read after unlink");
    assert_eq!(s, "still here");

    // rmdir
    assert!(fs::remove_dir(m.path("d2")).is_err(), "not empty");
    fs::remove_dir(m.path("d2/e")).expect("rmdir");
    fs::remove_dir(m.path("d2")).expect("rmdir");
    assert!(!m.path("d2").exists());
}

// Protects: the SETATTR by which the kernel writes back a file's times
// before each `fsync` (with write-back caching), answered without reading
// the backing file's times (`untimed`), keeps the file's mode right, and
// the time the program saw never goes back across a remount (held blocks
// written later only move it on).
#[test]
fn written_back_times_keep_mode_and_never_go_back() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let p = m.path("log");
    fs::write(&p, vec![1u8; 3 * 4096]).expect("write");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).expect("chmod");
    let file = fs::File::options().write(true).open(&p).expect("open");
    file.sync_all().expect("fsync");
    for i in 0..40u8 {
        file.write_all_at(&[i; 4096], 4096).expect("rewrite");
        file.sync_all().expect("fsync");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let meta = fs::metadata(&p).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    let seen = (meta.mtime(), meta.mtime_nsec());
    drop(file);
    m.unmount();
    let out = m.remount();
    assert!(out.status.success(), "remount: {}", stderr(&out));
    let meta = fs::metadata(&p).expect("stat");
    assert!(
        (meta.mtime(), meta.mtime_nsec()) >= seen,
        "the time went back"
    );
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(fs::read(&p).expect("read")[4096..8192], [39u8; 4096]);
}

// Protects: a time before 1970 with a fraction of a second is set as
// given (whole seconds down, nanoseconds up from there), not rounded
// toward 1970.
#[test]
fn times_before_1970_keep_their_fraction() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let dir = m.path("old");
    fs::create_dir(&dir).expect("mkdir");
    let when = std::time::UNIX_EPOCH - std::time::Duration::from_millis(1_500);
    fs::File::open(&dir)
        .expect("open")
        .set_modified(when)
        .expect("utimes");
    let meta = fs::metadata(&dir).expect("stat");
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (-2, 500_000_000));
}

// Protects: attributes: chmod, chown, utimes, access, statfs, FIFOs and
// sockets, and that writes keep sizes in plaintext units.
#[test]
fn attributes_and_special_files() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let p = m.path("attr");
    fs::write(&p, vec![1u8; 5000]).expect("write");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(
        fs::metadata(&p).expect("stat").permissions().mode() & 0o777,
        0o640
    );
    std::os::unix::fs::chown(&p, Some(1234), Some(4321)).expect("chown");
    let meta = fs::metadata(&p).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (1234, 4321));
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    fs::File::options()
        .write(true)
        .open(&p)
        .expect("open")
        .set_modified(when)
        .expect("utimes");
    assert_eq!(fs::metadata(&p).expect("stat").mtime(), 1_700_000_000);
    assert_eq!(fs::metadata(&p).expect("stat").len(), 5000);

    let c = cstr(&p);
    // SAFETY: valid path.
    assert_eq!(
        unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) },
        0
    );

    let fifo = cstr(&m.path("fifo"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(m.path("fifo"))
        .expect("stat")
        .file_type()
        .is_fifo());
    let sock = std::os::unix::net::UnixListener::bind(m.path("sock")).expect("bind socket");
    assert!(fs::symlink_metadata(m.path("sock"))
        .expect("stat")
        .file_type()
        .is_socket());
    drop(sock);

    let mnt = cstr(&m.mnt);
    // SAFETY: valid path and a zeroed statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statvfs(mnt.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0);
}

// Protects: a volume made without --xattrs (the default) refuses every
// extended-attribute call with EOPNOTSUPP (the kernel then stops asking, so
// `ls -l` costs no request per file for labels and ACLs), and stores none.
#[test]
fn extended_attributes_off_by_default() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let p = m.path("x");
    fs::write(&p, b"x").expect("write");
    let c = cstr(&p);
    let name = CString::new("user.secret").expect("name");
    for _ in 0..2 {
        // SAFETY: valid path, name and value buffers.
        let rc = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) };
        assert_eq!((rc, errno()), (-1, libc::EOPNOTSUPP));
        let mut buf = [0u8; 16];
        assert_eq!(getxattr(&c, &name, &mut buf), -1);
        assert_eq!(errno(), libc::EOPNOTSUPP);
    }
    let raw = cstr(&m.backing("x"));
    let mut list = [0u8; 256];
    // SAFETY: valid path and buffer.
    let n = unsafe { libc::listxattr(raw.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert!(
        n <= 0 || !list[..n as usize].starts_with(b"user."),
        "nothing stored"
    );
    let out = run(&["info", m.fixture.b()], None);
    assert!(
        stdout(&out).contains("Extended attributes: not stored"),
        "{}",
        stdout(&out)
    );
}

// Protects: user.* extended attributes round-trip and are stored encrypted;
// other namespaces are refused.
#[test]
fn extended_attributes() {
    let Some(m) = mount_xattrs_or_skip() else {
        return;
    };
    let p = m.path("x");
    fs::write(&p, b"x").expect("write");
    let c = cstr(&p);
    let name = CString::new("user.secret").expect("name");
    let value = b"attribute plaintext";
    // SAFETY: valid path, name and value buffers.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr errno {}", errno());
    let mut buf = [0u8; 64];
    let n = getxattr(&c, &name, &mut buf);
    assert_eq!(&buf[..n as usize], value);
    let size = getxattr(&c, &name, &mut []);
    assert_eq!(size as usize, value.len());
    // SAFETY: buffer of the given length.
    let n = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"user.secret\0");
    // The backing stores ciphertext.
    let raw = cstr(&m.backing("x"));
    let mut stored = [0u8; 128];
    let n = getxattr(&raw, &name, &mut stored);
    assert_eq!(
        n as usize,
        value.len() + chronicle_mount::cipher::FRAME_OVERHEAD
    );
    assert!(!stored.windows(9).any(|w| w == b"plaintext"));
    // SAFETY: valid path and name.
    assert_eq!(unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) }, 0);
    let n = getxattr(&c, &name, &mut buf);
    assert_eq!((n, errno()), (-1, libc::ENODATA));
    let trusted = CString::new("trusted.x").expect("name");
    // SAFETY: valid buffers.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            trusted.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, -1);
}

// Protects: fallocate (mode 0 extends, KEEP_SIZE keeps the size, PUNCH_HOLE
// zeroes), lseek SEEK_DATA/SEEK_HOLE, fsync and fdatasync.
#[test]
fn fallocate_lseek_fsync() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let p = m.path("alloc");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .expect("open");
    f.write_all_at(&[9u8; 100], 0).expect("write");
    // SAFETY: valid descriptor.
    assert_eq!(
        unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, 10_000) },
        0
    );
    assert_eq!(f.metadata().expect("stat").len(), 10_000);
    // SAFETY: valid descriptor.
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            50_000,
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(f.metadata().expect("stat").len(), 10_000);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: valid descriptor.
    assert_eq!(
        unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), punch, 10, 20) },
        0
    );
    let mut buf = [0u8; 100];
    f.read_exact_at(&mut buf, 0).expect("read");
    assert!(
        buf[..10].iter().all(|&b| b == 9)
            && buf[10..30].iter().all(|&b| b == 0)
            && buf[30..].iter().all(|&b| b == 9)
    );
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: valid descriptor.
    assert_eq!(unsafe { libc::lseek(fd, 5, libc::SEEK_DATA) }, 5);
    // SAFETY: valid descriptor.
    assert_eq!(unsafe { libc::lseek(fd, 5, libc::SEEK_HOLE) }, 10_000);
    f.sync_all().expect("fsync");
    f.sync_data().expect("fdatasync");
    let dir = fs::File::open(&m.mnt).expect("open dir");
    dir.sync_all().expect("fsyncdir");
}

// Protects: shared and private mmap of files (the engine reads segments
// through mmap), including writes through a shared mapping.
#[test]
fn mmap_shared_and_private() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let p = m.path("mapped");
    let mut data: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i % 253) as u8).collect();
    fs::write(&p, &data).expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    for flags in [libc::MAP_SHARED, libc::MAP_PRIVATE] {
        // SAFETY: mapping a valid descriptor for its length; unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                data.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        // SAFETY: the mapping is data.len() bytes long and stays mapped here.
        let view = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), data.len()) };
        assert!(view == &data[..], "the mapping shows the file's plaintext");
        let mark = if flags == libc::MAP_SHARED {
            0xEE
        } else {
            0x11
        };
        view[5000] = mark;
        // SAFETY: ptr/len are the mapping made above.
        unsafe {
            libc::msync(ptr, data.len(), libc::MS_SYNC);
            libc::munmap(ptr, data.len());
        }
        let now = fs::read(&p).expect("read");
        // The shared write reaches the file; the private one never does.
        assert_eq!(
            now[5000],
            0xEE,
            "after {}",
            if flags == libc::MAP_SHARED {
                "MAP_SHARED"
            } else {
                "MAP_PRIVATE"
            }
        );
        data[5000] = 0xEE;
    }
}

// Protects: --read-only refuses writes; data stays readable.
#[test]
fn read_only_mount() {
    let Some(m) = mount_or_skip(&[]) else { return };
    fs::write(m.path("keep"), b"kept").expect("write");
    m.unmount();
    let ro = Mounted::with_fixture(
        Fixture {
            dir: tempfile::tempdir().expect("unused"),
            backing: m.fixture.backing.clone(),
        },
        &["--read-only"],
    );
    assert_eq!(fs::read(ro.path("keep")).expect("read"), b"kept");
    let err = fs::write(ro.path("new"), b"x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

// Protects: a large directory lists every entry exactly once across many
// readdir(plus) calls, with the inode numbers stat reports, and inode
// numbers stay the same after the kernel forgets and looks up again.
#[test]
fn large_directories_and_stable_inodes() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let dir = m.path("many");
    fs::create_dir(&dir).expect("mkdir");
    let names: Vec<String> = (0..1500)
        .map(|i| format!("entry-with-a-longish-name-{i:05}"))
        .collect();
    for n in &names {
        fs::write(dir.join(n), n.as_bytes()).expect("create");
    }
    let inodes: std::collections::BTreeMap<String, u64> = names
        .iter()
        .map(|n| (n.clone(), fs::metadata(dir.join(n)).expect("stat").ino()))
        .collect();
    drop_dentries_and_inodes();
    let mut listed: Vec<(String, u64)> = fs::read_dir(&dir)
        .expect("readdir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::os::unix::fs::DirEntryExt::ino(&e),
            )
        })
        .collect();
    listed.sort();
    let expected: Vec<(String, u64)> = inodes.clone().into_iter().collect();
    assert_eq!(listed.len(), names.len(), "each entry once");
    assert!(
        listed == expected,
        "readdir names and inode numbers match stat"
    );
    for (n, ino) in &inodes {
        assert_eq!(
            fs::metadata(dir.join(n)).expect("stat").ino(),
            *ino,
            "{n} kept its inode number"
        );
    }
}

// Protects (regression): a file or directory created through the mount keeps
// exactly the mode the caller asked for. The kernel applies the caller's
// umask; the mount process's own umask used to strip bits a second time
// (0777 under umask 0 became 0755), found by pjdfstest.
#[test]
fn creation_modes_are_not_masked_twice() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let script = format!(
        "umask 0 && mkdir -m 777 {dir} && mkfifo -m 666 {fifo} && : > {file} && chmod 0 {file} && umask 027 && mkdir {masked}",
        dir = path_str(&m.path("open-dir")),
        fifo = path_str(&m.path("fifo")),
        file = path_str(&m.path("file")),
        masked = path_str(&m.path("masked")),
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("sh");
    assert!(status.success());
    let mode = |name: &str| {
        fs::symlink_metadata(m.path(name))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("open-dir"), 0o777);
    assert_eq!(mode("fifo"), 0o666);
    assert_eq!(mode("masked"), 0o750);
    let backing_mode = fs::metadata(m.backing("open-dir"))
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(backing_mode, 0o777);
}

// Protects: a symlink's own timestamps can be set (utimensat with
// AT_SYMLINK_NOFOLLOW), as on a local file system.
#[test]
fn symlink_times() {
    let Some(m) = mount_or_skip(&[]) else { return };
    std::os::unix::fs::symlink("nowhere", m.path("link")).expect("symlink");
    let status = std::process::Command::new("touch")
        .args(["-h", "-d", "@1600000000", path_str(&m.path("link"))])
        .status()
        .expect("touch");
    assert!(status.success());
    assert_eq!(
        fs::symlink_metadata(m.path("link")).expect("lstat").mtime(),
        1_600_000_000
    );
}

/// The names `readdir` returns from the open directory stream `dir` until
/// its end.
fn names_until_end(dir: *mut libc::DIR) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        // SAFETY: `dir` is an open stream from `opendir`; the entry it
        // returns stays valid until the next call on the stream.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            return names;
        }
        // SAFETY: `d_name` is NUL-terminated within the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        names.push(name.to_string_lossy().into_owned());
    }
}

// Protects: `rewinddir` sees entries made and removed since the directory
// was opened (a listing from offset 0 starts a new backing listing, and
// the kernel drops the listing it cached when the directory changes
// through the mount).
#[test]
fn rewinddir_sees_changes() {
    let Some(m) = mount_or_skip(&[]) else { return };
    fs::create_dir(m.path("d")).expect("mkdir");
    fs::write(m.path("d/old"), b"1").expect("write");
    let path = cstr(&m.path("d"));
    // SAFETY: a valid NUL-terminated path.
    let dir = unsafe { libc::opendir(path.as_ptr()) };
    assert!(!dir.is_null(), "opendir");
    let first = names_until_end(dir);
    fs::write(m.path("d/new"), b"2").expect("write");
    fs::remove_file(m.path("d/old")).expect("remove");
    // SAFETY: `dir` is open; it is closed once, below.
    unsafe { libc::rewinddir(dir) };
    let second = names_until_end(dir);
    // SAFETY: as above.
    unsafe { libc::closedir(dir) };
    assert!(first.contains(&"old".to_string()), "{first:?}");
    assert!(second.contains(&"new".to_string()), "{second:?}");
    assert!(!second.contains(&"old".to_string()), "{second:?}");
}

// Protects: the mount keeps the contents of the files the kernel opens by
// itself (it answers OPEN with ENOSYS) by inode, a bounded number at a
// time: with more files open than it keeps (300), each written in place
// over synced blocks (rewrites it holds back) and half of them synced,
// every file reads back what was written, through its descriptor and after
// the volume is mounted again, and the mount never has more backing files
// open for their contents than it keeps. With write-back caching and
// without (where every write reaches the mount before it returns).
#[test]
fn more_files_open_than_the_mount_keeps() {
    more_files_open_than_kept(&[]);
}

#[test]
fn more_files_open_than_the_mount_keeps_without_writeback_cache() {
    more_files_open_than_kept(&["--no-writeback-cache"]);
}

/// Backing files the mount process has open for reading or writing
/// (not the `O_PATH` descriptors of its inode table).
fn content_descriptors(m: &Mounted) -> usize {
    let pid = mount_pid(&m.mnt);
    let backing = m.fixture.backing.canonicalize().expect("backing");
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).expect("fd list");
    fds.flatten()
        .filter(|fd| fs::read_link(fd.path()).is_ok_and(|to| to.starts_with(&backing)))
        .filter(|fd| {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            flags & libc::O_PATH as u32 == 0
        })
        .count()
}

fn more_files_open_than_kept(extra: &[&str]) {
    let Some(m) = mount_or_skip(extra) else {
        return;
    };
    let dir = m.path("open");
    fs::create_dir(&dir).expect("mkdir");
    let count = 300;
    let old = |i: usize| vec![(i % 251) as u8; 12_288];
    let new = |i: usize| vec![(i % 241) as u8 ^ 0x5a; 5_000];
    for i in 0..count {
        fs::write(dir.join(format!("f{i}")), old(i)).expect("create");
    }
    let _ = std::process::Command::new("sync").status();
    let files: Vec<fs::File> = (0..count)
        .map(|i| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(format!("f{i}")))
                .expect("open")
        })
        .collect();
    for (i, file) in files.iter().enumerate() {
        file.write_all_at(&new(i), 3_000).expect("rewrite");
        if i % 2 == 0 {
            file.sync_all().expect("fsync");
        }
    }
    let expected = |i: usize| {
        let mut bytes = old(i);
        bytes[3_000..8_000].copy_from_slice(&new(i));
        bytes
    };
    drop_caches();
    for (i, file) in files.iter().enumerate().rev() {
        let mut back = vec![0; 12_288];
        file.read_exact_at(&mut back, 0).expect("read");
        assert!(back == expected(i), "file {i} read back wrong");
    }
    // At most 256 kept, plus files that held rewrites back when their turn
    // to go came (written within a second, then let go at the next turn).
    let open = content_descriptors(&m);
    assert!(open < count, "{open} backing files open for {count} files");
    drop(files);
    m.unmount();
    let out = m.remount();
    assert!(out.status.success(), "remount: {}", stderr(&out));
    for i in 0..count {
        let back = fs::read(dir.join(format!("f{i}"))).expect("read after remount");
        assert!(back == expected(i), "file {i} wrong after remount");
    }
    // The mount's own errors; not fuser's "Failed to send FUSE reply: No
    // such file or directory", logged when the kernel has already given up
    // on a request (an interrupted one) before its reply arrives, seen once
    // in a loaded CI run at unmount.
    let log = m.log_text();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("ERROR")
                && !l.contains(
                    "ERROR fuser::reply] Failed to send FUSE reply: No such file or directory",
                )
        })
        .collect();
    assert!(errors.is_empty(), "{log}");
}

// Protects: a new regular file is whole from its first moment and belongs
// to whoever made it (every new file is made by MKNOD: the mount answers
// CREATE with ENOSYS). One made by mknod(2) reads empty, takes writes and
// has its header in BACKING; one made by another user of an --allow-other
// mount is theirs, in the mount and in BACKING, with the set-user-id bit
// it was made with (the change of owner would drop it).
#[test]
fn new_files_are_whole_and_belong_to_their_makers() {
    let Some(m) = mount_or_skip(&["--allow-other"]) else {
        return;
    };
    let made = CString::new(path_str(&m.path("made"))).expect("path");
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(made.as_ptr(), libc::S_IFREG | 0o644, 0) };
    assert_eq!(rc, 0, "mknod: errno {}", errno());
    assert_eq!(fs::read(m.path("made")).expect("read"), b"");
    let header = fs::metadata(m.backing("made")).expect("backing").len();
    assert!(header > 0, "the new file has its header in BACKING");
    fs::write(m.path("made"), b"written").expect("write");
    assert_eq!(fs::read(m.path("made")).expect("read"), b"written");

    fs::create_dir(m.path("shared")).expect("mkdir");
    for (dir, mode) in [
        (m.path("shared"), 0o777),
        (m.mnt.clone(), 0o755),
        (m.fixture.dir.path().to_path_buf(), 0o755),
    ] {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let theirs = CString::new(path_str(&m.path("shared/theirs"))).expect("path");
    // SAFETY: between fork and _exit the child makes only async-signal-safe
    // calls, on a path prepared before the fork.
    let status = unsafe {
        match libc::fork() {
            0 => {
                let dropped = libc::setgid(65534) == 0 && libc::setuid(65534) == 0;
                libc::umask(0);
                let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
                let fd = match dropped {
                    true => libc::open(theirs.as_ptr(), flags, 0o4755 as libc::c_uint),
                    false => -1,
                };
                libc::_exit(if fd >= 0 { 0 } else { 1 });
            }
            pid => {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                status
            }
        }
    };
    assert_eq!(status, 0, "nobody makes a file in a 0777 directory");
    for place in [m.path("shared/theirs"), m.backing("shared/theirs")] {
        let meta = fs::metadata(&place).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{place:?}");
        assert_eq!(meta.mode() & 0o7777, 0o4755, "{place:?}");
    }
}

// Protects: in a set-group-id directory, what another user of a root
// --allow-other mount makes belongs to the directory's group, and a new
// directory there is set-group-id too, as on a local file system (the
// mount, creating as root, gave them the maker's own group before).
#[test]
fn set_group_id_directories_pass_on_their_group() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let Some(m) = mount_or_skip(&["--allow-other"]) else {
        return;
    };
    use std::os::unix::process::CommandExt as _;
    let project = m.path("project");
    fs::create_dir(&project).expect("mkdir");
    std::os::unix::fs::chown(&project, None, Some(4242)).expect("chgrp");
    fs::set_permissions(&project, fs::Permissions::from_mode(0o2777)).expect("chmod");
    for (dir, mode) in [
        (m.mnt.clone(), 0o755),
        (m.fixture.dir.path().to_path_buf(), 0o755),
    ] {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let script = "touch project/file && mkdir project/dir && mkfifo project/fifo";
    let status = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(&m.mnt)
        .uid(65534)
        .gid(65534)
        .status()
        .expect("run");
    assert!(status.success(), "nobody makes entries in a 2777 directory");
    for name in ["file", "dir", "fifo"] {
        let path = format!("project/{name}");
        for place in [m.path(&path), m.backing(&path)] {
            let meta = fs::symlink_metadata(&place).expect("stat");
            assert_eq!((meta.uid(), meta.gid()), (65534, 4242), "{place:?}");
        }
    }
    let dir = fs::metadata(m.path("project/dir")).expect("stat");
    assert_ne!(
        dir.mode() & 0o2000,
        0,
        "a directory made in it is set-group-id"
    );
}
