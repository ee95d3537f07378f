//! Randomized reads, writes, truncates and mmap through the mount against a
//! `Vec<u8>` per file; concurrent writers and readers on one file.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rand::{Rng, SeedableRng};

use crate::util::*;

fn seed() -> u64 {
    std::env::var("CHRONICLE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn mmap_read(f: &File, offset: usize, len: usize) -> Vec<u8> {
    let page = 4096;
    let start = offset / page * page;
    let span = offset + len - start;
    // SAFETY: maps `span` bytes of an open file read-only; the slice is
    // copied out before the mapping is removed.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as i64,
        );
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        let out = std::slice::from_raw_parts(ptr.cast::<u8>().add(offset - start), len).to_vec();
        libc::munmap(ptr, span);
        out
    }
}

fn mmap_write(f: &File, offset: usize, data: &[u8]) {
    let page = 4096;
    let start = offset / page * page;
    let span = offset + data.len() - start;
    // SAFETY: maps `span` bytes (inside the file's size) read-write, copies
    // `data` in, syncs and unmaps.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            start as i64,
        );
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        std::ptr::copy_nonoverlapping(
            data.as_ptr(),
            ptr.cast::<u8>().add(offset - start),
            data.len(),
        );
        libc::msync(ptr, span, libc::MS_SYNC);
        libc::munmap(ptr, span);
    }
}

// Protects: the mount behaves exactly like a plain file under thousands of
// random pread/pwrite/ftruncate/mmap operations on several files.
#[test]
fn random_operations_match_a_model() {
    if !fuse_available() {
        return;
    }
    let seed = seed();
    println!("seed {seed} (replay with CHRONICLE_TEST_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let m = Mounted::new(&[]);
    let names = ["m0", "m1", "m2"];
    let open = |name: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(m.path(name))
            .expect("open")
    };
    let mut files: Vec<File> = names.iter().map(|n| open(n)).collect();
    let mut models = vec![Vec::<u8>::new(); names.len()];
    for step in 0..3000 {
        let i = rng.random_range(0..names.len());
        let model = &mut models[i];
        let offset = match rng.random_range(0..3) {
            0 => model.len(),
            1 => rng.random_range(0..=model.len()),
            _ => rng.random_range(0..60_000),
        };
        let len = match rng.random_range(0..3) {
            0 => rng.random_range(1..16),
            1 => rng.random_range(1..9000),
            _ => rng.random_range(1..70_000),
        };
        match rng.random_range(0..100) {
            0..=39 => {
                let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                files[i].write_all_at(&data, offset as u64).expect("pwrite");
                if model.len() < offset + len {
                    model.resize(offset + len, 0);
                }
                model[offset..offset + len].copy_from_slice(&data);
            }
            40..=69 => {
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    let n = files[i]
                        .read_at(&mut buf[got..], (offset + got) as u64)
                        .expect("pread");
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let expect = &model[offset.min(model.len())..(offset + len).min(model.len())];
                assert_eq!(
                    &buf[..got],
                    expect,
                    "seed {seed} step {step}: pread {offset}+{len}"
                );
            }
            70..=79 => {
                let size = rng.random_range(0..60_000);
                files[i].set_len(size as u64).expect("ftruncate");
                model.resize(size, 0);
            }
            80..=87 if !model.is_empty() => {
                let off = rng.random_range(0..model.len());
                let n = rng.random_range(1..=(model.len() - off).min(20_000));
                assert_eq!(
                    mmap_read(&files[i], off, n),
                    &model[off..off + n],
                    "seed {seed} step {step}: mmap read"
                );
            }
            88..=95 if !model.is_empty() => {
                let off = rng.random_range(0..model.len());
                let n = rng.random_range(1..=(model.len() - off).min(10_000));
                let data: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                mmap_write(&files[i], off, &data);
                model[off..off + n].copy_from_slice(&data);
            }
            _ => files[i] = open(names[i]),
        }
        assert_eq!(
            files[i].metadata().expect("fstat").len(),
            models[i].len() as u64,
            "seed {seed} step {step}"
        );
    }
    drop(files);
    // Everything reached the backing: remount and compare.
    m.unmount();
    let again = Mounted::with_fixture(
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            backing: m.fixture.backing.clone(),
        },
        &[],
    );
    for (name, model) in names.iter().zip(&models) {
        assert_eq!(
            &std::fs::read(again.path(name)).expect("read"),
            model,
            "seed {seed}: {name} after remount"
        );
    }
}

// Protects: writers to overlapping ranges of one file never lose updates;
// readers during writes see only whole records.
#[test]
fn concurrent_writers_and_readers() {
    let Some(m) = mount_or_skip(&["--no-writeback-cache"]) else {
        return;
    };
    let path = m.path("shared");
    let f = Arc::new(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .expect("open"),
    );
    const RECORD: usize = 1000;
    const PER_THREAD: usize = 150;
    let writers: Vec<_> = (0..4u8)
        .map(|t| {
            let f = Arc::clone(&f);
            std::thread::spawn(move || {
                for r in 0..PER_THREAD {
                    let record = r * 4 + t as usize;
                    f.write_all_at(&[t + 1; RECORD], (record * RECORD) as u64)
                        .expect("pwrite");
                }
            })
        })
        .collect();
    let reader = {
        let f = Arc::clone(&f);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; RECORD];
            for i in 0..400 {
                let record = i % (PER_THREAD * 4);
                let n = f
                    .read_at(&mut buf, (record * RECORD) as u64)
                    .expect("pread");
                if n == RECORD {
                    let first = buf[0];
                    assert!(buf.iter().all(|&b| b == first), "torn record {record}");
                }
            }
        })
    };
    for w in writers {
        w.join().expect("writer");
    }
    reader.join().expect("reader");
    let all = std::fs::read(&path).expect("read");
    assert_eq!(all.len(), PER_THREAD * 4 * RECORD);
    for (record, chunk) in all.chunks(RECORD).enumerate() {
        assert!(
            chunk.iter().all(|&b| b == (record % 4) as u8 + 1),
            "record {record} lost"
        );
    }
}
