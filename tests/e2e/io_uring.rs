//! FUSE over io_uring: mounted with `--io-uring` and the kernel offering it,
//! the mount serves its requests on the rings, and everything reads back as
//! written, there and after a remount through /dev/fuse.

use std::fs;
use std::path::Path;

use crate::mixed_workload::{check, workload};
use crate::util::*;

const ENABLE: &str = "/sys/module/fuse/parameters/enable_uring";

/// The kernel's `enable_uring` switch turned on, and put back as it was
/// when dropped (also when the test panics). It is global, but only mounts
/// made with `--io-uring` use it.
struct RingsEnabled {
    was: String,
}

impl RingsEnabled {
    fn turn_on() -> Option<RingsEnabled> {
        let Ok(was) = fs::read_to_string(ENABLE) else {
            eprintln!("SKIPPED: this kernel has no FUSE over io_uring ({ENABLE} missing)");
            return None;
        };
        if let Err(e) = fs::write(ENABLE, "Y") {
            eprintln!("SKIPPED: cannot turn on FUSE over io_uring ({ENABLE}: {e}; needs root)");
            return None;
        }
        Some(RingsEnabled { was })
    }
}

impl Drop for RingsEnabled {
    fn drop(&mut self) {
        let _ = fs::write(ENABLE, self.was.trim());
    }
}

/// CPU time (ns) the mount process's ring threads (`fuse-ring-*`, their
/// pool included) have used, and how many there are.
fn ring_threads(mnt: &Path) -> (u64, usize) {
    let pid = mount_pid(mnt);
    let mut busy = 0;
    let mut count = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("fuse-ring-") {
            count += 1;
            let stat = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            busy += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (busy, count)
}

#[test]
fn requests_are_served_over_io_uring_when_the_kernel_offers_it() {
    if !fuse_available() {
        return;
    }
    let Some(_enabled) = RingsEnabled::turn_on() else {
        return;
    };
    let m = Mounted::new(&["--io-uring"]);
    // The mount answers once it is mounted; its rings start a moment later.
    let mut threads = 0;
    for _ in 0..250 {
        threads = ring_threads(&m.mnt).1;
        if threads > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        threads > 0,
        "the mount serves over io_uring: {}",
        m.log_text()
    );
    let (before, _) = ring_threads(&m.mnt);
    let expected = workload(&m, "ring");
    let _ = std::process::Command::new("sync").status();
    drop_caches();
    check(&m, &expected);
    let (after, _) = ring_threads(&m.mnt);
    // Hundreds of requests and megabytes sealed and opened: milliseconds
    // of work, where the rings' own start takes microseconds.
    assert!(
        after - before > 2_000_000,
        "the ring threads served the workload ({before} ns before, {after} ns after)"
    );
    let log = m.log_text();
    assert!(!log.contains("ERROR"), "the mount logged errors: {log}");
    assert!(
        !log.contains("io_uring unavailable"),
        "the rings were refused: {log}"
    );

    // The same volume through /dev/fuse (the default) reads back the same.
    m.unmount();
    let out = m.remount();
    assert!(out.status.success(), "remount: {}", stderr(&out));
    std::thread::sleep(std::time::Duration::from_millis(200));
    // (Unless the whole suite runs over the rings: CHRONICLE_IO_URING=1.)
    if std::env::var_os("CHRONICLE_IO_URING").is_none() {
        assert_eq!(ring_threads(&m.mnt).1, 0, "without --io-uring: no rings");
    }
    check(&m, &expected);
}
