//! The volume commands as a user runs them: init, info, key sources, bad
//! input, fsck, inspect, rotate-key and encrypt. No mount needed.

use crate::util::*;

// Protects: init then info shows the contract's fields, in text and JSON.
#[test]
fn init_and_info() {
    let f = Fixture::new();
    let meta = std::fs::metadata(f.backing.join("chronicle.volume")).expect("config");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    // Only the owner may list BACKING: names and sizes show there.
    let dir = std::fs::metadata(&f.backing).expect("backing");
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    let out = run(&["info", f.b()], None);
    assert!(out.status.success());
    let text = stdout(&out);
    for line in [
        "Encrypted: true",
        "Algorithm: AES-256-GCM",
        "Block size: 4096",
        "Format version: 4",
        "Key source: raw key",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let out = run(&["info", f.b(), "--json"], None);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["encrypted"], true);
    assert_eq!(doc["algorithm"], "AES-256-GCM");
    assert_eq!(doc["block_size"], 4096);
    assert_eq!(doc["format_version"], 4);
}

// Protects: init refuses to overwrite an existing volume.
#[test]
fn init_twice_refused() {
    let f = Fixture::new();
    let before = snapshot(&f.backing);
    let out = run(&["init", f.b()], Some(KEY));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already holds a chronicle volume"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&f.backing), before);
}

// Protects: init refuses a directory that already holds other files, which
// would otherwise be mistaken for ciphertext.
#[test]
fn init_refuses_a_nonempty_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("existing.db"), b"plaintext").expect("write");
    let out = run(&["init", path_str(dir.path())], Some(KEY));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    assert!(!dir.path().join("chronicle.volume").exists());
}

// Protects: a wrong key, from every source, is exit 12 with the contract's
// message, and nothing is written.
#[test]
fn wrong_key_from_every_source() {
    let f = Fixture::new();
    let before = snapshot(&f.backing);
    let key_file = f.dir.path().join("wrong.key");
    std::fs::write(&key_file, WRONG_KEY).expect("key file");
    let kf = key_file.to_str().expect("utf8").to_string();
    let cmd = format!("echo {WRONG_KEY}");
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["--key-file", &kf],
        vec!["--key-command", &cmd],
        vec!["--key-env", "OTHER_KEY"],
    ];
    for extra in cases {
        let mut args = vec!["fsck", f.b()];
        args.extend(extra.iter());
        let out = bin()
            .args(&args)
            .env("CHRONICLE_ENCRYPTION_KEY", WRONG_KEY)
            .env("OTHER_KEY", WRONG_KEY)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(12), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim(),
            "error: encryption key mismatch",
            "{args:?}"
        );
    }
    assert_eq!(snapshot(&f.backing), before);
}

// Protects: each bad key input is one clear line and exit 1, nothing written.
#[test]
fn bad_key_inputs() {
    let f = Fixture::new();
    let before = snapshot(&f.backing);
    let dir = f.dir.path();
    let short = dir.join("short.key");
    std::fs::write(&short, [1u8; 31]).expect("write");
    let not_hex = "zz".repeat(32);
    let cases: Vec<(Vec<String>, Option<&str>, &str)> = vec![
        (
            vec![],
            Some("00ff"),
            "expected 32 bytes (64 hex characters), got 4 characters",
        ),
        (vec![], Some(&not_hex), "not hexadecimal"),
        (vec![], None, "no key given"),
        (
            vec!["--key-env".into(), "NOPE_NOT_SET".into()],
            None,
            "NOPE_NOT_SET is not set",
        ),
        (
            vec![
                "--key-file".into(),
                dir.join("missing.key").display().to_string(),
            ],
            None,
            "cannot read key file",
        ),
        (
            vec!["--key-file".into(), short.display().to_string()],
            None,
            "got 31 bytes",
        ),
        (
            vec!["--key-command".into(), "exit 3".into()],
            None,
            "key command failed",
        ),
        (
            vec!["--key-command".into(), "echo 1234".into()],
            None,
            "expected 32 bytes",
        ),
    ];
    for (extra, env_key, expect) in cases {
        let mut args = vec!["fsck".to_string(), f.b().to_string()];
        args.extend(extra);
        let out = run(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            env_key,
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err:?}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
        assert!(err.starts_with("error: "), "{err}");
    }
    assert_eq!(snapshot(&f.backing), before);
}

// Protects: key files (raw and hex), standard input and key commands all work.
#[test]
fn good_key_sources() {
    let f = Fixture::new();
    let raw: Vec<u8> = (0..32u8).collect();
    let raw_file = f.dir.path().join("raw.key");
    std::fs::write(&raw_file, &raw).expect("raw key");
    let hex_file = f.dir.path().join("hex.key");
    std::fs::write(&hex_file, format!("  {KEY}\n")).expect("hex key");
    for args in [
        vec!["fsck", f.b(), "--key-file", path_str(&raw_file)],
        vec!["fsck", f.b(), "--key-file", path_str(&hex_file)],
        vec![
            "fsck",
            f.b(),
            "--key-command",
            &format!("cat {}", path_str(&hex_file)),
        ],
    ] {
        let out = run(&args, None);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let out = run_with_stdin(&["fsck", f.b(), "--key-file", "-"], KEY.as_bytes());
    assert!(out.status.success(), "stdin key: {}", stderr(&out));
}

// Protects: missing, truncated, garbled and edited configurations are
// refused with a clear line, and the key never turns an edit into success.
#[test]
fn bad_configs_refused() {
    let f = Fixture::new();
    let config = f.backing.join("chronicle.volume");
    let good = std::fs::read(&config).expect("config");
    let empty = f.dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let out = run(&["info", path_str(&empty)], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a chronicle volume"),
        "{}",
        stderr(&out)
    );

    let set = |bytes: &[u8]| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&config, bytes).expect("write config");
    };
    set(&good[..100]);
    let out = run(&["fsck", f.b()], Some(KEY));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));

    set(b"this is not a volume configuration at all");
    let out = run(&["info", f.b()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad magic"), "{}", stderr(&out));

    let mut edited = good.clone();
    edited[90] ^= 1; // inside the wrap nonce
    set(&edited);
    let out = run(&["fsck", f.b()], Some(KEY));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("failed authentication: it was modified"),
        "{}",
        stderr(&out)
    );

    let mut future = good.clone();
    future[8] = 9; // format version
    set(&future);
    let out = run(&["info", f.b()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("format version 9 is not supported"),
        "{}",
        stderr(&out)
    );
}

// Protects: passphrase volumes store Argon2id parameters and open only with
// the same passphrase.
#[test]
fn passphrase_volume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = dir.path().join("b");
    let init = |args: &[&str], pass: &str| {
        bin()
            .args(args)
            .env("CHRONICLE_PASSPHRASE", pass)
            .output()
            .expect("run")
    };
    let out = init(
        &[
            "init",
            path_str(&b),
            "--passphrase",
            "--kdf-memory-mib",
            "1",
            "--kdf-iterations",
            "1",
        ],
        "s3cret words",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let info = stdout(&run(&["info", path_str(&b)], None));
    assert!(
        info.contains("Key source: passphrase (Argon2id, memory 1024 KiB, iterations 1"),
        "{info}"
    );
    let out = init(&["fsck", path_str(&b), "--passphrase"], "s3cret words");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = init(&["fsck", path_str(&b), "--passphrase"], "wrong words");
    assert_eq!(out.status.code(), Some(12));
    let out = run(&["fsck", path_str(&b)], Some(KEY));
    assert_eq!(
        out.status.code(),
        Some(12),
        "a raw key cannot open a passphrase volume"
    );
}

fn write_plain_tree(root: &std::path::Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
    std::fs::write(root.join("a.txt"), "cpu_usage,host=a value=1\n".repeat(300)).expect("write");
    std::fs::write(root.join("sub/b.bin"), vec![7u8; 10_000]).expect("write");
    std::fs::write(root.join("sub/deeper/empty"), b"").expect("write");
    std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).expect("symlink");
}

// Protects: encrypt turns a plaintext directory into a volume whose raw
// files hold no plaintext, and fsck authenticates all of it.
#[test]
fn encrypt_then_inspect_and_fsck() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    write_plain_tree(&plain);
    let b = dir.path().join("enc");
    let out = encrypt(&plain, &b, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = std::fs::read_link(backing_path(&b, "sub/link")).expect("link");
    if crate::PLAINTEXT_NAMES {
        assert_eq!(stored.to_str(), Some("../a.txt"));
    } else {
        // Sealed in BACKING; the volume opens it back to the target.
        assert!(!stored.to_string_lossy().contains("a.txt"), "{stored:?}");
        let key = chronicle_mount::UserKey::from_hex(KEY, "test").expect("key");
        let volume = chronicle_mount::Volume::open(&b, &key).expect("open");
        let target = volume
            .names()
            .open_target(stored.as_os_str())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(target.to_str(), Some("../a.txt"));
    }
    let out = run(&["inspect", path_str(&b), "--grep", "cpu_usage"], None);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("Search for \"cpu_usage\": found 0 time(s)"),
        "{}",
        stdout(&out)
    );
    let out = run(&["fsck", path_str(&b)], Some(KEY));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("3 files"), "{}", stdout(&out));
    // inspect on a plaintext tree finds the plaintext.
    let fake = dir.path().join("fake");
    std::fs::create_dir(&fake).expect("mkdir");
    std::fs::copy(b.join("chronicle.volume"), fake.join("chronicle.volume")).expect("copy");
    std::fs::write(
        fake.join("leak"),
        b"CHRF\x02\0\0\0................cpu_usage",
    )
    .expect("write");
    let out = run(&["inspect", path_str(&fake), "--grep", "cpu_usage"], None);
    assert_eq!(out.status.code(), Some(3), "plaintext found: exit 3");
    assert!(
        stdout(&out).contains("FOUND plaintext \"cpu_usage\""),
        "{}",
        stdout(&out)
    );
}

// Protects: a name fsck may not read (a long name's file of root's that
// only root may read, as volumes made before its mode was 0444 have) is
// reported as unreadable, with what to do, and not as a failed
// authentication (exit 1, not 26); a missing or symlinked one is a
// failure (26).
#[test]
fn fsck_tells_an_unreadable_name_from_a_forged_one() {
    if crate::PLAINTEXT_NAMES || !rustix::process::geteuid().is_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir");
    std::fs::write(plain.join("l".repeat(200)), b"long").expect("write");
    let b = dir.path().join("enc");
    assert!(encrypt(&plain, &b, &[]).status.success());
    chown_tree(&b, 65534);
    let name_file = std::fs::read_dir(&b)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "name"))
        .expect("a long name's file");
    let out = run(&["fsck", path_str(&b)], Some(KEY));
    assert!(out.status.success(), "root reads it: {}", stdout(&out));
    std::os::unix::fs::chown(&name_file, Some(0), Some(0)).expect("chown");
    std::fs::set_permissions(&name_file, std::fs::Permissions::from_mode(0o400)).expect("chmod");

    let out = run_as(65534, &["fsck", path_str(&b)], KEY);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Permission denied"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("0 failed authentication, 0 repaired, 1 name(s) could not be read"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("run fsck as the volume's owner"),
        "{}",
        stderr(&out)
    );

    // Gone, or a symlink in its place, is what someone who can write
    // BACKING leaves, never a crash: a failure, as a forgery is.
    std::fs::remove_file(&name_file).expect("rm");
    let entry = name_file.with_extension("");
    for planted in ["missing", "symlink"] {
        if planted == "symlink" {
            std::os::unix::fs::symlink("/etc/passwd", &name_file).expect("symlink");
        }
        let out = run(&["fsck", path_str(&b)], Some(KEY));
        assert_eq!(out.status.code(), Some(26), "{planted}: {}", stdout(&out));
        assert!(
            stdout(&out).contains(&format!("reading names in {}", entry.display())),
            "{planted}: {}",
            stdout(&out)
        );
    }
}

// Protects: the volume's small files (id records, long names' files) are
// mode 0444 even when the command that made them runs under umask 077, so
// that a directory's own mode, not theirs, decides who lists its names.
#[test]
fn small_files_are_readable_by_all_whatever_the_umask() {
    if crate::PLAINTEXT_NAMES {
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(plain.join("sub")).expect("mkdir");
    std::fs::write(plain.join("sub").join("l".repeat(200)), b"long").expect("write");
    let b = dir.path().join("enc");
    let mut cmd = bin();
    cmd.args(["encrypt", path_str(&plain), path_str(&b)])
        .env("CHRONICLE_ENCRYPTION_KEY", KEY);
    let out = under_umask(&mut cmd, 0o077).output().expect("run");
    assert!(out.status.success(), "encrypt: {}", stderr(&out));
    let mut modes = Vec::new();
    let mut dirs = vec![b.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if meta.is_dir() {
                dirs.push(path);
            } else if name == "chronicle.dirid" || name.ends_with(".name") {
                modes.push((name, meta.permissions().mode() & 0o7777));
            }
        }
    }
    // Two directories' records and one long name's file.
    assert_eq!(modes.len(), 3, "{modes:?}");
    assert!(modes.iter().all(|(_, mode)| *mode == 0o444), "{modes:?}");
}

// Protects: fsck names every failing block and exits 26; --repair cuts a
// torn tail (a crash mid-write) and then passes.
#[test]
fn fsck_reports_and_repairs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).expect("mkdir");
    std::fs::write(plain.join("data"), vec![1u8; 5 * 4096]).expect("write");
    std::fs::write(plain.join("tail"), vec![2u8; 3 * 4096 + 100]).expect("write");
    let b = dir.path().join("enc");
    assert!(encrypt(&plain, &b, &[]).status.success());
    let data = backing_path(&b, "data");
    let mut raw = std::fs::read(&data).expect("raw");
    use chronicle_mount::layout::block_offset;
    raw[block_offset(1) as usize + 50] ^= 1;
    raw[block_offset(3) as usize + 50] ^= 1;
    std::fs::write(&data, &raw).expect("write");
    let tail = backing_path(&b, "tail");
    let raw = std::fs::read(&tail).expect("raw");
    std::fs::write(&tail, &raw[..raw.len() - 60]).expect("cut"); // torn last block
    let out = run(&["fsck", path_str(&b)], Some(KEY));
    assert_eq!(out.status.code(), Some(26), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "authentication failed: {} block 1",
            data.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "authentication failed: {} block 3",
            data.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "authentication failed: {} block 3",
            tail.display()
        )),
        "{text}"
    );
    let out = run(&["fsck", path_str(&b), "--repair"], Some(KEY));
    let text = stdout(&out);
    assert!(text.contains("repaired:"), "{text}");
    assert_eq!(
        out.status.code(),
        Some(26),
        "middle blocks are not repairable: {text}"
    );
    std::fs::remove_file(&data).expect("rm");
    let out = run(&["fsck", path_str(&b)], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
}

// Protects: rotate-key re-wraps (old key refused afterwards), and
// --reencrypt rewrites every file under a new master key, keeping contents.
#[test]
fn rotate_key_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    write_plain_tree(&plain);
    let b = dir.path().join("enc");
    assert!(encrypt(&plain, &b, &[]).status.success());
    let raw_before = std::fs::read(backing_path(&b, "a.txt")).expect("raw");
    let out = rotate_key(&b, KEY, WRONG_KEY, &[]).output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(backing_path_with(&b, "a.txt", WRONG_KEY)).expect("raw"),
        raw_before,
        "re-wrap leaves contents"
    );
    assert_eq!(
        run(&["fsck", path_str(&b)], Some(KEY)).status.code(),
        Some(12)
    );
    assert!(run(&["fsck", path_str(&b)], Some(WRONG_KEY))
        .status
        .success());

    let out = rotate_key(&b, WRONG_KEY, KEY, &["--reencrypt"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(
        std::fs::read(backing_path(&b, "a.txt")).expect("raw"),
        raw_before,
        "re-encrypted"
    );
    let out = run(&["fsck", path_str(&b)], Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
    let key = chronicle_mount::UserKey::from_hex(KEY, "test").expect("key");
    let volume = chronicle_mount::Volume::open(&b, &key).expect("open with the new key");
    for name in ["a.txt", "sub/b.bin", "sub/deeper/empty"] {
        let mut got = Vec::new();
        volume
            .open_file(std::path::Path::new(name), false)
            .expect("open")
            .read_to_end(&mut got)
            .expect("read");
        assert_eq!(
            got,
            std::fs::read(plain.join(name)).expect("plain"),
            "{name}"
        );
    }
}

/// Every file under `dir` with its bytes and mode, and every directory.
fn tree_state(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            let bytes = if meta.is_file() {
                std::fs::read(&p).unwrap_or_default()
            } else {
                Vec::new()
            };
            out.push((p.clone(), meta.permissions().mode(), bytes));
            if meta.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

// Protects: bad input to every command that takes a volume: a missing,
// empty, garbled, truncated or future configuration; a directory that is
// no volume; a key of the wrong length or alphabet; the wrong key; a mount
// point that is missing, a file or not empty. Each gets one line on
// standard error, the documented exit code, and nothing on disk changes.
#[test]
fn bad_input_to_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let good = Fixture::new();
    let config = std::fs::read(good.backing.join("chronicle.volume")).expect("config");
    let volume = |name: &str, bytes: Option<&[u8]>| {
        let b = root.join(name);
        std::fs::create_dir_all(&b).expect("mkdir");
        if let Some(bytes) = bytes {
            std::fs::write(b.join("chronicle.volume"), bytes).expect("write config");
        }
        b
    };
    let mut future = config.clone();
    future[8] = 9;
    let mut garbled = config.clone();
    garbled[20] ^= 0xff;
    let volumes = [
        ("missing", root.join("no-such-dir")),
        ("not a volume", volume("empty", None)),
        ("empty config", volume("zero", Some(b""))),
        ("garbled config", volume("garbled", Some(&garbled))),
        ("truncated config", volume("short", Some(&config[..60]))),
        ("future config", volume("future", Some(&future))),
    ];
    let mnt = root.join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let before = tree_state(root);
    let good_before = tree_state(&good.backing);
    let check = |what: &str, args: &[&str], key: Option<&str>, code: i32| {
        let out = run(args, key);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{what}: {args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
        assert!(err.starts_with("error: "), "{what}: {err}");
    };
    for (what, b) in &volumes {
        let b = path_str(b);
        check(what, &["info", b], None, 1);
        check(what, &["fsck", b], Some(KEY), 1);
        check(what, &["fsck", b, "--repair"], Some(KEY), 1);
        check(what, &["inspect", b], None, 1);
        check(what, &["mount", b, path_str(&mnt)], Some(KEY), 1);
        check(
            what,
            &["rotate-key", b, "--new-key-env", "CHRONICLE_ENCRYPTION_KEY"],
            Some(KEY),
            1,
        );
    }
    for (what, key) in [
        ("short key", "00112233"),
        ("not hex", &"zz".repeat(32)[..]),
        ("long key", &"00".repeat(33)[..]),
    ] {
        check(what, &["fsck", good.b()], Some(key), 1);
        check(what, &["mount", good.b(), path_str(&mnt)], Some(key), 1);
    }
    check("wrong key", &["fsck", good.b()], Some(WRONG_KEY), 12);
    check(
        "wrong key",
        &["mount", good.b(), path_str(&mnt)],
        Some(WRONG_KEY),
        12,
    );
    let file = root.join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let full = root.join("full");
    std::fs::create_dir(&full).expect("mkdir");
    std::fs::write(full.join("data"), b"x").expect("write");
    let before_points = tree_state(root);
    for (what, point) in [
        ("missing mount point", root.join("nowhere")),
        ("mount point is a file", file.clone()),
        ("mount point not empty", full.clone()),
    ] {
        check(what, &["mount", good.b(), path_str(&point)], Some(KEY), 1);
    }
    assert_eq!(tree_state(root), before_points, "mount points untouched");
    std::fs::remove_file(&file).expect("rm");
    std::fs::remove_dir_all(&full).expect("rm");
    assert_eq!(tree_state(root), before, "nothing changed on disk");
    let good_after: Vec<_> = tree_state(&good.backing)
        .into_iter()
        .filter(|(p, _, _)| !p.ends_with("chronicle.volume.lock"))
        .collect();
    let good_before: Vec<_> = good_before
        .into_iter()
        .filter(|(p, _, _)| !p.ends_with("chronicle.volume.lock"))
        .collect();
    assert_eq!(good_after, good_before, "the good volume untouched");
}
