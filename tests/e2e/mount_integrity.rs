//! Integrity and refusal at mount time: forged blocks give EIO and a log
//! line; a wrong key mounts nothing.

use std::fs;

use crate::util::*;

// Protects: a block changed in the backing directory while mounted is
// never returned: the program gets EIO, the mount logs the file and block.
#[test]
fn tampered_block_is_eio_and_logged() {
    let Some(m) = mount_or_skip(&[]) else { return };
    fs::write(m.path("victim"), vec![3u8; 3 * 4096]).expect("write");
    let backing = m.backing("victim");
    let mut raw = fs::read(&backing).expect("raw");
    raw[chronicle_mount::layout::block_offset(1) as usize + 100] ^= 0x80; // block 1
    fs::write(&backing, raw).expect("tamper");
    // Drop the kernel's cached pages, so the read reaches the mount.
    drop_caches();
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
    assert!(log.contains("(in the mount: victim)"), "{log}");
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

// Protects: SIGTERM to a foreground mount unmounts cleanly, with every
// write on disk.
#[test]
fn sigterm_unmounts_cleanly() {
    if !fuse_available() {
        return;
    }
    let f = Fixture::new();
    let mnt = f.dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let child = bin()
        .args(["mount", f.b(), path_str(&mnt), "--foreground"])
        .env("CHRONICLE_ENCRYPTION_KEY", KEY)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    for _ in 0..1000 {
        if is_mounted(&mnt) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(is_mounted(&mnt), "foreground mount did not appear");
    fs::write(mnt.join("kept"), vec![9u8; 100_000]).expect("write");
    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt), "still mounted after SIGTERM");
    let again = Mounted::with_fixture(f, &[]);
    assert_eq!(
        fs::read(again.path("kept")).expect("read"),
        vec![9u8; 100_000]
    );
}

// Protects: --allow-other lets other users in, with the kernel enforcing
// permissions (default_permissions).
#[test]
fn allow_other_with_permissions() {
    let Some(m) = mount_or_skip(&["--allow-other"]) else {
        return;
    };
    fs::write(m.path("public"), b"for everyone").expect("write");
    fs::write(m.path("private"), b"root only").expect("write");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(m.path("public"), fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::set_permissions(m.path("private"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o755)).expect("chmod root");
    // The temporary directory above the mount must be traversable too.
    fs::set_permissions(m.fixture.dir.path(), fs::Permissions::from_mode(0o755))
        .expect("chmod parent");
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(args)
            .output()
            .expect("setpriv")
    };
    let out = as_nobody(&["cat", path_str(&m.path("public"))]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"for everyone");
    let out = as_nobody(&["cat", path_str(&m.path("private"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    let out = as_nobody(&["touch", path_str(&m.path("new"))]);
    assert!(
        !out.status.success(),
        "nobody cannot create in a 0755 root-owned directory"
    );
}

/// A volume of uid 65534's (BACKING hers, its parent searchable by her),
/// mounted by root with `--allow-other`.
fn users_volume_mounted_by_root() -> Mounted {
    use std::os::unix::fs::PermissionsExt;
    let fixture = Fixture::new();
    chown_tree(&fixture.backing, 65534);
    fs::set_permissions(fixture.dir.path(), fs::Permissions::from_mode(0o755))
        .expect("chmod parent");
    Mounted::with_fixture(fixture, &["--allow-other"])
}

// Protects: a user's volume that root mounts for her (--allow-other) stays
// hers to use: the id record of a directory she makes there and the files
// of her long names are hers, so `fsck` run as her reads every name after.
#[test]
fn a_users_volume_mounted_by_root_stays_hers() {
    if crate::PLAINTEXT_NAMES || !rustix::process::geteuid().is_root() || !fuse_available() {
        return;
    }
    use std::os::unix::process::CommandExt as _;
    let m = users_volume_mounted_by_root();
    let long = "l".repeat(200);
    let as_her = |program: &str, path: std::path::PathBuf| {
        let status = std::process::Command::new(program)
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .status()
            .expect("run");
        assert!(status.success(), "{program} {}", path.display());
    };
    as_her("mkdir", m.path("d"));
    as_her("touch", m.path(&format!("d/{long}")));
    as_her("touch", m.path(&long));
    m.unmount();
    let out = run_as(65534, &["fsck", m.fixture.b()], KEY);
    assert!(out.status.success(), "fsck as her: {}", stdout(&out));
    assert!(stdout(&out).contains("2 files"), "{}", stdout(&out));
}

// Protects: in a volume whose directories belong to different users,
// names read as the directories' own modes allow: the volume's small
// files (id records, long names' files) are readable by all, whatever
// the umask of the command that made them. Before, they were their
// owner's alone (0400), so her `fsck` (or her own mount) could not read
// the names in root's directory, nor in a directory root gave her.
#[test]
fn names_in_other_users_directories_read_as_their_modes_allow() {
    if crate::PLAINTEXT_NAMES || !rustix::process::geteuid().is_root() || !fuse_available() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let m = users_volume_mounted_by_root();
    let long = "l".repeat(200);
    for dir in ["roots", "given"] {
        fs::create_dir(m.path(dir)).expect("mkdir");
        fs::set_permissions(m.path(dir), fs::Permissions::from_mode(0o755)).expect("chmod");
        let file = m.path(&format!("{dir}/{long}"));
        fs::write(&file, b"readable").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    for path in [m.path("given"), m.path(&format!("given/{long}"))] {
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).expect("chown");
    }
    m.unmount();
    let backing = m.fixture.b();
    let out = run_as(65534, &["fsck", backing], KEY);
    assert!(
        out.status.success(),
        "fsck as her: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("2 files"), "{}", stdout(&out));

    // Root's copy under a strict umask makes them readable all the same.
    let out = under_umask(
        &mut rotate_key(&m.fixture.backing, KEY, WRONG_KEY, &["--reencrypt"]),
        0o077,
    )
    .output()
    .expect("run");
    assert!(out.status.success(), "rotate-key: {}", stderr(&out));
    let out = run_as(65534, &["fsck", backing], WRONG_KEY);
    assert!(
        out.status.success(),
        "fsck as her after the copy: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("2 files"), "{}", stdout(&out));
}

// Protects: mounting over files (which would hide them) or over an existing
// mount is refused with a clear line, and nothing is mounted.
#[test]
fn refuses_busy_or_nonempty_mountpoints() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let out = run(&["mount", m.fixture.b(), path_str(&m.mnt)], Some(KEY));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already a mount point"),
        "{}",
        stderr(&out)
    );
    let full = m.fixture.dir.path().join("full");
    fs::create_dir(&full).expect("mkdir");
    fs::write(full.join("existing"), b"x").expect("write");
    let out = run(&["mount", m.fixture.b(), path_str(&full)], Some(KEY));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    assert!(!is_mounted(&full));
}

// Protects: whole-volume rewrites refuse to run under a live mount.
#[test]
fn rewrites_refused_while_mounted() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let out = run(&["fsck", m.fixture.b(), "--repair"], Some(KEY));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is mounted at"), "{}", stderr(&out));
    let backing = std::path::Path::new(m.fixture.b());
    let out = rotate_key(backing, KEY, WRONG_KEY, &["--reencrypt"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is mounted at"), "{}", stderr(&out));
}
