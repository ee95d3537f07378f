//! A bounded soak: 8 writers and 8 readers on 8 files, every byte checked
//! against a model, with directory churn (creations, renames across
//! directories, removals) beside them; then `fsck` is clean. Runs for
//! `CHRONICLE_SOAK_SECS` seconds (default 8; `scripts/soak.sh` runs minutes).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::util::*;

const FILES: usize = 8;
const MAX_LEN: usize = 1 << 20;

/// What a writer wrote at `at`: a byte that depends on where and when.
fn pattern(file: usize, generation: u64, at: usize) -> u8 {
    (file as u64 * 131 + generation * 17 + at as u64 % 251) as u8
}

#[derive(Default)]
struct Counts {
    writes: AtomicU64,
    reads: AtomicU64,
    bytes_checked: AtomicU64,
    churn: AtomicU64,
}

fn writer(path: PathBuf, file: usize, model: &RwLock<Vec<u8>>, stop: &AtomicBool, n: &Counts) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open for writing");
    let mut rng = rand::rngs::StdRng::seed_from_u64(file as u64);
    let mut generation = 0u64;
    while !stop.load(Ordering::Relaxed) {
        generation += 1;
        // The model changes under its lock with the file, so readers that
        // hold the lock see both agree.
        let mut m = model.write().unwrap_or_else(|p| p.into_inner());
        match rng.random_range(0..10) {
            0 => {
                let len = rng.random_range(0..=m.len());
                f.set_len(len as u64).expect("truncate");
                m.truncate(len);
            }
            1 => f.sync_data().expect("fsync"),
            _ => {
                let at = if rng.random_bool(0.5) {
                    m.len()
                } else {
                    rng.random_range(0..=m.len())
                };
                let len = rng.random_range(1..20_000).min(MAX_LEN.saturating_sub(at));
                if len == 0 {
                    f.set_len(0).expect("truncate");
                    m.clear();
                    continue;
                }
                let data: Vec<u8> = (at..at + len)
                    .map(|i| pattern(file, generation, i))
                    .collect();
                f.write_all_at(&data, at as u64).expect("write");
                if m.len() < at + len {
                    m.resize(at + len, 0);
                }
                m[at..at + len].copy_from_slice(&data);
            }
        }
        n.writes.fetch_add(1, Ordering::Relaxed);
    }
}

fn reader(dir: PathBuf, models: &[Arc<RwLock<Vec<u8>>>], stop: &AtomicBool, n: &Counts, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let file = rng.random_range(0..FILES);
        let m = models[file].read().unwrap_or_else(|p| p.into_inner());
        let f = File::open(dir.join(format!("w{file}"))).expect("open for reading");
        let len = f.metadata().expect("stat").len() as usize;
        assert_eq!(len, m.len(), "w{file}: size");
        if len == 0 {
            continue;
        }
        let at = rng.random_range(0..len);
        let want = rng.random_range(1..=65_536).min(len - at);
        let mut got = vec![0u8; want];
        f.read_exact_at(&mut got, at as u64).expect("read");
        assert!(
            got == m[at..at + want],
            "w{file}: bytes {at}..{} differ",
            at + want
        );
        n.reads.fetch_add(1, Ordering::Relaxed);
        n.bytes_checked.fetch_add(want as u64, Ordering::Relaxed);
    }
}

/// Creates files, renames them across two directories, reads them back
/// and removes them.
fn churn(dir: PathBuf, id: u64, stop: &AtomicBool, n: &Counts) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + id);
    let dirs = [dir.join(format!("c{id}a")), dir.join(format!("c{id}b"))];
    for d in &dirs {
        std::fs::create_dir(d).expect("mkdir");
    }
    let mut live: VecDeque<(PathBuf, u64)> = VecDeque::new();
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match rng.random_range(0..3) {
            0 => {
                let path = dirs[rng.random_range(0..2)].join(format!("f{next}"));
                std::fs::write(&path, next.to_le_bytes().repeat(next as usize % 600 + 1))
                    .expect("create");
                live.push_back((path, next));
                next += 1;
            }
            1 if !live.is_empty() => {
                let i = rng.random_range(0..live.len());
                let (from, tag) = live[i].clone();
                let to = dirs[rng.random_range(0..2)].join(format!("r{tag}-{}", next));
                next += 1;
                std::fs::rename(&from, &to).expect("rename");
                live[i].0 = to;
            }
            _ => {
                if let Some((path, tag)) = live.pop_front() {
                    let got = std::fs::read(&path).expect("read back");
                    assert_eq!(
                        got,
                        tag.to_le_bytes().repeat(tag as usize % 600 + 1),
                        "{path:?}"
                    );
                    std::fs::remove_file(&path).expect("remove");
                }
            }
        }
        n.churn.fetch_add(1, Ordering::Relaxed);
    }
    for (path, tag) in live {
        let got = std::fs::read(&path).expect("read back");
        assert_eq!(
            got,
            tag.to_le_bytes().repeat(tag as usize % 600 + 1),
            "{path:?}"
        );
    }
}

fn soak_seconds() -> u64 {
    std::env::var("CHRONICLE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

// Protects: concurrent writers, readers and directory churn on one mount
// never see a wrong byte or a wrong size, and leave a volume fsck passes.
#[test]
fn writers_readers_and_churn_soak() {
    let Some(m) = mount_or_skip(&[]) else {
        return;
    };
    let models: Vec<Arc<RwLock<Vec<u8>>>> = (0..FILES)
        .map(|i| {
            File::create(m.path(&format!("w{i}"))).expect("create");
            Arc::new(RwLock::new(Vec::new()))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut threads = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let (path, model, stop, n) = (
            m.path(&format!("w{i}")),
            Arc::clone(model),
            Arc::clone(&stop),
            Arc::clone(&counts),
        );
        threads.push(std::thread::spawn(move || {
            writer(path, i, &model, &stop, &n)
        }));
    }
    for r in 0..8u64 {
        let (dir, models, stop, n) = (
            m.mnt.clone(),
            models.clone(),
            Arc::clone(&stop),
            Arc::clone(&counts),
        );
        threads.push(std::thread::spawn(move || {
            reader(dir, &models, &stop, &n, r)
        }));
    }
    for c in 0..2u64 {
        let (dir, stop, n) = (m.mnt.clone(), Arc::clone(&stop), Arc::clone(&counts));
        threads.push(std::thread::spawn(move || churn(dir, c, &stop, &n)));
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(soak_seconds())
        && threads.iter().all(|t| !t.is_finished())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a soak thread failed");
    }
    for (i, model) in models.iter().enumerate() {
        let got = std::fs::read(m.path(&format!("w{i}"))).expect("read whole");
        assert!(
            got == *model.read().expect("model"),
            "w{i} differs at the end"
        );
    }
    eprintln!(
        "SOAK {} s: {} writes, {} reads checking {} bytes, {} churn operations",
        soak_seconds(),
        counts.writes.load(Ordering::Relaxed),
        counts.reads.load(Ordering::Relaxed),
        counts.bytes_checked.load(Ordering::Relaxed),
        counts.churn.load(Ordering::Relaxed)
    );
    m.unmount();
    let out = run(&["fsck", m.fixture.b()], Some(KEY));
    assert!(
        out.status.success(),
        "fsck after the soak: {}{}",
        stdout(&out),
        stderr(&out)
    );
}
