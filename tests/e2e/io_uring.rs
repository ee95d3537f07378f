//! FUSE over io_uring: mounted with `--io-uring` and the kernel offering it,
//! the mount serves its requests on the rings, and everything reads back as
//! written, there and after a remount through /dev/fuse.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

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

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

/// Small files, a file of bulk reads and writes, renames, removals and an
/// overwrite in the middle: what the rings must serve.
fn workload(m: &Mounted) -> Vec<(String, Vec<u8>)> {
    let dir = m.path("ring");
    fs::create_dir(&dir).expect("mkdir");
    let mut expected = Vec::new();
    for i in 0..200 {
        let name = format!("ring/small{i}");
        let data = pattern(i, 100 + i * 37);
        fs::write(m.path(&name), &data).expect("write small file");
        expected.push((name, data));
    }
    for i in (0..200).step_by(3) {
        fs::rename(
            m.path(&format!("ring/small{i}")),
            m.path(&format!("ring/moved{i}")),
        )
        .expect("rename");
        expected[i].0 = format!("ring/moved{i}");
    }
    for i in (1..200).step_by(5) {
        fs::remove_file(m.path(&expected[i].0)).expect("unlink");
    }
    let mut kept: Vec<(String, Vec<u8>)> = expected
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 1)
        .map(|(_, e)| e)
        .collect();
    let mut big = pattern(9, 3 * 1024 * 1024 + 123);
    let mut file = fs::File::create(m.path("ring/big")).expect("create big");
    file.write_all(&big).expect("bulk write");
    let patch = pattern(11, 300_000);
    file.seek(SeekFrom::Start(1_000_000)).expect("seek");
    file.write_all(&patch).expect("overwrite");
    big[1_000_000..1_300_000].copy_from_slice(&patch);
    file.sync_all().expect("fsync");
    drop(file);
    kept.push(("ring/big".into(), big));
    let listed = fs::read_dir(&dir).expect("readdir").count();
    assert_eq!(listed, kept.len(), "readdir lists every file left");
    kept
}

fn check(m: &Mounted, expected: &[(String, Vec<u8>)]) {
    for (name, data) in expected {
        let mut read = Vec::new();
        fs::File::open(m.path(name))
            .and_then(|mut f| f.read_to_end(&mut read))
            .unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert!(read == *data, "{name} reads back as written");
    }
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
    let expected = workload(&m);
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
