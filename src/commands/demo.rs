//! `chronicle demo`: the main job, end to end. Creates a volume with a
//! fresh key, mounts it, runs the engine on the mount (ingest, flush,
//! compaction, queries), shows that the backing files are ciphertext, that
//! a forged block is refused, that a wrong key opens nothing, and that the
//! data survives a remount.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use chronicle_engine::timefmt::format_time;
use chronicle_engine::{Aggregate, Engine, Options, Query, QueryResult};
use chronicle_mount::fuse::{BackgroundMount, MountOptions, Mounted};
use chronicle_mount::{SecretKey, UserKey, Volume, VolumeError};

const HOSTS: [&str; 4] = ["web-1", "web-2", "db-1", "db-2"];
const START: i64 = 1_764_403_200_000_000_000; // 2025-11-29T08:00:00Z
const STEP: i64 = 10_000_000_000; // 10 s

/// Mounts `volume` at `at` in this process, for a job that runs on it
/// (the demo, `engine bench`); unmounts when the result is dropped.
pub fn mount(volume: &Volume, at: &Path) -> Result<BackgroundMount> {
    Mounted::new(volume, at, &MountOptions::default())
        .and_then(Mounted::spawn)
        .with_context(|| {
            format!(
                "cannot mount at {} (this needs root and /dev/fuse)",
                at.display()
            )
        })
}

/// Realistic gauges: CPU around a per-host level with a daily swing, memory
/// slowly growing, both rounded the way collectors report them.
fn line_protocol(points_wanted: u64) -> (Vec<u8>, u64) {
    let per_sample = 2 * HOSTS.len() as u64;
    let samples = points_wanted.div_ceil(per_sample);
    let mut out = Vec::with_capacity(points_wanted as usize * 60);
    for i in 0..samples {
        let ts = START + i as i64 * STEP;
        for (h, host) in HOSTS.iter().enumerate() {
            let phase = (i as f64 / 360.0 + h as f64).sin();
            let cpu = ((20.0 + 10.0 * h as f64 + 15.0 * phase) * 10.0).round() / 10.0;
            let mem = (4096.0 + h as f64 * 512.0 + (i / 30) as f64 * 0.25).round();
            out.extend_from_slice(format!("cpu_usage,host={host} value={cpu} {ts}\n").as_bytes());
            out.extend_from_slice(format!("mem_used,host={host} value={mem} {ts}\n").as_bytes());
        }
    }
    (out, samples * per_sample)
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

pub fn demo(workdir: Option<PathBuf>, points: u64) -> Result<()> {
    let (_temp, root) = match workdir {
        Some(dir) => {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            (None, dir.canonicalize()?)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("chronicle-demo.")
                .tempdir()?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let backing = root.join("backing");
    let mnt = root.join("data");
    if backing.exists() {
        bail!(
            "{} already exists; give an empty --workdir",
            backing.display()
        );
    }
    fs::create_dir_all(&mnt)?;

    step(
        1,
        "Create an encrypted volume with a fresh random 256-bit key",
    );
    let key = UserKey::Raw(SecretKey::random()?);
    let volume = Volume::init(
        &backing,
        &key,
        None,
        chronicle_mount::names::NameMode::Encrypted,
    )?;
    println!("    backing directory (ciphertext): {}", backing.display());
    println!(
        "    AES-256-GCM implementation: {}",
        volume.backend().name()
    );

    step(
        2,
        &format!("Mount it at {} and run the engine there", mnt.display()),
    );
    let mounted = mount(&volume, &mnt)?;
    let db = mnt.join("metrics");
    let (lines, n) = line_protocol(points);
    let started = Instant::now();
    let engine = Engine::open(&db, Options::default())?;
    let written = crate::engine_cli::write_lines(&engine, Box::new(std::io::Cursor::new(lines)))?;
    engine.flush()?;
    let compacted = engine.compact()?;
    let elapsed = started.elapsed().as_secs_f64();
    let stats = engine.stats()?;
    println!(
        "    wrote {written} points ({n} generated) in {elapsed:.2} s: {:.0} points/s, through encryption",
        written as f64 / elapsed
    );
    println!(
        "    {} series, {} segments in {} hour partitions ({} merged), {:.2} bytes per point on disk",
        stats.series, stats.segments, stats.partitions, compacted.segments_merged, stats.bytes_per_point
    );

    step(3, "Query through the mount: mean CPU per hour, by host");
    let mut q = Query::new("cpu_usage");
    q.window = Some((3_600_000_000_000, Aggregate::Mean));
    q.group_by = Some("host".into());
    let result = engine.query(&q)?;
    print_hours(&result, 3);
    let before = summary(&engine)?;
    engine.close()?;

    step(
        4,
        "Look at the raw backing files, as someone without the key would",
    );
    let raw = raw_files(&backing)?;
    let mut found_plaintext = Vec::new();
    for (path, bytes) in &raw {
        for needle in ["cpu_usage", "mem_used", "web-1", "host="] {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found_plaintext.push(format!("{needle} in {}", path.display()));
            }
        }
    }
    let total: usize = raw.iter().map(|(_, b)| b.len()).sum();
    println!(
        "    {} files, {total} bytes; every regular file starts with the header \"CHRF\": {}",
        raw.len(),
        raw.iter()
            .all(|(_, b)| b.is_empty() || b.starts_with(b"CHRF"))
    );
    println!(
        "    entropy of the raw bytes: {:.3} bits per byte (8 = random)",
        entropy(raw.iter().map(|(_, b)| b.as_slice()))
    );
    if found_plaintext.is_empty() {
        println!("    searched for \"cpu_usage\", \"mem_used\", \"web-1\", \"host=\": not found anywhere");
    } else {
        bail!(
            "plaintext found in the backing directory: {}",
            found_plaintext.join(", ")
        );
    }

    step(5, "Forge one byte of a segment in the backing directory");
    let forged = forge_and_read(&volume, &mnt, &db)?;
    println!("    {forged}");

    step(6, "Unmount; try a wrong key; remount with the right one");
    mounted.unmount().context("unmounting")?;
    let wrong = UserKey::Raw(SecretKey::random()?);
    match Volume::open(&backing, &wrong) {
        Err(VolumeError::KeyMismatch) => {
            println!("    wrong key: error: encryption key mismatch (nothing mounted)")
        }
        Err(e) => bail!("a wrong key gave an unexpected error: {e}"),
        Ok(_) => bail!("a wrong key opened the volume"),
    }
    let volume = Volume::open(&backing, &key)?;
    let mounted = mount(&volume, &mnt)?;
    let engine = Engine::open(&db, Options::default())?;
    let after = summary(&engine)?;
    engine.close()?;
    mounted.unmount().context("unmounting")?;
    if after != before {
        bail!("after remounting the data differ: {before} then {after}");
    }
    println!("    right key: the same data: {after}");
    println!("\nDemo complete: the engine ran unchanged on an encrypted volume.");
    Ok(())
}

fn summary(engine: &Engine) -> Result<String> {
    let mut q = Query::new("cpu_usage");
    q.window = Some((i64::MAX / 4, Aggregate::Count));
    let count = engine.query(&q)?.points();
    q.window = Some((i64::MAX / 4, Aggregate::Sum));
    let QueryResult::Aggregated(g) = engine.query(&q)? else {
        bail!("aggregate expected")
    };
    let sum: f64 = g.iter().flat_map(|g| &g.windows).map(|w| w.value).sum();
    Ok(format!("{count} cpu_usage points summing to {sum:.1}"))
}

fn print_hours(result: &QueryResult, hours: usize) {
    let QueryResult::Aggregated(groups) = result else {
        return;
    };
    println!("    {:<22} {:<8} {:>10}", "hour", "host", "mean cpu");
    for g in groups {
        for w in g.windows.iter().take(hours) {
            println!(
                "    {:<22} {:<8} {:>10.2}",
                format_time(w.start),
                g.group.as_deref().unwrap_or("*"),
                w.value
            );
        }
    }
}

/// Every raw file of the backing directory (the configuration aside) with
/// its bytes.
fn raw_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    use chronicle_mount::tree::{self, Root, Visit, Visitor};
    struct Collect<'a>(&'a Path, Vec<(PathBuf, Vec<u8>)>);
    impl Visitor for Collect<'_> {
        fn entry(&mut self, visit: &Visit) -> std::io::Result<()> {
            if visit.kind() == rustix::fs::FileType::RegularFile {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut visit.open(rustix::fs::OFlags::RDONLY)?,
                    &mut bytes,
                )?;
                self.1.push((self.0.join(visit.relative), bytes));
            }
            Ok(())
        }
    }
    let mut collect = Collect(dir, Vec::new());
    let mode = chronicle_mount::VolumeConfig::load(dir)?.name_mode();
    tree::walk(dir, Root::Volume(mode), &mut collect).context("reading the raw files")?;
    Ok(collect.1)
}

fn entropy<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> f64 {
    let mut counts = [0u64; 256];
    for chunk in chunks {
        // The file header is structure, not ciphertext.
        for &b in chunk.iter().skip(chronicle_mount::layout::HEADER_LEN) {
            counts[b as usize] += 1;
        }
    }
    super::inspect::entropy(&counts)
}

/// Flips a byte inside the first block of a segment's ciphertext, reads the
/// file through the mount (bypassing the page cache), restores the byte.
fn forge_and_read(volume: &Volume, mnt: &Path, db: &Path) -> Result<String> {
    let segment = fs::read_dir(db)?
        .flatten()
        .map(|e| e.file_name())
        .find(|n| n.to_string_lossy().ends_with(".seg"))
        .context("no segment to forge")?;
    // Its name in BACKING, through the volume's (encrypted) names.
    let plain = db.strip_prefix(mnt)?.join(&segment);
    let raw_path = volume.backing().join(volume.backing_path(&plain)?);
    let original = fs::read(&raw_path)?;
    let mut forged = original.clone();
    let at = chronicle_mount::layout::HEADER_LEN + 100;
    forged[at] ^= 0x01;
    fs::write(&raw_path, &forged)?;
    // Make the next read come from the volume, not from cached pages.
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    let outcome = fs::read(db.join(&segment));
    fs::write(&raw_path, &original)?;
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    match outcome {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(format!(
            "reading {} through the mount: EIO (Input/output error); the forged bytes were never returned",
            segment.to_string_lossy()
        )),
        Err(e) => bail!("reading the forged segment failed oddly: {e}"),
        Ok(_) => bail!("the forged segment was read without an error"),
    }
}
