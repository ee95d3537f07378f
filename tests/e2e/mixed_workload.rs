//! A mixed workload for the tests of a transport (`io_uring.rs`,
//! `polling.rs`): what every way of serving requests must get right.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};

use crate::util::*;

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

/// Small files, a file of bulk reads and writes, renames, removals and an
/// overwrite in the middle, all in directory `dir` of the mount; returns
/// each file left and what it must hold.
pub fn workload(m: &Mounted, dir: &str) -> Vec<(String, Vec<u8>)> {
    let root = m.path(dir);
    fs::create_dir(&root).expect("mkdir");
    let mut expected = Vec::new();
    for i in 0..200 {
        let name = format!("{dir}/small{i}");
        let data = pattern(i, 100 + i * 37);
        fs::write(m.path(&name), &data).expect("write small file");
        expected.push((name, data));
    }
    for i in (0..200).step_by(3) {
        fs::rename(
            m.path(&format!("{dir}/small{i}")),
            m.path(&format!("{dir}/moved{i}")),
        )
        .expect("rename");
        expected[i].0 = format!("{dir}/moved{i}");
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
    let mut file = fs::File::create(m.path(&format!("{dir}/big"))).expect("create big");
    file.write_all(&big).expect("bulk write");
    let patch = pattern(11, 300_000);
    file.seek(SeekFrom::Start(1_000_000)).expect("seek");
    file.write_all(&patch).expect("overwrite");
    big[1_000_000..1_300_000].copy_from_slice(&patch);
    file.sync_all().expect("fsync");
    drop(file);
    kept.push((format!("{dir}/big"), big));
    let listed = fs::read_dir(&root).expect("readdir").count();
    assert_eq!(listed, kept.len(), "readdir lists every file left");
    kept
}

pub fn check(m: &Mounted, expected: &[(String, Vec<u8>)]) {
    for (name, data) in expected {
        let mut read = Vec::new();
        fs::File::open(m.path(name))
            .and_then(|mut f| f.read_to_end(&mut read))
            .unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert!(read == *data, "{name} reads back as written");
    }
}
