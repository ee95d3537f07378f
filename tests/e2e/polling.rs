//! Polling /dev/fuse (`--poll-us`): one serving thread per CPU, none pinned
//! to it, the rest parked as reserves; everything reads back as written,
//! and syncs that hold every listener at once do not stop the mount.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::thread;

use crate::mixed_workload::{check, workload};
use crate::util::*;

/// The CPUs a task may run on, from its `Cpus_allowed_list` ("0-3,6").
fn allowed_cpus(status: &str) -> usize {
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    list.split(',')
        .map(|range| match range.split_once('-') {
            Some((first, last)) => {
                last.parse::<usize>().expect("cpu") - first.parse::<usize>().expect("cpu") + 1
            }
            None => 1,
        })
        .sum()
}

/// The mount's CPUs, and how many of its serving threads (`fuser-*`) are
/// pinned: allowed fewer CPUs than the process (on one CPU, none can be).
fn pinned_serving_threads(mnt: &Path) -> (usize, usize) {
    let pid = mount_pid(mnt);
    let cpus = allowed_cpus(&fs::read_to_string(format!("/proc/{pid}/status")).expect("status"));
    let mut pinned = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if comm.starts_with("fuser-") && !status.is_empty() && allowed_cpus(&status) < cpus {
            pinned += 1;
        }
    }
    (cpus, pinned)
}

#[test]
fn a_polling_mount_serves_everything_with_unpinned_listeners() {
    if !fuse_available() {
        return;
    }
    const THREADS: usize = 4;
    let m = Mounted::new(&["--poll-us", "200", "--threads", "4"]);

    let expected = workload(&m, "polled");

    // As many writers as threads, each syncing after every write (requests
    // that hold a listener while the backing store flushes), beside a
    // reader of the workload's files: all of it must go through.
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let writers: Vec<_> = (0..THREADS)
        .map(|w| {
            let path = m.path(&format!("polled/wal{w}"));
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut file = fs::File::create(&path).expect("create wal");
                barrier.wait();
                for i in 0..50u32 {
                    file.write_all(&[w as u8 ^ i as u8; 4096]).expect("append");
                    file.sync_all().expect("fsync");
                }
                path
            })
        })
        .collect();
    barrier.wait();
    check(&m, &expected);
    for (w, writer) in writers.into_iter().enumerate() {
        let path = writer.join().expect("writer");
        let data = fs::read(path).expect("read wal");
        assert_eq!(data.len(), 50 * 4096);
        for (i, block) in data.chunks(4096).enumerate() {
            assert!(
                block.iter().all(|&b| b == w as u8 ^ i as u8),
                "wal{w} block {i}"
            );
        }
    }

    let _ = std::process::Command::new("sync").status();
    drop_caches();
    check(&m, &expected);
    // Pinned listeners slowed syncs to a disk (polling.rs): every serving
    // thread, started long since, may run on every CPU.
    let (cpus, pinned) = pinned_serving_threads(&m.mnt);
    assert_eq!(pinned, 0, "serving threads pinned, of {cpus} CPUs");
    let log = m.log_text();
    assert!(!log.contains("ERROR"), "the mount logged errors: {log}");
}

#[test]
fn without_polling_no_serving_thread_is_pinned() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&["--poll-us", "0"]);
    assert_eq!(pinned_serving_threads(&m.mnt).1, 0);
    let expected = workload(&m, "unpolled");
    check(&m, &expected);
}
