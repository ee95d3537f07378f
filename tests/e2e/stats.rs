//! `chronicle stats`: what a running mount reports of itself, and to whom.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};

use chronicle_mount::control::Report;

use crate::util::*;

/// The mount's report, read back from what `--raw` prints.
fn figures(m: &Mounted) -> Report {
    let out = run(&["stats", path_str(&m.mnt), "--raw"], None);
    assert!(out.status.success(), "stats: {}", stderr(&out));
    Report::decode(&out.stdout).expect("--raw prints a report")
}

fn count(report: &Report, op: &str) -> u64 {
    let op = report.operations.iter().find(|o| o.name == op);
    op.map_or(0, |o| o.requests)
}

fn nanos(report: &Report) -> u64 {
    report.operations.iter().map(|o| o.nanos).sum()
}

// Protects: the mount counts the requests a program's work sends it, by
// operation, with the time it took over them, and counts a forged block
// it refused.
#[test]
fn stats_counts_the_requests_of_a_job_and_a_forged_block() {
    let Some(m) = mount_or_skip(&[]) else { return };
    let before = figures(&m);
    assert_eq!(before.authentication_failures, 0);
    assert!(before.uptime > std::time::Duration::ZERO);
    for i in 0..5 {
        fs::write(m.path(&format!("f{i}")), vec![i as u8; 3 * 4096]).expect("write");
    }
    drop_caches();
    for i in 0..5 {
        assert_eq!(
            fs::read(m.path(&format!("f{i}"))).expect("read"),
            vec![i as u8; 3 * 4096]
        );
    }
    let after = figures(&m);
    assert!(count(&after, "MKNOD") >= count(&before, "MKNOD") + 5);
    assert!(count(&after, "READ") >= count(&before, "READ") + 5);
    assert!(nanos(&after) > nanos(&before));
    assert_eq!(after.authentication_failures, 0);

    let backing = m.backing("f1");
    let mut raw = fs::read(&backing).expect("raw");
    raw[chronicle_mount::layout::block_offset(1) as usize + 100] ^= 0x80;
    fs::write(&backing, raw).expect("tamper");
    drop_caches();
    let mut buf = vec![0u8; 4096];
    let file = fs::File::open(m.path("f1")).expect("open");
    let err = file.read_exact_at(&mut buf, 4096).expect_err("forged");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // One refusal for the read-ahead that met the block, and one more if
    // the kernel then asked again for the single page read.
    let refused = figures(&m).authentication_failures;
    assert!((1..=2).contains(&refused), "{refused}");

    if !crate::PLAINTEXT_NAMES {
        // A forged name: refused (left out) at each listing that meets it.
        fs::create_dir(m.path("d")).expect("mkdir");
        fs::write(m.path("d/victim"), b"v").expect("write");
        let backing = m.backing("d/victim");
        let mut name = backing.file_name().expect("name").as_bytes().to_vec();
        name[4] = if name[4] == b'A' { b'B' } else { b'A' };
        fs::rename(&backing, backing.with_file_name(OsStr::from_bytes(&name))).expect("edit");
        drop_caches();
        assert_eq!(fs::read_dir(m.path("d")).expect("list").count(), 0);
        assert!(figures(&m).authentication_failures > refused);
    }

    let out = run(&["stats", path_str(&m.mnt)], None);
    let table = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(table.contains("mounted at"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("READ ")), "{table}");
    assert!(
        table.contains("forged or damaged data met (requests that read or listed it): "),
        "{table}"
    );
}

// Protects: another user of an `--allow-other` mount cannot read its
// figures (how busy the volume is, whether it is being tampered with);
// the mount refuses, not only the command.
#[test]
fn only_root_and_the_owner_read_a_mounts_figures() {
    let Some(m) = mount_or_skip(&["--allow-other"]) else {
        return;
    };
    fs::set_permissions(&m.mnt, fs::Permissions::from_mode(0o755)).expect("chmod root");
    fs::set_permissions(m.fixture.dir.path(), fs::Permissions::from_mode(0o755))
        .expect("chmod parent");
    let asked = count(&figures(&m), "IOCTL");
    let out = run_as(65534, &["stats", path_str(&m.mnt)], KEY);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: only root and the user who mounted"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    // The refusal is the mount's: the request reached it. The k-th reading
    // from here sees the first reading's IOCTL, the stranger's, and its own
    // k - 1 before it; a request is counted just after its reply, so give
    // a late count a moment.
    let reached = (1..=50).any(|k| {
        let seen = count(&figures(&m), "IOCTL");
        assert!(
            seen <= asked + 1 + k,
            "more requests than were made: {seen}"
        );
        seen == asked + 1 + k || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            false
        }
    });
    assert!(reached, "the stranger's request never reached the mount");
}

// Protects: a directory that is not a chronicle mount is named as such.
#[test]
fn stats_names_what_is_not_a_chronicle_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&["stats", path_str(dir.path())], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a mount point"),
        "{}",
        stderr(&out)
    );
    let out = run(&["stats", "/proc"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/proc is not a chronicle mount (it is proc)"),
        "{}",
        stderr(&out)
    );
}

// Protects: a bind mount of a directory inside a volume (which mountinfo
// shows as a chronicle mount too) is told apart from the volume's root.
#[test]
fn stats_at_a_directory_inside_a_volume_says_where_to_ask() {
    let Some(m) = mount_or_skip(&[]) else { return };
    fs::create_dir(m.path("inside")).expect("mkdir");
    let bind = m.fixture.dir.path().join("bound");
    fs::create_dir(&bind).expect("mkdir");
    /// Unmounts the bind mount however the test ends.
    struct Bound<'a>(&'a std::path::Path);
    impl Drop for Bound<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .args([m.path("inside"), bind.clone()])
        .status()
        .expect("mount --bind");
    assert!(status.success());
    let _bound = Bound(&bind);
    let out = run(&["stats", path_str(&bind)], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is a directory inside a volume, not its root"),
        "{}",
        stderr(&out)
    );
}
