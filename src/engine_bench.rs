//! `chronicle engine bench`: the engine's benchmark workload (storage-
//! engine/src/workload.rs) on a plain directory and on a fresh encrypted
//! mount, in one run, and the table of the seed guide: what encryption
//! costs for writes, reads and compaction, measured here and now.
//!
//! Both directories sit side by side under one work directory, so they
//! share the file system that backs them. Writes go through line
//! protocol and end with a flush to segments; reads are aggregating
//! queries over every point, on a freshly opened engine (and, on the
//! volume, a fresh mount, so that what is read is decrypted, not served
//! from the kernel's cache of plaintext); compaction merges the segments
//! after a batch of late corrections.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chronicle_engine::workload::Workload;
use chronicle_engine::{Aggregate, Engine, Options, Query};
use chronicle_mount::names::NameMode;
use chronicle_mount::{SecretKey, UserKey, Volume};

use crate::commands::demo::mount;
use crate::commands::progress;

/// Samples per write call (15,000 lines).
const SAMPLES_PER_BATCH: u64 = 50;

/// What one run measured.
struct Figures {
    points: u64,
    write_secs: f64,
    read_points: u64,
    read_secs: f64,
    compact_secs: f64,
    bytes_on_disk: u64,
}

pub fn run(points: u64, workdir: Option<PathBuf>) -> Result<()> {
    let samples = Workload::samples_in(points);
    if samples == 0 {
        bail!("--points must be at least 300 (one sample of each of the workload's 300 series)");
    }
    let (_temp, root) = match workdir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            (None, dir)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("chronicle-engine-bench.")
                .tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let (plain_dir, backing, mnt) = (root.join("plain"), root.join("backing"), root.join("mnt"));
    for dir in [&plain_dir, &backing] {
        if dir.exists() {
            bail!("{} already exists; give an empty --workdir", dir.display());
        }
    }
    std::fs::create_dir_all(&mnt)?;
    let key = UserKey::Raw(SecretKey::random()?);
    let volume = Volume::init(&backing, &key, None, NameMode::Encrypted)?;
    println!(
        "{} points of 300 series (CPU, memory, request counter every 10 s) in {}",
        samples * 300,
        root.display()
    );

    let plain = measure(&plain_dir, samples, "plain directory", || Ok(()))?;
    let mounted = mount(&volume, &mnt)?;
    let remount = std::cell::RefCell::new(Some(mounted));
    let encrypted = measure(&mnt.join("db"), samples, "encrypted mount", || {
        if let Some(m) = remount.borrow_mut().take() {
            m.unmount().context("unmounting")?;
        }
        *remount.borrow_mut() = Some(mount(&volume, &mnt)?);
        Ok(())
    })?;
    if let Some(m) = remount.borrow_mut().take() {
        m.unmount().context("unmounting")?;
    }
    let ciphertext = dir_bytes(&backing);
    print_table(&plain, &encrypted, ciphertext);
    Ok(())
}

/// Writes, compacts and reads the workload in `dir`; `between` runs after
/// the engine is closed and before it is opened again to read.
fn measure(
    dir: &Path,
    samples: u64,
    what: &str,
    between: impl Fn() -> Result<()>,
) -> Result<Figures> {
    let bar = progress::progress_count(samples * 300, &format!("{what}: writing"));
    let engine = Engine::open(dir, Options::default())
        .with_context(|| format!("cannot open a database in {}", dir.display()))?;
    let mut workload = Workload::new();
    let mut batch = Vec::with_capacity(1 << 21);
    let (mut written, mut write_secs, mut done) = (0u64, 0.0, 0u64);
    while done < samples {
        let n = SAMPLES_PER_BATCH.min(samples - done);
        batch.clear();
        workload.next_lines(n, &mut batch);
        let started = Instant::now();
        written += engine.write_lines(&batch, 1)?;
        write_secs += started.elapsed().as_secs_f64();
        done += n;
        bar.set_position(written);
    }
    let started = Instant::now();
    engine.flush()?;
    write_secs += started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    batch.clear();
    workload.rewrites(&mut batch);
    engine.write_lines(&batch, 1)?;
    let started = Instant::now();
    engine.compact()?;
    let compact_secs = started.elapsed().as_secs_f64();
    let bytes_on_disk = engine.stats()?.bytes_on_disk;
    engine.close()?;
    between()?;

    let engine = Engine::open(dir, Options::default())?;
    let started = Instant::now();
    let mut read_points = 0;
    for metric in ["cpu_usage", "mem_used", "http_requests_total"] {
        let mut q = Query::new(metric);
        q.window = Some((3_600_000_000_000, Aggregate::Mean));
        read_points += engine.query(&q)?.points();
    }
    let read_secs = started.elapsed().as_secs_f64();
    engine.close()?;
    Ok(Figures {
        points: written,
        write_secs,
        read_points,
        read_secs,
        compact_secs,
        bytes_on_disk,
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    walk_bytes(dir).unwrap_or(0)
}

fn walk_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            walk_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn rate(points: u64, secs: f64) -> String {
    let per_sec = points as f64 / secs.max(1e-9);
    format!("{} points/s", group_digits(per_sec.round() as u64))
}

fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// How much longer the encrypted run took, in percent.
fn overhead(plain_secs: f64, encrypted_secs: f64) -> String {
    format!(
        "{:+.1} %",
        (encrypted_secs / plain_secs.max(1e-9) - 1.0) * 100.0
    )
}

fn print_table(plain: &Figures, encrypted: &Figures, ciphertext: u64) {
    println!();
    println!("| Operation  | Plain | Encrypted | Overhead |");
    println!("|------------|------:|----------:|---------:|");
    println!(
        "| Write      | {} | {} | {} |",
        rate(plain.points, plain.write_secs),
        rate(encrypted.points, encrypted.write_secs),
        overhead(plain.write_secs, encrypted.write_secs)
    );
    println!(
        "| Read       | {} | {} | {} |",
        rate(plain.read_points, plain.read_secs),
        rate(encrypted.read_points, encrypted.read_secs),
        overhead(plain.read_secs, encrypted.read_secs)
    );
    println!(
        "| Compaction | {:.2} s | {:.2} s | {} |",
        plain.compact_secs,
        encrypted.compact_secs,
        overhead(plain.compact_secs, encrypted.compact_secs)
    );
    println!();
    println!(
        "On disk: {} bytes of database files ({:.3} bytes a point); the volume's backing directory holds {} bytes.",
        group_digits(encrypted.bytes_on_disk),
        encrypted.bytes_on_disk as f64 / encrypted.points.max(1) as f64,
        group_digits(ciphertext)
    );
    println!("Write: line protocol to segments, one thread. Read: hourly means of every point, just opened (the mount freshly mounted). Compaction: after 1 % late rewrites.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(group_digits(1_234_567), "1,234,567");
        assert_eq!(group_digits(999), "999");
        assert_eq!(overhead(1.0, 1.05), "+5.0 %");
        assert_eq!(overhead(2.0, 1.9), "-5.0 %");
    }
}
