//! Mounting through mount(8), as /etc/fstab and systemd's mount units do:
//! the binary linked as /sbin/mount.fuse.chronicle and
//! /sbin/umount.fuse.chronicle is the helper of the type fuse.chronicle
//! (src/mount_helper.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use crate::util::*;

/// Where mount(8) and umount(8) look for the helpers of the type
/// `fuse.chronicle`.
const HELPERS: [&str; 2] = ["/sbin/mount.fuse.chronicle", "/sbin/umount.fuse.chronicle"];

/// One test at a time owns the helpers' links.
static HELPER_LINKS: Mutex<()> = Mutex::new(());

/// The helpers linked to the binary under test for as long as this lives.
struct HelpersInstalled {
    _only_one: std::sync::MutexGuard<'static, ()>,
}

impl HelpersInstalled {
    /// `None`, after saying so, where another helper is installed: the
    /// tests never touch a chronicle the machine's owner installed. A link
    /// to this build's binary is one a killed run left; it is replaced.
    fn new() -> Option<HelpersInstalled> {
        let only_one = HELPER_LINKS.lock().unwrap_or_else(|e| e.into_inner());
        let ours = Path::new(env!("CARGO_BIN_EXE_chronicle"));
        for helper in HELPERS {
            match std::fs::read_link(helper) {
                Ok(target) if target == ours => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                _ => {
                    let why = format!("{helper} is installed; these tests leave it alone");
                    if std::env::var("CHRONICLE_REQUIRE_FUSE").as_deref() == Ok("1") {
                        panic!("{why}, and CHRONICLE_REQUIRE_FUSE=1");
                    }
                    eprintln!("SKIPPED: {why}");
                    return None;
                }
            }
        }
        let installed = HelpersInstalled {
            _only_one: only_one,
        };
        for helper in HELPERS {
            let _ = std::fs::remove_file(helper);
            std::os::unix::fs::symlink(ours, helper).expect("link the helper");
        }
        Some(installed)
    }
}

impl Drop for HelpersInstalled {
    fn drop(&mut self) {
        let ours = Path::new(env!("CARGO_BIN_EXE_chronicle"));
        for helper in HELPERS {
            if std::fs::read_link(helper).is_ok_and(|target| target == ours) {
                let _ = std::fs::remove_file(helper);
            }
        }
    }
}

/// The helpers installed, a volume whose key is in a file, a mount point,
/// and an unmount at the end whatever happens.
struct Setup {
    fixture: Fixture,
    key_file: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
    _helpers: HelpersInstalled,
}

impl Setup {
    /// `None` (after saying why) where these tests cannot run.
    fn ready() -> Option<Setup> {
        if !fuse_available() {
            return None;
        }
        let helpers = HelpersInstalled::new()?;
        let fixture = Fixture::new();
        let key_file = fixture.dir.path().join("volume.key");
        std::fs::write(&key_file, KEY).expect("write the key file");
        let mnt = fixture.dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let log = fixture.dir.path().join("mount.log");
        Some(Setup {
            fixture,
            key_file,
            mnt,
            log,
            _helpers: helpers,
        })
    }

    /// `mount -t fuse.chronicle -o OPTIONS BACKING MNT`.
    fn mount_typed(&self, options: &str) -> Output {
        mount(&[
            "-t",
            "fuse.chronicle",
            "-o",
            options,
            self.fixture.b(),
            path_str(&self.mnt),
        ])
    }

    /// The options every mount here takes: the key file and a log.
    fn options(&self, more: &str) -> String {
        format!(
            "key_file={},log_file={}{more}",
            self.key_file.display(),
            self.log.display()
        )
    }

    fn mount_count(&self) -> usize {
        let point = self.mnt.canonicalize().expect("mount point");
        chronicle_mount::mountinfo::mounts()
            .iter()
            .filter(|m| m.point == point)
            .count()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for _ in 0..10 {
            if !is_mounted(&self.mnt) {
                break;
            }
            let _ = Command::new("umount").arg("-il").arg(&self.mnt).status();
        }
        let _ = chronicle_mount::lock::VolumeLock::wait_until_free(
            &self.fixture.backing,
            std::time::Duration::from_secs(30),
        );
    }
}

fn mount(args: &[&str]) -> Output {
    Command::new("mount")
        .args(args)
        .env_remove("CHRONICLE_ENCRYPTION_KEY")
        .output()
        .expect("run mount(8)")
}

fn umount(args: &[&str]) -> Output {
    Command::new("umount")
        .args(args)
        .output()
        .expect("run umount(8)")
}

#[test]
fn mount_8_mounts_with_the_options_of_the_line() {
    let Some(s) = Setup::ready() else {
        return;
    };
    let out = s.mount_typed(&s.options(",noexec,_netdev,nofail,x-systemd.requires=x.mount"));
    assert!(out.status.success(), "mount(8) failed: {}", stderr(&out));
    let point = s.mnt.canonicalize().expect("mount point");
    let entry = chronicle_mount::mountinfo::mounts()
        .into_iter()
        .find(|m| m.point == point)
        .expect("mounted");
    assert_eq!(entry.fstype, "fuse.chronicle");
    assert_eq!(
        entry.chronicle_backing(),
        Some(s.fixture.backing.canonicalize().expect("backing").as_path())
    );
    let line = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = line
        .lines()
        .find(|l| l.split(' ').nth(4) == point.to_str())
        .expect("the mount's line");
    assert!(line.contains("noexec"), "{line}");

    // Plaintext in, ciphertext out; programs on the mount do not run.
    std::fs::write(s.mnt.join("note"), b"meet at noon").expect("write");
    assert_eq!(
        std::fs::read(s.mnt.join("note")).expect("read back"),
        b"meet at noon"
    );
    let raw = snapshot(&s.fixture.backing);
    assert!(raw
        .iter()
        .all(|(_, bytes)| !bytes.windows(4).any(|w| w == b"noon")));
    std::fs::copy("/bin/true", s.mnt.join("true")).expect("copy a program in");
    let ran = Command::new(s.mnt.join("true")).status();
    assert_eq!(
        ran.expect_err("a noexec mount runs nothing").raw_os_error(),
        Some(libc::EACCES)
    );
    assert!(std::fs::read_to_string(&s.log)
        .expect("the mount's log")
        .contains("mounted"));

    // umount(8) runs chronicle umount, which returns once the mount
    // process has let go of the volume.
    let out = umount(&["-v", path_str(&s.mnt)]);
    assert!(out.status.success(), "umount(8): {}", stderr(&out));
    assert!(
        stderr(&out).contains("chronicle umount -- "),
        "{}",
        stderr(&out)
    );
    assert!(!is_mounted(&s.mnt));
    chronicle_mount::lock::VolumeLock::acquire(&s.fixture.backing).expect("the volume is free");
}

#[test]
fn umount_8_refuses_force_and_detaches_lazily() {
    let Some(s) = Setup::ready() else {
        return;
    };
    let options = s.options("");
    let out = s.mount_typed(&options);
    assert!(out.status.success(), "mount(8) failed: {}", stderr(&out));
    std::fs::write(s.mnt.join("open"), b"kept open").expect("write");

    let out = umount(&["-f", path_str(&s.mnt)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("umount -f would abort the mount"),
        "{}",
        stderr(&out)
    );
    assert!(is_mounted(&s.mnt));

    // Busy: a plain unmount is refused, a lazy one detaches at once and
    // the volume is let go of when the last file closes.
    let held = std::fs::File::open(s.mnt.join("open")).expect("open a file");
    let out = umount(&[path_str(&s.mnt)]);
    assert!(!out.status.success(), "a busy mount unmounted");
    assert!(stderr(&out).contains("busy"), "{}", stderr(&out));
    let out = umount(&["-l", path_str(&s.mnt)]);
    assert!(out.status.success(), "umount -l: {}", stderr(&out));
    assert!(!is_mounted(&s.mnt));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &held, &mut text).expect("the open file still reads");
    assert_eq!(text, "kept open");
    drop(held);
    let freed = chronicle_mount::lock::VolumeLock::wait_until_free(
        &s.fixture.backing,
        std::time::Duration::from_secs(30),
    );
    assert!(
        freed.expect("wait for the volume"),
        "the mount process never let go"
    );
}

#[test]
fn mount_a_mounts_an_fstab_line_once_and_a_command_line_overrides_it() {
    let Some(s) = Setup::ready() else {
        return;
    };
    let fstab = s.fixture.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a volume mounted at boot\n{} {} fuse.chronicle {} 0 0\n",
            s.fixture.b(),
            path_str(&s.mnt),
            s.options(",ro")
        ),
    )
    .expect("write the fstab");
    for round in 1..=2 {
        // The second time mount(8) finds the volume mounted (the source it
        // shows is the line's) and leaves it.
        let out = mount(&["-T", path_str(&fstab), "-a"]);
        assert!(
            out.status.success(),
            "mount -a, round {round}: {}",
            stderr(&out)
        );
        assert_eq!(s.mount_count(), 1, "round {round}");
    }
    let refused = std::fs::write(s.mnt.join("f"), b"x").expect_err("the line says ro");
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS));

    // A command line's options come after the line's, and win.
    let out = umount(&[path_str(&s.mnt)]);
    assert!(out.status.success(), "umount(8): {}", stderr(&out));
    // (mount(8) settles ro and rw itself; the log file is chronicle's.)
    let second_log = s.fixture.dir.path().join("second.log");
    let options = format!("rw,log_file={}", second_log.display());
    let out = mount(&["-T", path_str(&fstab), "-o", &options, path_str(&s.mnt)]);
    assert!(out.status.success(), "mount -o {options}: {}", stderr(&out));
    std::fs::write(s.mnt.join("f"), b"x").expect("mounted read-write");
    let logged = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(
        logged.contains("mounted"),
        "the command line's log file: {logged:?}"
    );
}

#[test]
fn a_bad_option_or_key_mounts_nothing_and_says_why() {
    let Some(s) = Setup::ready() else {
        return;
    };
    for (options, says) in [
        (
            s.options(",dirsync"),
            "mount option dirsync is not supported",
        ),
        (s.options(",keyfile=/k"), "unknown mount option keyfile=/k"),
        (s.options(",sync"), "mount option sync is not supported"),
    ] {
        let out = s.mount_typed(&options);
        assert!(!out.status.success(), "{options} mounted");
        assert!(stderr(&out).contains(says), "{options}: {}", stderr(&out));
        assert_eq!(s.mount_count(), 0, "{options}");
    }
    let wrong = s.fixture.dir.path().join("wrong.key");
    std::fs::write(&wrong, WRONG_KEY).expect("write the wrong key");
    let options = format!("key_file={}", wrong.display());
    let out = s.mount_typed(&options);
    // mount(8) exits with its helper's status.
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("encryption key mismatch"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.mount_count(), 0);
}

#[test]
fn umount_8_clears_a_mount_whose_process_died() {
    let Some(s) = Setup::ready() else {
        return;
    };
    let options = s.options("");
    let out = s.mount_typed(&options);
    assert!(out.status.success(), "mount(8) failed: {}", stderr(&out));
    std::fs::write(s.mnt.join("f"), b"x").expect("write");

    // The helper's process lives on as the mount's (its name is the link's).
    kill_mount(&s.mnt);
    let dead = is_mounted(&s.mnt)
        && (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            matches!(rustix::fs::statfs(&s.mnt), Err(rustix::io::Errno::NOTCONN))
        });
    assert!(dead, "the mount never answered 'not connected'");

    let out = umount(&[path_str(&s.mnt)]);
    assert!(
        out.status.success(),
        "umount(8) of a dead mount: {}",
        stderr(&out)
    );
    assert!(!is_mounted(&s.mnt));
    let freed = chronicle_mount::lock::VolumeLock::wait_until_free(
        &s.fixture.backing,
        std::time::Duration::from_secs(30),
    );
    assert!(freed.expect("wait for the volume"));
}
