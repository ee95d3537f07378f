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

pub fn run(points: u64, rounds: u32, workdir: Option<PathBuf>) -> Result<()> {
    let samples = Workload::samples_in(points);
    if samples == 0 {
        bail!("--points must be at least 300 (one sample of each of the workload's 300 series)");
    }
    if rounds == 0 {
        bail!("--rounds must be at least 1");
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
        "{} points of 300 series (CPU, memory, request counter every 10 s) in {}, {rounds} round{}",
        samples * 300,
        root.display(),
        if rounds == 1 { "" } else { "s" }
    );

    let (mut plain, mut encrypted, mut ciphertext) = (Vec::new(), Vec::new(), 0);
    for round in 1..=rounds {
        let name = |what: &str| match rounds {
            1 => what.to_string(),
            _ => format!("round {round}/{rounds}, {what}"),
        };
        // The two sides take turns going first, so that a machine that
        // speeds up or slows down during the run favours neither (exactly
        // so over an even number of rounds).
        let encrypted_first = round % 2 == 0;
        let mut on_mount = || -> Result<Figures> {
            let (figures, bytes) =
                measure_on_mount(&volume, &mnt, samples, &name("encrypted mount"))?;
            ciphertext = bytes;
            Ok(figures)
        };
        let on_plain = || measure_in(&plain_dir, samples, &name("plain directory"));
        let (p, e) = match encrypted_first {
            true => {
                let e = on_mount()?;
                (on_plain()?, e)
            }
            false => {
                let p = on_plain()?;
                (p, on_mount()?)
            }
        };
        if rounds > 1 {
            println!(
                "round {round}: write {}, read {}, compaction {} ({} first)",
                overhead(p.write_secs, e.write_secs),
                overhead(p.read_secs, e.read_secs),
                overhead(p.compact_secs, e.compact_secs),
                if encrypted_first {
                    "encrypted"
                } else {
                    "plain"
                }
            );
        }
        plain.push(p);
        encrypted.push(e);
    }
    print_table(&plain, &encrypted, ciphertext);
    Ok(())
}

/// One round in a plain directory, removed afterwards.
fn measure_in(dir: &Path, samples: u64, what: &str) -> Result<Figures> {
    let figures = measure(dir, samples, what, || Ok(()))?;
    remove(dir)?;
    Ok(figures)
}

/// One round on a fresh mount of `volume` at `mnt` (mounted again before
/// reading); returns the figures and the bytes its database took in the
/// backing directory. The database is removed afterwards.
fn measure_on_mount(
    volume: &Volume,
    mnt: &Path,
    samples: u64,
    what: &str,
) -> Result<(Figures, u64)> {
    let mounted = std::cell::RefCell::new(Some(mount(volume, mnt)?));
    let dir = mnt.join("db");
    let figures = measure(&dir, samples, what, || {
        if let Some(m) = mounted.borrow_mut().take() {
            m.unmount().context("unmounting")?;
        }
        *mounted.borrow_mut() = Some(mount(volume, mnt)?);
        Ok(())
    })?;
    let ciphertext = dir_bytes(volume.backing());
    remove(&dir)?;
    if let Some(m) = mounted.borrow_mut().take() {
        m.unmount().context("unmounting")?;
    }
    Ok((figures, ciphertext))
}

fn remove(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
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
fn overhead_pct(plain_secs: f64, encrypted_secs: f64) -> f64 {
    (encrypted_secs / plain_secs.max(1e-9) - 1.0) * 100.0
}

fn overhead(plain_secs: f64, encrypted_secs: f64) -> String {
    format!("{:+.1} %", overhead_pct(plain_secs, encrypted_secs))
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// One row: the median time of each side (as a rate when `points` is
/// given), the overhead of the medians and, over several rounds, the
/// lowest and highest overhead of a single round.
fn row(
    name: &str,
    plain: &[Figures],
    encrypted: &[Figures],
    secs: fn(&Figures) -> f64,
    points: Option<fn(&Figures) -> u64>,
) -> String {
    let median_of = |runs: &[Figures]| median(runs.iter().map(secs).collect());
    let (p, e) = (median_of(plain), median_of(encrypted));
    let shown = |secs: f64, runs: &[Figures]| match points {
        Some(points) => rate(points(&runs[0]), secs),
        None => format!("{secs:.2} s"),
    };
    let mut line = format!(
        "| {name:<10} | {} | {} | {} |",
        shown(p, plain),
        shown(e, encrypted),
        overhead(p, e)
    );
    if plain.len() > 1 {
        let rounds: Vec<f64> = plain
            .iter()
            .zip(encrypted)
            .map(|(p, e)| overhead_pct(secs(p), secs(e)))
            .collect();
        let lowest = rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        line += &format!(" {lowest:+.1} to {highest:+.1} % |");
    }
    line
}

fn print_table(plain: &[Figures], encrypted: &[Figures], ciphertext: u64) {
    let several = plain.len() > 1;
    println!();
    match several {
        true => {
            println!("| Operation  | Plain | Encrypted | Overhead | Rounds |");
            println!("|------------|------:|----------:|---------:|-------:|");
        }
        false => {
            println!("| Operation  | Plain | Encrypted | Overhead |");
            println!("|------------|------:|----------:|---------:|");
        }
    }
    println!(
        "{}",
        row(
            "Write",
            plain,
            encrypted,
            |f| f.write_secs,
            Some(|f| f.points)
        )
    );
    println!(
        "{}",
        row(
            "Read",
            plain,
            encrypted,
            |f| f.read_secs,
            Some(|f| f.read_points)
        )
    );
    println!(
        "{}",
        row("Compaction", plain, encrypted, |f| f.compact_secs, None)
    );
    println!();
    let last = &encrypted[encrypted.len() - 1];
    println!(
        "On disk: {} bytes of database files ({:.3} bytes a point); the volume's backing directory holds {} bytes.",
        group_digits(last.bytes_on_disk),
        last.bytes_on_disk as f64 / last.points.max(1) as f64,
        group_digits(ciphertext)
    );
    println!("Write: line protocol to segments, one thread. Read: hourly means of every point, just opened (the mount freshly mounted). Compaction: after 1 % late rewrites.");
    if several {
        println!("Plain and Encrypted are the medians of the rounds, Overhead compares the medians, Rounds gives the lowest and highest overhead of a single round.");
    }
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

    #[test]
    fn the_median_is_the_middle_round() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
    }
}
