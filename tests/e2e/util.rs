//! Shared helpers: running the binary, making volumes, mounting with a
//! guard that always unmounts.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const WRONG_KEY: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chronicle"));
    cmd.env_remove("CHRONICLE_ENCRYPTION_KEY")
        .env_remove("CHRONICLE_PASSPHRASE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// Runs the binary with `CHRONICLE_ENCRYPTION_KEY=key` (if any).
pub fn run(args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = bin();
    cmd.args(args);
    if let Some(key) = key {
        cmd.env("CHRONICLE_ENCRYPTION_KEY", key);
    }
    cmd.output().expect("run chronicle")
}

/// Runs the binary as the user and group `id` (root only), with
/// `CHRONICLE_ENCRYPTION_KEY=key`.
pub fn run_as(id: u32, args: &[&str], key: &str) -> Output {
    use std::os::unix::process::CommandExt as _;
    bin()
        .args(args)
        .env("CHRONICLE_ENCRYPTION_KEY", key)
        .uid(id)
        .gid(id)
        .output()
        .expect("run chronicle")
}

/// Makes `cmd` run under the file-creation mask `mask`.
pub fn under_umask(cmd: &mut Command, mask: u32) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec the child calls only umask(2), which
    // is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        })
    }
}

/// Gives everything under `path`, itself included, to the user and
/// group `id` (root only).
pub fn chown_tree(path: &Path, id: u32) {
    let chowned = Command::new("chown")
        .args(["-R", &format!("{id}:{id}"), path_str(path)])
        .status()
        .expect("chown");
    assert!(chowned.success());
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A temporary directory with a fresh volume in `backing/`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub backing: PathBuf,
}

/// `--plaintext-names` when this test binary runs the suite on volumes
/// that store names as given (`tests/e2e_plaintext`), else nothing.
pub fn names_flag() -> &'static [&'static str] {
    if crate::PLAINTEXT_NAMES {
        &["--plaintext-names"]
    } else {
        &[]
    }
}

/// `chronicle rotate-key BACKING --new-key-env NEWK EXTRA…`, from the key
/// `from` to the key `to`, its output piped.
pub fn rotate_key(backing: &Path, from: &str, to: &str, extra: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.args(["rotate-key", path_str(backing), "--new-key-env", "NEWK"])
        .args(extra)
        .env("CHRONICLE_ENCRYPTION_KEY", from)
        .env("NEWK", to)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The backing path of plaintext path `plain` in the volume in `backing`
/// (which opens with `key`), through the volume's names.
/// `chronicle encrypt PLAIN BACKING EXTRA…` with the run's name flag and
/// the test key.
pub fn encrypt(plain: &Path, backing: &Path, extra: &[&str]) -> Output {
    let args = [
        &["encrypt", path_str(plain), path_str(backing)][..],
        extra,
        names_flag(),
    ];
    run(&args.concat(), Some(KEY))
}

pub fn backing_path_with(backing: &Path, plain: &str, key: &str) -> PathBuf {
    let key = chronicle_mount::UserKey::from_hex(key, "test").expect("key");
    let volume = chronicle_mount::Volume::open(backing, &key).expect("open the volume");
    backing.join(volume.backing_path(Path::new(plain)).expect("map the path"))
}

/// `backing_path_with` for a volume under the test key.
pub fn backing_path(backing: &Path, plain: &str) -> PathBuf {
    backing_path_with(backing, plain, KEY)
}

impl Fixture {
    pub fn new() -> Fixture {
        Self::with_init_flags(&[])
    }

    /// A fresh volume made with `init` and `extra` flags (e.g. `--xattrs`).
    pub fn with_init_flags(extra: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        let mut args = vec!["init", path_str(&backing)];
        args.extend_from_slice(names_flag());
        args.extend_from_slice(extra);
        let out = run(&args, Some(KEY));
        assert!(out.status.success(), "init failed: {}", stderr(&out));
        Fixture { dir, backing }
    }

    pub fn b(&self) -> &str {
        path_str(&self.backing)
    }
}

/// Every file under `dir` with its bytes, to show that nothing was written.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

/// Whether mount tests can run here. Without /dev/fuse or root they skip
/// with a message, unless CHRONICLE_REQUIRE_FUSE=1 (CI), where they fail.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists() && running_as_root();
    if !ok {
        let why = "cannot mount: needs /dev/fuse and root";
        if std::env::var("CHRONICLE_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("{why}, and CHRONICLE_REQUIRE_FUSE=1");
        }
        eprintln!("SKIPPED: {why} (set CHRONICLE_REQUIRE_FUSE=1 to make this a failure)");
    }
    ok
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A fresh mounted volume, or `None` (after saying why) where mounting is
/// impossible and not required.
pub fn mount_or_skip(extra: &[&str]) -> Option<Mounted> {
    fuse_available().then(|| Mounted::new(extra))
}

/// `mount_or_skip` for a volume that stores extended attributes.
pub fn mount_xattrs_or_skip() -> Option<Mounted> {
    fuse_available().then(|| Mounted::with_fixture(Fixture::with_init_flags(&["--xattrs"]), &[]))
}

/// Runs the binary with `input` on its standard input.
pub fn run_with_stdin(args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chronicle");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write to stdin");
    child.wait_with_output().expect("wait for chronicle")
}

pub fn is_mounted(path: &Path) -> bool {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .any(|l| l.split(' ').nth(4) == Some(canonical.to_str().unwrap_or("")))
        })
        .unwrap_or(false)
}

/// A mounted volume; unmounts on drop, even when the test failed.
pub struct Mounted {
    pub fixture: Fixture,
    pub mnt: PathBuf,
    pub log: PathBuf,
}

impl Mounted {
    pub fn new(extra: &[&str]) -> Mounted {
        Self::with_fixture(Fixture::new(), extra)
    }

    pub fn with_fixture(fixture: Fixture, extra: &[&str]) -> Mounted {
        let mnt = fixture.dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).expect("mkdir mnt");
        let log = fixture.dir.path().join("mount.log");
        let mut args = vec![
            "mount",
            fixture.b(),
            path_str(&mnt),
            "--log-file",
            path_str(&log),
        ];
        args.extend_from_slice(extra);
        let out = run(&args, Some(KEY));
        assert!(out.status.success(), "mount failed: {}", stderr(&out));
        assert!(is_mounted(&mnt), "mount returned but nothing is mounted");
        Mounted { fixture, mnt, log }
    }

    /// Mounts the volume again at the same place, logging to the same file
    /// (after the mount process was killed).
    pub fn remount(&self) -> Output {
        let args = [
            "mount",
            self.fixture.b(),
            path_str(&self.mnt),
            "--log-file",
            path_str(&self.log),
        ];
        run(&args, Some(KEY))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// The backing path of `name` (a path inside the mount).
    pub fn backing(&self, name: &str) -> PathBuf {
        backing_path(&self.fixture.backing, name)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn unmount(&self) {
        if is_mounted(&self.mnt) {
            let out = run(&["umount", path_str(&self.mnt)], None);
            if !out.status.success() {
                eprintln!(
                    "chronicle umount {}: {}; detaching it",
                    self.mnt.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        // The mount process exits once the kernel ends the session.
        for _ in 0..500 {
            if !is_mounted(&self.mnt) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // `chronicle umount` returns once the process has let go of the
        // volume; a detached mount does not wait for that, and a test that
        // mounts the volume again must.
        let _ = chronicle_mount::lock::VolumeLock::wait_until_free(
            &self.fixture.backing,
            std::time::Duration::from_secs(30),
        );
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

pub fn cstr(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("no NUL")
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// getxattr(2): the length (or -1, with `errno()`); `buf` empty asks for the length.
pub fn getxattr(path: &std::ffi::CString, name: &std::ffi::CString, buf: &mut [u8]) -> isize {
    let ptr = if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: valid NUL-terminated strings; `ptr` is null or `buf` of `buf.len()` bytes.
    unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), ptr, buf.len()) }
}

/// setxattr(2) with no flags: 0, or -1 with `errno()`.
pub fn setxattr(path: &std::ffi::CString, name: &std::ffi::CString, value: &[u8]) -> i32 {
    // SAFETY: valid NUL-terminated strings; `value` is readable for its length.
    unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    }
}

/// Taken shared by a test that counts what the kernel keeps cached (the
/// mount's descriptors follow the kernel's inodes) while it measures, and
/// exclusively by every drop of the caches: a drop in a concurrent test
/// evicts the measured inodes too (it once left the mount 728 descriptors
/// for 4,000 files in `remembered_inodes_are_bounded`).
static CACHE_DROPS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Keeps other tests from dropping the kernel's caches until the guard is
/// dropped. The holder must neither drop them itself nor take this guard
/// again (either would wait forever).
pub fn hold_caches() -> std::sync::RwLockReadGuard<'static, ()> {
    CACHE_DROPS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Held while the caches are dropped: here, or by a program a test runs
/// (`chronicle demo`).
pub fn exclusive_cache_drop() -> std::sync::RwLockWriteGuard<'static, ()> {
    CACHE_DROPS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Drops the kernel's cached pages and attributes, so that reads reach the
/// mount and see what is in BACKING now.
pub fn drop_caches() {
    write_drop_caches("3");
}

/// Drops the kernel's cached dentries and inodes only (pages stay).
pub fn drop_dentries_and_inodes() {
    write_drop_caches("2");
}

fn write_drop_caches(what: &str) {
    let _exclusive = exclusive_cache_drop();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", what);
}

/// Kills the mount process serving `mnt` with SIGKILL (a crash) and waits
/// until it has exited: the volume lock is let go only once its last
/// thread has closed its descriptors, a moment after its mount died.
/// Through a pidfd, which names this process alone (its pid may be reused
/// once it is gone) and turns readable once all its threads have exited.
pub fn kill_mount(mnt: &Path) {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let pid = mount_pid(mnt);
    let raw = rustix::process::Pid::from_raw(pid as i32).expect("a pid is positive");
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        .expect("pidfd_open of the mount process");
    rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL)
        .expect("kill the mount process");
    let timeout = Timespec {
        tv_sec: 30,
        tv_nsec: 0,
    };
    let ready = loop {
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other.expect("poll the pidfd"),
        }
    };
    assert_eq!(ready, 1, "pid {pid} outlived SIGKILL by 30 s");
}

/// The pid of the background mount process serving `mnt`: started as
/// `chronicle mount ... MNT`, or by mount(8) as its helper
/// `mount.fuse.chronicle BACKING MNT ...`.
pub fn mount_pid(mnt: &Path) -> u32 {
    let wanted = path_str(mnt).to_string();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let mounts = args.contains(&&b"mount"[..])
            || args
                .first()
                .is_some_and(|a| a.ends_with(b"mount.fuse.chronicle"));
        if mounts && args.contains(&wanted.as_bytes()) {
            return pid;
        }
    }
    panic!("no mount process for {}", mnt.display());
}
