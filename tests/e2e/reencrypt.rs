//! `rotate-key --reencrypt` and `encrypt` keep everything a restore needs,
//! and an interrupted re-encryption never loses the volume: killed at any
//! moment, it leaves one whole volume, and the same command finishes it.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::util::*;

/// A plaintext tree with everything worth keeping: owners, modes, times,
/// an extended attribute, hard links, a symlink, a fifo, an empty file and
/// a sparse file.
fn rich_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/deeper")).expect("mkdir");
    fs::write(root.join("dir/data"), vec![7u8; 100_000]).expect("write");
    fs::write(root.join("empty"), b"").expect("write");
    fs::hard_link(root.join("dir/data"), root.join("link_to_data")).expect("link");
    std::os::unix::fs::symlink("dir/data", root.join("symlink")).expect("symlink");
    std::os::unix::fs::symlink("x/".repeat(2000), root.join("longlink")).expect("symlink");
    let out = std::process::Command::new("mkfifo")
        .arg(root.join("fifo"))
        .status()
        .expect("mkfifo");
    assert!(out.success());
    let sparse = fs::File::create(root.join("sparse")).expect("create");
    sparse.set_len(64 << 20).expect("grow");
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (64 << 20) - 3).expect("write");
    let name = std::ffi::CString::new("user.note").expect("name");
    assert_eq!(setxattr(&cstr(&root.join("dir/data")), &name, b"kept"), 0);
    assert_eq!(setxattr(&cstr(&root.join("dir")), &name, b"dir note"), 0);
    for (path, uid, mode) in [
        ("dir/data", 1234, 0o640),
        ("dir", 1235, 0o750),
        ("dir/deeper", 0, 0o700),
        ("empty", 1236, 0o4755),
        ("fifo", 1237, 0o620),
    ] {
        let path = root.join(path);
        std::os::unix::fs::chown(&path, Some(uid), Some(uid + 1)).expect("chown");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::os::unix::fs::lchown(root.join("symlink"), Some(1238), Some(1239)).expect("lchown");
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::open(root.join("dir/data"))
        .expect("open")
        .set_modified(old)
        .expect("mtime");
    // A fifo and a symlink are not opened: their times are set by name.
    let then = rustix::fs::Timespec {
        tv_sec: 1_100_000_000,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: then,
        last_modification: then,
    };
    for name in ["fifo", "symlink"] {
        let nofollow = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
        rustix::fs::utimensat(rustix::fs::CWD, root.join(name), &times, nofollow).expect("times");
    }
}

/// Asserts that the mounted view `view` keeps what `rich_tree` made in `source`.
fn assert_same_tree(source: &Path, view: &Path) {
    for name in [
        "dir",
        "dir/deeper",
        "dir/data",
        "empty",
        "link_to_data",
        "sparse",
        "fifo",
        "symlink",
    ] {
        let a = fs::symlink_metadata(source.join(name)).expect("source");
        let b = fs::symlink_metadata(view.join(name)).expect("view");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{name}: owner");
        assert_eq!(a.mode(), b.mode(), "{name}: mode");
        assert_eq!(a.len(), b.len(), "{name}: size");
        if !a.is_dir() {
            assert_eq!(a.mtime(), b.mtime(), "{name}: mtime");
        }
        if a.is_file() {
            assert_eq!(
                fs::read(source.join(name)).ok(),
                fs::read(view.join(name)).ok(),
                "{name}"
            );
        }
    }
    let data = fs::metadata(view.join("dir/data")).expect("stat");
    assert_eq!(data.nlink(), 2);
    assert_eq!(
        data.ino(),
        fs::metadata(view.join("link_to_data")).expect("stat").ino()
    );
    assert_eq!(
        fs::read_link(view.join("symlink")).expect("link"),
        Path::new("dir/data")
    );
    assert!(fs::symlink_metadata(view.join("fifo"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    let name = std::ffi::CString::new("user.note").expect("name");
    let mut buf = [0u8; 64];
    let n = getxattr(&cstr(&view.join("dir/data")), &name, &mut buf);
    assert_eq!(&buf[..n.max(0) as usize], b"kept");
    let n = getxattr(&cstr(&view.join("dir")), &name, &mut buf);
    assert_eq!(&buf[..n.max(0) as usize], b"dir note");
}

// Protects: `encrypt` and then `rotate-key --reencrypt` keep contents,
// owners, modes, times, extended attributes, hard links, symlinks, fifos
// and holes (format version 1's re-encryption dropped most of these).
#[test]
fn encrypt_and_reencrypt_keep_everything() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    rich_tree(&plain);
    let backing = dir.path().join("backing");
    // Without --xattrs the tree's extended attributes are refused, never
    // dropped.
    let refused = dir.path().join("refused");
    let out = encrypt(&plain, &refused, &[]);
    assert!(
        !out.status.success(),
        "a tree with xattrs went into a volume without them"
    );
    assert!(stderr(&out).contains("--xattrs"), "{}", stderr(&out));
    let out = encrypt(&plain, &backing, &["--xattrs"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sparse = fs::metadata(backing_path(&backing, "sparse")).expect("raw");
    assert!(sparse.blocks() * 512 < 1 << 20, "holes stay holes");
    {
        let fixture = Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            backing: backing.clone(),
        };
        let m = Mounted::with_fixture(fixture, &[]);
        assert_same_tree(&plain, &m.mnt);
    }
    let out = rotate(&backing, KEY, WRONG_KEY).output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let fixture = Fixture {
        dir: tempfile::tempdir().expect("tempdir"),
        backing: backing.clone(),
    };
    let mnt = fixture.dir.path().join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    let out = run(
        &["mount", path_str(&backing), path_str(&mnt)],
        Some(WRONG_KEY),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let m = Mounted {
        fixture,
        mnt: mnt.clone(),
        log: dir.path().join("unused.log"),
    };
    assert_same_tree(&plain, &m.mnt);
}

fn rotate(backing: &Path, from: &str, to: &str) -> std::process::Command {
    rotate_key(backing, from, to, &["--reencrypt"])
}

fn opens_with(backing: &Path, key: &str) -> bool {
    run(&["fsck", path_str(backing)], Some(key))
        .status
        .success()
}

// Protects: a re-encryption killed at random moments (SIGKILL, so nothing
// is cleaned up) always leaves one whole volume that opens with the old or
// the new key, and running the command again completes it with every byte.
#[test]
fn killed_reencryption_resumes_or_rolls_back() {
    let seed: u64 = std::env::var("CHRONICLE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (replay with CHRONICLE_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    for d in 0..10 {
        fs::create_dir_all(plain.join(format!("d{d}"))).expect("mkdir");
        for f in 0..20 {
            let bytes: Vec<u8> = (0..40_000u32)
                .map(|i| (i as u8) ^ (d * 20 + f) as u8)
                .collect();
            fs::write(plain.join(format!("d{d}/f{f}")), bytes).expect("write");
        }
    }
    let backing = dir.path().join("backing");
    assert!(encrypt(&plain, &backing, &[]).status.success());
    // How long one run takes here, to spread the kills over it.
    let start = Instant::now();
    let out = rotate(&backing, KEY, WRONG_KEY).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut full = start.elapsed();
    let (mut from, mut to) = (WRONG_KEY, KEY);
    let mut interrupted = 0;
    // Eight rounds, and more (up to 32) until a kill has landed inside a
    // run: the first run may have been timed while other tests loaded the
    // machine, so a run that ends before its kill shortens the spread.
    let mut round = 0;
    while round < 8 || (interrupted == 0 && round < 32) {
        let spawned = Instant::now();
        let mut child = rotate(&backing, from, to).spawn().expect("spawn");
        let delay = full.mul_f64(rng.random_range(0.0..1.1));
        std::thread::sleep(delay);
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "seed {seed} round {round}: {status}");
            full = full.min(spawned.elapsed());
        }
        let _ = child.kill();
        let _ = child.wait();
        let (old_ok, new_ok) = (opens_with(&backing, from), opens_with(&backing, to));
        assert!(
            old_ok ^ new_ok,
            "seed {seed} round {round}: one whole volume (old {old_ok}, new {new_ok})"
        );
        let out = rotate(&backing, from, to).output().expect("rerun");
        assert!(
            out.status.success(),
            "seed {seed} round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        if said.contains("unfinished copy") || said.contains("interrupted") {
            interrupted += 1;
        }
        assert!(opens_with(&backing, to), "seed {seed} round {round}");
        let staging = chronicle_mount::reencrypt::staging_path(&backing).expect("staging");
        assert!(
            !staging.exists(),
            "seed {seed} round {round}: {} left behind",
            staging.display()
        );
        let key = chronicle_mount::UserKey::from_hex(to, "test").expect("key");
        let volume = chronicle_mount::Volume::open(&backing, &key).expect("open");
        for (d, f) in [(0, 0), (5, 7), (9, 19)] {
            let name = format!("d{d}/f{f}");
            let mut got = Vec::new();
            volume
                .open_file(Path::new(&name), false)
                .expect("open")
                .read_to_end(&mut got)
                .expect("read");
            assert_eq!(
                got,
                fs::read(plain.join(&name)).expect("plain"),
                "seed {seed} round {round}: {name}"
            );
        }
        std::mem::swap(&mut from, &mut to);
        round += 1;
    }
    assert!(interrupted > 0, "seed {seed}: no kill landed inside a run");
}

/// Every entry below `root` whose owner is not `uid`.
fn not_owned_by(root: &Path, uid: u32) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("list").flatten() {
            let meta = fs::symlink_metadata(entry.path()).expect("stat");
            if meta.uid() != uid {
                wrong.push(format!("{} ({})", entry.path().display(), meta.uid()));
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    wrong
}

// Protects: root giving a user's volume a new key, or re-encrypting it,
// leaves nothing in it that is root's: a configuration, lock file or
// directory record of root's (mode 0400 or 0600) would keep the user
// from opening or mounting the volume again.
#[test]
fn a_users_volume_rekeyed_by_root_stays_the_users() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    fs::create_dir_all(plain.join("a/b")).expect("mkdir");
    fs::write(plain.join("a/b/f"), b"kept").expect("write");
    // A long name is kept in a file of its own, which the owner's mount
    // must be able to read too: at the top, in a directory, of a file, a
    // directory and a symlink.
    for dir in [plain.clone(), plain.join("a")] {
        fs::write(dir.join("l".repeat(200)), b"long").expect("write");
        fs::create_dir(dir.join("d".repeat(200))).expect("mkdir");
        std::os::unix::fs::symlink("f", dir.join("s".repeat(200))).expect("symlink");
    }
    let backing = dir.path().join("backing");
    let out = encrypt(&plain, &backing, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    chown_tree(&backing, 65534);

    let out = rotate_key(&backing, KEY, WRONG_KEY, &[])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        not_owned_by(&backing, 65534),
        Vec::<String>::new(),
        "after rotate-key"
    );

    let out = rotate(&backing, WRONG_KEY, KEY).output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        not_owned_by(&backing, 65534),
        Vec::<String>::new(),
        "after --reencrypt"
    );
    assert!(opens_with(&backing, KEY));

    // And she can use it: `fsck` run as her reads every name and block.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = run_as(65534, &["fsck", path_str(&backing)], KEY);
    assert!(out.status.success(), "fsck as the owner: {}", stderr(&out));
}
